//! `POST /v1/rerank` (the seed's shape, which is also Cohere's and Jina's) and `POST /rerank`
//! (text-embeddings-inference's).
//!
//! - `/v1/rerank`: `{model, query, documents, top_n?, return_documents?, raw_scores?}` →
//!   `{model, results: [{index, relevance_score, document}], usage}`, best first.
//! - `/rerank`: `{query, texts, model?, raw_scores?, return_text?, truncate?}` → `[{index, score,
//!   text?}]`, best first; `model` may be left out when one rerank model is served.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::read_json;
use crate::error::ApiError;
use crate::rerank::{self, RerankRequest};
use crate::runtime::Runtime;

#[derive(Deserialize)]
struct SeedRequest {
    model: String,
    query: String,
    documents: Vec<Value>,
    #[serde(default)]
    top_n: Option<i64>,
    #[serde(default = "yes")]
    return_documents: bool,
    #[serde(default)]
    raw_scores: bool,
}

/// A document: a string, or Cohere's `{"text": …}` object.
fn document(i: usize, value: Value) -> Result<String, ApiError> {
    match value {
        Value::String(text) => Ok(text),
        Value::Object(mut fields) => match fields.remove("text") {
            Some(Value::String(text)) => Ok(text),
            _ => Err(ApiError::invalid(format!("documents[{i}]"), format!("documents[{i}] has no string `text`"))),
        },
        _ => Err(ApiError::invalid(
            format!("documents[{i}]"),
            format!("documents[{i}] must be a string or an object with a `text` string"),
        )),
    }
}

#[derive(Deserialize)]
struct TeiRequest {
    #[serde(default)]
    model: Option<String>,
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    /// TEI truncates long pairs when asked; sis always truncates to the model's limit.
    #[serde(default)]
    #[allow(dead_code)]
    truncate: Option<bool>,
}

fn yes() -> bool {
    true
}

/// `POST /v1/rerank`.
pub async fn create(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    seed(&req, payload, &runtime).await.unwrap_or_else(|e| e.error_response())
}

/// `POST /rerank`, text-embeddings-inference's shape.
pub async fn tei(req: HttpRequest, payload: web::Payload, runtime: web::Data<Runtime>) -> HttpResponse {
    tei_rerank(&req, payload, &runtime).await.unwrap_or_else(|e| e.error_response())
}

async fn seed(req: &HttpRequest, payload: web::Payload, runtime: &Runtime) -> Result<HttpResponse, ApiError> {
    let settings = &runtime.settings;
    let body: SeedRequest = read_json(req, payload, settings.max_request_bytes, settings.body_read_timeout).await?;
    crate::telemetry::request_fields::note_model(&body.model);
    let top_n = match body.top_n {
        None => None,
        Some(n) if n >= 1 => Some(n as usize),
        Some(n) => return Err(ApiError::invalid("top_n", format!("top_n must be at least 1, got {n}"))),
    };
    let documents: Vec<String> =
        body.documents.into_iter().enumerate().map(|(i, d)| document(i, d)).collect::<Result<_, _>>()?;
    let request = RerankRequest {
        model: body.model,
        query: body.query,
        documents: documents.clone(),
        top_n,
        raw_scores: body.raw_scores,
    };
    let ranking = rerank::rerank(runtime, request).await?;
    let texts = body.return_documents.then_some(documents.as_slice());
    let results = ranked(&ranking, ("relevance_score", "document"), texts);
    let usage = json!({ "prompt_tokens": ranking.prompt_tokens, "total_tokens": ranking.prompt_tokens });
    Ok(HttpResponse::Ok().json(json!({ "model": ranking.model, "results": results, "usage": usage })))
}

async fn tei_rerank(req: &HttpRequest, payload: web::Payload, runtime: &Runtime) -> Result<HttpResponse, ApiError> {
    let settings = &runtime.settings;
    let body: TeiRequest = read_json(req, payload, settings.max_request_bytes, settings.body_read_timeout).await?;
    let model = match body.model {
        Some(model) => model,
        None => rerank::only_model(runtime)?,
    };
    crate::telemetry::request_fields::note_model(&model);
    let request = RerankRequest {
        model,
        query: body.query,
        documents: body.texts.clone(),
        top_n: None,
        raw_scores: body.raw_scores,
    };
    let ranking = rerank::rerank(runtime, request).await?;
    let results = ranked(&ranking, ("score", "text"), body.return_text.then_some(body.texts.as_slice()));
    Ok(HttpResponse::Ok().json(results))
}

/// The ranking as JSON objects, best first: `index`, the score under `keys.0`, and the document's text
/// under `keys.1` when `texts` are to be returned.
fn ranked(ranking: &rerank::Ranking, keys: (&str, &str), texts: Option<&[String]>) -> Vec<Value> {
    let (score, text) = keys;
    ranking
        .results
        .iter()
        .map(|r| {
            let mut result = json!({ "index": r.index, (score): r.score });
            if let Some(texts) = texts {
                result[text] = json!(texts[r.index]);
            }
            result
        })
        .collect()
}
