//! The effective settings of one served model: its roster entry with every override applied.
//!
//! Server-wide values ([`Settings`]) are defaults; a roster entry may override some of them per model.
//! They are merged here, once, into a [`ModelSettings`] that the model's capability is built from and
//! that `/health` shows per model. Nothing downstream looks at an entry's overrides again.

use serde::Serialize;
use std::time::Duration;

use super::roster::{Capability, ModelEntry, Precision};
use super::settings::{as_secs, Settings};
use crate::engines::device::DeviceName;
use crate::engines::whisper::Search;

/// Everything one model runs with.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSettings {
    /// API id.
    pub id: String,
    /// What it serves.
    pub capability: Capability,
    /// Where it runs.
    pub device: DeviceName,
    /// Arithmetic of its dense layers.
    pub precision: Precision,
    /// Its admission queue and timeouts.
    pub queue: QueueSettings,
    /// Batching and request limits, for an embedding model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<EmbeddingModelSettings>,
    /// Scheduler, limits and sampling defaults, for a chat or vision model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatModelSettings>,
    /// Limits, for a speech model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioModelSettings>,
    /// Test hook: a request whose text holds this marker makes the engine panic once
    /// (only honoured by `fault-injection` builds).
    #[serde(skip)]
    pub fault_marker: Option<String>,
}

/// A model's admission queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSettings {
    /// Requests waiting or running.
    pub max_queue_size: usize,
    /// Work at the engine at once: batches in flight (embeddings), sequences in the running batch
    /// (chat), or workers, each with its own engine (audio).
    pub max_concurrent: usize,
    /// Longest wait for the engine before 429.
    #[serde(serialize_with = "as_secs")]
    pub queue_timeout: Duration,
    /// Longest a request may take before 504 (a chat stream: until its first byte).
    #[serde(serialize_with = "as_secs")]
    pub request_timeout: Duration,
}

/// An embedding model's batching and request limits.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingModelSettings {
    /// Batch window after the first text, in milliseconds.
    pub batch_window_ms: f64,
    /// Texts per batch.
    pub batch_max_size: usize,
    /// Tokens per batch.
    pub batch_max_tokens: usize,
    /// LRU cache entries (0 disables the cache).
    pub cache_size: usize,
    /// Most inputs in one request.
    pub max_inputs: usize,
    /// Most characters in one input.
    pub max_text_chars: usize,
}

/// A chat model's limits and sampling defaults.
#[derive(Debug, Clone, Serialize)]
pub struct ChatModelSettings {
    /// Longest prompt in tokens (further capped by the context window).
    pub max_prompt_tokens: usize,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: usize,
    /// Upper clamp of `max_tokens`.
    pub max_new_tokens: usize,
    /// Temperature when the request gives none.
    pub temperature: f32,
    /// top_p when the request gives none.
    pub top_p: f32,
    /// Prompt tokens prefilled per scheduler step.
    pub prefill_chunk: usize,
}

/// A speech model's limits.
#[derive(Debug, Clone, Serialize)]
pub struct AudioModelSettings {
    /// Longest decoded audio in seconds.
    pub max_seconds: u64,
    /// How windows are searched when a request does not say.
    pub search: Search,
}

impl ModelSettings {
    /// Applies `entry`'s overrides to the server-wide `settings`.
    pub fn resolve(entry: &ModelEntry, settings: &Settings) -> ModelSettings {
        let queue = |max_queue_size: usize, max_concurrent: usize, queue_timeout, request_timeout| QueueSettings {
            max_queue_size: entry.max_queue_size.unwrap_or(max_queue_size),
            max_concurrent: entry.max_concurrent.unwrap_or(max_concurrent).max(1),
            queue_timeout,
            request_timeout,
        };
        let (queue, embeddings, chat, audio) = match entry.kind {
            // A cross-encoder runs on the embeddings' engine, batcher and limits.
            Capability::Embeddings | Capability::Rerank => {
                let s = &settings.embeddings;
                let embeddings = EmbeddingModelSettings {
                    batch_window_ms: entry.batch_window_ms.unwrap_or(s.batch_window_ms),
                    batch_max_size: entry.batch_max_size.unwrap_or(s.batch_max_size),
                    batch_max_tokens: entry.batch_max_tokens.unwrap_or(s.batch_max_tokens),
                    cache_size: entry.cache_size.unwrap_or(s.cache_size),
                    max_inputs: s.max_batch_size,
                    max_text_chars: s.max_text_chars,
                };
                let queue = queue(s.max_queue_size, s.max_concurrent, s.queue_timeout, s.request_timeout);
                (queue, Some(embeddings), None, None)
            }
            Capability::Chat | Capability::Vision => {
                let c = &settings.chat;
                // A vision model has its own queue (VISION_MAX_CONCURRENT / VISION_MAX_QUEUE_SIZE); text-only
                // requests to it share its running batch with the image requests.
                let (running, waiting) = match entry.kind {
                    Capability::Vision => (settings.vision.max_concurrent, settings.vision.max_queue_size),
                    _ => (if c.batching { c.batch_max_size } else { 1 }, c.max_queue_size),
                };
                let chat = ChatModelSettings {
                    max_prompt_tokens: c.max_prompt_tokens,
                    default_max_tokens: entry.max_tokens.unwrap_or(c.default_max_tokens),
                    max_new_tokens: c.max_new_tokens,
                    temperature: entry.temperature.unwrap_or(c.temperature),
                    top_p: entry.top_p.unwrap_or(c.top_p),
                    prefill_chunk: c.prefill_chunk,
                };
                (queue(waiting, running, c.queue_timeout, c.request_timeout), None, Some(chat), None)
            }
            Capability::Audio => {
                let a = &settings.audio;
                let queue = queue(a.max_queue_size, a.max_concurrent, a.queue_timeout, a.request_timeout);
                let search = Search {
                    beam_size: entry.beam_size.unwrap_or(a.beam_size),
                    patience: 1.0,
                    best_of: entry.best_of.unwrap_or(a.best_of),
                };
                (queue, None, None, Some(AudioModelSettings { max_seconds: a.max_seconds, search }))
            }
        };
        ModelSettings {
            id: entry.id.clone(),
            capability: entry.kind,
            device: entry.device.unwrap_or(settings.device),
            precision: entry.precision.unwrap_or_default(),
            queue,
            embeddings,
            chat,
            audio,
            fault_marker: entry.fault_panic_marker.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, Roster};

    fn resolve(roster: &str, env: &[(&str, &str)]) -> Vec<ModelSettings> {
        let roster = Roster::parse(roster).unwrap();
        let env: std::collections::HashMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let settings = Settings::from_roster(&Overrides::default(), &|k| env.get(k).cloned(), &roster).unwrap();
        roster.models.iter().map(|e| ModelSettings::resolve(e, &settings)).collect()
    }

    #[test]
    fn entry_overrides_win_over_server_defaults() {
        let models = resolve(
            r#"
            [[models]]
            id = "e"
            kind = "embedding"
            path = "/x"
            batch_window_ms = 9
            max_queue_size = 3
            [[models]]
            id = "c"
            kind = "chat"
            path = "/y"
            temperature = 0.1
            max_tokens = 17
            max_concurrent = 2
            [[models]]
            id = "v"
            kind = "vision"
            path = "/z"
            [[models]]
            id = "a"
            kind = "audio"
            path = "/w"
            precision = "f32"
            "#,
            &[("BATCH_WINDOW_MS", "4"), ("DEFAULT_TOP_P", "0.5"), ("VISION_MAX_QUEUE_SIZE", "5")],
        );
        let e = models[0].embeddings.as_ref().unwrap();
        assert_eq!((e.batch_window_ms, models[0].queue.max_queue_size), (9.0, 3));
        let c = models[1].chat.as_ref().unwrap();
        assert_eq!((c.temperature, c.top_p, c.default_max_tokens), (0.1, 0.5, 17));
        assert_eq!(models[1].queue.max_concurrent, 2);
        assert_eq!((models[2].capability, models[2].queue.max_queue_size), (Capability::Vision, 5));
        assert_eq!(models[3].precision, Precision::F32);
        assert!(models[3].audio.is_some() && models[3].chat.is_none());
    }
}
