//! Element-wise math for the encoders' hot loops: `exp`, row softmax and exact GeLU.
//!
//! libm's `expf` is a scalar call; a 30-second Whisper window takes 54 million of them in its softmaxes
//! alone. Here `exp` is a polynomial that the compiler vectorizes, and each entry point is compiled
//! twice, for AVX-512 and for the baseline, picked once per call.

/// `e^x` to within 2 ulp for x in [-87, 88] (Cephes' `expf` polynomial); 0 below, +inf above.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // SAFETY: after the clamp, n is an integer in [-126, 127], so the conversion is exact (and, unlike
    // `as`, it vectorizes).
    let n = unsafe { n.to_int_unchecked::<i32>() };
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

/// Whether the CPU has the AVX-512 subset the wide variants are compiled for (detected once).
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn $name(args)` that runs `$generic(args)` compiled for AVX-512 where the CPU has it (the
/// generic body is `#[inline(always)]`, so the compiler vectorizes it sixteen lanes wide there).
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident = $generic:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if $crate::engines::kernels::elementwise::has_avx512() {
                    // SAFETY: the features it was compiled for were just detected.
                    return unsafe { wide($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

const LANES: usize = 16;

/// `row ← softmax(row)`.
#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            max[l] = if c[l] > max[l] { c[l] } else { max[l] };
        }
    }
    let mut m = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m = max.iter().copied().fold(m, f32::max);
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
    /// `row ← softmax(row)`.
    pub fn softmax = softmax_generic(row: &mut [f32])
}
dispatch! {
    /// Exact (erf) GeLU in place.
    pub fn gelu_erf = gelu_erf_generic(values: &mut [f32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, libm {want}");
            x += 0.0137;
        }
        assert_eq!(exp(-1000.0), (-87f32).exp());
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        for len in [1usize, 5, 16, 37, 1500] {
            let mut row: Vec<f32> = (0..len).map(|i| ((i * 7919) % 101) as f32 / 7.0 - 5.0).collect();
            let reference: Vec<f32> = {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
                let s: f32 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            };
            softmax(&mut row);
            for (g, w) in row.iter().zip(&reference) {
                assert!((g - w).abs() < 1e-6, "len {len}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn gelu_matches_the_reference() {
        let mut values: Vec<f32> = (0..200).map(|i| i as f32 / 20.0 - 5.0).collect();
        let reference: Vec<f32> = values.iter().map(|&z| 0.5 * z * (1.0 + libm_erf(z / 2f32.sqrt()))).collect();
        gelu_erf(&mut values);
        for (g, w) in values.iter().zip(&reference) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    fn libm_erf(x: f32) -> f32 {
        // Series for small |x| and 1 − erfc for large, in f64, as an independent reference.
        let x = x as f64;
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 && n < 400.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
    }
}
