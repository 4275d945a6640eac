//! `sis bench`: load generators against a running server, reporting throughput as completed requests
//! over wall time, latency percentiles and counts by status.

pub mod audio;
pub mod chat;
pub mod corpus;
pub mod embeddings;
pub mod report;
pub mod soak;

use clap::Subcommand;

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// POST /v1/embeddings with seeded English sentences.
    Embeddings(embeddings::EmbeddingsBench),
    /// Streaming POST /v1/chat/completions.
    Chat(chat::ChatBench),
    /// POST /v1/audio/transcriptions with one file.
    Audio(audio::AudioBench),
    /// Minutes of overload, printing the server's resident memory over time.
    Soak(soak::SoakBench),
}

/// A progress bar over `n` requests, hidden when the report goes out as JSON.
pub fn progress(n: usize, hidden: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Sends a request, reads the whole answer, and returns its status (`error` for transport failures)
/// and latency.
pub async fn timed(request: reqwest::RequestBuilder) -> (String, std::time::Duration) {
    let started = std::time::Instant::now();
    let status = match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16().to_string();
            let _ = r.bytes().await;
            status
        }
        Err(_) => "error".to_string(),
    };
    (status, started.elapsed())
}

/// Runs a benchmark on its own tokio runtime.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match command {
        BenchCommand::Embeddings(args) => runtime.block_on(embeddings::run(args)),
        BenchCommand::Chat(args) => runtime.block_on(chat::run(args)),
        BenchCommand::Audio(args) => runtime.block_on(audio::run(args)),
        BenchCommand::Soak(args) => runtime.block_on(soak::run(args)),
    }
}
