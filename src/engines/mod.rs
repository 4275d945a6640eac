//! Inference engines, one file per model family. Engines know candle and tokenizers, not actix or HTTP.

pub mod attention;
pub mod bert;
pub mod device;
pub mod embedder;
