//! Upstream models: roster entries that another OpenAI-compatible server answers (OpenAI, vLLM, another
//! sis). sis forwards their chat and embeddings requests as they came (the `model` renamed to the one
//! upstream knows), behind the entry's own bounded queue, and passes the answer back, streams included.
//!
//! Each has what a local model has: an admission queue (`max_queue_size`, 429 when full), at most
//! `max_concurrent` requests upstream at once (waiting up to the queue timeout, 429 after), the
//! capability's request timeout (504), the `*_requests_total` metrics, and a `/health` entry saying
//! whether the upstream answered its last request or probe.

use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Capability, ModelEntry, ModelSettings};
use crate::error::ApiError;
use crate::runtime::{RequestPath, Runtime};
use crate::telemetry::outcome::{Counted, Outcome};
use sis_actors::Admission;

/// How often an idle upstream is probed (`GET {upstream}/models`).
const PROBE_EVERY: Duration = Duration::from_secs(30);

/// The OpenAI endpoint a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/chat/completions`.
    Chat,
    /// `/embeddings`.
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        }
    }

    fn counted(self) -> Counted {
        match self {
            Endpoint::Chat => Counted::Chat,
            Endpoint::Embeddings => Counted::Embeddings,
        }
    }
}

/// Whether the upstream answered lately, for `/health`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reachability {
    /// The base URL.
    pub url: String,
    /// Whether the last request or probe got an HTTP answer; `null` before the first.
    pub reachable: Option<bool>,
    /// Unix time of that answer or failure.
    pub checked_at: Option<u64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// An upstream model.
pub struct UpstreamModel {
    id: String,
    capability: Capability,
    base: String,
    remote_model: String,
    api_key: Option<String>,
    client: reqwest::Client,
    admission: Admission,
    /// Requests upstream at once; a stream holds its slot until it ends.
    slots: Arc<tokio::sync::Semaphore>,
    queue_timeout: Duration,
    request_timeout: Duration,
    reachability: Arc<Mutex<Reachability>>,
}

/// An upstream's answer, to be sent on as it comes.
pub struct Forwarded {
    /// Its status.
    pub status: u16,
    /// Its content type.
    pub content_type: String,
    /// Whether the client asked for a stream (server-sent events).
    pub streaming: bool,
    /// Its body; the queue slot is held until the body ends.
    pub body: Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>>>>,
}

impl UpstreamModel {
    /// Builds the upstream of `entry` (its `upstream` URL, `api_key_env`, `upstream_model`); the
    /// client is made here, the first probe is sent by [`UpstreamModel::watch`].
    pub fn new(entry: &ModelEntry, settings: &ModelSettings) -> anyhow::Result<Self> {
        let base = entry.upstream.clone().unwrap_or_default().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base).map_err(|e| anyhow::anyhow!("upstream {base:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("upstream {base:?} must be an http(s) URL");
        }
        if !matches!(entry.kind, Capability::Chat | Capability::Embeddings) {
            anyhow::bail!("an upstream model forwards chat or embeddings, not {}", entry.kind.name());
        }
        let api_key = match &entry.api_key_env {
            Some(name) => Some(
                std::env::var(name)
                    .ok()
                    .filter(|k| !k.trim().is_empty())
                    .ok_or_else(|| anyhow::anyhow!("api_key_env names {name}, which is not set"))?,
            ),
            None => None,
        };
        let queue = &settings.queue;
        Ok(Self {
            id: entry.id.clone(),
            capability: entry.kind,
            remote_model: entry.upstream_model.clone().unwrap_or_else(|| entry.id.clone()),
            api_key,
            client: reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?,
            admission: Admission::new(queue.max_queue_size),
            slots: Arc::new(tokio::sync::Semaphore::new(queue.max_concurrent.max(1))),
            queue_timeout: queue.queue_timeout,
            request_timeout: queue.request_timeout,
            reachability: Arc::new(Mutex::new(Reachability { url: base.clone(), ..Default::default() })),
            base,
        })
    }

    /// The admission queue.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Whether the upstream answered lately.
    pub fn reachability(&self) -> Reachability {
        self.reachability.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Probes the upstream now and every [`PROBE_EVERY`] (`GET /models`), while the runtime runs.
    pub fn watch(&self) {
        let (client, url, key) = (self.client.clone(), format!("{}/models", self.base), self.api_key.clone());
        let reachability = Arc::downgrade(&self.reachability);
        actix_web::rt::spawn(async move {
            loop {
                let mut probe = client.get(&url).timeout(Duration::from_secs(10));
                if let Some(key) = &key {
                    probe = probe.bearer_auth(key);
                }
                let answer = probe.send().await.map(|_| ()).map_err(|e| e.to_string());
                let Some(reachability) = reachability.upgrade() else { return };
                note(&reachability, answer);
                drop(reachability);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
    }

    /// Sends `body` (the client's request, `model` renamed) to `endpoint` and returns the answer.
    async fn forward(&self, endpoint: Endpoint, mut body: Value) -> Result<Forwarded, ApiError> {
        let wrong = match (endpoint, self.capability) {
            (Endpoint::Chat, Capability::Chat) | (Endpoint::Embeddings, Capability::Embeddings) => None,
            (Endpoint::Chat, _) => Some("chat completions"),
            (Endpoint::Embeddings, _) => Some("embeddings"),
        };
        if let Some(what) = wrong {
            return Err(ApiError::invalid("model", format!("Model `{}` does not support {what}", self.id)));
        }
        let retry_after = Duration::from_secs(1);
        let permit = self.admission.try_admit().map_err(|e| ApiError::not_admitted(&self.id, e, retry_after))?;
        let slot = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Overloaded {
                message: format!(
                    "Request waited {:.1}s in the queue of `{}`; retry shortly",
                    self.queue_timeout.as_secs_f64(),
                    self.id
                ),
                retry_after,
            })?
            .map_err(|_| ApiError::Unavailable("The server is shutting down".into()))?;
        body["model"] = Value::String(self.remote_model.clone());
        let streaming = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let mut request = self.client.post(format!("{}/{}", self.base, endpoint.path())).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        // A stream's timeout covers the wait for its head; a whole answer's, the answer.
        let limit = self.request_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let response = tokio::time::timeout_at(deadline, request.send()).await.map_err(|_| ApiError::Timeout(limit))?;
        let response = match response {
            Ok(response) => {
                note(&self.reachability, Ok(()));
                response
            }
            Err(e) => {
                note(&self.reachability, Err(e.to_string()));
                return Err(ApiError::BadGateway(format!("upstream of `{}` did not answer: {e}", self.id)));
            }
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        if !streaming {
            let bytes = tokio::time::timeout_at(deadline, response.bytes())
                .await
                .map_err(|_| ApiError::Timeout(limit))?
                .map_err(|e| ApiError::BadGateway(format!("upstream of `{}` broke off its answer: {e}", self.id)))?;
            drop((slot, permit));
            let body = Box::pin(futures_util::stream::once(async { Ok(bytes) }));
            return Ok(Forwarded { status, content_type, streaming, body });
        }
        // The queue place and the upstream slot are held until the stream ends.
        let body = response.bytes_stream().map(move |chunk| {
            let _held = (&permit, &slot);
            chunk.map_err(std::io::Error::other)
        });
        Ok(Forwarded { status, content_type, streaming, body: Box::pin(body) })
    }
}

fn note(reachability: &Mutex<Reachability>, answer: Result<(), String>) {
    let mut r = reachability.lock().unwrap_or_else(|e| e.into_inner());
    r.checked_at = SystemTime::now().duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
    r.reachable = Some(answer.is_ok());
    r.last_error = answer.err();
}

/// Forwards a request whose `model` is an upstream model; `None` for every other model (served
/// here). Counted in the endpoint's `*_requests_total` like local requests.
pub async fn forward(runtime: &Runtime, endpoint: Endpoint, body: &Value) -> Option<Result<Forwarded, ApiError>> {
    let name = body.get("model")?.as_str()?;
    let served = runtime.model(name).ok()?;
    let RequestPath::Upstream(upstream) = &served.path else { return None };
    let mut outcome = Outcome::start(&runtime.metrics, endpoint.counted(), name);
    outcome.resolved(&served.settings.id);
    let result = upstream.forward(endpoint, body.clone()).await;
    match &result {
        Ok(forwarded) => outcome.finish(forwarded.status),
        Err(error) => outcome.failed(error),
    }
    Some(result)
}
