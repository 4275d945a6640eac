//! `POST /v1/embeddings`.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::body::{parse, read_value};
use super::forward::respond;
use crate::embeddings::{self, EmbeddingsRequest, Input};
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::upstream::Endpoint;

/// The body as OpenAI defines it.
#[derive(Deserialize)]
struct WireRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<i64>,
    /// Extension: one of the model's named prompts (sentence-transformers' `prompt_name`).
    #[serde(default)]
    prompt_name: Option<String>,
    /// Extension: `query` or `document` (as Voyage, Cohere and NVIDIA name it), the model's prompt of
    /// that name.
    #[serde(default)]
    input_type: Option<String>,
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

/// The handler: translates the body into an [`EmbeddingsRequest`] and the vectors into OpenAI's shape.
pub async fn create(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    handle(&req, payload, &runtime).await.unwrap_or_else(|e| e.error_response())
}

async fn handle(req: &HttpRequest, payload: web::Payload, runtime: &Runtime) -> Result<HttpResponse, ApiError> {
    let settings = &runtime.settings;
    let body = read_value(req, payload, settings.max_request_bytes, settings.body_read_timeout).await?;
    if let Some(forwarded) = crate::upstream::forward(runtime, Endpoint::Embeddings, &body).await {
        return Ok(respond(forwarded?));
    }
    let request: WireRequest = parse(body)?;
    crate::telemetry::request_fields::note_model(&request.model);
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
    let input = input_of(request.input)?;
    let embedded = embeddings::embed(
        runtime,
        EmbeddingsRequest {
            model: request.model,
            input,
            dimensions: request.dimensions,
            prompt: request.prompt_name.or(request.input_type),
        },
    )
    .await?;
    let data = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
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
    Ok(HttpResponse::Ok().json(EmbeddingsResponse { object: "list", data, model: &embedded.model, usage }))
}

/// Reads `input`: a string or a list of strings (errors name the index). The model's limits on
/// count and length are the capability's to check.
fn input_of(input: Value) -> Result<Input, ApiError> {
    match input {
        Value::String(text) => Ok(Input::One(text)),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => Ok(text),
                Value::Number(_) | Value::Array(_) => Err(ApiError::invalid(
                    format!("input[{i}]"),
                    format!("input[{i}] is a token array; this server accepts text inputs only"),
                )),
                other => Err(ApiError::invalid(
                    format!("input[{i}]"),
                    format!("input[{i}] must be a string, got {}", kind_of(&other)),
                )),
            })
            .collect::<Result<_, _>>()
            .map(Input::Many),
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
    fn input_shapes_name_the_index() {
        assert!(matches!(input_of(json!("a")).unwrap(), Input::One(t) if t == "a"));
        assert!(matches!(input_of(json!(["a", "b"])).unwrap(), Input::Many(t) if t.len() == 2));
        let err = |v| input_of(v).unwrap_err().to_string();
        assert!(err(json!(["a", 3])).contains("input[1] is a token array"));
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
        /// Whatever `input` holds, translation answers with texts or a client error, never a panic.
        #[test]
        fn any_input_is_accepted_or_refused_with_a_4xx(input in crate::arbitrary::json()) {
            if let Err(e) = input_of(input) {
                prop_assert!(e.status_code().is_client_error(), "{e}");
            }
        }

        /// Whole request bodies: either they parse into a request, or serde names what is wrong.
        #[test]
        fn any_body_parses_or_is_refused(body in crate::arbitrary::object_with(&["model", "input", "encoding_format", "dimensions", "user"])) {
            if let Ok(request) = serde_json::from_value::<WireRequest>(body) {
                if let Err(e) = input_of(request.input) {
                    prop_assert!(e.status_code().is_client_error(), "{e}");
                }
            }
        }
    }
}
