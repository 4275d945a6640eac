//! The batcher actor: turns many small requests into few well-shaped batches for one model actor.
//!
//! Requests arrive as [`Submit`] jobs of one or more inputs. The batcher waits up to `window` after
//! the first pending input (or until `max_items` are pending), then forms batches under an item and
//! token budget, grouping inputs of similar cost, and keeps at most `max_in_flight` batches at the
//! model. While the model is busy, new inputs accumulate, so batches grow with load. Each job is
//! answered once every one of its inputs has an output, in its own order; a job whose inputs waited
//! longer than `queue_timeout` is answered with [`JobError::QueueTimeout`], and a job whose client is
//! gone is dropped before it costs any inference.
//!
//! When the engine fails on a batch that holds several jobs, the batcher cannot know which job
//! caused it, so it retries each of those jobs alone (ahead of new work) once the model is back: only
//! the job that fails again gets the error, and its neighbours are served.

use actix::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use crate::admission::Permit;
use crate::model_actor::{BatchFailure, RunBatch, RunBatchError};

/// An input the batcher can budget for.
pub trait BatchItem {
    /// The cost of the input in the budget's unit (tokens for text models).
    fn cost(&self) -> usize;
}

/// Batching settings of one model.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// How long to wait for more inputs after the first one while the model is idle.
    pub window: Duration,
    /// Most inputs in one batch.
    pub max_items: usize,
    /// Most total cost (tokens) in one batch; a single larger input still runs alone.
    pub max_tokens: usize,
    /// Batches handed to the model actor and not yet answered.
    pub max_in_flight: usize,
    /// Longest an input may wait before its job is refused.
    pub queue_timeout: Duration,
}

/// Hooks for metrics; every method has an empty default.
pub trait BatchObserver: Send + Sync + 'static {
    /// A batch left for the model: its size, its total cost and how long its oldest input waited.
    fn batch_dispatched(&self, _items: usize, _cost: usize, _oldest_wait: Duration) {}
}

impl BatchObserver for () {}

/// A finished job.
#[derive(Debug)]
pub struct JobOutput<O> {
    /// One output per input, in input order.
    pub outputs: Vec<O>,
    /// Time from submission until the job's first input was dispatched.
    pub queue_wait: Duration,
}

/// Why a job got no outputs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Waited longer than the queue timeout (429).
    #[error("request waited {waited:?} in the queue, longer than the {timeout:?} limit")]
    QueueTimeout {
        /// How long it waited.
        waited: Duration,
        /// The limit.
        timeout: Duration,
    },
    /// The engine failed on this job, run alone (500).
    #[error("{0}")]
    EngineFailed(String),
    /// The model cannot serve (503).
    #[error("{0}")]
    Unavailable(String),
}

/// The reply channel of a job.
pub type JobReply<O> = oneshot::Sender<Result<JobOutput<O>, JobError>>;

/// A job of one or more inputs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit<I: Send + 'static, O: Send + 'static> {
    /// The inputs.
    pub inputs: Vec<I>,
    /// The admission slot, held until the job is answered.
    pub permit: Option<Permit>,
    /// Where the answer goes.
    pub reply: JobReply<O>,
}

impl<I: Send + 'static, O: Send + 'static> Submit<I, O> {
    /// A job and the receiver of its answer.
    pub fn new(inputs: Vec<I>, permit: Option<Permit>) -> (Self, oneshot::Receiver<Result<JobOutput<O>, JobError>>) {
        let (reply, rx) = oneshot::channel();
        (Self { inputs, permit, reply }, rx)
    }
}

struct Job<O> {
    outputs: Vec<Option<O>>,
    remaining: usize,
    reply: JobReply<O>,
    enqueued: Instant,
    first_dispatch: Option<Instant>,
    _permit: Option<Permit>,
}

struct Pending<I> {
    job: u64,
    index: usize,
    cost: usize,
    input: I,
}

/// The batcher actor of one model.
pub struct Batcher<I: Send + 'static, O: Send + 'static> {
    config: BatcherConfig,
    /// The model actors (workers) of this model, each with its own engine.
    workers: Vec<Recipient<RunBatch<I, O>>>,
    /// Batches in flight at each worker.
    busy: Vec<usize>,
    observer: Arc<dyn BatchObserver>,
    jobs: HashMap<u64, Job<O>>,
    pending: VecDeque<Pending<I>>,
    /// Jobs of a failed shared batch, each to be retried as a batch of its own before new work.
    isolated: VecDeque<Vec<Pending<I>>>,
    next_job: u64,
    in_flight: usize,
    window: Option<SpawnHandle>,
}

impl<I: BatchItem + Send + Unpin + 'static, O: Send + Unpin + 'static> Batcher<I, O> {
    /// A batcher feeding `model`.
    pub fn new(config: BatcherConfig, model: Recipient<RunBatch<I, O>>, observer: Arc<dyn BatchObserver>) -> Self {
        Self::with_workers(config, vec![model], observer)
    }

    /// A batcher feeding several workers of one model; each batch goes to the least busy worker.
    pub fn with_workers(
        config: BatcherConfig,
        workers: Vec<Recipient<RunBatch<I, O>>>,
        observer: Arc<dyn BatchObserver>,
    ) -> Self {
        assert!(!workers.is_empty(), "a batcher needs at least one worker");
        Self {
            config,
            busy: vec![0; workers.len()],
            workers,
            observer,
            jobs: HashMap::new(),
            pending: VecDeque::new(),
            isolated: VecDeque::new(),
            next_job: 0,
            in_flight: 0,
            window: None,
        }
    }

    fn fail_job(&mut self, job: u64, error: JobError) {
        if let Some(job) = self.jobs.remove(&job) {
            let _ = job.reply.send(Err(error));
        }
    }

    /// Answers jobs that waited too long and forgets jobs whose client is gone.
    fn expire(&mut self) {
        let now = Instant::now();
        let timeout = self.config.queue_timeout;
        let mut dead = Vec::new();
        for (&id, job) in &self.jobs {
            let waiting = job.first_dispatch.is_none() && now.duration_since(job.enqueued) > timeout;
            if job.reply.is_closed() || waiting {
                dead.push(id);
            }
        }
        if dead.is_empty() {
            return;
        }
        for id in &dead {
            let waited = self.jobs.get(id).map(|j| now.duration_since(j.enqueued)).unwrap_or_default();
            self.fail_job(*id, JobError::QueueTimeout { waited, timeout });
        }
        self.forget_answered();
    }

    /// Drops queued inputs of jobs that are already answered.
    fn forget_answered(&mut self) {
        let jobs = &self.jobs;
        self.pending.retain(|p| jobs.contains_key(&p.job));
        self.isolated.retain(|batch| batch.first().is_some_and(|p| jobs.contains_key(&p.job)));
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.isolated.is_empty()
    }

    /// Picks the next batch: the oldest input, then the inputs closest to it in cost, within budget.
    fn take_batch(&mut self) -> Vec<Pending<I>> {
        let (max_items, max_tokens) = (self.config.max_items.max(1), self.config.max_tokens.max(1));
        let total: usize = self.pending.iter().map(|p| p.cost).sum();
        if self.pending.len() <= max_items && total <= max_tokens {
            let mut batch: Vec<_> = self.pending.drain(..).collect();
            batch.sort_by_key(|p| p.cost);
            return batch;
        }
        let anchor = self.pending[0].cost;
        let mut order: Vec<usize> = (1..self.pending.len()).collect();
        order.sort_by_key(|&i| (self.pending[i].cost.abs_diff(anchor), i));
        let mut chosen = vec![0usize];
        let mut tokens = anchor;
        for i in order {
            if chosen.len() == max_items {
                break;
            }
            let cost = self.pending[i].cost;
            if tokens + cost <= max_tokens {
                tokens += cost;
                chosen.push(i);
            }
        }
        chosen.sort_unstable();
        let mut batch = Vec::with_capacity(chosen.len());
        for &i in chosen.iter().rev() {
            batch.push(self.pending.remove(i).expect("index in range"));
        }
        batch.sort_by_key(|p| p.cost);
        batch
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.window.take() {
            ctx.cancel_future(handle);
        }
        self.expire();
        while self.in_flight < self.config.max_in_flight.max(1) && self.has_work() {
            let batch = match self.isolated.pop_front() {
                Some(batch) => batch,
                None => self.take_batch(),
            };
            let now = Instant::now();
            let mut oldest = Duration::ZERO;
            let mut cost = 0;
            let mut routes = Vec::with_capacity(batch.len());
            let mut inputs = Vec::with_capacity(batch.len());
            for p in batch {
                if let Some(job) = self.jobs.get_mut(&p.job) {
                    oldest = oldest.max(now.duration_since(job.enqueued));
                    job.first_dispatch.get_or_insert(now);
                }
                cost += p.cost;
                routes.push(Route { job: p.job, index: p.index, cost: p.cost });
                inputs.push(p.input);
            }
            self.observer.batch_dispatched(inputs.len(), cost, oldest);
            self.in_flight += 1;
            let worker = (0..self.workers.len()).min_by_key(|&w| self.busy[w]).expect("at least one worker");
            self.busy[worker] += 1;
            let request = self.workers[worker].send(RunBatch::new(inputs));
            ctx.spawn(request.into_actor(self).map(move |result, act, ctx| {
                act.in_flight -= 1;
                act.busy[worker] -= 1;
                let result = result.unwrap_or_else(|mailbox| {
                    Err(BatchFailure {
                        error: RunBatchError::Unavailable(format!("model actor is gone: {mailbox}")),
                        inputs: Vec::new(),
                    })
                });
                act.complete(routes, result);
                if act.has_work() {
                    act.dispatch(ctx);
                }
            }));
        }
    }

    fn complete(&mut self, routes: Vec<Route>, result: Result<Vec<O>, BatchFailure<I>>) {
        let failure = match result {
            Ok(outputs) => {
                for (route, output) in routes.into_iter().zip(outputs) {
                    self.deliver(route, output);
                }
                return;
            }
            Err(failure) => failure,
        };
        let mut failed: Vec<u64> = routes.iter().map(|r| r.job).collect();
        failed.sort_unstable();
        failed.dedup();
        match failure.error {
            RunBatchError::EngineFailed(_) if failed.len() > 1 && failure.inputs.len() == routes.len() => {
                self.isolate(routes, failure.inputs);
            }
            error => {
                let error = match error {
                    RunBatchError::EngineFailed(e) => JobError::EngineFailed(e),
                    RunBatchError::Unavailable(e) => JobError::Unavailable(e),
                };
                for id in &failed {
                    self.fail_job(*id, error.clone());
                }
                self.forget_answered();
            }
        }
    }

    /// Stores one output and answers its job once the job is complete.
    fn deliver(&mut self, route: Route, output: O) {
        let Some(job) = self.jobs.get_mut(&route.job) else {
            return;
        };
        job.outputs[route.index] = Some(output);
        job.remaining -= 1;
        if job.remaining == 0 {
            let job = self.jobs.remove(&route.job).expect("present");
            let queue_wait = job.first_dispatch.unwrap_or(job.enqueued).duration_since(job.enqueued);
            let outputs = job.outputs.into_iter().map(|o| o.expect("every output set")).collect();
            let _ = job.reply.send(Ok(JobOutput { outputs, queue_wait }));
        }
    }

    /// Queues each job of a failed shared batch as a batch of its own, oldest job first.
    fn isolate(&mut self, routes: Vec<Route>, inputs: Vec<I>) {
        let mut by_job: Vec<Vec<Pending<I>>> = Vec::new();
        for (route, input) in routes.into_iter().zip(inputs) {
            let pending = Pending { job: route.job, index: route.index, cost: route.cost, input };
            match by_job.iter_mut().find(|batch| batch[0].job == route.job) {
                Some(batch) => batch.push(pending),
                None => by_job.push(vec![pending]),
            }
        }
        by_job.sort_by_key(|batch| batch[0].job);
        self.isolated.extend(by_job);
        self.forget_answered();
    }
}

/// Where an input of a dispatched batch belongs.
#[derive(Debug, Clone, Copy)]
struct Route {
    job: u64,
    index: usize,
    cost: usize,
}

impl<I: BatchItem + Send + Unpin + 'static, O: Send + Unpin + 'static> Actor for Batcher<I, O> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let tick = (self.config.queue_timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        ctx.run_interval(tick, |act, _| {
            if !act.jobs.is_empty() {
                act.expire();
            }
        });
    }
}

impl<I: BatchItem + Send + Unpin + 'static, O: Send + Unpin + 'static> Handler<Submit<I, O>> for Batcher<I, O> {
    type Result = ();

    fn handle(&mut self, msg: Submit<I, O>, ctx: &mut Context<Self>) {
        if msg.inputs.is_empty() {
            let _ = msg.reply.send(Ok(JobOutput { outputs: Vec::new(), queue_wait: Duration::ZERO }));
            return;
        }
        let id = self.next_job;
        self.next_job += 1;
        let count = msg.inputs.len();
        for (index, input) in msg.inputs.into_iter().enumerate() {
            self.pending.push_back(Pending { job: id, index, cost: input.cost(), input });
        }
        self.jobs.insert(
            id,
            Job {
                outputs: (0..count).map(|_| None).collect(),
                remaining: count,
                reply: msg.reply,
                enqueued: Instant::now(),
                first_dispatch: None,
                _permit: msg.permit,
            },
        );
        if self.in_flight >= self.config.max_in_flight.max(1) {
            return; // dispatched when a batch completes
        }
        if self.pending.len() >= self.config.max_items || self.config.window.is_zero() {
            self.dispatch(ctx);
        } else if self.window.is_none() {
            self.window = Some(ctx.run_later(self.config.window, |act, ctx| {
                act.window = None;
                act.dispatch(ctx);
            }));
        }
    }
}
