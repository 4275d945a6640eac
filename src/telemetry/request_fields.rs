//! Fields of the current request's access-log line that only the request path learns (which model
//! served it, how long it queued). The access-log middleware opens a scope per request; code deeper
//! in the path notes into it without the request being passed down.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

/// What the request path noted about one request.
#[derive(Debug, Default, Clone)]
pub struct RequestFields {
    /// The model that served it.
    pub model: Option<String>,
    /// Time from admission to the start of its work.
    pub queue_wait: Option<Duration>,
}

tokio::task_local! {
    static FIELDS: RefCell<RequestFields>;
}

/// Runs a request's future with a fresh scope and returns what was noted alongside its output.
pub async fn scope<F: Future>(work: F) -> (F::Output, RequestFields) {
    FIELDS
        .scope(RefCell::new(RequestFields::default()), async {
            let output = work.await;
            let fields = FIELDS.with(|f| f.take());
            (output, fields)
        })
        .await
}

/// Notes the model serving the current request (no-op outside a request).
pub fn note_model(model: &str) {
    let _ = FIELDS.try_with(|f| f.borrow_mut().model = Some(model.to_string()));
}

/// Notes how long the current request queued (no-op outside a request).
pub fn note_queue_wait(wait: Duration) {
    let _ = FIELDS.try_with(|f| f.borrow_mut().queue_wait = Some(wait));
}
