//! Whisper's text decoder with a self-attention KV cache and access to cross-attention weights.
//!
//! candle-transformers' decoder re-runs the whole token sequence at every step and keeps its attention
//! to itself; this one appends one token at a time to per-layer caches (linear cost per step) and can
//! hand out the cross-attention weights that word timestamps are aligned from.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::engines::kernels::quantized::PackedQuant;
use crate::engines::kernels::{DenseKernel, Kernels};
use crate::engines::nn::attention::{attention_weights, sdpa};
use crate::engines::nn::dense::Dense;

/// A torch `Linear` as a [`Dense`] layer; `bias = false` for layers without one.
fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool, kernel: DenseKernel) -> Result<Dense> {
    let b = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
    Dense::new(&vb.get((out_dim, in_dim), "weight")?, b.as_ref(), kernel)
}

struct Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
}

impl Attention {
    fn load(vb: VarBuilder, width: usize, kernel: DenseKernel) -> Result<Self> {
        Ok(Self {
            q: linear(vb.pp("q_proj"), width, width, true, kernel)?,
            k: linear(vb.pp("k_proj"), width, width, false, kernel)?,
            v: linear(vb.pp("v_proj"), width, width, true, kernel)?,
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

/// Per-window decoding state of one or more sequences of equal length (a beam, or samples drawn side
/// by side): self-attention keys/values so far (`[sequences, heads, len, head_dim]`) and the
/// cross-attention keys/values of the window's audio, which every sequence shares.
pub struct DecoderState {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
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
}

fn layer_norm(vb: VarBuilder, width: usize) -> Result<LayerNorm> {
    Ok(LayerNorm::new(vb.get(width, "weight")?, vb.get(width, "bias")?, 1e-5))
}

impl TextDecoder {
    /// Loads `model.decoder.*` from Hub-named weights: the dense layers on the model's dense kernel, and
    /// the output projection on 8-bit quants where `kernels` has the int8 kernel (`precision = "f32"`
    /// keeps it exact).
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
                    attn: Attention::load(b.pp("self_attn"), width, fast)?,
                    attn_ln: layer_norm(b.pp("self_attn_layer_norm"), width)?,
                    cross: Attention::load(b.pp("encoder_attn"), width, fast)?,
                    cross_ln: layer_norm(b.pp("encoder_attn_layer_norm"), width)?,
                    fc1: linear(b.pp("fc1"), width, 4 * width, true, fast)?,
                    fc2: linear(b.pp("fc2"), 4 * width, width, true, fast)?,
                    mlp_ln: layer_norm(b.pp("final_layer_norm"), width)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
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
        })
    }

    /// `[n, width]` → `[heads, n, head_dim]`.
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        x.reshape((n, self.heads, self.width / self.heads))?.transpose(0, 1)?.contiguous()
    }

    /// Prepares a window: cross-attention keys and values of its audio features `[1, frames, width]`.
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let audio = audio.squeeze(0)?;
        let cross_kv = self
            .blocks
            .iter()
            .map(|b| Ok((self.split(&b.cross.k.forward(&audio)?)?, self.split(&b.cross.v.forward(&audio)?)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderState { self_kv: vec![None; self.blocks.len()], cross_kv, len: 0, sequences: 1 })
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
            let q = (self.split(&block.cross.q.forward(&h)?)? * scale)?;
            let (ck, cv) = &state.cross_kv[layer];
            let weights = attention_weights(&q, ck, None, None)?;
            if let Some(capture) = capture.as_deref_mut() {
                capture.push(weights.clone());
            }
            let attn = weights.matmul(cv)?.transpose(0, 1)?.reshape((tokens.len(), self.width))?;
            x = (x + block.cross.out.forward(&attn)?)?;
            let h = block.mlp_ln.forward(&x)?;
            x = (x + block.fc2.forward(&block.fc1.forward(&h)?.gelu_erf()?)?)?;
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
