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
        /// `[out]`, if the layer has one.
        bias: Option<Tensor>,
    },
    /// The AVX-512 BF16 kernel.
    Bf16(PackedBf16),
}

impl Dense {
    /// Builds from a torch-layout weight `[out, in]` and its bias `[out]`, if any.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, bf16: bool) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        if bf16 {
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.map(|b| b.to_vec1::<f32>()).transpose()?.unwrap_or_default();
            Ok(Dense::Bf16(PackedBf16::new(&w, n, k, &b)))
        } else {
            Ok(Dense::F32 { weight_t: weight.t()?.contiguous()?, bias: bias.cloned() })
        }
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
            Dense::Bf16(packed) => map_rows(x, packed.n(), |rows, m| {
                let mut y = packed.forward(rows, m);
                f(&mut y);
                y
            }),
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
