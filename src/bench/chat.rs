//! `sis bench chat`: streaming chat completions, reporting completion tokens per second of wall time,
//! time to first token and per-token latency.

use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::report::{percentiles, Report};

/// Options of the chat benchmark.
#[derive(Args, Debug)]
pub struct ChatBench {
    /// Server base URL (the seed's scripts: `--base-url`, `BASE_URL`).
    #[arg(long, visible_alias = "base-url", env = "BASE_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Model id (the seed's scripts: `--model-name`, `MODEL_NAME`).
    #[arg(long, visible_alias = "model-name", env = "MODEL_NAME", default_value = "SmolLM2-135M-Instruct")]
    model: String,
    /// The user message (a run tag and request number go before it, so that prompts differ from
    /// their first tokens on and no server answers from a cached prefix, even across runs).
    #[arg(long, default_value = "Write a short paragraph about the history of bridges.")]
    prompt: String,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests to send (`--requests` as the other benchmarks spell it).
    #[arg(long = "n-requests", visible_alias = "requests", default_value_t = 32)]
    n_requests: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

struct Outcome {
    status: String,
    latency: Duration,
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
    tokens: usize,
}

async fn one(client: &reqwest::Client, endpoint: &str, body: Value) -> Outcome {
    let started = Instant::now();
    let mut outcome =
        Outcome { status: "error".into(), latency: Duration::ZERO, ttft: None, gaps: Vec::new(), tokens: 0 };
    let Ok(response) = client.post(endpoint).json(&body).send().await else { return outcome };
    outcome.status = response.status().as_u16().to_string();
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut last = None;
    while let Some(Ok(bytes)) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            let Ok(chunk) = serde_json::from_str::<Value>(data) else { continue };
            if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                outcome.tokens = n as usize;
            }
            let has_text = chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match last {
                    None => outcome.ttft = Some(now - started),
                    Some(prev) => outcome.gaps.push(now - prev),
                }
                last = Some(now);
            }
        }
    }
    outcome.latency = started.elapsed();
    outcome
}

/// Runs the benchmark and prints its report.
pub async fn run(args: ChatBench) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let endpoint = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let bar = super::progress(args.n_requests, args.json);
    // This run's own tag, so that a repeated run does not meet its earlier prompts in a server's cache.
    let run =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() % 1_000_000);
    let started = Instant::now();
    let outcomes: Vec<Outcome> = futures_util::stream::iter(0..args.n_requests)
        .map(|i| {
            let body = json!({
                "model": args.model,
                "messages": [{ "role": "user", "content": format!("Request {run}-{}. {}", i + 1, args.prompt) }],
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
                "stream": true,
                "stream_options": { "include_usage": true },
            });
            let (client, endpoint, bar) = (&client, &endpoint, &bar);
            async move {
                let outcome = one(client, endpoint, body).await;
                bar.inc(1);
                outcome
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();
    bar.finish_and_clear();
    let rows: Vec<(String, Duration, usize)> =
        outcomes.iter().map(|o| (o.status.clone(), o.latency, o.tokens)).collect();
    let mut report = Report::new("chat", "completion tokens", args.concurrency, wall, &rows);
    let ttft: Vec<f64> = outcomes.iter().filter_map(|o| o.ttft).map(|d| d.as_secs_f64() * 1e3).collect();
    let gaps: Vec<f64> = outcomes.iter().flat_map(|o| o.gaps.iter()).map(|d| d.as_secs_f64() * 1e3).collect();
    report.extra =
        BTreeMap::from([("ttft_ms".to_string(), percentiles(ttft)), ("inter_token_ms".to_string(), percentiles(gaps))]);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}
