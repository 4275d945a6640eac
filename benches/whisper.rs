//! The speech model alone (no HTTP, no actors), whisper-tiny.en:
//! - `whisper/encode_silence`: one 30-second window of silence, where the decoder stops at once, so the
//!   figure is the mel spectrogram plus the encoder;
//! - `whisper/transcribe_speech`: a spoken clip made with espeak-ng (skipped when it is not installed):
//!   encoder plus greedy decoding of the words.
//!
//! Run `cargo bench --bench whisper` after `sis models pull`. The kernels follow `SIS_CPU_KERNELS`
//! (printed first); under a forced family the group is named `whisper@avx2` and so on.

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use sis::engines::whisper::{AudioJob, WhisperLoader, WhisperSpec};
use sis_actors::EngineLoader;

fn job(samples: Vec<f32>) -> AudioJob {
    AudioJob::greedy(samples)
}

/// A clip spoken by espeak-ng, decoded with sis's own decoder; `None` without espeak-ng.
fn speech() -> Option<Vec<f32>> {
    let dir = tempfile::tempdir().ok()?;
    let wav = dir.path().join("clip.wav");
    let text = "The quick brown fox jumps over the lazy dog. Meetings start at nine in the morning.";
    let status = std::process::Command::new("espeak-ng").arg("-w").arg(&wav).arg(text).status().ok()?;
    if !status.success() {
        return None;
    }
    sis::audio::decode::decode(std::fs::read(&wav).ok()?, Some("wav"), 600).ok()
}

fn whisper(c: &mut Criterion) {
    let (_, dir) = support::model("whisper-tiny.en");
    let spec = WhisperSpec::from_dir(&dir).expect("spec");
    support::announce("whisper-tiny.en", &spec.kernels());
    let engine = WhisperLoader::new(spec).load().expect("engine");
    let mut group = c.benchmark_group(support::group("whisper"));
    group.sample_size(10);
    let silence = job(vec![0.0; 16_000 * 30]);
    group.bench_function("encode_silence", |b| b.iter(|| engine.transcribe(&silence).expect("transcribe")));
    match speech() {
        Some(samples) => {
            let clip = job(samples);
            group.bench_function("transcribe_speech", |b| b.iter(|| engine.transcribe(&clip).expect("transcribe")));
        }
        None => eprintln!("espeak-ng is not installed: skipping whisper/transcribe_speech"),
    }
    group.finish();
}

criterion_group!(benches, whisper);
criterion_main!(benches);
