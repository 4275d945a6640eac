//! Latency and status summary of a benchmark run.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Benchmark name.
    pub bench: String,
    /// Requests sent.
    pub requests: usize,
    /// Requests answered 200.
    pub completed: usize,
    /// Concurrency.
    pub concurrency: usize,
    /// Wall time in seconds.
    pub wall_seconds: f64,
    /// Completed requests per second of wall time.
    pub requests_per_second: f64,
    /// Work units (texts, tokens, audio seconds) per second, completed only.
    pub units_per_second: f64,
    /// The unit.
    pub unit: String,
    /// Latency percentiles of completed requests, milliseconds.
    pub latency_ms: BTreeMap<String, f64>,
    /// Count per HTTP status (`error` for transport failures).
    pub statuses: BTreeMap<String, usize>,
    /// Further percentile tables (chat: time to first token, inter-token latency).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, BTreeMap<String, f64>>,
}

/// p50 / p95 / p99 / max of values (milliseconds), rounded to 0.01.
pub fn percentiles(mut values: Vec<f64>) -> BTreeMap<String, f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    [("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("max", 100.0)]
        .into_iter()
        .map(|(k, p)| (k.to_string(), (pct(p) * 100.0).round() / 100.0))
        .collect()
}

impl Report {
    /// Summarises per-request outcomes: `(status, latency, units)`.
    pub fn new(
        bench: &str,
        unit: &str,
        concurrency: usize,
        wall: Duration,
        outcomes: &[(String, Duration, usize)],
    ) -> Self {
        let mut statuses = BTreeMap::new();
        let mut latencies = Vec::new();
        let mut units = 0;
        for (status, latency, n) in outcomes {
            *statuses.entry(status.clone()).or_insert(0) += 1;
            if status == "200" {
                latencies.push(latency.as_secs_f64() * 1e3);
                units += n;
            }
        }
        let completed = latencies.len();
        let latency_ms = percentiles(latencies);
        let secs = wall.as_secs_f64().max(1e-9);
        Self {
            bench: bench.into(),
            requests: outcomes.len(),
            completed,
            concurrency,
            wall_seconds: secs,
            requests_per_second: completed as f64 / secs,
            units_per_second: units as f64 / secs,
            unit: unit.into(),
            latency_ms,
            statuses,
            extra: BTreeMap::new(),
        }
    }

    /// Human-readable lines.
    pub fn print(&self) {
        println!("{}: {} requests at concurrency {}", self.bench, self.requests, self.concurrency);
        println!("  completed      {} in {:.2} s", self.completed, self.wall_seconds);
        println!(
            "  throughput     {:.1} req/s, {:.1} {}/s",
            self.requests_per_second, self.units_per_second, self.unit
        );
        let l = &self.latency_ms;
        println!("  latency (ms)   p50 {} | p95 {} | p99 {} | max {}", l["p50"], l["p95"], l["p99"], l["max"]);
        for (name, table) in &self.extra {
            println!(
                "  {name:<14} p50 {} | p95 {} | p99 {} | max {}",
                table["p50"], table["p95"], table["p99"], table["max"]
            );
        }
        println!("  statuses       {:?}", self.statuses);
    }
}
