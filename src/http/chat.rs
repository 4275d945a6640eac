//! `POST /v1/chat/completions`, streaming (SSE) and not.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{parse, read_value};
use super::forward::respond;
use crate::chat::{
    self, ChatChunk, ChatStream, CompletionRequest, Content, Detail, Finished, ImageRef, Message, Part, ResponseFormat,
};
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::upstream::Endpoint;

/// The body as OpenAI defines it.
#[derive(Deserialize)]
struct ChatCompletionRequest {
    model: String,
    messages: Value,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<i64>,
}

/// The sampling fields chat and completions share.
#[derive(Deserialize)]
pub(super) struct SamplingFields {
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
}

impl SamplingFields {
    /// Checks the fields' ranges into `request`.
    pub(super) fn apply(&self, request: &mut CompletionRequest) -> Result<(), ApiError> {
        request.temperature = number(self.temperature, "temperature", 0.0, 2.0)?;
        request.top_p = number(self.top_p, "top_p", 0.0, 1.0)?.map(|p| if p == 0.0 { f32::MIN_POSITIVE } else { p });
        request.seed = self.seed.map(|s| s as u64);
        request.stop = stop_list(&self.stop)?;
        request.presence_penalty = number(self.presence_penalty, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0);
        request.frequency_penalty = number(self.frequency_penalty, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0);
        Ok(())
    }
}

/// `stream_options` (chat and completions).
#[derive(Deserialize, Default)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: Option<bool>,
}

/// The handler: translates the body into a [`CompletionRequest`], and the completion into OpenAI's
/// `chat.completion` object or its server-sent event stream.
pub async fn create(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    handle(&req, payload, &runtime).await.unwrap_or_else(|e| e.error_response())
}

async fn handle(req: &HttpRequest, payload: web::Payload, runtime: &Runtime) -> Result<HttpResponse, ApiError> {
    let settings = &runtime.settings;
    let body = read_value(req, payload, settings.max_request_bytes, settings.body_read_timeout).await?;
    if let Some(forwarded) = crate::upstream::forward(runtime, Endpoint::Chat, &body).await {
        return Ok(respond(forwarded?));
    }
    let body: ChatCompletionRequest = parse(body)?;
    crate::telemetry::request_fields::note_model(&body.model);
    let include_usage = body.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    let request = translate(&body)?;
    let stream = request.stream;
    let mut completion = chat::complete(runtime, request).await?;
    if stream {
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .streaming(sse(completion, include_usage, body.logprobs == Some(true))));
    }
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let wants_logprobs = body.logprobs == Some(true);
    loop {
        match completion.next().await {
            Some(ChatChunk::Delta(delta, tokens)) => {
                text.push_str(&delta);
                logprobs.extend(tokens);
            }
            Some(ChatChunk::Done(done)) => {
                return Ok(HttpResponse::Ok().json(json!({
                    "id": completion.id,
                    "object": "chat.completion",
                    "created": completion.created,
                    "model": completion.model,
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "logprobs": if wants_logprobs { super::logprobs::chat(&logprobs) } else { Value::Null },
                        "finish_reason": done.finish_reason,
                    }],
                    "usage": usage(&done),
                })))
            }
            Some(ChatChunk::Failed(error)) => return Err(error),
            None => return Err(ApiError::Internal("the completion ended without an answer".into())),
        }
    }
}

fn number(value: Option<f64>, param: &str, min: f64, max: f64) -> Result<Option<f32>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v >= min && v <= max => Ok(Some(v as f32)),
        Some(v) => Err(ApiError::invalid(param, format!("{param} must be between {min} and {max}, got {v}"))),
    }
}

/// Validates the body's fields into a [`CompletionRequest`] (shapes and ranges; the model's own
/// limits are the capability's to apply).
fn translate(request: &ChatCompletionRequest) -> Result<CompletionRequest, ApiError> {
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
    let response_format = match &request.response_format {
        None | Some(Value::Null) => ResponseFormat::Text,
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => ResponseFormat::Text,
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => ResponseFormat::JsonSchema(
                format
                    .pointer("/json_schema/schema")
                    .ok_or_else(|| {
                        ApiError::invalid("response_format", "response_format json_schema needs json_schema.schema")
                    })?
                    .clone(),
            ),
            _ => {
                return Err(ApiError::invalid(
                    "response_format",
                    "response_format.type must be text, json_object or json_schema",
                ))
            }
        },
    };
    let logprobs = match (request.logprobs, request.top_logprobs) {
        (Some(true), None) => Some(0),
        (Some(true), Some(top)) if (0..=20).contains(&top) => Some(top as usize),
        (Some(true), Some(top)) => {
            return Err(ApiError::invalid("top_logprobs", format!("top_logprobs must be from 0 to 20, got {top}")))
        }
        (_, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
        _ => None,
    };
    let mut images = Vec::new();
    let messages = messages(&request.messages, &mut images)?;
    let mut translated = CompletionRequest {
        model: request.model.clone(),
        messages,
        images,
        max_tokens,
        response_format,
        stream: request.stream.unwrap_or(false),
        logprobs,
        ..CompletionRequest::default()
    };
    request.sampling.apply(&mut translated)?;
    Ok(translated)
}

/// `stop`: a string or a list of up to 4.
fn stop_list(stop: &Option<Value>) -> Result<Vec<String>, ApiError> {
    Ok(match stop {
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
    })
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

/// Validates `messages`. Text parts of a message are joined; each image part becomes a
/// [`Part::Image`] in the message and an [`ImageRef`] in `images` (whether the model takes images is
/// the capability's to say).
fn messages(value: &Value, images: &mut Vec<ImageRef>) -> Result<Vec<Message>, ApiError> {
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
                                let (url, detail) = image_url(part, &part_param)?;
                                images.push(ImageRef { param: part_param, url, detail });
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
            Ok(Message { role: role.to_string(), content })
        })
        .collect()
}

fn usage(done: &Finished) -> Value {
    let (prompt, completion) = (done.prompt_tokens, done.completion_tokens);
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// The SSE stream: a role chunk, content chunks, a finish chunk, an optional usage chunk, `[DONE]`.
/// A completion that fails after the 200 was sent ends with its error object as one frame.
fn sse(
    completion: ChatStream,
    include_usage: bool,
    wants_logprobs: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let chunk = move |completion: &ChatStream, delta: Value, finish: Option<&str>| {
        let mut c = json!({
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": finish }],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let frame = |v: &Value| format!("data: {v}\n\n");
    let first = frame(&chunk(&completion, json!({ "role": "assistant", "content": "" }), None));
    futures_util::stream::unfold((completion, Some(first)), move |(mut completion, first)| async move {
        if let Some(first) = first {
            return Some((Ok(Bytes::from(first)), (completion, None)));
        }
        let out = match completion.next().await? {
            ChatChunk::Delta(text, tokens) => {
                let mut c = chunk(&completion, json!({ "content": text }), None);
                if wants_logprobs {
                    c["choices"][0]["logprobs"] = super::logprobs::chat(&tokens);
                }
                frame(&c)
            }
            ChatChunk::Done(done) => {
                let mut out = frame(&chunk(&completion, json!({}), Some(done.finish_reason)));
                if include_usage {
                    let mut last = chunk(&completion, json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage(&done);
                    out.push_str(&frame(&last));
                }
                out + "data: [DONE]\n\n"
            }
            ChatChunk::Failed(error) => super::error::sse_frame(&error) + "data: [DONE]\n\n",
        };
        Some((Ok(Bytes::from(out)), (completion, None)))
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
        /// Any chat body is translated into a request or refused with a 4xx, never a panic.
        #[test]
        fn any_chat_body_is_accepted_or_refused_with_a_4xx(
            mut body in crate::arbitrary::object_with(KEYS),
            messages in prop::collection::vec(message(), 0..4),
        ) {
            if let Value::Object(map) = &mut body {
                map.entry("messages").or_insert(Value::Array(messages));
            }
            if let Ok(request) = serde_json::from_value::<ChatCompletionRequest>(body) {
                if let Err(e) = translate(&request) {
                    prop_assert!(e.status_code().is_client_error(), "{e}");
                }
            }
        }
    }
}
