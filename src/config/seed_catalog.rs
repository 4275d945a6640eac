//! The Python seed's model catalogue (`models.yaml`, named by `MODEL_CONFIG_PATH`) read as a roster, so
//! that a deployment moving to sis starts with its catalogue unchanged:
//!
//! ```yaml
//! models:
//!   - hf_repo_id: "BAAI/bge-m3"                      # served under `name`, else this id
//!     handler: "app.models.hf_embedding.HFEmbeddingModel"
//!   - hf_repo_id: "Qwen/Qwen3-Embedding-0.6B"
//!     handler: "app.models.hf_embedding.HFEmbeddingModel"
//!     pooling: "last_token"
//!   - hf_repo_id: "meta-llama/Llama-3.2-1B-Instruct"
//!     handler: "app.models.text_chat.TextChatModel"
//!     defaults: { temperature: 0.7, top_p: 0.9, max_tokens: 512 }
//! ```
//!
//! Each entry becomes a roster entry: the seed's handler gives the kind (an unknown handler leaves it
//! to the model's files), `pooling` and the chat `defaults` become the entry's overrides. As in the
//! seed, the catalogue lists what may be served and `MODELS` chooses: its entries are not enabled by
//! default. A `*.local.yaml` overlay beside it is merged on top, entries matched by `name` or repo.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::roster::{Capability, Pooling, Roster};
use super::ConfigError;

#[derive(Deserialize)]
struct Catalogue {
    #[serde(default)]
    models: Vec<SeedModel>,
}

#[derive(Deserialize)]
struct SeedModel {
    hf_repo_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    handler: Option<String>,
    #[serde(default)]
    pooling: Option<String>,
    #[serde(default)]
    defaults: Defaults,
    /// Keys the seed reads that sis has no use for (`supports_structured_outputs`: every sis chat
    /// model takes `response_format`).
    #[serde(flatten)]
    _other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Deserialize, Default)]
struct Defaults {
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<usize>,
}

/// The kind a seed handler class serves, when sis knows the class.
fn kind_of_handler(handler: &str) -> Option<Capability> {
    let module = handler.rsplit_once('.').map_or(handler, |(module, _)| module);
    match module.rsplit('.').next()? {
        "hf_embedding" | "bge_m3" | "embedding_gemma" => Some(Capability::Embeddings),
        "text_chat" => Some(Capability::Chat),
        "qwen_vl" => Some(Capability::Vision),
        "whisper" => Some(Capability::Audio),
        _ => None,
    }
}

/// Whether a roster path names a seed catalogue.
pub fn is_seed_catalogue(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// The `*.local.yaml` overlay beside a catalogue, as the seed names it.
pub fn local_overlay(path: &std::path::Path) -> std::path::PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("models");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("yaml");
    path.with_file_name(format!("{stem}.local.{ext}"))
}

/// Reads a catalogue, with its overlay merged on top when one is given.
pub fn load(path: &std::path::Path, overlay: Option<&std::path::Path>) -> Result<Roster, ConfigError> {
    let read = |p: &std::path::Path| -> Result<Vec<SeedModel>, ConfigError> {
        let text = std::fs::read_to_string(p)
            .map_err(|e| ConfigError::new(format!("cannot read model catalogue {}: {e}", p.display())))?;
        let catalogue: Catalogue = serde_yaml_ng::from_str(&text)
            .map_err(|e| ConfigError::new(format!("model catalogue {}: {e}", p.display())))?;
        Ok(catalogue.models)
    };
    let mut models = read(path)?;
    if let Some(overlay) = overlay {
        for item in read(overlay)? {
            let same = |m: &SeedModel| match (&item.name, &m.name) {
                (Some(a), Some(b)) => a == b,
                _ => m.hf_repo_id == item.hf_repo_id,
            };
            match models.iter_mut().find(|m| same(m)) {
                Some(existing) => existing.merge(item),
                None => models.push(item),
            }
        }
    }
    to_roster(models).map_err(|e| ConfigError::new(format!("model catalogue {}: {e}", path.display())))
}

impl SeedModel {
    fn merge(&mut self, top: SeedModel) {
        self.hf_repo_id = top.hf_repo_id;
        self.name = top.name.or(self.name.take());
        self.handler = top.handler.or(self.handler.take());
        self.pooling = top.pooling.or(self.pooling.take());
        self.defaults.temperature = top.defaults.temperature.or(self.defaults.temperature);
        self.defaults.top_p = top.defaults.top_p.or(self.defaults.top_p);
        self.defaults.max_tokens = top.defaults.max_tokens.or(self.defaults.max_tokens);
    }
}

fn to_roster(models: Vec<SeedModel>) -> Result<Roster, String> {
    let mut entries = Vec::new();
    for seed in models {
        let id = seed.name.clone().unwrap_or_else(|| seed.hf_repo_id.clone());
        let mut entry = match super::ModelEntry::from_hub_reference(&seed.hf_repo_id) {
            Some(entry) => entry,
            None => return Err(format!("model {id:?}: hf_repo_id {:?} is not a Hub repo id", seed.hf_repo_id)),
        };
        entry.id = id.clone();
        entry.enabled = false;
        if let Some(kind) = seed.handler.as_deref().and_then(kind_of_handler) {
            entry.kind = kind;
            entry.detect_kind = false;
        }
        entry.pooling = match seed.pooling.as_deref() {
            None => None,
            Some("mean") => Some(Pooling::Mean),
            Some("cls") => Some(Pooling::Cls),
            Some("last_token" | "lasttoken" | "last") => Some(Pooling::LastToken),
            Some(other) => return Err(format!("model {id:?}: unknown pooling {other:?} (mean, cls, last_token)")),
        };
        entry.temperature = seed.defaults.temperature;
        entry.top_p = seed.defaults.top_p;
        entry.max_tokens = seed.defaults.max_tokens;
        entries.push(entry);
    }
    Roster::from_entries(entries).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOGUE: &str = r#"
models:
  - hf_repo_id: "BAAI/bge-m3"
    handler: "app.models.hf_embedding.HFEmbeddingModel"
    supports_structured_outputs: false
  - hf_repo_id: "Qwen/Qwen3-Embedding-0.6B"
    handler: "app.models.hf_embedding.HFEmbeddingModel"
    pooling: "last_token"
  - hf_repo_id: "meta-llama/Llama-3.2-1B-Instruct"
    handler: "app.models.text_chat.TextChatModel"
    defaults:
      temperature: 0.7
      top_p: 0.9
      max_tokens: 512
  # Whisper ASR/translation models
  - hf_repo_id: "openai/whisper-tiny"
    handler: "app.models.whisper.WhisperASR"
  - hf_repo_id: "acme/mystery"
    name: "mystery"
    handler: "app.models.custom.Mystery"
"#;

    #[test]
    fn the_seed_catalogue_reads_as_a_roster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.yaml");
        std::fs::write(&path, CATALOGUE).unwrap();
        let roster = load(&path, None).unwrap();
        let kinds: Vec<_> = roster.models.iter().map(|m| (m.id.as_str(), m.kind, m.detect_kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("BAAI/bge-m3", Capability::Embeddings, false),
                ("Qwen/Qwen3-Embedding-0.6B", Capability::Embeddings, false),
                ("meta-llama/Llama-3.2-1B-Instruct", Capability::Chat, false),
                ("openai/whisper-tiny", Capability::Audio, false),
                ("mystery", Capability::Embeddings, true),
            ]
        );
        assert_eq!(roster.models[1].pooling, Some(Pooling::LastToken));
        assert_eq!((roster.models[2].temperature, roster.models[2].max_tokens), (Some(0.7), Some(512)));
        assert_eq!(roster.models[4].repo.as_deref(), Some("acme/mystery"));
        assert!(roster.select(&[]).unwrap().is_empty(), "MODELS chooses, as in the seed");
        assert_eq!(roster.select(&["openai/whisper-tiny".into()]).unwrap()[0].kind, Capability::Audio);

        let overlay = dir.path().join("models.local.yaml");
        std::fs::write(
            &overlay,
            "models:\n  - hf_repo_id: \"BAAI/bge-m3\"\n    pooling: cls\n  - hf_repo_id: \"x/y\"\n",
        )
        .unwrap();
        assert_eq!(local_overlay(&path), overlay);
        let merged = load(&path, Some(&overlay)).unwrap();
        assert_eq!(merged.models.len(), 6);
        assert_eq!(merged.models[0].pooling, Some(Pooling::Cls));
        assert_eq!(merged.models[0].kind, Capability::Embeddings, "keys the overlay does not set are kept");

        std::fs::write(&path, "models:\n  - hf_repo_id: \"BAAI/bge-m3\"\n    pooling: max\n").unwrap();
        assert!(load(&path, None).unwrap_err().to_string().contains("unknown pooling"));
    }
}
