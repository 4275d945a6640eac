//! `sis bench embeddings`.

use clap::Args;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

use super::corpus;
use super::report::Report;

/// Options of the embeddings benchmark.
#[derive(Args, Debug)]
pub struct EmbeddingsBench {
    /// Server base URL (the seed's scripts: `--base-url`, `BASE_URL`).
    #[arg(long, visible_alias = "base-url", env = "BASE_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Model id (the seed's scripts: `--model-name`, `MODEL_NAME`).
    #[arg(long, visible_alias = "model-name", env = "MODEL_NAME", default_value = "all-MiniLM-L6-v2")]
    model: String,
    /// Requests to send (the seed's scripts: `--n-requests`).
    #[arg(long, visible_alias = "n-requests", default_value_t = 2000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Sentences per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Corpus seed (every sentence is distinct, so the server cache does not flatter the figure).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// `float` or `base64`.
    #[arg(long, default_value = "float")]
    encoding_format: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: EmbeddingsBench) -> anyhow::Result<()> {
    let texts = corpus::sentences(args.requests * args.batch, args.seed);
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let endpoint = format!("{}/v1/embeddings", args.url.trim_end_matches('/'));
    let bar = super::progress(args.requests, args.json);
    let started = Instant::now();
    let outcomes: Vec<(String, Duration, usize)> = futures_util::stream::iter(texts.chunks(args.batch.max(1)))
        .map(|chunk| {
            let body = serde_json::json!({
                "model": args.model,
                "input": chunk,
                "encoding_format": args.encoding_format,
            });
            let (client, endpoint, bar) = (&client, &endpoint, &bar);
            async move {
                let (status, latency) = super::timed(client.post(endpoint).json(&body)).await;
                bar.inc(1);
                (status, latency, chunk.len())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();
    bar.finish_and_clear();
    let report = Report::new("embeddings", "texts", args.concurrency, wall, &outcomes);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}
