//! `GET /metrics` in the Prometheus text format.

use actix_web::{web, HttpResponse};

use crate::runtime::Runtime;

/// Refreshes the queue gauges and renders every metric.
pub async fn render(runtime: web::Data<Runtime>) -> HttpResponse {
    let m = &runtime.metrics;
    for (id, served) in runtime.registry.all() {
        let capability = served.entry.kind.name();
        let admission = served.admission();
        m.queue_depth.with_label_values(&[&id, capability]).set(admission.depth() as i64);
        m.queue_capacity.with_label_values(&[&id, capability]).set(admission.capacity() as i64);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(m.render())
}
