//! The supervised model actor: owns one engine on its own thread and runs whole batches on it.
//!
//! actix's `Supervisor` restarts an actor that stops but does not catch panics, so every engine call
//! runs under `catch_unwind`. On a panic or engine error the batch that hit it is answered with a
//! [`BatchFailure`] that hands its inputs back (so the batcher can retry each request alone), the
//! actor reports `restarting` and stops; the supervisor restarts it on the same mailbox, so the
//! batches queued behind the failed one are served by the reloaded engine.

use actix::prelude::*;
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Engine, EngineLoader};
use crate::lifecycle::{EventBus, ModelStatus};
pub use crate::supervision::panic_message;
use crate::supervision::Supervision;

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
        Self { max_restarts: 5, restart_backoff: Duration::from_millis(200), mailbox_capacity: 64 }
    }
}

/// Runs one batch on the engine.
#[derive(Message)]
#[rtype(result = "Result<Vec<O>, BatchFailure<I>>")]
pub struct RunBatch<I: Send + 'static, O: Send + 'static> {
    /// The inputs, answered in the same order.
    pub inputs: Vec<I>,
    _out: std::marker::PhantomData<fn() -> O>,
}

impl<I: Send + 'static, O: Send + 'static> RunBatch<I, O> {
    /// A batch of inputs.
    pub fn new(inputs: Vec<I>) -> Self {
        Self { inputs, _out: std::marker::PhantomData }
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

/// A batch that got no outputs, with its inputs handed back untouched.
#[derive(Debug)]
pub struct BatchFailure<I> {
    /// What went wrong.
    pub error: RunBatchError,
    /// The batch's inputs, in the order they were sent.
    pub inputs: Vec<I>,
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
    supervision: Supervision,
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
        Self::start_on(&Arbiter::new().handle(), loader, status, bus, config)
    }

    /// Starts the actor under a supervisor on the given arbiter (thread), which the caller owns: stopping
    /// that arbiter stops the actor and drops its engine.
    pub fn start_on(
        arbiter: &ArbiterHandle,
        loader: Arc<L>,
        status: Arc<ModelStatus>,
        bus: Addr<EventBus>,
        config: ModelActorConfig,
    ) -> Addr<Self> {
        Supervisor::start_in_arbiter(arbiter, move |_| Self {
            loader,
            engine: None,
            supervision: Supervision::new(status, bus, config),
        })
    }
}

impl<L: EngineLoader> Actor for ModelActor<L> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.supervision.mailbox_capacity());
        let loader = self.loader.clone();
        self.engine = self.supervision.load(|| loader.load(), ctx.address().recipient());
    }
}

impl<L: EngineLoader> Supervised for ModelActor<L> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.engine = None;
    }
}

impl<L: EngineLoader> Handler<RunBatch<InputOf<L>, OutputOf<L>>> for ModelActor<L> {
    type Result = Result<Vec<OutputOf<L>>, BatchFailure<InputOf<L>>>;

    fn handle(&mut self, msg: RunBatch<InputOf<L>, OutputOf<L>>, ctx: &mut Context<Self>) -> Self::Result {
        let inputs = msg.inputs;
        let Some(engine) = self.engine.as_mut() else {
            return Err(BatchFailure { error: RunBatchError::Unavailable(self.supervision.unavailable()), inputs });
        };
        let expected = inputs.len();
        let reason = match catch_unwind(AssertUnwindSafe(|| engine.infer(&inputs))) {
            Ok(Ok(outputs)) if outputs.len() == expected => {
                self.supervision.succeeded();
                return Ok(outputs);
            }
            Ok(Ok(outputs)) => format!("engine returned {} outputs for {expected} inputs", outputs.len()),
            Ok(Err(err)) => format!("engine error: {err}"),
            Err(panic) => format!("engine panicked: {}", panic_message(&panic)),
        };
        self.engine = None;
        if self.supervision.fault(reason.clone()) {
            ctx.stop();
        }
        Err(BatchFailure { error: RunBatchError::EngineFailed(reason), inputs })
    }
}

impl<L: EngineLoader> Handler<Warmup> for ModelActor<L> {
    type Result = MessageResult<Warmup>;

    fn handle(&mut self, msg: Warmup, ctx: &mut Context<Self>) -> Self::Result {
        let (outcome, stop) =
            self.supervision.handle_warmup(&mut self.engine, &msg, |e, steps, size| e.warmup(steps, size));
        if stop {
            ctx.stop();
        }
        MessageResult(outcome)
    }
}
