//! Per-capability request timeouts: work that outlives its limit is dropped, which cancels it (a
//! queued job is skipped by its batcher, a chat sequence leaves the batch), and the client gets 504.

use std::future::Future;
use std::time::Duration;

use crate::error::ApiError;

/// Runs a request's work within `limit`.
pub async fn within<T>(limit: Duration, work: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
    tokio::time::timeout(limit, work).await.unwrap_or(Err(ApiError::Timeout(limit)))
}
