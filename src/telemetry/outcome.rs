//! One request's line in `<capability>_requests_total{model,status}` and its latency histogram,
//! recorded exactly once, whatever path the request ends on.
//!
//! A request for a name no model answers to is counted under [`UNKNOWN_MODEL`] (a fixed label, so
//! clients cannot grow the label set); one dropped before it has an outcome (its client went away:
//! actix drops the handler, or the stream is dropped mid-way) is counted with status 499, as nginx and
//! the seed name it.

use prometheus::{HistogramVec, IntCounterVec};
use std::sync::Arc;
use std::time::Instant;

use super::Metrics;
use crate::error::ApiError;

/// The model label of requests for names no model answers to.
pub const UNKNOWN_MODEL: &str = "_unknown";

/// The status recorded for requests whose client went away first.
pub const CLIENT_GONE: u16 = 499;

/// Which counter and histogram a request is recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `embedding_requests_total`, `embedding_request_latency_seconds`.
    Embeddings,
    /// `chat_requests_total`, `chat_request_latency_seconds` (vision chat included).
    Chat,
    /// `audio_requests_total`, `audio_request_latency_seconds`.
    Audio,
    /// `rerank_requests_total`, `rerank_request_latency_seconds`.
    Rerank,
}

/// A request on its way to an outcome (see the module docs).
pub struct Outcome {
    metrics: Arc<Metrics>,
    counted: Counted,
    model: String,
    started: Instant,
    recorded: bool,
}

impl Outcome {
    /// Starts the clock of a request for `model`, as the client named it.
    pub fn start(metrics: &Arc<Metrics>, counted: Counted, model: &str) -> Self {
        Self { metrics: metrics.clone(), counted, model: model.to_string(), started: Instant::now(), recorded: false }
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Labels the request with the served model's id (the name asked for may be an alias).
    pub fn resolved(&mut self, id: &str) {
        self.model = id.to_string();
    }

    /// Records the status.
    pub fn finish(mut self, status: u16) {
        self.record(status);
    }

    /// Records the status of `result`.
    pub fn finish_with<T>(self, result: &Result<T, ApiError>) {
        match result {
            Ok(_) => self.finish(200),
            Err(error) => self.failed(error),
        }
    }

    /// Records the status of `error`; a request for an unknown model under [`UNKNOWN_MODEL`].
    pub fn failed(mut self, error: &ApiError) {
        if let ApiError::ModelNotFound(_) = error {
            self.model = UNKNOWN_MODEL.to_string();
        }
        self.record(error.status());
    }

    fn record(&mut self, status: u16) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let (requests, latency) = self.metrics.counted(self.counted);
        requests.with_label_values(&[self.model.as_str(), &status.to_string()]).inc();
        latency.with_label_values(&[self.model.as_str()]).observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.record(CLIENT_GONE);
    }
}

impl Metrics {
    /// The requests counter and latency histogram of `counted`.
    fn counted(&self, counted: Counted) -> (&IntCounterVec, &HistogramVec) {
        match counted {
            Counted::Embeddings => (&self.embedding_requests, &self.embedding_latency),
            Counted::Chat => (&self.chat_requests, &self.chat_latency),
            Counted::Audio => (&self.audio_requests, &self.audio_latency),
            Counted::Rerank => (&self.rerank_requests, &self.rerank_latency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &Metrics, model: &str, status: &str) -> u64 {
        metrics.embedding_requests.with_label_values(&[model, status]).get()
    }

    #[test]
    fn every_request_is_counted_once_and_dropped_ones_as_499() {
        let metrics = Arc::new(Metrics::new());
        let mut served = Outcome::start(&metrics, Counted::Embeddings, "alias");
        served.resolved("minilm");
        served.finish(200);
        Outcome::start(&metrics, Counted::Embeddings, "nope")
            .finish_with::<()>(&Err(ApiError::ModelNotFound("nope".into())));
        drop(Outcome::start(&metrics, Counted::Embeddings, "minilm"));
        assert_eq!(count(&metrics, "minilm", "200"), 1);
        assert_eq!(count(&metrics, UNKNOWN_MODEL, "404"), 1);
        assert_eq!(count(&metrics, "nope", "404"), 0, "unknown names do not become labels");
        assert_eq!(count(&metrics, "minilm", "499"), 1);
    }
}
