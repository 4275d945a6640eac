//! The embedding engine alone (no HTTP, no actors): all-MiniLM-L6-v2 at batch sizes 1, 8 and 32
//! over sentences of the benchmark corpus. Run `cargo bench --bench embeddings` after
//! `sis models pull` (the model must be in the Hugging Face cache).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sis::bench::corpus;
use sis::config::{Overrides, Settings};
use sis::engines::embedder::{EmbedderLoader, EmbedderSpec};
use sis::models::resolve;
use sis_actors::EngineLoader;

fn engine_batches(c: &mut Criterion) {
    let overrides = Overrides {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml").into()),
        ..Default::default()
    };
    let (settings, roster) = Settings::load(&overrides).expect("roster");
    let entry = roster.select(&["all-MiniLM-L6-v2".into()]).expect("entry").remove(0);
    let found = resolve(&entry, &settings.hf_cache, false).expect("run `sis models pull` first");
    let spec = EmbedderSpec::from_dir(&found.dir, &entry, "cpu").expect("spec");
    let tokenizer = spec.tokenizer().expect("tokenizer");
    let mut engine = EmbedderLoader { spec }.load().expect("engine");
    let sentences = corpus::sentences(256, 7);
    let ids: Vec<Vec<u32>> = sentences.iter().map(|s| tokenizer.encode(s).expect("tokenize")).collect();

    let mut group = c.benchmark_group("minilm_engine");
    group.sample_size(20);
    for batch in [1usize, 8, 32] {
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
}

criterion_group!(benches, engine_batches);
criterion_main!(benches);
