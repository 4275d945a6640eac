//! Whisper's audio encoder on [`Dense`] layers: the two convolutions as im2col + one dense layer each,
//! then pre-norm attention blocks with Q, K and V fused, and attention per head as two matrix products.
//!
//! The encoder is most of the cost of a transcription (a 30-second window whatever the clip's length),
//! and it is compute-bound, so every product runs on the model's dense kernel (sis's f32 or bf16 GEMM,
//! whichever measured faster here; attention included); `precision = "f32"` keeps bf16 out. GeLU runs on the
//! loops of [`crate::engines::kernels::elementwise`], or candle's where the kernels select none.

use candle_core::{Device, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use rayon::prelude::*;

use crate::engines::kernels::{DenseKernel, Kernels, Simd};
use crate::engines::nn::attention::{packed_attention, Packing};
use crate::engines::nn::dense::Dense;

/// A kernel-3, padding-1 convolution over time as one dense layer on im2col rows.
struct Conv {
    dense: Dense,
    stride: usize,
    in_channels: usize,
    /// Where the layer runs (the columns are gathered on the host, then sent there).
    device: Device,
}

impl Conv {
    fn load(
        vb: &VarBuilder,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        kernel: DenseKernel,
    ) -> Result<Self> {
        // [out, in, 3] flattens to [out, in·3]: column c·3 + j multiplies input channel c at offset j − 1.
        let weight = vb.get((out_channels, in_channels, 3), "weight")?.reshape((out_channels, in_channels * 3))?;
        let dense = Dense::new(&weight, Some(&vb.get(out_channels, "bias")?), kernel)?;
        Ok(Self { dense, stride, in_channels, device: vb.device().clone() })
    }

    /// `input(c, t)` reads the input; returns GeLU(conv) as `[steps, out]` (time-major), the GeLU on the
    /// loops' build `simd` (candle's without one).
    fn forward(
        &self,
        steps: usize,
        frames: usize,
        simd: Option<Simd>,
        input: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Result<Tensor> {
        let width = self.in_channels * 3;
        let mut cols = vec![0f32; steps * width];
        cols.par_chunks_mut(width).enumerate().for_each(|(t, row)| {
            for c in 0..self.in_channels {
                for j in 0..3 {
                    let at = (t * self.stride + j).checked_sub(1).filter(|&f| f < frames);
                    row[c * 3 + j] = at.map_or(0.0, |f| input(c, f));
                }
            }
        });
        let cols = Tensor::from_vec(cols, (steps, width), &self.device)?;
        self.dense.forward_gelu(&cols, simd)
    }
}

struct Block {
    attn_norm: candle_nn::LayerNorm,
    qkv: Dense,
    out: Dense,
    mlp_norm: candle_nn::LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

/// The loaded encoder.
pub struct AudioEncoder {
    conv1: Conv,
    conv2: Conv,
    positions: Tensor,
    blocks: Vec<Block>,
    final_norm: candle_nn::LayerNorm,
    heads: usize,
    width: usize,
    kernels: Kernels,
}

fn layer_norm(vb: &VarBuilder, width: usize) -> Result<candle_nn::LayerNorm> {
    Ok(candle_nn::LayerNorm::new(vb.get(width, "weight")?, vb.get(width, "bias")?, 1e-5))
}

/// openai-whisper's sinusoidal position table `[length, channels]`.
fn sinusoids(length: usize, channels: usize, device: &Device) -> Result<Tensor> {
    let half = channels / 2;
    let step = 10_000f32.ln() / (half - 1) as f32;
    let mut table = vec![0f32; length * channels];
    for (t, row) in table.chunks_exact_mut(channels).enumerate() {
        for i in 0..half {
            let angle = t as f32 * (-(i as f32) * step).exp();
            row[i] = angle.sin();
            row[half + i] = angle.cos();
        }
    }
    Tensor::from_vec(table, (length, channels), device)
}

impl AudioEncoder {
    /// Loads `model.encoder.*` (Hub names) from `vb`, laid out for `kernels`.
    pub fn load(
        vb: &VarBuilder,
        mels: usize,
        width: usize,
        heads: usize,
        layers: usize,
        positions: usize,
        kernels: Kernels,
    ) -> Result<Self> {
        let dense_kernel = kernels.dense;
        let head_dim = width / heads;
        let scale = (head_dim as f64).powf(-0.5);
        let blocks = (0..layers)
            .map(|i| {
                let l = vb.pp(format!("layers.{i}"));
                let a = l.pp("self_attn");
                let q = (a.get((width, width), "q_proj.weight")? * scale)?;
                let qb = (a.get(width, "q_proj.bias")? * scale)?;
                let k = a.get((width, width), "k_proj.weight")?;
                let kb = Tensor::zeros(width, candle_core::DType::F32, vb.device())?;
                let v = a.get((width, width), "v_proj.weight")?;
                let vb_ = a.get(width, "v_proj.bias")?;
                let qkv =
                    Dense::new(&Tensor::cat(&[q, k, v], 0)?, Some(&Tensor::cat(&[qb, kb, vb_], 0)?), dense_kernel)?;
                let dense = |name: &str, i: usize, o: usize| -> Result<Dense> {
                    Dense::new(
                        &l.get((o, i), &format!("{name}.weight"))?,
                        Some(&l.get(o, &format!("{name}.bias"))?),
                        dense_kernel,
                    )
                };
                Ok(Block {
                    attn_norm: layer_norm(&l.pp("self_attn_layer_norm"), width)?,
                    qkv,
                    out: dense("self_attn.out_proj", width, width)?,
                    mlp_norm: layer_norm(&l.pp("final_layer_norm"), width)?,
                    fc1: dense("fc1", width, 4 * width)?,
                    fc2: dense("fc2", 4 * width, width)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1: Conv::load(&vb.pp("conv1"), mels, width, 1, dense_kernel)?,
            conv2: Conv::load(&vb.pp("conv2"), width, width, 2, dense_kernel)?,
            positions: sinusoids(positions, width, vb.device())?,
            blocks,
            final_norm: layer_norm(&vb.pp("layer_norm"), width)?,
            heads,
            width,
            kernels,
        })
    }

    /// Encodes one window of log-mel frames `[mels, frames]` (row-major) into `[1, frames/2, width]`.
    pub fn forward(&self, mel: &[f32], mels: usize) -> Result<Tensor> {
        let frames = mel.len() / mels;
        let simd = self.kernels.simd;
        let x = self.conv1.forward(frames, frames, simd, |c, f| mel[c * frames + f])?;
        let x1 = x.flatten_all()?.to_vec1::<f32>()?;
        let steps = frames.div_ceil(2);
        let width = self.width;
        let x = self.conv2.forward(steps, frames, simd, |c, f| x1[f * width + c])?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, steps)?)?;
        for block in &self.blocks {
            let qkv = block.qkv.forward(&block.attn_norm.forward(&x)?)?;
            let context = packed_attention(
                &qkv,
                &Packing::new([steps]),
                (self.heads, self.width / self.heads),
                None,
                self.kernels,
            )?;
            x = (x + block.out.forward(&context)?)?;
            let hidden = block.fc1.forward_gelu(&block.mlp_norm.forward(&x)?, simd)?;
            x = (&x + block.fc2.forward(&hidden)?)?;
        }
        self.final_norm.forward(&x)?.unsqueeze(0)
    }
}
