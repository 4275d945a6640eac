//! `GET /health`, `/health/live` and `/health/ready`.
//!
//! `/health` answers the seed's body in the seed's shapes (`models` a list of ids, `warmup` with
//! `capabilities[model][capability]` and `failures` a list, the queues as `[{model, size, max_size}]`
//! lists, `runtime_config` with the seed's flat keys), so dashboards and scripts written for the seed
//! read it unchanged; sis's own per-model actor detail sits beside them under `actors`.

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use crate::config::Capability;
use crate::runtime::Runtime;

/// Full status (see the module docs). 503 while unhealthy: a model failed for good, or a warmup failed
/// on a model whose roster entry does not say `warmup_optional`.
pub async fn health(runtime: web::Data<Runtime>) -> HttpResponse {
    let mut actors = Map::new();
    let mut ids = Vec::new();
    let (mut embedding_queues, mut chat_queues, mut audio_queues) = (Vec::new(), Vec::new(), Vec::new());
    let (mut vision_queues, mut rerank_queues) = (Vec::new(), Vec::new());
    let mut ok_models = Vec::new();
    let mut failures = Vec::new();
    let mut warmed = Map::new();
    let mut ready_capabilities: Map<String, Value> =
        Capability::ALL.iter().map(|c| (c.name().to_string(), json!(false))).collect();
    let mut healthy = true;
    let mut completed = true;
    for (id, served) in runtime.registry.all() {
        let state = served.state();
        let admission = served.admission();
        let capability = served.settings.capability.name();
        let warmup = served.status.warmup();
        match &warmup {
            Some(w) if w.ok => ok_models.push(id.clone()),
            Some(w) => {
                failures.push(json!({ "model": id, "capability": capability, "error": w.error }));
                healthy &= served.entry.warmup_optional;
            }
            // Models that failed to start, or that another server answers, have no warmup to wait for.
            None => completed &= served.has_failed() || matches!(served.path, crate::runtime::RequestPath::Upstream(_)),
        }
        let ok = warmup.as_ref().is_some_and(|w| w.ok && !w.skipped);
        warmed.insert(id.clone(), json!({ capability: ok }));
        if state == "ready" {
            ready_capabilities.insert(capability.to_string(), json!(true));
        }
        healthy &= !served.has_failed();
        let queue = json!({ "model": id, "size": admission.depth(), "max_size": admission.capacity() });
        match served.settings.capability {
            Capability::Embeddings => embedding_queues.push(queue),
            Capability::Chat => chat_queues.push(queue),
            Capability::Audio => audio_queues.push(queue),
            // The seed serves vision-language models as chat: they are in its chat queues too.
            Capability::Vision => {
                chat_queues.push(queue.clone());
                vision_queues.push(queue);
            }
            Capability::Rerank => rerank_queues.push(queue),
        };
        ids.push(id.clone());
        let upstream = match &served.path {
            crate::runtime::RequestPath::Upstream(upstream) => json!(upstream.reachability()),
            _ => Value::Null,
        };
        actors.insert(
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
                "warmup_optional": served.entry.warmup_optional,
                "settings": served.settings,
                "kernels": served.kernels,
                "upstream": upstream,
            }),
        );
    }
    let settings = &runtime.settings;
    let mut runtime_config = serde_json::to_value(settings).unwrap_or_default();
    if let Value::Object(config) = &mut runtime_config {
        config.extend(settings.seed_keys());
    }
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "models": ids,
        "warmup": {
            "enabled": settings.warmup.enabled,
            "required": settings.warmup.enabled,
            "completed": completed,
            "ok_models": ok_models,
            "failures": failures,
            "capabilities": warmed,
            "ready_capabilities": ready_capabilities,
        },
        "warmup_failures": failures,
        "embedding_batch_queues": embedding_queues,
        "chat_batch_queues": chat_queues,
        "audio_queues": audio_queues,
        "vision_queues": vision_queues,
        "rerank_queues": rerank_queues,
        "runtime_config": runtime_config,
        "actors": actors,
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
