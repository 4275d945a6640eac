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
