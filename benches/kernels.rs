//! Our kernels against candle's ops (the reference path), at the shapes of the models we serve:
//! - `dense/*`: the bf16 kernel against candle's f32 matmul, at the encoders' shapes (all-MiniLM-L6-v2
//!   and whisper tiny: width 384, feed-forward 1536), for 32 and 864 rows (one sentence; a batch of 32
//!   corpus sentences);
//! - `quantized/*`: the VNNI kernel against candle's quantized matmul on Q4_1 weights of SmolLM2-135M's
//!   feed-forward shape (1536 × 576), for 1 and 8 rows (decode steps of one and eight sequences);
//! - `softmax/*` and `gelu/*`: the loops against candle's `softmax_last_dim` and `gelu_erf`, at Whisper
//!   tiny's shapes (rows of 1500 scores; the 1500 × 1536 feed-forward activations).
//!
//! `SIS_CPU_KERNELS` picks which of sis's kernels run beside the reference: `auto` every one this CPU
//! has, `reference` none, a family its own (`portable` and `avx2` compare the loops' builds). The
//! bench ids name the implementation, and the selection is printed first. Run `cargo bench --bench
//! kernels` (or `SIS_CPU_KERNELS=portable cargo bench --bench kernels`).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sis::engines::kernels::bf16::PackedBf16;
use sis::engines::kernels::elementwise::{gelu_erf, softmax};
use sis::engines::kernels::quantized::PackedQuant;
use sis::engines::kernels::{selection, Kernels};

/// The selected kernels, announced once.
fn kernels() -> Kernels {
    let selection = selection().unwrap_or_else(|e| panic!("{e}"));
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("SIS_CPU_KERNELS = {}", selection.describe()));
    selection.kernels()
}

fn dense(c: &mut Criterion) {
    let kernels = kernels();
    let mut group = c.benchmark_group("dense");
    group.sample_size(20);
    for &(m, n, k) in &[(32usize, 1152usize, 384usize), (864, 1152, 384), (864, 1536, 384), (864, 384, 1536)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let id = format!("{m}x{n}x{k}");
        group.bench_with_input(BenchmarkId::new("candle_f32", &id), &(), |b, _| b.iter(|| x.matmul(&wt).unwrap()));
        if let Some(cpu) = kernels.bf16 {
            let packed = PackedBf16::new(cpu, &w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), n, k, &[]);
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            group.bench_with_input(BenchmarkId::new("bf16", &id), &(), |b, _| b.iter(|| packed.forward(&xs, m)));
        }
    }
    group.finish();
}

fn quantized(c: &mut Criterion) {
    let kernels = kernels();
    let mut group = c.benchmark_group("quantized");
    group.sample_size(20);
    let (n, k) = (1536usize, 576usize);
    let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
    let packed = kernels.vnni.map(|cpu| PackedQuant::from_qtensor(cpu, &q).unwrap().expect("packable"));
    let candle = QMatMul::from_qtensor(q).unwrap();
    for m in [1usize, 8] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_with_input(BenchmarkId::new("candle_q4_1", m), &(), |b, _| b.iter(|| candle.forward(&x).unwrap()));
        if let Some(packed) = &packed {
            group.bench_with_input(BenchmarkId::new("vnni_q4_1", m), &(), |b, _| b.iter(|| packed.forward(&xs, m)));
        }
    }
    group.finish();
}

fn elementwise(c: &mut Criterion) {
    let kernels = kernels();
    let mut group = c.benchmark_group("softmax");
    group.sample_size(20);
    let (rows, len) = (64usize, 1500usize);
    let scores = Tensor::randn(0f32, 3.0, (rows, len), &Device::Cpu).unwrap();
    let values = scores.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    group.throughput(Throughput::Elements((rows * len) as u64));
    let id = format!("{rows}x{len}");
    group.bench_with_input(BenchmarkId::new("reference", &id), &(), |b, _| {
        b.iter(|| candle_nn::ops::softmax_last_dim(&scores).unwrap())
    });
    if let Some(simd) = kernels.simd {
        group.bench_with_input(BenchmarkId::new(simd.name(), &id), &(), |b, _| {
            b.iter(|| {
                let mut v = values.clone();
                v.chunks_exact_mut(len).for_each(|row| softmax(simd, row));
                v
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("gelu");
    group.sample_size(20);
    let (rows, width) = (1500usize, 1536usize);
    let x = Tensor::randn(0f32, 1.0, (rows, width), &Device::Cpu).unwrap();
    let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    group.throughput(Throughput::Elements((rows * width) as u64));
    let id = format!("{rows}x{width}");
    group.bench_with_input(BenchmarkId::new("reference", &id), &(), |b, _| b.iter(|| x.gelu_erf().unwrap()));
    if let Some(simd) = kernels.simd {
        group.bench_with_input(BenchmarkId::new(simd.name(), &id), &(), |b, _| {
            b.iter(|| {
                let mut v = values.clone();
                gelu_erf(simd, &mut v);
                v
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dense, quantized, elementwise);
criterion_main!(benches);
