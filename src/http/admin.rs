//! `POST /admin/reload`: re-reads the roster (the access middleware checks the admin key).

use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use crate::runtime::Runtime;

/// Applies the roster file again and answers with what changed.
pub async fn reload(runtime: web::Data<Runtime>) -> Result<HttpResponse, ApiError> {
    match crate::reload::reload(runtime.into_inner()).await {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(e) => Err(ApiError::bad_request(format!("the roster was not reloaded: {e:#}"))),
    }
}
