//! Loading a decoder: GGUF files (quantized weights, the tokenizer's metadata beside them) or Hub-layout
//! safetensors checkpoints (f32), into one [`Llama`].

use anyhow::Context;
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

use super::config::{LlamaConfig, RopeScaling};
use super::weights::{layout, ChatWeights, Quantized, Weight};
use super::{Block, Llama, RopeTable};
use crate::engines::kernels::{Int8, Kernels, Pool};

impl Llama {
    /// Loads the weights of a GGUF file onto `device` for `kernels`: on the CPU, prompt rows' dense
    /// copies on its dense kernel and quantized products on the int8 kernel where it has it; on a GPU,
    /// the file's quantized matrices as they are, on candle's quantized products (activations in f32).
    pub fn from_gguf(path: &Path, kernels: Kernels, device: &Device) -> anyhow::Result<(Self, Content)> {
        let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = Content::read(&mut file).with_context(|| format!("reading GGUF {}", path.display()))?;
        let mut config = LlamaConfig::from_gguf(&content)?;
        let kernels = if device.is_cpu() { kernels } else { Kernels::REFERENCE };
        let weights = ChatWeights::of_gguf(&content);
        tracing::info!(path = %path.display(), kernels = %weights.report(kernels).join("; "), "chat kernels");
        let file = &mut file;
        let (int8, device) = (kernels.int8, device.clone());
        let read =
            |content: &Content, file: &mut std::fs::File, name: &str, int8| read(content, file, name, int8, &device);
        let embeddings = read(&content, file, "token_embd.weight", int8)?.dequantize(&device)?;
        let output_name =
            if content.tensor_infos.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" };
        let output = Quantized::new(read(&content, file, output_name, int8)?, int8)?;
        let norm = read(&content, file, "output_norm.weight", int8)?.dequantize(&device)?;
        if content.tensor_infos.contains_key("rope_freqs.weight") {
            let factors = read(&content, file, "rope_freqs.weight", int8)?.dequantize(&device)?;
            config.rope_freq_factors = Some(factors.flatten_all()?.to_vec1::<f32>()?);
        }
        let keep_dense = weights.prompt_copy && device.is_cpu();
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut q = |s: &str| -> anyhow::Result<Weight> {
                Ok(Weight::from_gguf(read(&content, file, &format!("blk.{i}.{s}"), int8)?, keep_dense, kernels)?)
            };
            let (q_proj, k_proj, v_proj, o) =
                (q("attn_q.weight")?, q("attn_k.weight")?, q("attn_v.weight")?, q("attn_output.weight")?);
            let (gate, up, down) = (q("ffn_gate.weight")?, q("ffn_up.weight")?, q("ffn_down.weight")?);
            let mut dense = |s: &str| -> anyhow::Result<Tensor> {
                Ok(read(&content, file, &format!("blk.{i}.{s}"), int8)?.dequantize(&device)?)
            };
            let (attn_norm, ffn_norm) = (dense("attn_norm.weight")?, dense("ffn_norm.weight")?);
            let mut optional = |s: &str| -> anyhow::Result<Option<Tensor>> {
                let name = format!("blk.{i}.{s}");
                if content.tensor_infos.contains_key(&name) {
                    Ok(Some(read(&content, file, &name, int8)?.dequantize(&device)?))
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                attn_norm,
                ffn_norm,
                q_bias: optional("attn_q.bias")?,
                k_bias: optional("attn_k.bias")?,
                v_bias: optional("attn_v.bias")?,
                q_norm: optional("attn_q_norm.weight")?,
                k_norm: optional("attn_k_norm.weight")?,
                post_attn_norm: optional("post_attention_norm.weight")?,
                post_ffn_norm: optional("post_ffw_norm.weight")?,
                q: q_proj,
                k: k_proj,
                v: v_proj,
                o,
                gate,
                up,
                down,
            });
        }
        Ok((Self::assemble(config, embeddings, blocks, norm, output, kernels, device, DType::F32)?, content))
    }

    /// Loads a Hub-layout safetensors checkpoint (llama, qwen2, qwen3; f32, f16 or bf16) onto `device`:
    /// kept as f32 on the CPU, its attention on the loops' build of `kernels` (its products stay on
    /// candle's f32 matmul); in the checkpoint's own half precision on a GPU, every operation on
    /// candle's ops there.
    pub fn from_safetensors(dir: &Path, kernels: Kernels, device: &Device) -> anyhow::Result<Self> {
        let config = LlamaConfig::from_hub_config(&dir.join("config.json"))?;
        let files = safetensors_files(dir)?;
        let (kernels, dtype) = match device.is_cpu() {
            true => (kernels, DType::F32),
            false => (Kernels::REFERENCE, run_dtype(dir, device)?),
        };
        let device = device.clone();
        // SAFETY: the files are mapped read-only and not modified while the model loads.
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, dtype, &device)? };
        let vb = if vb.contains_tensor("model.language_model.embed_tokens.weight") {
            vb.pp("model.language_model")
        } else if vb.contains_tensor("language_model.model.embed_tokens.weight") {
            // Gemma 3 4B and up, as transformers 4 saved them.
            vb.pp("language_model.model")
        } else if vb.contains_tensor("model.embed_tokens.weight") {
            vb.pp("model")
        } else {
            vb
        };
        let (h, c) = (config.hidden, &config);
        let (q_width, kv_width) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let dense = |t: Tensor| Weight::new(QMatMul::Tensor(t));
        // A linear weight, dequantized where the checkpoint is FP8: each block of the weight times
        // its `weight_scale_inv`.
        let linear = |vb: &candle_nn::VarBuilder, shape: (usize, usize), name: &str| -> anyhow::Result<Tensor> {
            let weight = vb.get(shape, name)?;
            let scale_name = format!("{name}_scale_inv");
            match c.fp8_block {
                Some((rows, columns)) if vb.contains_tensor(&scale_name) => {
                    let scale = vb.get_unchecked_dtype(&scale_name, dtype)?;
                    let block = |n: usize, size: usize| {
                        Tensor::from_vec((0..n).map(|i| (i / size) as u32).collect::<Vec<_>>(), n, &device)
                    };
                    let scale =
                        scale.index_select(&block(shape.0, rows)?, 0)?.index_select(&block(shape.1, columns)?, 1)?;
                    Ok((weight * scale)?)
                }
                Some(_) => anyhow::bail!("{name} has no {scale_name} in an fp8 checkpoint"),
                None => Ok(weight),
            }
        };
        let embeddings = vb.get((c.vocab, h), "embed_tokens.weight")?;
        let root = vb.clone();
        // An RMS norm's weight, shifted where the checkpoint stores `weight - 1` (Gemma).
        let norm = |vb: &candle_nn::VarBuilder, size: usize, name: &str| -> anyhow::Result<Tensor> {
            let weight = vb.get(size, name)?;
            Ok(if c.norm_offset == 0.0 { weight } else { (weight + c.norm_offset as f64)? })
        };
        let optional_norm = |vb: &candle_nn::VarBuilder, name: &str| -> anyhow::Result<Option<Tensor>> {
            Ok(if vb.contains_tensor(name) { Some(norm(vb, h, name)?) } else { None })
        };
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let l = vb.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let optional = |vb: &candle_nn::VarBuilder, name: &str, size: usize| -> anyhow::Result<Option<Tensor>> {
                Ok(if vb.contains_tensor(name) { Some(vb.get(size, name)?) } else { None })
            };
            // Gemma names its four norms: `post_attention_layernorm` is the attention output's own
            // norm there, and `pre_feedforward_layernorm` the feed-forward's input norm.
            let gemma_norms = l.contains_tensor("pre_feedforward_layernorm.weight");
            let (ffn_norm, post_attn_norm, post_ffn_norm) = match gemma_norms {
                true => (
                    norm(&l, h, "pre_feedforward_layernorm.weight")?,
                    optional_norm(&l, "post_attention_layernorm.weight")?,
                    optional_norm(&l, "post_feedforward_layernorm.weight")?,
                ),
                false => (norm(&l, h, "post_attention_layernorm.weight")?, None, None),
            };
            let head_norm = |name: &str| -> anyhow::Result<Option<Tensor>> {
                Ok(if a.contains_tensor(name) { Some(norm(&a, c.head_dim, name)?) } else { None })
            };
            blocks.push(Block {
                attn_norm: norm(&l, h, "input_layernorm.weight")?,
                ffn_norm,
                post_attn_norm,
                post_ffn_norm,
                q: dense(linear(&a, (q_width, h), "q_proj.weight")?),
                k: dense(linear(&a, (kv_width, h), "k_proj.weight")?),
                v: dense(linear(&a, (kv_width, h), "v_proj.weight")?),
                o: dense(linear(&a, (h, q_width), "o_proj.weight")?),
                q_bias: optional(&a, "q_proj.bias", q_width)?,
                k_bias: optional(&a, "k_proj.bias", kv_width)?,
                v_bias: optional(&a, "v_proj.bias", kv_width)?,
                q_norm: head_norm("q_norm.weight")?,
                k_norm: head_norm("k_norm.weight")?,
                gate: dense(linear(&l, (c.ffn, h), "mlp.gate_proj.weight")?),
                up: dense(linear(&l, (c.ffn, h), "mlp.up_proj.weight")?),
                down: dense(linear(&l, (h, c.ffn), "mlp.down_proj.weight")?),
            });
        }
        let norm = norm(&root, h, "norm.weight")?;
        let output = match unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, dtype, &device)? } {
            top if top.contains_tensor("lm_head.weight") => {
                Quantized::Candle(QMatMul::Tensor(top.get((c.vocab, h), "lm_head.weight")?))
            }
            top if top.contains_tensor("language_model.lm_head.weight") => {
                Quantized::Candle(QMatMul::Tensor(top.get((c.vocab, h), "language_model.lm_head.weight")?))
            }
            _ => Quantized::Candle(QMatMul::Tensor(embeddings.clone())),
        };
        Self::assemble(config, embeddings, blocks, norm, output, kernels, device, dtype)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: LlamaConfig,
        embeddings: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
        output: Quantized,
        kernels: Kernels,
        device: Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        let half = config.head_dim / 2;
        let (mut frequencies, scale) = config.rope_scaling.frequencies(config.rope_base, config.head_dim);
        if let Some(factors) = &config.rope_freq_factors {
            if factors.len() != half {
                anyhow::bail!("rope_freqs has {} factors for {half} rotary frequencies", factors.len());
            }
            frequencies.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        }
        let rope_global = RopeTable::new(&frequencies, scale, config.context);
        // Sliding layers turn on their own base, unscaled.
        let rope_local = config.sliding.as_ref().map(|s| {
            let (frequencies, scale) = RopeScaling::None.frequencies(s.rope_base, config.head_dim);
            RopeTable::new(&frequencies, scale, config.context)
        });
        // Interleaved MRoPE (Qwen3-VL): frequency j turns with the row axis when j % 3 == 1 and with
        // the column axis when j % 3 == 2, within 3 × that axis's section; every other one with time.
        let rope_axis = (0..half)
            .map(|j| match config.mrope_section {
                Some(s) if j % 3 == 1 && j < 3 * s[1] => 1,
                Some(s) if j % 3 == 2 && j < 3 * s[2] => 2,
                _ => 0,
            })
            .collect();
        let pool = Pool::new("chat").context("starting the chat model's threads")?;
        // Every build of the attention loops gives the same bits; the model's is the fastest it may run.
        Ok(Self {
            config,
            embeddings,
            blocks,
            norm,
            output,
            rope_global,
            rope_local,
            rope_axis,
            pool,
            // The loops work on host rows: a model on a GPU takes the tensor path.
            loops: kernels.simd.filter(|_| device.is_cpu()),
            device,
            dtype,
        })
    }
}

impl RopeTable {
    /// The tables of `frequencies` at positions `..context`, cos and sin scaled by `scale`.
    fn new(frequencies: &[f32], scale: f32, context: usize) -> Self {
        let mut cos = Vec::with_capacity(context * frequencies.len());
        let mut sin = Vec::with_capacity(context * frequencies.len());
        for pos in 0..context {
            for &freq in frequencies {
                let angle = pos as f32 * freq;
                cos.push(angle.cos() * scale);
                sin.push(angle.sin() * scale);
            }
        }
        Self { cos, sin }
    }
}

/// The safetensors files of a checkpoint folder, sorted.
pub fn safetensors_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!("{} has no .safetensors weights", dir.display());
    }
    Ok(files)
}

/// The type a safetensors checkpoint in `dir` runs in on `device`: f32 on the CPU; on a GPU, the type
/// its `config.json` names for its weights (`torch_dtype`, or `dtype` as transformers 5 writes it; a
/// multimodal checkpoint's text half may say it there), f32 checkpoints staying f32.
pub fn run_dtype(dir: &Path, device: &Device) -> anyhow::Result<DType> {
    if device.is_cpu() {
        return Ok(DType::F32);
    }
    let config = dir.join("config.json");
    let config = config.as_path();
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let named = |v: &serde_json::Value| {
        v.get("torch_dtype").or_else(|| v.get("dtype")).and_then(|d| d.as_str()).map(str::to_string)
    };
    let name = named(&json).or_else(|| json.get("text_config").and_then(named));
    Ok(match name.as_deref() {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    })
}

/// Reads a tensor onto `device`; on the CPU, lays out a matrix in the type [`layout`] keeps with (or
/// without) the int8 kernel (GPUs have kernels for every type as it is).
pub(super) fn read(
    content: &Content,
    file: &mut std::fs::File,
    name: &str,
    int8: Option<Int8>,
    device: &Device,
) -> anyhow::Result<QTensor> {
    let tensor = content.tensor(file, name, device).with_context(|| format!("GGUF tensor {name}"))?;
    let kept = layout(tensor.dtype(), int8);
    if !device.is_cpu() || kept == tensor.dtype() || tensor.shape().dims().len() != 2 {
        return Ok(tensor);
    }
    Ok(QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, kept)?)
}
