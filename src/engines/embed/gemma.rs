//! Gemma 3 as a bidirectional text encoder (EmbeddingGemma: `Gemma3TextModel` with
//! `use_bidirectional_attention`).
//!
//! Per layer: RMS norm, attention (grouped-query, per-head RMS norms on Q and K, rotary positions with
//! a local base on sliding-window layers and a global one on full-attention layers, scaled by
//! `query_pre_attn_scalar^-½`), RMS norm, residual; RMS norm, GeGLU feed-forward (tanh GeLU), RMS norm,
//! residual. Gemma's RMS norms scale by `1 + weight`, and token embeddings by `√hidden`. Every token
//! sees every other of its sequence, except on sliding layers, which see those within the window.
//!
//! The projections run on the model's dense kernel over the packed tokens of the batch; attention runs
//! per sequence in candle ops.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

use crate::engines::kernels::Kernels;
use crate::engines::nn::attention::Packing;
use crate::engines::nn::dense::Dense;

/// The fields of a Gemma 3 `config.json` the encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct GemmaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMS norm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base of full-attention layers.
    pub rope_theta: f32,
    /// Rotary base of sliding-window layers.
    #[serde(default = "local_base")]
    pub rope_local_base_freq: f32,
    /// Window of sliding layers (a token sees those less than this far away).
    pub sliding_window: usize,
    /// `sliding_attention` or `full_attention` per layer.
    #[serde(default)]
    pub layer_types: Vec<String>,
    /// Every `n`-th layer is global when `layer_types` is absent.
    #[serde(default = "pattern", alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: usize,
    /// Attention scores are scaled by this to the −½.
    pub query_pre_attn_scalar: f64,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// The checkpoint's classes, for error messages.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Whether attention is bidirectional (an encoder); a causal Gemma is a chat model.
    #[serde(default)]
    pub use_bidirectional_attention: bool,
}

fn local_base() -> f32 {
    10_000.0
}

fn pattern() -> usize {
    6
}

impl GemmaConfig {
    /// Whether layer `i` attends within the sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        match self.layer_types.get(i) {
            Some(kind) => kind == "sliding_attention",
            None => !(i + 1).is_multiple_of(self.sliding_window_pattern),
        }
    }
}

/// Gemma's RMS norm weight: `1 + weight`.
fn norm(vb: &VarBuilder, size: usize, name: &str) -> Result<Tensor> {
    vb.get(size, name)? + 1.0
}

struct Layer {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    q_norm: Tensor,
    k_norm: Tensor,
    input_norm: Tensor,
    post_attention_norm: Tensor,
    pre_ffn_norm: Tensor,
    post_ffn_norm: Tensor,
    gate: Dense,
    up: Dense,
    down: Dense,
    sliding: bool,
}

/// Rotary cos/sin tables `[positions, head_dim / 2]` for one base.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(base: f32, head_dim: usize, positions: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let frequencies: Vec<f32> = (0..half).map(|i| 1.0 / base.powf(2.0 * i as f32 / head_dim as f32)).collect();
        let angles: Vec<f32> = (0..positions).flat_map(|p| frequencies.iter().map(move |f| p as f32 * f)).collect();
        let angles = Tensor::from_vec(angles, (positions, half), device)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()? })
    }
}

/// A loaded encoder.
pub struct GemmaEncoder {
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    local: Rotary,
    global: Rotary,
    device: Device,
    /// The config it was built from.
    pub config: GemmaConfig,
}

impl GemmaEncoder {
    /// Loads a `Gemma3TextModel` checkpoint (with or without a `model.` prefix) for `kernels`.
    pub fn load(weights: &Path, config: GemmaConfig, device: &Device, kernels: Kernels) -> anyhow::Result<Self> {
        // SAFETY: the file is mapped read-only and not modified while the model lives.
        let root = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        let vb = if root.contains_tensor("model.embed_tokens.weight") { root.pp("model") } else { root };
        let c = &config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_width, kv_width) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let embeddings = (vb.get((c.vocab_size, h), "embed_tokens.weight")? * (h as f64).sqrt())?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("layers.{i}"));
            let dense = |name: &str, out: usize, input: usize| -> Result<Dense> {
                Dense::new(&l.get((out, input), &format!("{name}.weight"))?, None, kernels.dense)
            };
            layers.push(Layer {
                q: dense("self_attn.q_proj", q_width, h)?,
                k: dense("self_attn.k_proj", kv_width, h)?,
                v: dense("self_attn.v_proj", kv_width, h)?,
                o: dense("self_attn.o_proj", h, q_width)?,
                q_norm: norm(&l, d, "self_attn.q_norm.weight")?,
                k_norm: norm(&l, d, "self_attn.k_norm.weight")?,
                input_norm: norm(&l, h, "input_layernorm.weight")?,
                post_attention_norm: norm(&l, h, "post_attention_layernorm.weight")?,
                pre_ffn_norm: norm(&l, h, "pre_feedforward_layernorm.weight")?,
                post_ffn_norm: norm(&l, h, "post_feedforward_layernorm.weight")?,
                gate: dense("mlp.gate_proj", c.intermediate_size, h)?,
                up: dense("mlp.up_proj", c.intermediate_size, h)?,
                down: dense("mlp.down_proj", h, c.intermediate_size)?,
                sliding: c.is_sliding(i),
            });
        }
        let positions = c.max_position_embeddings;
        Ok(Self {
            embeddings,
            layers,
            norm: norm(&vb, h, "norm.weight")?,
            local: Rotary::new(c.rope_local_base_freq, d, positions, device)?,
            global: Rotary::new(c.rope_theta, d, positions, device)?,
            device: device.clone(),
            config,
        })
    }

    fn rms(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, weight, self.config.rms_norm_eps as f32)
    }

    /// Runs the encoder on packed sequences; returns the last hidden states `[tokens, hidden]`.
    pub fn forward(&self, ids: &[u32], packing: &Packing) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?;
        for layer in &self.layers {
            let h = self.rms(&x, &layer.input_norm)?;
            let context = self.attention(layer, &h, packing)?;
            x = (x + self.rms(&layer.o.forward(&context)?, &layer.post_attention_norm)?)?;
            let h = self.rms(&x, &layer.pre_ffn_norm)?;
            let gated = (layer.gate.forward(&h)?.gelu()? * layer.up.forward(&h)?)?;
            x = (x + self.rms(&layer.down.forward(&gated)?, &layer.post_ffn_norm)?)?;
        }
        self.rms(&x, &self.norm)
    }

    /// Attention of every sequence over itself; `[tokens, heads · head_dim]`.
    fn attention(&self, layer: &Layer, h: &Tensor, packing: &Packing) -> Result<Tensor> {
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (q, k, v) = (layer.q.forward(h)?, layer.k.forward(h)?, layer.v.forward(h)?);
        let rotary = if layer.sliding { &self.local } else { &self.global };
        let scale = c.query_pre_attn_scalar.powf(-0.5);
        let mut outs = Vec::with_capacity(packing.spans.len());
        for &(start, len) in &packing.spans {
            // [1, heads, len, d], normed per head, then rotated.
            let split = |t: &Tensor, n: usize, weight: &Tensor| -> Result<Tensor> {
                let t = t.narrow(0, start, len)?.reshape((1, len, n, d))?;
                let t = candle_nn::ops::rms_norm(&t, weight, c.rms_norm_eps as f32)?.transpose(1, 2)?.contiguous()?;
                let (cos, sin) = (rotary.cos.narrow(0, 0, len)?, rotary.sin.narrow(0, 0, len)?);
                candle_nn::rotary_emb::rope(&t, &cos, &sin)
            };
            let q = split(&q, heads, &layer.q_norm)?;
            let k = split(&k, kv_heads, &layer.k_norm)?;
            let v = v.narrow(0, start, len)?.reshape((1, len, kv_heads, d))?.transpose(1, 2)?.contiguous()?;
            // Grouped-query attention: each key/value head serves `heads / kv_heads` query heads.
            let group = heads / kv_heads;
            let q = q.reshape((kv_heads, group * len, d))?;
            let k = k.reshape((kv_heads, len, d))?;
            let v = v.reshape((kv_heads, len, d))?;
            let mut scores = (q.matmul(&k.t()?)? * scale)?;
            if layer.sliding && len > c.sliding_window {
                scores = scores.broadcast_add(&self.window_mask(len, group)?)?;
            }
            let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let context = weights.matmul(&v)?.reshape((heads, len, d))?.transpose(0, 1)?.reshape((len, heads * d))?;
            outs.push(context);
        }
        Tensor::cat(&outs, 0)
    }

    /// `[group · len, len]`: −∞ where a key is a window or more away from the query.
    fn window_mask(&self, len: usize, group: usize) -> Result<Tensor> {
        let window = self.config.sliding_window;
        let row: Vec<f32> = (0..group * len)
            .flat_map(|r| {
                let i = r % len;
                (0..len).map(move |j| if i.abs_diff(j) < window { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        Tensor::from_vec(row, (group * len, len), &self.device)
    }

    /// Hidden width.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
}
