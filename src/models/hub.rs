//! The Hugging Face Hub as a source of model files: the local cache first (the standard
//! `models--org--name` layout, shared with Python tools), then the Hub at `HF_ENDPOINT` with the
//! operator's token (`HF_TOKEN` or the `huggingface-cli login` file) for gated and private repos.

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

use super::resolve::cached_snapshot;
use crate::config::Settings;

/// Where model files come from, as the settings say.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The Hugging Face cache folder.
    pub cache: PathBuf,
    /// Whether missing files may be downloaded (`AUTO_DOWNLOAD_MODELS`).
    pub download: bool,
    /// The Hub's address.
    pub endpoint: String,
    /// The Hub token, if any.
    pub token: Option<String>,
}

impl Sources {
    /// The sources the settings name.
    pub fn new(settings: &Settings) -> Self {
        Self {
            cache: settings.hf_cache.clone(),
            download: settings.auto_download,
            endpoint: settings.hf_endpoint.clone(),
            token: settings.hf_token.clone(),
        }
    }

    /// The same sources with downloads allowed (`sis models pull`).
    pub fn downloading(mut self) -> Self {
        self.download = true;
        self
    }

    /// A repo on the Hub, for downloads.
    pub fn repo(&self, repo: &str, revision: &str) -> anyhow::Result<ApiRepo> {
        let api = ApiBuilder::new()
            .with_cache_dir(self.cache.clone())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(true)
            .build()?;
        Ok(api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string())))
    }

    /// One file of a repo: from the cache, else (when downloads are allowed) from the Hub. `None`
    /// when neither has it.
    pub fn file(&self, repo: &str, revision: &str, name: &str) -> Option<PathBuf> {
        if let Some(path) = cached_snapshot(&self.cache, repo, revision).map(|dir| dir.join(name)) {
            if path.is_file() {
                return Some(path);
            }
        }
        if !self.download {
            return None;
        }
        self.repo(repo, revision).ok()?.get(name).ok()
    }

    /// The files of a repo: the cached snapshot's, else the Hub's listing.
    pub fn list(&self, repo: &str, revision: &str) -> anyhow::Result<Vec<String>> {
        if let Some(dir) = cached_snapshot(&self.cache, repo, revision) {
            let mut names = Vec::new();
            list_into(&dir, &dir, &mut names);
            if !names.is_empty() {
                return Ok(names);
            }
        }
        if !self.download {
            anyhow::bail!("{repo} is not in the cache {} and downloads are off", self.cache.display());
        }
        let info = self.repo(repo, revision)?.info()?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }
}

fn list_into(root: &Path, dir: &Path, names: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_into(root, &path, names);
        } else if let Ok(relative) = path.strip_prefix(root) {
            names.push(relative.to_string_lossy().into_owned());
        }
    }
}
