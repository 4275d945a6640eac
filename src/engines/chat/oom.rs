//! Running out of device memory during a batched step: the step's caches are rolled back, the batch
//! is split in two and each half retried (down to single sequences), as the seed server does, so a
//! large batch on a full GPU slows down instead of failing its requests. A sequence's logits do not
//! depend on its company, so the split gives the same answers.

use std::sync::Arc;

use candle_core::Result;

use super::llama::{Llama, StepInput};

/// What the engine does about out-of-memory steps.
#[derive(Clone, Default)]
pub struct OomPolicy {
    /// Called once per split (the `chat_batch_oom_retries_total` counter).
    pub on_retry: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Test hook (fault-injection builds): a step of more than this many sequences reports running
    /// out of memory after it ran, so the rollback is exercised too.
    pub simulate_above: Option<usize>,
}

/// Whether `error` is a device allocation failure (CUDA's `CUDA_ERROR_OUT_OF_MEMORY`, Metal's and
/// candle's wording of it).
pub fn is_out_of_memory(error: &candle_core::Error) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("out_of_memory") || text.contains("out of memory")
}

/// [`Llama::step`], splitting the batch and retrying the halves when the device runs out of memory.
/// The logits come back in the inputs' order, as from one step.
pub fn step(model: &Llama, inputs: &mut [StepInput<'_>], policy: &OomPolicy) -> Result<Vec<Vec<f32>>> {
    let lengths: Vec<usize> = inputs.iter().map(|i| i.cache.len()).collect();
    let result = match model.step(inputs) {
        Ok(_) if policy.simulate_above.is_some_and(|limit| inputs.len() > limit) => {
            Err(candle_core::Error::Msg("fault injection: CUDA_ERROR_OUT_OF_MEMORY".into()))
        }
        result => result,
    };
    match result {
        Err(e) if is_out_of_memory(&e) && inputs.len() > 1 => {
            for (input, len) in inputs.iter_mut().zip(lengths) {
                input.cache.rewind(len)?;
            }
            tracing::warn!(sequences = inputs.len(), "out of device memory in a batched step: splitting it");
            if let Some(count) = &policy.on_retry {
                count();
            }
            let (first, second) = inputs.split_at_mut(inputs.len() / 2);
            let mut logits = step(model, first, policy)?;
            logits.extend(step(model, second, policy)?);
            Ok(logits)
        }
        result => result,
    }
}
