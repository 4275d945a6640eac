//! The embedding engine alone (no HTTP, no actors), all-MiniLM-L6-v2:
//! - `minilm_engine/B`: corpus sentences (27 word pieces on average) at batch 1, 8, 32 and 128;
//! - `minilm_tokens/T`: batches of 8 sequences of exactly T tokens (16, 64, 256), to see cost per token.
//!
//! Run `cargo bench --bench embeddings` after `sis models pull`. The kernels follow `SIS_CPU_KERNELS`
//! (printed first); under a forced family the groups are named `minilm_engine@avx2` and so on.

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sis::bench::corpus;
use sis::engines::embed::{EmbedderLoader, EmbedderSpec};
use sis_actors::EngineLoader;

fn engine_batches(c: &mut Criterion) {
    let (entry, dir) = support::model("all-MiniLM-L6-v2");
    let spec = EmbedderSpec::from_dir(&dir, &entry, Default::default()).expect("spec");
    let tokenizer = spec.tokenizer().expect("tokenizer");
    support::announce("all-MiniLM-L6-v2", &spec.kernels());
    let mut engine = EmbedderLoader { spec }.load().expect("engine");
    let sentences = corpus::sentences(512, 7);
    let ids: Vec<Vec<u32>> = sentences.iter().map(|s| tokenizer.encode(s).expect("tokenize")).collect();

    let mut group = c.benchmark_group(support::group("minilm_engine"));
    group.sample_size(10);
    for batch in [1usize, 8, 32, 128] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut offset = 0;
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let seqs: Vec<&[u32]> = (0..batch).map(|i| ids[(offset + i) % ids.len()].as_slice()).collect();
                offset = (offset + batch) % ids.len();
                engine.embed(&seqs).expect("embed")
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group(support::group("minilm_tokens"));
    group.sample_size(10);
    for tokens in [16usize, 64, 256] {
        let seqs: Vec<Vec<u32>> =
            (0..8).map(|s| (0..tokens).map(|t| 1000 + ((s * 31 + t * 7) % 20000) as u32).collect()).collect();
        group.throughput(Throughput::Elements((8 * tokens) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(tokens), &tokens, |b, _| {
            let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            b.iter(|| engine.embed(&refs).expect("embed"))
        });
    }
    group.finish();
}

criterion_group!(benches, engine_batches);
criterion_main!(benches);
