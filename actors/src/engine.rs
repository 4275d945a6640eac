//! The contract between the actor runtime and an inference engine.

/// A loaded model that runs whole batches on the thread of its model actor.
///
/// Engines are created on that thread by an [`EngineLoader`] and never leave it, so they need not be `Send`.
pub trait Engine: Unpin + 'static {
    /// One unit of work in a batch (a tokenized text, a sequence, an audio window).
    type Input: Send + Unpin + 'static;
    /// The result for one input, in the same position.
    type Output: Send + Unpin + 'static;

    /// Runs a batch and returns exactly one output per input, in input order.
    ///
    /// The batch is borrowed so that, when it fails, the runtime still holds the inputs and can retry
    /// each request of the batch on its own: one poisoned request must not fail its neighbours.
    fn infer(&mut self, batch: &[Self::Input]) -> Result<Vec<Self::Output>, EngineError>;

    /// Runs `steps` representative batches of `batch_size` inputs so that the first real request
    /// does not pay for lazy allocations and cold caches.
    fn warmup(&mut self, steps: usize, batch_size: usize) -> Result<(), EngineError>;
}

/// Builds an [`Engine`]; called again by the supervisor after a failure.
pub trait EngineLoader: Send + Sync + 'static {
    /// The engine this loader builds.
    type Engine: Engine;

    /// Loads weights and prepares the engine. Runs on the model actor's own thread.
    fn load(&self) -> Result<Self::Engine, EngineError>;
}

/// Why an engine could not load or run a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    /// What went wrong.
    pub message: String,
    /// Whether trying again cannot help (an architecture the engine does not support, a tensor the
    /// files lack): the supervisor then marks the model failed at once instead of spending its restarts.
    pub permanent: bool,
}

impl EngineError {
    /// Wraps any displayable error; the supervisor may retry.
    pub fn new(message: impl std::fmt::Display) -> Self {
        Self { message: message.to_string(), permanent: false }
    }

    /// An error that retrying cannot fix.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self { message: message.to_string(), permanent: true }
    }
}
