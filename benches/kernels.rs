//! Dense-layer kernels against candle's f32 matmul, at the shapes of the encoders we serve
//! (all-MiniLM-L6-v2 and whisper tiny: width 384, feed-forward 1536), for 32 and 864 rows
//! (one sentence; a batch of 32 corpus sentences).
//!
//! Run `cargo bench --bench kernels`.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sis::engines::kernels::bf16::{self, PackedBf16};

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

criterion_group!(benches, dense);
criterion_main!(benches);
