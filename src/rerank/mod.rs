//! The rerank capability: a query and documents in, the documents ordered by relevance out.
//!
//! [`rerank`] finds the model, checks the request against the model's limits, admits it (429 when the
//! queue is full), tokenizes each (query, document) pair on the calling worker and hands the pairs to
//! the model's batcher: cross-encoders run on the embeddings' engine and batcher, so pairs of many
//! requests share batches. Scores are the model's logit through a sigmoid (a relevance in 0..1, as
//! sentence-transformers' `CrossEncoder`, TEI and vLLM report it), or the raw logit when asked.
//! [`start`] builds a model's actors from its effective settings.

use actix::prelude::*;
use std::path::Path;
use std::time::Duration;

use crate::config::model::EmbeddingModelSettings;
use crate::config::ModelSettings;
use crate::deadline::within;
use crate::embeddings::EmbedSubmit;
use crate::engines::embed::{EmbedInput, EmbedderSpec, EmbeddingTokenizer};
use crate::error::ApiError;
use crate::runtime::{Launch, RequestPath, Runtime};
use crate::telemetry::outcome::{Counted, Outcome};
use crate::telemetry::Metrics;
use sis_actors::{Admission, Submit};
use std::sync::Arc;

/// A rerank request as the API gives it, its JSON shape already checked.
#[derive(Debug, Clone)]
pub struct RerankRequest {
    /// The model id.
    pub model: String,
    /// What the documents are ranked against.
    pub query: String,
    /// The documents.
    pub documents: Vec<String>,
    /// Keep the best `top_n` (all when `None`).
    pub top_n: Option<usize>,
    /// Report logits instead of sigmoid relevances.
    pub raw_scores: bool,
}

/// One ranked document.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// Its position in the request.
    pub index: usize,
    /// Its relevance (or logit).
    pub score: f32,
}

/// The documents of a request, best first.
#[derive(Debug)]
pub struct Ranking {
    /// The served model's id.
    pub model: String,
    /// Best first; ties keep request order.
    pub results: Vec<Ranked>,
    /// Tokens of all pairs (after truncation).
    pub prompt_tokens: usize,
}

/// Ranks a request's documents with the model it names; records `rerank_requests_total` and latency
/// for every outcome of a served model.
pub async fn rerank(runtime: &Runtime, request: RerankRequest) -> Result<Ranking, ApiError> {
    let mut outcome = Outcome::start(&runtime.metrics, Counted::Rerank, &request.model);
    let result = async {
        let served = runtime.model(&request.model)?;
        let id = served.settings.id.clone();
        outcome.resolved(&id);
        match &served.path {
            RequestPath::Rerank(model) => within(model.settings.queue.request_timeout, model.rank(request)).await,
            _ => {
                Err(ApiError::invalid("model", format!("Model `{id}` does not support rerank; serve a cross-encoder")))
            }
        }
    }
    .await;
    outcome.finish_with(&result);
    result
}

/// The only rerank model served, for TEI's `/rerank`, whose requests name none.
pub fn only_model(runtime: &Runtime) -> Result<String, ApiError> {
    let rerankers: Vec<String> = runtime
        .registry
        .all()
        .into_iter()
        .filter(|(_, served)| matches!(served.path, RequestPath::Rerank(_)))
        .map(|(id, _)| id)
        .collect();
    match rerankers.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::invalid("model", "no rerank model is served here")),
        many => {
            Err(ApiError::invalid("model", format!("several rerank models are served ({many:?}); name one in `model`")))
        }
    }
}

/// Builds a rerank model: a cross-encoder on the embeddings' engine actor and batcher.
pub fn start(settings: &ModelSettings, dir: &Path, launch: &mut Launch<'_>) -> anyhow::Result<RerankModel> {
    let limits = settings.embeddings.clone().expect("a rerank model has embedding settings");
    let spec = EmbedderSpec::from_dir(dir, launch.entry, settings.device)?;
    if !spec.cross_encoder {
        anyhow::bail!(
            "{:?} is not a cross-encoder (…ForSequenceClassification); serve it with kind = \"embedding\"",
            spec.config.architectures()
        );
    }
    let (tokenizer, batcher) = crate::embeddings::start_encoder(spec, settings, launch)?;
    Ok(RerankModel {
        settings: settings.clone(),
        limits,
        tokenizer,
        admission: Admission::new(settings.queue.max_queue_size),
        batcher,
        metrics: launch.metrics.clone(),
    })
}

/// One rerank model as the request path sees it.
pub struct RerankModel {
    settings: ModelSettings,
    limits: EmbeddingModelSettings,
    tokenizer: EmbeddingTokenizer,
    admission: Admission,
    batcher: Recipient<EmbedSubmit>,
    metrics: Arc<Metrics>,
}

impl RerankModel {
    /// The admission queue (for health and metrics).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    async fn rank(&self, request: RerankRequest) -> Result<Ranking, ApiError> {
        check(&request, &self.limits)?;
        let permit = self
            .admission
            .try_admit()
            .map_err(|e| self.overloaded(ApiError::not_admitted(&self.settings.id, e, Duration::from_secs(1))))?;
        let mut inputs = Vec::with_capacity(request.documents.len());
        let mut prompt_tokens = 0;
        for (i, document) in request.documents.iter().enumerate() {
            let (ids, segment_b) = self
                .tokenizer
                .encode_pair(&request.query, document)
                .map_err(|e| ApiError::invalid(format!("documents[{i}]"), e))?;
            prompt_tokens += ids.len();
            inputs.push(EmbedInput { ids, segment_b, fault: false });
        }
        let (job, reply) = Submit::new(inputs, Some(permit));
        self.batcher.do_send(job);
        let model = self.settings.id.as_str();
        let output = reply
            .await
            .map_err(|_| ApiError::Internal("the batcher dropped the request".into()))?
            .map_err(|e| self.overloaded(ApiError::job_failed(model, e, Duration::from_secs(1))))?;
        self.metrics.rerank_queue_wait.with_label_values(&[model]).observe(output.queue_wait.as_secs_f64());
        self.metrics.rerank_documents.with_label_values(&[model]).inc_by(request.documents.len() as u64);
        crate::telemetry::request_fields::note_queue_wait(output.queue_wait);
        let logits = output.outputs.into_iter().map(|o| o[0]);
        let scores = logits.map(|l| if request.raw_scores { l } else { 1.0 / (1.0 + (-l).exp()) });
        let mut results: Vec<Ranked> = scores.enumerate().map(|(index, score)| Ranked { index, score }).collect();
        results.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        results.truncate(request.top_n.unwrap_or(usize::MAX));
        Ok(Ranking { model: model.to_string(), results, prompt_tokens })
    }

    fn overloaded(&self, error: ApiError) -> ApiError {
        if error.is_overload() {
            self.metrics.embedding_queue_rejections.inc();
        }
        error
    }
}

/// The model's limits on a request: a query, at least one document, none empty or too long.
fn check(request: &RerankRequest, limits: &EmbeddingModelSettings) -> Result<(), ApiError> {
    let (max_items, max_chars) = (limits.max_inputs, limits.max_text_chars);
    if request.query.is_empty() {
        return Err(ApiError::invalid("query", "query is empty"));
    }
    if request.query.chars().count() > max_chars {
        return Err(ApiError::invalid("query", format!("query has more than the limit of {max_chars} characters")));
    }
    if request.documents.is_empty() {
        return Err(ApiError::invalid("documents", "documents is an empty list; send at least one string"));
    }
    if request.documents.len() > max_items {
        return Err(ApiError::invalid(
            "documents",
            format!("documents has {} items, more than the limit of {max_items} per request", request.documents.len()),
        ));
    }
    for (i, document) in request.documents.iter().enumerate() {
        let chars = document.chars().count();
        if document.is_empty() || chars > max_chars {
            let what = if document.is_empty() {
                "is empty".to_string()
            } else {
                format!("has {chars} characters, more than the limit of {max_chars}")
            };
            return Err(ApiError::invalid(format!("documents[{i}]"), format!("documents[{i}] {what}")));
        }
    }
    if request.top_n == Some(0) {
        return Err(ApiError::invalid("top_n", "top_n must be at least 1"));
    }
    Ok(())
}
