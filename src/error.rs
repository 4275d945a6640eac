//! The one error type of the request path, and its mapping onto OpenAI's error terms (HTTP status,
//! `type`, `code`), written once here. [`crate::http::error`] renders it; capabilities use
//! [`ApiError::status`] to label their request metrics.

use std::time::Duration;

use sis_actors::{AdmissionError, JobError};

/// Everything a request can fail with, in OpenAI's terms.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The client sent something wrong (400).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, naming the field or index.
        message: String,
        /// The offending parameter.
        param: Option<String>,
        /// A machine-readable code.
        code: Option<&'static str>,
    },
    /// No such model is served (404).
    #[error("The model `{0}` does not exist or is not served here")]
    ModelNotFound(String),
    /// No such route (404).
    #[error("Unknown endpoint {method} {path}")]
    UnknownRoute {
        /// HTTP method.
        method: String,
        /// Path.
        path: String,
    },
    /// The path exists, the method does not (405).
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// HTTP method.
        method: String,
        /// Path.
        path: String,
    },
    /// Body over the limit (413).
    #[error("Request body is larger than the {limit}-byte limit")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The model's queue is full or the wait was too long (429).
    #[error("{message}")]
    Overloaded {
        /// Why.
        message: String,
        /// Suggested wait before retrying.
        retry_after: Duration,
    },
    /// The model cannot serve now: failed, or the server is shutting down (503).
    #[error("{0}")]
    Unavailable(String),
    /// The server is draining before it stops (503, with `Retry-After`).
    #[error("The server is shutting down and accepts no new requests; retry on another instance")]
    ShuttingDown,
    /// The client sent its body too slowly (408).
    #[error("The request body was not received within {0:?}")]
    RequestTimeout(Duration),
    /// No valid API key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The work took longer than the capability's request timeout (504).
    #[error("The request took longer than the {0:?} limit and was cancelled")]
    Timeout(Duration),
    /// Something broke on our side (500).
    #[error("{0}")]
    Internal(String),
    /// An upstream model's server did not answer, or broke off (502).
    #[error("{0}")]
    BadGateway(String),
}

impl ApiError {
    /// A 400 about one parameter.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { message: message.into(), param: Some(param.into()), code: None }
    }

    /// A 400 not tied to a parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { message: message.into(), param: None, code: None }
    }
}

impl ApiError {
    /// The answer to a request its model's queue did not admit.
    pub fn not_admitted(model: &str, error: AdmissionError, retry_after: Duration) -> Self {
        match error {
            AdmissionError::QueueFull { capacity } => ApiError::Overloaded {
                message: format!("Model `{model}` is busy: its queue of {capacity} requests is full; retry shortly"),
                retry_after,
            },
            AdmissionError::Closed => ApiError::Unavailable("The server is shutting down".into()),
        }
    }

    /// The answer to an admitted request that got no result.
    pub fn job_failed(model: &str, error: JobError, retry_after: Duration) -> Self {
        match error {
            JobError::QueueTimeout { waited, .. } => ApiError::Overloaded {
                message: format!(
                    "Request waited {:.1}s in the queue of `{model}`; retry shortly",
                    waited.as_secs_f64()
                ),
                retry_after,
            },
            JobError::EngineFailed(e) => ApiError::Internal(format!("Model `{model}` failed on this request: {e}")),
            JobError::Unavailable(e) => ApiError::Unavailable(format!("Model `{model}` is unavailable: {e}")),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest { .. } => 400,
            ApiError::ModelNotFound(_) | ApiError::UnknownRoute { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::Overloaded { .. } => 429,
            ApiError::Unavailable(_) | ApiError::ShuttingDown => 503,
            ApiError::Unauthorized(_) => 401,
            ApiError::RequestTimeout(_) => 408,
            ApiError::Timeout(_) => 504,
            ApiError::Internal(_) => 500,
            ApiError::BadGateway(_) => 502,
        }
    }

    /// OpenAI's error `type`, `param` and `code`.
    pub fn terms(&self) -> (&'static str, Option<String>, Option<&'static str>) {
        match self {
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
            ApiError::BadGateway(_) => ("server_error", None, Some("upstream_error")),
        }
    }

    /// The error object clients read: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (kind, param, code) = self.terms();
        serde_json::json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } })
    }

    /// Whether this is a 429 (for the rejection counters).
    pub fn is_overload(&self) -> bool {
        matches!(self, ApiError::Overloaded { .. })
    }
}
