//! Our kernels against candle's, at the shapes of the models we serve:
//! - `dense/*`: the bf16 kernel against candle's f32 matmul, at the encoders' shapes (all-MiniLM-L6-v2
//!   and whisper tiny: width 384, feed-forward 1536), for 32 and 864 rows (one sentence; a batch of 32
//!   corpus sentences);
//! - `quantized/*`: the VNNI kernel against candle's quantized matmul on Q4_1 weights of SmolLM2-135M's
//!   feed-forward shape (1536 × 576), for 1 and 8 rows (decode steps of one and eight sequences).
//!
//! Run `cargo bench --bench kernels`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sis::engines::kernels::bf16::{self, PackedBf16};
use sis::engines::kernels::quantized::{self, PackedQuant};

fn dense(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense");
    group.sample_size(20);
    for &(m, n, k) in &[(32usize, 1152usize, 384usize), (864, 1152, 384), (864, 1536, 384), (864, 384, 1536)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let id = format!("{m}x{n}x{k}");
        group.bench_with_input(BenchmarkId::new("candle_f32", &id), &(), |b, _| b.iter(|| x.matmul(&wt).unwrap()));
        if bf16::supported() {
            let packed = PackedBf16::new(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), n, k, &[]);
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            group.bench_with_input(BenchmarkId::new("bf16", &id), &(), |b, _| b.iter(|| packed.forward(&xs, m)));
        }
    }
    group.finish();
}

fn quantized(c: &mut Criterion) {
    let mut group = c.benchmark_group("quantized");
    group.sample_size(20);
    let (n, k) = (1536usize, 576usize);
    let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
    let packed = PackedQuant::from_qtensor(&q).unwrap().expect("packable");
    let candle = QMatMul::from_qtensor(q).unwrap();
    for m in [1usize, 8] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_with_input(BenchmarkId::new("candle_q4_1", m), &(), |b, _| b.iter(|| candle.forward(&x).unwrap()));
        if quantized::supported() {
            group.bench_with_input(BenchmarkId::new("vnni_q4_1", m), &(), |b, _| b.iter(|| packed.forward(&xs, m)));
        }
    }
    group.finish();
}

criterion_group!(benches, dense, quantized);
criterion_main!(benches);
