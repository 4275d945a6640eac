//! `sis bench`: load generators against a running server, reporting throughput as completed requests
//! over wall time, latency percentiles and counts by status.

pub mod audio;
pub mod chat;
pub mod corpus;
pub mod embeddings;
pub mod report;

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
}

/// Runs a benchmark on its own tokio runtime.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match command {
        BenchCommand::Embeddings(args) => runtime.block_on(embeddings::run(args)),
        BenchCommand::Chat(args) => runtime.block_on(chat::run(args)),
        BenchCommand::Audio(args) => runtime.block_on(audio::run(args)),
    }
}
