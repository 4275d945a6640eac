//! The one place an [`ApiError`] becomes an HTTP response, in OpenAI's error shape.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::error::ApiError;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::UnknownRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (kind, param, code) = match self {
            ApiError::InvalidRequest { param, code, .. } => ("invalid_request_error", param.clone(), *code),
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model".into()), Some("model_not_found")),
            ApiError::UnknownRoute { .. } => ("invalid_request_error", None, Some("unknown_url")),
            ApiError::MethodNotAllowed { .. } => ("invalid_request_error", None, Some("method_not_allowed")),
            ApiError::PayloadTooLarge { .. } => ("invalid_request_error", None, Some("payload_too_large")),
            ApiError::Overloaded { .. } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            ApiError::Unavailable(_) => ("server_error", None, Some("model_unavailable")),
            ApiError::ShuttingDown => ("server_error", None, Some("shutting_down")),
            ApiError::Unauthorized(_) => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::Timeout(_) => ("server_error", None, Some("timeout")),
            ApiError::RequestTimeout(_) => ("invalid_request_error", None, Some("request_timeout")),
            ApiError::Internal(_) => ("server_error", None, Some("internal_error")),
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Overloaded { retry_after, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after.as_secs().max(1).to_string()));
            }
            ApiError::ShuttingDown => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(json!({
            "error": { "message": self.to_string(), "type": kind, "param": param, "code": code }
        }))
    }
}
