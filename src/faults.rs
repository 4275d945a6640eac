//! Test-only fault injection around any engine: failing loads, panicking or failing warmups, failing
//! batches.
//!
//! Roster entries set these with `fault_*` keys, which only builds with the `fault-injection` feature
//! accept (the roster refuses them otherwise), so the reliability tests can break a real model through
//! the same code path users take. With no faults configured the wrapper only forwards.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::config::ModelEntry;
use sis_actors::{Engine, EngineError, EngineLoader};

/// How a model should misbehave: each count is how many times, from the start, that step fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Loads that fail with an error.
    pub load_failures: u32,
    /// Warmups that panic.
    pub warmup_panics: u32,
    /// Warmups that fail with an error (after the panicking ones).
    pub warmup_errors: u32,
    /// Batches that fail with an engine error.
    pub batch_errors: u32,
}

impl Faults {
    /// The faults a roster entry asks for.
    pub fn of(entry: &ModelEntry) -> Self {
        Self {
            load_failures: entry.fault_load_failures.unwrap_or(0),
            warmup_panics: entry.fault_warmup_panics.unwrap_or(0),
            warmup_errors: entry.fault_warmup_errors.unwrap_or(0),
            batch_errors: entry.fault_batch_errors.unwrap_or(0),
        }
    }
}

#[derive(Default)]
struct Counts {
    loads: AtomicU32,
    warmups: AtomicU32,
    warmup_errors: AtomicU32,
    batches: AtomicU32,
}

/// Whether the `n`-th event (counting from 0) is one of the first `limit`.
fn hit(counter: &AtomicU32, limit: u32) -> Option<u32> {
    if limit == 0 {
        return None;
    }
    let n = counter.fetch_add(1, Ordering::SeqCst);
    (n < limit).then_some(n + 1)
}

/// Wraps a loader; the counts survive reloads, so "the first N" spans restarts.
pub struct FaultyLoader<L> {
    inner: L,
    faults: Faults,
    counts: Arc<Counts>,
}

impl<L> FaultyLoader<L> {
    /// Wraps `inner` with these faults.
    pub fn new(inner: L, faults: Faults) -> Self {
        Self { inner, faults, counts: Arc::default() }
    }
}

impl<L: EngineLoader> EngineLoader for FaultyLoader<L> {
    type Engine = FaultyEngine<L::Engine>;

    fn load(&self) -> Result<Self::Engine, EngineError> {
        if let Some(n) = hit(&self.counts.loads, self.faults.load_failures) {
            return Err(EngineError::new(format!("fault injection: load failure {n}")));
        }
        Ok(FaultyEngine { inner: self.inner.load()?, faults: self.faults, counts: self.counts.clone() })
    }
}

/// An engine that fails as its [`Faults`] say, and otherwise is the engine it wraps.
pub struct FaultyEngine<E> {
    inner: E,
    faults: Faults,
    counts: Arc<Counts>,
}

impl<E: Engine> Engine for FaultyEngine<E> {
    type Input = E::Input;
    type Output = E::Output;

    fn infer(&mut self, batch: &[Self::Input]) -> Result<Vec<Self::Output>, EngineError> {
        if let Some(n) = hit(&self.counts.batches, self.faults.batch_errors) {
            return Err(EngineError::new(format!("fault injection: batch error {n}")));
        }
        self.inner.infer(batch)
    }

    fn warmup(&mut self, steps: usize, batch_size: usize) -> Result<(), EngineError> {
        if let Some(n) = hit(&self.counts.warmups, self.faults.warmup_panics) {
            panic!("fault injection: warmup panic {n}");
        }
        if let Some(n) = hit(&self.counts.warmup_errors, self.faults.warmup_errors) {
            return Err(EngineError::new(format!("fault injection: warmup error {n}")));
        }
        self.inner.warmup(steps, batch_size)
    }
}
