//! BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa, MPNet) with a packed forward pass.
//!
//! MPNet is BERT with other tensor names, no token types, and a learned bias on attention scores by
//! relative position (T5's buckets), shared by every layer.
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
use crate::engines::nn::attention::{packed_attention, Packing, RelativeBias};
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
    /// `bert`, `roberta`, `xlm-roberta`, `mpnet`, …
    #[serde(default)]
    pub model_type: Option<String>,
    /// The checkpoint's classes (`BertModel`, `MPNetForMaskedLM`, …), for error messages.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// A classifier's labels (cross-encoders have one).
    #[serde(default)]
    pub id2label: Option<serde_json::Map<String, serde_json::Value>>,
    /// MPNet: buckets of the relative position bias.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
}

fn default_buckets() -> usize {
    32
}

/// The encoder layouts this module runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BERT, RoBERTa, XLM-RoBERTa, CamemBERT: the same layers under the same names.
    Bert,
    /// MPNet: other names, no token types, a relative position bias.
    MpNet,
}

/// What `model_type`s sis's encoder runs, for error messages.
pub const SUPPORTED: &str = "BERT, RoBERTa, XLM-RoBERTa, CamemBERT and MPNet encoders";

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
    /// The layout of this checkpoint, or why sis cannot run it (naming its architecture).
    pub fn family(&self) -> anyhow::Result<Family> {
        match self.model_type.as_deref() {
            None | Some("bert" | "roberta" | "xlm-roberta" | "camembert") => Ok(Family::Bert),
            Some("mpnet") => Ok(Family::MpNet),
            Some(other) => anyhow::bail!(
                "embedding architecture {:?} (model_type {other:?}) is not supported; sis runs {SUPPORTED}",
                self.architectures
            ),
        }
    }

    /// How many outputs a classification head has (one when the config names no labels).
    pub fn labels(&self) -> usize {
        self.id2label.as_ref().map_or(1, |labels| labels.len())
    }

    /// RoBERTa-style models (and MPNet) number positions from `pad_token_id + 1`.
    pub fn position_offset(&self) -> usize {
        match self.model_type.as_deref() {
            Some("roberta" | "xlm-roberta" | "camembert" | "mpnet") => self.pad_token_id + 1,
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

/// MPNet's bucket of a relative position `memory − context` (T5's bidirectional buckets): exact
/// below `buckets / 4`, logarithmic up to `max_distance`, each direction in its own half. Computed in
/// f32 as the Hugging Face implementation does, so that boundary distances land in the same bucket.
pub fn relative_bucket(relative: i64, buckets: usize, max_distance: usize) -> usize {
    let half = buckets / 2;
    let n = -relative;
    let side = if n < 0 { half } else { 0 };
    let n = n.unsigned_abs() as usize;
    let exact = half / 2;
    if n < exact {
        return side + n;
    }
    let log = (n as f32 / exact as f32).ln() / ((max_distance as f64 / exact as f64).ln() as f32);
    let large = exact + (log * (half - exact) as f32) as usize;
    side + large.min(half - 1)
}

/// A loaded encoder.
pub struct BertModel {
    word: Tensor,
    position: Tensor,
    /// The token type embeddings, `[types, hidden]` (MPNet has none).
    token_type: Option<Tensor>,
    /// MPNet's relative position bias.
    bias: Option<RelativeBias>,
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
    /// Loads `model.safetensors` or a `pytorch_model.bin` pickle (with or without a `bert.` /
    /// `roberta.` / `mpnet.` prefix), laid out for `kernels`.
    pub fn load(weights: &Path, config: BertConfig, device: &Device, kernels: Kernels) -> anyhow::Result<Self> {
        let family = config.family()?;
        let root = if weights.extension().is_some_and(|e| e == "bin") {
            VarBuilder::from_pth(weights, DType::F32, device)?
        } else {
            // SAFETY: the file is mapped read-only and not modified while the model lives.
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? }
        };
        let vb = ["", "bert.", "roberta.", "mpnet.", "model."]
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
        let token_type = match family {
            Family::Bert => Some(emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?),
            Family::MpNet => None,
        };
        let embed_norm = LayerNorm::load(&emb.pp("LayerNorm"), h, config.layer_norm_eps)?;
        let bias = match family {
            Family::Bert => None,
            Family::MpNet => {
                let buckets = config.relative_attention_num_buckets;
                let table = vb.get((buckets, heads), "encoder.relative_attention_bias.weight")?;
                let table = table.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                let span = config.max_tokens();
                Some(RelativeBias::new(&table, heads, span, |d| relative_bucket(d, buckets, 128)))
            }
        };
        // Where each part of a layer lives: BERT's names, or MPNet's.
        let names = match family {
            Family::Bert => [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
            ],
            Family::MpNet => {
                ["attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "attention.LayerNorm"]
            }
        };

        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{n}"));
            let (qw, qb) = linear(&l.pp(names[0]), h, h)?;
            let (kw, kb) = linear(&l.pp(names[1]), h, h)?;
            let (vw, vb_) = linear(&l.pp(names[2]), h, h)?;
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
                attn_out: dense(names[3], h, h)?,
                attn_norm: LayerNorm::load(&l.pp(names[4]), h, config.layer_norm_eps)?,
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
            bias,
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
    /// `types` gives each token's type (text pairs); `None` is type 0 throughout.
    pub fn forward(&self, ids: &[u32], types: Option<&[u32]>, packing: &Packing) -> Result<Tensor> {
        let mut positions = Vec::with_capacity(ids.len());
        for &(_, len) in &packing.spans {
            positions.extend((0..len).map(|p| (p + self.position_offset) as u32));
        }
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let positions = Tensor::from_vec(positions, ids.dim(0)?, &self.device)?;
        let mut x = (self.word.index_select(&ids, 0)? + self.position.index_select(&positions, 0)?)?;
        match (&self.token_type, types) {
            (Some(table), Some(types)) if table.dim(0)? > 1 => {
                let types = Tensor::from_slice(types, types.len(), &self.device)?;
                x = (x + table.index_select(&types, 0)?)?;
            }
            (Some(table), _) => x = x.broadcast_add(&table.narrow(0, 0, 1)?)?,
            (None, _) => {}
        }
        let mut x = self.embed_norm.forward(&x)?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let ctx = packed_attention(&qkv, packing, (self.heads, self.head_dim), self.bias.as_ref(), self.kernels)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// MPNet's buckets (32, max distance 128) at the distances where they change, as the Hugging Face
    /// implementation computes them.
    #[test]
    fn relative_buckets_follow_t5() {
        let bucket = |d| relative_bucket(d, 32, 128);
        // memory − context < 0 (keys before the query) fill the lower half, keys after it the upper.
        assert_eq!([bucket(0), bucket(-1), bucket(-7), bucket(-8), bucket(-11), bucket(-12)], [0, 1, 7, 8, 8, 9]);
        assert_eq!([bucket(1), bucket(7), bucket(8), bucket(16), bucket(127), bucket(500)], [17, 23, 24, 26, 31, 31]);
        assert_eq!(bucket(-128), 15);
    }
}
