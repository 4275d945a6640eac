//! `X-Request-ID` on every response (the client's, or a new one) and one access-log line per request.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use std::time::Instant;

/// The header name.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, available to handlers through request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware: assigns the id, logs the request, stamps the response.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.path().to_string();
    let started = Instant::now();
    let (response, fields) = crate::telemetry::request_fields::scope(next.call(req)).await;
    let mut response = response?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let model = fields.model.unwrap_or_default();
    let queue_ms = fields.queue_wait.map(|w| w.as_secs_f64() * 1e3);
    if path.starts_with("/health") || path == "/metrics" {
        tracing::debug!(request_id = %id, %method, %path, status, latency_ms = ms, "request");
    } else {
        tracing::info!(request_id = %id, %method, %path, %model, status, latency_ms = ms, queue_wait_ms = queue_ms, "request");
    }
    Ok(response)
}
