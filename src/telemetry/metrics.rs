//! The Prometheus metrics sis exports, with the names the seed's operators already read.

use prometheus::core::Collector;
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::cell::RefCell;

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric, registered once in a private registry.
pub struct Metrics {
    registry: Registry,
    /// Name, help and type of every family, so families without samples yet are still listed.
    families: Vec<(String, String, MetricType)>,
    /// `embedding_requests_total{model,status}`.
    pub embedding_requests: IntCounterVec,
    /// `embedding_request_latency_seconds{model}`.
    pub embedding_latency: HistogramVec,
    /// `embedding_request_queue_wait_seconds{model}`.
    pub embedding_queue_wait: HistogramVec,
    /// `embedding_batch_wait_seconds{model}`: how long the oldest text of a batch waited.
    pub embedding_batch_wait: HistogramVec,
    /// `embedding_batch_size{model}`: texts per engine batch.
    pub embedding_batch_size: HistogramVec,
    /// `embedding_queue_rejections_total`.
    pub embedding_queue_rejections: IntCounter,
    /// `rerank_requests_total{model,status}`.
    pub rerank_requests: IntCounterVec,
    /// `rerank_request_latency_seconds{model}`.
    pub rerank_latency: HistogramVec,
    /// `rerank_request_queue_wait_seconds{model}`.
    pub rerank_queue_wait: HistogramVec,
    /// `rerank_documents_total{model}`: documents scored.
    pub rerank_documents: IntCounterVec,
    /// `embedding_cache_hits_total{model}`.
    pub embedding_cache_hits: IntCounterVec,
    /// `embedding_cache_misses_total{model}`.
    pub embedding_cache_misses: IntCounterVec,
    /// `embedding_tokens_total{model}`: prompt tokens embedded.
    pub embedding_tokens: IntCounterVec,
    /// `chat_requests_total{model,status}`.
    pub chat_requests: IntCounterVec,
    /// `chat_request_latency_seconds{model}`.
    pub chat_latency: HistogramVec,
    /// `chat_request_queue_wait_seconds{model}`.
    pub chat_queue_wait: HistogramVec,
    /// `chat_batch_wait_seconds{model}`: wait for a slot in the running batch.
    pub chat_batch_wait: HistogramVec,
    /// `chat_batch_size{model}`: sequences per decode step.
    pub chat_batch_size: HistogramVec,
    /// `chat_time_to_first_token_seconds{model}`.
    pub chat_ttft: HistogramVec,
    /// `chat_inter_token_latency_seconds{model}`.
    pub chat_inter_token: HistogramVec,
    /// `chat_tokens_generated_total{model}`.
    pub chat_tokens: IntCounterVec,
    /// `chat_prompt_tokens_total{model}`.
    pub chat_prompt_tokens: IntCounterVec,
    /// `chat_requests_cancelled_total{model}`: sequences stopped because the client went away.
    pub chat_cancelled: IntCounterVec,
    /// `chat_batch_queue_rejections_total{model}`.
    pub chat_queue_rejections: IntCounterVec,
    /// `chat_batch_oom_retries_total{model}`: batches split after the GPU ran out of memory (CPU
    /// batches do not).
    pub chat_oom_retries: IntCounterVec,
    /// `device_memory_{used,reserved,total}_bytes{device}` of each GPU a model runs on: used by every
    /// process (the driver's count), held by sis's loaded models, and the whole.
    pub device_memory: [IntGaugeVec; 3],
    /// `chat_batch_requeues_total{model}`.
    pub chat_requeues: IntCounterVec,
    /// `chat_batch_queue_size{model}`: requests waiting for a slot.
    pub chat_queue_size: IntGaugeVec,
    /// `chat_count_pool_size`: sequences running across chat models.
    pub chat_pool_size: IntGaugeVec,
    /// `audio_requests_total{model,status}`.
    pub audio_requests: IntCounterVec,
    /// `audio_request_latency_seconds{model}`.
    pub audio_latency: HistogramVec,
    /// `audio_request_queue_wait_seconds{model}`.
    pub audio_queue_wait: HistogramVec,
    /// `audio_seconds_total{model}`: audio transcribed.
    pub audio_seconds: prometheus::CounterVec,
    /// `remote_image_rejections_total{reason}`: image inputs refused, by reason.
    pub image_rejections: IntCounterVec,
    /// `model_queue_depth{model,capability}`: requests waiting or running.
    pub queue_depth: IntGaugeVec,
    /// `model_queue_capacity{model,capability}`.
    pub queue_capacity: IntGaugeVec,
    /// `model_state{model,state}`: 1 for the current state.
    pub model_state: IntGaugeVec,
    /// `model_restarts_total{model}`.
    pub model_restarts: IntCounterVec,
    /// `model_lifecycle_events_total{model,state}`.
    pub lifecycle_events: IntCounterVec,
    /// `warmup_pool_ready_workers{model,capability,executor}`.
    pub warmup_ready_workers: GaugeVec,
    /// `process_uptime_seconds`.
    pub uptime: Gauge,
    started: std::time::Instant,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let families = RefCell::new(Vec::new());
        let register = |collector: Box<dyn Collector>| {
            for family in collector.collect() {
                families.borrow_mut().push((
                    family.name().to_string(),
                    family.help().to_string(),
                    family.get_field_type(),
                ));
            }
            registry.register(collector).expect("unique metric");
        };
        #[cfg(target_os = "linux")]
        register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["model"]).expect("valid");
            register(Box::new(h.clone()));
            h
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let latency = LATENCY_BUCKETS.to_vec();
        let latency_long: Vec<f64> = LATENCY_BUCKETS.iter().copied().chain([60.0, 120.0]).collect();
        let sizes = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        let embedding_queue_rejections =
            IntCounter::new("embedding_queue_rejections_total", "Embedding requests refused with 429").expect("valid");
        register(Box::new(embedding_queue_rejections.clone()));
        let warmup_ready_workers = GaugeVec::new(
            Opts::new("warmup_pool_ready_workers", "Warmed workers ready to serve"),
            &["model", "capability", "executor"],
        )
        .expect("valid");
        register(Box::new(warmup_ready_workers.clone()));
        let uptime = Gauge::new("process_uptime_seconds", "Seconds since the process started").expect("valid");
        register(Box::new(uptime.clone()));
        Self {
            embedding_requests: counter(
                "embedding_requests_total",
                "Embedding requests by status",
                &["model", "status"],
            ),
            embedding_latency: histogram(
                "embedding_request_latency_seconds",
                "Embedding request latency",
                latency.clone(),
            ),
            embedding_queue_wait: histogram(
                "embedding_request_queue_wait_seconds",
                "Time an embedding request waited before its batch ran",
                latency.clone(),
            ),
            embedding_batch_wait: histogram(
                "embedding_batch_wait_seconds",
                "Wait of the oldest text of each embedding batch",
                latency,
            ),
            embedding_batch_size: histogram("embedding_batch_size", "Texts per embedding batch", sizes),
            rerank_requests: counter("rerank_requests_total", "Rerank requests by status", &["model", "status"]),
            rerank_latency: histogram(
                "rerank_request_latency_seconds",
                "Rerank request latency",
                LATENCY_BUCKETS.to_vec(),
            ),
            rerank_queue_wait: histogram(
                "rerank_request_queue_wait_seconds",
                "Time a rerank request waited before its batch ran",
                LATENCY_BUCKETS.to_vec(),
            ),
            rerank_documents: counter("rerank_documents_total", "Documents scored by rerank requests", &["model"]),
            embedding_queue_rejections,
            embedding_cache_hits: counter("embedding_cache_hits_total", "Embedding cache hits", &["model"]),
            embedding_cache_misses: counter("embedding_cache_misses_total", "Embedding cache misses", &["model"]),
            embedding_tokens: counter("embedding_tokens_total", "Tokens embedded", &["model"]),
            chat_requests: counter("chat_requests_total", "Chat requests by status", &["model", "status"]),
            chat_latency: histogram("chat_request_latency_seconds", "Chat request latency", latency_long.clone()),
            chat_queue_wait: histogram(
                "chat_request_queue_wait_seconds",
                "Wait before a chat request joined the batch",
                latency_long.clone(),
            ),
            chat_batch_wait: histogram(
                "chat_batch_wait_seconds",
                "Wait for a slot in the running chat batch",
                latency_long.clone(),
            ),
            chat_batch_size: histogram(
                "chat_batch_size",
                "Sequences per chat decode step",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            ),
            chat_ttft: histogram(
                "chat_time_to_first_token_seconds",
                "Time to the first generated token",
                latency_long.clone(),
            ),
            chat_inter_token: histogram(
                "chat_inter_token_latency_seconds",
                "Time between generated tokens",
                LATENCY_BUCKETS.to_vec(),
            ),
            chat_tokens: counter("chat_tokens_generated_total", "Completion tokens generated", &["model"]),
            chat_prompt_tokens: counter("chat_prompt_tokens_total", "Prompt tokens processed", &["model"]),
            chat_cancelled: counter(
                "chat_requests_cancelled_total",
                "Chat sequences stopped because the client left",
                &["model"],
            ),
            chat_queue_rejections: counter(
                "chat_batch_queue_rejections_total",
                "Chat requests refused with 429",
                &["model"],
            ),
            chat_oom_retries: counter(
                "chat_batch_oom_retries_total",
                "Chat batches shrunk after running out of memory",
                &["model"],
            ),
            device_memory: [
                gauge("device_memory_used_bytes", "GPU memory in use by every process", &["device"]),
                gauge("device_memory_reserved_bytes", "GPU memory held by the models sis loaded", &["device"]),
                gauge("device_memory_total_bytes", "GPU memory in all", &["device"]),
            ],
            chat_requeues: counter("chat_batch_requeues_total", "Chat sequences put back in the queue", &["model"]),
            chat_queue_size: gauge("chat_batch_queue_size", "Chat requests waiting for a batch slot", &["model"]),
            chat_pool_size: gauge("chat_count_pool_size", "Chat sequences running", &[]),
            audio_requests: counter("audio_requests_total", "Audio requests by status", &["model", "status"]),
            audio_latency: histogram("audio_request_latency_seconds", "Audio request latency", latency_long.clone()),
            audio_queue_wait: histogram(
                "audio_request_queue_wait_seconds",
                "Wait before an audio request ran",
                latency_long.clone(),
            ),
            audio_seconds: {
                let c = prometheus::CounterVec::new(
                    Opts::new("audio_seconds_total", "Seconds of audio transcribed"),
                    &["model"],
                )
                .expect("valid");
                register(Box::new(c.clone()));
                c
            },
            image_rejections: counter("remote_image_rejections_total", "Image inputs refused, by reason", &["reason"]),
            queue_depth: gauge("model_queue_depth", "Requests waiting or running", &["model", "capability"]),
            queue_capacity: gauge("model_queue_capacity", "Queue capacity", &["model", "capability"]),
            model_state: gauge("model_state", "1 for the model actor's current state", &["model", "state"]),
            model_restarts: counter("model_restarts_total", "Engine restarts by the supervisor", &["model"]),
            lifecycle_events: counter("model_lifecycle_events_total", "Lifecycle events", &["model", "state"]),
            warmup_ready_workers,
            uptime,
            registry,
            families: families.into_inner(),
            started: std::time::Instant::now(),
        }
    }

    /// The text exposition of every metric. Families with no samples yet are listed with their HELP
    /// and TYPE, so dashboards and alerts can be checked against the full set.
    pub fn render(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        for usage in crate::engines::device::usage() {
            let [used, reserved, total] = &self.device_memory;
            reserved.with_label_values(&[usage.device.as_str()]).set(usage.reserved as i64);
            if let Some(m) = usage.memory {
                used.with_label_values(&[usage.device.as_str()]).set((m.total - m.free) as i64);
                total.with_label_values(&[usage.device.as_str()]).set(m.total as i64);
            }
        }
        let gathered: Vec<MetricFamily> = self.registry.gather();
        let mut out = Vec::new();
        TextEncoder::new().encode(&gathered, &mut out).expect("text encoding cannot fail");
        let mut text = String::from_utf8(out).expect("prometheus text is utf-8");
        for (name, help, kind) in &self.families {
            if gathered.iter().any(|f| f.name() == name) {
                continue;
            }
            let kind = match kind {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
            };
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
