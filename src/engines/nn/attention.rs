//! Attention, written once for every model family.
//!
//! - [`sdpa`] / [`attention_weights`]: scaled dot-product attention in candle ops, the reference path
//!   (any device): Whisper's decoder, the Qwen3-VL vision tower, and packed attention off the CPU.
//! - [`packed_attention`]: self-attention over packed sequences (no padding), for encoders.
//! - [`cached_causal`]: a decoder's new tokens over their sequence's KV cache.
//!
//! The packed layout keeps the tokens of every sequence of a batch back to back in one `[tokens, 3 ×
//! hidden]` QKV matrix, so the linear layers never see padding. Attention then runs per sequence and
//! head. On CPU a direct kernel reads Q, K and V in place (Q is pre-scaled by 1/√d at load), which is
//! much cheaper than hundreds of tiny tensor ops. The reference path, [`tensor_attention`], is the same
//! math in candle ops: it runs on other devices and where the model's [`Kernels`] select no loops.

use candle_core::{Device, Result, Storage, Tensor};
use rayon::prelude::*;

use crate::engines::kernels::bf16::PackedBf16;
use crate::engines::kernels::elementwise::{dispatch, exp, softmax};
use crate::engines::kernels::fma::PackedF32;
use crate::engines::kernels::{DenseKernel, Fma, Kernels, Simd};

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

/// Sequences at least this long take matrix products (sis's GEMMs or candle's f32) instead of the
/// loops: below it, laying out K and V costs more than it saves.
const LONG: usize = 64;

/// Attention of every sequence over itself: `qkv` is `[tokens, 3·heads·head_dim]` with Q already
/// scaled; returns `[tokens, heads·head_dim]`. On the CPU with loops selected, short sequences run on
/// the loops and long ones as two matrix products per head ([`head_products`]) on sis's GEMM
/// ([`products`]), else candle's f32. Otherwise, the reference path ([`tensor_attention`]).
pub fn packed_attention(
    qkv: &Tensor,
    packing: &Packing,
    (heads, head_dim): (usize, usize),
    bias: Option<&RelativeBias>,
    kernels: Kernels,
) -> Result<Tensor> {
    match (qkv.device(), kernels.simd) {
        (Device::Cpu, Some(simd)) => cpu_attention(qkv, packing, (heads, head_dim, bias), simd, products(kernels)),
        _ => tensor_attention(qkv, packing, heads, head_dim, bias),
    }
}

/// The GEMM that long sequences' attention products run on: the model's dense kernel where it is one
/// of sis's, else bf16 where the model allows it, else candle's (`Reference`).
pub fn products(kernels: Kernels) -> DenseKernel {
    match (kernels.dense, kernels.bf16) {
        (DenseKernel::Reference, Some(cpu)) => DenseKernel::Bf16(cpu),
        (dense, _) => dense,
    }
}

/// What [`packed_attention`] runs for these kernels, for reports.
pub fn describe(kernels: Kernels) -> String {
    match kernels.simd {
        None => "reference".into(),
        Some(simd) => format!("{} loops below {LONG} tokens, {} from {LONG}", simd.name(), products(kernels).name()),
    }
}

/// A dot product in eight independent lanes, so that it vectorizes (one running sum cannot be
/// reordered by the compiler).
#[inline(always)]
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

#[derive(Clone, Copy)]
struct Shape<'a> {
    heads: usize,
    head_dim: usize,
    hidden: usize,
    stride: usize,
    bias: Option<&'a RelativeBias>,
}

/// A learned bias on attention scores by relative position (MPNet's, in T5's buckets), laid out per
/// head over every distance `j − i` a sequence of up to `span` tokens can have, so that a query row
/// reads its biases as one contiguous slice.
#[derive(Debug, Clone)]
pub struct RelativeBias {
    span: usize,
    /// `[heads][2·span − 1]`: head `h`'s bias at distance `d` is at `h·(2·span − 1) + d + span − 1`.
    values: Vec<f32>,
}

impl RelativeBias {
    /// From the bias table (`[buckets, heads]`, an embedding of bucket ids) and the bucketing of
    /// distances, for sequences of up to `span` tokens.
    pub fn new(table: &[f32], heads: usize, span: usize, bucket: impl Fn(i64) -> usize) -> Self {
        let width = 2 * span - 1;
        let mut values = vec![0f32; heads * width];
        for d in 0..width {
            let b = bucket(d as i64 - (span as i64 - 1));
            for h in 0..heads {
                values[h * width + d] = table[b * heads + h];
            }
        }
        Self { span, values }
    }

    /// The longest sequence it covers.
    pub fn span(&self) -> usize {
        self.span
    }

    /// Head `head`'s biases for query `i` of a `len`-token sequence: element `j` is the bias of key `j`.
    #[inline(always)]
    fn row(&self, head: usize, i: usize, len: usize) -> &[f32] {
        let width = 2 * self.span - 1;
        &self.values[head * width + self.span - 1 - i..][..len]
    }

    /// The biases of a `len`-token sequence as a `[heads, len, len]` tensor (the reference path).
    fn tensor(&self, heads: usize, len: usize, device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(heads * len * len);
        for h in 0..heads {
            for i in 0..len {
                data.extend_from_slice(self.row(h, i, len));
            }
        }
        Tensor::from_vec(data, (heads, len, len), device)
    }
}

dispatch! {
    /// One sequence's attention by loops (the dot products, the softmax's `exp` and the weighted sums
    /// run eight lanes wide on AVX2, sixteen on AVX-512).
    fn attend = attend_generic(data: &[f32], start: usize, len: usize, chunk: &mut [f32], shape: Shape)
}

#[inline(always)]
fn attend_generic(data: &[f32], start: usize, len: usize, chunk: &mut [f32], shape: Shape) {
    let Shape { heads, head_dim, hidden, stride, bias } = shape;
    let mut scores = vec![0f32; len];
    for h in 0..heads {
        let q_off = h * head_dim;
        let k_off = hidden + h * head_dim;
        let v_off = 2 * hidden + h * head_dim;
        for i in 0..len {
            let q = &data[(start + i) * stride + q_off..][..head_dim];
            let mut max = f32::NEG_INFINITY;
            let key = |j: usize| &data[(start + j) * stride + k_off..][..head_dim];
            match bias {
                None => {
                    for (j, s) in scores.iter_mut().enumerate() {
                        *s = dot(q, key(j));
                        max = max.max(*s);
                    }
                }
                Some(bias) => {
                    for ((j, s), b) in scores.iter_mut().enumerate().zip(bias.row(h, i, len)) {
                        *s = dot(q, key(j)) + b;
                        max = max.max(*s);
                    }
                }
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = exp(*s - max);
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
}

/// One head of full attention over rows `start..start + len` of fused projections (`data`, rows of
/// `[Q | K | V]`, `3·hidden` wide, Q already scaled), as two matrix products on `kernel` (sis's bf16 or
/// f32 GEMM) with a row softmax (on the loops' build `simd`) between them; writes the head's columns of
/// `out` (`[len, hidden]`).
fn head_products(
    (kernel, simd): (DenseKernel, Simd),
    data: &[f32],
    (start, len): (usize, usize),
    head: usize,
    shape: Shape,
    out: &mut [f32],
) {
    let Shape { hidden, head_dim, stride, .. } = shape;
    let column = |part: usize, t: usize| &data[(start + t) * stride + part * hidden + head * head_dim..][..head_dim];
    let q: Vec<f32> = (0..len).flat_map(|t| column(0, t).iter().copied()).collect();
    let k: Vec<f32> = (0..len).flat_map(|t| column(1, t).iter().copied()).collect();
    let mut v_t = vec![0f32; head_dim * len];
    for t in 0..len {
        for (i, &v) in column(2, t).iter().enumerate() {
            v_t[i * len + t] = v;
        }
    }
    // `x · wᵀ` for `w` of `[n, k]`, on the head's kernel.
    let product = |w: &[f32], n: usize, k: usize, x: &[f32]| match kernel {
        DenseKernel::Bf16(cpu) => PackedBf16::new(cpu, w, n, k, &[]).forward(x, len),
        DenseKernel::Fma(cpu) => PackedF32::new(cpu, w, n, k, &[]).forward(x, len),
        DenseKernel::Reference => unreachable!("reference products go through candle (sequence_f32)"),
    };
    let mut scores = product(&k, len, head_dim, &q);
    scores.par_chunks_mut(len).enumerate().for_each(|(i, row)| {
        if let Some(bias) = shape.bias {
            row.iter_mut().zip(bias.row(head, i, len)).for_each(|(s, b)| *s += b);
        }
        softmax(simd, row)
    });
    let context = product(&v_t, head_dim, len, &scores);
    for (t, row) in context.chunks_exact(head_dim).enumerate() {
        out[t * hidden + head * head_dim..][..head_dim].copy_from_slice(row);
    }
}

/// One sequence by candle's f32 matrix products: long sequences in full precision.
fn sequence_f32(data: &[f32], start: usize, len: usize, chunk: &mut [f32], shape: Shape) -> Result<()> {
    let rows = Tensor::from_slice(
        &data[start * shape.stride..(start + len) * shape.stride],
        (len, shape.stride),
        &Device::Cpu,
    )?;
    let context = tensor_attention(&rows, &Packing::new([len]), shape.heads, shape.head_dim, shape.bias)?;
    chunk.copy_from_slice(&context.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

fn cpu_attention(
    qkv: &Tensor,
    packing: &Packing,
    (heads, head_dim, bias): (usize, usize, Option<&RelativeBias>),
    simd: Simd,
    kernel: DenseKernel,
) -> Result<Tensor> {
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
    let shape = Shape { heads, head_dim, hidden, stride, bias };
    chunks.into_par_iter().try_for_each(|(start, len, chunk)| {
        match (len >= LONG, kernel) {
            (true, DenseKernel::Reference) => sequence_f32(data, start, len, chunk, shape)?,
            (true, kernel) => {
                (0..heads).for_each(|h| head_products((kernel, simd), data, (start, len), h, shape, chunk))
            }
            (false, _) => attend(simd, data, start, len, chunk, shape),
        }
        Ok::<_, candle_core::Error>(())
    })?;
    drop(storage);
    Tensor::from_vec(out, (packing.tokens, hidden), &Device::Cpu)
}

/// `softmax(q·kᵀ · scale + mask)`, over the last two dimensions (`scale` `None` when `q` is already
/// scaled); the mask is added by broadcasting (`-inf` hides a position).
pub fn attention_weights(q: &Tensor, k: &Tensor, scale: Option<f64>, mask: Option<&Tensor>) -> Result<Tensor> {
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(scale) = scale {
        scores = (scores * scale)?;
    }
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)
}

/// Scaled dot-product attention in candle ops: [`attention_weights`] times `v`.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: Option<f64>, mask: Option<&Tensor>) -> Result<Tensor> {
    attention_weights(q, k, scale, mask)?.matmul(v)
}

/// The shape of one decoder layer's attention: `heads` query heads share `kv_heads` key/value heads
/// in groups; scores are scaled by `scale`; a sliding-window layer sees only the last `window`
/// positions (its own included).
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Scale of the scores: `1/√head_dim`, or a model's own (Gemma's `query_pre_attn_scalar^-½`).
    pub scale: f32,
    /// Sliding-window layers: how many positions a row sees, its own included.
    pub window: Option<usize>,
}

impl HeadShape {
    /// Full attention scaled by `1/√head_dim`.
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self { heads, kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt(), window: None }
    }

    /// The first position a row at `position` sees.
    #[inline(always)]
    fn first_visible(&self, position: usize) -> usize {
        self.window.map_or(0, |w| (position + 1).saturating_sub(w))
    }
}

dispatch! {
    /// Causal attention of one sequence's new query rows (`q`, `[n, heads·head_dim]`, unscaled) over its
    /// cached keys and values (`[start + n, kv_heads·head_dim]`, the new positions included): row `t`
    /// sees positions `..start + t + 1` (the last `window` of them on sliding layers). Adds into `out` (`[n, heads·head_dim]`, zeroed by the caller).
    /// Each row's result depends only on its own query and the cache, so callers may split the rows
    /// (rows `t0..` are the call with `start + t0`), and every build (`simd`) gives the same bits.
    pub fn cached_causal = cached_causal_generic(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        start: usize,
        shape: HeadShape,
        out: &mut [f32]
    )
}

#[inline(always)]
fn cached_causal_generic(q: &[f32], keys: &[f32], values: &[f32], start: usize, shape: HeadShape, out: &mut [f32]) {
    let HeadShape { heads, kv_heads, head_dim: d, scale, .. } = shape;
    let (q_width, kv_width, group) = (heads * d, kv_heads * d, heads / kv_heads);
    let n = q.len() / q_width;
    let total = start + n;
    // The scores of the query heads that share one key/value head, `[group, visible]`: each cached
    // key and value is read once for the whole group.
    let mut scores = vec![0f32; group * total];
    let mut sums = vec![0f32; group];
    for t in 0..n {
        let visible = start + t + 1;
        let from = shape.first_visible(start + t);
        for kvh in 0..kv_heads {
            let first = kvh * group;
            for j in from..visible {
                let kh = &keys[j * kv_width + kvh * d..][..d];
                for g in 0..group {
                    let qh = &q[t * q_width + (first + g) * d..][..d];
                    // f64 accumulation: the top logits of small 4-bit models can sit within
                    // activation-quantization noise of each other, so keep this part exact.
                    scores[g * total + j] = (dot_f64(qh, kh) * scale as f64) as f32;
                }
            }
            for g in 0..group {
                let row = &mut scores[g * total..][from..visible];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for s in row.iter_mut() {
                    *s = exp(*s - max);
                }
                sums[g] = sum_lanes(row);
            }
            for j in from..visible {
                let vh = &values[j * kv_width + kvh * d..][..d];
                for g in 0..group {
                    let w = scores[g * total + j] / sums[g];
                    let o = &mut out[t * q_width + (first + g) * d..][..d];
                    for (o, v) in o.iter_mut().zip(vh) {
                        *o += w * v;
                    }
                }
            }
        }
    }
}

/// [`cached_causal`] for a sequence's prompt rows, as matrix products on sis's f32 GEMM: per key/value
/// head, the scores of its query heads' rows against every visible key (`Q·Kᵀ`), a softmax per row over
/// the positions it sees (the `simd` build's), and the weighted values (`P·V`).
///
/// Each row's result depends only on its own query and the cache, so any split of the rows (any prompt
/// chunking) gives the same bits: the GEMM sums every output in a fixed order of `k`, and the
/// positions a row does not see weigh exactly zero at the end of that order.
#[allow(clippy::too_many_arguments)]
pub fn prompt_attention(
    fma: Fma,
    simd: Simd,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    start: usize,
    shape: HeadShape,
    out: &mut [f32],
) {
    let HeadShape { heads, kv_heads, head_dim: d, scale, .. } = shape;
    let (q_width, kv_width, group) = (heads * d, kv_heads * d, heads / kv_heads);
    let n = q.len() / q_width;
    let total = start + n;
    let zeros = vec![0f32; total.max(d)];
    let (mut head_keys, mut values_t) = (vec![0f32; total * d], vec![0f32; d * total]);
    let mut rows = vec![0f32; group * n * d];
    for kvh in 0..kv_heads {
        for j in 0..total {
            head_keys[j * d..][..d].copy_from_slice(&keys[j * kv_width + kvh * d..][..d]);
            for (i, &v) in values[j * kv_width + kvh * d..][..d].iter().enumerate() {
                values_t[i * total + j] = v;
            }
        }
        // Row g·n + t: query head `kvh·group + g` of new position t, scaled.
        for g in 0..group {
            for t in 0..n {
                let src = &q[t * q_width + (kvh * group + g) * d..][..d];
                for (r, &x) in rows[(g * n + t) * d..][..d].iter_mut().zip(src) {
                    *r = x * scale;
                }
            }
        }
        let mut scores = PackedF32::new(fma, &head_keys, total, d, &zeros[..total]).forward(&rows, group * n);
        for (r, row) in scores.chunks_exact_mut(total).enumerate() {
            let (from, visible) = (shape.first_visible(start + r % n), start + r % n + 1);
            softmax(simd, &mut row[from..visible]);
            row[..from].fill(0.0);
            row[visible..].fill(0.0);
        }
        let weighted = PackedF32::new(fma, &values_t, d, total, &zeros[..d]).forward(&scores, group * n);
        for g in 0..group {
            for t in 0..n {
                let o = &mut out[t * q_width + (kvh * group + g) * d..][..d];
                for (o, &x) in o.iter_mut().zip(&weighted[(g * n + t) * d..][..d]) {
                    *o += x;
                }
            }
        }
    }
}

/// A sum in eight independent lanes (a fixed order, so that it vectorizes and every build agrees).
#[inline(always)]
fn sum_lanes(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for l in 0..8 {
            lanes[l] += chunk[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A dot product accumulated in f64, in eight independent lanes so that it vectorizes (a single
/// running sum cannot be reordered by the compiler).
#[inline(always)]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let tail: f64 = ta.iter().zip(tb).map(|(x, y)| *x as f64 * *y as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

/// The reference path of [`packed_attention`]: per sequence, [`sdpa`] (with the relative bias as
/// its additive mask).
pub fn tensor_attention(
    qkv: &Tensor,
    packing: &Packing,
    heads: usize,
    head_dim: usize,
    bias: Option<&RelativeBias>,
) -> Result<Tensor> {
    let hidden = heads * head_dim;
    let mut outs = Vec::with_capacity(packing.spans.len());
    for &(start, len) in &packing.spans {
        let seq = qkv.narrow(0, start, len)?.reshape((len, 3, heads, head_dim))?;
        let q = seq.narrow(1, 0, 1)?.squeeze(1)?.transpose(0, 1)?.contiguous()?;
        let k = seq.narrow(1, 1, 1)?.squeeze(1)?.transpose(0, 1)?.contiguous()?;
        let v = seq.narrow(1, 2, 1)?.squeeze(1)?.transpose(0, 1)?.contiguous()?;
        let mask = bias.map(|b| b.tensor(heads, len, qkv.device())).transpose()?;
        let ctx = sdpa(&q, &k, &v, None, mask.as_ref())?.transpose(0, 1)?.reshape((len, hidden))?;
        outs.push(ctx);
    }
    Tensor::cat(&outs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::{Avx2, Avx512, STALE_BUILD};

    fn max_difference(a: Tensor, b: Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The loops of one build (long sequences on candle's f32 products) against the reference path.
    fn loops_match(simd: Simd) {
        let (heads, head_dim) = (2, 12);
        // Short sequences take the loops; the last one is long enough for the matrix products.
        let packing = Packing::new([3, 1, 5, 17, 70]);
        let qkv = Tensor::randn(0f32, 1.0, (packing.tokens, 3 * heads * head_dim), &Device::Cpu).unwrap();
        let kernels = Kernels { simd: Some(simd), ..Kernels::REFERENCE };
        let bias = test_bias(heads);
        for bias in [None, Some(&bias)] {
            let fast = packed_attention(&qkv, &packing, (heads, head_dim), bias, kernels).unwrap();
            let slow = tensor_attention(&qkv, &packing, heads, head_dim, bias).unwrap();
            let diff = max_difference(fast.clone(), slow);
            assert!(diff < 1e-5, "{} (bias: {}): max difference {diff}", simd.name(), bias.is_some());
            let portable = Kernels { simd: Some(Simd::Portable), ..kernels };
            let portable = packed_attention(&qkv, &packing, (heads, head_dim), bias, portable).unwrap();
            assert_eq!(max_difference(fast, portable), 0.0, "{} differs from the portable build", simd.name());
        }
    }

    /// A relative bias of random values over 32 buckets (distance modulo 32), for up to 256 tokens.
    fn test_bias(heads: usize) -> RelativeBias {
        let table = Tensor::randn(0f32, 1.0, 32 * heads, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        RelativeBias::new(&table, heads, 256, |d| d.rem_euclid(32) as usize)
    }

    #[test]
    fn portable_loops_match_the_reference() {
        loops_match(Simd::Portable);
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2 and FMA")]
    fn avx2_loops_match_the_reference() {
        loops_match(Simd::Avx2(Avx2::detect().expect(STALE_BUILD)));
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512), ignore = "needs AVX-512 F/BW/DQ/VL")]
    fn avx512_loops_match_the_reference() {
        loops_match(Simd::Avx512(Avx512::detect().expect(STALE_BUILD)));
    }

    #[test]
    fn without_loops_it_is_the_reference() {
        let packing = Packing::new([3, 70]);
        let qkv = Tensor::randn(0f32, 1.0, (packing.tokens, 3 * 2 * 8), &Device::Cpu).unwrap();
        let got = packed_attention(&qkv, &packing, (2, 8), None, Kernels::REFERENCE).unwrap();
        assert_eq!(max_difference(got, tensor_attention(&qkv, &packing, 2, 8, None).unwrap()), 0.0);
    }

    /// Long sequences' attention on sis's GEMM against the reference: the largest difference.
    fn long_sequences_off_the_reference(kernels: Kernels) -> f32 {
        let (heads, head_dim) = (3, 32);
        let packing = Packing::new([70, 5, 130]);
        let qkv =
            (Tensor::randn(0f32, 1.0, (packing.tokens, 3 * heads * head_dim), &Device::Cpu).unwrap() * 0.3).unwrap();
        let bias = test_bias(heads);
        [None, Some(&bias)]
            .into_iter()
            .map(|bias| {
                let fast = packed_attention(&qkv, &packing, (heads, head_dim), bias, kernels).unwrap();
                let slow = tensor_attention(&qkv, &packing, heads, head_dim, bias).unwrap();
                max_difference(fast, slow)
            })
            .fold(0.0, f32::max)
    }

    #[test]
    #[cfg_attr(not(sis_host_avx512bf16), ignore = "needs AVX-512 BF16")]
    fn long_sequences_on_bf16_products_stay_close() {
        let cpu = crate::engines::kernels::Avx512Bf16::detect().expect(STALE_BUILD);
        let kernels = Kernels { simd: Some(Simd::best()), bf16: Some(cpu), ..Kernels::REFERENCE };
        let diff = long_sequences_off_the_reference(kernels);
        assert!(diff < 2e-2, "max difference {diff}");
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2 and FMA")]
    fn long_sequences_on_f32_products_match() {
        let avx2 = Avx2::detect().expect(STALE_BUILD);
        let dense = DenseKernel::Fma(crate::engines::kernels::Fma::Avx2(avx2));
        let kernels = Kernels { simd: Some(Simd::Avx2(avx2)), dense, ..Kernels::REFERENCE };
        assert_eq!(describe(kernels), "avx2 loops below 64 tokens, fma-avx2 from 64");
        let diff = long_sequences_off_the_reference(kernels);
        assert!(diff < 1e-5, "max difference {diff}");
    }

    /// Causal attention of a cached sequence, in plain f64 arithmetic.
    fn causal_reference(q: &[f32], keys: &[f32], values: &[f32], start: usize, shape: HeadShape) -> Vec<f32> {
        let HeadShape { heads, kv_heads, head_dim: d, scale, window } = shape;
        let (n, group) = (q.len() / (heads * d), heads / kv_heads);
        let mut out = vec![0f32; q.len()];
        for t in 0..n {
            let first = window.map_or(0, |w| (start + t + 1).saturating_sub(w));
            for h in 0..heads {
                let (qh, kvh) = (&q[(t * heads + h) * d..][..d], h / group);
                let scores: Vec<(usize, f64)> = (first..start + t + 1)
                    .map(|j| {
                        let kh = &keys[(j * kv_heads + kvh) * d..][..d];
                        (j, qh.iter().zip(kh).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64)
                    })
                    .collect();
                let max = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s.1 - max).exp()).sum();
                for &(j, s) in &scores {
                    let w = (s - max).exp() / sum;
                    for i in 0..d {
                        out[(t * heads + h) * d + i] += (w * values[(j * kv_heads + kvh) * d + i] as f64) as f32;
                    }
                }
            }
        }
        out
    }

    /// Plain attention, and a sliding window with a model's own scale (Gemma 3's layers).
    fn shapes() -> [HeadShape; 2] {
        [HeadShape::new(6, 2, 16), HeadShape { scale: 0.2, window: Some(7), ..HeadShape::new(6, 2, 16) }]
    }

    #[test]
    fn cached_attention_matches_the_reference_on_every_build_and_any_split_of_rows() {
        for shape in shapes() {
            cached_attention_case(shape);
        }
    }

    fn cached_attention_case(shape: HeadShape) {
        let (start, n) = (5, 9);
        let rand = |len: usize| Tensor::randn(0f32, 1.0, len, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        let q = rand(n * 6 * 16);
        let (keys, values) = (rand((start + n) * 2 * 16), rand((start + n) * 2 * 16));
        let want = causal_reference(&q, &keys, &values, start, shape);
        let mut first: Option<Vec<f32>> = None;
        for simd in Simd::available() {
            let mut out = vec![0f32; q.len()];
            cached_causal(simd, &q, &keys, &values, start, shape, &mut out);
            for (g, w) in out.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{simd:?}: {g} vs {w}");
            }
            // Rows 4.. alone are the call with `start + 4`.
            let mut tail = vec![0f32; q.len() - 4 * 96];
            cached_causal(simd, &q[4 * 96..], &keys, &values, start + 4, shape, &mut tail);
            assert_eq!(&out[4 * 96..], &tail[..], "{simd:?}: split rows");
            match &first {
                Some(first) => assert_eq!(first, &out, "{simd:?} differs from the portable build"),
                None => first = Some(out),
            }
        }
    }

    #[test]
    fn prompt_attention_on_the_gemm_matches_the_reference_and_any_chunking() {
        for shape in shapes() {
            prompt_attention_case(shape);
        }
    }

    fn prompt_attention_case(shape: HeadShape) {
        let (start, n) = (5, 40);
        let rand = |len: usize| Tensor::randn(0f32, 1.0, len, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        let q = rand(n * 6 * 16);
        let (keys, values) = (rand((start + n) * 2 * 16), rand((start + n) * 2 * 16));
        let want = causal_reference(&q, &keys, &values, start, shape);
        for simd in Simd::available() {
            let Some(fma) = simd.fma() else { continue };
            let mut out = vec![0f32; q.len()];
            prompt_attention(fma, simd, &q, &keys, &values, start, shape, &mut out);
            for (g, w) in out.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{simd:?}: {g} vs {w}");
            }
            // The prompt in two chunks (rows ..13 with the cache up to them, then the rest): same bits.
            let mut head = vec![0f32; 13 * 96];
            let visible = (start + 13) * 2 * 16;
            prompt_attention(fma, simd, &q[..13 * 96], &keys[..visible], &values[..visible], start, shape, &mut head);
            let mut tail = vec![0f32; q.len() - 13 * 96];
            prompt_attention(fma, simd, &q[13 * 96..], &keys, &values, start + 13, shape, &mut tail);
            assert_eq!(&out[..13 * 96], &head[..], "{simd:?}: first chunk");
            assert_eq!(&out[13 * 96..], &tail[..], "{simd:?}: second chunk");
        }
    }
}
