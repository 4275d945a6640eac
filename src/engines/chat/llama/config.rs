//! The shapes of a llama-family decoder, from GGUF metadata or a Hub `config.json`.

use anyhow::{anyhow, Context};
use candle_core::quantized::gguf_file::Content;
use std::path::Path;

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
    /// How the rotary frequencies are stretched for long contexts.
    pub rope_scaling: RopeScaling,
    /// Per-frequency divisors a GGUF file carries (`rope_freqs.weight`: Llama 3's scaling, baked in).
    pub rope_freq_factors: Option<Vec<f32>>,
    /// FP8 checkpoints (`quant_method = "fp8"`): the (rows, columns) of each block of a linear weight
    /// that shares one `weight_scale_inv`; the weights are dequantized to f32 at load.
    pub fp8_block: Option<(usize, usize)>,
}

/// RoPE scaling as Hub configs name it (`rope_scaling.rope_type`, or `type` in older ones).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RopeScaling {
    /// Plain RoPE.
    #[default]
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// Stretch.
        factor: f32,
    },
    /// Llama 3: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        /// Stretch of the low frequencies.
        factor: f32,
        /// Wavelengths over `original / low_freq_factor` are stretched fully.
        low_freq_factor: f32,
        /// Wavelengths under `original / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context the model was pretrained on.
        original: f32,
    },
    /// YaRN: frequencies blended between kept and stretched by a ramp over their rotations in the
    /// original context, and attention scaled by `attention_factor`.
    Yarn {
        /// Stretch.
        factor: f32,
        /// The context the model was pretrained on.
        original: f32,
        /// Rotations above which a frequency is kept.
        beta_fast: f32,
        /// Rotations below which a frequency is stretched fully.
        beta_slow: f32,
        /// Scale of cos and sin.
        attention_factor: f32,
        /// Whether the ramp's ends are rounded to whole dimensions.
        truncate: bool,
    },
}

impl RopeScaling {
    /// Reads a Hub config's `rope_scaling` (`max_positions` is the config's `max_position_embeddings`,
    /// YaRN's original context when it names none).
    pub fn from_hub(value: Option<&serde_json::Value>, max_positions: usize) -> anyhow::Result<Self> {
        let Some(v) = value.filter(|v| !v.is_null()) else {
            return Ok(Self::None);
        };
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        let number = |key: &str| v.get(key).and_then(serde_json::Value::as_f64).map(|x| x as f32);
        let factor = || number("factor").ok_or_else(|| anyhow!("rope_scaling {kind:?} needs a factor"));
        Ok(match kind {
            "default" | "mrope" => Self::None,
            "linear" => Self::Linear { factor: factor()? },
            "llama3" => Self::Llama3 {
                factor: factor()?,
                low_freq_factor: number("low_freq_factor").unwrap_or(1.0),
                high_freq_factor: number("high_freq_factor").unwrap_or(4.0),
                original: number("original_max_position_embeddings").unwrap_or(8192.0),
            },
            "yarn" => {
                let factor = factor()?;
                Self::Yarn {
                    factor,
                    original: number("original_max_position_embeddings").unwrap_or(max_positions as f32),
                    beta_fast: number("beta_fast").unwrap_or(32.0),
                    beta_slow: number("beta_slow").unwrap_or(1.0),
                    attention_factor: number("attention_factor").unwrap_or(if factor > 1.0 {
                        0.1 * factor.ln() + 1.0
                    } else {
                        1.0
                    }),
                    truncate: v.get("truncate").and_then(serde_json::Value::as_bool).unwrap_or(true),
                }
            }
            other => anyhow::bail!("rope_scaling type {other:?} is not supported (linear, llama3, yarn are)"),
        })
    }

    /// The rotary inverse frequencies of a `head_dim`-wide head with base `base`, and the scale of
    /// cos and sin, as Hugging Face `transformers` computes them.
    pub fn frequencies(&self, base: f32, head_dim: usize) -> (Vec<f32>, f32) {
        let half = head_dim / 2;
        let plain: Vec<f32> = (0..half).map(|i| 1.0 / base.powf(2.0 * i as f32 / head_dim as f32)).collect();
        match *self {
            Self::None => (plain, 1.0),
            Self::Linear { factor } => (plain.iter().map(|f| f / factor).collect(), 1.0),
            Self::Llama3 { factor, low_freq_factor, high_freq_factor, original } => {
                let (low_wavelen, high_wavelen) = (original / low_freq_factor, original / high_freq_factor);
                let scaled = plain
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (scaled, 1.0)
            }
            Self::Yarn { factor, original, beta_fast, beta_slow, attention_factor, truncate } => {
                // The dimension at which a frequency turns `rotations` times over the original context.
                let dim = |rotations: f32| {
                    head_dim as f32 * (original / (rotations * 2.0 * std::f32::consts::PI)).ln() / (2.0 * base.ln())
                };
                let (mut low, mut high) = (dim(beta_fast), dim(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(head_dim as f32 - 1.0));
                if low == high {
                    high += 0.001;
                }
                let scaled = plain
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        f / factor * (1.0 - keep) + f * keep
                    })
                    .collect();
                (scaled, attention_factor)
            }
        }
    }
}

/// Positions beyond this are not given rotary tables (long-context configs would otherwise cost
/// hundreds of MB of tables no request on this server can reach).
pub(super) const MAX_ROPE_POSITIONS: usize = 32_768;

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
    #[serde(default)]
    rope_theta: Option<f32>,
    /// transformers 5's spelling: the scaling and `rope_theta` in one object.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: usize,
    vocab_size: usize,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
}

impl LlamaConfig {
    /// Reads a Hub `config.json` (Hub checkpoints keep Q/K unpermuted, so RoPE rotates halves). For
    /// Qwen3-VL the language model's `text_config` is read.
    pub fn from_hub_config(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let outer = json.get("model_type").and_then(|t| t.as_str()).map(str::to_string);
        let fp8_block = match json.get("quantization_config") {
            None => None,
            Some(q) if q["quant_method"] == "fp8" => {
                let block: Vec<usize> = serde_json::from_value(q["weight_block_size"].clone())
                    .context("an fp8 quantization_config needs weight_block_size [rows, columns]")?;
                match block[..] {
                    [rows, columns] if rows > 0 && columns > 0 => Some((rows, columns)),
                    _ => anyhow::bail!("weight_block_size {block:?} is not [rows, columns]"),
                }
            }
            Some(q) => anyhow::bail!(
                "quantized checkpoints ({}) are not supported (fp8 is); serve the model's bf16 repo or a GGUF of it",
                q["quant_method"]
            ),
        };
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
            .or(c.rope_parameters.as_ref())
            .and_then(|r| r.get("mrope_section"))
            .and_then(|s| serde_json::from_value::<[usize; 3]>(s.clone()).ok());
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        check_head_dim(head_dim)?;
        let scaling = c.rope_scaling.as_ref().or(c.rope_parameters.as_ref());
        let rope_scaling = RopeScaling::from_hub(scaling, c.max_position_embeddings)?;
        let parameters_theta = c.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64());
        let rope_base = c.rope_theta.or(parameters_theta.map(|t| t as f32)).unwrap_or(10_000.0);
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
            rope_base,
            context: c.max_position_embeddings.min(MAX_ROPE_POSITIONS),
            vocab: c.vocab_size,
            rope_halves: true,
            ffn: c.intermediate_size,
            mrope_section,
            rope_scaling,
            rope_freq_factors: None,
            fp8_block,
            architecture,
        })
    }

    pub(super) fn from_gguf(content: &Content) -> anyhow::Result<Self> {
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
            rope_scaling: match get("rope.scaling.type").and_then(|v| Ok(v.to_string()?.clone())).ok().as_deref() {
                None | Some("none") => RopeScaling::None,
                Some("linear") => RopeScaling::Linear { factor: get("rope.scaling.factor")?.to_f32()? },
                Some(other) => anyhow::bail!("GGUF rope scaling {other:?} is not supported (linear is)"),
            },
            rope_freq_factors: None,
            fp8_block: None,
            architecture: arch,
        })
    }
}

/// Rotary tables per token are kept on the stack: heads up to 512 wide.
pub(super) fn check_head_dim(head_dim: usize) -> anyhow::Result<()> {
    if head_dim == 0 || head_dim > 512 || !head_dim.is_multiple_of(2) {
        anyhow::bail!("head_dim {head_dim} is not supported (an even width up to 512 is)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Llama 3.1's own scaling (factor 8 over 8192 positions) on a 128-wide head of base 500000: the
    /// highest frequencies are kept, the lowest divided by 8, the ones between blended.
    #[test]
    fn llama3_keeps_high_frequencies_and_stretches_low_ones() {
        let scaling = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let scaling = RopeScaling::from_hub(Some(&scaling), 131072).unwrap();
        let (plain, _) = RopeScaling::None.frequencies(500000.0, 128);
        let (scaled, attention) = scaling.frequencies(500000.0, 128);
        assert_eq!(attention, 1.0);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-12);
        let blended = scaled.iter().zip(&plain).filter(|(s, p)| **s < **p && **s > **p / 8.0).count();
        assert!(blended > 0, "some frequencies are blended");
    }

    #[test]
    fn yarn_scales_attention_and_unknown_types_are_refused() {
        let yarn = RopeScaling::from_hub(Some(&json!({"type": "yarn", "factor": 4.0})), 32768).unwrap();
        let (_, attention) = yarn.frequencies(10000.0, 64);
        assert!((attention - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        assert_eq!(RopeScaling::from_hub(Some(&json!({"rope_type": "default"})), 1).unwrap(), RopeScaling::None);
        assert!(RopeScaling::from_hub(Some(&json!({"rope_type": "longrope"})), 1).is_err());
    }
}
