//! Element-wise math for the hot loops: `exp`, row softmax and log-softmax, exact GeLU and the gated
//! feed-forward's SiLU product.
//!
//! libm's `expf` is a scalar call; a 30-second Whisper window takes 54 million of them in its softmaxes
//! alone. Here `exp` is a polynomial that the compiler vectorizes, and each entry point is compiled for
//! the baseline, AVX2 and AVX-512, the build picked per call by a [`Simd`](super::Simd) token. The reference path is
//! candle's ops (`softmax_last_dim`, `gelu_erf`); [`softmax_reference`] and [`gelu_erf_reference`] are the
//! same functions in plain libm arithmetic, which the tests hold every build to.

/// `e^x` to within 2 ulp for x in [-87, 88] (Cephes' `expf` polynomial); e^-87 below, e^88 above, and
/// NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    // A NaN `x` (which the clamp keeps) must not reach the unchecked conversion below; it still makes
    // `r`, and so the result, NaN.
    let exponent = if n.is_nan() { 0.0 } else { n };
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // SAFETY: after the clamp and the NaN check, `exponent` is an integer in [-126, 127], so the
    // conversion is exact (and, unlike `as`, it vectorizes).
    let n = unsafe { exponent.to_int_unchecked::<i32>() };
    e * f32::from_bits(((n + 127) << 23) as u32)
}

/// erf(x) to within 1.5e-7 (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let (p, a1, a2, a3, a4, a5) = (0.327_591_1f32, 0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4);
    let s = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let t = 1.0 / (1.0 + p * x);
    let y = 1.0 - (((((a5 * t + a4) * t) + a3) * t + a2) * t + a1) * t * exp(-x * x);
    s * y
}

/// Defines `fn $name(simd, args)`, which runs `$generic(args)` compiled for the instruction set `simd`
/// proves (the generic body is `#[inline(always)]`, so the compiler vectorizes it eight or sixteen lanes
/// wide there). The loops fix their order of additions in explicit lanes and nothing fuses a multiply
/// with an add, so every build gives the same bits.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident = $generic:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        $vis fn $name(simd: $crate::engines::kernels::Simd, $($arg: $ty),*) {
            match simd {
                #[cfg(target_arch = "x86_64")]
                $crate::engines::kernels::Simd::Avx512(_) => {
                    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
                    unsafe fn wide($($arg: $ty),*) {
                        $generic($($arg),*)
                    }
                    // SAFETY: the `Avx512` token proves the CPU has the features it is compiled for.
                    unsafe { wide($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                $crate::engines::kernels::Simd::Avx2(_) => {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn wide($($arg: $ty),*) {
                        $generic($($arg),*)
                    }
                    // SAFETY: the `Avx2` token proves the CPU has the features it is compiled for.
                    unsafe { wide($($arg),*) }
                }
                _ => $generic($($arg),*),
            }
        }
    };
}

const LANES: usize = 16;

/// The largest value of `row` (−∞ for none), in lanes so that it vectorizes.
#[inline(always)]
fn max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let m = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    lanes.iter().copied().fold(m, f32::max)
}

/// `row ← softmax(row)`.
#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    let m = max(row);
    let mut sum = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = exp(c[l] - m);
            sum[l] += c[l];
        }
    }
    let mut total = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - m);
        total += *v;
    }
    let inv = 1.0 / (total + sum.iter().sum::<f32>());
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `row ← ln(softmax(row))`: each value less the log of the sum of all their exponentials.
#[inline(always)]
fn log_softmax_generic(row: &mut [f32]) {
    let m = max(row);
    let mut sum = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            sum[l] += exp(c[l] - m);
        }
    }
    let total = chunks.remainder().iter().map(|&v| exp(v - m)).sum::<f32>() + sum.iter().sum::<f32>();
    let log_sum = m + total.ln();
    row.iter_mut().for_each(|v| *v -= log_sum);
}

/// `gate ← silu(gate) · up`: a gated feed-forward's activation and product in one pass.
#[inline(always)]
fn silu_mul_generic(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + exp(-x)) * u;
    }
}

/// Exact (erf) GeLU in place.
#[inline(always)]
fn gelu_erf_generic(values: &mut [f32]) {
    for v in values {
        let z = *v;
        *v = 0.5 * z * (1.0 + erf(z * std::f32::consts::FRAC_1_SQRT_2));
    }
}

pub(crate) use dispatch;

dispatch! {
    /// `row ← softmax(row)`, on the loops' build `simd`.
    pub fn softmax = softmax_generic(row: &mut [f32])
}
dispatch! {
    /// `row ← ln(softmax(row))`, on the loops' build `simd`.
    pub fn log_softmax = log_softmax_generic(row: &mut [f32])
}
dispatch! {
    /// `gate ← silu(gate) · up`, on the loops' build `simd`.
    pub fn silu_mul = silu_mul_generic(gate: &mut [f32], up: &[f32])
}
dispatch! {
    /// Exact (erf) GeLU in place, on the loops' build `simd`.
    pub fn gelu_erf = gelu_erf_generic(values: &mut [f32])
}

/// `row ← softmax(row)` with libm's `exp` and f64 sums: the portable reference.
pub fn softmax_reference(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    row.iter_mut().zip(&exps).for_each(|(v, e)| *v = (e / sum) as f32);
}

/// `row ← ln(softmax(row))` with libm's `exp` and an f64 sum: the portable reference.
pub fn log_softmax_reference(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter_mut().for_each(|v| *v = (*v as f64 - log_sum) as f32);
}

/// `gate ← silu(gate) · up` in f64 with libm's `exp`: the portable reference.
pub fn silu_mul_reference(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g as f64;
        *g = (x / (1.0 + (-x).exp()) * u as f64) as f32;
    }
}

/// Exact GeLU, `x·(1 + erf(x/√2))/2`, with erf from its Taylor series in f64: the portable reference.
pub fn gelu_erf_reference(values: &mut [f32]) {
    for v in values {
        let x = *v as f64;
        *v = (0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))) as f32;
    }
}

/// erf in f64 to 1e-15: the Maclaurin series below |x| = 2, Laplace's continued fraction for erfc above.
fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let value = if a < 2.0 {
        let (mut sum, mut term, mut n) = (0f64, a, 0f64);
        while term.abs() > 1e-17 * sum.max(1e-300) || n < 1.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -a * a / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(−a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …)))), 60 levels deep.
        let mut fraction = a;
        for k in (1..60).rev() {
            fraction = a + (k as f64 / 2.0) / fraction;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / fraction
    };
    value.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::{Avx2, Avx512, Simd};

    #[test]
    fn exp_matches_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, libm {want}");
            x += 0.0137;
        }
        assert_eq!(exp(-1000.0), (-87f32).exp());
        assert!(exp(f32::NAN).is_nan() && erf(f32::NAN).is_nan());
        let mut row = [1.0, f32::NAN, 2.0];
        softmax(Simd::Portable, &mut row);
        assert!(row.iter().all(|v| v.is_nan()), "{row:?}");
    }

    #[test]
    fn the_erf_reference_is_erf() {
        // Tabulated values (Abramowitz & Stegun table 7.1, and erf(4), erf(6) to 16 digits).
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
            (4.0, 0.999_999_984_582_742_1),
            (6.0, 1.0),
        ] {
            assert!((erf_f64(x) - want).abs() < 1e-15, "erf({x}) = {}", erf_f64(x));
            assert!((erf_f64(-x) + want).abs() < 1e-15);
        }
    }

    fn rows() -> Vec<Vec<f32>> {
        [1usize, 5, 16, 37, 1500]
            .iter()
            .map(|&len| (0..len).map(|i| ((i * 7919) % 101) as f32 / 7.0 - 5.0).collect())
            .collect()
    }

    /// One build of the loops against the references, and bit for bit against the portable build.
    fn check(simd: Simd) {
        for row in rows() {
            let (mut got, mut want, mut portable) = (row.clone(), row.clone(), row.clone());
            softmax(simd, &mut got);
            softmax_reference(&mut want);
            softmax(Simd::Portable, &mut portable);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "{} softmax, len {}: {g} vs {w}", simd.name(), row.len());
            }
            assert_eq!(got, portable, "{} softmax differs from the portable build", simd.name());
        }
        // Log-softmax, also over a vocabulary-sized row with masked (−∞) entries.
        let mut masked: Vec<f32> = (0..51_865).map(|i| ((i * 7919) % 1009) as f32 / 50.0 - 10.0).collect();
        masked.iter_mut().step_by(3).for_each(|v| *v = f32::NEG_INFINITY);
        for row in rows().into_iter().chain([masked]) {
            let (mut got, mut want, mut portable) = (row.clone(), row.clone(), row.clone());
            log_softmax(simd, &mut got);
            log_softmax_reference(&mut want);
            log_softmax(Simd::Portable, &mut portable);
            for (g, w) in got.iter().zip(&want) {
                assert!(g == w || (g - w).abs() < 1e-5, "{} log-softmax, len {}: {g} vs {w}", simd.name(), row.len());
            }
            assert_eq!(got, portable, "{} log-softmax differs from the portable build", simd.name());
        }
        let values: Vec<f32> = (0..200).map(|i| i as f32 / 20.0 - 5.0).collect();
        let (mut got, mut want, mut portable) = (values.clone(), values.clone(), values);
        gelu_erf(simd, &mut got);
        gelu_erf_reference(&mut want);
        gelu_erf(Simd::Portable, &mut portable);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{} GeLU: {g} vs {w}", simd.name());
        }
        assert_eq!(got, portable, "{} GeLU differs from the portable build", simd.name());
        let up: Vec<f32> = (0..200).map(|i| (i % 7) as f32 - 3.0).collect();
        let gate: Vec<f32> = (0..200).map(|i| i as f32 / 2.0 - 50.0).collect();
        let (mut got, mut want, mut portable) = (gate.clone(), gate.clone(), gate);
        silu_mul(simd, &mut got, &up);
        silu_mul_reference(&mut want, &up);
        silu_mul(Simd::Portable, &mut portable, &up);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{} SiLU·up: {g} vs {w}", simd.name());
        }
        assert_eq!(got, portable, "{} SiLU·up differs from the portable build", simd.name());
    }

    #[test]
    fn portable_loops_match_the_reference() {
        check(Simd::Portable);
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2 and FMA")]
    fn avx2_loops_match_the_reference() {
        check(Simd::Avx2(Avx2::detect().expect(crate::engines::kernels::STALE_BUILD)));
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512), ignore = "needs AVX-512 F/BW/DQ/VL")]
    fn avx512_loops_match_the_reference() {
        check(Simd::Avx512(Avx512::detect().expect(crate::engines::kernels::STALE_BUILD)));
    }
}
