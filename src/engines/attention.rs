//! Self-attention over packed sequences (no padding).
//!
//! The packed layout keeps the tokens of every sequence of a batch back to back in one `[tokens, 3 ×
//! hidden]` QKV matrix, so the linear layers never see padding. Attention then runs per sequence and
//! head. On CPU a direct kernel reads Q, K and V in place (Q is pre-scaled by 1/√d at load), which is
//! much cheaper than hundreds of tiny tensor ops; other devices use the same math with candle ops.

use candle_core::{Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// Token ranges of the sequences in a packed batch.
#[derive(Debug, Clone)]
pub struct Packing {
    /// `(start, len)` of each sequence, in order, covering every token.
    pub spans: Vec<(usize, usize)>,
    /// Total tokens.
    pub tokens: usize,
}

impl Packing {
    /// The packing of sequences of the given lengths.
    pub fn new(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut spans = Vec::new();
        let mut start = 0;
        for len in lengths {
            spans.push((start, len));
            start += len;
        }
        Self { spans, tokens: start }
    }
}

/// Attention of every sequence over itself: `qkv` is `[tokens, 3·heads·head_dim]` with Q already
/// scaled; returns `[tokens, heads·head_dim]`.
pub fn packed_attention(qkv: &Tensor, packing: &Packing, heads: usize, head_dim: usize) -> Result<Tensor> {
    match qkv.device() {
        Device::Cpu => cpu_attention(qkv, packing, heads, head_dim),
        _ => tensor_attention(qkv, packing, heads, head_dim),
    }
}

/// A dot product in eight independent lanes, so that it vectorizes (one running sum cannot be
/// reordered by the compiler).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn cpu_attention(qkv: &Tensor, packing: &Packing, heads: usize, head_dim: usize) -> Result<Tensor> {
    let hidden = heads * head_dim;
    let qkv = qkv.contiguous()?;
    let (storage, layout) = qkv.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { unreachable!("checked device") };
    let data = &cpu.as_slice::<f32>()?[layout.start_offset()..];
    let stride = 3 * hidden;
    let mut out = vec![0f32; packing.tokens * hidden];

    // Split the output into one disjoint slice per sequence, then run sequences in parallel.
    let mut chunks = Vec::with_capacity(packing.spans.len());
    let mut rest = out.as_mut_slice();
    for &(start, len) in &packing.spans {
        let (chunk, tail) = rest.split_at_mut(len * hidden);
        chunks.push((start, len, chunk));
        rest = tail;
    }
    chunks.into_par_iter().for_each(|(start, len, chunk)| {
        let mut scores = vec![0f32; len];
        for h in 0..heads {
            let q_off = h * head_dim;
            let k_off = hidden + h * head_dim;
            let v_off = 2 * hidden + h * head_dim;
            for i in 0..len {
                let q = &data[(start + i) * stride + q_off..][..head_dim];
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate() {
                    let k = &data[(start + j) * stride + k_off..][..head_dim];
                    let dot = dot(q, k);
                    *s = dot;
                    max = max.max(dot);
                }
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                let o = &mut chunk[i * hidden + h * head_dim..][..head_dim];
                o.fill(0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let v = &data[(start + j) * stride + v_off..][..head_dim];
                    let w = p * inv;
                    for (o, v) in o.iter_mut().zip(v) {
                        *o += w * v;
                    }
                }
            }
        }
    });
    drop(storage);
    Tensor::from_vec(out, (packing.tokens, hidden), &Device::Cpu)
}

fn tensor_attention(qkv: &Tensor, packing: &Packing, heads: usize, head_dim: usize) -> Result<Tensor> {
    let hidden = heads * head_dim;
    let mut outs = Vec::with_capacity(packing.spans.len());
    for &(start, len) in &packing.spans {
        let seq = qkv.narrow(0, start, len)?.reshape((len, 3, heads, head_dim))?;
        let q = seq.narrow(1, 0, 1)?.squeeze(1)?.transpose(0, 1)?.contiguous()?;
        let k = seq.narrow(1, 1, 1)?.squeeze(1)?.transpose(0, 1)?.contiguous()?;
        let v = seq.narrow(1, 2, 1)?.squeeze(1)?.transpose(0, 1)?.contiguous()?;
        let scores = q.matmul(&k.t()?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(0, 1)?.reshape((len, hidden))?;
        outs.push(ctx);
    }
    Tensor::cat(&outs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_kernel_matches_tensor_math() {
        let (heads, head_dim) = (2, 4);
        let packing = Packing::new([3, 1, 5]);
        let qkv = Tensor::randn(0f32, 1.0, (packing.tokens, 3 * heads * head_dim), &Device::Cpu).unwrap();
        let fast = cpu_attention(&qkv, &packing, heads, head_dim).unwrap();
        let slow = tensor_attention(&qkv, &packing, heads, head_dim).unwrap();
        let diff = (fast - slow).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "max difference {diff}");
    }
}
