//! The answer of an upstream model ([`crate::upstream`]), sent to the client as it came: status,
//! content type and body, a stream passed through chunk by chunk.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

use crate::upstream::Forwarded;

/// The response carrying an upstream's answer.
pub fn respond(forwarded: Forwarded) -> HttpResponse {
    let status = StatusCode::from_u16(forwarded.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status);
    response.content_type(forwarded.content_type);
    if forwarded.streaming {
        response.insert_header(("Cache-Control", "no-cache"));
    }
    response.streaming(forwarded.body)
}
