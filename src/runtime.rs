//! The running roster: one supervised model actor, batcher and admission queue per model, the
//! lifecycle bus with its warmup and metrics subscribers, and the registry HTTP handlers look into.

use actix::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::audio::AudioModel;
use crate::chat::ChatModel;
use crate::config::{Capability, ModelEntry, ModelSettings, Roster, Settings};
use crate::embeddings::EmbeddingModel;
use crate::error::ApiError;
use crate::models::{locate, Resolved, Sources};
use crate::rerank::RerankModel;
use crate::telemetry::lifecycle_metrics::{Label, LifecycleMetrics};
use crate::telemetry::Metrics;
use crate::upstream::UpstreamModel;
use sis_actors::{Admission, EventBus, ModelActorConfig, ModelState, ModelStatus, Registry, Subscribe, WarmupActor};

/// A served model's request path: the capability object that requests go through.
pub enum RequestPath {
    /// Text embeddings.
    Embeddings(Box<EmbeddingModel>),
    /// Chat completions.
    Chat(Box<ChatModel>),
    /// Speech to text.
    Audio(Box<AudioModel>),
    /// Rerank (a cross-encoder).
    Rerank(Box<RerankModel>),
    /// Forwarded to another OpenAI-compatible server.
    Upstream(Box<UpstreamModel>),
    /// A model that could not start (its files were not found, or do not describe a model sis can
    /// run): it is listed as `failed` with its reason, and requests for it get 503, while the rest of
    /// the roster serves. The admission queue is an empty one of capacity 0, for `/health`.
    Failed(Admission),
}

/// A served model as the registry holds it.
pub struct ServedModel {
    /// Its roster entry.
    pub entry: ModelEntry,
    /// Its effective settings (the entry's overrides applied).
    pub settings: ModelSettings,
    /// Live actor status.
    pub status: Arc<ModelStatus>,
    /// Its request path.
    pub path: RequestPath,
    /// The CPU kernels its engine runs, as the engine reports them.
    pub kernels: Vec<String>,
    /// Unix time it was registered.
    pub created: u64,
    /// Where its files came from (`local`, `cache`, `hub`, `package`).
    pub origin: &'static str,
    /// The threads of its model actors, stopped once the last request holding this model is done.
    pub threads: ModelThreads,
}

/// The dedicated threads (arbiters) of one model's actors. Dropping it stops them, which drops the
/// engines: a model removed or replaced by a reload is released once its in-flight requests finish.
#[derive(Default)]
pub struct ModelThreads(Vec<Arbiter>);

impl ModelThreads {
    fn spawn(&mut self) -> ArbiterHandle {
        let arbiter = Arbiter::new();
        let handle = arbiter.handle();
        self.0.push(arbiter);
        handle
    }
}

impl Drop for ModelThreads {
    fn drop(&mut self) {
        for arbiter in &self.0 {
            arbiter.stop();
        }
    }
}

impl ServedModel {
    /// Its actor state: `loading`, `ready`, `restarting` or `failed` (see `sis_actors::ModelState`).
    pub fn state(&self) -> &'static str {
        self.status.state().as_str()
    }

    /// Whether it has failed for good.
    pub fn has_failed(&self) -> bool {
        self.status.state() == ModelState::Failed
    }

    /// The admission queue.
    pub fn admission(&self) -> &Admission {
        match &self.path {
            RequestPath::Embeddings(m) => m.admission(),
            RequestPath::Chat(m) => m.admission(),
            RequestPath::Audio(m) => m.admission(),
            RequestPath::Rerank(m) => m.admission(),
            RequestPath::Upstream(m) => m.admission(),
            RequestPath::Failed(admission) => admission,
        }
    }
}

/// Everything started for a roster.
pub struct Runtime {
    /// The effective settings.
    pub settings: Settings,
    /// Served models by id.
    pub registry: Registry<ServedModel>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The lifecycle bus.
    pub bus: Addr<EventBus>,
    /// The metrics actor (told the labels of models started later).
    lifecycle: Addr<LifecycleMetrics>,
    /// Set once shutdown begins: the API answers 503 and `/health/ready` fails.
    draining: AtomicBool,
    /// One reload at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
}

/// What a capability's builder needs to start a model's actors: its entry, the lifecycle bus and
/// metrics, its status, and the dedicated threads it runs on.
pub struct Launch<'a> {
    /// The roster entry (file overrides read by the engine's spec, test hooks).
    pub entry: &'a ModelEntry,
    /// Server-wide settings.
    pub settings: &'a Settings,
    /// The model's status, shared by all its actors.
    pub status: Arc<ModelStatus>,
    /// The lifecycle bus.
    pub bus: Addr<EventBus>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// What the model's engine reports about its kernels, for `/health`.
    pub kernels: Vec<String>,
    threads: ModelThreads,
}

impl Launch<'_> {
    /// A new dedicated thread for one of the model's actors.
    pub fn thread(&mut self) -> ArbiterHandle {
        self.threads.spawn()
    }

    /// Supervision settings of the model's engine actors.
    pub fn actor_config(&self) -> ModelActorConfig {
        ModelActorConfig { max_restarts: self.settings.max_restarts, ..Default::default() }
    }
}

impl Runtime {
    /// Resolves every selected model (downloading if allowed) and starts its actors.
    /// Must run inside an actix system.
    pub fn start(settings: Settings, roster: &Roster) -> anyhow::Result<Arc<Runtime>> {
        let entries = roster.select(&settings.models)?;
        let metrics = Arc::new(Metrics::new());
        let bus = EventBus::default().start();

        let labels: HashMap<String, (String, String)> =
            entries.iter().map(|e| (e.id.clone(), (e.kind.name().to_string(), settings.device.to_string()))).collect();
        let lifecycle = LifecycleMetrics::new(metrics.clone(), labels).start();
        bus.do_send(Subscribe(lifecycle.clone().recipient()));
        // Warmups of models on a GPU share its warmup memory budget (WARMUP_VRAM_*).
        let mut warmup = settings.warmup.clone();
        warmup.bounded = entries
            .iter()
            .filter(|e| !ModelSettings::resolve(e, &settings).device.is_cpu())
            .map(|e| e.id.clone())
            .collect();
        let warmup = WarmupActor::new(warmup).start();
        bus.do_send(Subscribe(warmup.recipient()));

        let runtime = Runtime {
            settings,
            registry: Registry::new(),
            metrics,
            bus,
            lifecycle,
            draining: AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
        };
        for entry in entries {
            let served = runtime.resolve_and_start(entry);
            runtime.registry.insert(served.entry.id.clone(), served);
        }
        Ok(Arc::new(runtime))
    }

    /// Finds a model's files and starts its actors; a model that cannot start is registered as failed
    /// with its reason, so that one bad entry never takes the rest of the roster down.
    fn resolve_and_start(&self, mut entry: ModelEntry) -> ServedModel {
        if entry.upstream.is_some() {
            return self.start_upstream(entry.clone()).unwrap_or_else(|error| self.failed_model(entry, &error));
        }
        let started = locate(&mut entry, &Sources::new(&self.settings))
            .map_err(anyhow::Error::from)
            .and_then(|resolved| self.start_model(entry.clone(), resolved));
        match started {
            Ok(served) => served,
            Err(error) => self.failed_model(entry, &error),
        }
    }

    /// The registry entry of a model another server answers: no files, no actors.
    fn start_upstream(&self, entry: ModelEntry) -> anyhow::Result<ServedModel> {
        let settings = ModelSettings::resolve(&entry, &self.settings);
        let upstream = UpstreamModel::new(&entry, &settings)?;
        upstream.watch();
        tracing::info!(model = %entry.id, upstream = %upstream.reachability().url, "model served by its upstream");
        Ok(ServedModel {
            status: ModelStatus::ready(entry.id.as_str()),
            entry,
            settings,
            path: RequestPath::Upstream(Box::new(upstream)),
            kernels: Vec::new(),
            created: unix_now(),
            origin: "upstream",
            threads: ModelThreads::default(),
        })
    }

    /// The registry entry of a model that could not start.
    fn failed_model(&self, entry: ModelEntry, error: &anyhow::Error) -> ServedModel {
        let reason = format!("{error:#}");
        tracing::error!(model = %entry.id, %reason, "model cannot start; the rest of the roster serves");
        let settings = ModelSettings::resolve(&entry, &self.settings);
        let status = ModelStatus::failed(entry.id.as_str(), reason);
        ServedModel {
            entry,
            settings,
            status,
            path: RequestPath::Failed(Admission::new(0)),
            kernels: Vec::new(),
            created: unix_now(),
            origin: "none",
            threads: ModelThreads::default(),
        }
    }

    /// The served model `id` (or one of its aliases), or 404; 503 with its reason for a model that
    /// could not start.
    pub fn model(&self, id: &str) -> Result<Arc<ServedModel>, ApiError> {
        let served = match self.registry.get(id) {
            Some(served) => served,
            // An alias (a roster entry's other names, its Hub repo): the registry is a handful of models.
            None => self
                .registry
                .all()
                .into_iter()
                .map(|(_, served)| served)
                .find(|served| served.entry.answers_to(id))
                .ok_or_else(|| ApiError::ModelNotFound(id.to_string()))?,
        };
        if let RequestPath::Failed(_) = served.path {
            let reason = served.status.last_error().unwrap_or_default();
            return Err(ApiError::Unavailable(format!("Model `{id}` could not start: {reason}")));
        }
        Ok(served)
    }

    /// Begins shutdown: from now on the API answers 503 and `/health/ready` fails.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests admitted and not yet answered, over every model.
    pub fn in_flight(&self) -> usize {
        self.registry.all().iter().map(|(_, m)| m.admission().depth()).sum()
    }

    /// Starts the actors of a model whose files are resolved, with its capability's builder.
    /// Must run inside an actix system.
    pub(crate) fn start_model(&self, entry: ModelEntry, resolved: Resolved) -> anyhow::Result<ServedModel> {
        tracing::info!(model = %entry.id, dir = %resolved.dir.display(), origin = resolved.origin, "model files found");
        let settings = ModelSettings::resolve(&entry, &self.settings);
        self.lifecycle.do_send(Label {
            model: entry.id.clone(),
            capability: entry.kind.name().to_string(),
            executor: settings.device.to_string(),
        });
        let mut launch = Launch {
            entry: &entry,
            settings: &self.settings,
            status: ModelStatus::new(Arc::from(entry.id.as_str())),
            bus: self.bus.clone(),
            metrics: self.metrics.clone(),
            kernels: Vec::new(),
            threads: ModelThreads::default(),
        };
        crate::engines::device::available(settings.device)?;
        if settings.device == crate::engines::device::DeviceName::Auto {
            tracing::info!(model = %entry.id, device = %settings.device.resolved(), "device auto");
        }
        let path = match settings.capability {
            Capability::Embeddings => {
                RequestPath::Embeddings(Box::new(crate::embeddings::start(&settings, &resolved.dir, &mut launch)?))
            }
            Capability::Chat | Capability::Vision => {
                RequestPath::Chat(Box::new(crate::chat::start(&settings, &resolved.dir, &mut launch)?))
            }
            Capability::Audio => {
                RequestPath::Audio(Box::new(crate::audio::start(&settings, &resolved.dir, &mut launch)?))
            }
            Capability::Rerank => {
                RequestPath::Rerank(Box::new(crate::rerank::start(&settings, &resolved.dir, &mut launch)?))
            }
        };
        let Launch { status, kernels, threads, .. } = launch;
        Ok(ServedModel {
            entry,
            settings,
            status,
            path,
            kernels,
            created: unix_now(),
            origin: resolved.origin,
            threads,
        })
    }
}

/// Seconds since the Unix epoch (a served model's `created`).
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
