//! What every supervised engine actor shares: publishing lifecycle states, loading with backoff,
//! counting faults against the restart budget, and running warmup under `catch_unwind`.

use actix::prelude::*;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::engine::EngineError;
use crate::lifecycle::{EventBus, LifecycleEvent, ModelState, ModelStatus, Publish};
use crate::model_actor::{ModelActorConfig, Warmup, WarmupOutcome};

/// Supervision state of one engine actor.
pub struct Supervision {
    /// Shared status read by `/health`.
    pub status: Arc<ModelStatus>,
    bus: Addr<EventBus>,
    config: ModelActorConfig,
    consecutive_failures: u32,
}

impl Supervision {
    /// Supervision with a restart budget.
    pub fn new(status: Arc<ModelStatus>, bus: Addr<EventBus>, config: ModelActorConfig) -> Self {
        Self { status, bus, config, consecutive_failures: 0 }
    }

    /// Mailbox capacity for the actor.
    pub fn mailbox_capacity(&self) -> usize {
        self.config.mailbox_capacity
    }

    /// Enters a state and tells the bus.
    pub fn publish(&self, state: ModelState, detail: Option<String>, warmup: Option<Recipient<Warmup>>) {
        self.status.set_state(state);
        if matches!(state, ModelState::Failed | ModelState::Restarting) {
            self.status.set_last_error(detail.clone());
        }
        self.bus.do_send(Publish(LifecycleEvent {
            model: self.status.model().clone(),
            state,
            detail,
            restarts: self.status.restarts(),
            at: SystemTime::now(),
            warmup,
        }));
    }

    /// A unit of work succeeded: the failure streak ends.
    pub fn succeeded(&mut self) {
        self.consecutive_failures = 0;
    }

    /// Counts a failure; returns whether the actor should restart (else it is marked failed).
    pub fn fault(&mut self, reason: String) -> bool {
        self.consecutive_failures += 1;
        if self.consecutive_failures > self.config.max_restarts {
            tracing::error!(model = %self.status.model(), %reason, "model failed for good");
            self.publish(ModelState::Failed, Some(reason), None);
            false
        } else {
            self.status.count_restart();
            tracing::warn!(model = %self.status.model(), %reason, "model restarting");
            self.publish(ModelState::Restarting, Some(reason), None);
            true
        }
    }

    /// Why the engine cannot serve.
    pub fn unavailable(&self) -> String {
        self.status.last_error().unwrap_or_else(|| "model is not loaded".into())
    }

    /// Loads an engine, retrying with backoff until it loads or the failure budget is spent (a
    /// [permanent](EngineError::permanent) error fails at once); publishes `loaded` with `warm` as the
    /// warmup target.
    pub fn load<E>(&mut self, load: impl Fn() -> Result<E, EngineError>, warm: Recipient<Warmup>) -> Option<E> {
        loop {
            if self.consecutive_failures > 0 {
                let shift = (self.consecutive_failures - 1).min(6);
                std::thread::sleep(self.config.restart_backoff * (1u32 << shift));
            }
            self.publish(ModelState::Loading, None, None);
            let started = Instant::now();
            let reason = match catch_unwind(AssertUnwindSafe(&load)) {
                Ok(Ok(engine)) => {
                    tracing::info!(model = %self.status.model(), ms = started.elapsed().as_millis() as u64, "model loaded");
                    self.publish(ModelState::Loaded, None, Some(warm));
                    return Some(engine);
                }
                Ok(Err(err)) if err.permanent => {
                    let reason = format!("load failed: {err}");
                    tracing::error!(model = %self.status.model(), %reason, "model cannot load; not retrying");
                    self.publish(ModelState::Failed, Some(reason), None);
                    return None;
                }
                Ok(Err(err)) => format!("load failed: {err}"),
                Err(panic) => format!("load panicked: {}", panic_message(&panic)),
            };
            if !self.fault(reason) {
                return None;
            }
        }
    }

    /// Handles a [`Warmup`] message: warms the engine, marks the model ready, and on a panic drops
    /// the engine. Returns the outcome and whether the actor must stop so its supervisor restarts it.
    pub fn handle_warmup<E>(
        &mut self,
        engine: &mut Option<E>,
        msg: &Warmup,
        run: impl FnOnce(&mut E, usize, usize) -> Result<(), EngineError>,
    ) -> (WarmupOutcome, bool) {
        let (outcome, restart) = self.warmup(engine.as_mut(), msg, run);
        if restart.is_some() {
            *engine = None;
        }
        (outcome, restart == Some(true))
    }

    /// Runs warmup on a loaded engine and marks the model ready. Returns the outcome and, when the
    /// engine panicked, whether the actor must restart.
    fn warmup<E>(
        &mut self,
        engine: Option<&mut E>,
        msg: &Warmup,
        run: impl FnOnce(&mut E, usize, usize) -> Result<(), EngineError>,
    ) -> (WarmupOutcome, Option<bool>) {
        let started = Instant::now();
        let mut outcome = WarmupOutcome {
            ok: true,
            skipped: msg.steps == 0,
            steps: msg.steps,
            batch_size: msg.batch_size,
            duration_ms: 0.0,
            error: None,
        };
        let Some(engine) = engine else {
            outcome.ok = false;
            outcome.error = Some("model is not loaded".into());
            return (outcome, None);
        };
        let mut restart = None;
        if msg.steps > 0 {
            self.publish(ModelState::Warming, None, None);
            match catch_unwind(AssertUnwindSafe(|| run(engine, msg.steps, msg.batch_size.max(1)))) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    outcome.ok = false;
                    outcome.error = Some(err.message);
                }
                Err(panic) => {
                    let reason = format!("warmup panicked: {}", panic_message(&panic));
                    outcome.ok = false;
                    outcome.error = Some(reason.clone());
                    restart = Some(self.fault(reason));
                }
            }
        }
        outcome.duration_ms = started.elapsed().as_secs_f64() * 1e3;
        self.status.set_warmup(outcome.clone());
        if restart.is_none() {
            self.publish(ModelState::Ready, None, None);
        }
        (outcome, restart)
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
