//! `sis bench soak`: sustained overload for minutes, sampling the server's resident memory from
//! `/metrics` (`process_resident_memory_bytes`) to show that it levels off, and counting statuses to
//! show every request is answered (200 or 429, never a transport error or a 5xx).

use clap::Args;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::corpus;

/// Options of the soak run.
#[derive(Args, Debug)]
pub struct SoakBench {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// How long to keep the load up, in seconds.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// Clients sending back to back (well above the queues' capacity, so some get 429).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Embedding model to load (empty to skip).
    #[arg(long, default_value = "all-MiniLM-L6-v2")]
    embedding_model: String,
    /// Chat model to load too (empty to skip); every fourth client chats.
    #[arg(long, default_value = "")]
    chat_model: String,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 10)]
    every: u64,
}

fn rss(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")?.trim().parse().ok())
}

/// Runs the soak and prints memory over time and the status counts.
pub async fn run(args: SoakBench) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let texts = Arc::new(corpus::sentences(4096, 7));
    let mut workers = Vec::new();
    for worker in 0..args.concurrency.max(1) {
        let (client, base, statuses, done, texts) =
            (client.clone(), base.clone(), statuses.clone(), done.clone(), texts.clone());
        let chat = !args.chat_model.is_empty() && (worker % 4 == 3 || args.embedding_model.is_empty());
        let (embedding_model, chat_model) = (args.embedding_model.clone(), args.chat_model.clone());
        workers.push(tokio::spawn(async move {
            let mut i = worker;
            while !done.load(Ordering::SeqCst) {
                let request = if chat {
                    client.post(format!("{base}/v1/chat/completions")).json(&serde_json::json!({
                        "model": chat_model, "max_tokens": 16, "temperature": 0.7,
                        "messages": [{ "role": "user", "content": texts[i % texts.len()] }],
                    }))
                } else {
                    let batch: Vec<&String> = (0..4).map(|k| &texts[(i * 4 + k) % texts.len()]).collect();
                    client
                        .post(format!("{base}/v1/embeddings"))
                        .json(&serde_json::json!({ "model": embedding_model, "input": batch }))
                };
                let (status, _) = super::timed(request).await;
                *statuses.lock().expect("counts").entry(status).or_insert(0) += 1;
                i += args.concurrency.max(1);
            }
        }));
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    println!("{:>8}  {:>12}  {:>10}  statuses", "t (s)", "RSS (MiB)", "requests");
    loop {
        let metrics = client.get(format!("{base}/metrics")).send().await?.text().await?;
        let mib = rss(&metrics).map(|b| b / (1024.0 * 1024.0));
        let counts = statuses.lock().expect("counts").clone();
        let total: u64 = counts.values().sum();
        let t = started.elapsed().as_secs_f64();
        println!("{t:>8.0}  {:>12}  {total:>10}  {counts:?}", mib.map(|m| format!("{m:.1}")).unwrap_or("?".into()));
        if let Some(m) = mib {
            samples.push((t, m));
        }
        if started.elapsed() >= Duration::from_secs(args.duration) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(args.every.max(1))).await;
    }
    done.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    let counts = statuses.lock().expect("counts").clone();
    let half = samples.len() / 2;
    if let (Some(first), Some(mid), Some(last)) = (samples.first(), samples.get(half), samples.last()) {
        let peak = samples.iter().map(|s| s.1).fold(0.0, f64::max);
        println!(
            "RSS: start {:.1} MiB, half-way {:.1} MiB, end {:.1} MiB, peak {peak:.1} MiB; second-half growth {:+.1}%",
            first.1,
            mid.1,
            last.1,
            (last.1 / mid.1 - 1.0) * 100.0
        );
    }
    let bad: u64 = counts.iter().filter(|(s, _)| !matches!(s.as_str(), "200" | "429")).map(|(_, n)| n).sum();
    println!("statuses: {counts:?}; outside 200/429: {bad}");
    Ok(())
}
