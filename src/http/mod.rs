//! The HTTP surface: one module per endpoint; handlers validate and call into the runtime.

pub mod access;
pub mod admin;
pub mod audio;
pub mod body;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod forward;
pub mod health;
pub mod logprobs;
pub mod metrics;
pub mod models;
pub mod request_id;
pub mod rerank;

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
    // Each path answers its own method; any other method gets a 405 in OpenAI's error shape.
    let post = |path: &'static str, route: actix_web::Route| {
        web::resource(path).route(route).default_service(web::to(wrong_method))
    };
    let get = post;
    cfg.service(post("/v1/embeddings", web::post().to(embeddings::create)))
        .service(post("/embeddings", web::post().to(embeddings::create)))
        .service(post("/v1/chat/completions", web::post().to(chat::create)))
        .service(post("/chat/completions", web::post().to(chat::create)))
        .service(post("/v1/completions", web::post().to(completions::create)))
        .service(post("/completions", web::post().to(completions::create)))
        .service(post("/v1/rerank", web::post().to(rerank::create)))
        .service(post("/rerank", web::post().to(rerank::tei)))
        .service(post("/v1/audio/transcriptions", web::post().to(audio::transcriptions)))
        .service(post("/v1/audio/translations", web::post().to(audio::translations)))
        .service(get("/v1/models", web::get().to(models::list)))
        .service(get("/health", web::get().to(health::health)))
        .service(get("/health/live", web::get().to(health::live)))
        .service(get("/health/ready", web::get().to(health::ready)))
        .service(get("/metrics", web::get().to(metrics::render)))
        // The seed's Prometheus app is mounted at `/metrics/`; scrapers configured for it keep working.
        .service(get("/metrics/", web::get().to(metrics::render)))
        .service(post("/admin/reload", web::post().to(admin::reload)));
}

async fn wrong_method(req: HttpRequest) -> Result<&'static str, ApiError> {
    Err(ApiError::MethodNotAllowed { method: req.method().to_string(), path: req.path().to_string() })
}

/// CORS for browser clients, from `CORS_ALLOW_ORIGINS` (`*` allows any origin).
fn cors(origins: &[String]) -> actix_web::middleware::Condition<actix_cors::Cors> {
    let mut cors = actix_cors::Cors::default().allow_any_method().allow_any_header().max_age(3600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    actix_web::middleware::Condition::new(!origins.is_empty(), cors)
}

/// Binds and runs the server until a signal stops it (see [`crate::shutdown`]); prints the bound address.
pub async fn serve(runtime: Arc<Runtime>) -> std::io::Result<()> {
    let settings = &runtime.settings;
    let data = web::Data::from(runtime.clone());
    let origins = settings.access.cors_allow_origins.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(access::access))
            .wrap(cors(&origins))
            .wrap(from_fn(request_id::request_id))
            .configure(routes)
            .default_service(web::to(unknown_route))
    })
    .disable_signals()
    .client_request_timeout(settings.header_read_timeout)
    .shutdown_timeout(settings.shutdown_grace.as_secs().max(1))
    .bind(settings.bind_address())?;
    if settings.http_workers > 0 {
        server = server.workers(settings.http_workers);
    }
    for addr in server.addrs() {
        tracing::info!(%addr, "listening");
        println!("sis listening on http://{addr}");
    }
    let server = server.run();
    actix_web::rt::spawn(crate::shutdown::watch(runtime, server.handle()));
    server.await
}
