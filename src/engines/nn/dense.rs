//! A dense (fully connected) layer on the model's dense kernel: sis's f32 GEMM or bf16 GEMM where the
//! model's kernels chose one, else candle's f32 matmul (the reference path).
//!
//! Encoders are compute-bound on CPU. The f32 GEMM computes what the reference does, faster; bf16 dot
//! products double the arithmetic per instruction where the CPU has them, and embeddings stay within
//! 1e-3 cosine of the f32 result (`tests/embeddings.rs` checks it on real weights). `precision = "f32"`
//! in the roster keeps bf16 out for operators who want f32 sums of f32 products.

use candle_core::{Device, Result, Storage, Tensor};

use crate::engines::kernels::bf16::PackedBf16;
use crate::engines::kernels::elementwise::gelu_erf;
use crate::engines::kernels::fma::PackedF32;
use crate::engines::kernels::{DenseKernel, Simd};

/// `x · Wᵀ + b` over the last dimension of `x`.
pub enum Dense {
    /// candle's matmul on the transposed weight `[in, out]`: the reference path.
    F32 {
        /// `[in, out]`, contiguous.
        weight_t: Tensor,
        /// `[out]`, if the layer has one.
        bias: Option<Tensor>,
    },
    /// sis's f32 GEMM (AVX2 or AVX-512).
    Fma(PackedF32),
    /// The AVX-512 BF16 kernel.
    Bf16(PackedBf16),
}

impl Dense {
    /// Builds from a torch-layout weight `[out, in]` and its bias `[out]`, if any, on `kernel`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, kernel: DenseKernel) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let host = || -> Result<(Vec<f32>, Vec<f32>)> {
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            Ok((w, bias.map(|b| b.to_vec1::<f32>()).transpose()?.unwrap_or_default()))
        };
        match kernel {
            DenseKernel::Bf16(cpu) => {
                let (w, b) = host()?;
                Ok(Dense::Bf16(PackedBf16::new(cpu, &w, n, k, &b)))
            }
            DenseKernel::Fma(cpu) => {
                let (w, b) = host()?;
                Ok(Dense::Fma(PackedF32::new(cpu, &w, n, k, &b)))
            }
            DenseKernel::Reference => Ok(Dense::F32 { weight_t: weight.t()?.contiguous()?, bias: bias.cloned() }),
        }
    }

    /// As [`Dense::new`], for a layer that runs a few rows at a time (decode steps), which is bound by
    /// reading its weights: on sis's f32 GEMM they are kept as f16 where every one is exactly a half
    /// (the same results from half the bytes).
    pub fn for_few_rows(weight: &Tensor, bias: Option<&Tensor>, kernel: DenseKernel) -> Result<Self> {
        if let DenseKernel::Fma(cpu) = kernel {
            let (n, k) = weight.dims2()?;
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.map(|b| b.to_vec1::<f32>()).transpose()?.unwrap_or_default();
            if let Some(packed) = PackedF32::new_exact_f16(cpu, &w, n, k, &b) {
                return Ok(Dense::Fma(packed));
            }
        }
        Self::new(weight, bias, kernel)
    }

    /// Whether the weights are kept as f16 (see [`Dense::for_few_rows`]).
    pub fn is_f16(&self) -> bool {
        matches!(self, Dense::Fma(packed) if packed.is_f16())
    }

    /// `x · Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Dense::F32 { weight_t, bias } => {
                let y = x.broadcast_matmul(weight_t)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Dense::Fma(packed) => map_rows(x, packed.n(), |rows, m| packed.forward(rows, m)),
            Dense::Bf16(packed) => map_rows(x, packed.n(), |rows, m| packed.forward(rows, m)),
        }
    }

    /// `f(x · Wᵀ + b)`, with `f` applied in place to the output (a fused activation).
    pub fn forward_then(&self, x: &Tensor, f: impl Fn(&mut [f32])) -> Result<Tensor> {
        match self {
            Dense::F32 { .. } => {
                let y = self.forward(x)?;
                let (shape, mut values) = (y.shape().clone(), y.flatten_all()?.to_vec1::<f32>()?);
                f(&mut values);
                Tensor::from_vec(values, shape, y.device())
            }
            Dense::Fma(packed) => map_rows(x, packed.n(), |rows, m| {
                let mut y = packed.forward(rows, m);
                f(&mut y);
                y
            }),
            Dense::Bf16(packed) => map_rows(x, packed.n(), |rows, m| {
                let mut y = packed.forward(rows, m);
                f(&mut y);
                y
            }),
        }
    }

    /// Exact (erf) GeLU of `x · Wᵀ + b`: fused on the loops' build `simd`, or candle's `gelu_erf` (the
    /// reference path) without one.
    pub fn forward_gelu(&self, x: &Tensor, simd: Option<Simd>) -> Result<Tensor> {
        match simd {
            Some(simd) => self.forward_then(x, |v| gelu_erf(simd, v)),
            None => self.forward(x)?.gelu_erf(),
        }
    }
}

/// Runs a CPU kernel on the rows of `x` (`[…, k]`): `kernel` gets them as one contiguous slice of `m`
/// rows and returns `[m, n]`, which comes back shaped `[…, n]`.
pub fn map_rows(x: &Tensor, n: usize, kernel: impl FnOnce(&[f32], usize) -> Vec<f32>) -> Result<Tensor> {
    let dims = x.dims();
    let k = *dims.last().unwrap_or(&0);
    let m = x.elem_count() / k.max(1);
    let x = x.contiguous()?;
    let y = {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("sis's kernels run on CPU tensors only") };
        let start = layout.start_offset();
        kernel(&cpu.as_slice::<f32>()?[start..start + m * k], m)
    };
    let mut out_dims = dims.to_vec();
    match out_dims.last_mut() {
        Some(last) => *last = n,
        None => candle_core::bail!("a dense layer's input needs a last dimension"),
    }
    Tensor::from_vec(y, out_dims, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::{Avx2, Avx512Bf16, Fma, STALE_BUILD};

    fn layer(n: usize, k: usize) -> (Tensor, Tensor, Tensor) {
        let w = (Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap() * 0.1).unwrap();
        let b = Tensor::randn(0f32, 1.0, n, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 5, k), &Device::Cpu).unwrap();
        (w, b, x)
    }

    #[test]
    fn the_reference_path_is_x_times_w_transposed_plus_b() {
        let (w, b, x) = layer(7, 9);
        let dense = Dense::new(&w, Some(&b), DenseKernel::Reference).unwrap();
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let got = dense.forward(&x).unwrap();
        assert_eq!(got.dims(), &[2, 5, 7]);
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        let gelu = dense.forward_gelu(&x, None).unwrap();
        let fused = dense.forward_gelu(&x, Some(Simd::Portable)).unwrap();
        let diff = (gelu - fused).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "candle's GeLU against the loops': {diff}");
    }

    /// The largest difference between a layer on `kernel` and the reference path.
    fn off_the_reference(kernel: DenseKernel) -> f32 {
        let (w, b, x) = layer(70, 96);
        let exact = Dense::new(&w, Some(&b), DenseKernel::Reference).unwrap().forward(&x).unwrap();
        let fast = Dense::new(&w, Some(&b), kernel).unwrap().forward(&x).unwrap();
        assert_eq!(fast.dims(), exact.dims());
        (fast - exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512bf16), ignore = "needs AVX-512 BF16")]
    fn the_bf16_layer_matches_the_reference_to_bf16_rounding() {
        let cpu = Avx512Bf16::detect().expect(STALE_BUILD);
        let diff = off_the_reference(DenseKernel::Bf16(cpu));
        assert!(diff < 2e-2, "{diff}");
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2")]
    fn the_f32_layer_matches_the_reference_to_f32_rounding() {
        let cpu = Avx2::detect().expect(STALE_BUILD);
        let diff = off_the_reference(DenseKernel::Fma(Fma::Avx2(cpu)));
        assert!(diff < 1e-5, "{diff}");
    }
}
