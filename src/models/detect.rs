//! What a model is, read from its own files: a Hub id named in `MODELS` (or a seed catalogue entry
//! whose handler sis does not know) carries no kind, so sis reads the repo's `config.json`
//! (`architectures`, `model_type`, Whisper and vision markers, sentence-transformers' `modules.json`)
//! or a GGUF file's `general.architecture` to decide how to serve it. A repo with GGUF files and no
//! `config.json` is served from one of them (Q4_K_M where there is one: what most users download).

use serde_json::Value;
use std::path::Path;

use super::hub::Sources;
use super::resolve::ResolveError;
use crate::config::{Capability, ModelEntry};

/// Encoder `model_type`s whose bare checkpoints (no sentence-transformers files) are embedding models.
const ENCODERS: &[&str] =
    &["bert", "roberta", "xlm-roberta", "camembert", "mpnet", "nomic_bert", "distilbert", "electra"];

/// GGUF architectures of embedding models; every other GGUF is a chat model.
const GGUF_ENCODERS: &[&str] = &["bert", "nomic-bert", "jina-bert-v2", "t5encoder"];

/// Replaces a guessed kind with the one the model's files say (and, for a GGUF-only repo, picks the
/// file); entries that name their kind are left as they are.
pub fn settle(entry: &mut ModelEntry, sources: &Sources) -> Result<(), ResolveError> {
    if !entry.detect_kind {
        return Ok(());
    }
    let fail = |details: String| ResolveError { id: entry.id.clone(), details };
    let (kind, file) = match (&entry.path, &entry.repo) {
        (Some(dir), _) => detect_local(dir, entry.file.as_deref()).map_err(fail)?,
        (None, Some(repo)) => detect_repo(repo, &entry.revision, entry.file.as_deref(), sources).map_err(fail)?,
        (None, None) => return Err(fail("the entry names no repo or path".into())),
    };
    tracing::info!(model = %entry.id, kind = kind.name(), file = ?file, "model kind read from its files");
    entry.kind = kind;
    entry.file = file;
    entry.detect_kind = false;
    Ok(())
}

type Detected = (Capability, Option<String>);

fn detect_local(dir: &Path, file: Option<&str>) -> Result<Detected, String> {
    if let Some(file) = file {
        return Ok((gguf_kind(&dir.join(file))?, Some(file.to_string())));
    }
    let config = dir.join("config.json");
    if config.is_file() {
        let st = dir.join("modules.json").is_file();
        return Ok((config_kind(&read_json(&config)?, st)?, None));
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let file = pick_gguf(&names).ok_or_else(|| format!("{} has neither config.json nor a GGUF file", dir.display()))?;
    Ok((gguf_kind(&dir.join(&file))?, Some(file)))
}

fn detect_repo(repo: &str, revision: &str, file: Option<&str>, sources: &Sources) -> Result<Detected, String> {
    let fetch = |name: &str| {
        sources.file(repo, revision, name).ok_or_else(|| {
            let how = if sources.download { "from the cache or the Hub" } else { "from the cache (downloads are off)" };
            format!("cannot get {name} of {repo}@{revision} {how}")
        })
    };
    if let Some(file) = file {
        return Ok((gguf_kind(&fetch(file)?)?, Some(file.to_string())));
    }
    if let Ok(config) = fetch("config.json") {
        let st = sources.file(repo, revision, "modules.json").is_some();
        return Ok((config_kind(&read_json(&config)?, st)?, None));
    }
    let names = sources.list(repo, revision).map_err(|e| format!("cannot list the files of {repo}: {e:#}"))?;
    let file = pick_gguf(&names).ok_or_else(|| format!("{repo} has neither config.json nor a GGUF file"))?;
    Ok((gguf_kind(&fetch(&file)?)?, Some(file)))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// The GGUF to serve from a repo's files: Q4_K_M where there is one, else the first by name
/// (shards of split files are skipped: sis reads single files).
fn pick_gguf(names: &[String]) -> Option<String> {
    let mut ggufs: Vec<&String> =
        names.iter().filter(|n| n.to_ascii_lowercase().ends_with(".gguf") && !n.contains("-of-")).collect();
    ggufs.sort();
    ggufs.iter().find(|n| n.to_ascii_lowercase().contains("q4_k_m")).or(ggufs.first()).map(|n| n.to_string())
}

/// A GGUF file's kind, from `general.architecture` (the header alone is read).
fn gguf_kind(path: &Path) -> Result<Capability, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| format!("{} is not a GGUF file: {e}", path.display()))?;
    let architecture = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| format!("{} has no general.architecture", path.display()))?;
    Ok(if GGUF_ENCODERS.contains(&architecture.as_str()) { Capability::Embeddings } else { Capability::Chat })
}

/// A Hub `config.json`'s kind; `sentence_transformers` when the repo has `modules.json`.
fn config_kind(config: &Value, sentence_transformers: bool) -> Result<Capability, String> {
    let model_type = config["model_type"].as_str().unwrap_or_default();
    let architectures: Vec<&str> =
        config["architectures"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let any = |suffix: &str| architectures.iter().any(|a| a.ends_with(suffix));
    // CTranslate2 Whisper folders have a config.json of their own: no model_type, Whisper's token lists.
    let ct2_whisper = config.get("suppress_ids").is_some() && config.get("lang_ids").is_some();
    if model_type == "whisper" || architectures.iter().any(|a| a.starts_with("Whisper")) || ct2_whisper {
        return Ok(Capability::Audio);
    }
    // Gemma 3's SigLIP tower is not one sis runs: its language model is served as chat.
    if (config.get("vision_config").is_some() && model_type != "gemma3") || model_type.ends_with("_vl") {
        return Ok(Capability::Vision);
    }
    if sentence_transformers {
        return Ok(Capability::Embeddings);
    }
    if any("ForSequenceClassification") {
        return Ok(Capability::Rerank);
    }
    if any("ForCausalLM") || any("ForConditionalGeneration") {
        return Ok(Capability::Chat);
    }
    if ENCODERS.contains(&model_type) || any("Model") || any("ForMaskedLM") {
        return Ok(Capability::Embeddings);
    }
    Err(format!(
        "cannot tell what kind of model this is (architectures {architectures:?}, model_type {model_type:?}); \
         name it in a roster entry with `kind`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_from_config() {
        let kind = |config: Value, st: bool| config_kind(&config, st);
        assert_eq!(
            kind(json!({"model_type": "bert", "architectures": ["BertModel"]}), false),
            Ok(Capability::Embeddings)
        );
        assert_eq!(
            kind(json!({"model_type": "mpnet", "architectures": ["MPNetForMaskedLM"]}), false),
            Ok(Capability::Embeddings)
        );
        assert_eq!(
            kind(json!({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}), true),
            Ok(Capability::Embeddings)
        );
        assert_eq!(
            kind(json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}), false),
            Ok(Capability::Chat)
        );
        assert_eq!(kind(json!({"architectures": ["WhisperForConditionalGeneration"]}), false), Ok(Capability::Audio));
        assert_eq!(
            kind(json!({"alignment_heads": [], "lang_ids": [], "suppress_ids": []}), false),
            Ok(Capability::Audio)
        );
        assert_eq!(kind(json!({"model_type": "qwen3_vl", "vision_config": {}}), false), Ok(Capability::Vision));
        let gemma =
            json!({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "vision_config": {}});
        assert_eq!(kind(gemma, false), Ok(Capability::Chat));
        let gemma = json!({"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]});
        assert_eq!(kind(gemma, false), Ok(Capability::Chat));
        let rerank = kind(json!({"architectures": ["XLMRobertaForSequenceClassification"]}), false);
        assert_eq!(rerank, Ok(Capability::Rerank));
        let unknown = kind(json!({"model_type": "mamba", "architectures": ["MambaForTokens"]}), false).unwrap_err();
        assert!(unknown.contains("MambaForTokens") && unknown.contains("kind"), "{unknown}");
    }

    #[test]
    fn q4_k_m_is_preferred_among_ggufs() {
        let names: Vec<String> =
            ["README.md", "m.Q8_0.gguf", "m.Q4_K_M.gguf", "m.Q2_K.gguf"].map(String::from).to_vec();
        assert_eq!(pick_gguf(&names).as_deref(), Some("m.Q4_K_M.gguf"));
        let names: Vec<String> = ["b.Q8_0.gguf", "a.Q5_K_S.gguf", "big-00001-of-00002.gguf"].map(String::from).to_vec();
        assert_eq!(pick_gguf(&names).as_deref(), Some("a.Q5_K_S.gguf"));
        assert_eq!(pick_gguf(&["config.json".to_string()]), None);
    }
}
