//! BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa) with a packed forward pass.
//!
//! The weights are laid out once at load for the hot path: Q, K and V fused into one `[3·hidden, hidden]`
//! matrix with Q pre-scaled by 1/√head_dim, every dense layer packed for its kernel ([`Dense`]). The forward
//! pass runs the linear layers on the packed tokens of all sequences (no padding) and attention per
//! sequence (see [`crate::engines::nn::attention`]).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

use crate::engines::kernels::Kernels;
use crate::engines::nn::attention::{packed_attention, Packing};
use crate::engines::nn::dense::Dense;

/// The fields of a Hub `config.json` this encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Activation name (`gelu` is the exact erf form).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Position table size.
    pub max_position_embeddings: usize,
    /// Token type table size.
    #[serde(default = "one")]
    pub type_vocab_size: usize,
    /// Layer norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Padding id (RoBERTa positions start after it).
    #[serde(default)]
    pub pad_token_id: usize,
    /// `bert`, `roberta`, `xlm-roberta`, …
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }

    /// RoBERTa-style models number positions from `pad_token_id + 1`.
    pub fn position_offset(&self) -> usize {
        match self.model_type.as_deref() {
            Some("roberta" | "xlm-roberta" | "camembert") => self.pad_token_id + 1,
            _ => 0,
        }
    }

    /// Longest sequence the position table allows.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings - self.position_offset()
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

/// A torch `Linear`'s weight `[out, in]` and bias `[out]`.
fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<(Tensor, Tensor)> {
    Ok((vb.get((out_dim, in_dim), "weight")?, vb.get(out_dim, "bias")?))
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let (weight, bias) = if vb.contains_tensor("weight") {
            (vb.get(dim, "weight")?, vb.get(dim, "bias")?)
        } else {
            (vb.get(dim, "gamma")?, vb.get(dim, "beta")?)
        };
        Ok(Self { weight, bias, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    out_norm: LayerNorm,
}

/// A loaded encoder.
pub struct BertModel {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    position_offset: usize,
    activation: Activation,
    /// The kernels its dense layers, attention and GeLU run on.
    kernels: Kernels,
    device: Device,
    /// The config it was built from.
    pub config: BertConfig,
}

impl BertModel {
    /// Loads `model.safetensors` (with or without a `bert.` / `roberta.` prefix), laid out for `kernels`.
    pub fn load(weights: &Path, config: BertConfig, device: &Device, kernels: Kernels) -> anyhow::Result<Self> {
        // SAFETY: the file is mapped read-only and not modified while the model lives.
        let root = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        let vb = ["", "bert.", "roberta.", "model."]
            .iter()
            .map(|p| if p.is_empty() { root.clone() } else { root.pp(p.trim_end_matches('.')) })
            .find(|vb| vb.contains_tensor("embeddings.word_embeddings.weight"))
            .ok_or_else(|| anyhow::anyhow!("{} has no embeddings.word_embeddings.weight", weights.display()))?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        if h % config.num_attention_heads != 0 {
            anyhow::bail!("hidden_size {h} is not a multiple of num_attention_heads");
        }
        let heads = config.num_attention_heads;
        let head_dim = h / heads;
        let emb = vb.pp("embeddings");
        let word = emb.get((config.vocab_size, h), "word_embeddings.weight")?;
        let position = emb.get((config.max_position_embeddings, h), "position_embeddings.weight")?;
        let token_type = emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?.narrow(0, 0, 1)?;
        let embed_norm = LayerNorm::load(&emb.pp("LayerNorm"), h, config.layer_norm_eps)?;

        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{n}"));
            let att = l.pp("attention.self");
            let (qw, qb) = linear(&att.pp("query"), h, h)?;
            let (kw, kb) = linear(&att.pp("key"), h, h)?;
            let (vw, vb_) = linear(&att.pp("value"), h, h)?;
            let qkv = Dense::new(
                &Tensor::cat(&[(qw * scale)?, kw, vw], 0)?,
                Some(&Tensor::cat(&[(qb * scale)?, kb, vb_], 0)?),
                kernels.dense,
            )?;
            let dense = |name: &str, i: usize, o: usize| -> Result<Dense> {
                let (w, b) = linear(&l.pp(name), i, o)?;
                Dense::new(&w, Some(&b), kernels.dense)
            };
            layers.push(Layer {
                qkv,
                attn_out: dense("attention.output.dense", h, h)?,
                attn_norm: LayerNorm::load(&l.pp("attention.output.LayerNorm"), h, config.layer_norm_eps)?,
                intermediate: dense("intermediate.dense", h, i)?,
                output: dense("output.dense", i, h)?,
                out_norm: LayerNorm::load(&l.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
            });
        }
        let activation = match config.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => anyhow::bail!("unsupported hidden_act {other:?}"),
        };
        Ok(Self {
            word,
            position,
            token_type,
            embed_norm,
            layers,
            heads,
            head_dim,
            position_offset: config.position_offset(),
            activation,
            kernels,
            device: device.clone(),
            config,
        })
    }

    /// Hidden width.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Runs the encoder on packed sequences; returns the last hidden states `[tokens, hidden]`.
    pub fn forward(&self, ids: &[u32], packing: &Packing) -> Result<Tensor> {
        let mut positions = Vec::with_capacity(ids.len());
        for &(_, len) in &packing.spans {
            positions.extend((0..len).map(|p| (p + self.position_offset) as u32));
        }
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let positions = Tensor::from_vec(positions, ids.dim(0)?, &self.device)?;
        let x = (self.word.index_select(&ids, 0)? + self.position.index_select(&positions, 0)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.embed_norm.forward(&x)?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let ctx = packed_attention(&qkv, packing, self.heads, self.head_dim, self.kernels)?;
            let attn = layer.attn_norm.forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let hidden = match self.activation {
                Activation::GeluErf => layer.intermediate.forward_gelu(&attn, self.kernels.simd)?,
                Activation::GeluTanh => layer.intermediate.forward(&attn)?.gelu()?,
                Activation::Relu => layer.intermediate.forward(&attn)?.relu()?,
            };
            x = layer.out_norm.forward(&(layer.output.forward(&hidden)? + attn)?)?;
        }
        Ok(x)
    }
}
