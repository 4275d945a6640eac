//! The warmup actor: warms every model that reports `loaded`, then lets it become `ready`.

use actix::prelude::*;

use crate::lifecycle::{LifecycleEvent, ModelState};
use crate::model_actor::Warmup;

/// Which models to warm and how hard (serializable so a server can show it with its configuration).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WarmupPolicy {
    /// Master switch (`ENABLE_WARMUP`).
    pub enabled: bool,
    /// Batches per model (`WARMUP_STEPS`).
    pub steps: usize,
    /// Inputs per batch (`WARMUP_BATCH_SIZE`).
    pub batch_size: usize,
    /// When not empty, only these models are warmed (`WARMUP_ALLOWLIST`).
    pub allowlist: Vec<String>,
    /// These models are never warmed (`WARMUP_SKIPLIST`).
    pub skiplist: Vec<String>,
}

impl WarmupPolicy {
    /// Warmup steps for a model: 0 means mark it ready without warming.
    pub fn steps_for(&self, model: &str) -> usize {
        let allowed = self.allowlist.is_empty() || self.allowlist.iter().any(|m| m == model);
        let skipped = self.skiplist.iter().any(|m| m == model);
        if self.enabled && allowed && !skipped {
            self.steps
        } else {
            0
        }
    }
}

/// Subscribes to lifecycle events and answers each `loaded` with a [`Warmup`].
pub struct WarmupActor {
    policy: WarmupPolicy,
}

impl WarmupActor {
    /// A warmup actor with its policy.
    pub fn new(policy: WarmupPolicy) -> Self {
        Self { policy }
    }
}

impl Actor for WarmupActor {
    type Context = Context<Self>;
}

impl Handler<LifecycleEvent> for WarmupActor {
    type Result = ();

    fn handle(&mut self, event: LifecycleEvent, ctx: &mut Context<Self>) {
        let (ModelState::Loaded, Some(target)) = (event.state, event.warmup) else {
            return;
        };
        let request = Warmup { steps: self.policy.steps_for(&event.model), batch_size: self.policy.batch_size };
        let model = event.model.clone();
        ctx.spawn(target.send(request).into_actor(self).map(move |result, _, _| match result {
            Ok(outcome) if outcome.ok => {
                tracing::info!(%model, steps = outcome.steps, ms = outcome.duration_ms, "model ready")
            }
            Ok(outcome) => tracing::warn!(%model, error = ?outcome.error, "warmup failed; model serves anyway"),
            Err(err) => tracing::warn!(%model, %err, "warmup not delivered"),
        }));
    }
}
