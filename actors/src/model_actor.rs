//! The supervised model actor: owns one engine on its own thread and runs whole batches on it.
//!
//! actix's `Supervisor` restarts an actor that stops but does not catch panics, so every engine call
//! runs under `catch_unwind`. On a panic or engine error the batch that hit it is answered with an
//! error, the actor reports `restarting` and stops; the supervisor restarts it on the same mailbox,
//! so the batches queued behind the failed one are served by the reloaded engine.

use actix::prelude::*;
use serde::Serialize;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::engine::{Engine, EngineError, EngineLoader};
use crate::lifecycle::{EventBus, LifecycleEvent, ModelState, ModelStatus, Publish};

/// Supervision settings of one model actor.
#[derive(Debug, Clone)]
pub struct ModelActorConfig {
    /// Consecutive failures (load or inference) tolerated before the model is marked `failed`.
    pub max_restarts: u32,
    /// Delay before the first reload; doubles with each consecutive failure.
    pub restart_backoff: Duration,
    /// Mailbox capacity; admission keeps the real bound, this only limits buffered batches.
    pub mailbox_capacity: usize,
}

impl Default for ModelActorConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_backoff: Duration::from_millis(200),
            mailbox_capacity: 64,
        }
    }
}

/// Runs one batch on the engine.
#[derive(Message)]
#[rtype(result = "Result<Vec<O>, RunBatchError>")]
pub struct RunBatch<I: Send + 'static, O: Send + 'static> {
    /// The inputs, answered in the same order.
    pub inputs: Vec<I>,
    _out: std::marker::PhantomData<fn() -> O>,
}

impl<I: Send + 'static, O: Send + 'static> RunBatch<I, O> {
    /// A batch of inputs.
    pub fn new(inputs: Vec<I>) -> Self {
        Self {
            inputs,
            _out: std::marker::PhantomData,
        }
    }
}

/// Why a batch got no outputs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunBatchError {
    /// The engine panicked or failed on this batch; the model is restarting.
    #[error("model failed while running the batch: {0}")]
    EngineFailed(String),
    /// The model is not loaded (it failed for good).
    #[error("model is unavailable: {0}")]
    Unavailable(String),
}

/// Warms the loaded engine, then marks the model ready. `steps == 0` marks it ready at once.
#[derive(Debug, Clone, Message)]
#[rtype(result = "WarmupOutcome")]
pub struct Warmup {
    /// Warmup batches to run.
    pub steps: usize,
    /// Inputs per warmup batch.
    pub batch_size: usize,
}

/// What a warmup did, as shown in `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct WarmupOutcome {
    /// Whether the engine ran every warmup step.
    pub ok: bool,
    /// Whether warmup was skipped by configuration.
    pub skipped: bool,
    /// Steps run.
    pub steps: usize,
    /// Inputs per step.
    pub batch_size: usize,
    /// Wall time of the warmup.
    pub duration_ms: f64,
    /// The failure, if any.
    pub error: Option<String>,
}

/// The actor that owns an engine. Start it with [`ModelActor::start`] so it gets its own thread
/// and a supervisor.
pub struct ModelActor<L: EngineLoader> {
    loader: Arc<L>,
    engine: Option<L::Engine>,
    status: Arc<ModelStatus>,
    bus: Addr<EventBus>,
    config: ModelActorConfig,
    consecutive_failures: u32,
}

type InputOf<L> = <<L as EngineLoader>::Engine as Engine>::Input;
type OutputOf<L> = <<L as EngineLoader>::Engine as Engine>::Output;

impl<L: EngineLoader> ModelActor<L> {
    /// Starts the actor under a supervisor on a new dedicated thread (engines block while they run).
    pub fn start(
        loader: Arc<L>,
        status: Arc<ModelStatus>,
        bus: Addr<EventBus>,
        config: ModelActorConfig,
    ) -> Addr<Self> {
        let arbiter = Arbiter::new();
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Self {
            loader,
            engine: None,
            status,
            bus,
            config,
            consecutive_failures: 0,
        })
    }

    fn publish(
        &self,
        state: ModelState,
        detail: Option<String>,
        warmup: Option<Recipient<Warmup>>,
    ) {
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

    /// Loads the engine, retrying with backoff, until it loads or the failure budget is spent.
    fn load(&mut self, ctx: &mut Context<Self>) {
        loop {
            if self.consecutive_failures > 0 {
                let shift = (self.consecutive_failures - 1).min(6);
                std::thread::sleep(self.config.restart_backoff * (1u32 << shift));
            }
            self.publish(ModelState::Loading, None, None);
            let started = Instant::now();
            match catch_unwind(AssertUnwindSafe(|| self.loader.load())) {
                Ok(Ok(engine)) => {
                    self.engine = Some(engine);
                    tracing::info!(model = %self.status.model(), ms = started.elapsed().as_millis() as u64, "model loaded");
                    let warm = ctx.address().recipient();
                    self.publish(ModelState::Loaded, None, Some(warm));
                    return;
                }
                Ok(Err(err)) => {
                    self.fault(format!("load failed: {err}"));
                }
                Err(panic) => {
                    self.fault(format!("load panicked: {}", panic_message(&panic)));
                }
            }
            if self.status.state() == ModelState::Failed {
                return;
            }
        }
    }

    /// Counts a failure; returns whether the actor should restart (else it is marked failed).
    fn fault(&mut self, reason: String) -> bool {
        self.engine = None;
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

    fn unavailable(&self) -> RunBatchError {
        RunBatchError::Unavailable(
            self.status
                .last_error()
                .unwrap_or_else(|| "model is not loaded".into()),
        )
    }
}

impl<L: EngineLoader> Actor for ModelActor<L> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.config.mailbox_capacity);
        self.load(ctx);
    }
}

impl<L: EngineLoader> Supervised for ModelActor<L> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.engine = None;
    }
}

impl<L: EngineLoader> Handler<RunBatch<InputOf<L>, OutputOf<L>>> for ModelActor<L> {
    type Result = Result<Vec<OutputOf<L>>, RunBatchError>;

    fn handle(
        &mut self,
        msg: RunBatch<InputOf<L>, OutputOf<L>>,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        if self.engine.is_none() {
            return Err(self.unavailable());
        }
        let engine = self.engine.as_mut().expect("checked above");
        let expected = msg.inputs.len();
        let reason = match catch_unwind(AssertUnwindSafe(|| engine.infer(msg.inputs))) {
            Ok(Ok(outputs)) if outputs.len() == expected => {
                self.consecutive_failures = 0;
                return Ok(outputs);
            }
            Ok(Ok(outputs)) => format!(
                "engine returned {} outputs for {expected} inputs",
                outputs.len()
            ),
            Ok(Err(EngineError(err))) => format!("engine error: {err}"),
            Err(panic) => format!("engine panicked: {}", panic_message(&panic)),
        };
        if self.fault(reason.clone()) {
            ctx.stop();
        }
        Err(RunBatchError::EngineFailed(reason))
    }
}

impl<L: EngineLoader> Handler<Warmup> for ModelActor<L> {
    type Result = MessageResult<Warmup>;

    fn handle(&mut self, msg: Warmup, ctx: &mut Context<Self>) -> Self::Result {
        let started = Instant::now();
        let mut outcome = WarmupOutcome {
            ok: true,
            skipped: msg.steps == 0,
            steps: msg.steps,
            batch_size: msg.batch_size,
            duration_ms: 0.0,
            error: None,
        };
        if self.engine.is_none() {
            outcome.ok = false;
            outcome.error = Some("model is not loaded".into());
            return MessageResult(outcome);
        }
        if let (true, Some(engine)) = (msg.steps > 0, self.engine.as_mut()) {
            self.status.set_state(ModelState::Warming);
            self.bus.do_send(Publish(LifecycleEvent {
                model: self.status.model().clone(),
                state: ModelState::Warming,
                detail: None,
                restarts: self.status.restarts(),
                at: SystemTime::now(),
                warmup: None,
            }));
            match catch_unwind(AssertUnwindSafe(|| {
                engine.warmup(msg.steps, msg.batch_size.max(1))
            })) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    outcome.ok = false;
                    outcome.error = Some(err.0);
                }
                Err(panic) => {
                    let reason = format!("warmup panicked: {}", panic_message(&panic));
                    outcome.ok = false;
                    outcome.error = Some(reason.clone());
                    outcome.duration_ms = started.elapsed().as_secs_f64() * 1e3;
                    self.status.set_warmup(outcome.clone());
                    if self.fault(reason) {
                        ctx.stop();
                    }
                    return MessageResult(outcome);
                }
            }
        }
        outcome.duration_ms = started.elapsed().as_secs_f64() * 1e3;
        self.status.set_warmup(outcome.clone());
        self.publish(ModelState::Ready, None, None);
        MessageResult(outcome)
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
