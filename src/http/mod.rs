//! The HTTP surface: one module per endpoint; handlers validate and call into the runtime.

pub mod audio;
pub mod body;
pub mod chat;
pub mod embeddings;
pub mod error;
pub mod health;
pub mod metrics;
pub mod models;
pub mod request_id;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpRequest, HttpServer};
use std::sync::Arc;

use crate::error::ApiError;
use crate::runtime::Runtime;

async fn unknown_route(req: HttpRequest) -> Result<&'static str, ApiError> {
    Err(ApiError::UnknownRoute { method: req.method().to_string(), path: req.path().to_string() })
}

/// Routes of the API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/embeddings", web::post().to(embeddings::create))
        .route("/v1/chat/completions", web::post().to(chat::create))
        .route("/chat/completions", web::post().to(chat::create))
        .route("/embeddings", web::post().to(embeddings::create))
        .route("/v1/audio/transcriptions", web::post().to(audio::transcriptions))
        .route("/v1/audio/translations", web::post().to(audio::translations))
        .route("/v1/models", web::get().to(models::list))
        .route("/health", web::get().to(health::health))
        .route("/health/live", web::get().to(health::live))
        .route("/health/ready", web::get().to(health::ready))
        .route("/metrics", web::get().to(metrics::render));
}

/// Binds and runs the server until it is stopped; prints the bound address.
pub async fn serve(runtime: Arc<Runtime>) -> std::io::Result<()> {
    let settings = &runtime.settings;
    let data = web::Data::from(runtime.clone());
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(request_id::request_id))
            .configure(routes)
            .default_service(web::to(unknown_route))
    })
    .bind(settings.bind_address())?;
    if settings.http_workers > 0 {
        server = server.workers(settings.http_workers);
    }
    for addr in server.addrs() {
        tracing::info!(%addr, "listening");
        println!("sis listening on http://{addr}");
    }
    server.run().await
}
