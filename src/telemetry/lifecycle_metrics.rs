//! The metrics actor: keeps the lifecycle metrics from the event bus.

use actix::prelude::*;
use sis_actors::{LifecycleEvent, ModelState};
use std::collections::HashMap;
use std::sync::Arc;

use super::Metrics;

/// Subscribes to lifecycle events and turns them into `model_state`, `model_restarts_total`,
/// `model_lifecycle_events_total` and `warmup_pool_ready_workers`.
pub struct LifecycleMetrics {
    metrics: Arc<Metrics>,
    /// Capability and executor label of each model.
    labels: HashMap<String, (String, String)>,
}

impl LifecycleMetrics {
    /// A metrics actor; `labels` maps model ids to (capability, executor).
    pub fn new(metrics: Arc<Metrics>, labels: HashMap<String, (String, String)>) -> Self {
        Self { metrics, labels }
    }
}

impl Actor for LifecycleMetrics {
    type Context = Context<Self>;
}

/// The capability and executor labels of a model started after the metrics actor.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Label {
    /// Model id.
    pub model: String,
    /// Its capability.
    pub capability: String,
    /// Where it runs.
    pub executor: String,
}

impl Handler<Label> for LifecycleMetrics {
    type Result = ();

    fn handle(&mut self, label: Label, _: &mut Context<Self>) {
        self.labels.insert(label.model, (label.capability, label.executor));
    }
}

impl Handler<LifecycleEvent> for LifecycleMetrics {
    type Result = ();

    fn handle(&mut self, event: LifecycleEvent, _: &mut Context<Self>) {
        let model = &*event.model;
        for state in ModelState::ALL {
            self.metrics.model_state.with_label_values(&[model, state.as_str()]).set((state == event.state) as i64);
        }
        self.metrics.lifecycle_events.with_label_values(&[model, event.state.as_str()]).inc();
        if event.state == ModelState::Restarting {
            self.metrics.model_restarts.with_label_values(&[model]).inc();
        }
        if let Some((capability, executor)) = self.labels.get(model) {
            let ready = (event.state == ModelState::Ready) as i64 as f64;
            self.metrics.warmup_ready_workers.with_label_values(&[model, capability, executor]).set(ready);
        }
    }
}
