//! sis: a self-hosted, OpenAI-compatible inference server built as an actor system.
//!
//! Follow a request from [`cli`] (`sis serve`) to [`http`] (one module per endpoint), into the
//! capability's request path ([`embeddings`]), through the runtime's actors ([`runtime`], built on the
//! `sis-actors` crate) to an engine ([`engines`]).

#[cfg(test)]
pub(crate) mod arbitrary;
pub mod audio;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod embeddings;
pub mod engines;
pub mod error;
pub mod faults;
pub mod http;
pub mod models;
pub mod reload;
pub mod rerank;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod upstream;
pub mod vision;
