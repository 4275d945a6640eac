//! The audio capability: upload decoding and the request path to a Whisper model actor, whose
//! bounded queue keeps audio from starving embeddings or chat.

pub mod decode;
pub mod formats;

use actix::Recipient;
use std::sync::Arc;
use std::time::Duration;

use crate::engines::whisper::{AudioJob, Transcript, WhisperSpec};
use crate::error::ApiError;
use crate::telemetry::Metrics;
use sis_actors::{Admission, Submit};

/// The batcher's message type for audio jobs.
pub type AudioSubmit = Submit<AudioJob, Transcript>;

/// One speech model as the request path sees it.
pub struct AudioModel {
    id: Arc<str>,
    spec: WhisperSpec,
    admission: Admission,
    batcher: Recipient<AudioSubmit>,
    metrics: Arc<Metrics>,
}

impl AudioModel {
    /// Wires a model's queue and batcher together.
    pub fn new(
        id: Arc<str>,
        spec: WhisperSpec,
        admission: Admission,
        batcher: Recipient<AudioSubmit>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { id, spec, admission, batcher, metrics }
    }

    /// The admission queue.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Whether the model translates and detects languages.
    pub fn multilingual(&self) -> bool {
        self.spec.multilingual
    }

    /// Whether `code` is a language of the model.
    pub fn knows_language(&self, code: &str) -> bool {
        self.spec.knows_language(code)
    }

    /// Takes a queue slot before the upload is decoded (429 at once when full).
    pub fn admit(&self) -> Result<sis_actors::Permit, ApiError> {
        self.admission.try_admit().map_err(|e| ApiError::not_admitted(&self.id, e, Duration::from_secs(5)))
    }

    /// Runs a job that holds a permit.
    pub async fn run(&self, job: AudioJob, permit: sis_actors::Permit) -> Result<Transcript, ApiError> {
        let seconds = job.samples.len() as f64 / crate::engines::mel::SAMPLE_RATE as f64;
        let (submit, reply) = Submit::new(vec![job], Some(permit));
        self.batcher.do_send(submit);
        let output = reply
            .await
            .map_err(|_| ApiError::Internal("the batcher dropped the request".into()))?
            .map_err(|e| ApiError::job_failed(&self.id, e, Duration::from_secs(5)))?;
        let model = &*self.id;
        self.metrics.audio_queue_wait.with_label_values(&[model]).observe(output.queue_wait.as_secs_f64());
        crate::telemetry::request_fields::note_queue_wait(output.queue_wait);
        self.metrics.audio_seconds.with_label_values(&[model]).inc_by(seconds);
        output.outputs.into_iter().next().ok_or_else(|| ApiError::Internal("no transcript".into()))
    }
}
