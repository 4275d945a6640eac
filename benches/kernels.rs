//! Our kernels against candle's ops (the reference path), at the shapes of the models we serve:
//! - `dense/*`: the f32 GEMM (`fma-avx2`, `fma-avx512`) and the bf16 GEMM against candle's f32 matmul, at
//!   the encoders' shapes (all-MiniLM-L6-v2 and whisper tiny: width 384, feed-forward 1536; whisper
//!   base: 512 and 2048), for 32, 864 and 1500 rows (one sentence; a batch of 32 corpus sentences; a
//!   30-second window). Throughput is in FLOP (2·m·n·k). Each of sis's GEMMs also prints its share of
//!   the f32 FMA peak of the cores it ran on, measured first (and of `SIS_PEAK_GFLOPS`, all cores,
//!   where it is set).
//! - `quantized/*`: the int8 kernel against candle's quantized matmul on Q4_1 and Q4_K weights of
//!   SmolLM2-135M's feed-forward shape (1536 × 576), for 1, 8 and 64 rows (decode steps of one and
//!   eight sequences; a prompt chunk);
//! - `softmax/*` and `gelu/*`: the loops against candle's `softmax_last_dim` and `gelu_erf`, at Whisper
//!   tiny's shapes (rows of 1500 scores; the 1500 × 1536 feed-forward activations).
//!
//! `SIS_CPU_KERNELS` picks which of sis's kernels run beside the reference: `auto` every one this CPU
//! has, `reference` none, a family its own (`portable` and `avx2` compare the loops' builds). The
//! bench ids name the implementation, and the selection is printed first. Run `cargo bench --bench
//! kernels` (or `cargo bench --bench kernels -- dense`).

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sis::engines::kernels::bf16::PackedBf16;
use sis::engines::kernels::elementwise::{gelu_erf, softmax};
use sis::engines::kernels::fma::PackedF32;
use sis::engines::kernels::quantized::PackedQuant;
use sis::engines::kernels::{selection, DenseKernel, Fma, Kernels, Pool};

/// The selected kernels, announced once.
fn kernels() -> Kernels {
    let selection = selection().unwrap_or_else(|e| panic!("{e}"));
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("SIS_CPU_KERNELS = {}", selection.describe()));
    selection.kernels()
}

/// The f32 FMA peak of one core, measured: twelve independent chains of `vfmadd` (AVX2, or AVX-512 where
/// the CPU has it), every one kept live to the end so that no compiler can drop any.
///
/// `../shared/tools/cpu-peaks` builds its loop with GCC, which keeps only the two accumulators it
/// prints, finds them equal and runs one latency-bound chain, counted as twelve: on an AMD EPYC (Zen 3)
/// it prints 138 GFLOP/s per core where the core does 2 FMA per cycle, about 92. This loop is the
/// honest figure; the bench prints the share of both.
#[cfg(target_arch = "x86_64")]
fn fma_peak_per_core() -> f64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(n: usize) -> f32 {
        let (x, y) = (_mm256_set1_ps(std::hint::black_box(1.0001)), _mm256_set1_ps(0.9999));
        // Distinct starting values, so that no two chains are the same computation.
        let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(x, y, *a);
            }
        }
        let mut sum = [0f32; 8];
        _mm256_storeu_ps(sum.as_mut_ptr(), acc.iter().fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a)));
        sum.iter().sum()
    }
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(n: usize) -> f32 {
        let (x, y) = (_mm512_set1_ps(std::hint::black_box(1.0001)), _mm512_set1_ps(0.9999));
        let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(x, y, *a);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a)))
    }
    let wide = std::arch::is_x86_feature_detected!("avx512f");
    if !wide && !std::arch::is_x86_feature_detected!("fma") {
        return f64::NAN;
    }
    let n = 20_000_000;
    let start = Instant::now();
    // SAFETY: the features were detected above.
    std::hint::black_box(unsafe {
        if wide {
            avx512(std::hint::black_box(n))
        } else {
            avx2(std::hint::black_box(n))
        }
    });
    let lanes = if wide { 16.0 } else { 8.0 };
    (n * 12) as f64 * lanes * 2.0 / start.elapsed().as_secs_f64() / 1e9
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak_per_core() -> f64 {
    f64::NAN
}

/// Prints a GEMM's rate (best of 20 runs on `pool`) and its share of the f32 FMA peak of the pool's
/// cores: measured here ([`fma_peak_per_core`]) and, where `SIS_PEAK_GFLOPS` is set, that figure
/// (all cores).
fn share_of_peak(pool: &Pool, name: &str, id: &str, flop: usize, f: impl Fn() -> Vec<f32> + Sync) {
    static PEAK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let measured = *PEAK.get_or_init(|| {
        let per_core = fma_peak_per_core();
        eprintln!("f32 FMA peak, measured: {per_core:.1} GFLOP/s per core");
        per_core * pool.threads() as f64
    });
    let best = pool.run(|| {
        (0..20)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    });
    let gflops = flop as f64 / best / 1e9;
    let mut line =
        format!("dense/{name}/{id}: {gflops:.1} GFLOP/s, {:.0} % of {measured:.0}", 100.0 * gflops / measured);
    if let Some(given) = std::env::var("SIS_PEAK_GFLOPS").ok().and_then(|v| v.parse::<f64>().ok()) {
        line += &format!(", {:.0} % of SIS_PEAK_GFLOPS={given}", 100.0 * gflops / given);
    }
    eprintln!("{line}");
}

fn dense(c: &mut Criterion) {
    let kernels = kernels();
    // sis's kernels run on an engine's pool; candle's on rayon's global one.
    let pool = Pool::new("bench").unwrap();
    // Every f32 GEMM build the selection may choose between.
    let candidates = selection().map(|s| s.dense_candidates()).unwrap_or_default();
    let fma: Vec<Fma> =
        candidates.iter().filter_map(|d| if let DenseKernel::Fma(cpu) = d { Some(*cpu) } else { None }).collect();
    let mut group = c.benchmark_group("dense");
    group.sample_size(20);
    for &(m, n, k) in &[
        (32usize, 1152usize, 384usize),
        (864, 1152, 384),
        (864, 1536, 384),
        (864, 384, 1536),
        (1500, 1536, 384),
        (1500, 2048, 512),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let (xs, ws) =
            (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let flop = 2 * m * n * k;
        group.throughput(Throughput::Elements(flop as u64));
        let id = format!("{m}x{n}x{k}");
        group.bench_with_input(BenchmarkId::new("candle_f32", &id), &(), |b, _| b.iter(|| x.matmul(&wt).unwrap()));
        for &cpu in &fma {
            let name = DenseKernel::Fma(cpu).name();
            let packed = PackedF32::new(cpu, &ws, n, k, &[]);
            group.bench_with_input(BenchmarkId::new(name, &id), &(), |b, _| {
                b.iter(|| pool.run(|| packed.forward(&xs, m)))
            });
            share_of_peak(&pool, name, &id, flop, || packed.forward(&xs, m));
        }
        if let Some(cpu) = kernels.bf16 {
            let packed = PackedBf16::new(cpu, &ws, n, k, &[]);
            group.bench_with_input(BenchmarkId::new("bf16", &id), &(), |b, _| {
                b.iter(|| pool.run(|| packed.forward(&xs, m)))
            });
            share_of_peak(&pool, "bf16", &id, flop, || packed.forward(&xs, m));
        }
    }
    group.finish();
}

fn quantized(c: &mut Criterion) {
    let kernels = kernels();
    let pool = Pool::new("bench").unwrap();
    let mut group = c.benchmark_group("quantized");
    group.sample_size(20);
    // SmolLM2's MLP up projection in Q4_1; Qwen2.5-0.5B's down projection in Q4_K (K-quants take
    // inputs in super-blocks of 256).
    for (dtype, n, k) in [(GgmlDType::Q4_1, 1536usize, 576usize), (GgmlDType::Q4K, 896, 4864)] {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let packed = kernels.int8.map(|cpu| PackedQuant::from_qtensor(cpu, &q).unwrap().expect("packable"));
        let candle = QMatMul::from_qtensor(q).unwrap();
        let name = format!("{dtype:?}").to_lowercase();
        for m in [1usize, 8, 64] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_with_input(BenchmarkId::new(format!("candle_{name}"), m), &(), |b, _| {
                b.iter(|| candle.forward(&x).unwrap())
            });
            if let Some(packed) = &packed {
                let id = format!("{}_{name}", kernels.quantized());
                group.bench_with_input(BenchmarkId::new(id, m), &(), |b, _| {
                    b.iter(|| pool.run(|| packed.forward(&xs, m)))
                });
            }
        }
    }
    // Whisper tiny's output projection (the token embedding, rounded to 8 bits): greedy and beam-5 steps.
    let (n, k) = (51_865usize, 384usize);
    let w: Vec<f32> =
        Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    if let Some(cpu) = kernels.int8 {
        let packed = PackedQuant::from_f32(cpu, &w, n, k);
        for m in [1usize, 5] {
            let xs = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{}_whisper_output", kernels.quantized()), m),
                &(),
                |b, _| b.iter(|| pool.run(|| packed.forward(&xs, m))),
            );
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
