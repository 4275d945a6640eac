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
    /// The gate's activation in the feed-forward.
    pub activation: Activation,
    /// Token embeddings are multiplied by this (Gemma: `√hidden`).
    pub embedding_scale: f32,
    /// Attention scores are multiplied by this (`1/√head_dim`; Gemma: `query_pre_attn_scalar^-½`).
    pub attention_scale: f32,
    /// Layers that attend within a sliding window, and the rotary base they use (Gemma 3).
    pub sliding: Option<Sliding>,
    /// Final logits are squashed into `(-cap, cap)` by `cap·tanh(x / cap)` (Gemma 2 style configs).
    pub logit_softcap: Option<f32>,
    /// Added to every RMS norm weight at load: Gemma's norms scale by `1 + weight` in Hub checkpoints
    /// (llama.cpp's converter adds the 1 into its GGUF files).
    pub norm_offset: f32,
}

/// The activation of a gated feed-forward: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// SiLU (SwiGLU: llama, qwen, mistral).
    #[default]
    Silu,
    /// GeLU, tanh approximation (GeGLU: Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// Sliding-window attention (Gemma 3): most layers see only the last `window` positions and turn
/// their rotary frequencies on a base of their own, without the global layers' scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Sliding {
    /// Positions a sliding layer sees, its own included.
    pub window: usize,
    /// Whether each layer slides.
    pub layers: Vec<bool>,
    /// Rotary base of sliding layers.
    pub rope_base: f32,
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
    /// Gemma 3: attention scores are scaled by this to the −½.
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    /// Gemma 3: the window of sliding layers.
    #[serde(default)]
    sliding_window: Option<usize>,
    /// Gemma 3: `sliding_attention` or `full_attention` per layer.
    #[serde(default)]
    layer_types: Vec<String>,
    /// Gemma 3: every `n`-th layer is global when `layer_types` is absent.
    #[serde(default, alias = "_sliding_window_pattern")]
    sliding_window_pattern: Option<usize>,
    /// Gemma 3: rotary base of sliding layers (transformers 4's spelling).
    #[serde(default)]
    rope_local_base_freq: Option<f32>,
    #[serde(default)]
    final_logit_softcapping: Option<f32>,
    #[serde(default)]
    attn_logit_softcapping: Option<f32>,
}

/// Gemma 3 text configs (the `text_config` of `Gemma3ForConditionalGeneration` above all) leave out
/// whatever equals `Gemma3TextConfig`'s defaults; these are those defaults (but the sliding pattern,
/// spelled two ways, whose default of 6 [`sliding_layers`] applies).
fn gemma3_defaults() -> serde_json::Value {
    serde_json::json!({
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131072, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "rope_local_base_freq": 10000.0,
    })
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
        let gemma = matches!(outer.as_deref().or(json["model_type"].as_str()), Some("gemma3" | "gemma3_text"));
        if gemma {
            if let (Some(config), serde_json::Value::Object(defaults)) = (json.as_object_mut(), gemma3_defaults()) {
                for (key, value) in defaults {
                    config.entry(key).or_insert(value);
                }
            }
        }
        let c: HubConfig = serde_json::from_value(json).with_context(|| format!("parsing {}", path.display()))?;
        let architecture = outer.or(c.model_type.clone()).unwrap_or_else(|| "llama".into());
        if !matches!(
            architecture.as_str(),
            "llama" | "qwen2" | "qwen3" | "mistral" | "qwen3_vl" | "gemma3" | "gemma3_text"
        ) {
            anyhow::bail!(
                "model_type {architecture:?} is not supported (llama, qwen2, qwen3, mistral, qwen3_vl, gemma3 are)"
            );
        }
        if c.attn_logit_softcapping.is_some() {
            anyhow::bail!("attention logit soft-capping (Gemma 2) is not supported");
        }
        let mrope_section = c
            .rope_scaling
            .as_ref()
            .or(c.rope_parameters.as_ref())
            .and_then(|r| r.get("mrope_section"))
            .and_then(|s| serde_json::from_value::<[usize; 3]>(s.clone()).ok());
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        check_head_dim(head_dim)?;
        // transformers 5 keeps one set of rotary parameters per layer type (Gemma 3); the global
        // layers' set is the model's scaling and base.
        let per_type = |kind: &str| c.rope_parameters.as_ref().and_then(|p| p.get(kind));
        let parameters = per_type("full_attention").or(c.rope_parameters.as_ref());
        let scaling = c.rope_scaling.as_ref().or(parameters);
        let rope_scaling = RopeScaling::from_hub(scaling, c.max_position_embeddings)?;
        let theta = |p: Option<&serde_json::Value>| p.and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64());
        let rope_base =
            c.rope_theta.or(theta(parameters).map(|t| t as f32)).unwrap_or(if gemma { 1_000_000.0 } else { 10_000.0 });
        if let Some(section) = mrope_section {
            if section.iter().sum::<usize>() != head_dim / 2 {
                anyhow::bail!("mrope_section {section:?} does not add up to head_dim / 2 = {}", head_dim / 2);
            }
        }
        let sliding = match c.sliding_window.filter(|_| gemma) {
            Some(window) => {
                let local = per_type("sliding_attention");
                if RopeScaling::from_hub(local, c.max_position_embeddings)? != RopeScaling::None {
                    anyhow::bail!("rope scaling on sliding-window layers is not supported");
                }
                let rope_base = theta(local).map(|t| t as f32).or(c.rope_local_base_freq).unwrap_or(10_000.0);
                Some(Sliding {
                    window,
                    layers: sliding_layers(&c.layer_types, c.sliding_window_pattern, c.num_hidden_layers)?,
                    rope_base,
                })
            }
            None => None,
        };
        let attention_scale = match c.query_pre_attn_scalar.filter(|_| gemma) {
            Some(scalar) => (1.0 / scalar.sqrt()) as f32,
            None => 1.0 / (head_dim as f32).sqrt(),
        };
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
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
            embedding_scale: if gemma { (c.hidden_size as f32).sqrt() } else { 1.0 },
            attention_scale,
            sliding,
            logit_softcap: c.final_logit_softcapping,
            norm_offset: if gemma { 1.0 } else { 0.0 },
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
            "qwen2" | "qwen3" | "gemma3" => true,
            other => anyhow::bail!("GGUF architecture {other:?} is not supported (llama, qwen2, qwen3, gemma3 are)"),
        };
        let layers = get("block_count")?.to_u32()? as usize;
        let gemma = arch == "gemma3";
        let sliding = match get("attention.sliding_window").and_then(|v| Ok(v.to_u32()? as usize)) {
            Ok(window) if gemma && window > 0 => {
                // llama.cpp's reading: a per-layer array, else a period (6 by default).
                let layers = match get("attention.sliding_window_pattern") {
                    Ok(v) => match v.to_vec() {
                        Ok(flags) if flags.len() == layers => {
                            flags.iter().map(|f| f.to_bool()).collect::<Result<Vec<_>, _>>()?
                        }
                        Ok(flags) => {
                            anyhow::bail!("attention.sliding_window_pattern lists {} layers of {layers}", flags.len())
                        }
                        Err(_) => sliding_layers(&[], Some(v.to_u32()? as usize), layers)?,
                    },
                    Err(_) => sliding_layers(&[], Some(6), layers)?,
                };
                let rope_base = get("rope.freq_base_swa").and_then(|v| Ok(v.to_f32()?)).unwrap_or(10_000.0);
                Some(Sliding { window, layers, rope_base })
            }
            _ => None,
        };
        // llama.cpp's Gemma 3 scale: `query_pre_attn_scalar` is not in the file; it is the head width
        // but for the 27B (62 layers), whose is hidden / heads.
        let attention_scale = match (gemma, layers) {
            (true, 62) => 1.0 / ((hidden / heads) as f32).sqrt(),
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        Ok(Self {
            layers,
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
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
            embedding_scale: if gemma { (hidden as f32).sqrt() } else { 1.0 },
            attention_scale,
            sliding,
            logit_softcap: get("final_logit_softcapping").and_then(|v| Ok(v.to_f32()?)).ok(),
            norm_offset: 0.0,
            architecture: arch,
        })
    }
}

/// Which layers slide: `layer_types` where the config lists them, else all but every `pattern`-th.
fn sliding_layers(types: &[String], pattern: Option<usize>, layers: usize) -> anyhow::Result<Vec<bool>> {
    if !types.is_empty() {
        if types.len() != layers {
            anyhow::bail!("layer_types lists {} layers of {layers}", types.len());
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => anyhow::bail!("layer type {other:?} is not supported"),
            })
            .collect();
    }
    let pattern = pattern.unwrap_or(6).max(1);
    Ok((0..layers).map(|i| !(i + 1).is_multiple_of(pattern)).collect())
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

    fn hub(json: serde_json::Value) -> anyhow::Result<LlamaConfig> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json.to_string()).unwrap();
        LlamaConfig::from_hub_config(file.path())
    }

    /// gemma-3-1b-it's own config, and gemma-3-4b-it's, whose text config leaves out every default.
    #[test]
    fn gemma3_configs_as_the_hub_has_them() {
        let one_b = hub(json!({
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "intermediate_size": 6912,
            "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 26,
            "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 512,
            "sliding_window_pattern": 6, "vocab_size": 262144, "final_logit_softcapping": null,
            "attn_logit_softcapping": null
        }))
        .unwrap();
        let sliding = one_b.sliding.as_ref().unwrap();
        assert_eq!((sliding.window, sliding.rope_base), (512, 10_000.0));
        assert_eq!(sliding.layers.iter().filter(|s| !**s).count(), 4, "layers 5, 11, 17, 23 are global");
        assert!(!sliding.layers[5] && sliding.layers[6]);
        assert_eq!((one_b.rope_base, one_b.attention_scale, one_b.norm_offset), (1e6, 1.0 / 16.0, 1.0));
        assert_eq!((one_b.activation, one_b.embedding_scale), (Activation::GeluTanh, (1152f32).sqrt()));
        assert_eq!(one_b.context, MAX_ROPE_POSITIONS);
        let four_b = hub(json!({
            "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024},
            "vision_config": {"model_type": "siglip_vision_model"}
        }))
        .unwrap();
        assert_eq!((four_b.vocab, four_b.heads, four_b.kv_heads, four_b.head_dim), (262_208, 8, 4, 256));
        assert_eq!((four_b.rope_scaling.clone(), four_b.rope_base), (RopeScaling::Linear { factor: 8.0 }, 1e6));
        assert_eq!(four_b.sliding.unwrap().window, 1024);
        let gemma2 = json!({"model_type": "gemma3_text", "attn_logit_softcapping": 50.0});
        assert!(hub(gemma2).unwrap_err().to_string().contains("soft-capping"));
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
