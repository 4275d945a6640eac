//! Decoder LLMs of the llama family (SmolLM2, Llama 3.x; qwen2/qwen3 share the layout) from GGUF, with
//! a packed step for continuous batching.
//!
//! One [`Llama::step`] runs any mix of sequences, each bringing some new tokens (a prefill chunk or one
//! decode token) and its own KV cache. The linear layers run once on the packed tokens of all sequences,
//! so every quantized weight block is read once per step for the whole batch; attention runs per
//! sequence against its own cache. Rows never mix, so a sequence's logits do not depend on its company.
//!
//! The same decoder is the language half of Qwen3-VL: tokens may carry 3-D (time, row, column) rotary
//! positions (interleaved MRoPE), image placeholder rows take the vision tower's embeddings, and the
//! tower's DeepStack features are added to those rows after the first layers.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::engines::kernels::elementwise::silu_mul;
use crate::engines::kernels::{Pool, Simd};
use crate::engines::nn::attention::{cached_causal, prompt_attention, HeadShape};
use config::Activation;

mod cache;
pub mod config;
mod load;
mod weights;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use load::{run_dtype, safetensors_files};
pub use weights::ChatWeights;
use weights::{Quantized, RowSplit, Weight};

struct Block {
    attn_norm: Tensor,
    q: Weight,
    k: Weight,
    v: Weight,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Weight,
    /// Gemma: a norm of the attention's output before the residual add.
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Weight,
    up: Weight,
    down: Weight,
    /// Gemma: a norm of the feed-forward's output before the residual add.
    post_ffn_norm: Option<Tensor>,
}

/// One sequence's share of a step.
pub struct StepInput<'a> {
    /// Its cache, extended by the step.
    pub cache: &'a mut KvCache,
    /// New tokens to run.
    pub tokens: &'a [u32],
    /// Whether to compute logits for the last new token.
    pub logits: bool,
    /// Whether to compute logits for every new token (a prompt's own log-probabilities); implies
    /// `logits`.
    pub all_logits: bool,
    /// Explicit (time, row, column) rotary positions of the new tokens; `None` continues the text
    /// positions of the cache.
    pub positions: Option<&'a [[u32; 3]]>,
    /// Image features for some of the new tokens.
    pub visual: Option<StepVisual>,
    /// Whether the tokens are prompt tokens (run through the dense weights when the model keeps
    /// them) rather than generated ones.
    pub prompt: bool,
}

impl<'a> StepInput<'a> {
    /// Text tokens at the cache's next positions.
    pub fn text(cache: &'a mut KvCache, tokens: &'a [u32], logits: bool) -> Self {
        Self { cache, tokens, logits, all_logits: false, positions: None, visual: None, prompt: false }
    }

    /// Marks the tokens as prompt tokens.
    pub fn prompt(mut self) -> Self {
        self.prompt = true;
        self
    }
}

/// Vision features that replace the embeddings of some tokens of a step input.
pub struct StepVisual {
    /// Offsets of the image tokens within the input's new tokens, ascending.
    pub rows: Vec<u32>,
    /// Their embeddings, `[rows, hidden]`.
    pub embeds: Tensor,
    /// DeepStack features added after layer `i`, each `[rows, hidden]`.
    pub deepstack: Vec<Tensor>,
}

/// cos/sin of every rotary frequency at every position, `[context, head_dim / 2]` each.
struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// The tensor path's rotary tables of one step (see [`Llama::turns`]).
struct Turns {
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
}

/// The (time, row, column) rotary position of new token `t` of `input`, whose cache held `start`.
fn position(input: &StepInput<'_>, start: usize, t: usize) -> [usize; 3] {
    match input.positions {
        Some(p) => p[t].map(|a| a as usize),
        None => [(start + t) as i64 + input.cache.rope_delta; 3].map(|p| p.max(0) as usize),
    }
}

/// A loaded model.
pub struct Llama {
    /// Shapes.
    pub config: LlamaConfig,
    embeddings: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Quantized,
    /// Rotary tables of full-attention layers.
    rope_global: RopeTable,
    /// Rotary tables of sliding-window layers, where they differ (Gemma 3).
    rope_local: Option<RopeTable>,
    /// For each rotary frequency, the position axis it turns with (0 = time; MRoPE only).
    rope_axis: Vec<usize>,
    /// The threads its steps run on.
    pool: Pool,
    /// Where its weights and the tensor path's caches live.
    device: Device,
    /// The type activations flow in: f32 on the CPU, the checkpoint's half precision on GPUs.
    dtype: DType,
    /// The loops' build its kernels chose; `None` on the reference path, where element-wise passes
    /// are candle's ops and the attention loops run their portable build.
    loops: Option<Simd>,
}

impl Llama {
    /// A new, empty cache for a sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.layers, self.config.kv_heads * self.config.head_dim)
    }

    /// Runs one packed step; returns the logits (`[vocab]`) of each input that asked for them, in order:
    /// one row for the last new token, or one per new token for inputs that ask for `all_logits`.
    pub fn step(&self, inputs: &mut [StepInput<'_>]) -> Result<Vec<Vec<f32>>> {
        self.pool.run(|| self.step_in_pool(inputs, false))
    }

    /// As [`Llama::step`], but returns the final hidden state (after the last norm, `[hidden]`) of the
    /// last new token of each input that asked: a decoder's embedding (Qwen3-Embedding).
    pub fn last_hidden(&self, inputs: &mut [StepInput<'_>]) -> Result<Vec<Vec<f32>>> {
        self.pool.run(|| self.step_in_pool(inputs, true))
    }

    fn step_in_pool(&self, inputs: &mut [StepInput<'_>], hidden: bool) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.tokens.iter().copied()).collect();
        let total = ids.len();
        if total == 0 {
            return Ok(Vec::new());
        }
        let starts: Vec<usize> = inputs.iter().map(|i| i.cache.len()).collect();
        let ids_t = Tensor::from_vec(ids, total, &self.device)?;
        let mut x = self.embeddings.index_select(&ids_t, 0)?;
        if c.embedding_scale != 1.0 {
            x = (x * c.embedding_scale as f64)?;
        }
        let visual = self.gather_visual(inputs)?;
        let rows = RowSplit::new(inputs)?;
        if let Some((rows, embeds, _)) = &visual {
            x = x.index_add(rows, &(embeds - x.index_select(rows, 0)?)?, 0)?;
        }
        let (q_width, kv_width) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        // The tensor path turns queries and keys with candle's rotary kernels, on tables of this
        // step's positions.
        let turns = match self.loops {
            None => Some(self.turns(inputs, &starts)?),
            Some(_) => None,
        };
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, c.eps as f32)?;
            let with_bias = |t: Tensor, b: &Option<Tensor>| match b {
                Some(b) => t.broadcast_add(b),
                None => Ok(t),
            };
            let mut q = with_bias(block.q.forward(&h, &rows)?, &block.q_bias)?;
            let mut k = with_bias(block.k.forward(&h, &rows)?, &block.k_bias)?;
            let v = with_bias(block.v.forward(&h, &rows)?, &block.v_bias)?;
            if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                q = candle_nn::ops::rms_norm(&q.reshape((total * c.heads, c.head_dim))?, qn, c.eps as f32)?
                    .reshape((total, q_width))?;
                k = candle_nn::ops::rms_norm(&k.reshape((total * c.kv_heads, c.head_dim))?, kn, c.eps as f32)?
                    .reshape((total, kv_width))?;
            }
            let window = c.sliding.as_ref().filter(|s| s.layers[layer]).map(|s| s.window);
            let shape =
                HeadShape { scale: c.attention_scale, window, ..HeadShape::new(c.heads, c.kv_heads, c.head_dim) };
            let attn = match &turns {
                Some(turns) => {
                    let turn = match (&turns.local, window) {
                        (Some(local), Some(_)) => local,
                        _ => &turns.global,
                    };
                    self.attend_tensors(inputs, &starts, layer, (q, k, v), turn, shape)?
                }
                None => self.attend_loops(inputs, &starts, layer, (q, k, v), shape)?,
            };
            let norm = |t: Tensor, weight: &Option<Tensor>| match weight {
                Some(w) => candle_nn::ops::rms_norm(&t, w, c.eps as f32),
                None => Ok(t),
            };
            x = (x + norm(block.o.forward(&attn, &rows)?, &block.post_attn_norm)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, c.eps as f32)?;
            let gated = self.gated(block.gate.forward(&h, &rows)?, &block.up.forward(&h, &rows)?)?;
            x = (x + norm(block.down.forward(&gated, &rows)?, &block.post_ffn_norm)?)?;
            if let Some((rows, _, deepstack)) = &visual {
                if let Some(features) = deepstack.get(layer) {
                    x = x.index_add(rows, features, 0)?;
                }
            }
        }
        for input in inputs.iter_mut() {
            input.cache.advance(input.tokens.len());
        }
        // Logits only for the last new token of the sequences that sample.
        let mut rows = Vec::new();
        let mut end = 0;
        for input in inputs.iter() {
            let start = end;
            end += input.tokens.len();
            if input.all_logits && !hidden {
                rows.extend(start as u32..end as u32);
            } else if (input.logits || input.all_logits) && !input.tokens.is_empty() {
                rows.push((end - 1) as u32);
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let last = x.index_select(&Tensor::from_vec(rows, n, &self.device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, c.eps as f32)?;
        if hidden {
            return last.to_dtype(DType::F32)?.to_vec2::<f32>();
        }
        let mut logits = self.output.forward(&last)?.to_dtype(DType::F32)?;
        if let Some(cap) = c.logit_softcap {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
        logits.to_vec2::<f32>()
    }

    /// The host path of a layer's attention: RoPE on the rows, K/V appended to the host caches, the
    /// attention loops. `qkv` are `[tokens, width]`; returns `[tokens, heads·head_dim]`.
    fn attend_loops(
        &self,
        inputs: &mut [StepInput<'_>],
        starts: &[usize],
        layer: usize,
        (q, k, v): (Tensor, Tensor, Tensor),
        shape: HeadShape,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (q_width, kv_width) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let total = q.dim(0)?;
        let mut q = q.flatten_all()?.to_vec1::<f32>()?;
        let mut k = k.flatten_all()?.to_vec1::<f32>()?;
        let v = v.flatten_all()?.to_vec1::<f32>()?;
        // RoPE at each token's own position, then append K/V to each sequence's cache.
        let table = match (&self.rope_local, shape.window) {
            (Some(local), Some(_)) => local,
            _ => &self.rope_global,
        };
        let mut row = 0;
        for (input, &start) in inputs.iter_mut().zip(starts) {
            for t in 0..input.tokens.len() {
                let pos = position(input, start, t);
                self.rope(table, &mut q[(row + t) * q_width..][..q_width], pos);
                self.rope(table, &mut k[(row + t) * kv_width..][..kv_width], pos);
            }
            let n = input.tokens.len();
            let span = row * kv_width..(row + n) * kv_width;
            input.cache.append(layer, &k[span.clone()], &v[span]);
            row += n;
        }
        let attn = self.attention(inputs, starts, layer, &q, shape)?;
        Tensor::from_vec(attn, (total, q_width), &Device::Cpu)
    }

    /// cos/sin of every new token's rotary angles for the tensor path, `[tokens, head_dim / 2]` in the
    /// model's type on its device: one pair for full-attention layers, one for sliding ones where
    /// they turn differently.
    fn turns(&self, inputs: &[StepInput<'_>], starts: &[usize]) -> Result<Turns> {
        let half = self.config.head_dim / 2;
        let table = |table: &RopeTable| -> Result<(Tensor, Tensor)> {
            let (mut cos, mut sin) = (Vec::new(), Vec::new());
            for (input, &start) in inputs.iter().zip(starts) {
                for t in 0..input.tokens.len() {
                    let pos = position(input, start, t);
                    for (j, &axis) in self.rope_axis.iter().enumerate() {
                        let p = pos[axis].min(self.config.context - 1);
                        cos.push(table.cos[p * half + j]);
                        sin.push(table.sin[p * half + j]);
                    }
                }
            }
            let rows = cos.len() / half;
            let upload = |v: Vec<f32>| Tensor::from_vec(v, (rows, half), &self.device)?.to_dtype(self.dtype);
            Ok((upload(cos)?, upload(sin)?))
        };
        Ok(Turns { global: table(&self.rope_global)?, local: self.rope_local.as_ref().map(table).transpose()? })
    }

    /// The tensor path of a layer's attention (any device): candle's rotary kernel, K/V appended to
    /// each sequence's device cache, then per sequence `softmax(q·Kᵀ·scale + mask)·V` with grouped
    /// heads sharing their key/value head, scores in f32. `qkv` are `[tokens, width]`; returns
    /// `[tokens, heads·head_dim]`.
    fn attend_tensors(
        &self,
        inputs: &mut [StepInput<'_>],
        starts: &[usize],
        layer: usize,
        (q, k, v): (Tensor, Tensor, Tensor),
        (cos, sin): &(Tensor, Tensor),
        shape: HeadShape,
    ) -> Result<Tensor> {
        let c = &self.config;
        let total = q.dim(0)?;
        let heads_first =
            |t: Tensor, heads: usize| t.reshape((1, total, heads, c.head_dim))?.transpose(1, 2)?.contiguous();
        let turn = |t: Tensor| match c.rope_halves {
            true => candle_nn::rotary_emb::rope(&t, cos, sin),
            false => candle_nn::rotary_emb::rope_i(&t, cos, sin),
        };
        // [heads, tokens, head_dim]
        let q = turn(heads_first(q, c.heads)?)?.squeeze(0)?;
        let k = turn(heads_first(k, c.kv_heads)?)?.squeeze(0)?;
        let v = heads_first(v, c.kv_heads)?.squeeze(0)?;
        let groups = c.heads / c.kv_heads;
        let mut outputs = Vec::with_capacity(inputs.len());
        let mut row = 0;
        for (input, &start) in inputs.iter_mut().zip(starts) {
            let n = input.tokens.len();
            if n == 0 {
                continue;
            }
            let (keys, values) = input.cache.append_tensors(layer, &k.narrow(1, row, n)?, &v.narrow(1, row, n)?)?;
            let seen = start + n;
            let q = q.narrow(1, row, n)?.contiguous()?.reshape((c.kv_heads, groups * n, c.head_dim))?;
            let scores = (q.matmul(&keys.t()?)? * shape.scale as f64)?.to_dtype(DType::F32)?;
            // Row t (position start + t) sees keys up to its own position, within the window.
            let masked = n > 1 || shape.window.is_some_and(|w| w < seen);
            let scores = match masked {
                true => {
                    let mut mask = vec![0f32; n * seen];
                    for (t, row) in mask.chunks_exact_mut(seen).enumerate() {
                        let position = start + t;
                        let first = shape.window.map_or(0, |w| (position + 1).saturating_sub(w));
                        row[..first].fill(f32::NEG_INFINITY);
                        row[position + 1..].fill(f32::NEG_INFINITY);
                    }
                    let mask = Tensor::from_vec(mask, (n, seen), &self.device)?;
                    scores.reshape((c.kv_heads, groups, n, seen))?.broadcast_add(&mask)?.reshape((
                        c.kv_heads,
                        groups * n,
                        seen,
                    ))?
                }
                false => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(self.dtype)?;
            outputs.push(probs.matmul(&values)?.reshape((c.heads, n, c.head_dim))?);
            row += n;
        }
        Tensor::cat(&outputs, 1)?.transpose(0, 1)?.reshape((total, c.heads * c.head_dim))
    }

    /// The build the attention loops run on (they have no candle counterpart: portable without one).
    fn attention_loops(&self) -> Simd {
        self.loops.unwrap_or(Simd::Portable)
    }

    /// `act(gate) · up`: SiLU in one pass on the loops where the model's kernels have them, else
    /// candle's ops.
    fn gated(&self, gate: Tensor, up: &Tensor) -> Result<Tensor> {
        if self.config.activation == Activation::GeluTanh {
            return gate.gelu()? * up;
        }
        let Some(simd) = self.loops else { return candle_nn::ops::silu(&gate)? * up };
        let shape = gate.shape().clone();
        let mut values = gate.flatten_all()?.to_vec1::<f32>()?;
        silu_mul(simd, &mut values, &up.flatten_all()?.to_vec1::<f32>()?);
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

    /// The image rows of a step (packed offsets), their embeddings and DeepStack features.
    #[allow(clippy::type_complexity)]
    fn gather_visual(&self, inputs: &[StepInput<'_>]) -> Result<Option<(Tensor, Tensor, Vec<Tensor>)>> {
        let (mut rows, mut embeds, mut deepstack) = (Vec::new(), Vec::new(), Vec::<Vec<Tensor>>::new());
        let mut offset = 0u32;
        for input in inputs {
            if let Some(v) = &input.visual {
                rows.extend(v.rows.iter().map(|r| r + offset));
                embeds.push(v.embeds.clone());
                for (layer, f) in v.deepstack.iter().enumerate() {
                    match deepstack.get_mut(layer) {
                        Some(list) => list.push(f.clone()),
                        None => deepstack.push(vec![f.clone()]),
                    }
                }
            }
            offset += input.tokens.len() as u32;
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let n = rows.len();
        // The vision tower may run elsewhere (or in another precision) than the decoder.
        let here = |t: Tensor| t.to_device(&self.device)?.to_dtype(self.dtype);
        let deepstack = deepstack.iter().map(|l| here(Tensor::cat(l, 0)?)).collect::<Result<Vec<_>>>()?;
        Ok(Some((Tensor::from_vec(rows, n, &self.device)?, here(Tensor::cat(&embeds, 0)?)?, deepstack)))
    }

    fn rope(&self, table: &RopeTable, row: &mut [f32], pos: [usize; 3]) {
        let d = self.config.head_dim;
        let half = d / 2;
        let mut cos = [0f32; 256];
        let mut sin = [0f32; 256];
        for (j, &axis) in self.rope_axis.iter().enumerate() {
            let p = pos[axis].min(self.config.context - 1);
            cos[j] = table.cos[p * half + j];
            sin[j] = table.sin[p * half + j];
        }
        for head in row.chunks_exact_mut(d) {
            if self.config.rope_halves {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = a * sin[i] + b * cos[i];
                }
            } else {
                for i in 0..half {
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * cos[i] - b * sin[i];
                    head[2 * i + 1] = a * sin[i] + b * cos[i];
                }
            }
        }
    }

    /// Causal attention of each sequence's new tokens over its cache; returns `[tokens, heads·head_dim]`.
    fn attention(
        &self,
        inputs: &[StepInput<'_>],
        starts: &[usize],
        layer: usize,
        q: &[f32],
        shape: HeadShape,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let q_width = c.heads * c.head_dim;
        let mut out = vec![0f32; q.len()];
        let mut jobs = Vec::with_capacity(inputs.len());
        let (mut rest, mut row) = (out.as_mut_slice(), 0);
        // Jobs of at most `ROWS_PER_JOB` rows, so that a long prompt's attention uses every thread (a
        // row's result does not depend on how the rows are split).
        const ROWS_PER_JOB: usize = 16;
        let products = self.attention_loops().fma().is_some();
        for (input, &start) in inputs.iter().zip(starts) {
            let n = input.tokens.len();
            // A prompt chunk on the matrix products is one job: the GEMM splits its own work.
            let per_job = if input.prompt && products { n.max(1) } else { ROWS_PER_JOB };
            for first in (0..n).step_by(per_job) {
                let rows = (n - first).min(per_job);
                let (chunk, tail) = rest.split_at_mut(rows * q_width);
                let at = row + first;
                jobs.push((chunk, &q[at * q_width..(at + rows) * q_width], start + first, input));
                rest = tail;
            }
            row += n;
        }
        let simd = self.attention_loops();
        match simd.fma() {
            // Prompt rows as matrix products (every prompt row, whatever its chunk, so a position's
            // result does not depend on how the prompt was split); decode rows on the loops.
            Some(fma) => {
                let (prompt, decode): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|job| job.3.prompt);
                decode.into_par_iter().for_each(|(out, q, start, input)| {
                    let (keys, values) = input.cache.layer(layer);
                    cached_causal(simd, q, keys, values, start, shape, out);
                });
                for (out, q, start, input) in prompt {
                    let (keys, values) = input.cache.layer(layer);
                    prompt_attention(fma, simd, q, keys, values, start, shape, out);
                }
            }
            None => jobs.into_par_iter().for_each(|(out, q, start, input)| {
                let (keys, values) = input.cache.layer(layer);
                cached_causal(simd, q, keys, values, start, shape, out);
            }),
        }
        Ok(out)
    }
}
