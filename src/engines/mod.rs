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
