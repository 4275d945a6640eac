//! Metrics and logs.

pub mod lifecycle_metrics;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod request_fields;

pub use metrics::Metrics;
