//! The classification head of a cross-encoder (`BertForSequenceClassification`,
//! `XLMRobertaForSequenceClassification`, …): the encoder reads a (query, document) pair as one
//! sequence, and the head turns its first token's state into one relevance logit.
//!
//! - BERT: the pooler (`bert.pooler.dense`, tanh), then `classifier`.
//! - RoBERTa / XLM-RoBERTa: `classifier.dense`, tanh, then `classifier.out_proj`.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

use super::bert::BertConfig;

/// A loaded head: a dense layer with tanh, then the projection to the single logit.
pub struct ClassifierHead {
    dense: (Tensor, Tensor),
    out: (Tensor, Tensor),
}

impl ClassifierHead {
    /// Reads the head from the checkpoint's weights (safetensors or a `pytorch_model.bin` pickle).
    pub fn load(weights: &Path, config: &BertConfig, device: &Device) -> anyhow::Result<Self> {
        let labels = config.labels();
        if labels != 1 {
            anyhow::bail!(
                "{:?} has {labels} labels; sis ranks with single-score cross-encoders (bge-reranker, ms-marco)",
                config.architectures
            );
        }
        let root = if weights.extension().is_some_and(|e| e == "bin") {
            VarBuilder::from_pth(weights, DType::F32, device)?
        } else {
            // SAFETY: the file is mapped read-only and not modified while the model lives.
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? }
        };
        let h = config.hidden_size;
        let linear = |vb: VarBuilder, out: usize| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((vb.get((out, h), "weight")?, vb.get(out, "bias")?))
        };
        let (dense, out) = if root.contains_tensor("classifier.out_proj.weight") {
            (linear(root.pp("classifier.dense"), h)?, linear(root.pp("classifier.out_proj"), 1)?)
        } else {
            let pooler = ["bert.pooler.dense", "pooler.dense"]
                .into_iter()
                .find(|p| root.contains_tensor(&format!("{p}.weight")))
                .ok_or_else(|| anyhow::anyhow!("{} has no pooler for its classifier", weights.display()))?;
            (linear(root.pp(pooler), h)?, linear(root.pp("classifier"), 1)?)
        };
        Ok(Self { dense, out })
    }

    /// Logits `[n]` of the first-token states `[n, hidden]`.
    pub fn forward(&self, first: &Tensor) -> candle_core::Result<Tensor> {
        let x = first.matmul(&self.dense.0.t()?)?.broadcast_add(&self.dense.1)?.tanh()?;
        x.matmul(&self.out.0.t()?)?.broadcast_add(&self.out.1)?.squeeze(1)
    }
}
