//! `POST /v1/chat/completions`, streaming (SSE) and not.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

use super::body::read_json;
use crate::chat::{ChatModel, ChatParams};
use crate::engines::chat::ChatEvent;
use crate::engines::chat_template::{Content, Part, TemplateMessage};
use crate::engines::json_constraint::Schema;
use crate::error::ApiError;
use crate::runtime::{Capability, Runtime};
use crate::telemetry::Metrics;
use crate::vision::Detail;
use sis_actors::SequenceMessage;

#[derive(Deserialize)]
struct ChatCompletionRequest {
    model: String,
    messages: Value,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The handler; records `chat_requests_total` for every outcome.
pub async fn create(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    let started = Instant::now();
    let (model, result) = handle(&req, payload, &runtime, started).await;
    let response = result.unwrap_or_else(|e| e.error_response());
    if let Some(model) = model {
        let m = &runtime.metrics;
        m.chat_requests.with_label_values(&[&model, response.status().as_str()]).inc();
        if !response.status().is_success() {
            m.chat_latency.with_label_values(&[&model]).observe(started.elapsed().as_secs_f64());
        }
    }
    response
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    runtime: &Runtime,
    started: Instant,
) -> (Option<String>, Result<HttpResponse, ApiError>) {
    let request: ChatCompletionRequest =
        match read_json(req, payload, runtime.settings.max_request_bytes, runtime.settings.body_read_timeout).await {
            Ok(r) => r,
            Err(e) => return (None, Err(e)),
        };
    let Some(served) = runtime.registry.get(&request.model) else {
        return (None, Err(ApiError::ModelNotFound(request.model)));
    };
    let id = served.entry.id.clone();
    crate::telemetry::request_fields::note_model(&id);
    let Capability::Chat(model) = &served.capability else {
        return (
            Some(id.clone()),
            Err(ApiError::invalid("model", format!("Model `{id}` does not support chat completions"))),
        );
    };
    let limit = runtime.settings.chat.request_timeout;
    let result = super::deadline::within(limit, complete(request, model, &id, runtime.metrics.clone(), started)).await;
    (Some(id), result)
}

fn number(value: Option<f64>, param: &str, min: f64, max: f64) -> Result<Option<f32>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v >= min && v <= max => Ok(Some(v as f32)),
        Some(v) => Err(ApiError::invalid(param, format!("{param} must be between {min} and {max}, got {v}"))),
    }
}

/// An image part still to load: where it sits in the request (for errors) and its URL.
struct ImagePart {
    param: String,
    url: String,
    detail: Detail,
}

/// Validates the request into generation parameters (without images) and the image parts to load.
fn params(
    request: &ChatCompletionRequest,
    model_id: &str,
    vision: bool,
) -> Result<(ChatParams, bool, bool, Vec<ImagePart>), ApiError> {
    if let Some(n) = request.n {
        if n != 1 {
            return Err(ApiError::invalid("n", format!("Only n=1 is supported, got {n}")));
        }
    }
    let max_tokens = match request.max_completion_tokens.or(request.max_tokens) {
        None => None,
        Some(t) if t >= 1 => Some(usize::try_from(t).unwrap_or(usize::MAX)),
        Some(t) => return Err(ApiError::invalid("max_tokens", format!("max_tokens must be at least 1, got {t}"))),
    };
    let json = match &request.response_format {
        None | Some(Value::Null) => None,
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(Schema::Object(None)),
            Some("json_schema") => {
                let schema = format.pointer("/json_schema/schema").ok_or_else(|| {
                    ApiError::invalid("response_format", "response_format json_schema needs json_schema.schema")
                })?;
                Some(Schema::compile(schema).map_err(|e| {
                    ApiError::invalid("response_format", format!("response_format.json_schema.schema: {e}"))
                })?)
            }
            _ => {
                return Err(ApiError::invalid(
                    "response_format",
                    "response_format.type must be text, json_object or json_schema",
                ))
            }
        },
    };
    let stop = match &request.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid("stop", "stop must be a string or a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("stop", "stop must be a string or a list of up to 4 strings")),
    };
    let mut images = Vec::new();
    let messages = messages(&request.messages, model_id, vision.then_some(&mut images))?;
    let seed = request.seed.map(|s| s as u64);
    let params = ChatParams {
        messages,
        max_tokens,
        temperature: number(request.temperature, "temperature", 0.0, 2.0)?,
        top_p: number(request.top_p, "top_p", 0.0, 1.0)?.map(|p| if p == 0.0 { f32::MIN_POSITIVE } else { p }),
        seed,
        stop,
        json,
        presence_penalty: number(request.presence_penalty, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: number(request.frequency_penalty, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        images: Vec::new(),
    };
    let stream = request.stream.unwrap_or(false);
    let usage = request.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok((params, stream, usage, images))
}

/// The URL and detail of an `image_url` part: `{"url": …, "detail": …}` (or a bare URL string, as
/// older clients send).
fn image_url(part: &Value, param: &str) -> Result<(String, Detail), ApiError> {
    let value = part.get("image_url");
    let url = match value {
        Some(Value::String(url)) => Some(url.as_str()),
        Some(v) => v.get("url").and_then(Value::as_str),
        None => None,
    };
    let detail = match value.and_then(|v| v.get("detail")) {
        None | Some(Value::Null) => Detail::Auto,
        Some(d) => match d.as_str() {
            Some("auto") => Detail::Auto,
            Some("low") => Detail::Low,
            Some("high") => Detail::High,
            _ => {
                return Err(ApiError::invalid(format!("{param}.image_url.detail"), "detail must be auto, low or high"))
            }
        },
    };
    let url = url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::invalid(format!("{param}.image_url"), "an image_url part needs image_url.url"))?;
    Ok((url.to_string(), detail))
}

/// Validates `messages` into template messages. Text parts of a message are joined; image parts
/// become template parts when `images` collects them (vision models), and are refused otherwise.
fn messages(
    value: &Value,
    model_id: &str,
    mut images: Option<&mut Vec<ImagePart>>,
) -> Result<Vec<TemplateMessage>, ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::invalid("messages", "messages must be a list of message objects"));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid(&param, format!("{param} needs a string role")))?;
            let role = match role {
                "system" | "developer" => "system",
                "user" | "assistant" => role,
                other => {
                    return Err(ApiError::invalid(
                        format!("{param}.role"),
                        format!("{param}.role {other:?} is not supported (system, user, assistant)"),
                    ))
                }
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => Content::Text(s.clone()),
                Some(Value::Null) | None if role == "assistant" => Content::Text(String::new()),
                Some(Value::Array(parts)) => {
                    let mut out: Vec<Part> = Vec::new();
                    for (j, part) in parts.iter().enumerate() {
                        let part_param = format!("{param}.content[{j}]");
                        match part.get("type").and_then(Value::as_str) {
                            Some("text") => {
                                let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                                    ApiError::invalid(&part_param, "a text part needs a string `text`")
                                })?;
                                match out.last_mut() {
                                    Some(Part::Text { text: last }) => last.push_str(text),
                                    _ => out.push(Part::Text { text: text.to_string() }),
                                }
                            }
                            Some("image_url") => {
                                let Some(images) = images.as_deref_mut() else {
                                    return Err(ApiError::invalid(
                                        part_param,
                                        format!(
                                    "Model `{model_id}` does not accept images; send text only or use a vision model"
                                ),
                                    ));
                                };
                                let (url, detail) = image_url(part, &part_param)?;
                                images.push(ImagePart { param: part_param, url, detail });
                                out.push(Part::Image);
                            }
                            _ => {
                                return Err(ApiError::invalid(
                                    format!("{param}.content[{j}]"),
                                    "content parts must have type text or image_url",
                                ))
                            }
                        }
                    }
                    match out.as_slice() {
                        [] => Content::Text(String::new()),
                        [Part::Text { text }] => Content::Text(text.clone()),
                        _ => Content::Parts(out),
                    }
                }
                _ => {
                    return Err(ApiError::invalid(
                        format!("{param}.content"),
                        format!("{param}.content must be a string or a list of parts"),
                    ))
                }
            };
            Ok(TemplateMessage { role: role.to_string(), content })
        })
        .collect()
}

struct Tracker {
    metrics: Arc<Metrics>,
    model: String,
    started: Instant,
    last: Option<Instant>,
}

impl Tracker {
    fn token(&mut self) {
        let now = Instant::now();
        match self.last {
            None => {
                self.metrics.chat_ttft.with_label_values(&[&self.model]).observe((now - self.started).as_secs_f64())
            }
            Some(prev) => {
                self.metrics.chat_inter_token.with_label_values(&[&self.model]).observe((now - prev).as_secs_f64())
            }
        }
        self.last = Some(now);
    }

    fn done(&self, completion_tokens: usize, prompt_tokens: usize) {
        let m = &self.metrics;
        m.chat_latency.with_label_values(&[&self.model]).observe(self.started.elapsed().as_secs_f64());
        m.chat_tokens.with_label_values(&[&self.model]).inc_by(completion_tokens as u64);
        m.chat_prompt_tokens.with_label_values(&[&self.model]).inc_by(prompt_tokens as u64);
    }
}

async fn complete(
    request: ChatCompletionRequest,
    model: &ChatModel,
    model_id: &str,
    metrics: Arc<Metrics>,
    started: Instant,
) -> Result<HttpResponse, ApiError> {
    let (mut params, stream, include_usage, images) = params(&request, model_id, model.vision().is_some())?;
    if let Some(vision) = model.vision() {
        let loads = images.iter().map(|part| vision.load(&part.url, part.detail));
        let loaded = futures_util::future::join_all(loads).await;
        let mut refused = None;
        for (part, result) in images.into_iter().zip(loaded) {
            match result {
                Ok(image) => params.images.push(image),
                Err(rejection) => {
                    metrics.image_rejections.with_label_values(&[rejection.reason]).inc();
                    refused.get_or_insert((part.param, rejection));
                }
            }
        }
        if let Some((param, rejection)) = refused {
            return Err(ApiError::invalid(
                param,
                format!("image refused ({}): {}", rejection.reason, rejection.message),
            ));
        }
    }
    let mut run = model.start(params)?;
    // Wait until the sequence joins the batch, so queue refusals still get their HTTP status.
    match run.events.recv().await {
        Some(SequenceMessage::Admitted(wait)) => {
            metrics.chat_queue_wait.with_label_values(&[model_id]).observe(wait.as_secs_f64());
            crate::telemetry::request_fields::note_queue_wait(wait);
            metrics.chat_batch_wait.with_label_values(&[model_id]).observe(wait.as_secs_f64());
        }
        Some(SequenceMessage::Failed(e)) => return Err(model.failure(e)),
        Some(SequenceMessage::Event(_)) | None => {
            return Err(ApiError::Internal("the model dropped the request".into()))
        }
    }
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let tracker = Tracker { metrics, model: model_id.to_string(), started, last: None };
    if stream {
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .streaming(sse(run.events, tracker, id, created, model_id.to_string(), run.prompt_tokens, include_usage)));
    }
    let mut tracker = tracker;
    let mut text = String::new();
    loop {
        match run.events.recv().await {
            Some(SequenceMessage::Event(ChatEvent { text: delta, finish, completion_tokens })) => {
                tracker.token();
                text.push_str(&delta);
                if let Some(finish) = finish {
                    tracker.done(completion_tokens, run.prompt_tokens);
                    return Ok(HttpResponse::Ok().json(json!({
                        "id": id,
                        "object": "chat.completion",
                        "created": created,
                        "model": model_id,
                        "choices": [{
                            "index": 0,
                            "message": { "role": "assistant", "content": text },
                            "logprobs": null,
                            "finish_reason": finish.as_str(),
                        }],
                        "usage": usage(run.prompt_tokens, completion_tokens),
                    })));
                }
            }
            Some(SequenceMessage::Failed(e)) => return Err(model.failure(e)),
            Some(SequenceMessage::Admitted(_)) => {}
            None => return Err(ApiError::Internal("the model dropped the request".into())),
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// The SSE stream: a role chunk, content chunks, a finish chunk, an optional usage chunk, `[DONE]`.
fn sse(
    events: UnboundedReceiver<SequenceMessage<ChatEvent>>,
    tracker: Tracker,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    include_usage: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let chunk = move |delta: Value, finish: Option<&str>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let frame = |v: &Value| Bytes::from(format!("data: {v}\n\n"));
    let first = frame(&chunk(json!({ "role": "assistant", "content": "" }), None));
    let state = (events, tracker, chunk, Some(first), false);
    futures_util::stream::unfold(state, move |(mut events, mut tracker, chunk, pending, finished)| async move {
        if let Some(bytes) = pending {
            return Some((Ok(bytes), (events, tracker, chunk, None, finished)));
        }
        if finished {
            return None;
        }
        let frame = |v: &Value| Bytes::from(format!("data: {v}\n\n"));
        loop {
            match events.recv().await {
                Some(SequenceMessage::Event(ChatEvent { text, finish, completion_tokens })) => {
                    tracker.token();
                    let Some(finish) = finish else {
                        if text.is_empty() {
                            continue;
                        }
                        let out = frame(&chunk(json!({ "content": text }), None));
                        return Some((Ok(out), (events, tracker, chunk, None, false)));
                    };
                    tracker.done(completion_tokens, prompt_tokens);
                    let mut out = String::new();
                    if !text.is_empty() {
                        out.push_str(&format!("data: {}\n\n", chunk(json!({ "content": text }), None)));
                    }
                    out.push_str(&format!("data: {}\n\n", chunk(json!({}), Some(finish.as_str()))));
                    if include_usage {
                        let mut last = chunk(json!({}), None);
                        last["choices"] = json!([]);
                        last["usage"] = usage(prompt_tokens, completion_tokens);
                        out.push_str(&format!("data: {last}\n\n"));
                    }
                    out.push_str("data: [DONE]\n\n");
                    return Some((Ok(Bytes::from(out)), (events, tracker, chunk, None, true)));
                }
                Some(SequenceMessage::Admitted(_)) => continue,
                Some(SequenceMessage::Failed(e)) => {
                    let error = json!({ "error": { "message": e.to_string(), "type": "server_error", "param": null, "code": "generation_failed" } });
                    let out = Bytes::from(format!("data: {error}\n\ndata: [DONE]\n\n"));
                    return Some((Ok(out), (events, tracker, chunk, None, true)));
                }
                None => return None,
            }
        }
    })
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "n",
        "response_format",
        "presence_penalty",
        "frequency_penalty",
    ];

    fn message() -> impl Strategy<Value = Value> {
        crate::arbitrary::object_with(&["role", "content"])
    }

    proptest! {
        /// Any chat body is turned into generation parameters or refused with a 4xx, never a panic,
        /// for text models and for vision models alike.
        #[test]
        fn any_chat_body_is_accepted_or_refused_with_a_4xx(
            mut body in crate::arbitrary::object_with(KEYS),
            messages in prop::collection::vec(message(), 0..4),
            vision in any::<bool>(),
        ) {
            if let Value::Object(map) = &mut body {
                map.entry("messages").or_insert(Value::Array(messages));
            }
            if let Ok(request) = serde_json::from_value::<ChatCompletionRequest>(body) {
                if let Err(e) = params(&request, "m", vision) {
                    prop_assert!(e.status_code().is_client_error(), "{e}");
                }
            }
        }
    }
}
