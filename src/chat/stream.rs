//! A running chat completion as a stream of chunks: text deltas, then how it ended.
//!
//! The stream turns the sequence actor's events into [`ChatChunk`]s and records the request's metrics
//! as it goes (time to first token, inter-token latency, and on the last chunk the request's outcome,
//! latency and token counts), so the HTTP layer only frames chunks. Dropping the stream cancels the
//! sequence: the actor frees its place in the batch at the next step.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engines::chat::{ChatEvent, TokenLogprob};
use crate::error::ApiError;
use crate::runtime::{RequestPath, ServedModel};
use crate::telemetry::outcome::Outcome;
use crate::telemetry::Metrics;
use sis_actors::SequenceMessage;

/// One step of a completion.
#[derive(Debug)]
pub enum ChatChunk {
    /// New text, and the log-probabilities of the tokens behind it when the request asked (the text
    /// of a token may come in a later chunk, held back for a stop string or a split character).
    Delta(String, Vec<TokenLogprob>),
    /// The completion finished.
    Done(Finished),
    /// The completion failed after it started.
    Failed(ApiError),
}

/// How a completion finished.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// A started completion (see the module docs).
pub struct ChatStream {
    /// `chatcmpl-…`.
    pub id: String,
    /// Unix time it started.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    events: UnboundedReceiver<SequenceMessage<ChatEvent>>,
    /// Keeps the model (and its actors' threads) alive while the stream runs, even across a reload.
    served: Arc<ServedModel>,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Its line in `chat_requests_total`: recorded when it ends, or as 499 when dropped before.
    outcome: Option<Outcome>,
    last_token: Option<Instant>,
    /// Where the whole completion must be done by (non-streaming requests).
    deadline: Option<(tokio::time::Instant, Duration)>,
    pending: Option<ChatChunk>,
    ended: bool,
    /// `echo`: the prompt's text, sent before the completion's.
    pub echo: Option<String>,
}

impl ChatStream {
    pub(super) fn new(
        served: Arc<ServedModel>,
        events: UnboundedReceiver<SequenceMessage<ChatEvent>>,
        prompt_tokens: usize,
        metrics: Arc<Metrics>,
        outcome: Option<Outcome>,
        limit: Option<Duration>,
    ) -> Self {
        let started = outcome.as_ref().map_or_else(Instant::now, Outcome::started);
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let deadline = limit.map(|l| (tokio::time::Instant::from_std(started) + l, l));
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created,
            model: served.settings.id.clone(),
            prompt_tokens,
            events,
            served,
            metrics,
            started,
            outcome,
            last_token: None,
            deadline,
            pending: None,
            ended: false,
            echo: None,
        }
    }

    /// The next chunk; `None` after [`ChatChunk::Done`] or [`ChatChunk::Failed`].
    pub async fn next(&mut self) -> Option<ChatChunk> {
        if let Some(chunk) = self.pending.take() {
            return Some(chunk);
        }
        if self.ended {
            return None;
        }
        loop {
            let event = match self.deadline {
                None => self.events.recv().await,
                Some((at, limit)) => match tokio::time::timeout_at(at, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => return Some(self.fail(ApiError::Timeout(limit))),
                },
            };
            match event {
                Some(SequenceMessage::Event(ChatEvent { text, finish, completion_tokens, logprobs })) => {
                    self.token();
                    let Some(finish) = finish else {
                        if text.is_empty() && logprobs.is_empty() {
                            continue;
                        }
                        return Some(ChatChunk::Delta(text, logprobs));
                    };
                    let done = ChatChunk::Done(self.finish(finish.as_str(), completion_tokens));
                    if text.is_empty() && logprobs.is_empty() {
                        return Some(done);
                    }
                    self.pending = Some(done);
                    return Some(ChatChunk::Delta(text, logprobs));
                }
                Some(SequenceMessage::Admitted(_)) => continue,
                Some(SequenceMessage::Failed(e)) => {
                    let error = match &self.served.path {
                        RequestPath::Chat(model) => model.failure(e),
                        _ => ApiError::job_failed(&self.model, e, Duration::from_secs(1)),
                    };
                    return Some(self.fail(error));
                }
                None => return Some(self.fail(ApiError::Internal("the model dropped the request".into()))),
            }
        }
    }

    fn token(&mut self) {
        let now = Instant::now();
        let model = [self.model.as_str()];
        match self.last_token {
            None => self.metrics.chat_ttft.with_label_values(&model).observe((now - self.started).as_secs_f64()),
            Some(prev) => self.metrics.chat_inter_token.with_label_values(&model).observe((now - prev).as_secs_f64()),
        }
        self.last_token = Some(now);
    }

    fn finish(&mut self, finish_reason: &'static str, completion_tokens: usize) -> Finished {
        self.ended = true;
        let m = &self.metrics;
        let model = [self.model.as_str()];
        if let Some(outcome) = self.outcome.take() {
            outcome.finish(200);
        }
        m.chat_tokens.with_label_values(&model).inc_by(completion_tokens as u64);
        m.chat_prompt_tokens.with_label_values(&model).inc_by(self.prompt_tokens as u64);
        Finished { finish_reason, prompt_tokens: self.prompt_tokens, completion_tokens }
    }

    fn fail(&mut self, error: ApiError) -> ChatChunk {
        self.ended = true;
        if let Some(outcome) = self.outcome.take() {
            outcome.finish(error.status());
        }
        ChatChunk::Failed(error)
    }
}
