//! The warmup actor: warms every model that reports `loaded`, then lets it become `ready`.

use actix::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;

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
    /// At most this many warmups run at once among `bounded` models: a GPU's warmup memory budget
    /// over what one warmup worker takes (`WARMUP_VRAM_BUDGET_MB / WARMUP_VRAM_PER_WORKER_MB`);
    /// the others wait their turn. `None`: no bound.
    pub parallel: Option<usize>,
    /// The models that share the bound (those on a GPU).
    pub bounded: Vec<String>,
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
    /// Bounded warmups running.
    running: usize,
    /// Bounded warmups waiting for a slot, oldest first.
    waiting: VecDeque<(Arc<str>, Recipient<Warmup>)>,
}

impl WarmupActor {
    /// A warmup actor with its policy.
    pub fn new(policy: WarmupPolicy) -> Self {
        Self { policy, running: 0, waiting: VecDeque::new() }
    }

    /// Sends a warmup; a bounded one gives its slot to the next waiting when it ends.
    fn start(&mut self, model: Arc<str>, target: Recipient<Warmup>, bounded: bool, ctx: &mut Context<Self>) {
        let request = Warmup { steps: self.policy.steps_for(&model), batch_size: self.policy.batch_size };
        self.running += usize::from(bounded);
        ctx.spawn(target.send(request).into_actor(self).map(move |result, actor, ctx| {
            match result {
                Ok(outcome) if outcome.ok => {
                    tracing::info!(%model, steps = outcome.steps, ms = outcome.duration_ms, "model ready")
                }
                Ok(outcome) => tracing::warn!(%model, error = ?outcome.error, "warmup failed; model serves anyway"),
                Err(err) => tracing::warn!(%model, %err, "warmup not delivered"),
            }
            if bounded {
                actor.running -= 1;
                if let Some((model, target)) = actor.waiting.pop_front() {
                    actor.start(model, target, true, ctx);
                }
            }
        }));
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
        let bounded = self.policy.parallel.is_some() && self.policy.bounded.iter().any(|m| **m == *event.model);
        match self.policy.parallel {
            Some(slots) if bounded && self.running >= slots.max(1) => {
                tracing::info!(model = %event.model, "warmup waits for GPU warmup memory");
                self.waiting.push_back((event.model, target));
            }
            _ => self.start(event.model, target, bounded, ctx),
        }
    }
}
