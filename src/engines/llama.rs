//! Decoder LLMs of the llama family (SmolLM2, Llama 3.x; qwen2/qwen3 share the layout) from GGUF, with
//! a packed step for continuous batching.
//!
//! One [`Llama::step`] runs any mix of sequences, each bringing some new tokens (a prefill chunk or one
//! decode token) and its own KV cache. The linear layers run once on the packed tokens of all sequences,
//! so every quantized weight block is read once per step for the whole batch; attention runs per
//! sequence against its own cache. Rows never mix, so a sequence's logits do not depend on its company.
//!
//! The same decoder is the language half of Qwen3-VL: tokens may carry 3-D (time, row, column) rotary
//! positions (interleaved MRoPE), image placeholder rows take the vision tower's embeddings, and the
//! tower's DeepStack features are added to those rows after the first layers.

use anyhow::{anyhow, Context};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};
use rayon::prelude::*;
use std::path::Path;

use super::dense::Dense;
use super::kernels::quantized::PackedQuant;
use super::kernels::{Avx512Vnni, Kernels, Pool};

/// Shapes read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// Blocks.
    pub layers: usize,
    /// Width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMS norm epsilon.
    pub eps: f64,
    /// RoPE base.
    pub rope_base: f32,
    /// Context window.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Whether RoPE rotates halves (NeoX, qwen) rather than interleaved pairs (llama GGUF).
    pub rope_halves: bool,
    /// Feed-forward width.
    pub ffn: usize,
    /// Interleaved MRoPE: rotary frequencies per position axis (time, row, column), Qwen3-VL only.
    pub mrope_section: Option<[usize; 3]>,
}

/// Positions beyond this are not given rotary tables (long-context configs would otherwise cost
/// hundreds of MB of tables no request on this server can reach).
const MAX_ROPE_POSITIONS: usize = 32_768;

#[derive(serde::Deserialize)]
struct HubConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    max_position_embeddings: usize,
    vocab_size: usize,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
}

fn default_theta() -> f32 {
    10_000.0
}

impl LlamaConfig {
    /// Reads a Hub `config.json` (Hub checkpoints keep Q/K unpermuted, so RoPE rotates halves). For
    /// Qwen3-VL the language model's `text_config` is read.
    pub fn from_hub_config(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let outer = json.get("model_type").and_then(|t| t.as_str()).map(str::to_string);
        if let Some(inner) = json.get_mut("text_config").map(serde_json::Value::take) {
            json = inner;
        }
        let c: HubConfig = serde_json::from_value(json).with_context(|| format!("parsing {}", path.display()))?;
        let architecture = outer.or(c.model_type).unwrap_or_else(|| "llama".into());
        if !matches!(architecture.as_str(), "llama" | "qwen2" | "qwen3" | "mistral" | "qwen3_vl") {
            anyhow::bail!("model_type {architecture:?} is not supported (llama, qwen2, qwen3, mistral, qwen3_vl are)");
        }
        let mrope_section = c
            .rope_scaling
            .as_ref()
            .and_then(|r| r.get("mrope_section"))
            .and_then(|s| serde_json::from_value::<[usize; 3]>(s.clone()).ok());
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        check_head_dim(head_dim)?;
        if let Some(section) = mrope_section {
            if section.iter().sum::<usize>() != head_dim / 2 {
                anyhow::bail!("mrope_section {section:?} does not add up to head_dim / 2 = {}", head_dim / 2);
            }
        }
        Ok(Self {
            layers: c.num_hidden_layers,
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            eps: c.rms_norm_eps,
            rope_base: c.rope_theta,
            context: c.max_position_embeddings.min(MAX_ROPE_POSITIONS),
            vocab: c.vocab_size,
            rope_halves: true,
            ffn: c.intermediate_size,
            mrope_section,
            architecture,
        })
    }

    fn from_gguf(content: &Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let arch =
            md.get("general.architecture").ok_or_else(|| anyhow!("no general.architecture"))?.to_string()?.clone();
        let get = |key: &str| -> anyhow::Result<&candle_core::quantized::gguf_file::Value> {
            md.get(&format!("{arch}.{key}")).ok_or_else(|| anyhow!("GGUF has no {arch}.{key}"))
        };
        let heads = get("attention.head_count")?.to_u32()? as usize;
        let hidden = get("embedding_length")?.to_u32()? as usize;
        let head_dim = match get("attention.key_length") {
            Ok(v) => v.to_u32()? as usize,
            Err(_) => hidden / heads,
        };
        let vocab = match get("vocab_size") {
            Ok(v) => v.to_u32()? as usize,
            Err(_) => md.get("tokenizer.ggml.tokens").map(|t| t.to_vec().map(Vec::len)).transpose()?.unwrap_or(0),
        };
        check_head_dim(head_dim)?;
        let rope_halves = match arch.as_str() {
            "llama" => false,
            "qwen2" | "qwen3" => true,
            other => anyhow::bail!("GGUF architecture {other:?} is not supported (llama, qwen2, qwen3 are)"),
        };
        Ok(Self {
            layers: get("block_count")?.to_u32()? as usize,
            hidden,
            heads,
            kv_heads: get("attention.head_count_kv").and_then(|v| Ok(v.to_u32()? as usize)).unwrap_or(heads),
            head_dim,
            eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_base: get("rope.freq_base").and_then(|v| Ok(v.to_f32()?)).unwrap_or(10_000.0),
            context: get("context_length")?.to_u32()? as usize,
            vocab,
            rope_halves,
            ffn: get("feed_forward_length")?.to_u32()? as usize,
            mrope_section: None,
            architecture: arch,
        })
    }
}

/// Rotary tables per token are kept on the stack: heads up to 512 wide.
fn check_head_dim(head_dim: usize) -> anyhow::Result<()> {
    if head_dim == 0 || head_dim > 512 || !head_dim.is_multiple_of(2) {
        anyhow::bail!("head_dim {head_dim} is not supported (an even width up to 512 is)");
    }
    Ok(())
}

/// Dense copies are kept only for models whose linear weights fit in this many bytes as f32.
const DENSE_BUDGET_BYTES: usize = 1 << 30;

/// What a chat checkpoint's weights are, as far as choosing kernels goes; read with its spec, so that
/// reports need not open the file again, and by the loader, so the two agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatWeights {
    /// A GGUF file (quantized), rather than a safetensors folder (f32).
    pub gguf: bool,
    /// GGUF: prompt rows run on a dense copy of the linear weights (models whose linear weights take
    /// up to 1 GiB as f32).
    pub prompt_copy: bool,
    /// GGUF: the types of the matrices the quantized products run on (linear layers and the output
    /// projection), each once, in the order met.
    pub types: Vec<GgmlDType>,
    /// Safetensors: the checkpoint has a vision tower (Qwen3-VL).
    pub vision: bool,
}

impl ChatWeights {
    /// Reads a GGUF file's tensor table.
    pub fn of_gguf(content: &Content) -> Self {
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let linear = |name: &str| name.starts_with("blk.") && content.tensor_infos[name].shape.dims().len() == 2;
        let linear_bytes: usize =
            names.iter().filter(|n| linear(n)).map(|n| content.tensor_infos[*n].shape.elem_count() * 4).sum();
        let mut types = Vec::new();
        let output =
            if content.tensor_infos.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" };
        for name in names.iter().filter(|n| linear(n) || n.as_str() == output) {
            let dtype = content.tensor_infos[*name].ggml_dtype;
            if !types.contains(&dtype) {
                types.push(dtype);
            }
        }
        Self { gguf: true, prompt_copy: linear_bytes <= DENSE_BUDGET_BYTES, types, vision: false }
    }

    /// Which implementation each hot operation runs with these weights and `kernels`.
    pub fn report(&self, kernels: Kernels) -> Vec<String> {
        let mut lines = Vec::new();
        if self.gguf {
            let (mut vnni, mut reference) = (Vec::new(), Vec::new());
            for &dtype in &self.types {
                let kept = layout(dtype, kernels.vnni);
                let name = if kept == dtype { format!("{dtype:?}") } else { format!("{dtype:?} as {kept:?}") };
                match kernels.vnni.filter(|_| packs(kept)) {
                    Some(_) => vnni.push(name),
                    None => reference.push(name),
                }
            }
            let mut products = Vec::new();
            for (kernel, names) in [("vnni-avx512", vnni), ("reference", reference)] {
                if !names.is_empty() {
                    products.push(format!("{kernel} ({})", names.join(", ")));
                }
            }
            lines.push(format!("quantized matmul: {}", products.join(", ")));
            // Float matrices take candle's matmul for every row; quantized ones get the dense copy.
            lines.push(match self.prompt_copy && self.types.iter().any(|&t| !float(t)) {
                true => format!("prompt rows: dense copy on {}", kernels.dense()),
                false => "prompt rows: as decode rows".to_string(),
            });
        } else {
            lines.push("matmul: reference (f32 weights)".to_string());
        }
        // The decoder's attention and rotary embedding are the model's own scalar code (f64 scores),
        // the same on every kernel selection.
        lines.push("attention: portable".to_string());
        if self.vision {
            lines.push("vision tower: reference".to_string());
        }
        lines
    }
}

/// The type a GGUF matrix is kept in at load: candle's CPU kernels for Q4_1 / Q5_0 / Q5_1 are scalar,
/// so those are re-quantized to Q8_0, which has SIMD kernels, except Q4_1 where the int8 kernel runs (it
/// takes Q4_1 as it is). Q8_0 holds every 4- and 5-bit level of a block to within 1/254 of the block's
/// range, so the model is the same to within that rounding.
fn layout(dtype: GgmlDType, vnni: Option<Avx512Vnni>) -> GgmlDType {
    match dtype {
        GgmlDType::Q4_1 if vnni.is_some() => dtype,
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => GgmlDType::Q8_0,
        _ => dtype,
    }
}

/// Whether a GGUF type holds floats (which need no dense copy).
fn float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Whether the int8 kernel takes matrices of this type as they are.
fn packs(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0)
}

/// A linear layer's weight: quantized for decode rows, which are memory-bound, plus, for small models,
/// a dense copy (bf16 where the CPU has it) for prompt rows, where a dense GEMM runs several times faster
/// than quantized dot products. The path depends on what a row is (prompt or decode), never on the
/// other rows of the step, so a sequence's output does not depend on its company.
struct Weight {
    quantized: Quantized,
    dense: Option<Dense>,
}

/// The quantized product: our VNNI kernel where the CPU has it and the type allows, else candle's.
enum Quantized {
    Packed(PackedQuant),
    Candle(QMatMul),
}

impl Quantized {
    fn new(tensor: QTensor, vnni: Option<Avx512Vnni>) -> Result<Self> {
        if let Some(cpu) = vnni.filter(|_| packs(tensor.dtype())) {
            if let Some(packed) = PackedQuant::from_qtensor(cpu, &tensor)? {
                return Ok(Quantized::Packed(packed));
            }
        }
        Ok(Quantized::Candle(QMatMul::from_qtensor(tensor)?))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Quantized::Candle(q) => q.forward(x),
            Quantized::Packed(p) => super::dense::map_rows(x, p.n(), |rows, m| p.forward(rows, m)),
        }
    }
}

/// Which rows of a packed step are prompt rows, and how to put the two groups back in order.
struct RowSplit {
    decode: Tensor,
    prompt: Tensor,
    /// Position of each packed row in `[decode rows…, prompt rows…]`.
    inverse: Tensor,
    all_prompt: bool,
    any_prompt: bool,
}

impl RowSplit {
    fn new(inputs: &[StepInput<'_>]) -> Result<Self> {
        let (mut decode, mut prompt) = (Vec::new(), Vec::new());
        let mut row = 0u32;
        for input in inputs {
            for _ in input.tokens {
                if input.prompt {
                    prompt.push(row)
                } else {
                    decode.push(row)
                }
                row += 1;
            }
        }
        let mut inverse = vec![0u32; row as usize];
        for (at, &r) in decode.iter().chain(&prompt).enumerate() {
            inverse[r as usize] = at as u32;
        }
        let (all_prompt, any_prompt) = (decode.is_empty(), !prompt.is_empty());
        let (d, p, n) = (decode.len(), prompt.len(), inverse.len());
        Ok(Self {
            decode: Tensor::from_vec(decode, d, &Device::Cpu)?,
            prompt: Tensor::from_vec(prompt, p, &Device::Cpu)?,
            inverse: Tensor::from_vec(inverse, n, &Device::Cpu)?,
            all_prompt,
            any_prompt,
        })
    }
}

impl Weight {
    /// An f32 weight (safetensors checkpoints): one path for every row.
    fn new(weight: QMatMul) -> Self {
        Self { quantized: Quantized::Candle(weight), dense: None }
    }

    /// A GGUF weight, with a dense copy for prompt rows when `keep_dense` and the weight is quantized
    /// (float weights take candle's f32 matmul for every row, like safetensors checkpoints).
    fn from_gguf(tensor: QTensor, keep_dense: bool, kernels: Kernels) -> Result<Self> {
        let dense = if keep_dense && !float(tensor.dtype()) {
            Some(Dense::new(&tensor.dequantize(&Device::Cpu)?, None, kernels.bf16)?)
        } else {
            None
        };
        Ok(Self { quantized: Quantized::new(tensor, kernels.vnni)?, dense })
    }

    fn forward(&self, x: &Tensor, rows: &RowSplit) -> Result<Tensor> {
        let Some(w) = self.dense.as_ref().filter(|_| rows.any_prompt) else {
            return self.quantized.forward(x);
        };
        if rows.all_prompt {
            return w.forward(x);
        }
        let decode = self.quantized.forward(&x.index_select(&rows.decode, 0)?)?;
        let prompt = w.forward(&x.index_select(&rows.prompt, 0)?)?;
        Tensor::cat(&[decode, prompt], 0)?.index_select(&rows.inverse, 0)
    }
}

struct Block {
    attn_norm: Tensor,
    q: Weight,
    k: Weight,
    v: Weight,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Weight,
    ffn_norm: Tensor,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// The KV cache of one sequence: per layer, keys and values of every position so far.
#[derive(Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    /// Rotary position of cache slot `i` is `i + rope_delta` for text tokens; images take fewer
    /// positions than tokens, so after one the positions run behind the slots (Qwen3-VL).
    pub rope_delta: i64,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's share of a step.
pub struct StepInput<'a> {
    /// Its cache, extended by the step.
    pub cache: &'a mut KvCache,
    /// New tokens to run.
    pub tokens: &'a [u32],
    /// Whether to compute logits for the last new token.
    pub logits: bool,
    /// Explicit (time, row, column) rotary positions of the new tokens; `None` continues the text
    /// positions of the cache.
    pub positions: Option<&'a [[u32; 3]]>,
    /// Image features for some of the new tokens.
    pub visual: Option<StepVisual>,
    /// Whether the tokens are prompt tokens (run through the dense weights when the model keeps
    /// them) rather than generated ones.
    pub prompt: bool,
}

impl<'a> StepInput<'a> {
    /// Text tokens at the cache's next positions.
    pub fn text(cache: &'a mut KvCache, tokens: &'a [u32], logits: bool) -> Self {
        Self { cache, tokens, logits, positions: None, visual: None, prompt: false }
    }

    /// Marks the tokens as prompt tokens.
    pub fn prompt(mut self) -> Self {
        self.prompt = true;
        self
    }
}

/// Vision features that replace the embeddings of some tokens of a step input.
pub struct StepVisual {
    /// Offsets of the image tokens within the input's new tokens, ascending.
    pub rows: Vec<u32>,
    /// Their embeddings, `[rows, hidden]`.
    pub embeds: Tensor,
    /// DeepStack features added after layer `i`, each `[rows, hidden]`.
    pub deepstack: Vec<Tensor>,
}

/// A loaded model.
pub struct Llama {
    /// Shapes.
    pub config: LlamaConfig,
    embeddings: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Quantized,
    /// cos/sin tables `[context, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// For each rotary frequency, the position axis it turns with (0 = time; MRoPE only).
    rope_axis: Vec<usize>,
    /// The threads its steps run on.
    pool: Pool,
}

impl Llama {
    /// Loads the weights of a GGUF file (CPU) for `kernels`: prompt rows' dense copies on the bf16
    /// kernel where it has it (else f32), quantized products on the int8 kernel where it has it.
    pub fn from_gguf(path: &Path, kernels: Kernels) -> anyhow::Result<(Self, Content)> {
        let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = Content::read(&mut file).with_context(|| format!("reading GGUF {}", path.display()))?;
        let config = LlamaConfig::from_gguf(&content)?;
        let device = Device::Cpu;
        let weights = ChatWeights::of_gguf(&content);
        tracing::info!(path = %path.display(), kernels = %weights.report(kernels).join("; "), "chat kernels");
        let file = &mut file;
        let vnni = kernels.vnni;
        let embeddings = read(&content, file, "token_embd.weight", vnni)?.dequantize(&device)?;
        let output_name =
            if content.tensor_infos.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" };
        let output = Quantized::new(read(&content, file, output_name, vnni)?, vnni)?;
        let norm = read(&content, file, "output_norm.weight", vnni)?.dequantize(&device)?;
        let keep_dense = weights.prompt_copy;
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut q = |s: &str| -> anyhow::Result<Weight> {
                Ok(Weight::from_gguf(read(&content, file, &format!("blk.{i}.{s}"), vnni)?, keep_dense, kernels)?)
            };
            let (q_proj, k_proj, v_proj, o) =
                (q("attn_q.weight")?, q("attn_k.weight")?, q("attn_v.weight")?, q("attn_output.weight")?);
            let (gate, up, down) = (q("ffn_gate.weight")?, q("ffn_up.weight")?, q("ffn_down.weight")?);
            let mut dense = |s: &str| -> anyhow::Result<Tensor> {
                Ok(read(&content, file, &format!("blk.{i}.{s}"), vnni)?.dequantize(&device)?)
            };
            let (attn_norm, ffn_norm) = (dense("attn_norm.weight")?, dense("ffn_norm.weight")?);
            let mut optional = |s: &str| -> anyhow::Result<Option<Tensor>> {
                let name = format!("blk.{i}.{s}");
                if content.tensor_infos.contains_key(&name) {
                    Ok(Some(read(&content, file, &name, vnni)?.dequantize(&device)?))
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
                q: q_proj,
                k: k_proj,
                v: v_proj,
                o,
                gate,
                up,
                down,
            });
        }
        Ok((Self::assemble(config, embeddings, blocks, norm, output)?, content))
    }

    /// Loads a Hub-layout safetensors checkpoint (llama, qwen2, qwen3; f32, f16 or bf16, kept as f32).
    pub fn from_safetensors(dir: &Path) -> anyhow::Result<Self> {
        let config = LlamaConfig::from_hub_config(&dir.join("config.json"))?;
        let files = safetensors_files(dir)?;
        let device = Device::Cpu;
        // SAFETY: the files are mapped read-only and not modified while the model loads.
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, candle_core::DType::F32, &device)? };
        let vb = if vb.contains_tensor("model.language_model.embed_tokens.weight") {
            vb.pp("model.language_model")
        } else if vb.contains_tensor("model.embed_tokens.weight") {
            vb.pp("model")
        } else {
            vb
        };
        let (h, c) = (config.hidden, &config);
        let (q_width, kv_width) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let dense = |t: Tensor| Weight::new(QMatMul::Tensor(t));
        let embeddings = vb.get((c.vocab, h), "embed_tokens.weight")?;
        let root = vb.clone();
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let l = vb.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let optional = |vb: &candle_nn::VarBuilder, name: &str, size: usize| -> anyhow::Result<Option<Tensor>> {
                Ok(if vb.contains_tensor(name) { Some(vb.get(size, name)?) } else { None })
            };
            blocks.push(Block {
                attn_norm: l.get(h, "input_layernorm.weight")?,
                ffn_norm: l.get(h, "post_attention_layernorm.weight")?,
                q: dense(a.get((q_width, h), "q_proj.weight")?),
                k: dense(a.get((kv_width, h), "k_proj.weight")?),
                v: dense(a.get((kv_width, h), "v_proj.weight")?),
                o: dense(a.get((h, q_width), "o_proj.weight")?),
                q_bias: optional(&a, "q_proj.bias", q_width)?,
                k_bias: optional(&a, "k_proj.bias", kv_width)?,
                v_bias: optional(&a, "v_proj.bias", kv_width)?,
                q_norm: optional(&a, "q_norm.weight", c.head_dim)?,
                k_norm: optional(&a, "k_norm.weight", c.head_dim)?,
                gate: dense(l.get((c.ffn, h), "mlp.gate_proj.weight")?),
                up: dense(l.get((c.ffn, h), "mlp.up_proj.weight")?),
                down: dense(l.get((h, c.ffn), "mlp.down_proj.weight")?),
            });
        }
        let norm = root.get(h, "norm.weight")?;
        let output = match unsafe {
            candle_nn::VarBuilder::from_mmaped_safetensors(&files, candle_core::DType::F32, &device)?
        } {
            top if top.contains_tensor("lm_head.weight") => {
                Quantized::Candle(QMatMul::Tensor(top.get((c.vocab, h), "lm_head.weight")?))
            }
            _ => Quantized::Candle(QMatMul::Tensor(embeddings.clone())),
        };
        Self::assemble(config, embeddings, blocks, norm, output)
    }

    fn assemble(
        config: LlamaConfig,
        embeddings: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
        output: Quantized,
    ) -> anyhow::Result<Self> {
        let half = config.head_dim / 2;
        let mut cos = Vec::with_capacity(config.context * half);
        let mut sin = Vec::with_capacity(config.context * half);
        for pos in 0..config.context {
            for i in 0..half {
                let freq = 1.0 / config.rope_base.powf(2.0 * i as f32 / config.head_dim as f32);
                let angle = pos as f32 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
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
        Ok(Self { config, embeddings, blocks, norm, output, cos, sin, rope_axis, pool })
    }

    /// A new, empty cache for a sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); self.config.layers],
            values: vec![Vec::new(); self.config.layers],
            len: 0,
            rope_delta: 0,
        }
    }

    /// Runs one packed step; returns the logits (`[vocab]`) of each input that asked for them, in order.
    pub fn step(&self, inputs: &mut [StepInput<'_>]) -> Result<Vec<Vec<f32>>> {
        self.pool.run(|| self.step_in_pool(inputs))
    }

    fn step_in_pool(&self, inputs: &mut [StepInput<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.tokens.iter().copied()).collect();
        let total = ids.len();
        if total == 0 {
            return Ok(Vec::new());
        }
        let starts: Vec<usize> = inputs.iter().map(|i| i.cache.len).collect();
        let ids_t = Tensor::from_vec(ids, total, &Device::Cpu)?;
        let mut x = self.embeddings.index_select(&ids_t, 0)?;
        let visual = self.gather_visual(inputs)?;
        let rows = RowSplit::new(inputs)?;
        if let Some((rows, embeds, _)) = &visual {
            x = x.index_add(rows, &(embeds - x.index_select(rows, 0)?)?, 0)?;
        }
        let (q_width, kv_width) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, c.eps as f32)?;
            let with_bias = |t: Tensor, b: &Option<Tensor>| match b {
                Some(b) => t.broadcast_add(b),
                None => Ok(t),
            };
            let mut q = with_bias(block.q.forward(&h, &rows)?, &block.q_bias)?;
            let mut k = with_bias(block.k.forward(&h, &rows)?, &block.k_bias)?;
            let v = with_bias(block.v.forward(&h, &rows)?, &block.v_bias)?;
            if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                q = candle_nn::ops::rms_norm(&q.reshape((total * c.heads, c.head_dim))?, qn, c.eps as f32)?
                    .reshape((total, q_width))?;
                k = candle_nn::ops::rms_norm(&k.reshape((total * c.kv_heads, c.head_dim))?, kn, c.eps as f32)?
                    .reshape((total, kv_width))?;
            }
            let mut q = q.flatten_all()?.to_vec1::<f32>()?;
            let mut k = k.flatten_all()?.to_vec1::<f32>()?;
            let v = v.flatten_all()?.to_vec1::<f32>()?;
            // RoPE at each token's own position, then append K/V to each sequence's cache.
            let mut row = 0;
            for (input, &start) in inputs.iter_mut().zip(&starts) {
                for t in 0..input.tokens.len() {
                    let pos = match input.positions {
                        Some(p) => p[t].map(|a| a as usize),
                        None => [(start + t) as i64 + input.cache.rope_delta; 3].map(|p| p.max(0) as usize),
                    };
                    self.rope(&mut q[(row + t) * q_width..][..q_width], pos);
                    self.rope(&mut k[(row + t) * kv_width..][..kv_width], pos);
                }
                let n = input.tokens.len();
                input.cache.keys[layer].extend_from_slice(&k[row * kv_width..(row + n) * kv_width]);
                input.cache.values[layer].extend_from_slice(&v[row * kv_width..(row + n) * kv_width]);
                row += n;
            }
            let attn = self.attention(inputs, &starts, layer, &q)?;
            let attn = Tensor::from_vec(attn, (total, q_width), &Device::Cpu)?;
            x = (x + block.o.forward(&attn, &rows)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, c.eps as f32)?;
            let gated = (candle_nn::ops::silu(&block.gate.forward(&h, &rows)?)? * block.up.forward(&h, &rows)?)?;
            x = (x + block.down.forward(&gated, &rows)?)?;
            if let Some((rows, _, deepstack)) = &visual {
                if let Some(features) = deepstack.get(layer) {
                    x = x.index_add(rows, features, 0)?;
                }
            }
        }
        for input in inputs.iter_mut() {
            input.cache.len += input.tokens.len();
        }
        // Logits only for the last new token of the sequences that sample.
        let mut rows = Vec::new();
        let mut end = 0;
        for input in inputs.iter() {
            end += input.tokens.len();
            if input.logits && !input.tokens.is_empty() {
                rows.push((end - 1) as u32);
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let last = x.index_select(&Tensor::from_vec(rows, n, &Device::Cpu)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, c.eps as f32)?;
        let logits = self.output.forward(&last)?;
        logits.to_vec2::<f32>()
    }

    /// The image rows of a step (packed offsets), their embeddings and DeepStack features.
    #[allow(clippy::type_complexity)]
    fn gather_visual(&self, inputs: &[StepInput<'_>]) -> Result<Option<(Tensor, Tensor, Vec<Tensor>)>> {
        let (mut rows, mut embeds, mut deepstack) = (Vec::new(), Vec::new(), Vec::<Vec<Tensor>>::new());
        let mut offset = 0u32;
        for input in inputs {
            if let Some(v) = &input.visual {
                rows.extend(v.rows.iter().map(|r| r + offset));
                embeds.push(v.embeds.clone());
                for (layer, f) in v.deepstack.iter().enumerate() {
                    match deepstack.get_mut(layer) {
                        Some(list) => list.push(f.clone()),
                        None => deepstack.push(vec![f.clone()]),
                    }
                }
            }
            offset += input.tokens.len() as u32;
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        let deepstack = deepstack.iter().map(|l| Tensor::cat(l, 0)).collect::<Result<Vec<_>>>()?;
        Ok(Some((Tensor::from_vec(rows, n, &Device::Cpu)?, Tensor::cat(&embeds, 0)?, deepstack)))
    }

    fn rope(&self, row: &mut [f32], pos: [usize; 3]) {
        let d = self.config.head_dim;
        let half = d / 2;
        let mut cos = [0f32; 256];
        let mut sin = [0f32; 256];
        for (j, &axis) in self.rope_axis.iter().enumerate() {
            let p = pos[axis].min(self.config.context - 1);
            cos[j] = self.cos[p * half + j];
            sin[j] = self.sin[p * half + j];
        }
        for head in row.chunks_exact_mut(d) {
            if self.config.rope_halves {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = a * sin[i] + b * cos[i];
                }
            } else {
                for i in 0..half {
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * cos[i] - b * sin[i];
                    head[2 * i + 1] = a * sin[i] + b * cos[i];
                }
            }
        }
    }

    /// Causal attention of each sequence's new tokens over its cache; returns `[tokens, heads·head_dim]`.
    fn attention(&self, inputs: &[StepInput<'_>], starts: &[usize], layer: usize, q: &[f32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let (d, q_width, kv_width) = (c.head_dim, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; q.len()];
        let mut jobs = Vec::with_capacity(inputs.len());
        let (mut rest, mut row) = (out.as_mut_slice(), 0);
        for (input, &start) in inputs.iter().zip(starts) {
            let n = input.tokens.len();
            let (chunk, tail) = rest.split_at_mut(n * q_width);
            jobs.push((chunk, &q[row * q_width..(row + n) * q_width], start, n, input));
            rest = tail;
            row += n;
        }
        jobs.into_par_iter().for_each(|(out, q, start, n, input)| {
            let keys = &input.cache.keys[layer];
            let values = &input.cache.values[layer];
            let mut scores = vec![0f32; start + n];
            for t in 0..n {
                let visible = start + t + 1;
                for h in 0..c.heads {
                    let kvh = h / group;
                    let qh = &q[t * q_width + h * d..][..d];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in scores[..visible].iter_mut().enumerate() {
                        let kh = &keys[j * kv_width + kvh * d..][..d];
                        // f64 accumulation: the top logits of small 4-bit models can sit within
                        // activation-quantization noise of each other, so keep this part exact.
                        *s = (dot_f64(qh, kh) * scale as f64) as f32;
                        max = max.max(*s);
                    }
                    let mut sum = 0f32;
                    for s in scores[..visible].iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let o = &mut out[t * q_width + h * d..][..d];
                    for (j, &p) in scores[..visible].iter().enumerate() {
                        let vh = &values[j * kv_width + kvh * d..][..d];
                        let w = p / sum;
                        for (o, v) in o.iter_mut().zip(vh) {
                            *o += w * v;
                        }
                    }
                }
            }
        });
        Ok(out)
    }
}

/// A dot product accumulated in f64, in eight independent lanes so that it vectorizes (a single
/// running sum cannot be reordered by the compiler).
#[inline]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let tail: f64 = ta.iter().zip(tb).map(|(x, y)| *x as f64 * *y as f64).sum();
    lanes.iter().sum::<f64>() + tail
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

/// Reads a tensor and lays out a matrix in the type [`layout`] keeps for the int8 kernel `vnni`.
fn read(content: &Content, file: &mut std::fs::File, name: &str, vnni: Option<Avx512Vnni>) -> anyhow::Result<QTensor> {
    let tensor = content.tensor(file, name, &Device::Cpu).with_context(|| format!("GGUF tensor {name}"))?;
    let kept = layout(tensor.dtype(), vnni);
    if kept == tensor.dtype() || tensor.shape().dims().len() != 2 {
        return Ok(tensor);
    }
    Ok(QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, kept)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::STALE_BUILD;

    fn gguf(types: &[GgmlDType], prompt_copy: bool) -> ChatWeights {
        ChatWeights { gguf: true, prompt_copy, types: types.to_vec(), vision: false }
    }

    #[test]
    fn without_the_int8_kernel_slow_types_become_q8_0_on_candle() {
        for (dtype, kept) in [
            (GgmlDType::Q4_1, GgmlDType::Q8_0),
            (GgmlDType::Q5_0, GgmlDType::Q8_0),
            (GgmlDType::Q4_0, GgmlDType::Q4_0),
            (GgmlDType::Q6K, GgmlDType::Q6K),
        ] {
            assert_eq!(layout(dtype, None), kept, "{dtype:?}");
        }
        let report = gguf(&[GgmlDType::Q4_1, GgmlDType::Q6K], true).report(Kernels::REFERENCE);
        assert_eq!(
            report,
            [
                "quantized matmul: reference (Q4_1 as Q8_0, Q6K)",
                "prompt rows: dense copy on reference",
                "attention: portable"
            ]
        );
        let big = gguf(&[GgmlDType::Q8_0], false).report(Kernels::REFERENCE);
        assert_eq!(big[1], "prompt rows: as decode rows");
        let floats = gguf(&[GgmlDType::F16], true).report(Kernels::REFERENCE);
        assert_eq!(floats[..2], ["quantized matmul: reference (F16)", "prompt rows: as decode rows"]);
        let vision = ChatWeights { vision: true, ..ChatWeights::default() }.report(Kernels::REFERENCE);
        assert_eq!(vision, ["matmul: reference (f32 weights)", "attention: portable", "vision tower: reference"]);
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512vnni), ignore = "needs AVX-512 VNNI")]
    fn the_int8_kernel_takes_q4_0_q4_1_and_q8_0_as_they_are() {
        let vnni = Some(Avx512Vnni::detect().expect(STALE_BUILD));
        assert_eq!(layout(GgmlDType::Q4_1, vnni), GgmlDType::Q4_1);
        assert_eq!(layout(GgmlDType::Q5_1, vnni), GgmlDType::Q8_0);
        let kernels = Kernels { vnni, ..Kernels::REFERENCE };
        let report = gguf(&[GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q6K], true).report(kernels);
        assert_eq!(report[0], "quantized matmul: vnni-avx512 (Q4_1, Q5_0 as Q8_0), reference (Q6K)");
    }
}
