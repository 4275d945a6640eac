//! The embeddings capability: what happens between a validated request and the model actor.
//!
//! Cached texts are answered before anything is queued; the rest are admitted (429 when the queue is
//! full), tokenized on the calling worker, deduplicated and handed to the model's batcher.

pub mod cache;

use actix::Recipient;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engines::embedder::{EmbedInput, EmbeddingTokenizer};
use crate::error::ApiError;
use crate::telemetry::Metrics;
use cache::EmbeddingCache;
use sis_actors::{Admission, AdmissionError, JobError, Submit};

/// The batcher's message type for embedding jobs.
pub type EmbedSubmit = Submit<EmbedInput, Vec<f32>>;

/// One embedding model as the request path sees it.
pub struct EmbeddingModel {
    id: Arc<str>,
    tokenizer: EmbeddingTokenizer,
    dimensions: usize,
    cache: Option<EmbeddingCache>,
    admission: Admission,
    batcher: Recipient<EmbedSubmit>,
    metrics: Arc<Metrics>,
    fault_marker: Option<String>,
}

/// Vectors for a request, in input order.
pub struct Embedded {
    /// Full-dimension vectors.
    pub vectors: Vec<Arc<[f32]>>,
    /// Tokens of all inputs (after truncation).
    pub prompt_tokens: usize,
}

impl EmbeddingModel {
    /// Wires a model's tokenizer, cache, admission queue and batcher together.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Arc<str>,
        tokenizer: EmbeddingTokenizer,
        dimensions: usize,
        cache_size: usize,
        admission: Admission,
        batcher: Recipient<EmbedSubmit>,
        metrics: Arc<Metrics>,
        fault_marker: Option<String>,
    ) -> Self {
        let cache = (cache_size > 0).then(|| EmbeddingCache::new(cache_size));
        Self { id, tokenizer, dimensions, cache, admission, batcher, metrics, fault_marker }
    }

    /// The model's output dimension.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The admission queue (for health and metrics).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Embeds texts (already validated), using the cache first.
    pub async fn embed(&self, texts: &[String]) -> Result<Embedded, ApiError> {
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
        let model = &*self.id;
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
                    && self.fault_marker.as_deref().is_some_and(|marker| text.contains(marker));
                inputs.push(EmbedInput { ids, fault });
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
        Ok(Embedded { vectors: vectors.into_iter().map(|v| v.expect("every input answered")).collect(), prompt_tokens })
    }

    fn rejected(&self, error: AdmissionError) -> ApiError {
        self.count_overload(ApiError::not_admitted(&self.id, error, Duration::from_secs(1)))
    }

    fn job_failed(&self, error: JobError) -> ApiError {
        self.count_overload(ApiError::job_failed(&self.id, error, Duration::from_secs(1)))
    }

    fn count_overload(&self, error: ApiError) -> ApiError {
        if error.is_overload() {
            self.metrics.embedding_queue_rejections.inc();
        }
        error
    }
}
