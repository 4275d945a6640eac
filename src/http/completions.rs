//! `POST /v1/completions`: OpenAI's legacy text completions, for base models and evaluation tools
//! (lm-evaluation-harness's `local-completions`, LangChain's completion classes).
//!
//! The prompt (a string, a list of them, token ids, or a list of those) is tokenized as given, with no
//! chat template, and each runs as its own sequence through the chat model's actor and continuous
//! batching. `echo` returns the prompt before the completion and, with `logprobs`, its tokens'
//! log-probabilities (`max_tokens: 0` scores a prompt without generating: loglikelihood scoring).

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

use super::body::read_json;
use super::chat::{SamplingFields, StreamOptions};
use crate::chat::{self, ChatChunk, ChatStream, CompletionRequest, RawPrompt};
use crate::engines::chat::TokenLogprob;
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::telemetry::outcome::{Counted, Outcome};

/// OpenAI's default `max_tokens` for this endpoint.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// The body as OpenAI defines it.
#[derive(Deserialize)]
struct CompletionsBody {
    model: String,
    prompt: Value,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    best_of: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    logprobs: Option<i64>,
    #[serde(default)]
    suffix: Option<Value>,
}

/// The handler.
pub async fn create(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    handle(&req, payload, &runtime).await.unwrap_or_else(|e| e.error_response())
}

async fn handle(req: &HttpRequest, payload: web::Payload, runtime: &Runtime) -> Result<HttpResponse, ApiError> {
    let settings = &runtime.settings;
    let body: CompletionsBody = read_json(req, payload, settings.max_request_bytes, settings.body_read_timeout).await?;
    crate::telemetry::request_fields::note_model(&body.model);
    let requests = translate(&body)?;
    let logprobs = body.logprobs.is_some();
    let include_usage = body.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    // One request, however many prompts: its line in `chat_requests_total` is kept here (a 499 if the
    // client goes away before it is recorded).
    let mut outcome = Outcome::start(&runtime.metrics, Counted::Chat, &body.model);
    if let Ok(served) = runtime.model(&body.model) {
        outcome.resolved(&served.settings.id);
    }
    // Every prompt is admitted before any answer is read; one refused refuses the request.
    let started =
        futures_util::future::join_all(requests.into_iter().map(|r| chat::complete_with(runtime, r, None))).await;
    let completions = match started.into_iter().collect::<Result<Vec<ChatStream>, ApiError>>() {
        Ok(completions) => completions,
        Err(error) => {
            outcome.failed(&error);
            return Err(error);
        }
    };
    if body.stream == Some(true) {
        outcome.finish(200);
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .streaming(sse(completions, logprobs, include_usage)));
    }
    let (id, created, model) = {
        let first = &completions[0];
        (first.id.replace("chatcmpl-", "cmpl-"), first.created, first.model.clone())
    };
    let (mut choices, mut prompt_tokens, mut completion_tokens) = (Vec::new(), 0, 0);
    for (index, mut completion) in completions.into_iter().enumerate() {
        let mut text = completion.echo.take().unwrap_or_default();
        let mut tokens: Vec<TokenLogprob> = Vec::new();
        let done = loop {
            match completion.next().await {
                Some(ChatChunk::Delta(delta, t)) => {
                    text.push_str(&delta);
                    tokens.extend(t);
                }
                Some(ChatChunk::Done(done)) => break done,
                Some(ChatChunk::Failed(error)) => {
                    outcome.failed(&error);
                    return Err(error);
                }
                None => {
                    let error = ApiError::Internal("the completion ended without an answer".into());
                    outcome.failed(&error);
                    return Err(error);
                }
            }
        };
        prompt_tokens += done.prompt_tokens;
        completion_tokens += done.completion_tokens;
        choices.push(json!({
            "text": text,
            "index": index,
            "logprobs": if logprobs { super::logprobs::completion(&tokens, 0) } else { Value::Null },
            "finish_reason": done.finish_reason,
        }));
    }
    outcome.finish(200);
    Ok(HttpResponse::Ok().json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    })))
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// The prompts of a body: a string, a list of strings, token ids, or a list of token-id lists.
fn prompts(prompt: &Value) -> Result<Vec<RawPrompt>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "prompt must be a string, a list of strings, or token ids (a list or a list of lists)",
        )
    };
    let tokens = |items: &[Value]| -> Result<Vec<u32>, ApiError> {
        items.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(bad)).collect()
    };
    let list = match prompt {
        Value::String(text) => return Ok(vec![RawPrompt::Text(text.clone())]),
        Value::Array(items) if items.is_empty() => return Err(ApiError::invalid("prompt", "prompt is empty")),
        Value::Array(items) => items,
        _ => return Err(bad()),
    };
    if list.iter().all(Value::is_number) {
        return Ok(vec![RawPrompt::Tokens(tokens(list)?)]);
    }
    list.iter()
        .map(|item| match item {
            Value::String(text) => Ok(RawPrompt::Text(text.clone())),
            Value::Array(ids) if !ids.is_empty() => Ok(RawPrompt::Tokens(tokens(ids)?)),
            _ => Err(bad()),
        })
        .collect()
}

/// Validates the body into one request per prompt.
fn translate(body: &CompletionsBody) -> Result<Vec<CompletionRequest>, ApiError> {
    if body.suffix.as_ref().is_some_and(|s| !s.is_null()) {
        return Err(ApiError::invalid("suffix", "suffix (fill-in-the-middle) is not supported"));
    }
    for (param, value) in [("n", body.n), ("best_of", body.best_of)] {
        if value.is_some_and(|v| v != 1) {
            return Err(ApiError::invalid(param, format!("Only {param}=1 is supported, got {}", value.unwrap_or(1))));
        }
    }
    let logprobs = match body.logprobs {
        None => None,
        Some(k) if (0..=5).contains(&k) => Some(k as usize),
        Some(k) => return Err(ApiError::invalid("logprobs", format!("logprobs must be from 0 to 5, got {k}"))),
    };
    let echo = body.echo == Some(true);
    let max_tokens = match body.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) {
        0 if echo && logprobs.is_some() => 0,
        t if t >= 1 => usize::try_from(t).unwrap_or(usize::MAX),
        t => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens must be at least 1 (0 only with echo and logprobs, to score a prompt), got {t}"),
            ))
        }
    };
    let mut base = CompletionRequest {
        model: body.model.clone(),
        max_tokens: Some(max_tokens),
        stream: body.stream.unwrap_or(false),
        logprobs,
        echo,
        ..CompletionRequest::default()
    };
    body.sampling.apply(&mut base)?;
    Ok(prompts(&body.prompt)?
        .into_iter()
        .map(|prompt| CompletionRequest { prompt: Some(prompt), ..base.clone() })
        .collect())
}

/// The SSE stream: `text_completion` chunks of every prompt as they come (each names its `index`), a
/// finish chunk per prompt, an optional usage chunk, `[DONE]`.
fn sse(
    completions: Vec<ChatStream>,
    logprobs: bool,
    include_usage: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let id = completions[0].id.replace("chatcmpl-", "cmpl-");
    let (created, model) = (completions[0].created, completions[0].model.clone());
    let totals = Arc::new(Mutex::new((0usize, 0usize)));
    let frame = {
        let (id, model) = (id.clone(), model.clone());
        move |index: usize, text: &str, tokens: Option<Value>, finish: Option<&str>| {
            let chunk = json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{ "text": text, "index": index, "logprobs": tokens, "finish_reason": finish }],
            });
            format!("data: {chunk}\n\n")
        }
    };
    let shared = totals.clone();
    let choices = completions.into_iter().enumerate().map(move |(index, mut completion)| {
        let (frame, totals) = (frame.clone(), shared.clone());
        let echo = completion.echo.take();
        // `sent`: characters of the choice's text sent so far, where this chunk's token offsets start.
        futures_util::stream::unfold((completion, echo, false, 0), move |(mut completion, echo, ended, sent)| {
            let (frame, totals) = (frame.clone(), totals.clone());
            async move {
                if ended {
                    return None;
                }
                let out = match completion.next().await? {
                    ChatChunk::Delta(delta, tokens) => {
                        let text = echo.as_deref().unwrap_or_default().to_string() + &delta;
                        let tokens = logprobs.then(|| super::logprobs::completion(&tokens, sent));
                        let sent = sent + text.chars().count();
                        return Some((frame(index, &text, tokens, None), (completion, None, false, sent)));
                    }
                    ChatChunk::Done(done) => {
                        let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                        t.0 += done.prompt_tokens;
                        t.1 += done.completion_tokens;
                        let text = echo.as_deref().unwrap_or_default().to_string();
                        frame(index, &text, None, Some(done.finish_reason))
                    }
                    ChatChunk::Failed(error) => super::error::sse_frame(&error),
                };
                Some((out, (completion, None, true, sent)))
            }
        })
    });
    let tail = futures_util::stream::once(async move {
        let mut out = String::new();
        if include_usage {
            let (prompt, completion) = *totals.lock().unwrap_or_else(|e| e.into_inner());
            let chunk = json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [], "usage": usage(prompt, completion),
            });
            out.push_str(&format!("data: {chunk}\n\n"));
        }
        out + "data: [DONE]\n\n"
    });
    futures_util::stream::select_all(choices.map(|s| s.boxed_local())).chain(tail).map(|s| Ok(Bytes::from(s)))
}
