//! Exact GeLU for the encoders' feed-forward layers, fused into the dense layer's output pass.
//!
//! candle computes GeLU with a scalar double-precision erf in a pass of its own; this uses a
//! single-precision erf (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7) on the rows the
//! dense layer just wrote; activations stay within 1e-5 of candle's.


/// erf(x) to within 1.5e-7.
#[inline]
pub fn erf(x: f32) -> f32 {
    let (p, a1, a2, a3, a4, a5) = (0.327_591_1f32, 0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4);
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + p * x);
    let y = 1.0 - (((((a5 * t + a4) * t) + a3) * t + a2) * t + a1) * t * (-x * x).exp();
    s * y
}

/// The exact (erf) GeLU, in place.
pub fn gelu_erf_in_place(values: &mut [f32]) {
    for v in values {
        let z = *v;
        *v = 0.5 * z * (1.0 + erf(z * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_the_reference_gelu() {
        let x = Tensor::randn(0f32, 3.0, (7, 33), &Device::Cpu).unwrap();
        let mut fast = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        gelu_erf_in_place(&mut fast);
        let fast = Tensor::from_vec(fast, (7, 33), &Device::Cpu).unwrap();
        let slow = x.gelu_erf().unwrap();
        let diff = (fast - slow).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "max difference {diff}");
        for v in [-3.0f32, -0.5, 0.0, 0.1, 2.0] {
            assert!((erf(v) - libm_erf(v)).abs() < 5e-7, "{v}: {} vs {}", erf(v), libm_erf(v));
        }
    }

    fn libm_erf(x: f32) -> f32 {
        // Series for small |x| and 1 − erfc for large, in f64, as an independent reference.
        let x = x as f64;
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 && n < 200.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
    }
}
