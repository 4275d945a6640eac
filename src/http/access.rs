//! Who may call what: API keys on the API, the admin key on `/admin/*`, and 503 for new API requests
//! once shutdown has begun. The health probes stay open so orchestrators can always see the state.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, Error, ResponseError};

use crate::error::ApiError;
use crate::runtime::Runtime;

/// What a path is, for access control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    /// The OpenAI-compatible API (`/v1/*`, the seed's unversioned aliases and TEI's `/rerank`).
    Api,
    /// `/admin/*`.
    Admin,
    /// `/metrics` (and the seed's `/metrics/`).
    Metrics,
    /// Health probes and everything else.
    Open,
}

fn area(path: &str) -> Area {
    if path.starts_with("/v1/")
        || matches!(path, "/v1" | "/embeddings" | "/chat/completions" | "/completions" | "/rerank")
    {
        Area::Api
    } else if path.starts_with("/admin") {
        Area::Admin
    } else if path == "/metrics" || path == "/metrics/" {
        Area::Metrics
    } else {
        Area::Open
    }
}

/// The bearer token of a request, if any.
fn bearer(req: &ServiceRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without stopping at the first difference, so response time says nothing about the key.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check(req: &ServiceRequest, runtime: &Runtime) -> Result<(), ApiError> {
    let access = &runtime.settings.access;
    let needs_key = |keys: &[String]| -> Result<(), ApiError> {
        match bearer(req) {
            _ if keys.is_empty() => Ok(()),
            Some(token) if keys.iter().any(|k| same(k, token)) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized("Incorrect API key provided".into())),
            None => Err(ApiError::Unauthorized(
                "You didn't provide an API key; send it as `Authorization: Bearer <key>`".into(),
            )),
        }
    };
    match area(req.path()) {
        Area::Api => {
            if runtime.is_draining() {
                return Err(ApiError::ShuttingDown);
            }
            needs_key(&access.api_keys)
        }
        Area::Admin => match &access.admin_api_key {
            None => Err(ApiError::UnknownRoute { method: req.method().to_string(), path: req.path().to_string() }),
            Some(key) => needs_key(std::slice::from_ref(key)),
        },
        Area::Metrics if access.metrics_require_key => needs_key(&access.api_keys),
        Area::Metrics | Area::Open => Ok(()),
    }
}

/// Middleware: refuses what the caller may not do, in OpenAI's error shape.
pub async fn access(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let refusal = match req.app_data::<web::Data<Runtime>>() {
        Some(runtime) => check(&req, runtime).err(),
        None => None,
    };
    match refusal {
        Some(error) => Ok(req.into_response(error.error_response()).map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fall_into_areas() {
        assert_eq!(area("/v1/embeddings"), Area::Api);
        assert_eq!(area("/chat/completions"), Area::Api);
        assert_eq!(area("/admin/reload"), Area::Admin);
        assert_eq!(area("/metrics"), Area::Metrics);
        assert_eq!(area("/metrics/"), Area::Metrics);
        assert_eq!(area("/rerank"), Area::Api, "TEI's rerank route needs a key like the rest of the API");
        assert_eq!(area("/health/ready"), Area::Open);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
    }
}
