//! `POST /v1/embeddings`.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

use super::body::read_json;
use crate::engines::embedder::normalize;
use crate::error::ApiError;
use crate::runtime::{Capability, Runtime};

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Serialize)]
struct EmbeddingsResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingData<'a>>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingData<'a> {
    object: &'static str,
    index: usize,
    embedding: Encoded<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Encoded<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// The handler: records `embedding_requests_total` and latency for every outcome.
pub async fn create(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    let started = Instant::now();
    let (model, result) = handle(&req, payload, &runtime).await;
    let response = result.unwrap_or_else(|e| e.error_response());
    if let Some(model) = model {
        let m = &runtime.metrics;
        m.embedding_requests.with_label_values(&[&model, response.status().as_str()]).inc();
        m.embedding_latency.with_label_values(&[&model]).observe(started.elapsed().as_secs_f64());
    }
    response
}

/// Returns the served model id (for metrics) and the response.
async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    runtime: &Runtime,
) -> (Option<String>, Result<HttpResponse, ApiError>) {
    let request: EmbeddingsRequest =
        match read_json(req, payload, runtime.settings.max_request_bytes, runtime.settings.body_read_timeout).await {
            Ok(r) => r,
            Err(e) => return (None, Err(e)),
        };
    let Some(served) = runtime.registry.get(&request.model) else {
        return (None, Err(ApiError::ModelNotFound(request.model)));
    };
    crate::telemetry::request_fields::note_model(&served.entry.id);
    let limit = runtime.settings.embeddings.request_timeout;
    let result = super::deadline::within(limit, embed(request, &served, runtime)).await;
    (Some(served.entry.id.clone()), result)
}

async fn embed(
    request: EmbeddingsRequest,
    served: &Arc<crate::runtime::ServedModel>,
    runtime: &Runtime,
) -> Result<HttpResponse, ApiError> {
    let Capability::Embeddings(model) = &served.capability else {
        let id = &served.entry.id;
        return Err(ApiError::invalid("model", format!("Model `{id}` does not support embeddings")));
    };
    let limits = &runtime.settings.embeddings;
    let texts = texts_of(request.input, limits.max_batch_size, limits.max_text_chars)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\", got {other:?}"),
            ))
        }
    };
    let full = model.dimensions();
    let dimensions = match request.dimensions {
        None => None,
        Some(d) if d >= 1 && d as usize <= full => Some(d as usize),
        Some(d) => {
            return Err(ApiError::invalid("dimensions", format!("dimensions must be between 1 and {full}, got {d}")))
        }
    };

    let embedded = model.embed(&texts).await?;

    let truncated: Vec<Vec<f32>> = match dimensions {
        Some(d) if d < full => embedded
            .vectors
            .iter()
            .map(|v| {
                let mut t = v[..d].to_vec();
                normalize(&mut t);
                t
            })
            .collect(),
        _ => Vec::new(),
    };
    let data = (0..texts.len())
        .map(|index| {
            let vector: &[f32] = truncated.get(index).map(Vec::as_slice).unwrap_or(&embedded.vectors[index]);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Encoded::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Encoded::Float(vector)
            };
            EmbeddingData { object: "embedding", index, embedding }
        })
        .collect();
    let usage = Usage { prompt_tokens: embedded.prompt_tokens, total_tokens: embedded.prompt_tokens };
    Ok(HttpResponse::Ok().json(EmbeddingsResponse { object: "list", data, model: &served.entry.id, usage }))
}

/// Validates `input`: a string or a non-empty list of strings within the limits; errors name the index.
fn texts_of(input: Value, max_items: usize, max_chars: usize) -> Result<Vec<String>, ApiError> {
    let check = |text: &str, param: String| -> Result<(), ApiError> {
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
        Ok(())
    };
    match input {
        Value::String(text) => {
            check(&text, "input".into())?;
            Ok(vec![text])
        }
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid("input", "input is an empty list; send at least one string"));
            }
            if items.len() > max_items {
                return Err(ApiError::invalid(
                    "input",
                    format!("input has {} items, more than the limit of {max_items} per request", items.len()),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(text) => check(&text, format!("input[{i}]")).map(|_| text),
                    Value::Number(_) | Value::Array(_) => Err(ApiError::invalid(
                        format!("input[{i}]"),
                        format!("input[{i}] is a token array; this server accepts text inputs only"),
                    )),
                    other => Err(ApiError::invalid(
                        format!("input[{i}]"),
                        format!("input[{i}] must be a string, got {}", kind_of(&other)),
                    )),
                })
                .collect()
        }
        other => Err(ApiError::invalid(
            "input",
            format!("input must be a string or a list of strings, got {}", kind_of(&other)),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_validation_names_the_index() {
        assert_eq!(texts_of(json!("a"), 4, 10).unwrap(), vec!["a"]);
        let err = |v| texts_of(v, 2, 5).unwrap_err().to_string();
        assert!(err(json!([])).contains("empty list"));
        assert!(err(json!(["a", ""])).contains("input[1] is empty"));
        assert!(err(json!(["a", "b", "c"])).contains("3 items"));
        assert!(err(json!(["a", "toolong"])).contains("input[1] has 7 characters"));
        assert!(err(json!(["a", 3])).contains("input[1]"));
        assert!(err(json!([{"x": 1}])).contains("input[0] must be a string"));
        assert!(err(json!(7)).contains("input must be a string"));
        assert!(err(json!(null)).contains("got null"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use actix_web::ResponseError;
    use proptest::prelude::*;

    proptest! {
        /// Whatever `input` holds, validation answers with texts or a client error, never a panic.
        #[test]
        fn any_input_is_accepted_or_refused_with_a_4xx(input in crate::arbitrary::json()) {
            if let Err(e) = texts_of(input, 32, 20_000) {
                prop_assert!(e.status_code().is_client_error(), "{e}");
            }
        }

        /// Whole request bodies: either they parse into a request, or serde names what is wrong.
        #[test]
        fn any_body_parses_or_is_refused(body in crate::arbitrary::object_with(&["model", "input", "encoding_format", "dimensions", "user"])) {
            if let Ok(request) = serde_json::from_value::<EmbeddingsRequest>(body) {
                if let Err(e) = texts_of(request.input, 32, 20_000) {
                    prop_assert!(e.status_code().is_client_error(), "{e}");
                }
            }
        }
    }
}
