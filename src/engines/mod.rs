//! Inference engines, one file per model family. Engines know candle and tokenizers, not actix or HTTP.

pub mod attention;
pub mod bert;
pub mod chat;
pub mod chat_spec;
pub mod chat_template;
pub mod ct2;
pub mod dense;
pub mod device;
pub mod embedder;
pub mod gguf_tokenizer;
pub mod json_constraint;
pub mod kernels;
pub mod llama;
pub mod mel;
pub mod qwen3_vl;
pub mod sampling;
pub mod whisper;
pub mod whisper_decoder;
pub mod whisper_encoder;
pub mod word_alignment;
