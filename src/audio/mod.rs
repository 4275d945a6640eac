//! The speech capability: an uploaded recording in, a transcript out.
//!
//! [`transcribe`] finds the model, checks the request against what the model can do (translation and
//! languages need a multilingual model), takes a queue slot before the upload is decoded (429 at once
//! when full), decodes and resamples the upload off the async threads, and hands the job to one of the
//! model's Whisper workers. Each worker is an engine actor on its own thread, so `max_concurrent`
//! transcriptions run at once and audio cannot starve embeddings or chat. [`start`] builds them.

pub mod decode;
pub mod formats;

use actix::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ModelSettings;
use crate::deadline::within;
use crate::engines::whisper::{AudioJob, Search, WhisperLoader, WhisperSpec};
pub use crate::engines::whisper::{Task, Transcript};
use crate::error::ApiError;
use crate::faults::{Faults, FaultyLoader};
use crate::runtime::{Launch, RequestPath, Runtime};
use crate::telemetry::outcome::{Counted, Outcome};
use crate::telemetry::Metrics;
use sis_actors::{Admission, Batcher, BatcherConfig, ModelActor, Submit};

/// The batcher's message type for audio jobs.
pub type AudioSubmit = Submit<AudioJob, Transcript>;

/// A transcription or translation request, its form fields already read.
#[derive(Debug, Clone)]
pub struct TranscriptionRequest {
    /// The model id.
    pub model: String,
    /// Transcribe, or translate to English.
    pub task: Task,
    /// The uploaded file's bytes.
    pub audio: Vec<u8>,
    /// The uploaded file's name (its extension hints the container).
    pub filename: Option<String>,
    /// `language`, if given.
    pub language: Option<String>,
    /// `prompt`: text that precedes the audio.
    pub prompt: Option<String>,
    /// First decoding temperature.
    pub temperature: f64,
    /// Whether to time every word.
    pub words: bool,
    /// `beam_size`: beam width at temperature 0; the model's default when absent.
    pub beam_size: Option<usize>,
    /// `best_of`: samples per fallback temperature; the model's default when absent.
    pub best_of: Option<usize>,
    /// `patience`: finished beams to wait for, as a multiple of the width; 1 when absent.
    pub patience: Option<f64>,
}

/// Transcribes (or translates) with the model the request names; records `audio_requests_total` and
/// latency for every outcome of a served model.
pub async fn transcribe(runtime: &Runtime, request: TranscriptionRequest) -> Result<Transcript, ApiError> {
    let mut outcome = Outcome::start(&runtime.metrics, Counted::Audio, &request.model);
    let result = async {
        let served = runtime.model(&request.model)?;
        let id = served.settings.id.as_str();
        outcome.resolved(id);
        let limit = served.settings.queue.request_timeout;
        match &served.path {
            RequestPath::Audio(model) => within(limit, model.run(request)).await,
            _ => Err(ApiError::invalid("model", format!("Model `{id}` does not support audio"))),
        }
    }
    .await;
    outcome.finish_with(&result);
    result
}

/// Builds a speech model: one engine actor (and thread) per concurrent transcription, all sharing the
/// model's weights and thread pool, and a batcher that hands each job to a free one.
pub fn start(settings: &ModelSettings, dir: &Path, launch: &mut Launch<'_>) -> anyhow::Result<AudioModel> {
    let mut spec = WhisperSpec::from_dir(dir)?;
    spec.precision = settings.precision;
    spec.device = settings.device;
    launch.kernels = spec.kernels();
    let loader = Arc::new(FaultyLoader::new(WhisperLoader::new(spec.clone()), Faults::of(launch.entry)));
    let workers: Vec<_> = (0..settings.queue.max_concurrent)
        .map(|_| {
            let thread = launch.thread();
            ModelActor::start_on(
                &thread,
                loader.clone(),
                launch.status.clone(),
                launch.bus.clone(),
                launch.actor_config(),
            )
            .recipient()
        })
        .collect();
    let batcher = Batcher::<AudioJob, Transcript>::with_workers(
        BatcherConfig {
            window: Duration::ZERO,
            max_items: 1,
            max_tokens: usize::MAX,
            max_in_flight: workers.len(),
            queue_timeout: settings.queue.queue_timeout,
        },
        workers,
        Arc::new(()),
    )
    .start();
    Ok(AudioModel {
        settings: settings.clone(),
        spec,
        admission: Admission::new(settings.queue.max_queue_size),
        batcher: batcher.recipient(),
        metrics: launch.metrics.clone(),
    })
}

/// One speech model as the request path sees it.
pub struct AudioModel {
    settings: ModelSettings,
    spec: WhisperSpec,
    admission: Admission,
    batcher: Recipient<AudioSubmit>,
    metrics: Arc<Metrics>,
}

impl AudioModel {
    /// The admission queue.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Whether the model translates and detects languages.
    pub fn multilingual(&self) -> bool {
        self.spec.multilingual
    }

    async fn run(&self, request: TranscriptionRequest) -> Result<Transcript, ApiError> {
        let id = self.settings.id.as_str();
        if request.task == Task::Translate && !self.multilingual() {
            return Err(ApiError::invalid(
                "model",
                format!("Model `{id}` is English-only and cannot translate; use a multilingual model"),
            ));
        }
        let language = match request.language.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            None => None,
            Some(l) if self.multilingual() && self.spec.knows_language(l) => Some(l.to_string()),
            Some("en") if !self.multilingual() => None,
            Some(l) => return Err(ApiError::invalid("language", format!("Model `{id}` does not know language {l:?}"))),
        };
        // A queue slot before the upload is decoded: a full queue answers 429 without the work.
        let permit = self.admission.try_admit().map_err(|e| ApiError::not_admitted(id, e, Duration::from_secs(5)))?;
        let extension =
            request.filename.as_deref().and_then(|f| f.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase());
        let max_seconds = self.settings.audio.as_ref().map_or(u64::MAX, |a| a.max_seconds);
        let defaults = self.settings.audio.as_ref().map_or(Search::GREEDY, |a| a.search);
        let search = Search {
            beam_size: request.beam_size.unwrap_or(defaults.beam_size),
            patience: request.patience.unwrap_or(defaults.patience),
            best_of: request.best_of.unwrap_or(defaults.best_of),
        };
        let bytes = request.audio;
        let samples = tokio::task::spawn_blocking(move || decode::decode(bytes, extension.as_deref(), max_seconds))
            .await
            .map_err(|e| ApiError::Internal(format!("decoder thread failed: {e}")))?
            .map_err(|e| ApiError::invalid("file", e.to_string()))?;
        let seconds = samples.len() as f64 / crate::engines::whisper::mel::SAMPLE_RATE as f64;
        let job = AudioJob {
            samples,
            task: request.task,
            language,
            prompt: request.prompt,
            temperature: request.temperature,
            words: request.words,
            search,
        };
        let (submit, reply) = Submit::new(vec![job], Some(permit));
        self.batcher.do_send(submit);
        let output = reply
            .await
            .map_err(|_| ApiError::Internal("the batcher dropped the request".into()))?
            .map_err(|e| ApiError::job_failed(id, e, Duration::from_secs(5)))?;
        self.metrics.audio_queue_wait.with_label_values(&[id]).observe(output.queue_wait.as_secs_f64());
        crate::telemetry::request_fields::note_queue_wait(output.queue_wait);
        self.metrics.audio_seconds.with_label_values(&[id]).inc_by(seconds);
        output.outputs.into_iter().next().ok_or_else(|| ApiError::Internal("no transcript".into()))
    }
}
