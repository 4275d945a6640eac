//! Runtime tests of `sis-actors` with a fake engine.
//!
//! The fake engine doubles numbers: input `n` gives output `2 * n`. A few magic inputs make it
//! misbehave, so every test can tell its story with plain numbers:
//!
//! * [`PANIC`] makes `infer` panic, [`FAIL`] makes it return an error;
//! * `slow(ms)` makes `infer` sleep `ms` milliseconds, to keep the model busy while a test queues work.
//!
//! The engine records every batch it starts and every warmup it runs in a shared [`Probe`], so tests
//! can check what really reached it. Every wait in this file is bounded ([`PATIENCE`]): a job that is
//! never answered fails its test instead of hanging it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use sis_actors::{
    Admission, AdmissionError, BatchItem, BatchObserver, Batcher, BatcherConfig, Engine, EngineError, EngineLoader,
    EventBus, JobError, JobOutput, LifecycleEvent, ModelActor, ModelActorConfig, ModelState, ModelStatus, Permit,
    RunBatch, Submit, Subscribe, WarmupActor, WarmupPolicy,
};
use tokio::sync::oneshot;

/// How long any single wait may take before the test fails. Generous: the CI machine is small.
const PATIENCE: Duration = Duration::from_secs(20);

/// Makes the fake engine panic inside `infer`.
const PANIC: u32 = 90_001;
/// Makes the fake engine return an `EngineError` from `infer`.
const FAIL: u32 = 90_002;
/// `SLOW + ms` makes the fake engine sleep `ms` milliseconds before answering.
const SLOW: u32 = 1_000_000;

/// An input that keeps the engine busy for `ms` milliseconds.
fn slow(ms: u32) -> u32 {
    SLOW + ms
}

// ---------------------------------------------------------------------------------------------
// The fake engine
// ---------------------------------------------------------------------------------------------

/// One input of the fake engine: a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item(u32);

impl BatchItem for Item {
    /// The cost ("tokens") is the last decimal digit plus one (1..=10), so tests pick costs freely
    /// while keeping every value unique.
    fn cost(&self) -> usize {
        (self.0 % 10) as usize + 1
    }
}

fn cost_of(value: u32) -> usize {
    Item(value).cost()
}

/// What the fake engine saw, shared between the test and the engine's thread.
#[derive(Default)]
struct Probe {
    /// Calls to `EngineLoader::load`.
    loads: AtomicUsize,
    /// Every batch `infer` started, in order.
    batches: Mutex<Vec<Vec<u32>>>,
    /// Every `warmup(steps, batch_size)` call.
    warmups: Mutex<Vec<(usize, usize)>>,
    /// The thread of every batch (one per model actor).
    threads: Mutex<Vec<std::thread::ThreadId>>,
    /// Warmups running now, and the most that ever ran at once.
    warming: AtomicUsize,
    most_warming: AtomicUsize,
}

impl Probe {
    fn batches(&self) -> Vec<Vec<u32>> {
        self.batches.lock().unwrap().clone()
    }

    /// Every input the engine ever saw.
    fn inputs(&self) -> Vec<u32> {
        self.batches().concat()
    }

    fn saw(&self, value: u32) -> bool {
        self.inputs().contains(&value)
    }

    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    fn warmups(&self) -> Vec<(usize, usize)> {
        self.warmups.lock().unwrap().clone()
    }
}

struct FakeEngine {
    probe: Arc<Probe>,
}

impl Engine for FakeEngine {
    type Input = Item;
    type Output = u64;

    fn infer(&mut self, batch: &[Item]) -> Result<Vec<u64>, EngineError> {
        let values: Vec<u32> = batch.iter().map(|item| item.0).collect();
        self.probe.batches.lock().unwrap().push(values.clone());
        self.probe.threads.lock().unwrap().push(std::thread::current().id());
        for &value in &values {
            if value > SLOW {
                std::thread::sleep(Duration::from_millis(u64::from(value - SLOW)));
            }
        }
        if values.contains(&PANIC) {
            panic!("fake engine hit the magic panic input");
        }
        if values.contains(&FAIL) {
            return Err(EngineError::new("fake engine refused the magic fail input"));
        }
        Ok(values.iter().map(|&v| u64::from(v) * 2).collect())
    }

    fn warmup(&mut self, steps: usize, batch_size: usize) -> Result<(), EngineError> {
        self.probe.warmups.lock().unwrap().push((steps, batch_size));
        let now = self.probe.warming.fetch_add(1, Ordering::SeqCst) + 1;
        self.probe.most_warming.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        self.probe.warming.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Loads a [`FakeEngine`]; the first `failing_loads` loads fail (with an error retrying cannot fix
/// when `permanent`).
struct FakeLoader {
    probe: Arc<Probe>,
    failing_loads: usize,
    permanent: bool,
}

impl EngineLoader for FakeLoader {
    type Engine = FakeEngine;

    fn load(&self) -> Result<FakeEngine, EngineError> {
        let attempt = self.probe.loads.fetch_add(1, Ordering::SeqCst);
        if attempt < self.failing_loads {
            let message = format!("weights missing (attempt {})", attempt + 1);
            return Err(if self.permanent { EngineError::permanent(message) } else { EngineError::new(message) });
        }
        Ok(FakeEngine { probe: self.probe.clone() })
    }
}

// ---------------------------------------------------------------------------------------------
// Recording subscribers
// ---------------------------------------------------------------------------------------------

/// One lifecycle event as a subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    state: ModelState,
    restarts: u64,
    detail: Option<String>,
}

/// A bus subscriber that writes down every lifecycle event it receives.
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<LifecycleEvent> for Recorder {
    type Result = ();

    fn handle(&mut self, event: LifecycleEvent, _: &mut Context<Self>) {
        self.seen.lock().unwrap().push(Seen { state: event.state, restarts: event.restarts, detail: event.detail });
    }
}

/// A batch observer that writes down `(items, cost)` of every dispatched batch.
#[derive(Default)]
struct Dispatches(Mutex<Vec<(usize, usize)>>);

impl BatchObserver for Dispatches {
    fn batch_dispatched(&self, items: usize, cost: usize, _oldest_wait: Duration) {
        self.0.lock().unwrap().push((items, cost));
    }
}

// ---------------------------------------------------------------------------------------------
// Harness: a bus, a supervised model actor and a batcher in front of it
// ---------------------------------------------------------------------------------------------

type Reply = oneshot::Receiver<Result<JobOutput<u64>, JobError>>;

/// How to start one model.
struct Setup {
    name: &'static str,
    failing_loads: usize,
    permanent_load_error: bool,
    model: ModelActorConfig,
    batcher: BatcherConfig,
    warmup: Option<WarmupPolicy>,
    /// Model actors (workers) behind the batcher, each with its own engine.
    workers: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            name: "fake",
            failing_loads: 0,
            permanent_load_error: false,
            model: ModelActorConfig {
                max_restarts: 3,
                restart_backoff: Duration::from_millis(1),
                mailbox_capacity: 64,
            },
            batcher: BatcherConfig {
                window: Duration::ZERO,
                max_items: 8,
                max_tokens: 1_000,
                max_in_flight: 1,
                queue_timeout: Duration::from_secs(60),
            },
            warmup: None,
            workers: 1,
        }
    }
}

struct Harness {
    batcher: Addr<Batcher<Item, u64>>,
    status: Arc<ModelStatus>,
    probe: Arc<Probe>,
    events: Arc<Mutex<Vec<Seen>>>,
    dispatches: Arc<Dispatches>,
}

impl Setup {
    async fn start(self) -> Harness {
        let bus = EventBus::default().start();
        // Subscribe before the model starts, so that no event is missed.
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder { seen: events.clone() }.start();
        bus.send(Subscribe(recorder.recipient())).await.unwrap();
        if let Some(policy) = self.warmup {
            let warmer = WarmupActor::new(policy).start();
            bus.send(Subscribe(warmer.recipient())).await.unwrap();
        }

        let probe = Arc::new(Probe::default());
        let loader = Arc::new(FakeLoader {
            probe: probe.clone(),
            failing_loads: self.failing_loads,
            permanent: self.permanent_load_error,
        });
        let status = ModelStatus::new(self.name);
        let workers = (0..self.workers.max(1))
            .map(|_| ModelActor::start(loader.clone(), status.clone(), bus.clone(), self.model.clone()).recipient())
            .collect();

        let dispatches = Arc::new(Dispatches::default());
        let batcher = Batcher::with_workers(self.batcher, workers, dispatches.clone()).start();
        Harness { batcher, status, probe, events, dispatches }
    }
}

impl Harness {
    /// Hands a job to the batcher without waiting for it to be handled.
    fn submit(&self, inputs: &[u32]) -> Reply {
        self.submit_with(inputs, None)
    }

    fn submit_with(&self, inputs: &[u32], permit: Option<Permit>) -> Reply {
        let (job, reply) = Submit::new(inputs.iter().copied().map(Item).collect(), permit);
        self.batcher.do_send(job);
        reply
    }

    /// Hands a job to the batcher and waits until the batcher has handled (queued or dispatched) it.
    async fn submit_now(&self, inputs: &[u32]) -> Reply {
        let (job, reply) = Submit::new(inputs.iter().copied().map(Item).collect(), None);
        self.batcher.send(job).await.expect("batcher is running");
        reply
    }

    fn states(&self) -> Vec<ModelState> {
        self.events.lock().unwrap().iter().map(|seen| seen.state).collect()
    }

    fn events(&self) -> Vec<Seen> {
        self.events.lock().unwrap().clone()
    }

    async fn wait_for_state(&self, state: ModelState) {
        let status = self.status.clone();
        wait_until(&format!("model is {state:?}"), move || status.state() == state).await;
    }

    /// Waits until the engine has started a batch holding `value`.
    async fn wait_until_engine_runs(&self, value: u32) {
        let probe = self.probe.clone();
        wait_until(&format!("engine runs {value}"), move || probe.saw(value)).await;
    }
}

/// Polls `done` until it holds; fails the test after [`PATIENCE`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for a job's answer; fails the test if it never comes or the reply was dropped unanswered.
async fn answer(reply: Reply) -> Result<JobOutput<u64>, JobError> {
    tokio::time::timeout(PATIENCE, reply)
        .await
        .expect("job was never answered")
        .expect("batcher dropped the job without answering it")
}

/// The outputs of a job that must succeed.
async fn outputs(reply: Reply) -> Vec<u64> {
    match answer(reply).await {
        Ok(output) => output.outputs,
        Err(err) => panic!("job failed: {err:?}"),
    }
}

fn doubled(inputs: &[u32]) -> Vec<u64> {
    inputs.iter().map(|&v| u64::from(v) * 2).collect()
}

fn sorted(mut values: Vec<u32>) -> Vec<u32> {
    values.sort_unstable();
    values
}

// ---------------------------------------------------------------------------------------------
// 1. Batching
// ---------------------------------------------------------------------------------------------

/// Sixty clients send jobs of one to five inputs at once. Each must get back exactly its own
/// outputs in its own order, while every batch the engine runs stays within the item and token
/// budgets.
#[actix_rt::test]
async fn concurrent_jobs_get_their_own_outputs_within_budgets() {
    let (max_items, max_tokens) = (8, 32);
    let model = Setup {
        batcher: BatcherConfig {
            window: Duration::from_millis(10),
            max_items,
            max_tokens,
            max_in_flight: 2,
            queue_timeout: Duration::from_secs(60),
        },
        ..Setup::default()
    }
    .start()
    .await;

    // Job j has (j % 5) + 1 inputs; all values are unique and their costs vary from 1 to 10.
    let jobs: Vec<Vec<u32>> =
        (0..60u32).map(|j| (0..=j % 5).map(|k| 100 * j + 10 * k + (j + k) % 10).collect()).collect();
    // Submit everything before the batcher gets to run, then wait for all answers together.
    let replies: Vec<Reply> = jobs.iter().map(|inputs| model.submit(inputs)).collect();
    let answers = join_all(replies.into_iter().map(outputs)).await;

    for (inputs, outputs) in jobs.iter().zip(&answers) {
        assert_eq!(outputs, &doubled(inputs), "job {inputs:?} got someone else's outputs");
    }

    let batches = model.probe.batches();
    for batch in &batches {
        let cost: usize = batch.iter().map(|&v| cost_of(v)).sum();
        assert!(batch.len() <= max_items, "batch of {} items: {batch:?}", batch.len());
        assert!(cost <= max_tokens, "batch costing {cost} tokens: {batch:?}");
    }
    // Every input reached the engine exactly once.
    assert_eq!(sorted(model.probe.inputs()), sorted(jobs.concat()));
    // Under this load the batcher really batched.
    assert!(batches.len() < jobs.concat().len(), "{} batches for {} inputs", batches.len(), jobs.concat().len());
    // The observer saw the same batches the engine ran.
    let observed = model.dispatches.0.lock().unwrap().clone();
    let ran: Vec<(usize, usize)> = batches.iter().map(|b| (b.len(), b.iter().map(|&v| cost_of(v)).sum())).collect();
    assert_eq!(observed, ran);
}

/// While the model is idle the batcher waits up to `window` after the first input, so small jobs
/// arriving together share one batch.
#[actix_rt::test]
async fn window_gathers_small_jobs_into_one_batch() {
    let window = Duration::from_millis(200);
    let model =
        Setup { batcher: BatcherConfig { window, max_items: 16, ..Setup::default().batcher }, ..Setup::default() }
            .start()
            .await;
    model.wait_for_state(ModelState::Loaded).await;

    let jobs = [vec![11], vec![12, 13], vec![14], vec![15]];
    let replies: Vec<Reply> = jobs.iter().map(|inputs| model.submit(inputs)).collect();
    for (inputs, reply) in jobs.iter().zip(replies) {
        let output = answer(reply).await.expect("job succeeds");
        assert_eq!(output.outputs, doubled(inputs));
        // Each job waited for the window (loosely: timers never fire early, but keep slack).
        assert!(output.queue_wait >= window / 2, "queue_wait {:?}", output.queue_wait);
    }

    assert_eq!(model.probe.batches().len(), 1, "batches: {:?}", model.probe.batches());
    assert_eq!(sorted(model.probe.inputs()), vec![11, 12, 13, 14, 15]);
}

/// When the pending inputs do not fit one batch, the batcher starts from the oldest input and adds
/// the inputs closest to it in cost; an input costing more than `max_tokens` runs alone.
#[actix_rt::test]
async fn batches_group_similar_costs_and_oversized_inputs_run_alone() {
    let model = Setup {
        batcher: BatcherConfig { max_items: 2, max_tokens: 9, ..Setup::default().batcher },
        ..Setup::default()
    }
    .start()
    .await;
    model.wait_for_state(ModelState::Loaded).await;

    // Costs: 0 → 1, 9 → 10 (over budget), 1 → 2, 8 → 9.
    let inputs = [0, 9, 1, 8];
    assert_eq!(outputs(model.submit(&inputs)).await, doubled(&inputs));

    let batches: Vec<Vec<u32>> = model.probe.batches().into_iter().map(sorted).collect();
    assert_eq!(batches, vec![vec![0, 1], vec![9], vec![8]]);
}

// ---------------------------------------------------------------------------------------------
// 2. Supervision
// ---------------------------------------------------------------------------------------------

/// The engine panics on one job. That job is answered with `EngineFailed`; the supervisor reloads
/// the engine on the same mailbox, so the batches already queued at the model actor and the jobs
/// still waiting in the batcher are all served by the new engine.
#[actix_rt::test]
async fn a_panicking_engine_is_restarted_and_serves_the_queue() {
    let model = Setup {
        batcher: BatcherConfig { max_items: 4, max_in_flight: 3, ..Setup::default().batcher },
        ..Setup::default()
    }
    .start()
    .await;
    model.wait_for_state(ModelState::Loaded).await;

    // Keep the engine busy, so the next batches pile up in the model actor's mailbox.
    let busy = model.submit_now(&[slow(1500)]).await;
    model.wait_until_engine_runs(slow(1500)).await;
    // Two more batches go to the mailbox (3 in flight): the poisoned job, then a healthy one.
    let poisoned = model.submit_now(&[5, PANIC]).await;
    let behind_in_mailbox = model.submit_now(&[6, 7]).await;
    // The model has 3 batches now, so these two wait in the batcher.
    let pending_a = model.submit_now(&[8]).await;
    let pending_b = model.submit_now(&[9, 10]).await;

    assert_eq!(outputs(busy).await, doubled(&[slow(1500)]));
    match answer(poisoned).await {
        Err(JobError::EngineFailed(reason)) => assert!(reason.contains("magic panic"), "{reason}"),
        other => panic!("the poisoned job should fail, got {other:?}"),
    }
    assert_eq!(outputs(behind_in_mailbox).await, doubled(&[6, 7]));
    assert_eq!(outputs(pending_a).await, doubled(&[8]));
    assert_eq!(outputs(pending_b).await, doubled(&[9, 10]));

    // What the engine ran: the two pending jobs left the batcher together, after the restart.
    let batches: Vec<Vec<u32>> = model.probe.batches().into_iter().map(sorted).collect();
    assert_eq!(batches, vec![vec![slow(1500)], vec![5, PANIC], vec![6, 7], vec![8, 9, 10]]);
    assert_eq!(model.probe.loads(), 2, "engine loaded once more after the panic");
    assert_eq!(model.status.restarts(), 1);
    assert_eq!(model.status.state(), ModelState::Loaded);
    assert!(model.status.last_error().unwrap().contains("engine panicked"));

    // Subscribers saw the restart: Restarting, then Loading and Loaded again.
    wait_until("five lifecycle events", || model.states().len() >= 5).await;
    let events = model.events();
    let seen: Vec<(ModelState, u64)> = events.iter().map(|e| (e.state, e.restarts)).collect();
    assert_eq!(
        seen,
        vec![
            (ModelState::Loading, 0),
            (ModelState::Loaded, 0),
            (ModelState::Restarting, 1),
            (ModelState::Loading, 1),
            (ModelState::Loaded, 1),
        ]
    );
    assert!(events[2].detail.as_deref().unwrap().contains("magic panic"));
}

/// An engine that returns an error (rather than panicking) is treated the same way: the job gets
/// `EngineFailed` with the engine's message, the engine is reloaded and the next job is served.
#[actix_rt::test]
async fn an_engine_error_fails_the_job_and_restarts_the_engine() {
    let model = Setup::default().start().await;
    model.wait_for_state(ModelState::Loaded).await;

    match answer(model.submit(&[3, FAIL])).await {
        Err(JobError::EngineFailed(reason)) => assert!(reason.contains("magic fail"), "{reason}"),
        other => panic!("expected EngineFailed, got {other:?}"),
    }
    assert_eq!(outputs(model.submit(&[4])).await, vec![8]);
    assert_eq!(model.status.restarts(), 1);
    assert_eq!(model.probe.loads(), 2);
}

/// A job split over several batches fails as a whole when one of its batches fails: its other
/// inputs, still waiting in the batcher, are dropped and never cost any inference. Other jobs in
/// the queue are unaffected.
#[actix_rt::test]
async fn a_failed_batch_fails_the_whole_split_job() {
    let model =
        Setup { batcher: BatcherConfig { max_items: 2, ..Setup::default().batcher }, ..Setup::default() }.start().await;
    model.wait_for_state(ModelState::Loaded).await;

    // Costs 1, 2, 9, 10: the first batch is [0, PANIC], then 8 and 9 would follow.
    let split = model.submit(&[0, PANIC, 8, 9]);
    let other = model.submit(&[5]);
    assert!(matches!(answer(split).await, Err(JobError::EngineFailed(_))));
    assert_eq!(outputs(other).await, vec![10]);

    let batches: Vec<Vec<u32>> = model.probe.batches().into_iter().map(sorted).collect();
    assert_eq!(batches, vec![vec![0, PANIC], vec![5]]);
}

/// Three jobs share one batch and one of them poisons it. The batcher cannot tell which, so after
/// the restart it retries each job alone: only the poisoned job fails, its neighbours are served.
#[actix_rt::test]
async fn a_poisoned_job_does_not_fail_the_jobs_that_shared_its_batch() {
    let window = Duration::from_millis(100);
    let model =
        Setup { batcher: BatcherConfig { window, ..Setup::default().batcher }, ..Setup::default() }.start().await;
    model.wait_for_state(ModelState::Loaded).await;

    let before = model.submit(&[1]);
    let poisoned = model.submit(&[2, PANIC]);
    let after = model.submit(&[3, 4]);
    assert_eq!(outputs(before).await, vec![2]);
    match answer(poisoned).await {
        Err(JobError::EngineFailed(reason)) => assert!(reason.contains("magic panic"), "{reason}"),
        other => panic!("the poisoned job should fail, got {other:?}"),
    }
    assert_eq!(outputs(after).await, doubled(&[3, 4]));

    let batches: Vec<Vec<u32>> = model.probe.batches().into_iter().map(sorted).collect();
    assert_eq!(batches, vec![vec![1, 2, 3, 4, PANIC], vec![1], vec![2, PANIC], vec![3, 4]]);
    assert_eq!(model.status.restarts(), 2, "the shared batch and the poisoned job alone both panicked");
}

/// Failures in a row beyond `max_restarts` mark the model failed for good; later jobs are refused
/// with `Unavailable` without reaching the engine.
#[actix_rt::test]
async fn repeated_engine_failures_exhaust_the_restart_budget() {
    let model = Setup { model: ModelActorConfig { max_restarts: 1, ..Setup::default().model }, ..Setup::default() }
        .start()
        .await;
    model.wait_for_state(ModelState::Loaded).await;

    for _ in 0..2 {
        assert!(matches!(answer(model.submit(&[PANIC])).await, Err(JobError::EngineFailed(_))));
    }
    model.wait_for_state(ModelState::Failed).await;
    assert!(matches!(answer(model.submit(&[21])).await, Err(JobError::Unavailable(_))));
    assert!(!model.probe.saw(21));
    assert_eq!(model.status.restarts(), 1);
}

// ---------------------------------------------------------------------------------------------
// 3. Loading
// ---------------------------------------------------------------------------------------------

/// A loader that never succeeds is tried `max_restarts + 1` times with backoff, then the model is
/// `Failed` and jobs get `Unavailable` carrying the last load error.
#[actix_rt::test]
async fn a_loader_that_always_fails_ends_in_failed() {
    let model = Setup {
        failing_loads: usize::MAX,
        model: ModelActorConfig { max_restarts: 2, ..Setup::default().model },
        ..Setup::default()
    }
    .start()
    .await;

    model.wait_for_state(ModelState::Failed).await;
    assert_eq!(model.probe.loads(), 3, "max_restarts + 1 attempts");
    assert_eq!(model.status.restarts(), 2);
    assert!(model.status.last_error().unwrap().contains("weights missing (attempt 3)"));

    match answer(model.submit(&[1, 2])).await {
        Err(JobError::Unavailable(reason)) => {
            assert!(reason.contains("weights missing"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(model.probe.batches().is_empty(), "no engine, no batches");

    wait_until("six lifecycle events", || model.states().len() >= 6).await;
    use ModelState::*;
    assert_eq!(model.states(), vec![Loading, Restarting, Loading, Restarting, Loading, Failed]);
}

/// A load error that retrying cannot fix (say, an architecture the engine does not support) marks the
/// model failed at the first attempt, with no restarts spent and no backoff waited.
#[actix_rt::test]
async fn a_permanent_load_error_fails_at_once() {
    let model = Setup { failing_loads: usize::MAX, permanent_load_error: true, ..Setup::default() }.start().await;

    model.wait_for_state(ModelState::Failed).await;
    assert_eq!(model.probe.loads(), 1, "one attempt");
    assert_eq!(model.status.restarts(), 0);
    assert!(model.status.last_error().unwrap().contains("weights missing (attempt 1)"));
    wait_until("two lifecycle events", || model.states().len() >= 2).await;
    assert_eq!(model.states(), vec![ModelState::Loading, ModelState::Failed]);
}

/// A loader that fails once is retried; the model then loads and serves.
#[actix_rt::test]
async fn a_flaky_loader_is_retried_until_it_loads() {
    let model = Setup { failing_loads: 1, ..Setup::default() }.start().await;

    model.wait_for_state(ModelState::Loaded).await;
    assert_eq!(model.probe.loads(), 2);
    assert_eq!(model.status.restarts(), 1);
    assert_eq!(outputs(model.submit(&[7])).await, vec![14]);
}

// ---------------------------------------------------------------------------------------------
// 4. Queue timeout
// ---------------------------------------------------------------------------------------------

/// One slow batch holds the only in-flight slot; jobs behind it wait longer than `queue_timeout`
/// and are refused with `QueueTimeout`. Every job is answered, none of the refused ones reaches
/// the engine, and the batcher keeps serving afterwards.
#[actix_rt::test]
async fn jobs_waiting_longer_than_the_queue_timeout_are_refused() {
    let timeout = Duration::from_millis(100);
    let model = Setup {
        batcher: BatcherConfig { max_in_flight: 1, queue_timeout: timeout, ..Setup::default().batcher },
        ..Setup::default()
    }
    .start()
    .await;
    model.wait_for_state(ModelState::Loaded).await;
    let admission = Admission::new(16);

    let busy = model.submit_with(&[slow(1500)], Some(admission.try_admit().unwrap()));
    model.wait_until_engine_runs(slow(1500)).await;
    let late: Vec<Reply> =
        (31..36).map(|v| model.submit_with(&[v, v + 10], Some(admission.try_admit().unwrap()))).collect();

    for reply in late {
        match answer(reply).await {
            Err(JobError::QueueTimeout { waited, timeout: limit }) => {
                assert_eq!(limit, timeout);
                assert!(waited > timeout, "waited {waited:?}");
            }
            other => panic!("expected QueueTimeout, got {other:?}"),
        }
    }
    assert_eq!(outputs(busy).await, doubled(&[slow(1500)]));
    assert!((31..46).all(|v| !model.probe.saw(v)), "a refused job reached the engine");
    assert_eq!(admission.depth(), 0, "refused jobs gave their permits back");

    // The model is idle again: a new job is served.
    assert_eq!(outputs(model.submit(&[50])).await, vec![100]);
}

// ---------------------------------------------------------------------------------------------
// 5. Warmup
// ---------------------------------------------------------------------------------------------

/// The warmup actor answers `Loaded` with a warmup of the configured steps; the model becomes
/// `Ready`. A model on the skiplist becomes `Ready` without warming.
#[actix_rt::test]
async fn warmup_makes_models_ready_and_honours_the_skiplist() {
    let policy = WarmupPolicy {
        enabled: true,
        steps: 2,
        batch_size: 3,
        allowlist: Vec::new(),
        skiplist: vec!["cold".to_string()],
        ..WarmupPolicy::default()
    };
    let warm = Setup { name: "warm", warmup: Some(policy.clone()), ..Setup::default() }.start().await;
    let cold = Setup { name: "cold", warmup: Some(policy), ..Setup::default() }.start().await;

    warm.wait_for_state(ModelState::Ready).await;
    let outcome = warm.status.warmup().expect("warmup outcome recorded");
    assert!(outcome.ok && !outcome.skipped, "{outcome:?}");
    assert_eq!((outcome.steps, outcome.batch_size), (2, 3));
    assert_eq!(warm.probe.warmups(), vec![(2, 3)]);
    use ModelState::*;
    wait_until("warm model's events", || warm.states().len() >= 4).await;
    assert_eq!(warm.states(), vec![Loading, Loaded, Warming, Ready]);

    cold.wait_for_state(ModelState::Ready).await;
    let outcome = cold.status.warmup().expect("warmup outcome recorded");
    assert!(outcome.ok && outcome.skipped, "{outcome:?}");
    assert_eq!(outcome.steps, 0);
    assert!(cold.probe.warmups().is_empty(), "skipped model was warmed");
    wait_until("cold model's events", || cold.states().len() >= 3).await;
    assert_eq!(cold.states(), vec![Loading, Loaded, Ready]);

    // Both serve.
    assert_eq!(outputs(warm.submit(&[1])).await, vec![2]);
    assert_eq!(outputs(cold.submit(&[2])).await, vec![4]);
}

/// After a restart the reloaded engine is warmed again before the model is `Ready` again.
#[actix_rt::test]
async fn warmup_runs_again_after_a_restart() {
    let policy = WarmupPolicy { enabled: true, steps: 1, batch_size: 2, ..WarmupPolicy::default() };
    let model = Setup { warmup: Some(policy), ..Setup::default() }.start().await;
    model.wait_for_state(ModelState::Ready).await;

    assert!(matches!(answer(model.submit(&[PANIC])).await, Err(JobError::EngineFailed(_))));
    wait_until("a second warmup", || model.probe.warmups().len() == 2).await;
    model.wait_for_state(ModelState::Ready).await;
    assert_eq!(model.status.restarts(), 1);
    assert_eq!(outputs(model.submit(&[6])).await, vec![12]);
}

/// A GPU's warmup memory budget (`parallel`, from `WARMUP_VRAM_BUDGET_MB / WARMUP_VRAM_PER_WORKER_MB`)
/// bounds how many workers of the bounded models warm at once; every one still warms and is ready.
#[actix_rt::test]
async fn a_warmup_budget_lets_workers_warm_one_at_a_time() {
    let policy = WarmupPolicy {
        enabled: true,
        steps: 1,
        batch_size: 1,
        parallel: Some(1),
        bounded: vec!["gpu".to_string()],
        ..WarmupPolicy::default()
    };
    let model = Setup { name: "gpu", warmup: Some(policy), workers: 3, ..Setup::default() }.start().await;
    wait_until("three warmups", || model.probe.warmups().len() == 3).await;
    model.wait_for_state(ModelState::Ready).await;
    assert_eq!(model.probe.most_warming.load(Ordering::SeqCst), 1, "warmups overlapped");
    assert_eq!(outputs(model.submit(&[3])).await, vec![6]);
}

// ---------------------------------------------------------------------------------------------
// 6. Admission
// ---------------------------------------------------------------------------------------------

/// Each job holds an admission permit until it is answered, whatever the answer: success, engine
/// failure or an empty job. Afterwards the queue is empty and admits again.
#[actix_rt::test]
async fn permits_are_released_when_jobs_are_answered() {
    let model = Setup { batcher: BatcherConfig { max_in_flight: 2, ..Setup::default().batcher }, ..Setup::default() }
        .start()
        .await;
    model.wait_for_state(ModelState::Loaded).await;
    let admission = Admission::new(5);

    let admit = || admission.try_admit().expect("queue has room");
    let busy = model.submit_with(&[slow(500)], Some(admit()));
    let failing = model.submit_with(&[PANIC], Some(admit()));
    let fine: Vec<Reply> = [[1, 2], [3, 4], [5, 6]].iter().map(|i| model.submit_with(i, Some(admit()))).collect();
    // Five jobs are admitted and none is answered yet: the queue is full.
    assert_eq!(admission.depth(), 5);
    assert_eq!(admission.try_admit().unwrap_err(), AdmissionError::QueueFull { capacity: 5 });

    assert!(answer(busy).await.is_ok());
    assert!(matches!(answer(failing).await, Err(JobError::EngineFailed(_))));
    for reply in fine {
        assert!(answer(reply).await.is_ok());
    }
    assert_eq!(admission.depth(), 0);

    // An empty job is answered at once and gives its permit back too.
    let empty = model.submit_with(&[], Some(admission.try_admit().unwrap()));
    assert!(outputs(empty).await.is_empty());
    assert_eq!(admission.depth(), 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Cancellation
// ---------------------------------------------------------------------------------------------

/// A job whose client hung up before its batch left is dropped without costing any inference,
/// whether it was waiting for a busy model or for the batching window; its permit is released.
#[actix_rt::test]
async fn a_cancelled_job_never_reaches_the_engine() {
    // Waiting behind a busy model.
    let model = Setup::default().start().await; // max_in_flight 1
    model.wait_for_state(ModelState::Loaded).await;
    let admission = Admission::new(4);

    let busy = model.submit(&[slow(500)]);
    model.wait_until_engine_runs(slow(500)).await;
    drop(model.submit_with(&[4242], Some(admission.try_admit().unwrap()))); // the client hangs up
    let kept = model.submit(&[77]);
    assert!(answer(busy).await.is_ok());
    assert_eq!(outputs(kept).await, vec![154]);
    assert!(!model.probe.saw(4242), "cancelled input reached the engine");
    wait_until("the cancelled job's permit is released", || admission.depth() == 0).await;

    // Waiting for the batching window.
    let model = Setup {
        batcher: BatcherConfig { window: Duration::from_millis(300), ..Setup::default().batcher },
        ..Setup::default()
    }
    .start()
    .await;
    model.wait_for_state(ModelState::Loaded).await;
    drop(model.submit(&[4343]));
    let kept = model.submit(&[88]);
    assert_eq!(outputs(kept).await, vec![176]);
    assert_eq!(model.probe.batches(), vec![vec![88]]);
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// Several models side by side keep their batches apart.
#[actix_rt::test]
async fn models_do_not_share_batches() {
    let a = Setup { name: "a", ..Setup::default() }.start().await;
    let b = Setup { name: "b", ..Setup::default() }.start().await;
    let (from_a, from_b) = (a.submit(&[1, 2]), b.submit(&[3]));
    assert_eq!(outputs(from_a).await, vec![2, 4]);
    assert_eq!(outputs(from_b).await, vec![6]);
    assert_eq!(a.probe.inputs(), vec![1, 2]);
    assert_eq!(b.probe.inputs(), vec![3]);
    assert_eq!(&**a.status.model(), "a");
}

/// The message types can also be driven by hand: a `RunBatch` sent straight to the model actor.
#[actix_rt::test]
async fn run_batch_can_be_sent_directly() {
    let probe = Arc::new(Probe::default());
    let bus = EventBus::default().start();
    let status = ModelStatus::new("direct");
    let loader = Arc::new(FakeLoader { probe: probe.clone(), failing_loads: 0, permanent: false });
    let model = ModelActor::start(loader, status, bus, ModelActorConfig::default());
    let result = model.send(RunBatch::<Item, u64>::new(vec![Item(5), Item(6)])).await.unwrap();
    assert_eq!(result.unwrap(), vec![10, 12]);
}

// ---------------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------------

/// Two workers of one model run two batches at the same time, each on its own engine and thread.
#[actix_rt::test]
async fn batches_spread_over_the_workers_of_a_model() {
    let mut setup = Setup { workers: 2, ..Setup::default() };
    setup.batcher.max_items = 1;
    setup.batcher.max_in_flight = 2;
    let harness = setup.start().await;
    wait_until("both engines loaded", || harness.probe.loads() == 2).await;
    let first = harness.submit_now(&[slow(400)]).await;
    let second = harness.submit_now(&[slow(400) + 1]).await;
    assert_eq!(outputs(first).await, doubled(&[slow(400)]));
    assert_eq!(outputs(second).await, doubled(&[slow(400) + 1]));
    let mut threads = harness.probe.threads.lock().unwrap().clone();
    threads.dedup();
    assert_eq!(threads.len(), 2, "two engine threads ran the two batches");
}
