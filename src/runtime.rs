//! The running roster: one supervised model actor, batcher and admission queue per model, the
//! lifecycle bus with its warmup and metrics subscribers, and the registry HTTP handlers look into.

use actix::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::audio::AudioModel;
use crate::chat::ChatModel;
use crate::config::{ModelEntry, ModelKind, Roster, Settings};
use crate::embeddings::EmbeddingModel;
use crate::engines::chat::ChatLoader;
use crate::engines::chat_spec::ChatSpec;
use crate::engines::chat_template::ChatTemplate;
use crate::engines::embedder::{EmbedInput, EmbedderLoader, EmbedderSpec};
use crate::engines::whisper::{AudioJob, Transcript, WhisperLoader, WhisperSpec};
use crate::faults::{Faults, FaultyLoader};
use crate::models::resolve::{resolve, Resolved};
use crate::telemetry::lifecycle_metrics::{Label, LifecycleMetrics};
use crate::telemetry::Metrics;
use crate::vision::VisionInputs;
use sis_actors::{
    Admission, BatchObserver, Batcher, BatcherConfig, EventBus, ModelActor, ModelActorConfig, ModelStatus, Registry,
    SequenceActor, SequenceConfig, SequenceObserver, Subscribe, WarmupActor, WarmupPolicy,
};

/// What a served model can do, with its request path.
pub enum Capability {
    /// Text embeddings.
    Embeddings(Box<EmbeddingModel>),
    /// Chat completions.
    Chat(Box<ChatModel>),
    /// Speech to text.
    Audio(Box<AudioModel>),
}

/// A served model as the registry holds it.
pub struct ServedModel {
    /// Its roster entry.
    pub entry: ModelEntry,
    /// Live actor status.
    pub status: Arc<ModelStatus>,
    /// Its request path.
    pub capability: Capability,
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
    /// The admission queue.
    pub fn admission(&self) -> &Admission {
        match &self.capability {
            Capability::Embeddings(m) => m.admission(),
            Capability::Chat(m) => m.admission(),
            Capability::Audio(m) => m.admission(),
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

struct BatchMetrics {
    model: String,
    metrics: Arc<Metrics>,
}

impl BatchObserver for BatchMetrics {
    fn batch_dispatched(&self, items: usize, _cost: usize, oldest_wait: Duration) {
        self.metrics.embedding_batch_size.with_label_values(&[&self.model]).observe(items as f64);
        self.metrics.embedding_batch_wait.with_label_values(&[&self.model]).observe(oldest_wait.as_secs_f64());
    }
}

struct StepMetrics {
    model: String,
    metrics: Arc<Metrics>,
}

impl SequenceObserver for StepMetrics {
    fn step(&self, running: usize, waiting: usize, _took: Duration) {
        self.metrics.chat_batch_size.with_label_values(&[&self.model]).observe(running as f64);
        self.metrics.chat_queue_size.with_label_values(&[&self.model]).set(waiting as i64);
        self.metrics.chat_pool_size.with_label_values::<&str>(&[]).set(running as i64);
    }

    fn cancelled(&self, count: usize) {
        self.metrics.chat_cancelled.with_label_values(&[&self.model]).inc_by(count as u64);
    }
}

impl Runtime {
    /// Resolves every selected model (downloading if allowed) and starts its actors.
    /// Must run inside an actix system.
    pub fn start(settings: Settings, roster: &Roster) -> anyhow::Result<Arc<Runtime>> {
        let entries = roster.select(&settings.models)?;
        let metrics = Arc::new(Metrics::new());
        let bus = EventBus::default().start();

        let labels: HashMap<String, (String, String)> = entries
            .iter()
            .map(|e| (e.id.clone(), (e.kind.capability().to_string(), settings.device.clone())))
            .collect();
        let lifecycle = LifecycleMetrics::new(metrics.clone(), labels).start();
        bus.do_send(Subscribe(lifecycle.clone().recipient()));
        let w = &settings.warmup;
        let warmup = WarmupActor::new(WarmupPolicy {
            enabled: w.enabled,
            steps: w.steps,
            batch_size: w.batch_size,
            allowlist: w.allowlist.clone(),
            skiplist: w.skiplist.clone(),
        })
        .start();
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
            let resolved = resolve(&entry, &runtime.settings.hf_cache, runtime.settings.auto_download)?;
            let served = runtime.start_model(entry, resolved)?;
            runtime.registry.insert(served.entry.id.clone(), served);
        }
        Ok(Arc::new(runtime))
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

    /// Starts the actors of a model whose files are resolved. Must run inside an actix system.
    pub(crate) fn start_model(&self, entry: ModelEntry, resolved: Resolved) -> anyhow::Result<ServedModel> {
        let (settings, bus, metrics) = (&self.settings, &self.bus, &self.metrics);
        tracing::info!(model = %entry.id, dir = %resolved.dir.display(), origin = resolved.origin, "model files found");
        self.lifecycle.do_send(Label {
            model: entry.id.clone(),
            capability: entry.kind.capability().to_string(),
            executor: settings.device.clone(),
        });
        let mut threads = ModelThreads::default();
        let id: Arc<str> = entry.id.as_str().into();
        let status = ModelStatus::new(id.clone());
        let actor_config = ModelActorConfig { max_restarts: settings.max_restarts, ..Default::default() };
        let capability = match entry.kind {
            ModelKind::Embedding => {
                let s = &settings.embeddings;
                let spec = EmbedderSpec::from_dir(&resolved.dir, &entry, &settings.device)?;
                let tokenizer = spec.tokenizer()?;
                let dimensions = spec.dimensions;
                let model = ModelActor::start_on(
                    &threads.spawn(),
                    Arc::new(FaultyLoader::new(EmbedderLoader { spec }, Faults::of(&entry))),
                    status.clone(),
                    bus.clone(),
                    actor_config,
                );
                let batcher = Batcher::<EmbedInput, Vec<f32>>::new(
                    BatcherConfig {
                        window: Duration::from_millis(entry.batch_window_ms.unwrap_or(s.batch_window_ms)),
                        max_items: entry.batch_max_size.unwrap_or(s.batch_max_size),
                        max_tokens: entry.batch_max_tokens.unwrap_or(s.batch_max_tokens),
                        max_in_flight: entry.max_concurrent.unwrap_or(s.max_concurrent),
                        queue_timeout: s.queue_timeout,
                    },
                    model.recipient(),
                    Arc::new(BatchMetrics { model: entry.id.clone(), metrics: metrics.clone() }),
                )
                .start();
                Capability::Embeddings(Box::new(EmbeddingModel::new(
                    id,
                    tokenizer,
                    dimensions,
                    entry.cache_size.unwrap_or(s.cache_size),
                    Admission::new(entry.max_queue_size.unwrap_or(s.max_queue_size)),
                    batcher.recipient(),
                    metrics.clone(),
                    entry.fault_panic_marker.clone(),
                )))
            }
            ModelKind::Chat | ModelKind::Vision => {
                let c = &settings.chat;
                let vision = entry.kind == ModelKind::Vision;
                // A vision model has its own queue (VISION_MAX_CONCURRENT / VISION_MAX_QUEUE_SIZE);
                // text-only requests to it share its running batch with the image requests.
                let (max_running, max_queue) = match vision {
                    true => (settings.vision.max_concurrent, settings.vision.max_queue_size),
                    false => (if c.batching { c.batch_max_size } else { 1 }, c.max_queue_size),
                };
                let weights = match entry.file.as_deref() {
                    Some(file) => resolved.dir.join(file),
                    None => resolved.dir.clone(),
                };
                let spec = ChatSpec::open(&weights)?;
                let template = ChatTemplate::new(&spec.template, &spec.bos, &spec.eos)?;
                let loader = ChatLoader::new(&spec, c.prefill_chunk, entry.precision.unwrap_or_default());
                let actor = SequenceActor::start_on(
                    &threads.spawn(),
                    Arc::new(loader),
                    status.clone(),
                    bus.clone(),
                    actor_config,
                    SequenceConfig {
                        max_running: entry.max_concurrent.unwrap_or(max_running),
                        queue_timeout: c.queue_timeout,
                    },
                    Arc::new(StepMetrics { model: entry.id.clone(), metrics: metrics.clone() }),
                );
                let model = ChatModel::new(
                    &entry,
                    spec.tokenizer,
                    template,
                    spec.context,
                    Admission::new(entry.max_queue_size.unwrap_or(max_queue)),
                    actor.recipient(),
                    metrics.clone(),
                    c.clone(),
                );
                Capability::Chat(Box::new(match vision {
                    true => model.with_vision(VisionInputs::open(&weights, settings)?),
                    false => model,
                }))
            }
            ModelKind::Audio => {
                let a = &settings.audio;
                let mut spec = WhisperSpec::from_dir(&resolved.dir)?;
                spec.precision = entry.precision.unwrap_or_default();
                // AUDIO_MAX_CONCURRENT transcriptions run at once: one worker (engine and thread) each.
                let workers = entry.max_concurrent.unwrap_or(a.max_concurrent).max(1);
                let loader = Arc::new(FaultyLoader::new(WhisperLoader { spec: spec.clone() }, Faults::of(&entry)));
                let workers: Vec<_> = (0..workers)
                    .map(|_| {
                        let thread = threads.spawn();
                        ModelActor::start_on(&thread, loader.clone(), status.clone(), bus.clone(), actor_config.clone())
                            .recipient()
                    })
                    .collect();
                let batcher = Batcher::<AudioJob, Transcript>::with_workers(
                    BatcherConfig {
                        window: Duration::ZERO,
                        max_items: 1,
                        max_tokens: usize::MAX,
                        max_in_flight: workers.len(),
                        queue_timeout: a.queue_timeout,
                    },
                    workers,
                    Arc::new(()),
                )
                .start();
                Capability::Audio(Box::new(AudioModel::new(
                    id,
                    spec,
                    Admission::new(entry.max_queue_size.unwrap_or(a.max_queue_size)),
                    batcher.recipient(),
                    metrics.clone(),
                )))
            }
        };
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(ServedModel { entry, status, capability, created, origin: resolved.origin, threads })
    }
}
