//! Chooses a model's dense kernel by timing the candidates on the model's own shapes, on this machine.
//!
//! Which GEMM is fastest depends on the CPU more than on its instruction list: on an Intel Xeon with
//! AVX-512 BF16, `vdpbf16ps` can be no faster than an f32 FMA, while on an AMD Zen 4 it is twice as fast;
//! without AVX-512 the choice is between our AVX2 kernel and candle's. So each model's shapes are timed
//! once per process (results are kept for models of the same shapes), on a pool of as many threads as an
//! engine's, and the fastest candidate wins. The timings are part of the model's kernel report in
//! `/health`, and logged.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use super::bf16::PackedBf16;
use super::fma::PackedF32;
use super::{sample_values as values, DenseKernel, Pool};

/// A product's shape: `(rows, out, in)`, the rows of `x` times a `[out, in]` weight.
pub type Shape = (usize, usize, usize);

/// Timed runs of each candidate on each shape (after one untimed run); the best of them counts.
const RUNS: usize = 3;

/// The candidates' times on a model's shapes, fastest first.
#[derive(Debug, PartialEq, Eq)]
pub struct Measurement {
    /// The shapes timed.
    pub shapes: Vec<Shape>,
    /// Each candidate with its time for one product of every shape (best of [`RUNS`]), fastest first.
    pub times: Vec<(DenseKernel, Duration)>,
}

impl Measurement {
    /// The fastest candidate.
    pub fn fastest(&self) -> DenseKernel {
        self.times.first().map_or(DenseKernel::Reference, |(kernel, _)| *kernel)
    }

    /// `measured: fma-avx2 1.21 ms, reference 3.02 ms`.
    pub fn describe(&self) -> String {
        let times: Vec<String> = self
            .times
            .iter()
            .map(|(kernel, time)| format!("{} {:.2} ms", kernel.name(), time.as_secs_f64() * 1e3))
            .collect();
        format!("measured: {}", times.join(", "))
    }
}

/// The measurement of `candidates` on `shapes`, made on first use and kept for the process.
pub fn dense(candidates: &[DenseKernel], shapes: &[Shape]) -> &'static Measurement {
    type Key = (Vec<&'static str>, Vec<Shape>);
    static DONE: OnceLock<Mutex<HashMap<Key, &'static Measurement>>> = OnceLock::new();
    let key = (candidates.iter().map(|c| c.name()).collect(), shapes.to_vec());
    // Held while measuring, so that two models of the same shapes measure once and two measurements
    // never run at the same time (they would slow each other down).
    let mut done = DONE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = done.get(&key) {
        return found;
    }
    let measurement: &'static Measurement = Box::leak(Box::new(measure(candidates, shapes)));
    tracing::info!(shapes = ?shapes, times = %measurement.describe(), chosen = measurement.fastest().name(), "dense kernel");
    done.insert(key, measurement);
    measurement
}

/// Times every candidate on every shape, on a pool like an engine's.
fn measure(candidates: &[DenseKernel], shapes: &[Shape]) -> Measurement {
    // A pool of its own, dropped after: measurements happen once per model shape, at load.
    let pool = Pool::new("measure").ok();
    let run = || {
        let mut times: Vec<(DenseKernel, Duration)> = candidates.iter().map(|&c| (c, Duration::ZERO)).collect();
        for &(m, n, k) in shapes {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let b = values(n, 3);
            for (kernel, total) in times.iter_mut() {
                *total = total.saturating_add(best_of(*kernel, (&x, m), (&w, n, k), &b));
            }
        }
        // A stable sort keeps the preferred candidate first on a tie.
        times.sort_by_key(|(_, time)| *time);
        times
    };
    let times = match &pool {
        Some(pool) => pool.run(run),
        None => run(),
    };
    Measurement { shapes: shapes.to_vec(), times }
}

/// The best time of [`RUNS`] products `x · Wᵀ + b` on `kernel` (after one untimed run); a candidate that
/// fails to run takes forever.
fn best_of(kernel: DenseKernel, (x, m): (&[f32], usize), (w, n, k): (&[f32], usize, usize), b: &[f32]) -> Duration {
    let time = |f: &mut dyn FnMut()| {
        f();
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .min()
            .unwrap_or(Duration::MAX)
    };
    match kernel {
        DenseKernel::Bf16(cpu) => {
            let packed = PackedBf16::new(cpu, w, n, k, b);
            time(&mut || drop(std::hint::black_box(packed.forward(x, m))))
        }
        DenseKernel::Fma(cpu) => {
            let packed = PackedF32::new(cpu, w, n, k, b);
            time(&mut || drop(std::hint::black_box(packed.forward(x, m))))
        }
        DenseKernel::Reference => {
            let tensors = Tensor::from_slice(x, (m, k), &Device::Cpu).and_then(|x| {
                let wt = Tensor::from_slice(w, (n, k), &Device::Cpu)?.t()?.contiguous()?;
                Ok((x, wt, Tensor::from_slice(b, n, &Device::Cpu)?))
            });
            match tensors {
                Ok((x, wt, b)) => time(&mut || {
                    let _ = std::hint::black_box(x.matmul(&wt).and_then(|y| y.broadcast_add(&b)));
                }),
                Err(_) => Duration::MAX,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::{Avx2, Fma};

    #[test]
    fn every_candidate_is_timed_and_the_fastest_is_first() {
        let mut candidates = vec![DenseKernel::Reference];
        candidates.extend(Avx2::detect().map(|t| DenseKernel::Fma(Fma::Avx2(t))));
        let shapes = [(16, 96, 64), (16, 64, 96)];
        let m = dense(&candidates, &shapes);
        assert_eq!(m.times.len(), candidates.len());
        assert!(m.times.windows(2).all(|w| w[0].1 <= w[1].1), "{m:?}");
        assert!(m.times.iter().all(|(_, t)| *t > Duration::ZERO && *t < Duration::from_secs(1)), "{m:?}");
        assert_eq!(m.fastest(), m.times[0].0);
        assert!(m.describe().starts_with("measured: "), "{}", m.describe());
        assert!(std::ptr::eq(m, dense(&candidates, &shapes)), "a second model of the same shapes measures again");
    }
}
