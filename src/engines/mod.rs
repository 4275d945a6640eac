//! Inference engines, grouped by model family. Engines know candle and tokenizers, not actix or HTTP.
//!
//! - [`embed`]: text encoders (BERT family) with pooling and normalization.
//! - [`chat`]: decoder LLMs (llama / qwen families, GGUF or safetensors), their tokenizers, templates,
//!   sampling and constrained decoding.
//! - [`vision`]: the Qwen3-VL vision tower that feeds [`chat`].
//! - [`whisper`]: speech to text.
//! - [`nn`]: layers every family shares (attention, dense layers), each with its candle reference path.
//! - [`kernels`]: the CPU kernels that replace reference operations where the CPU has what they need.
//! - [`device`]: devices as operators name them.

pub mod chat;
pub mod device;
pub mod embed;
pub mod kernels;
pub mod nn;
pub mod vision;
pub mod whisper;

/// A load failure as the supervisor sees it. Files that do not describe a model sis can run (an
/// unsupported architecture, a missing tensor, a malformed header) fail the same way every time, so
/// they are [permanent](sis_actors::EngineError::permanent) and the model is marked failed at once;
/// only I/O errors (a file still being written, a flaky network mount) are worth a retry.
pub fn load_error(error: anyhow::Error) -> sis_actors::EngineError {
    let io = error.chain().any(|cause| {
        cause.is::<std::io::Error>()
            || matches!(cause.downcast_ref::<candle_core::Error>(), Some(candle_core::Error::Io(_)))
    });
    let message = format!("{error:#}");
    if io {
        sis_actors::EngineError::new(message)
    } else {
        sis_actors::EngineError::permanent(message)
    }
}
