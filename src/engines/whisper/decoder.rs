//! Whisper's text decoder with a self-attention KV cache and access to cross-attention weights.
//!
//! candle-transformers' decoder re-runs the whole token sequence at every step and keeps its attention
//! to itself; this one appends one token at a time to per-layer caches (linear cost per step) and can
//! hand out the cross-attention weights that word timestamps are aligned from.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use rayon::prelude::*;

use crate::engines::kernels::elementwise::{softmax, softmax_reference};
use crate::engines::kernels::fma::PackedF32;
use crate::engines::kernels::quantized::PackedQuant;
use crate::engines::kernels::{DenseKernel, Kernels};
use crate::engines::nn::attention::{attention_weights, sdpa};
use crate::engines::nn::dense::Dense;

/// A torch `Linear` that runs a step's tokens as a [`Dense`] layer (f16 weights where exact); `bias =
/// false` for layers without one.
fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool, kernel: DenseKernel) -> Result<Dense> {
    let b = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
    Dense::for_few_rows(&vb.get((out_dim, in_dim), "weight")?, b.as_ref(), kernel)
}

/// A torch `Linear` that runs a window's audio positions at once (compute-bound: f32 weights).
fn linear_for_audio(vb: VarBuilder, width: usize, bias: bool, kernel: DenseKernel) -> Result<Dense> {
    let b = if bias { Some(vb.get(width, "bias")?) } else { None };
    Dense::new(&vb.get((width, width), "weight")?, b.as_ref(), kernel)
}

struct Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
}

impl Attention {
    /// `cross`: the keys and values are projected from the audio, once per window.
    fn load(vb: VarBuilder, width: usize, kernel: DenseKernel, cross: bool) -> Result<Self> {
        let keys = |name: &str, bias: bool| match cross {
            true => linear_for_audio(vb.pp(name), width, bias, kernel),
            false => linear(vb.pp(name), width, width, bias, kernel),
        };
        Ok(Self {
            q: linear(vb.pp("q_proj"), width, width, true, kernel)?,
            k: keys("k_proj", false)?,
            v: keys("v_proj", true)?,
            out: linear(vb.pp("out_proj"), width, width, true, kernel)?,
        })
    }
}

struct Block {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Attention,
    cross_ln: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    mlp_ln: LayerNorm,
}

/// One layer's cross-attention keys and values of a window's audio, which every sequence shares.
enum Cross {
    /// `[heads, frames, head_dim]` each, for candle's products (the reference path).
    Tensors(Tensor, Tensor),
    /// Per head, its keys `[frames, head_dim]` and its values transposed `[head_dim, frames]`, packed
    /// as weights of sis's f32 GEMM: a beam step's few rows then read them at the GEMM's speed, where
    /// candle's products spend most of their time laying out small operands.
    Packed(Vec<(PackedF32, PackedF32)>),
}

/// Per-window decoding state of one or more sequences of equal length (a beam, or samples drawn side
/// by side): self-attention keys/values so far (`[sequences, heads, len, head_dim]`) and the
/// cross-attention keys/values of the window's audio, which every sequence shares.
pub struct DecoderState {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross: Vec<Cross>,
    /// Tokens decoded so far, per sequence.
    pub len: usize,
    /// Sequences decoded side by side.
    pub sequences: usize,
}

impl DecoderState {
    /// Makes sequence `i` a copy of sequence `from[i]`: a beam step's survivors, or one prompt copied
    /// into several sequences.
    pub fn select(&mut self, from: &[u32]) -> Result<()> {
        if from.iter().enumerate().all(|(i, &f)| i == f as usize) && from.len() == self.sequences {
            return Ok(());
        }
        for kv in self.self_kv.iter_mut().flatten() {
            let device = kv.0.device().clone();
            let ids = Tensor::new(from, &device)?;
            *kv = (kv.0.index_select(&ids, 0)?, kv.1.index_select(&ids, 0)?);
        }
        self.sequences = from.len();
        Ok(())
    }
}

/// The decoder.
pub struct TextDecoder {
    embed: Tensor,
    /// The output projection (the token embedding) as 8-bit quants, where the int8 kernel runs and the
    /// precision allows it: each step reads it whole, and at 4 bytes a weight it is most of a step's
    /// memory traffic.
    output: Option<PackedQuant>,
    pos: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
    heads: usize,
    width: usize,
    kernels: Kernels,
}

fn layer_norm(vb: VarBuilder, width: usize) -> Result<LayerNorm> {
    Ok(LayerNorm::new(vb.get(width, "weight")?, vb.get(width, "bias")?, 1e-5))
}

impl TextDecoder {
    /// Loads `model.decoder.*` from Hub-named weights: the dense layers on the model's dense kernel, and
    /// the output projection on 8-bit quants where `kernels` has the int8 kernel (`precision = "f32"`
    /// keeps it exact). The layers that run a step's tokens keep their weights as f16 where that is
    /// exact (Whisper's checkpoints are f16 at the source): the f32 results from half the bytes. On
    /// 8-bit quants (weights and activations) greedy decoding heard measurably worse (word error 0.140
    /// against 0.116 on `benches/peers/wer.py`'s sentences).
    pub fn load(
        vb: VarBuilder,
        width: usize,
        heads: usize,
        layers: usize,
        vocab: usize,
        positions: usize,
        kernels: Kernels,
    ) -> Result<Self> {
        let fast = kernels.dense;
        let blocks = (0..layers)
            .map(|i| {
                let b = vb.pp(format!("layers.{i}"));
                Ok(Block {
                    attn: Attention::load(b.pp("self_attn"), width, fast, false)?,
                    attn_ln: layer_norm(b.pp("self_attn_layer_norm"), width)?,
                    cross: Attention::load(b.pp("encoder_attn"), width, fast, true)?,
                    cross_ln: layer_norm(b.pp("encoder_attn_layer_norm"), width)?,
                    fc1: linear(b.pp("fc1"), width, 4 * width, true, fast)?,
                    fc2: linear(b.pp("fc2"), 4 * width, width, true, fast)?,
                    mlp_ln: layer_norm(b.pp("final_layer_norm"), width)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let half = blocks.iter().all(|b| b.fc1.is_f16() && b.fc2.is_f16() && b.attn.q.is_f16() && b.cross.q.is_f16());
        tracing::debug!(f16_weights = half, "whisper decoder layers");
        let embed = vb.get((vocab, width), "embed_tokens.weight")?;
        let output = match (kernels.exact, kernels.int8) {
            (false, Some(cpu)) if width > 0 && width.is_multiple_of(32) => {
                Some(PackedQuant::from_f32(cpu, &embed.flatten_all()?.to_vec1::<f32>()?, vocab, width))
            }
            _ => None,
        };
        Ok(Self {
            embed,
            output,
            pos: vb.get((positions, width), "embed_positions.weight")?,
            blocks,
            ln: layer_norm(vb.pp("layer_norm"), width)?,
            heads,
            width,
            kernels,
        })
    }

    /// The kernels this decoder runs on.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// `[n, width]` → `[heads, n, head_dim]`.
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        x.reshape((n, self.heads, self.width / self.heads))?.transpose(0, 1)?.contiguous()
    }

    /// Prepares a window: cross-attention keys and values of its audio features `[1, frames, width]`.
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let audio = audio.squeeze(0)?;
        let cross = self
            .blocks
            .iter()
            .map(|b| {
                let (k, v) = (b.cross.k.forward(&audio)?, b.cross.v.forward(&audio)?);
                match self.kernels.dense {
                    DenseKernel::Fma(cpu) => Ok(Cross::Packed(self.pack_heads(cpu, &k, &v)?)),
                    _ => Ok(Cross::Tensors(self.split(&k)?, self.split(&v)?)),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderState { self_kv: vec![None; self.blocks.len()], cross, len: 0, sequences: 1 })
    }

    /// Each head's keys and transposed values of `k` and `v` (`[frames, width]`), packed for the GEMM.
    fn pack_heads(
        &self,
        cpu: crate::engines::kernels::Fma,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Vec<(PackedF32, PackedF32)>> {
        let (frames, width) = k.dims2()?;
        let head_dim = width / self.heads;
        let (k, v) = (k.flatten_all()?.to_vec1::<f32>()?, v.flatten_all()?.to_vec1::<f32>()?);
        Ok((0..self.heads)
            .into_par_iter()
            .map(|h| {
                let columns = h * head_dim..(h + 1) * head_dim;
                let keys: Vec<f32> = k.chunks_exact(width).flat_map(|row| &row[columns.clone()]).copied().collect();
                let mut values_t = vec![0f32; head_dim * frames];
                for (f, row) in v.chunks_exact(width).enumerate() {
                    for (d, &x) in row[columns.clone()].iter().enumerate() {
                        values_t[d * frames + f] = x;
                    }
                }
                (
                    PackedF32::new(cpu, &keys, frames, head_dim, &[]),
                    PackedF32::new(cpu, &values_t, head_dim, frames, &[]),
                )
            })
            .collect())
    }

    /// Cross-attention of `rows` query rows `q` (`[rows, width]`, scaled) on packed heads: per head,
    /// `softmax(q·Kᵀ)·V`. Returns the context `[rows, width]` and, when `capture`, the attention
    /// weights `[heads, rows, frames]`.
    fn cross_packed(
        &self,
        heads: &[(PackedF32, PackedF32)],
        q: &[f32],
        rows: usize,
        capture: bool,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let (width, head_dim) = (self.width, self.width / self.heads);
        let simd = self.kernels.simd;
        let per_head: Vec<(Vec<f32>, Vec<f32>)> = heads
            .par_iter()
            .enumerate()
            .map(|(h, (keys, values))| {
                let columns = h * head_dim..(h + 1) * head_dim;
                let q_h: Vec<f32> = q.chunks_exact(width).flat_map(|row| &row[columns.clone()]).copied().collect();
                let mut weights = keys.forward(&q_h, rows);
                for row in weights.chunks_exact_mut(keys.n()) {
                    match simd {
                        Some(simd) => softmax(simd, row),
                        None => softmax_reference(row),
                    }
                }
                let context = values.forward(&weights, rows);
                (context, weights)
            })
            .collect();
        let mut context = vec![0f32; rows * width];
        for (h, (c, _)) in per_head.iter().enumerate() {
            for (out, src) in context.chunks_exact_mut(width).zip(c.chunks_exact(head_dim)) {
                out[h * head_dim..(h + 1) * head_dim].copy_from_slice(src);
            }
        }
        let weights = capture.then(|| per_head.into_iter().flat_map(|(_, w)| w).collect());
        (context, weights)
    }

    /// `[sequences · rows, width]` → `[sequences, heads, rows, head_dim]`.
    fn split_sequences(&self, x: &Tensor, sequences: usize) -> Result<Tensor> {
        let rows = x.dim(0)? / sequences;
        x.reshape((sequences, rows, self.heads, self.width / self.heads))?.transpose(1, 2)?.contiguous()
    }

    /// Runs new tokens: the same number for each of the state's sequences, sequence after sequence
    /// (a prompt for one sequence, or one token for each sequence of a beam). Returns their final
    /// hidden states `[tokens, width]`. When `capture` is given, the cross-attention weights of every
    /// layer (`[heads, tokens, frames]`) are pushed to it.
    pub fn forward(
        &self,
        state: &mut DecoderState,
        tokens: &[u32],
        mut capture: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let sequences = state.sequences;
        if sequences == 0 || !tokens.len().is_multiple_of(sequences) {
            candle_core::bail!("{} tokens do not split over {sequences} sequences", tokens.len());
        }
        let n = tokens.len() / sequences;
        let device = self.embed.device();
        let ids = Tensor::new(tokens, device)?;
        let positions = self.pos.narrow(0, state.len, n)?;
        let mut x = self
            .embed
            .index_select(&ids, 0)?
            .reshape((sequences, n, self.width))?
            .broadcast_add(&positions)?
            .reshape((tokens.len(), self.width))?;
        let scale = 1.0 / ((self.width / self.heads) as f64).sqrt();
        let total = state.len + n;
        let past = state.len;
        let mask = if n > 1 {
            let m: Vec<f32> = (0..n)
                .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (n, total), device)?)
        } else {
            None
        };
        for (layer, block) in self.blocks.iter().enumerate() {
            // Self-attention of each sequence over its cache plus its new tokens.
            let h = block.attn_ln.forward(&x)?;
            let q = (self.split_sequences(&block.attn.q.forward(&h)?, sequences)? * scale)?;
            let mut k = self.split_sequences(&block.attn.k.forward(&h)?, sequences)?;
            let mut v = self.split_sequences(&block.attn.v.forward(&h)?, sequences)?;
            if let Some((pk, pv)) = &state.self_kv[layer] {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            let attn = sdpa(&q, &k, &v, None, mask.as_ref())?;
            state.self_kv[layer] = Some((k, v));
            let attn = attn.transpose(1, 2)?.reshape((tokens.len(), self.width))?;
            x = (x + block.attn.out.forward(&attn)?)?;
            // Cross-attention over the audio, which every sequence shares: all new tokens are rows.
            let h = block.cross_ln.forward(&x)?;
            let q = (block.cross.q.forward(&h)? * scale)?;
            let attn = match &state.cross[layer] {
                Cross::Tensors(ck, cv) => {
                    let weights = attention_weights(&self.split(&q)?, ck, None, None)?;
                    if let Some(capture) = capture.as_deref_mut() {
                        capture.push(weights.clone());
                    }
                    weights.matmul(cv)?.transpose(0, 1)?.reshape((tokens.len(), self.width))?
                }
                Cross::Packed(heads) => {
                    let rows = tokens.len();
                    let (context, weights) =
                        self.cross_packed(heads, &q.flatten_all()?.to_vec1::<f32>()?, rows, capture.is_some());
                    if let (Some(capture), Some(weights)) = (capture.as_deref_mut(), weights) {
                        let frames = weights.len() / (rows * self.heads);
                        capture.push(Tensor::from_vec(weights, (self.heads, rows, frames), &Device::Cpu)?);
                    }
                    Tensor::from_vec(context, (rows, self.width), &Device::Cpu)?
                }
            };
            x = (x + block.cross.out.forward(&attn)?)?;
            let h = block.mlp_ln.forward(&x)?;
            x = (x + block.fc2.forward(&block.fc1.forward_gelu(&h, self.kernels.simd)?)?)?;
        }
        state.len = total;
        self.ln.forward(&x)
    }

    /// Logits of hidden states `[rows, width]`, row after row (the output projection is the token
    /// embedding).
    pub fn logits(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let rows = hidden.dim(0)?;
        if let Some(output) = &self.output {
            return Ok(output.forward(&hidden.flatten_all()?.to_vec1::<f32>()?, rows));
        }
        hidden.matmul(&self.embed.t()?)?.flatten_all()?.to_vec1::<f32>()
    }
}
