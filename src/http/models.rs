//! `GET /v1/models`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::runtime::{RequestPath, Runtime};

/// Lists served models in OpenAI's shape, with capabilities, state and (for embeddings) dimension.
pub async fn list(runtime: web::Data<Runtime>) -> HttpResponse {
    let data: Vec<_> = runtime
        .registry
        .all()
        .into_iter()
        .map(|(id, served)| {
            let mut model = json!({
                "id": id,
                "object": "model",
                "created": served.created,
                "owned_by": "sis",
                "capabilities": [served.settings.capability.name()],
                "state": served.state(),
            });
            match &served.path {
                // `embedding_dimensions` is the seed's name; `dimensions` sis's first one.
                RequestPath::Embeddings(embeddings) => {
                    model["embedding_dimensions"] = json!(embeddings.dimensions());
                    model["dimensions"] = json!(embeddings.dimensions());
                }
                RequestPath::Chat(chat) => model["context_length"] = json!(chat.context()),
                RequestPath::Audio(audio) => model["multilingual"] = json!(audio.multilingual()),
                RequestPath::Rerank(_) => {}
                RequestPath::Upstream(upstream) => model["upstream"] = json!(upstream.reachability().url),
                RequestPath::Failed(_) => model["error"] = json!(served.status.last_error()),
            }
            model
        })
        .collect();
    HttpResponse::Ok().json(json!({ "object": "list", "data": data }))
}
