//! Metrics and logs.

pub mod lifecycle_metrics;
pub mod logging;
pub mod metrics;

pub use metrics::Metrics;
