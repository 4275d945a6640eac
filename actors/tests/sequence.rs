//! Tests of the continuous-batching [`SequenceActor`] with a fake step engine.
//!
//! The fake engine "generates" numbers. A sequence asks for `len` tokens; its n-th token (from 1)
//! is `seed * 1000 + n`, so every token names its sequence and its position, and a token that went
//! to the wrong client, got lost, doubled or reordered shows up in a plain `assert_eq!`. A few
//! knobs make it misbehave, so every test can tell its story:
//!
//! * `refuse` makes `add` refuse the sequence (as the chat engine refuses a prompt over the context),
//!   `panic_on_add` makes `add` panic (the vision encoder runs there, in the chat engine);
//! * `panic_on_trigger` makes the next step that holds the sequence after [`Probe::trigger`] panic
//!   (the chat engine's fault hook does the same when such a sequence joins a step);
//! * the engine sleeps `step_ms` in every step, to keep sequences running while a test acts;
//! * while the probe is [held](Probe::hold), steps advance nobody (as if prefilling), so a test can
//!   queue several sequences before the first token of any of them.
//!
//! The engine writes down every step (which sequences it advanced), every `add` and `remove` in a
//! shared [`Probe`], so tests check what really reached it. Every wait is bounded ([`PATIENCE`]): a
//! client that never gets a last message fails its test instead of hanging it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use sis_actors::{
    Admission, AdmissionError, EngineError, EventBus, Generate, JobError, ModelActorConfig, ModelState, ModelStatus,
    Permit, SequenceActor, SequenceConfig, SequenceMessage, SequenceObserver, StepEngine, StepLoader,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long any single wait may take before the test fails. Generous: the CI machine is small.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The fake engine
// ---------------------------------------------------------------------------------------------

/// What starts a fake sequence.
#[derive(Debug, Clone, Copy, Default)]
struct Seq {
    /// Names the sequence; its tokens are `seed * 1000 + n`.
    seed: u64,
    /// How many tokens it generates before it finishes.
    len: u64,
    /// `add` refuses it.
    refuse: bool,
    /// The first step holding it after the probe's trigger panics.
    panic_on_trigger: bool,
    /// `add` panics.
    panic_on_add: bool,
}

fn seq(seed: u64, len: u64) -> Seq {
    Seq { seed, len, ..Seq::default() }
}

/// The tokens a sequence must produce, whoever it shares its steps with.
fn tokens_of(s: Seq) -> Vec<u64> {
    (1..=s.len).map(|n| s.seed * 1000 + n).collect()
}

/// One generated token; `last` marks the sequence's final event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    value: u64,
    last: bool,
}

/// What the fake engine saw, shared between the test and the engine's thread.
#[derive(Default)]
struct Probe {
    /// Calls to `StepLoader::load`.
    loads: AtomicUsize,
    /// The seed of every sequence `add` accepted, by the actor's id.
    seeds: Mutex<HashMap<u64, u64>>,
    /// Seeds `add` was called with, in order (refused ones too).
    added: Mutex<Vec<u64>>,
    /// Seeds of the sequences the actor removed (clients gone).
    removed: Mutex<Vec<u64>>,
    /// The seeds each step advanced, in order.
    steps: Mutex<Vec<Vec<u64>>>,
    /// Arms the `panic_on_trigger` sequences.
    trigger: AtomicBool,
    /// While set, steps advance nobody.
    held: AtomicBool,
    /// Sleep per step.
    step_ms: u64,
}

impl Probe {
    fn with_step_ms(step_ms: u64) -> Self {
        Self { step_ms, ..Self::default() }
    }

    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    fn steps(&self) -> Vec<Vec<u64>> {
        self.steps.lock().unwrap().clone()
    }

    fn added(&self) -> Vec<u64> {
        self.added.lock().unwrap().clone()
    }

    fn removed(&self) -> Vec<u64> {
        self.removed.lock().unwrap().clone()
    }

    /// How many steps advanced the sequence with this seed.
    fn steps_of(&self, seed: u64) -> usize {
        self.steps().iter().filter(|step| step.contains(&seed)).count()
    }

    fn trigger(&self) {
        self.trigger.store(true, Ordering::SeqCst);
    }

    fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }
}

struct Running {
    request: Seq,
    generated: u64,
}

struct FakeEngine {
    probe: Arc<Probe>,
    sequences: HashMap<u64, Running>,
}

impl StepEngine for FakeEngine {
    type Request = Seq;
    type Event = Token;

    fn add(&mut self, id: u64, request: Seq) -> Result<(), EngineError> {
        self.probe.added.lock().unwrap().push(request.seed);
        if request.panic_on_add {
            panic!("fake engine: cannot start sequence {}", request.seed);
        }
        if request.refuse {
            return Err(EngineError::new(format!("sequence {} refused", request.seed)));
        }
        self.probe.seeds.lock().unwrap().insert(id, request.seed);
        self.sequences.insert(id, Running { request, generated: 0 });
        Ok(())
    }

    fn remove(&mut self, id: u64) {
        if let Some(gone) = self.sequences.remove(&id) {
            self.probe.removed.lock().unwrap().push(gone.request.seed);
        }
    }

    fn step(&mut self, events: &mut Vec<(u64, Token, bool)>) -> Result<(), EngineError> {
        if self.probe.held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
            return Ok(());
        }
        let mut ids: Vec<u64> = self.sequences.keys().copied().collect();
        ids.sort_unstable();
        let seeds: Vec<u64> = ids.iter().map(|id| self.sequences[id].request.seed).collect();
        self.probe.steps.lock().unwrap().push(seeds);
        if self.probe.step_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.probe.step_ms));
        }
        let triggered = self.probe.trigger.load(Ordering::SeqCst);
        for id in ids {
            let seq = self.sequences.get_mut(&id).expect("listed");
            if triggered && seq.request.panic_on_trigger {
                panic!("fake engine: sequence {} poisons the step", seq.request.seed);
            }
            seq.generated += 1;
            let last = seq.generated >= seq.request.len;
            events.push((id, Token { value: seq.request.seed * 1000 + seq.generated, last }, last));
            if last {
                self.sequences.remove(&id);
            }
        }
        Ok(())
    }

    fn warmup(&mut self, _steps: usize, _batch_size: usize) -> Result<(), EngineError> {
        Ok(())
    }
}

struct FakeLoader {
    probe: Arc<Probe>,
}

impl StepLoader for FakeLoader {
    type Engine = FakeEngine;

    fn load(&self) -> Result<FakeEngine, EngineError> {
        self.probe.loads.fetch_add(1, Ordering::SeqCst);
        Ok(FakeEngine { probe: self.probe.clone(), sequences: HashMap::new() })
    }
}

/// Counts what the actor reports to its observer (metrics in the server).
#[derive(Default)]
struct Observed {
    cancelled: AtomicUsize,
    /// The largest running batch any step reported.
    widest: AtomicUsize,
}

impl SequenceObserver for Observed {
    fn step(&self, running: usize, _waiting: usize, _took: Duration) {
        self.widest.fetch_max(running, Ordering::SeqCst);
    }

    fn cancelled(&self, count: usize) {
        self.cancelled.fetch_add(count, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// How to start one model.
struct Setup {
    max_running: usize,
    queue_timeout: Duration,
    max_restarts: u32,
    step_ms: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self { max_running: 4, queue_timeout: Duration::from_secs(60), max_restarts: 3, step_ms: 0 }
    }
}

struct Model {
    actor: Addr<SequenceActor<FakeLoader>>,
    status: Arc<ModelStatus>,
    probe: Arc<Probe>,
    observed: Arc<Observed>,
}

type Events = UnboundedReceiver<SequenceMessage<Token>>;

impl Setup {
    async fn start(self) -> Model {
        let probe = Arc::new(Probe::with_step_ms(self.step_ms));
        let status = ModelStatus::new("fake-llm");
        let observed = Arc::new(Observed::default());
        let actor = SequenceActor::start(
            Arc::new(FakeLoader { probe: probe.clone() }),
            status.clone(),
            EventBus::default().start(),
            ModelActorConfig {
                max_restarts: self.max_restarts,
                restart_backoff: Duration::from_millis(1),
                mailbox_capacity: 64,
            },
            SequenceConfig { max_running: self.max_running, queue_timeout: self.queue_timeout },
            observed.clone(),
        );
        let model = Model { actor, status, probe, observed };
        model.wait_until("the engine is loaded", |m| m.status.state() == ModelState::Loaded).await;
        model
    }
}

impl Model {
    /// Queues a sequence and waits until the actor has taken it in (admitted or queued).
    async fn generate(&self, request: Seq) -> Events {
        self.generate_with(request, None).await
    }

    async fn generate_with(&self, request: Seq, permit: Option<Permit>) -> Events {
        let (message, events) = Generate::new(request, permit);
        self.actor.send(message).await.expect("the actor is running");
        events
    }

    /// Polls `done` until it holds; fails the test after [`PATIENCE`].
    async fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// How a sequence ended, as its client saw it.
#[derive(Debug)]
struct Outcome {
    /// The queue wait the actor reported when the sequence joined the batch.
    admitted: Option<Duration>,
    tokens: Vec<u64>,
    /// `None` when the last token came; the error otherwise.
    failed: Option<JobError>,
}

impl Outcome {
    fn finished(&self) -> bool {
        self.failed.is_none()
    }
}

/// Next message, or a test failure if none comes within [`PATIENCE`].
async fn next(events: &mut Events) -> Option<SequenceMessage<Token>> {
    tokio::time::timeout(PATIENCE, events.recv()).await.expect("a sequence was left hanging")
}

/// Reads a client's channel to its end. Every sequence must get exactly one last message (its last
/// token or a failure) and nothing after it: the channel closes right behind it.
async fn outcome(events: Events) -> Outcome {
    read_to_end(events, Outcome { admitted: None, tokens: Vec::new(), failed: None }).await
}

/// Reads the rest of a channel whose first messages the test already read into `out`.
async fn read_to_end(mut events: Events, mut out: Outcome) -> Outcome {
    loop {
        match next(&mut events).await {
            Some(SequenceMessage::Admitted(wait)) => {
                assert!(out.admitted.is_none() && out.tokens.is_empty(), "admitted twice or late: {out:?}");
                out.admitted = Some(wait);
            }
            Some(SequenceMessage::Event(token)) => {
                assert!(out.admitted.is_some(), "a token before admission: {out:?}");
                out.tokens.push(token.value);
                if token.last {
                    break;
                }
            }
            Some(SequenceMessage::Failed(error)) => {
                out.failed = Some(error);
                break;
            }
            None => panic!("the channel closed without a last message: {out:?}"),
        }
    }
    assert!(next(&mut events).await.is_none(), "a message after the last one: {out:?}");
    out
}

/// The tokens of a sequence that must finish.
async fn tokens(events: Events) -> Vec<u64> {
    let out = outcome(events).await;
    assert!(out.finished(), "the sequence failed: {out:?}");
    out.tokens
}

/// The error of a sequence that must fail.
async fn failure(events: Events) -> JobError {
    let out = outcome(events).await;
    match out.failed {
        Some(error) => error,
        None => panic!("the sequence should have failed: {:?}", out.tokens),
    }
}

/// A client whose sequence is running: admitted, first token received, the rest still to read.
struct Started {
    events: Events,
    so_far: Outcome,
}

impl Started {
    /// Reads the rest of the channel.
    async fn outcome(self) -> Outcome {
        read_to_end(self.events, self.so_far).await
    }

    async fn failure(self) -> JobError {
        let out = self.outcome().await;
        match out.failed {
            Some(error) => error,
            None => panic!("the sequence should have failed: {:?}", out.tokens),
        }
    }
}

/// Waits until a sequence is admitted and has its first token.
async fn started(mut events: Events) -> Started {
    let admitted = match next(&mut events).await {
        Some(SequenceMessage::Admitted(wait)) => wait,
        other => panic!("expected admission, got {other:?}"),
    };
    let token = match next(&mut events).await {
        Some(SequenceMessage::Event(token)) => token,
        other => panic!("expected a token, got {other:?}"),
    };
    assert!(!token.last, "the sequence should still be running");
    Started { events, so_far: Outcome { admitted: Some(admitted), tokens: vec![token.value], failed: None } }
}

// ---------------------------------------------------------------------------------------------
// 1. Scheduling and admission
// ---------------------------------------------------------------------------------------------

/// A sequence is admitted, streams its tokens in order, and its channel closes after the last one.
#[actix_rt::test]
async fn a_sequence_streams_its_tokens_in_order_then_ends() {
    let model = Setup::default().start().await;
    let out = outcome(model.generate(seq(7, 5)).await).await;
    assert!(out.admitted.is_some());
    assert_eq!(out.tokens, vec![7001, 7002, 7003, 7004, 7005]);
    assert!(out.finished());
    assert_eq!(model.probe.steps(), vec![vec![7]; 5], "one step per token");
}

/// Five sequences ask at once for a batch of two. No step ever advances more than two; a waiter
/// joins as soon as a slot frees, while its neighbour is still mid-generation (continuous
/// batching, not batch after batch), and every sequence gets its own tokens.
#[actix_rt::test]
async fn the_running_batch_stays_within_max_running_and_waiters_join_between_steps() {
    let model = Setup { max_running: 2, ..Setup::default() }.start().await;
    let requests = [seq(1, 12), seq(2, 3), seq(3, 3), seq(4, 3), seq(5, 2)];
    model.probe.hold();
    let mut clients = Vec::new();
    for request in requests {
        clients.push(model.generate(request).await);
    }
    model.probe.release();
    let outcomes = join_all(clients.into_iter().map(tokens)).await;
    for (request, tokens) in requests.iter().zip(&outcomes) {
        assert_eq!(tokens, &tokens_of(*request), "sequence {} got someone else's tokens", request.seed);
    }

    let steps = model.probe.steps();
    assert!(steps.iter().all(|step| step.len() <= 2), "a step over max_running: {steps:?}");
    assert!(steps.iter().any(|step| step.len() == 2), "the batch was never full: {steps:?}");
    // Sequence 1 (12 tokens) was still running when 3, then 4, then 5 took the slot 2 left.
    for late in [3, 4, 5] {
        assert!(steps.iter().any(|s| s == &vec![1, late]), "{late} never ran beside 1: {steps:?}");
    }
    assert_eq!(model.observed.widest.load(Ordering::SeqCst), 2);
    // Every slot was used: 12 + 3 + 3 + 3 + 2 = 23 tokens in 12 steps of at most two.
    assert_eq!(steps.len(), 12, "{steps:?}");
}

/// The bounded queue in front of the actor (an [`Admission`] of three) admits three requests, one
/// running and two waiting, and refuses the fourth at once. Each sequence holds its permit until
/// its last message, whether it finished or not, so the queue empties when they are answered.
#[actix_rt::test]
async fn a_bounded_queue_refuses_beyond_capacity_and_every_permit_comes_back() {
    let model = Setup { max_running: 1, step_ms: 5, ..Setup::default() }.start().await;
    let queue = Admission::new(3);
    let admit = || queue.try_admit().expect("the queue has room");

    let running = model.generate_with(seq(1, 20), Some(admit())).await;
    let waiting = model.generate_with(seq(2, 2), Some(admit())).await;
    let refused = model.generate_with(Seq { refuse: true, ..seq(3, 2) }, Some(admit())).await;
    assert_eq!(queue.depth(), 3);
    assert_eq!(queue.try_admit().unwrap_err(), AdmissionError::QueueFull { capacity: 3 });

    assert_eq!(tokens(running).await, tokens_of(seq(1, 20)));
    let waited = outcome(waiting).await;
    assert_eq!(waited.tokens, tokens_of(seq(2, 2)));
    // It waited for sequence 1's twenty 5 ms steps (loosely: sleeps never end early).
    assert!(waited.admitted.unwrap() >= Duration::from_millis(50), "{waited:?}");
    match failure(refused).await {
        JobError::EngineFailed(reason) => assert!(reason.contains("sequence 3 refused"), "{reason}"),
        other => panic!("expected EngineFailed, got {other:?}"),
    }
    // The actor drops a permit together with the sequence, just after its last message.
    model.wait_until("every answered sequence gives its permit back", |_| queue.depth() == 0).await;
    assert!(queue.try_admit().is_ok());
}

/// A waiter that cannot get a slot within `queue_timeout` is refused with `QueueTimeout`, even
/// though no step finishes meanwhile; it never reaches the engine and its permit comes back.
#[actix_rt::test]
async fn a_waiter_past_the_queue_timeout_is_refused_without_reaching_the_engine() {
    let timeout = Duration::from_millis(100);
    let model = Setup { max_running: 1, queue_timeout: timeout, step_ms: 5, ..Setup::default() }.start().await;
    let queue = Admission::new(4);

    let long = started(model.generate(seq(1, 100)).await).await;
    let late = model.generate_with(seq(2, 1), Some(queue.try_admit().unwrap())).await;
    match failure(late).await {
        JobError::QueueTimeout { waited, timeout: limit } => {
            assert_eq!(limit, timeout);
            assert!(waited > timeout, "refused after {waited:?}");
        }
        other => panic!("expected QueueTimeout, got {other:?}"),
    }
    model.wait_until("the refused waiter's permit is free", |_| queue.depth() == 0).await;
    assert!(!model.probe.added().contains(&2), "a refused waiter reached the engine");
    drop(long);
}

// ---------------------------------------------------------------------------------------------
// 2. Cancellation
// ---------------------------------------------------------------------------------------------

/// A client goes away mid-generation. At the next step the actor removes its sequence from the
/// engine, reports it cancelled, and gives its slot and permit to the next waiter.
#[actix_rt::test]
async fn a_client_that_goes_away_frees_its_slot_at_the_next_step() {
    let model = Setup { max_running: 1, step_ms: 5, ..Setup::default() }.start().await;
    let queue = Admission::new(2);

    let leaving = model.generate_with(seq(1, 100_000), Some(queue.try_admit().unwrap())).await;
    let next_in_line = model.generate(seq(2, 3)).await;
    drop(started(leaving).await);
    let steps_when_gone = model.probe.steps_of(1);

    // The waiter gets the only slot and finishes.
    assert_eq!(tokens(next_in_line).await, tokens_of(seq(2, 3)));
    assert_eq!(model.probe.removed(), vec![1], "the engine was told to forget sequence 1");
    assert!(
        model.probe.steps_of(1) <= steps_when_gone + 1,
        "sequence 1 kept running after its client left: {} steps, {steps_when_gone} when it left",
        model.probe.steps_of(1)
    );
    assert_eq!(model.observed.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(queue.depth(), 0, "the cancelled sequence's permit is free");
}

/// A client that goes away while still waiting never reaches the engine.
#[actix_rt::test]
async fn a_waiter_whose_client_went_away_never_reaches_the_engine() {
    let model = Setup { max_running: 1, step_ms: 5, ..Setup::default() }.start().await;
    let queue = Admission::new(3);

    let running = started(model.generate(seq(1, 10)).await).await;
    drop(model.generate_with(seq(2, 5), Some(queue.try_admit().unwrap())).await);
    let kept = model.generate(seq(3, 2)).await;

    assert_eq!(tokens(kept).await, tokens_of(seq(3, 2)));
    assert!(!model.probe.added().contains(&2), "the abandoned waiter reached the engine");
    model.wait_until("the abandoned waiter's permit is free", |_| queue.depth() == 0).await;
    drop(running);
}

// ---------------------------------------------------------------------------------------------
// 3. Supervision
// ---------------------------------------------------------------------------------------------

/// One sequence poisons a step: the engine panics with two sequences running and one waiting.
/// Both running sequences get `EngineFailed` (their engine state is gone), the supervisor reloads
/// the engine, and the waiter is served by the new engine. No client is left without a last
/// message, and the model keeps serving.
#[actix_rt::test]
async fn a_step_that_panics_fails_the_running_batch_restarts_and_serves_the_queue() {
    let model = Setup { max_running: 2, step_ms: 2, ..Setup::default() }.start().await;

    let neighbour = model.generate(seq(1, 100_000)).await;
    let poisoned = model.generate(Seq { panic_on_trigger: true, ..seq(2, 100_000) }).await;
    let (neighbour, poisoned) = (started(neighbour).await, started(poisoned).await);
    // The batch is full: this one waits (`generate` returns once the actor has queued it).
    let waiting = model.generate(seq(3, 4)).await;
    model.probe.trigger();

    for (who, client) in [("the neighbour", neighbour), ("the poisoned sequence", poisoned)] {
        match client.failure().await {
            JobError::EngineFailed(reason) => {
                assert!(reason.contains("engine panicked") && reason.contains("poisons the step"), "{who}: {reason}")
            }
            other => panic!("{who}: expected EngineFailed, got {other:?}"),
        }
    }
    assert_eq!(tokens(waiting).await, tokens_of(seq(3, 4)), "the waiter is served after the restart");
    assert_eq!(model.probe.loads(), 2, "the engine was loaded again");
    assert_eq!(model.status.restarts(), 1);
    assert!(model.status.last_error().unwrap().contains("poisons the step"));
    assert_eq!(model.status.state(), ModelState::Loaded);
    // The new engine started empty: only the waiter ran on it, then a new request.
    assert_eq!(tokens(model.generate(seq(4, 2)).await).await, tokens_of(seq(4, 2)));
    let steps = model.probe.steps();
    let after = steps.iter().position(|s| s == &vec![3]).expect("the waiter ran");
    assert!(steps[after..].iter().all(|s| s == &vec![3] || s == &vec![4]), "{steps:?}");
}

/// Starting a sequence runs engine code too (the chat engine encodes a request's images there). A
/// panic there fails that request, and the running batch whose engine state is now in doubt; the
/// engine is reloaded and serves the requests queued behind. Without `catch_unwind` around `add`,
/// actix would let the actor die: its mailbox closed for good while `/health` still said `loaded`.
#[actix_rt::test]
async fn a_panic_while_starting_a_sequence_is_supervised_like_a_panicking_step() {
    let model = Setup { max_running: 2, step_ms: 2, ..Setup::default() }.start().await;

    let neighbour = started(model.generate(seq(1, 100_000)).await).await;
    let bad = model.generate(Seq { panic_on_add: true, ..seq(2, 3) }).await;
    let behind = model.generate(seq(3, 3)).await;

    match failure(bad).await {
        JobError::EngineFailed(reason) => assert!(reason.contains("cannot start sequence 2"), "{reason}"),
        other => panic!("expected EngineFailed, got {other:?}"),
    }
    assert!(matches!(neighbour.failure().await, JobError::EngineFailed(_)));
    assert_eq!(tokens(behind).await, tokens_of(seq(3, 3)));
    assert_eq!(model.probe.loads(), 2);
    assert_eq!(model.status.restarts(), 1);
    assert_eq!(tokens(model.generate(seq(4, 2)).await).await, tokens_of(seq(4, 2)));
}

/// When panics exhaust the restart budget the model is failed for good: the running sequences
/// fail, every waiter and every later request is refused with `Unavailable`, and nothing hangs.
#[actix_rt::test]
async fn panics_past_the_restart_budget_fail_the_model_and_refuse_everyone_cleanly() {
    let model = Setup { max_running: 1, max_restarts: 0, step_ms: 2, ..Setup::default() }.start().await;

    let poisoned = started(model.generate(Seq { panic_on_trigger: true, ..seq(1, 100_000) }).await).await;
    let waiting = model.generate(seq(2, 3)).await;
    model.probe.trigger();

    assert!(matches!(poisoned.failure().await, JobError::EngineFailed(_)));
    match failure(waiting).await {
        JobError::Unavailable(reason) => assert!(reason.contains("poisons the step"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(model.status.state(), ModelState::Failed);
    assert!(matches!(failure(model.generate(seq(3, 1)).await).await, JobError::Unavailable(_)));
    assert_eq!(model.probe.loads(), 1, "no reload past the budget");
    assert!(!model.probe.added().contains(&2) && !model.probe.added().contains(&3));
}

// ---------------------------------------------------------------------------------------------
// 4. Batch invariance
// ---------------------------------------------------------------------------------------------

/// A sequence's tokens do not depend on who it shares its steps with. Six sequences run alone,
/// one after the other; then together, four at a time, while neighbours join, finish, are refused
/// and walk away around them. Each gets the same tokens both times.
///
/// The fake engine computes each sequence's tokens from that sequence alone, so what this checks
/// is the actor's side of batch invariance: events reach the right client, in order, none lost or
/// doubled, whatever happens in the rest of the batch. (The real engines' side, identical logits
/// alone or batched, is checked against the real models in the server tests.)
#[actix_rt::test]
async fn a_sequence_gets_the_same_tokens_alone_or_in_a_crowd() {
    let requests: Vec<Seq> = (1..=6).map(|s| seq(s, 2 + (s * 7) % 11)).collect();

    let alone = Setup::default().start().await;
    let mut solo = Vec::new();
    for &request in &requests {
        solo.push(tokens(alone.generate(request).await).await);
        assert!(alone.probe.steps().iter().all(|step| step.len() == 1), "alone means alone");
    }

    let crowd = Setup { max_running: 4, step_ms: 1, ..Setup::default() }.start().await;
    crowd.probe.hold();
    let leaving = crowd.generate(seq(90, 100_000)).await;
    let mut clients = Vec::new();
    for (i, &request) in requests.iter().enumerate() {
        clients.push(crowd.generate(request).await);
        if i == 2 {
            clients.push(crowd.generate(Seq { refuse: true, ..seq(91, 5) }).await);
        }
    }
    crowd.probe.release();
    let crowded = join_all(clients.into_iter().map(outcome));
    let (outcomes, ()) = futures_util::join!(crowded, async {
        drop(started(leaving).await);
    });
    let outcomes: Vec<Outcome> = outcomes;
    let together: Vec<Vec<u64>> = outcomes.iter().filter(|o| o.finished()).map(|o| o.tokens.clone()).collect();
    assert_eq!(outcomes.iter().filter(|o| !o.finished()).count(), 1, "only the refused sequence fails");

    assert_eq!(together, solo);
    for (request, tokens) in requests.iter().zip(&solo) {
        assert_eq!(tokens, &tokens_of(*request));
    }
    let steps = crowd.probe.steps();
    assert!(steps.iter().any(|s| s.len() == 4), "they really shared steps: {steps:?}");
    assert!(steps.iter().all(|s| s.len() <= 4), "{steps:?}");
}
