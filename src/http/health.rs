//! `GET /health`, `/health/live` and `/health/ready`.

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use crate::config::Capability;
use crate::runtime::Runtime;

/// Full status: every model actor's state, restarts, queue, warmup, effective settings and CPU
/// kernels, and the runtime config.
/// 503 while any model has failed for good.
pub async fn health(runtime: web::Data<Runtime>) -> HttpResponse {
    let mut models = Map::new();
    let mut embedding_queues = Map::new();
    let mut chat_queues = Map::new();
    let mut audio_queues = Map::new();
    let mut vision_queues = Map::new();
    let mut rerank_queues = Map::new();
    let mut ok_models = Vec::new();
    let mut failures = Map::new();
    let mut capability_ready: Map<String, Value> =
        ["embeddings", "chat", "audio", "vision", "rerank"].iter().map(|c| (c.to_string(), json!(false))).collect();
    let mut healthy = true;
    for (id, served) in runtime.registry.all() {
        let state = served.state();
        let admission = served.admission();
        let capability = served.settings.capability.name();
        let warmup = served.status.warmup();
        match &warmup {
            Some(w) if w.ok => ok_models.push(id.clone()),
            Some(w) => {
                failures.insert(id.clone(), json!(w.error));
            }
            None => {}
        }
        if state == "ready" {
            capability_ready.insert(capability.to_string(), json!(true));
        }
        healthy &= !served.has_failed();
        let queue = json!({ "depth": admission.depth(), "capacity": admission.capacity() });
        match served.settings.capability {
            Capability::Embeddings => embedding_queues.insert(id.clone(), queue),
            Capability::Chat => chat_queues.insert(id.clone(), queue),
            Capability::Audio => audio_queues.insert(id.clone(), queue),
            Capability::Vision => vision_queues.insert(id.clone(), queue),
            Capability::Rerank => rerank_queues.insert(id.clone(), queue),
        };
        models.insert(
            id.clone(),
            json!({
                "state": state,
                "restarts": served.status.restarts(),
                "last_error": served.status.last_error(),
                "queue_depth": admission.depth(),
                "queue_capacity": admission.capacity(),
                "capabilities": [capability],
                "source": served.origin,
                "warmup": warmup,
                "settings": served.settings,
                "kernels": served.kernels,
            }),
        );
    }
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "models": models,
        "warmup": {
            "enabled": runtime.settings.warmup.enabled,
            "ok_models": ok_models,
            "failures": failures,
            "capabilities": capability_ready,
        },
        "embedding_batch_queues": embedding_queues,
        "chat_batch_queues": chat_queues,
        "audio_queues": audio_queues,
        "vision_queues": vision_queues,
        "rerank_queues": rerank_queues,
        "runtime_config": runtime.settings,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The process is up.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Every model is ready (503 with the states otherwise).
pub async fn ready(runtime: web::Data<Runtime>) -> HttpResponse {
    let states: Map<String, Value> = runtime.registry.all().into_iter().map(|(id, s)| (id, json!(s.state()))).collect();
    let draining = runtime.is_draining();
    let ready = !draining && states.values().all(|s| s == "ready");
    let status = match (draining, ready) {
        (true, _) => "draining",
        (false, true) => "ready",
        (false, false) => "not_ready",
    };
    let body = json!({ "status": status, "models": states });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
