//! A dense (fully connected) layer that runs on the bf16 kernel where the CPU has one, else on
//! candle's f32 matmul.
//!
//! Encoders are compute-bound on CPU, and bf16 dot products double the arithmetic per instruction;
//! embeddings stay within 1e-3 cosine of the f32 result (`tests/embeddings.rs` checks it on real
//! weights). `precision = "f32"` in the roster keeps the exact path for operators who want it.

use candle_core::{Device, Result, Storage, Tensor};

use super::kernels::bf16::{self, PackedBf16};
use crate::config::roster::Precision;

/// Whether layers on `device` use the bf16 kernel; an explicit `bf16` the CPU cannot run is an error.
pub fn uses_bf16(precision: Precision, device: &Device) -> anyhow::Result<bool> {
    let available = matches!(device, Device::Cpu) && bf16::supported();
    match precision {
        Precision::Auto => Ok(available),
        Precision::F32 => Ok(false),
        Precision::Bf16 if available => Ok(true),
        Precision::Bf16 => anyhow::bail!("precision = \"bf16\" needs a CPU with AVX-512 BF16"),
    }
}

/// How dense layers multiply, for logs.
pub fn arithmetic(bf16: bool) -> &'static str {
    if bf16 {
        "bf16 products, f32 sums (AVX-512 BF16)"
    } else {
        "f32"
    }
}

/// `x · Wᵀ + b` over the last dimension of `x`.
pub enum Dense {
    /// candle's matmul on the transposed weight `[in, out]`.
    F32 {
        /// `[in, out]`, contiguous.
        weight_t: Tensor,
        /// `[out]`.
        bias: Tensor,
    },
    /// The AVX-512 BF16 kernel.
    Bf16(PackedBf16),
}

impl Dense {
    /// Builds from a torch-layout weight `[out, in]` and bias `[out]`.
    pub fn new(weight: &Tensor, bias: &Tensor, bf16: bool) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        if bf16 {
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.to_vec1::<f32>()?;
            Ok(Dense::Bf16(PackedBf16::new(&w, n, k, &b)))
        } else {
            Ok(Dense::F32 { weight_t: weight.t()?.contiguous()?, bias: bias.clone() })
        }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        match self {
            Dense::F32 { bias, .. } => bias.dims1().unwrap_or(0),
            Dense::Bf16(p) => p.n(),
        }
    }

    /// `x · Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Dense::F32 { weight_t, bias } => x.broadcast_matmul(weight_t)?.broadcast_add(bias),
            Dense::Bf16(_) => self.forward_then(x, |_| {}),
        }
    }

    /// `f(x · Wᵀ + b)`, with `f` applied in place to the output rows (a fused activation).
    pub fn forward_then(&self, x: &Tensor, f: impl Fn(&mut [f32])) -> Result<Tensor> {
        match self {
            Dense::F32 { weight_t, bias } => {
                let y = x.broadcast_matmul(weight_t)?.broadcast_add(bias)?;
                let (shape, mut values) = (y.shape().clone(), y.flatten_all()?.to_vec1::<f32>()?);
                f(&mut values);
                Tensor::from_vec(values, shape, y.device())
            }
            Dense::Bf16(packed) => {
                let dims = x.dims();
                let k = *dims.last().unwrap_or(&0);
                let m = x.elem_count() / k.max(1);
                let x = x.contiguous()?;
                let mut y = {
                    let (storage, layout) = x.storage_and_layout();
                    let Storage::Cpu(cpu) = &*storage else {
                        candle_core::bail!("the bf16 kernel runs on CPU tensors only")
                    };
                    let start = layout.start_offset();
                    packed.forward(&cpu.as_slice::<f32>()?[start..start + m * k], m)
                };
                f(&mut y);
                let mut out_dims = dims.to_vec();
                *out_dims.last_mut().expect("x has a last dimension") = packed.n();
                Tensor::from_vec(y, out_dims, &Device::Cpu)
            }
        }
    }
}
