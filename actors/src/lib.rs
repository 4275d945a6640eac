//! The actor runtime of sis, independent of any inference engine or HTTP stack.
//!
//! A model is served by a small group of actors:
//!
//! ```text
//!  handler ──admit──▶ Admission (bounded queue, 429 when full)
//!     │
//!     └──Submit──▶ Batcher ──RunBatch──▶ ModelActor (own thread, supervised) ──▶ Engine
//!                                            │
//!                                            └─ publishes LifecycleEvent ──▶ EventBus ──▶ WarmupActor, metrics, …
//! ```
//!
//! Engines plug in through [`Engine`] and [`EngineLoader`]; everything here is tested with a fake engine.

pub mod admission;
pub mod batcher;
pub mod engine;
pub mod lifecycle;
pub mod model_actor;
pub mod registry;
pub mod sequence_actor;
pub mod supervision;
pub mod warmup;

pub use admission::{Admission, AdmissionError, Permit};
pub use batcher::{BatchItem, BatchObserver, Batcher, BatcherConfig, JobError, JobOutput, Submit};
pub use engine::{Engine, EngineError, EngineLoader};
pub use lifecycle::{EventBus, LifecycleEvent, ModelState, ModelStatus, Publish, Subscribe};
pub use model_actor::{BatchFailure, ModelActor, ModelActorConfig, RunBatch, RunBatchError, Warmup, WarmupOutcome};
pub use registry::Registry;
pub use sequence_actor::{
    Generate, SequenceActor, SequenceConfig, SequenceMessage, SequenceObserver, StepEngine, StepLoader,
};
pub use warmup::{WarmupActor, WarmupPolicy};
