//! The one place an [`ApiError`] becomes an HTTP response (its status, headers and OpenAI-shaped body
//! come from [`ApiError::status`] and [`ApiError::body`]).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::error::ApiError;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
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
        response.json(self.body())
    }
}

/// An error in the middle of a server-sent event stream, after the 200 was sent: the same body a
/// non-streaming request would have got, as one `data:` frame.
pub fn sse_frame(error: &ApiError) -> String {
    format!("data: {}\n\n", error.body())
}
