//! nomic-bert (nomic-embed-text) read from a GGUF file, as llama.cpp and GPT4All ship it.
//!
//! A BERT-shaped post-norm encoder with rotary positions instead of a position table (NeoX halves,
//! base `nomic-bert.rope.freq_base`), Q, K and V fused without biases, and a SwiGLU feed-forward
//! (`down(silu(gate(x)) · up(x))`). The projections run on the model's dense kernel over the packed
//! tokens of the batch; attention runs per sequence in candle ops.

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Result, Tensor, D};
use std::path::Path;

use crate::config::roster::Pooling;
use crate::engines::kernels::Kernels;
use crate::engines::nn::attention::Packing;
use crate::engines::nn::dense::Dense;

/// The shapes a nomic-bert GGUF's metadata gives.
#[derive(Debug, Clone)]
pub struct NomicConfig {
    /// Layers.
    pub layers: usize,
    /// Width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Layer norm epsilon.
    pub eps: f64,
    /// Rotary base.
    pub rope_base: f32,
    /// Longest sequence.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// The pooling the file names (`pooling_type`: 1 mean, 2 CLS, 3 last token).
    pub pooling: Option<Pooling>,
}

impl NomicConfig {
    /// Reads the metadata of a `nomic-bert` GGUF file.
    pub fn from_gguf(content: &Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let get = |key: &str| {
            md.get(&format!("nomic-bert.{key}")).ok_or_else(|| anyhow::anyhow!("GGUF has no nomic-bert.{key}"))
        };
        let vocab = md.get("tokenizer.ggml.tokens").map(|t| t.to_vec().map(Vec::len)).transpose()?.unwrap_or(0);
        Ok(Self {
            layers: get("block_count")?.to_u32()? as usize,
            hidden: get("embedding_length")?.to_u32()? as usize,
            heads: get("attention.head_count")?.to_u32()? as usize,
            ffn: get("feed_forward_length")?.to_u32()? as usize,
            eps: get("attention.layer_norm_epsilon")?.to_f32()? as f64,
            rope_base: get("rope.freq_base").and_then(|v| Ok(v.to_f32()?)).unwrap_or(1000.0),
            context: get("context_length")?.to_u32()? as usize,
            vocab,
            pooling: match get("pooling_type").and_then(|v| Ok(v.to_u32()?)) {
                Ok(1) => Some(Pooling::Mean),
                Ok(2) => Some(Pooling::Cls),
                Ok(3) => Some(Pooling::LastToken),
                _ => None,
            },
        })
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

struct Layer {
    qkv: Dense,
    out: Dense,
    attn_norm: LayerNorm,
    up: Dense,
    gate: Dense,
    down: Dense,
    out_norm: LayerNorm,
}

/// A loaded encoder.
pub struct NomicEncoder {
    word: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    /// The config it was built from.
    pub config: NomicConfig,
}

impl NomicEncoder {
    /// Loads the tensors of a nomic-bert GGUF file (dequantized to f32) for `kernels`.
    pub fn load(path: &Path, config: NomicConfig, device: &Device, kernels: Kernels) -> anyhow::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let content = Content::read(&mut file)?;
        let mut tensors = std::collections::HashMap::new();
        for name in content.tensor_infos.keys() {
            tensors.insert(name.clone(), content.tensor(&mut file, name, device)?.dequantize(device)?);
        }
        let get = |name: &str| -> anyhow::Result<Tensor> {
            tensors.get(name).cloned().ok_or_else(|| anyhow::anyhow!("{} has no tensor {name}", path.display()))
        };
        let dense = |w: Tensor| Dense::new(&w, None, kernels.dense);
        let norm = |name: &str| -> anyhow::Result<LayerNorm> {
            Ok(LayerNorm { weight: get(&format!("{name}.weight"))?, bias: get(&format!("{name}.bias"))? })
        };
        let embed_norm = norm("token_embd_norm")?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let attn_norm = norm(&format!("blk.{i}.attn_output_norm"))?;
            let out_norm = norm(&format!("blk.{i}.layer_output_norm"))?;
            let weight = |name: &str| get(&format!("blk.{i}.{name}.weight"));
            layers.push(Layer {
                qkv: dense(weight("attn_qkv")?)?,
                out: dense(weight("attn_output")?)?,
                up: dense(weight("ffn_up")?)?,
                gate: dense(weight("ffn_gate")?)?,
                down: dense(weight("ffn_down")?)?,
                attn_norm,
                out_norm,
            });
        }
        let word = get("token_embd.weight")?;
        let token_type = get("token_types.weight")?.narrow(0, 0, 1)?;
        let head_dim = config.hidden / config.heads;
        let half = head_dim / 2;
        let frequencies: Vec<f32> =
            (0..half).map(|i| 1.0 / config.rope_base.powf(2.0 * i as f32 / head_dim as f32)).collect();
        let angles: Vec<f32> =
            (0..config.context).flat_map(|p| frequencies.iter().map(move |f| p as f32 * f)).collect();
        let angles = Tensor::from_vec(angles, (config.context, half), device)?;
        Ok(Self {
            word,
            token_type,
            embed_norm,
            layers,
            cos: angles.cos()?,
            sin: angles.sin()?,
            device: device.clone(),
            config,
        })
    }

    fn norm(&self, x: &Tensor, n: &LayerNorm) -> Result<Tensor> {
        candle_nn::ops::layer_norm(x, &n.weight, &n.bias, self.config.eps as f32)
    }

    /// Runs the encoder on packed sequences; returns the last hidden states `[tokens, hidden]`.
    pub fn forward(&self, ids: &[u32], packing: &Packing) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let x = self.word.index_select(&ids, 0)?.broadcast_add(&self.token_type)?;
        let mut x = self.norm(&x, &self.embed_norm)?;
        for layer in &self.layers {
            let context = self.attention(&layer.qkv.forward(&x)?, packing)?;
            x = self.norm(&(x + layer.out.forward(&context)?)?, &layer.attn_norm)?;
            let gated = (candle_nn::ops::silu(&layer.gate.forward(&x)?)? * layer.up.forward(&x)?)?;
            x = self.norm(&(x + layer.down.forward(&gated)?)?, &layer.out_norm)?;
        }
        Ok(x)
    }

    /// Full attention of every sequence over itself, rotary positions from 0 in each.
    fn attention(&self, qkv: &Tensor, packing: &Packing) -> Result<Tensor> {
        let (h, heads) = (self.config.hidden, self.config.heads);
        let d = h / heads;
        let scale = 1.0 / (d as f64).sqrt();
        let mut outs = Vec::with_capacity(packing.spans.len());
        for &(start, len) in &packing.spans {
            let rows = qkv.narrow(0, start, len)?;
            let part = |i: usize| -> Result<Tensor> {
                rows.narrow(1, i * h, h)?.reshape((1, len, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let (cos, sin) = (self.cos.narrow(0, 0, len)?, self.sin.narrow(0, 0, len)?);
            let q = candle_nn::rotary_emb::rope(&part(0)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&part(1)?, &cos, &sin)?;
            let weights = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * scale)?, D::Minus1)?;
            let context = weights.matmul(&part(2)?)?.squeeze(0)?.transpose(0, 1)?.reshape((len, h))?;
            outs.push(context);
        }
        Tensor::cat(&outs, 0)
    }

    /// Hidden width.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden
    }
}
