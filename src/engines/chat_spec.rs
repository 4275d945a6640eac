//! Reading a chat model's files: the GGUF weights, the tokenizer (tokenizer.json beside the weights,
//! else the GGUF metadata), the chat template and the end-of-turn tokens.

use std::path::PathBuf;
use tokenizers::Tokenizer;

/// What the request path needs from a chat model's files, read once at start-up.
pub struct ChatSpec {
    /// The weights.
    pub path: PathBuf,
    /// Tokenizer: `tokenizer.json` beside the weights, else built from the GGUF metadata.
    pub tokenizer: std::sync::Arc<Tokenizer>,
    /// Chat template source.
    pub template: String,
    /// BOS token text.
    pub bos: String,
    /// EOS token text.
    pub eos: String,
    /// Tokens that end a turn.
    pub eos_ids: Vec<u32>,
    /// Context window.
    pub context: usize,
}

impl ChatSpec {
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
        let template = match tokenizer_config_template(dir) {
            Some(t) => t,
            None => md
                .get("tokenizer.chat_template")
                .and_then(|v| v.to_string().ok().cloned())
                .ok_or_else(|| anyhow::anyhow!("{} has no chat template", path.display()))?,
        };
        let mut eos_ids: Vec<u32> =
            md.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()).into_iter().collect();
        for end in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>"] {
            if let Some(id) = tokenizer.token_to_id(end) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        if eos_ids.is_empty() {
            anyhow::bail!("{} names no end-of-turn token", path.display());
        }
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
        })
    }
}

fn tokenizer_config_template(dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("chat_template")?.as_str().map(str::to_string)
}
