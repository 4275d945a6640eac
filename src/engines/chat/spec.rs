//! Reading a chat model's files: the GGUF weights, the tokenizer (tokenizer.json beside the weights,
//! else the GGUF metadata), the chat template and the end-of-turn tokens.

use std::path::PathBuf;
use tokenizers::Tokenizer;

use super::llama::ChatWeights;

/// What the request path needs from a chat model's files, read once at start-up.
pub struct ChatSpec {
    /// The weights: a .gguf file, or a folder of safetensors.
    pub path: PathBuf,
    /// Tokenizer: `tokenizer.json` beside the weights, else built from the GGUF metadata.
    pub tokenizer: std::sync::Arc<Tokenizer>,
    /// Chat template source; `None` for a base model (served by `/v1/completions` only).
    pub template: Option<String>,
    /// BOS token text.
    pub bos: String,
    /// EOS token text.
    pub eos: String,
    /// Tokens that end a turn.
    pub eos_ids: Vec<u32>,
    /// Context window.
    pub context: usize,
    /// What the weights are, for choosing (and reporting) kernels.
    pub weights: ChatWeights,
}

impl ChatSpec {
    /// Reads a model: a .gguf file, or a folder with safetensors weights.
    pub fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        if path.is_dir() {
            Self::from_dir(path)
        } else {
            Self::from_gguf(path)
        }
    }

    /// Reads a GGUF model and the tokenizer files beside it.
    pub fn from_gguf(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)
            .with_context(|| format!("reading GGUF {}", path.display()))?;
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let tokenizer = match dir.join("tokenizer.json") {
            p if p.is_file() => Tokenizer::from_file(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            _ => super::gguf_tokenizer::from_gguf(&content)?,
        };
        let md = &content.metadata;
        let token_text = |key: &str| -> Option<String> {
            let id = md.get(key)?.to_u32().ok()?;
            tokenizer.id_to_token(id)
        };
        let bos = token_text("tokenizer.ggml.bos_token_id").unwrap_or_default();
        let eos = token_text("tokenizer.ggml.eos_token_id").unwrap_or_default();
        let template = tokenizer_config_template(dir)
            .or_else(|| md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok().cloned()));
        let eos_ids =
            end_tokens(&tokenizer, md.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()), path)?;
        let arch = md.get("general.architecture").and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
        let context = md.get(&format!("{arch}.context_length")).and_then(|v| v.to_u32().ok()).unwrap_or(2048) as usize;
        Ok(Self {
            path: path.to_path_buf(),
            tokenizer: std::sync::Arc::new(tokenizer),
            template,
            bos,
            eos,
            eos_ids,
            context,
            weights: ChatWeights::of_gguf(&content),
        })
    }

    /// Reads a Hub-layout safetensors folder: config.json, tokenizer.json, tokenizer_config.json
    /// (chat template, bos/eos) and generation_config.json (end-of-turn ids).
    pub fn from_dir(dir: &std::path::Path) -> anyhow::Result<Self> {
        let read_json = |name: &str| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
        };
        let tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
        let config = read_json("tokenizer_config.json").unwrap_or_default();
        let token = |key: &str| -> String {
            match config.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
                None => String::new(),
            }
        };
        let template = tokenizer_config_template(dir);
        let (bos, eos) = (token("bos_token"), token("eos_token"));
        let mut eos_ids = end_tokens(&tokenizer, tokenizer.token_to_id(&eos), dir)?;
        if let Some(generation) = read_json("generation_config.json") {
            let ids = match generation.get("eos_token_id") {
                Some(serde_json::Value::Array(ids)) => ids.iter().filter_map(|i| i.as_u64()).collect(),
                Some(id) => id.as_u64().into_iter().collect(),
                None => Vec::new(),
            };
            for id in ids {
                if !eos_ids.contains(&(id as u32)) {
                    eos_ids.push(id as u32);
                }
            }
        }
        let config_json = read_json("config.json");
        let vision = config_json.as_ref().is_some_and(|c| c.get("vision_config").is_some());
        let context = config_json
            .and_then(|c| {
                let text = c.get("text_config").unwrap_or(&c);
                text.get("max_position_embeddings").and_then(|v| v.as_u64())
            })
            .unwrap_or(2048)
            .min(32_768) as usize;
        Ok(Self {
            path: dir.to_path_buf(),
            tokenizer: std::sync::Arc::new(tokenizer),
            template,
            bos,
            eos,
            eos_ids,
            context,
            weights: ChatWeights { vision, ..ChatWeights::default() },
        })
    }
}

/// The model's end-of-sequence token plus the end-of-turn tokens chat templates use.
fn end_tokens(tokenizer: &Tokenizer, eos: Option<u32>, source: &std::path::Path) -> anyhow::Result<Vec<u32>> {
    let mut ids: Vec<u32> = eos.into_iter().collect();
    for end in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>"] {
        if let Some(id) = tokenizer.token_to_id(end) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    if ids.is_empty() {
        anyhow::bail!("{} names no end-of-turn token", source.display());
    }
    Ok(ids)
}

/// The chat template: `tokenizer_config.json`, else `chat_template.json` (vision processors keep it
/// there), else `chat_template.jinja`.
fn tokenizer_config_template(dir: &std::path::Path) -> Option<String> {
    let from = |name: &str| -> Option<String> {
        let text = std::fs::read_to_string(dir.join(name)).ok()?;
        template_of(&serde_json::from_str(&text).ok()?)
    };
    from("tokenizer_config.json")
        .or_else(|| from("chat_template.json"))
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok())
}

fn template_of(json: &serde_json::Value) -> Option<String> {
    match json.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}
