//! Reading a JSON body with a size limit, whatever its Content-Type, with OpenAI-shaped errors.

use actix_web::{http::header, web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;

use crate::error::ApiError;

/// Reads at most `limit` bytes (413 beyond, before reading more) within the body read timeout (408 for
/// a client that sends too slowly) and parses them as `T` (400 on malformed JSON or a wrong field type,
/// with serde's description of where).
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<T, ApiError> {
    let body = within(timeout, read_body(req, payload, limit)).await?;
    serde_json::from_slice(&body).map_err(malformed)
}

/// Reads the JSON body of an endpoint that upstream models may answer; it is forwarded as it came, or
/// read into the endpoint's request type with [`parse`].
pub async fn read_value(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<serde_json::Value, ApiError> {
    read_json(req, payload, limit, timeout).await
}

/// Reads a JSON value into `T`, with [`read_json`]'s errors.
pub fn parse<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(malformed)
}

fn malformed(e: serde_json::Error) -> ApiError {
    let what = if e.is_data() { "has a field of the wrong type" } else { "is not valid JSON" };
    ApiError::bad_request(format!("The request body {what}: {e}"))
}

/// Runs a body read within `timeout`; a client that sends too slowly gets 408.
pub async fn within<T>(timeout: Duration, read: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
    tokio::time::timeout(timeout, read).await.unwrap_or(Err(ApiError::RequestTimeout(timeout)))
}

async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("Could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("The request body is empty; expected a JSON object"));
    }
    Ok(body)
}
