//! The sequence actor: a supervised model actor for step-wise engines (LLM decoding) that schedules
//! per step (continuous batching).
//!
//! Each [`Generate`] request waits in the actor's queue until a slot of the running batch is free,
//! joins at the next step, receives its events through its own channel, and leaves the batch the step
//! it finishes or its client goes away. Steps re-arm themselves through the actor's own mailbox, so
//! requests that arrive meanwhile are admitted between two steps. A panic or error in a step fails
//! only the sequences in the running batch; a panic while starting or removing a sequence does the
//! same (with the sequence being started). Every engine call runs under `catch_unwind`, since actix's
//! supervisor restarts an actor that stops but not one that panics; the supervisor reloads the engine
//! and the queue is served after.

use actix::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::admission::Permit;
use crate::batcher::JobError;
use crate::engine::EngineError;
use crate::lifecycle::{EventBus, ModelStatus};
use crate::model_actor::{ModelActorConfig, Warmup};
use crate::supervision::{panic_message, Supervision};

/// An engine that advances many sequences one step at a time.
pub trait StepEngine: Unpin + 'static {
    /// What starts a sequence (prompt, sampling settings).
    type Request: Send + Unpin + 'static;
    /// What a sequence emits (a text delta, the finish reason).
    type Event: Send + Unpin + 'static;

    /// Starts a sequence. An error refuses this request only.
    fn add(&mut self, id: u64, request: Self::Request) -> Result<(), EngineError>;
    /// Forgets a sequence and frees its state.
    fn remove(&mut self, id: u64);
    /// Advances every sequence by one step, pushing `(id, event, last)`; `last` means the sequence is
    /// done and already removed.
    fn step(&mut self, events: &mut Vec<(u64, Self::Event, bool)>) -> Result<(), EngineError>;
    /// Runs representative steps before the model is marked ready.
    fn warmup(&mut self, steps: usize, batch_size: usize) -> Result<(), EngineError>;
}

/// Builds a [`StepEngine`] on the actor's thread.
pub trait StepLoader: Send + Sync + 'static {
    /// The engine built.
    type Engine: StepEngine;
    /// Loads it.
    fn load(&self) -> Result<Self::Engine, EngineError>;
}

/// What a sequence's channel carries.
#[derive(Debug)]
pub enum SequenceMessage<E> {
    /// The sequence joined the running batch after waiting this long.
    Admitted(Duration),
    /// An engine event.
    Event(E),
    /// The sequence ended without finishing.
    Failed(JobError),
}

/// Starts a sequence.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Generate<R: Send + 'static, E: Send + 'static> {
    /// The request.
    pub request: R,
    /// Where its events go; dropping the receiver cancels the sequence.
    pub events: mpsc::UnboundedSender<SequenceMessage<E>>,
    /// Its admission slot, held until it ends.
    pub permit: Option<Permit>,
}

impl<R: Send + 'static, E: Send + 'static> Generate<R, E> {
    /// A request and the receiver of its events.
    pub fn new(request: R, permit: Option<Permit>) -> (Self, mpsc::UnboundedReceiver<SequenceMessage<E>>) {
        let (events, rx) = mpsc::unbounded_channel();
        (Self { request, events, permit }, rx)
    }
}

/// Scheduling limits.
#[derive(Debug, Clone)]
pub struct SequenceConfig {
    /// Sequences in the running batch.
    pub max_running: usize,
    /// Longest wait for a slot before the request is refused.
    pub queue_timeout: Duration,
}

struct Waiting<R: Send + 'static, E: Send + 'static> {
    msg: Generate<R, E>,
    since: Instant,
}

struct Running<E> {
    events: mpsc::UnboundedSender<SequenceMessage<E>>,
    _permit: Option<Permit>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Step;

type RequestOf<L> = <<L as StepLoader>::Engine as StepEngine>::Request;
type EventOf<L> = <<L as StepLoader>::Engine as StepEngine>::Event;

/// The supervised continuous-batching actor.
pub struct SequenceActor<L: StepLoader> {
    loader: Arc<L>,
    engine: Option<L::Engine>,
    supervision: Supervision,
    config: SequenceConfig,
    waiting: VecDeque<Waiting<RequestOf<L>, EventOf<L>>>,
    running: HashMap<u64, Running<EventOf<L>>>,
    next_id: u64,
    step_armed: bool,
    events: Vec<(u64, EventOf<L>, bool)>,
    observer: Arc<dyn SequenceObserver>,
}

/// Hooks for metrics.
pub trait SequenceObserver: Send + Sync + 'static {
    /// A step ran over `running` sequences, `waiting` more queued.
    fn step(&self, _running: usize, _waiting: usize, _took: Duration) {}
    /// Sequences left the batch because their clients went away.
    fn cancelled(&self, _count: usize) {}
}

impl SequenceObserver for () {}

impl<L: StepLoader> SequenceActor<L> {
    /// Starts the actor on its own thread under a supervisor.
    pub fn start(
        loader: Arc<L>,
        status: Arc<ModelStatus>,
        bus: Addr<EventBus>,
        actor: ModelActorConfig,
        config: SequenceConfig,
        observer: Arc<dyn SequenceObserver>,
    ) -> Addr<Self> {
        Self::start_on(&Arbiter::new().handle(), loader, status, bus, actor, config, observer)
    }

    /// Starts the actor on the given arbiter (thread), which the caller owns: stopping that arbiter
    /// stops the actor and drops its engine.
    pub fn start_on(
        arbiter: &ArbiterHandle,
        loader: Arc<L>,
        status: Arc<ModelStatus>,
        bus: Addr<EventBus>,
        actor: ModelActorConfig,
        config: SequenceConfig,
        observer: Arc<dyn SequenceObserver>,
    ) -> Addr<Self> {
        Supervisor::start_in_arbiter(arbiter, move |_| Self {
            loader,
            engine: None,
            supervision: Supervision::new(status, bus, actor),
            config,
            waiting: VecDeque::new(),
            running: HashMap::new(),
            next_id: 0,
            step_armed: false,
            events: Vec::new(),
            observer,
        })
    }

    /// Refuses stale or abandoned waiters, admits waiters into free slots, and arms the next step.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.config.queue_timeout;
        self.waiting.retain(|w| {
            if w.msg.events.is_closed() {
                return false;
            }
            let waited = w.since.elapsed();
            if waited > timeout {
                let _ = w.msg.events.send(SequenceMessage::Failed(JobError::QueueTimeout { waited, timeout }));
                return false;
            }
            true
        });
        let Some(engine) = self.engine.as_mut() else {
            if self.supervision.status.state() == crate::ModelState::Failed {
                let reason = self.supervision.unavailable();
                for w in self.waiting.drain(..) {
                    let _ = w.msg.events.send(SequenceMessage::Failed(JobError::Unavailable(reason.clone())));
                }
            }
            return;
        };
        let mut panicked = None;
        while self.running.len() < self.config.max_running.max(1) {
            let Some(w) = self.waiting.pop_front() else { break };
            let id = self.next_id;
            self.next_id += 1;
            let Generate { request, events, permit } = w.msg;
            // Starting a sequence runs engine code (a vision encoder, for one): a panic there must
            // not take the actor down, which actix would not restart.
            match catch_unwind(AssertUnwindSafe(|| engine.add(id, request))) {
                Ok(Ok(())) => {
                    let _ = events.send(SequenceMessage::Admitted(w.since.elapsed()));
                    self.running.insert(id, Running { events, _permit: permit });
                }
                Ok(Err(e)) => {
                    let _ = events.send(SequenceMessage::Failed(JobError::EngineFailed(e.message)));
                }
                Err(panic) => {
                    let reason = format!("engine panicked: {}", panic_message(&panic));
                    let _ = events.send(SequenceMessage::Failed(JobError::EngineFailed(reason.clone())));
                    panicked = Some(reason);
                    break;
                }
            }
        }
        if let Some(reason) = panicked {
            self.engine_failed(reason, ctx);
            return;
        }
        if !self.running.is_empty() && !self.step_armed {
            self.step_armed = true;
            ctx.notify(Step);
        }
    }

    fn fail_running(&mut self, error: JobError) {
        for (_, r) in self.running.drain() {
            let _ = r.events.send(SequenceMessage::Failed(error.clone()));
        }
    }

    /// The engine panicked or failed: its state is lost, so the running sequences fail, and the
    /// actor stops for its supervisor to reload the engine, or, past the restart budget, refuses
    /// the queue.
    fn engine_failed(&mut self, reason: String, ctx: &mut Context<Self>) {
        self.engine = None;
        self.fail_running(JobError::EngineFailed(reason.clone()));
        if self.supervision.fault(reason) {
            ctx.stop();
        } else {
            self.schedule(ctx);
        }
    }
}

impl<L: StepLoader> Actor for SequenceActor<L> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.supervision.mailbox_capacity());
        let loader = self.loader.clone();
        self.engine = self.supervision.load(|| loader.load(), ctx.address().recipient());
        // Waiters time out even when no step runs.
        ctx.run_interval(Duration::from_millis(50), |act, ctx| {
            if !act.waiting.is_empty() {
                act.schedule(ctx);
            }
        });
        self.schedule(ctx);
    }
}

impl<L: StepLoader> Supervised for SequenceActor<L> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.engine = None;
        self.step_armed = false;
    }
}

impl<L: StepLoader> Handler<Generate<RequestOf<L>, EventOf<L>>> for SequenceActor<L> {
    type Result = ();

    fn handle(&mut self, msg: Generate<RequestOf<L>, EventOf<L>>, ctx: &mut Context<Self>) {
        self.waiting.push_back(Waiting { msg, since: Instant::now() });
        self.schedule(ctx);
    }
}

impl<L: StepLoader> Handler<Step> for SequenceActor<L> {
    type Result = ();

    fn handle(&mut self, _: Step, ctx: &mut Context<Self>) {
        self.step_armed = false;
        let Some(engine) = self.engine.as_mut() else { return };
        // Clients that went away leave before the step costs anything.
        let gone: Vec<u64> = self.running.iter().filter(|(_, r)| r.events.is_closed()).map(|(id, _)| *id).collect();
        if !gone.is_empty() {
            self.observer.cancelled(gone.len());
            for id in &gone {
                self.running.remove(id);
            }
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| gone.iter().for_each(|id| engine.remove(*id)))) {
                self.engine_failed(format!("engine panicked: {}", panic_message(&panic)), ctx);
                return;
            }
        }
        if self.running.is_empty() {
            self.schedule(ctx);
            return;
        }
        let started = Instant::now();
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        let result = catch_unwind(AssertUnwindSafe(|| engine.step(&mut events)));
        let reason = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("engine error: {e}")),
            Err(panic) => Some(format!("engine panicked: {}", panic_message(&panic))),
        };
        self.observer.step(self.running.len(), self.waiting.len(), started.elapsed());
        if let Some(reason) = reason {
            self.events = events;
            self.engine_failed(reason, ctx);
            return;
        }
        self.supervision.succeeded();
        for (id, event, last) in events.drain(..) {
            if let Some(r) = self.running.get(&id) {
                let _ = r.events.send(SequenceMessage::Event(event));
            }
            if last {
                self.running.remove(&id);
            }
        }
        self.events = events;
        self.schedule(ctx);
    }
}

impl<L: StepLoader> Handler<Warmup> for SequenceActor<L> {
    type Result = MessageResult<Warmup>;

    fn handle(&mut self, msg: Warmup, ctx: &mut Context<Self>) -> Self::Result {
        let (outcome, stop) =
            self.supervision.handle_warmup(&mut self.engine, &msg, |e, steps, size| e.warmup(steps, size));
        if stop {
            ctx.stop();
        }
        self.schedule(ctx);
        MessageResult(outcome)
    }
}
