//! sentence-transformers `Dense` modules (`2_Dense`, `3_Dense`, …): linear maps of the pooled vector
//! that some models (EmbeddingGemma, LaBSE) apply before normalizing.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// A sentence-transformers `Dense` module (`2_Dense`, …): a linear map of the pooled vector, with its
/// activation.
pub struct StDense {
    weight: Tensor,
    bias: Option<Tensor>,
    tanh: bool,
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default)]
    bias: bool,
    #[serde(default)]
    activation_function: String,
}

impl DenseConfig {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(dir.join("config.json"))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}/config.json: {e}", dir.display()))
    }
}

impl StDense {
    /// The width of the module's output (`out_features`), read before the model loads.
    pub fn out_features(dir: &Path) -> anyhow::Result<usize> {
        Ok(DenseConfig::read(dir)?.out_features)
    }

    /// Reads `dir/config.json` and `dir/model.safetensors`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let config = DenseConfig::read(dir)?;
        let tanh = match config.activation_function.rsplit('.').next().unwrap_or_default() {
            "Identity" | "" => false,
            "Tanh" => true,
            other => anyhow::bail!("{}: activation {other:?} is not supported (Identity, Tanh are)", dir.display()),
        };
        // SAFETY: the file is mapped read-only and not modified while the model lives.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu)? };
        let weight = vb.get((config.out_features, config.in_features), "linear.weight")?;
        let bias = if config.bias { Some(vb.get(config.out_features, "linear.bias")?) } else { None };
        Ok(Self { weight, bias, tanh })
    }

    /// Maps one pooled vector.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let x = Tensor::from_slice(x, (1, x.len()), &Device::Cpu)?;
        let mut y = candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(&x)?;
        if self.tanh {
            y = y.tanh()?;
        }
        y.squeeze(0)?.to_vec1()
    }
}
