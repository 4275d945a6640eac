//! Model lifecycle: the states a model actor goes through, the shared status that `/health` reads,
//! and the event bus that warmup, metrics and anyone else subscribe to.

use actix::prelude::*;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::model_actor::{Warmup, WarmupOutcome};

/// Where a model actor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Weights are being loaded.
    Loading,
    /// Weights are loaded; warmup has not run yet.
    Loaded,
    /// Warmup batches are running.
    Warming,
    /// Serving requests.
    Ready,
    /// The engine failed; the supervisor is bringing it back.
    Restarting,
    /// Gave up: load failed or the engine kept failing. Requests get 503.
    Failed,
    /// Stopped on shutdown or removal.
    Stopped,
}

impl ModelState {
    /// Every state, in lifecycle order (for metrics that export one series per state).
    pub const ALL: [ModelState; 7] = [
        ModelState::Loading,
        ModelState::Loaded,
        ModelState::Warming,
        ModelState::Ready,
        ModelState::Restarting,
        ModelState::Failed,
        ModelState::Stopped,
    ];

    /// The lower-case name used in `/health` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Loaded => "loaded",
            ModelState::Warming => "warming",
            ModelState::Ready => "ready",
            ModelState::Restarting => "restarting",
            ModelState::Failed => "failed",
            ModelState::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> Self {
        Self::ALL.get(v as usize).copied().unwrap_or(ModelState::Failed)
    }

    fn to_u8(self) -> u8 {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(5) as u8
    }
}

/// Live status of one model, written by its actor and read lock-free by health checks.
#[derive(Debug)]
pub struct ModelStatus {
    model: Arc<str>,
    state: AtomicU8,
    restarts: AtomicU64,
    last_error: Mutex<Option<String>>,
    warmup: Mutex<Option<WarmupOutcome>>,
}

impl ModelStatus {
    /// A fresh status in the `loading` state.
    pub fn new(model: impl Into<Arc<str>>) -> Arc<Self> {
        Arc::new(Self {
            model: model.into(),
            state: AtomicU8::new(ModelState::Loading.to_u8()),
            restarts: AtomicU64::new(0),
            last_error: Mutex::new(None),
            warmup: Mutex::new(None),
        })
    }

    /// The status of a model that could not even start its actors (its files are missing or do not
    /// describe a model the engines can run): `failed`, with the reason.
    pub fn failed(model: impl Into<Arc<str>>, reason: String) -> Arc<Self> {
        let status = Self::new(model);
        status.set_state(ModelState::Failed);
        status.set_last_error(Some(reason));
        status
    }

    /// The status of a model that runs no actor here (another server answers it): `ready` at once.
    pub fn ready(model: impl Into<Arc<str>>) -> Arc<Self> {
        let status = Self::new(model);
        status.set_state(ModelState::Ready);
        status
    }

    /// The model id.
    pub fn model(&self) -> &Arc<str> {
        &self.model
    }

    /// The current state.
    pub fn state(&self) -> ModelState {
        ModelState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, state: ModelState) {
        self.state.store(state.to_u8(), Ordering::Release);
    }

    /// How many times the supervisor restarted the engine.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Acquire)
    }

    pub(crate) fn count_restart(&self) -> u64 {
        self.restarts.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The last load or engine error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// The result of the last warmup, if one ran.
    pub fn warmup(&self) -> Option<WarmupOutcome> {
        self.warmup.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_warmup(&self, outcome: WarmupOutcome) {
        *self.warmup.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

/// A state change of one model, broadcast to every subscriber.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct LifecycleEvent {
    /// The model id.
    pub model: Arc<str>,
    /// The state entered.
    pub state: ModelState,
    /// Why, for failures and restarts.
    pub detail: Option<String>,
    /// Restarts so far.
    pub restarts: u64,
    /// When the state was entered.
    pub at: SystemTime,
    /// On `loaded`: where to send the warmup request that makes the model ready.
    pub warmup: Option<Recipient<Warmup>>,
}

/// Adds a subscriber to the bus.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<LifecycleEvent>);

/// Publishes an event to every subscriber.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub LifecycleEvent);

/// Fan-out of lifecycle events.
#[derive(Default)]
pub struct EventBus {
    subscribers: Vec<Recipient<LifecycleEvent>>,
}

impl Actor for EventBus {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribers.push(msg.0);
    }
}

impl Handler<Publish> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        self.subscribers.retain(|s| s.connected());
        for subscriber in &self.subscribers {
            subscriber.do_send(msg.0.clone());
        }
    }
}
