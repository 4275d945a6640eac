//! `sis bench audio`: one file transcribed many times, reporting throughput and the real-time factor
//! (seconds of audio transcribed per second of wall time).

use clap::Args;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

use super::report::Report;

/// Options of the audio benchmark.
#[derive(Args, Debug)]
pub struct AudioBench {
    /// Server base URL (the seed's scripts: `--base-url`, `BASE_URL`).
    #[arg(long, visible_alias = "base-url", env = "BASE_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Model id (the seed's scripts: `--model-name`, `MODEL_NAME`).
    #[arg(long, visible_alias = "model-name", env = "MODEL_NAME", default_value = "whisper-tiny.en")]
    model: String,
    /// The audio file to send.
    #[arg(long)]
    file: std::path::PathBuf,
    /// Requests to send (the seed's scripts: `--n-requests`).
    #[arg(long, visible_alias = "n-requests", default_value_t = 20)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// `response_format` to ask for.
    #[arg(long, default_value = "json")]
    response_format: String,
    /// `beam_size` to ask for (the server's default when absent; 1 is greedy).
    #[arg(long)]
    beam_size: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: AudioBench) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file)?;
    let extension = args.file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let samples = crate::audio::decode::decode(bytes.clone(), extension.as_deref(), 24 * 3600)?;
    let seconds = samples.len() as f64 / crate::engines::whisper::mel::SAMPLE_RATE as f64;
    let name = args.file.file_name().and_then(|n| n.to_str()).unwrap_or("audio").to_string();
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v1/audio/transcriptions", args.url.trim_end_matches('/'));
    let bar = super::progress(args.requests, args.json);
    let started = Instant::now();
    let outcomes: Vec<(String, Duration, usize)> = futures_util::stream::iter(0..args.requests)
        .map(|_| {
            let mut form = reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone()))
                .text("model", args.model.clone())
                .text("response_format", args.response_format.clone());
            if let Some(beam) = args.beam_size {
                form = form.text("beam_size", beam.to_string());
            }
            let (client, endpoint, bar) = (&client, &endpoint, &bar);
            async move {
                let (status, latency) = super::timed(client.post(endpoint).multipart(form)).await;
                bar.inc(1);
                (status, latency, 1)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();
    bar.finish_and_clear();
    let mut report = Report::new("audio", "audio seconds", args.concurrency, wall, &outcomes);
    report.units_per_second *= seconds;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
        println!("  real-time      {:.1}× ({seconds:.1} s clip)", report.units_per_second);
    }
    Ok(())
}
