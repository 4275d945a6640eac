//! The embeddings capability: a validated request in, vectors out.
//!
//! [`embed`] finds the model, checks the request against the model's limits, answers cached texts
//! before anything is queued, admits the rest (429 when the queue is full), tokenizes them on the
//! calling worker, deduplicates them and hands them to the model's batcher. It cuts vectors to the
//! requested `dimensions` (normalizing them again when the model normalizes), and records the
//! request's metrics once. [`start`] builds a model's actors from its effective settings.

pub mod cache;

use actix::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::model::EmbeddingModelSettings;
use crate::config::ModelSettings;
use crate::deadline::within;
use crate::engines::embed::{normalize, EmbedInput, EmbedderLoader, EmbedderSpec, EmbeddingTokenizer, Prompts};
use crate::error::ApiError;
use crate::faults::{Faults, FaultyLoader};
use crate::runtime::{Launch, RequestPath, Runtime};
use crate::telemetry::outcome::{Counted, Outcome};
use crate::telemetry::Metrics;
use cache::EmbeddingCache;
use sis_actors::{Admission, AdmissionError, BatchObserver, Batcher, BatcherConfig, JobError, ModelActor, Submit};

/// The batcher's message type for embedding jobs.
pub type EmbedSubmit = Submit<EmbedInput, Vec<f32>>;

/// An embeddings request as the API gives it, its JSON shape already checked.
#[derive(Debug, Clone)]
pub struct EmbeddingsRequest {
    /// The model id.
    pub model: String,
    /// The texts.
    pub input: Input,
    /// Requested output dimensions (cut and normalized again), if any.
    pub dimensions: Option<i64>,
    /// The model's prompt to prefix (`prompt_name` or `input_type`), if the request names one.
    pub prompt: Option<String>,
}

/// `input`: one text, or a list of them (errors then name the index).
#[derive(Debug, Clone)]
pub enum Input {
    /// A single string.
    One(String),
    /// A list of strings.
    Many(Vec<String>),
}

/// Vectors for a request, in input order.
#[derive(Debug)]
pub struct Embeddings {
    /// The served model's id.
    pub model: String,
    /// One vector per input, at the requested dimension.
    pub vectors: Vec<Arc<[f32]>>,
    /// Tokens of all inputs (after truncation).
    pub prompt_tokens: usize,
}

/// Embeds a request's texts with the model it names; records `embedding_requests_total` and latency
/// for every outcome of a served model.
pub async fn embed(runtime: &Runtime, request: EmbeddingsRequest) -> Result<Embeddings, ApiError> {
    let mut outcome = Outcome::start(&runtime.metrics, Counted::Embeddings, &request.model);
    let result = async {
        let served = runtime.model(&request.model)?;
        let id = served.settings.id.clone();
        outcome.resolved(&id);
        match &served.path {
            RequestPath::Embeddings(model) => within(model.settings.queue.request_timeout, model.embed(request)).await,
            _ => Err(ApiError::invalid("model", format!("Model `{id}` does not support embeddings"))),
        }
    }
    .await;
    outcome.finish_with(&result);
    result
}

/// Builds an embedding model: its engine actor, its batcher and the request path in front of them.
pub fn start(settings: &ModelSettings, dir: &Path, launch: &mut Launch<'_>) -> anyhow::Result<EmbeddingModel> {
    let limits = settings.embeddings.clone().expect("an embedding model has embedding settings");
    let spec = EmbedderSpec::from_dir(dir, launch.entry, settings.device)?;
    if spec.cross_encoder {
        anyhow::bail!(
            "{:?} is a cross-encoder: serve it with kind = \"rerank\" (/v1/rerank), not as an embedding model",
            spec.config.architectures()
        );
    }
    let (dimensions, normalizes, prompts) = (spec.dimensions, spec.normalize, spec.prompts.clone());
    let (tokenizer, batcher) = start_encoder(spec, settings, launch)?;
    Ok(EmbeddingModel {
        settings: settings.clone(),
        limits: limits.clone(),
        tokenizer,
        dimensions,
        normalizes,
        prompts,
        cache: (limits.cache_size > 0).then(|| EmbeddingCache::new(limits.cache_size)),
        admission: Admission::new(settings.queue.max_queue_size),
        batcher,
        metrics: launch.metrics.clone(),
    })
}

/// Starts an encoder's engine actor and the batcher in front of it; returns its tokenizer and the
/// batcher. Embeddings and rerank (cross-encoders) share this path.
pub(crate) fn start_encoder(
    spec: EmbedderSpec,
    settings: &ModelSettings,
    launch: &mut Launch<'_>,
) -> anyhow::Result<(EmbeddingTokenizer, Recipient<EmbedSubmit>)> {
    let limits = settings.embeddings.clone().expect("an encoder has embedding settings");
    let tokenizer = spec.tokenizer()?;
    launch.kernels = spec.kernels();
    let engine = ModelActor::start_on(
        &launch.thread(),
        Arc::new(FaultyLoader::new(EmbedderLoader { spec }, Faults::of(launch.entry))),
        launch.status.clone(),
        launch.bus.clone(),
        launch.actor_config(),
    );
    let batcher = Batcher::<EmbedInput, Vec<f32>>::new(
        BatcherConfig {
            window: Duration::from_secs_f64(limits.batch_window_ms / 1000.0),
            max_items: limits.batch_max_size,
            max_tokens: limits.batch_max_tokens,
            max_in_flight: settings.queue.max_concurrent,
            queue_timeout: settings.queue.queue_timeout,
        },
        engine.recipient(),
        Arc::new(BatchMetrics { model: settings.id.clone(), metrics: launch.metrics.clone() }),
    )
    .start();
    Ok((tokenizer, batcher.recipient()))
}

/// Feeds `embedding_batch_size` and `embedding_batch_wait_seconds` from the batcher.
struct BatchMetrics {
    model: String,
    metrics: Arc<Metrics>,
}

impl BatchObserver for BatchMetrics {
    fn batch_dispatched(&self, items: usize, _cost: usize, oldest_wait: Duration) {
        self.metrics.embedding_batch_size.with_label_values(&[&self.model]).observe(items as f64);
        self.metrics.embedding_batch_wait.with_label_values(&[&self.model]).observe(oldest_wait.as_secs_f64());
    }
}

/// One embedding model as the request path sees it.
pub struct EmbeddingModel {
    settings: ModelSettings,
    limits: EmbeddingModelSettings,
    tokenizer: EmbeddingTokenizer,
    dimensions: usize,
    normalizes: bool,
    prompts: Prompts,
    cache: Option<EmbeddingCache>,
    admission: Admission,
    batcher: Recipient<EmbedSubmit>,
    metrics: Arc<Metrics>,
}

impl EmbeddingModel {
    /// The model's output dimension.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The admission queue (for health and metrics).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    async fn embed(&self, request: EmbeddingsRequest) -> Result<Embeddings, ApiError> {
        let (texts, listed) = match request.input {
            Input::One(text) => (vec![text], false),
            Input::Many(texts) => (texts, true),
        };
        check(&texts, listed, &self.limits)?;
        let prefix = self.prompts.prefix(request.prompt.as_deref()).map_err(|e| ApiError::invalid("prompt_name", e))?;
        let texts = match prefix {
            Some(prefix) => texts.into_iter().map(|t| format!("{prefix}{t}")).collect(),
            None => texts,
        };
        let full = self.dimensions;
        let dimensions = match request.dimensions {
            None => full,
            Some(d) if d >= 1 && d as usize <= full => d as usize,
            Some(d) => {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("dimensions must be between 1 and {full}, got {d}"),
                ))
            }
        };
        let (mut vectors, prompt_tokens) = self.vectors(&texts).await?;
        if dimensions < full {
            for vector in &mut vectors {
                let mut cut = vector[..dimensions].to_vec();
                if self.normalizes {
                    normalize(&mut cut);
                }
                *vector = cut.into();
            }
        }
        Ok(Embeddings { model: self.settings.id.clone(), vectors, prompt_tokens })
    }

    /// Full-dimension vectors for validated texts, using the cache first.
    async fn vectors(&self, texts: &[String]) -> Result<(Vec<Arc<[f32]>>, usize), ApiError> {
        let mut vectors: Vec<Option<Arc<[f32]>>> = vec![None; texts.len()];
        let mut prompt_tokens = 0;
        // Unique missing texts, each with the positions that want it.
        let mut missing: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, text) in texts.iter().enumerate() {
            if let Some((vector, tokens)) = self.cache.as_ref().and_then(|c| c.get(text)) {
                vectors[i] = Some(vector);
                prompt_tokens += tokens;
                continue;
            }
            match seen.get(text.as_str()) {
                Some(&slot) => missing[slot].1.push(i),
                None => {
                    seen.insert(text, missing.len());
                    missing.push((text, vec![i]));
                }
            }
        }
        let model = self.settings.id.as_str();
        if self.cache.is_some() {
            let misses = missing.iter().map(|(_, at)| at.len()).sum::<usize>();
            self.metrics.embedding_cache_hits.with_label_values(&[model]).inc_by((texts.len() - misses) as u64);
            self.metrics.embedding_cache_misses.with_label_values(&[model]).inc_by(misses as u64);
        }
        if !missing.is_empty() {
            let permit = self.admission.try_admit().map_err(|e| self.rejected(e))?;
            let mut inputs = Vec::with_capacity(missing.len());
            for (text, at) in &missing {
                let ids = self.tokenizer.encode(text).map_err(|e| ApiError::invalid(format!("input[{}]", at[0]), e))?;
                prompt_tokens += ids.len() * at.len();
                let fault = cfg!(feature = "fault-injection")
                    && self.settings.fault_marker.as_deref().is_some_and(|marker| text.contains(marker));
                inputs.push(EmbedInput::text(ids, fault));
            }
            let token_counts: Vec<usize> = inputs.iter().map(|i| i.ids.len()).collect();
            let (job, reply) = Submit::new(inputs, Some(permit));
            self.batcher.do_send(job);
            let output = reply
                .await
                .map_err(|_| ApiError::Internal("the batcher dropped the request".into()))?
                .map_err(|e| self.job_failed(e))?;
            self.metrics.embedding_queue_wait.with_label_values(&[model]).observe(output.queue_wait.as_secs_f64());
            crate::telemetry::request_fields::note_queue_wait(output.queue_wait);
            for (((text, at), vector), tokens) in missing.iter().zip(output.outputs).zip(token_counts) {
                let vector: Arc<[f32]> = vector.into();
                if let Some(cache) = &self.cache {
                    cache.put(text, vector.clone(), tokens);
                }
                for &i in at {
                    vectors[i] = Some(vector.clone());
                }
            }
        }
        self.metrics.embedding_tokens.with_label_values(&[model]).inc_by(prompt_tokens as u64);
        Ok((vectors.into_iter().map(|v| v.expect("every input answered")).collect(), prompt_tokens))
    }

    fn rejected(&self, error: AdmissionError) -> ApiError {
        self.count_overload(ApiError::not_admitted(&self.settings.id, error, Duration::from_secs(1)))
    }

    fn job_failed(&self, error: JobError) -> ApiError {
        self.count_overload(ApiError::job_failed(&self.settings.id, error, Duration::from_secs(1)))
    }

    fn count_overload(&self, error: ApiError) -> ApiError {
        if error.is_overload() {
            self.metrics.embedding_queue_rejections.inc();
        }
        error
    }
}

/// The model's limits on a request: how many texts, none empty, none too long.
fn check(texts: &[String], listed: bool, limits: &EmbeddingModelSettings) -> Result<(), ApiError> {
    let (max_items, max_chars) = (limits.max_inputs, limits.max_text_chars);
    if texts.is_empty() {
        return Err(ApiError::invalid("input", "input is an empty list; send at least one string"));
    }
    if texts.len() > max_items {
        return Err(ApiError::invalid(
            "input",
            format!("input has {} items, more than the limit of {max_items} per request", texts.len()),
        ));
    }
    for (i, text) in texts.iter().enumerate() {
        let param = if listed { format!("input[{i}]") } else { "input".to_string() };
        if text.is_empty() {
            return Err(ApiError::invalid(
                param.clone(),
                format!("{param} is empty; every input must be a non-empty string"),
            ));
        }
        let chars = text.chars().count();
        if chars > max_chars {
            return Err(ApiError::invalid(
                param.clone(),
                format!("{param} has {chars} characters, more than the limit of {max_chars}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_input() {
        let limits = EmbeddingModelSettings {
            batch_window_ms: 5.0,
            batch_max_size: 8,
            batch_max_tokens: 100,
            cache_size: 0,
            max_inputs: 2,
            max_text_chars: 5,
        };
        let texts = |items: &[&str]| items.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let err = |items: &[&str], listed| check(&texts(items), listed, &limits).unwrap_err().to_string();
        assert!(check(&texts(&["a", "b"]), true, &limits).is_ok());
        assert!(err(&[], true).contains("empty list"));
        assert!(err(&["a", ""], true).contains("input[1] is empty"));
        assert!(err(&["a", "b", "c"], true).contains("3 items"));
        assert!(err(&["a", "toolong"], true).contains("input[1] has 7 characters"));
        assert!(err(&["toolong"], false).starts_with("input has 7 characters"));
    }
}
