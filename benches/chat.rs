//! The chat model alone (no HTTP, no actors), SmolLM2-135M-Instruct Q4_1 through the packed step:
//! - `smollm_prefill/B`: B sequences each prefilling a 128-token prompt in one step;
//! - `smollm_decode/B`: one decode token for each of B sequences that hold 64 tokens of context.
//!
//! Throughput is in tokens. Run `cargo bench --bench chat` after `sis models pull`. The kernels follow
//! `SIS_CPU_KERNELS` at `precision = "auto"` (printed first); under a forced family the groups are named
//! `smollm_prefill@avx2` and so on.

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sis::config::roster::Precision;
use sis::engines::chat::llama::{ChatWeights, KvCache, Llama, StepInput};
use sis::engines::kernels::selection;
use std::time::{Duration, Instant};

fn prompt(seed: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|t| (100 + (seed * 131 + t * 17) % (vocab - 200)) as u32).collect()
}

/// Fresh caches holding the prompts, prefilled in one packed step.
fn prefill(model: &Llama, prompts: &[Vec<u32>]) -> Vec<KvCache> {
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut inputs: Vec<StepInput<'_>> =
        caches.iter_mut().zip(prompts).map(|(cache, p)| StepInput::text(cache, p, true).prompt()).collect();
    model.step(&mut inputs).expect("prefill");
    drop(inputs);
    caches
}

fn chat_steps(c: &mut Criterion) {
    let (entry, dir) = support::model("SmolLM2-135M-Instruct");
    let path = dir.join(entry.file.as_deref().expect("a GGUF file"));
    // The kernels the server would run: prompt rows' dense kernel timed on 128-row chunks.
    let header = candle_core::quantized::gguf_file::Content::read(&mut std::fs::File::open(&path).expect("model"))
        .expect("GGUF header");
    let weights = ChatWeights::of_gguf(&header);
    let kernels = selection()
        .and_then(|s| s.for_model(Precision::Auto, true, &weights.shapes(128)))
        .unwrap_or_else(|e| panic!("{e}"));
    let (model, _) = Llama::from_gguf(&path, kernels, &candle_core::Device::Cpu).expect("model");
    support::announce("SmolLM2-135M-Instruct", &weights.report(kernels));
    let vocab = model.config.vocab;

    let mut group = c.benchmark_group(support::group("smollm_prefill"));
    group.sample_size(10);
    for batch in [1usize, 4, 8] {
        let prompts: Vec<Vec<u32>> = (0..batch).map(|s| prompt(s, 128, vocab)).collect();
        group.throughput(Throughput::Elements((batch * 128) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| b.iter(|| prefill(&model, &prompts)));
    }
    group.finish();

    let mut group = c.benchmark_group(support::group("smollm_decode"));
    group.sample_size(10);
    for batch in [1usize, 4, 8] {
        let prompts: Vec<Vec<u32>> = (0..batch).map(|s| prompt(s, 64, vocab)).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            // Caches are refilled every 32 steps (untimed), so the context stays between 64 and 96.
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let mut caches = prefill(&model, &prompts);
                    let token = [500u32];
                    for _ in 0..32.min(iters - done) {
                        let mut inputs: Vec<StepInput<'_>> =
                            caches.iter_mut().map(|cache| StepInput::text(cache, &token, true)).collect();
                        let started = Instant::now();
                        model.step(&mut inputs).expect("decode");
                        timed += started.elapsed();
                        done += 1;
                    }
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, chat_steps);
criterion_main!(benches);
