//! The one typed configuration of a sis process, built in one place.
//!
//! Every value is looked up in order: CLI flag, environment (new spelling, then the seed's old one),
//! the roster file's `[settings]` table, then the default. A value that does not parse stops start-up
//! with a message naming the variable.

use serde::Serialize;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::Roster;
use crate::engines::device::DeviceName;
use sis_actors::WarmupPolicy;

/// A configuration mistake; start-up stops with this message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--host`.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--config`: the roster file.
    pub config: Option<PathBuf>,
    /// `--models`: comma list of roster ids.
    pub models: Option<String>,
    /// `--device`.
    pub device: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "pretty" | "plain" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected text or json, got {other:?}")),
        }
    }
}

/// Admission and batching of one embedding model (server defaults, overridable per roster entry).
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingSettings {
    /// Most inputs in one request (`MAX_BATCH_SIZE`).
    pub max_batch_size: usize,
    /// Most characters in one input (`MAX_TEXT_CHARS`).
    pub max_text_chars: usize,
    /// LRU cache entries per model (`EMBEDDING_CACHE_SIZE`, 0 disables).
    pub cache_size: usize,
    /// Batches in flight at the model actor (`MAX_CONCURRENT`).
    pub max_concurrent: usize,
    /// Requests waiting or running per model (`MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Longest wait in the queue before 429 (`QUEUE_TIMEOUT_SEC`).
    #[serde(serialize_with = "as_secs")]
    pub queue_timeout: Duration,
    /// Batch window after the first text (`BATCH_WINDOW_MS`; fractions of a millisecond allowed).
    pub batch_window_ms: f64,
    /// Texts per batch (`BATCH_WINDOW_MAX_SIZE`).
    pub batch_max_size: usize,
    /// Tokens per batch (`EMBEDDING_BATCH_MAX_TOKENS`).
    pub batch_max_tokens: usize,
    /// Longest a request may take in all before 504 (`EMBEDDING_REQUEST_TIMEOUT_SEC`).
    #[serde(serialize_with = "as_secs")]
    pub request_timeout: Duration,
}

/// Chat completions: limits, defaults and the continuous-batching scheduler.
#[derive(Debug, Clone, Serialize)]
pub struct ChatSettings {
    /// Longest prompt in tokens (`CHAT_MAX_PROMPT_TOKENS`).
    pub max_prompt_tokens: usize,
    /// `max_tokens` when the request gives none (`MAX_NEW_TOKENS`).
    pub default_max_tokens: usize,
    /// Upper clamp of `max_tokens` (`CHAT_MAX_NEW_TOKENS`).
    pub max_new_tokens: usize,
    /// Default temperature (`DEFAULT_TEMPERATURE`).
    pub temperature: f32,
    /// Default top_p (`DEFAULT_TOP_P`).
    pub top_p: f32,
    /// Continuous batching on (`ENABLE_CHAT_BATCHING`); off runs one sequence at a time.
    pub batching: bool,
    /// Sequences in the running batch (`CHAT_BATCH_MAX_SIZE`).
    pub batch_max_size: usize,
    /// Requests waiting or running per model (`CHAT_BATCH_QUEUE_SIZE` / `CHAT_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Longest wait for a batch slot (`CHAT_QUEUE_TIMEOUT_SEC` / `QUEUE_TIMEOUT_SEC`).
    #[serde(serialize_with = "as_secs")]
    pub queue_timeout: Duration,
    /// Prompt tokens prefilled per step, so running sequences keep streaming (`CHAT_PREFILL_CHUNK`).
    pub prefill_chunk: usize,
    /// Accepted for compatibility; continuous batching admits at every step (`CHAT_BATCH_WINDOW_MS`).
    pub batch_window_ms: f64,
    /// Longest a request may take before 504; a stream, until its first byte (`CHAT_REQUEST_TIMEOUT_SEC`).
    #[serde(serialize_with = "as_secs")]
    pub request_timeout: Duration,
}

/// Speech to text: admission and upload limits.
#[derive(Debug, Clone, Serialize)]
pub struct AudioSettings {
    /// Transcriptions running at once per model (`AUDIO_MAX_CONCURRENT`).
    pub max_concurrent: usize,
    /// Requests waiting or running per model (`AUDIO_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Longest wait before 429 (`AUDIO_QUEUE_TIMEOUT_SEC` / `QUEUE_TIMEOUT_SEC`).
    #[serde(serialize_with = "as_secs")]
    pub queue_timeout: Duration,
    /// Largest upload (`MAX_AUDIO_BYTES`, 413 beyond).
    pub max_bytes: usize,
    /// Longest decoded audio in seconds (`MAX_AUDIO_SECONDS`), against decompression bombs.
    pub max_seconds: u64,
    /// Longest a request may take in all before 504 (`AUDIO_REQUEST_TIMEOUT_SEC`).
    #[serde(serialize_with = "as_secs")]
    pub request_timeout: Duration,
    /// Beam width at temperature 0 when a request names none (`AUDIO_BEAM_SIZE`; 1 is greedy).
    pub beam_size: usize,
    /// Samples per fallback temperature when a request names none (`AUDIO_BEST_OF`).
    pub best_of: usize,
}

/// Vision chat models: their own queue beside the chat settings they share.
#[derive(Debug, Clone, Serialize)]
pub struct VisionSettings {
    /// Sequences in the running batch of a vision model (`VISION_MAX_CONCURRENT`).
    pub max_concurrent: usize,
    /// Requests waiting or running per vision model (`VISION_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Pixel budget of one image after resizing (`VISION_MAX_PIXELS`); 0 keeps the processor's own.
    pub max_pixels: usize,
}

/// Image inputs of vision chat (SPEC §2 "Vision").
#[derive(Debug, Clone, Serialize)]
pub struct ImageSettings {
    /// Fetch http(s) image URLs at all (`ALLOW_REMOTE_IMAGES`).
    pub allow_remote: bool,
    /// Hosts images may be fetched from (`REMOTE_IMAGE_HOST_ALLOWLIST`; empty refuses every host).
    pub host_allowlist: Vec<String>,
    /// Fetch timeout (`REMOTE_IMAGE_TIMEOUT`, seconds).
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    /// Largest image, fetched or inline (`MAX_REMOTE_IMAGE_BYTES`).
    pub max_bytes: usize,
    /// Accepted formats, sniffed from the bytes (`REMOTE_IMAGE_MIME_ALLOWLIST`).
    pub mime_allowlist: Vec<String>,
    /// Folder local image paths may point into (`LOCAL_IMAGE_DIR`; unset refuses local paths).
    pub local_dir: Option<PathBuf>,
}

/// GPU memory bounds of warmup workers (`WARMUP_VRAM_BUDGET_MB`, `WARMUP_VRAM_PER_WORKER_MB`). They
/// apply to models on a GPU; on the CPU they are shown and have no effect.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WarmupVram {
    /// GPU memory all warmup workers of a device may use, in MiB.
    pub budget_mb: Option<f64>,
    /// GPU memory one warmup worker takes, in MiB.
    pub per_worker_mb: Option<f64>,
}

impl WarmupVram {
    /// How many warmup workers may run at once on a GPU: the budget over one worker's share (at least
    /// one, so a small budget slows warmup down rather than skipping it); `None` unless both are set.
    pub fn workers(&self) -> Option<usize> {
        match (self.budget_mb, self.per_worker_mb) {
            (Some(budget), Some(each)) if each > 0.0 => Some(((budget / each).floor() as usize).max(1)),
            _ => None,
        }
    }
}

/// Who may call the server, and from which web origins.
#[derive(Debug, Clone, Serialize)]
pub struct AccessSettings {
    /// Bearer keys accepted on the API (`API_KEYS`, plus one per line of `API_KEYS_FILE`); empty leaves
    /// the API open. Shown as a count.
    #[serde(serialize_with = "count")]
    pub api_keys: Vec<String>,
    /// The key of `/admin/*` (`ADMIN_API_KEY`); unset turns the admin endpoints off. Never shown.
    #[serde(serialize_with = "redacted")]
    pub admin_api_key: Option<String>,
    /// `/metrics` needs an API key too (`METRICS_REQUIRE_KEY`); the health probes are always open.
    pub metrics_require_key: bool,
    /// Origins browsers may call from (`CORS_ALLOW_ORIGINS`, `*` for any); empty sends no CORS headers.
    pub cors_allow_origins: Vec<String>,
}

fn count<S: serde::Serializer>(keys: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} key(s)", keys.len()))
}

fn redacted<S: serde::Serializer>(key: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if key.is_some() { "set" } else { "unset" })
}

/// Everything a sis process is configured with; shown in `/health` as `runtime_config`.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Listen address.
    pub host: String,
    /// Listen port (0 picks a free one).
    pub port: u16,
    /// The roster file.
    pub config_path: PathBuf,
    /// The local overlay merged on top of the roster (`SIS_CONFIG_OVERLAY`, else `<roster>.local.toml`
    /// beside it when that exists).
    pub overlay_path: Option<PathBuf>,
    /// Selected roster ids (`MODELS`); empty means every enabled entry.
    pub models: Vec<String>,
    /// `cpu`, `cuda[:i]`, `metal` or `auto` (`MODEL_DEVICE`).
    pub device: DeviceName,
    /// The CPU kernels `SIS_CPU_KERNELS` selects (environment only: the kernels read it once per
    /// process), as resolved on this CPU.
    pub cpu_kernels: String,
    /// Fetch missing models (`AUTO_DOWNLOAD_MODELS`).
    pub auto_download: bool,
    /// Hugging Face hub cache folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub hf_cache: PathBuf,
    /// The Hub's address (`HF_ENDPOINT`: a mirror or a private Hub).
    pub hf_endpoint: String,
    /// The Hub token for gated and private repos (`HF_TOKEN`, else the token file `huggingface-cli
    /// login` writes: `HF_TOKEN_PATH`, else `$HF_HOME/token`). Never shown.
    #[serde(serialize_with = "redacted")]
    pub hf_token: Option<String>,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// Largest request body in bytes (`MAX_REQUEST_BYTES`).
    pub max_request_bytes: usize,
    /// Consecutive engine failures before a model is marked failed (`MODEL_MAX_RESTARTS`).
    pub max_restarts: u32,
    /// HTTP worker threads (`HTTP_WORKERS`, 0 = one per core).
    pub http_workers: usize,
    /// Longest a client may take to send its request head (`HEADER_READ_TIMEOUT_SEC`; 408 beyond).
    #[serde(serialize_with = "as_secs")]
    pub header_read_timeout: Duration,
    /// Longest a client may take to send its body (`BODY_READ_TIMEOUT_SEC`; 408 beyond).
    #[serde(serialize_with = "as_secs")]
    pub body_read_timeout: Duration,
    /// Time to finish in-flight work after SIGTERM / SIGINT before stopping (`SHUTDOWN_GRACE_SEC`).
    #[serde(serialize_with = "as_secs")]
    pub shutdown_grace: Duration,
    /// API keys, admin key and CORS.
    pub access: AccessSettings,
    /// Embedding admission and batching.
    pub embeddings: EmbeddingSettings,
    /// Chat completions.
    pub chat: ChatSettings,
    /// Speech to text.
    pub audio: AudioSettings,
    /// Vision chat queues.
    pub vision: VisionSettings,
    /// Image inputs.
    pub images: ImageSettings,
    /// Warmup (`ENABLE_WARMUP`, `WARMUP_STEPS`, `WARMUP_BATCH_SIZE`, `WARMUP_ALLOWLIST`, `WARMUP_SKIPLIST`),
    /// handed as it is to the warmup actor.
    pub warmup: WarmupPolicy,
    /// GPU memory bounds of warmup.
    pub warmup_vram: WarmupVram,
    /// Environment variables that look like settings (`SIS_*`, the seed's prefixes) but that sis does
    /// not read: named in one start-up warning, and here (names only).
    pub ignored_env: Vec<String>,
    /// Every environment variable a setting was looked up under.
    #[serde(skip)]
    known_env: HashSet<&'static str>,
}

/// Prefixes of environment variables that are settings of sis or of the seed; a variable with one of
/// them that sis does not read is probably a typo or a seed setting sis has no counterpart for.
const SETTING_PREFIXES: &[&str] = &[
    "SIS_",
    "EMBEDDING_",
    "CHAT_",
    "AUDIO_",
    "VISION_",
    "WARMUP_",
    "WHISPER_",
    "ENABLE_",
    "BATCH_",
    "MAX_",
    "QUEUE_",
    "MODEL_",
    "REMOTE_IMAGE_",
    "DEFAULT_",
    "API_KEY",
];

/// Variables read outside [`Settings::build`]'s table (the kernels, the roster's path, `sis bench`).
const READ_ELSEWHERE: &[&str] =
    &["SIS_CPU_KERNELS", "SIS_CONFIG", "SIS_CONFIG_OVERLAY", "MODEL_CONFIG_PATH", "MODEL_NAME", "MODEL_NAMES"];

pub(crate) fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The layered lookup: CLI, environment, roster `[settings]`, default.
struct Layers<'a> {
    cli: HashMap<&'static str, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: &'a toml::Table,
    /// Every key looked up: the roster's `[settings]` may hold these and no others.
    asked: RefCell<HashSet<&'static str>>,
    /// Every environment variable looked up.
    env_names: RefCell<HashSet<&'static str>>,
}

impl Layers<'_> {
    fn raw(&self, key: &'static str, env: &[&'static str]) -> Option<(String, String)> {
        self.asked.borrow_mut().insert(key);
        self.env_names.borrow_mut().extend(env.iter().copied());
        if let Some(v) = self.cli.get(key) {
            return Some((format!("--{}", key.replace('_', "-")), v.clone()));
        }
        for name in env {
            if let Some(v) = (self.env)(name).filter(|v| !v.trim().is_empty()) {
                return Some(((*name).to_string(), v));
            }
        }
        self.file.get(key).map(|v| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            (format!("roster [settings].{key}"), text)
        })
    }

    fn get<T: FromStr>(&self, key: &'static str, env: &[&'static str], default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(key, env) {
            None => Ok(default),
            Some((source, text)) => {
                text.trim().parse().map_err(|e| ConfigError::new(format!("{source}={text:?} is invalid: {e}")))
            }
        }
    }

    fn flag(&self, key: &'static str, env: &[&'static str], default: bool) -> Result<bool, ConfigError> {
        match self.raw(key, env) {
            None => Ok(default),
            Some((source, text)) => parse_bool(&text)
                .ok_or_else(|| ConfigError::new(format!("{source}={text:?} is invalid: expected true/false or 1/0"))),
        }
    }

    fn list(&self, key: &'static str, env: &[&'static str]) -> Vec<String> {
        self.raw(key, env)
            .map(|(_, text)| text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    }

    /// A duration given in (fractional) seconds, at least a millisecond.
    fn secs(&self, key: &'static str, env: &[&'static str], default: f64) -> Result<Duration, ConfigError> {
        let v: f64 = self.get(key, env, default)?;
        if !v.is_finite() || v < 0.0 {
            return Err(ConfigError::new(format!("{} must be a number of seconds", env.first().unwrap_or(&key))));
        }
        Ok(Duration::from_secs_f64(v.max(0.001)))
    }

    /// A window in (fractional) milliseconds, as the seed takes them (`BATCH_WINDOW_MS=2.5`).
    fn millis(&self, key: &'static str, env: &[&'static str], default: f64) -> Result<f64, ConfigError> {
        let v: f64 = self.get(key, env, default)?;
        if !v.is_finite() || v < 0.0 {
            return Err(ConfigError::new(format!("{} must be a number of milliseconds", env.first().unwrap_or(&key))));
        }
        Ok(v)
    }

    /// An optional amount (MiB) that must be positive when given.
    fn amount(&self, key: &'static str, env: &[&'static str]) -> Result<Option<f64>, ConfigError> {
        match self.raw(key, env) {
            None => Ok(None),
            Some((source, text)) => match text.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
                _ => Err(ConfigError::new(format!("{source}={text:?} is invalid: expected a positive number"))),
            },
        }
    }

    fn positive(&self, key: &'static str, env: &[&'static str], default: usize) -> Result<usize, ConfigError> {
        let v = self.get(key, env, default)?;
        if v == 0 {
            return Err(ConfigError::new(format!("{} must be at least 1", env.first().unwrap_or(&key))));
        }
        Ok(v)
    }
}

/// A beam width or sample count within what a request may ask for.
fn search_width(width: usize, name: &str) -> Result<usize, ConfigError> {
    use crate::engines::whisper::Search;
    if !Search::valid_width(width) {
        return Err(ConfigError::new(format!("{name} must be at most {}, got {width}", Search::MAX_WIDTH)));
    }
    Ok(width)
}

/// `API_KEYS` (comma list) plus the non-empty, non-comment lines of `API_KEYS_FILE`.
fn api_keys(l: &Layers<'_>) -> Result<Vec<String>, ConfigError> {
    let mut keys = l.list("api_keys", &["API_KEYS"]);
    if let Some((source, path)) = l.raw("api_keys_file", &["API_KEYS_FILE"]) {
        let text = std::fs::read_to_string(path.trim())
            .map_err(|e| ConfigError::new(format!("{source}={path:?} cannot be read: {e}")))?;
        keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
    }
    Ok(keys)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `config/models.toml` → `config/models.local.toml`: the operator's overlay, kept out of git.
pub fn local_overlay(roster: &std::path::Path) -> PathBuf {
    if super::seed_catalog::is_seed_catalogue(roster) {
        return super::seed_catalog::local_overlay(roster);
    }
    let stem = roster.file_stem().and_then(|s| s.to_str()).unwrap_or("models");
    roster.with_file_name(format!("{stem}.local.toml"))
}

/// The default roster file.
pub const DEFAULT_ROSTER: &str = "config/models.toml";

impl Settings {
    /// Reads the roster and builds the settings from the process environment.
    pub fn load(cli: &Overrides) -> Result<(Settings, Roster), ConfigError> {
        let (mut settings, roster) = Self::load_with(cli, &|name| std::env::var(name).ok())?;
        settings.ignored_env = settings.unknown_env(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()));
        Ok((settings, roster))
    }

    /// As [`Settings::load`], with the environment given as a lookup function (for tests).
    pub fn load_with(cli: &Overrides, env: &dyn Fn(&str) -> Option<String>) -> Result<(Settings, Roster), ConfigError> {
        let config_path = cli
            .config
            .clone()
            .or_else(|| {
                env("SIS_CONFIG")
                    .or_else(|| env("MODEL_CONFIG_PATH"))
                    .filter(|p| !p.trim().is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROSTER));
        let overlay_path = match env("SIS_CONFIG_OVERLAY").filter(|p| !p.trim().is_empty()) {
            Some(path) => Some(PathBuf::from(path)),
            None => Some(local_overlay(&config_path)).filter(|p| p.is_file()),
        };
        let roster = Roster::load_with_overlay(&config_path, overlay_path.as_deref())?;
        let settings = Self::build(cli, env, &roster, config_path, overlay_path)?;
        roster.select(&settings.models)?;
        Ok((settings, roster))
    }

    /// Builds the settings of an in-memory roster (tests).
    #[cfg(test)]
    pub(crate) fn from_roster(
        cli: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
        roster: &Roster,
    ) -> Result<Settings, ConfigError> {
        Self::build(cli, env, roster, PathBuf::from("roster.toml"), None)
    }

    fn build(
        cli: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
        roster: &Roster,
        config_path: PathBuf,
        overlay_path: Option<PathBuf>,
    ) -> Result<Settings, ConfigError> {
        let mut flags = HashMap::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                flags.insert(k, v);
            }
        };
        put("host", cli.host.clone());
        put("port", cli.port.map(|p| p.to_string()));
        put("models", cli.models.clone());
        put("device", cli.device.clone());
        put("log_format", cli.log_format.clone());
        let l = Layers {
            cli: flags,
            env,
            file: &roster.settings,
            asked: RefCell::default(),
            env_names: RefCell::default(),
        };

        let hf_cache = match env("HF_HUB_CACHE") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => match env("HF_HOME") {
                Some(home) if !home.is_empty() => PathBuf::from(home).join("hub"),
                _ => PathBuf::from(env("HOME").unwrap_or_else(|| ".".into())).join(".cache/huggingface/hub"),
            },
        };
        let hf_home = match env("HF_HOME") {
            Some(home) if !home.is_empty() => PathBuf::from(home),
            _ => PathBuf::from(env("HOME").unwrap_or_else(|| ".".into())).join(".cache/huggingface"),
        };
        let token_file = env("HF_TOKEN_PATH").filter(|p| !p.is_empty()).map_or(hf_home.join("token"), PathBuf::from);
        let hf_token = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
            .iter()
            .find_map(|name| env(name))
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let hf_endpoint = env("HF_ENDPOINT")
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into());
        let device = l.get("device", &["MODEL_DEVICE", "DEVICE"], DeviceName::Cpu)?;
        let cpu_kernels = crate::engines::kernels::selection().map_err(|e| ConfigError::new(e.to_string()))?.describe();

        let mut settings = Settings {
            host: l.get("host", &["HOST"], "0.0.0.0".to_string())?,
            port: l.get("port", &["PORT"], 8000)?,
            config_path,
            models: l.list("models", &["MODELS"]),
            device,
            cpu_kernels,
            auto_download: l.flag("auto_download", &["AUTO_DOWNLOAD_MODELS"], true)?,
            hf_cache,
            hf_endpoint,
            hf_token,
            log_format: l.get("log_format", &["LOG_FORMAT"], LogFormat::Text)?,
            max_request_bytes: l.positive("max_request_bytes", &["MAX_REQUEST_BYTES"], 4 * 1024 * 1024)?,
            max_restarts: l.get("max_restarts", &["MODEL_MAX_RESTARTS"], 5)?,
            http_workers: l.get("http_workers", &["HTTP_WORKERS"], 0)?,
            shutdown_grace: l.secs("shutdown_grace_sec", &["SHUTDOWN_GRACE_SEC"], 30.0)?,
            header_read_timeout: l.secs("header_read_timeout_sec", &["HEADER_READ_TIMEOUT_SEC"], 5.0)?,
            body_read_timeout: l.secs("body_read_timeout_sec", &["BODY_READ_TIMEOUT_SEC"], 30.0)?,
            access: AccessSettings {
                api_keys: api_keys(&l)?,
                admin_api_key: l.raw("admin_api_key", &["ADMIN_API_KEY"]).map(|(_, k)| k.trim().to_string()),
                metrics_require_key: l.flag("metrics_require_key", &["METRICS_REQUIRE_KEY"], false)?,
                cors_allow_origins: l.list("cors_allow_origins", &["CORS_ALLOW_ORIGINS"]),
            },
            overlay_path,
            embeddings: EmbeddingSettings {
                max_batch_size: l.positive("max_batch_size", &["MAX_BATCH_SIZE", "EMBEDDING_MAX_BATCH_SIZE"], 32)?,
                max_text_chars: l.positive(
                    "max_text_chars",
                    &["MAX_TEXT_CHARS", "EMBEDDING_MAX_TEXT_CHARS"],
                    20_000,
                )?,
                cache_size: l.get("embedding_cache_size", &["EMBEDDING_CACHE_SIZE"], 256)?,
                max_concurrent: l.positive("max_concurrent", &["EMBEDDING_MAX_CONCURRENT", "MAX_CONCURRENT"], 1)?,
                max_queue_size: l.positive("max_queue_size", &["EMBEDDING_MAX_QUEUE_SIZE", "MAX_QUEUE_SIZE"], 256)?,
                queue_timeout: Duration::from_secs_f64(
                    l.get::<f64>("queue_timeout_sec", &["EMBEDDING_QUEUE_TIMEOUT_SEC", "QUEUE_TIMEOUT_SEC"], 30.0)?
                        .max(0.001),
                ),
                batch_window_ms: l.millis("batch_window_ms", &["EMBEDDING_BATCH_WINDOW_MS", "BATCH_WINDOW_MS"], 5.0)?,
                batch_max_size: l.positive(
                    "batch_max_size",
                    &["EMBEDDING_BATCH_WINDOW_MAX_SIZE", "BATCH_WINDOW_MAX_SIZE"],
                    64,
                )?,
                batch_max_tokens: l.positive("batch_max_tokens", &["EMBEDDING_BATCH_MAX_TOKENS"], 8192)?,
                request_timeout: l.secs(
                    "embedding_request_timeout_sec",
                    &["EMBEDDING_REQUEST_TIMEOUT_SEC", "REQUEST_TIMEOUT_SEC"],
                    60.0,
                )?,
            },
            chat: ChatSettings {
                max_prompt_tokens: l.positive("chat_max_prompt_tokens", &["CHAT_MAX_PROMPT_TOKENS"], 4096)?,
                default_max_tokens: l.positive("max_new_tokens", &["MAX_NEW_TOKENS"], 512)?,
                max_new_tokens: l.positive("chat_max_new_tokens", &["CHAT_MAX_NEW_TOKENS"], 2048)?,
                temperature: l.get("default_temperature", &["DEFAULT_TEMPERATURE"], 0.7)?,
                top_p: l.get("default_top_p", &["DEFAULT_TOP_P"], 0.9)?,
                batching: l.flag("enable_chat_batching", &["ENABLE_CHAT_BATCHING"], true)?,
                // The seed's MAX_CONCURRENT / MAX_QUEUE_SIZE are every capability's fallbacks.
                batch_max_size: l.positive(
                    "chat_batch_max_size",
                    &["CHAT_BATCH_MAX_SIZE", "CHAT_MAX_CONCURRENT", "MAX_CONCURRENT"],
                    8,
                )?,
                max_queue_size: l.positive(
                    "chat_max_queue_size",
                    &["CHAT_MAX_QUEUE_SIZE", "CHAT_BATCH_QUEUE_SIZE", "MAX_QUEUE_SIZE"],
                    64,
                )?,
                queue_timeout: Duration::from_secs_f64(
                    l.get::<f64>("chat_queue_timeout_sec", &["CHAT_QUEUE_TIMEOUT_SEC", "QUEUE_TIMEOUT_SEC"], 60.0)?
                        .max(0.001),
                ),
                prefill_chunk: l.positive("chat_prefill_chunk", &["CHAT_PREFILL_CHUNK"], 256)?,
                batch_window_ms: l.millis("chat_batch_window_ms", &["CHAT_BATCH_WINDOW_MS"], 0.0)?,
                request_timeout: l.secs(
                    "chat_request_timeout_sec",
                    &["CHAT_REQUEST_TIMEOUT_SEC", "REQUEST_TIMEOUT_SEC"],
                    300.0,
                )?,
            },
            audio: AudioSettings {
                // Workers share one copy of the weights and the cores; with one per core (up to four),
                // concurrent transcriptions each keep mostly to their own core.
                max_concurrent: l.positive(
                    "audio_max_concurrent",
                    &["AUDIO_MAX_CONCURRENT", "MAX_CONCURRENT"],
                    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4),
                )?,
                max_queue_size: l.positive("audio_max_queue_size", &["AUDIO_MAX_QUEUE_SIZE", "MAX_QUEUE_SIZE"], 16)?,
                queue_timeout: Duration::from_secs_f64(
                    l.get::<f64>("audio_queue_timeout_sec", &["AUDIO_QUEUE_TIMEOUT_SEC", "QUEUE_TIMEOUT_SEC"], 120.0)?
                        .max(0.001),
                ),
                max_bytes: l.positive("max_audio_bytes", &["MAX_AUDIO_BYTES"], 25 * 1024 * 1024)?,
                max_seconds: l.get("max_audio_seconds", &["MAX_AUDIO_SECONDS"], 3 * 3600)?,
                request_timeout: l.secs(
                    "audio_request_timeout_sec",
                    &["AUDIO_REQUEST_TIMEOUT_SEC", "REQUEST_TIMEOUT_SEC"],
                    1800.0,
                )?,
                beam_size: search_width(l.positive("audio_beam_size", &["AUDIO_BEAM_SIZE"], 5)?, "AUDIO_BEAM_SIZE")?,
                best_of: search_width(l.positive("audio_best_of", &["AUDIO_BEST_OF"], 5)?, "AUDIO_BEST_OF")?,
            },
            vision: VisionSettings {
                max_concurrent: l.positive("vision_max_concurrent", &["VISION_MAX_CONCURRENT", "MAX_CONCURRENT"], 4)?,
                max_queue_size: l.positive(
                    "vision_max_queue_size",
                    &["VISION_MAX_QUEUE_SIZE", "MAX_QUEUE_SIZE"],
                    32,
                )?,
                max_pixels: l.get("vision_max_pixels", &["VISION_MAX_PIXELS"], 0)?,
            },
            images: ImageSettings {
                allow_remote: l.flag("allow_remote_images", &["ALLOW_REMOTE_IMAGES"], false)?,
                host_allowlist: l.list("remote_image_host_allowlist", &["REMOTE_IMAGE_HOST_ALLOWLIST"]),
                timeout: Duration::from_secs_f64(
                    l.get::<f64>("remote_image_timeout", &["REMOTE_IMAGE_TIMEOUT"], 5.0)?.max(0.001),
                ),
                max_bytes: l.positive("max_remote_image_bytes", &["MAX_REMOTE_IMAGE_BYTES"], 5 * 1024 * 1024)?,
                mime_allowlist: {
                    let listed = l.list("remote_image_mime_allowlist", &["REMOTE_IMAGE_MIME_ALLOWLIST"]);
                    if listed.is_empty() {
                        ["image/png", "image/jpeg", "image/webp", "image/gif"].map(String::from).to_vec()
                    } else {
                        listed
                    }
                },
                local_dir: l.raw("local_image_dir", &["LOCAL_IMAGE_DIR"]).map(|(_, dir)| PathBuf::from(dir)),
            },
            warmup: WarmupPolicy {
                enabled: l.flag("enable_warmup", &["ENABLE_WARMUP"], true)?,
                steps: l.get("warmup_steps", &["WARMUP_STEPS"], 2)?,
                batch_size: l.positive("warmup_batch_size", &["WARMUP_BATCH_SIZE"], 8)?,
                allowlist: l.list("warmup_allowlist", &["WARMUP_ALLOWLIST"]),
                skiplist: l.list("warmup_skiplist", &["WARMUP_SKIPLIST"]),
                // Set below from the GPU memory budget, and by the runtime (which models are on a GPU).
                parallel: None,
                bounded: Vec::new(),
            },
            warmup_vram: WarmupVram {
                budget_mb: l.amount("warmup_vram_budget_mb", &["WARMUP_VRAM_BUDGET_MB"])?,
                per_worker_mb: l.amount("warmup_vram_per_worker_mb", &["WARMUP_VRAM_PER_WORKER_MB"])?,
            },
            ignored_env: Vec::new(),
            known_env: l.env_names.borrow().clone(),
        };
        settings.warmup.parallel = settings.warmup_vram.workers();
        // The known keys are the ones the definitions above looked up: a key nothing asked for is a typo.
        let asked = l.asked.borrow();
        if let Some(key) = roster.settings.keys().find(|key| !asked.contains(key.as_str())) {
            return Err(ConfigError::new(format!("roster [settings] has unknown key {key:?}")));
        }
        Ok(settings)
    }

    /// Logs, once at start-up, what in the environment has no effect: variables that look like
    /// settings but are not ones, and GPU warmup bounds on a CPU device.
    pub fn warn_about_environment(&self) {
        if !self.ignored_env.is_empty() {
            tracing::warn!(
                variables = %self.ignored_env.join(", "),
                "these environment variables look like settings but sis does not read them (see the README's \
                 settings table)"
            );
        }
        let vram = &self.warmup_vram;
        if (vram.budget_mb.is_some() || vram.per_worker_mb.is_some()) && self.device.is_cpu() {
            tracing::warn!(
                "WARMUP_VRAM_BUDGET_MB / WARMUP_VRAM_PER_WORKER_MB bound warmup of models on a GPU; MODEL_DEVICE is \
                 the CPU (they still apply to roster entries with a GPU device)"
            );
        }
    }

    /// Of the environment variables `names`, those that look like settings but that sis does not read.
    pub fn unknown_env(&self, names: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut unknown: Vec<String> = names
            .into_iter()
            .filter(|n| SETTING_PREFIXES.iter().any(|p| n.starts_with(p)))
            .filter(|n| !self.known_env.contains(n.as_str()) && !READ_ELSEWHERE.contains(&n.as_str()))
            .collect();
        unknown.sort();
        unknown
    }

    /// The seed's flat `runtime_config` keys, with their effective values (shown in `/health` beside
    /// sis's own nested settings).
    pub fn seed_keys(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let (e, c, a, w) = (&self.embeddings, &self.chat, &self.audio, &self.warmup);
        let pairs = [
            ("models", json!(self.models.join(","))),
            ("model_device", json!(self.device.to_string())),
            ("auto_download_models", json!(self.auto_download)),
            ("max_batch_size", json!(e.max_batch_size)),
            ("max_text_chars", json!(e.max_text_chars)),
            ("embedding_cache_size", json!(e.cache_size)),
            ("max_concurrent", json!(e.max_concurrent)),
            ("max_queue_size", json!(e.max_queue_size)),
            ("queue_timeout_sec", json!(e.queue_timeout.as_secs_f64())),
            ("batch_window_ms", json!(e.batch_window_ms)),
            ("batch_window_max_size", json!(e.batch_max_size)),
            ("enable_chat_batching", json!(c.batching)),
            ("chat_batch_window_ms", json!(c.batch_window_ms)),
            ("chat_batch_max_size", json!(c.batch_max_size)),
            ("chat_batch_queue_size", json!(c.max_queue_size)),
            ("chat_queue_timeout_sec", json!(c.queue_timeout.as_secs_f64())),
            ("max_new_tokens", json!(c.default_max_tokens)),
            ("default_temperature", json!(c.temperature)),
            ("default_top_p", json!(c.top_p)),
            ("audio_max_concurrent", json!(a.max_concurrent)),
            ("audio_max_queue_size", json!(a.max_queue_size)),
            ("max_audio_bytes", json!(a.max_bytes)),
            ("enable_warmup", json!(w.enabled)),
            ("warmup_steps", json!(w.steps)),
            ("warmup_batch_size", json!(w.batch_size)),
            ("warmup_allowlist", json!(w.allowlist)),
            ("warmup_skiplist", json!(w.skiplist)),
            ("warmup_vram_budget_mb", json!(self.warmup_vram.budget_mb)),
            ("warmup_vram_per_worker_mb", json!(self.warmup_vram.per_worker_mb)),
            ("allow_remote_images", json!(self.images.allow_remote)),
            ("max_request_bytes", json!(self.max_request_bytes)),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The `host:port` to bind.
    pub fn bind_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(cli: Overrides, env: &[(&str, &str)], file: &str) -> Result<Settings, ConfigError> {
        let roster = Roster::parse(file).unwrap();
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::build(&cli, &|k| env.get(k).cloned(), &roster, PathBuf::from("x.toml"), None)
    }

    #[test]
    fn precedence_cli_env_file_default() {
        let file = "[settings]\nport = 9000\nbatch_window_ms = 7\nmax_batch_size = 8\n";
        let s = build(
            Overrides { port: Some(1234), ..Default::default() },
            &[("PORT", "5555"), ("MAX_BATCH_SIZE", "16")],
            file,
        )
        .unwrap();
        assert_eq!(s.port, 1234);
        assert_eq!(s.embeddings.max_batch_size, 16);
        assert_eq!(s.embeddings.batch_window_ms, 7.0);
        assert_eq!(s.embeddings.max_text_chars, 20_000);
    }

    /// The seed's habits: `MAX_*` and `QUEUE_TIMEOUT_SEC` reach every capability unless a capability's
    /// own variable is set; windows may be fractional; setting-like names sis does not read are listed.
    #[test]
    fn the_seeds_fallbacks_float_windows_and_unknown_names() {
        let env = [
            ("MAX_CONCURRENT", "3"),
            ("MAX_QUEUE_SIZE", "40"),
            ("AUDIO_MAX_QUEUE_SIZE", "5"),
            ("QUEUE_TIMEOUT_SEC", "7"),
            ("BATCH_WINDOW_MS", "2.5"),
            ("WARMUP_VRAM_BUDGET_MB", "4096"),
        ];
        let s = build(Overrides::default(), &env, "").unwrap();
        assert_eq!((s.embeddings.max_concurrent, s.audio.max_concurrent, s.vision.max_concurrent), (3, 3, 3));
        assert_eq!(s.chat.batch_max_size, 3);
        assert_eq!((s.embeddings.max_queue_size, s.chat.max_queue_size, s.vision.max_queue_size), (40, 40, 40));
        assert_eq!(s.audio.max_queue_size, 5, "a capability's own variable wins");
        assert_eq!((s.chat.queue_timeout, s.audio.queue_timeout), (Duration::from_secs(7), Duration::from_secs(7)));
        assert_eq!(s.embeddings.batch_window_ms, 2.5);
        assert_eq!(s.warmup_vram.budget_mb, Some(4096.0));
        assert_eq!(s.seed_keys()["batch_window_ms"], 2.5);
        let names =
            ["MAX_CONCURENT", "SIS_TYPO", "MAX_QUEUE_SIZE", "PATH", "WARMUP_VRAM_PER_WORKER_MB", "SIS_CPU_KERNELS"];
        assert_eq!(s.unknown_env(names.map(String::from)), ["MAX_CONCURENT", "SIS_TYPO"]);
        assert!(build(Overrides::default(), &[("BATCH_WINDOW_MS", "-1")], "").is_err());
        assert!(build(Overrides::default(), &[("WARMUP_VRAM_BUDGET_MB", "lots")], "").is_err());
    }

    #[test]
    fn new_spelling_wins_over_old() {
        let s =
            build(Overrides::default(), &[("BATCH_WINDOW_MS", "3"), ("EMBEDDING_BATCH_WINDOW_MS", "9")], "").unwrap();
        assert_eq!(s.embeddings.batch_window_ms, 9.0);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = build(Overrides::default(), &[("MAX_BATCH_SIZE", "lots")], "").unwrap_err();
        assert!(err.to_string().contains("MAX_BATCH_SIZE"), "{err}");
        let err = build(Overrides::default(), &[("MODEL_DEVICE", "tpu")], "").unwrap_err();
        assert!(err.to_string().contains("MODEL_DEVICE"), "{err}");
        let err = build(Overrides::default(), &[], "[settings]\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = build(Overrides::default(), &[("ENABLE_WARMUP", "maybe")], "").unwrap_err();
        assert!(err.to_string().contains("ENABLE_WARMUP"), "{err}");
    }

    #[test]
    fn image_inputs_are_locked_down_by_default() {
        let s = build(Overrides::default(), &[], "").unwrap();
        assert!(!s.images.allow_remote);
        assert!(s.images.host_allowlist.is_empty() && s.images.local_dir.is_none());
        assert_eq!(s.images.max_bytes, 5 * 1024 * 1024);
        let s = build(
            Overrides::default(),
            &[
                ("ALLOW_REMOTE_IMAGES", "1"),
                ("REMOTE_IMAGE_HOST_ALLOWLIST", "a.example, b.example"),
                ("REMOTE_IMAGE_TIMEOUT", "2.5"),
            ],
            "",
        )
        .unwrap();
        assert!(s.images.allow_remote);
        assert_eq!(s.images.host_allowlist, vec!["a.example", "b.example"]);
        assert_eq!(s.images.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn hub_endpoint_and_token() {
        let s = build(Overrides::default(), &[], "").unwrap();
        assert_eq!((s.hf_endpoint.as_str(), s.hf_token.as_deref()), ("https://huggingface.co", None));
        let s = build(Overrides::default(), &[("HF_ENDPOINT", "https://mirror.example/"), ("HF_TOKEN", " hf_x\n")], "")
            .unwrap();
        assert_eq!((s.hf_endpoint.as_str(), s.hf_token.as_deref()), ("https://mirror.example", Some("hf_x")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_from_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        let s = build(Overrides::default(), &[("HF_HOME", home)], "").unwrap();
        assert_eq!(s.hf_token.as_deref(), Some("hf_from_file"));
        assert_eq!(serde_json::to_value(&s).unwrap()["hf_token"], "set", "the token is never shown");
    }

    #[test]
    fn hf_cache_location() {
        let s = build(Overrides::default(), &[("HF_HOME", "/h")], "").unwrap();
        assert_eq!(s.hf_cache, PathBuf::from("/h/hub"));
        let s = build(Overrides::default(), &[("HF_HOME", "/h"), ("HF_HUB_CACHE", "/c")], "").unwrap();
        assert_eq!(s.hf_cache, PathBuf::from("/c"));
    }

    #[test]
    fn the_example_rosters_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let cli = Overrides { config: Some(path.clone()), ..Default::default() };
            let (settings, roster) = Settings::load_with(&cli, &|_| None)
                .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
            assert!(!roster.select(&settings.models).unwrap().is_empty(), "{} serves something", path.display());
            seen += 1;
        }
        assert_eq!(seen, 3, "cpu, gpu and embeddings-node examples");
    }
}
