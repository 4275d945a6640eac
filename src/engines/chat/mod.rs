//! The chat engine: sequences with their own KV cache, sampling, detokenization and stop handling,
//! advanced together one packed step at a time (see [`llama`]).

pub mod gguf_tokenizer;
pub mod json_constraint;
pub mod llama;
pub mod oom;
pub mod sampling;
pub mod spec;
pub mod template;

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::PathBuf;
use tokenizers::Tokenizer;

use crate::config::roster::Precision;
use crate::engines::device::DeviceName;
use crate::engines::kernels::{selection, Kernels};
use crate::engines::vision::qwen3_vl::{rope_positions, ImageInput, VisionTokens, VisionTower};
use json_constraint::JsonMatcher;
use llama::{ChatWeights, KvCache, Llama, StepInput, StepVisual};
use oom::OomPolicy;
use sampling::{sample, sample_allowed, Sampling};
use sis_actors::{EngineError, StepEngine, StepLoader};
use spec::ChatSpec;

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// The OpenAI name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A sequence to generate.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: Sampling,
    /// Seed of this sequence's randomness.
    pub seed: u64,
    /// Stop strings (never included in the output).
    pub stop: Vec<String>,
    /// Constrained decoding: the output must be a JSON document of this schema.
    pub json: Option<json_constraint::Schema>,
    /// Images, in prompt order; each `<|image_pad|>` of the prompt is already expanded to its tokens.
    pub images: Vec<ImageInput>,
    /// Test hook: the engine panics when this sequence joins a step (fault-injection builds only).
    pub fault: bool,
    /// Log-probabilities of the sampled tokens, with this many alternatives each.
    pub logprobs: Option<usize>,
    /// Log-probabilities of the prompt's own tokens too (with `logprobs`' alternatives), sent with the
    /// first event; `max_tokens` may then be 0 (the prompt scored, nothing generated).
    pub prompt_logprobs: bool,
}

/// A token's log-probability under the model's distribution at its position, before temperature and
/// penalties (the raw logits' log-softmax), and the most likely alternatives there.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (a special token's text).
    pub bytes: Vec<u8>,
    /// Its log-probability; `None` for a prompt's first token, which nothing predicts.
    pub logprob: Option<f32>,
    /// The most likely tokens at its position, most likely first.
    pub top: Vec<(Vec<u8>, f32)>,
}

/// What a step produced for one sequence.
#[derive(Debug, Clone)]
pub struct ChatEvent {
    /// New text (may be empty while a stop string or a UTF-8 character is incomplete).
    pub text: String,
    /// Set on the last event.
    pub finish: Option<FinishReason>,
    /// Tokens generated so far.
    pub completion_tokens: usize,
    /// Log-probabilities of the prompt (first event) and of the tokens sampled in this step, when asked.
    pub logprobs: Vec<TokenLogprob>,
}

/// Token vocabulary as raw bytes, for exact incremental detokenization: byte-level BPE (GPT-2's
/// printable stand-ins for bytes) or SentencePiece (`▁` for a space, `<0xHH>` byte pieces).
pub struct TokenBytes {
    bytes: Vec<Vec<u8>>,
    /// Special tokens' text (they decode to nothing, but log-probabilities name them).
    specials: HashMap<u32, String>,
}

impl TokenBytes {
    /// Maps every token to its bytes; special tokens map to nothing. The tokenizer's decoder says
    /// which vocabulary it is: SentencePiece ones (Llama 2, Mistral, Gemma) decode without `ByteLevel`.
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let byte_level = match tokenizer.get_decoder() {
            Some(decoder) => serde_json::to_string(decoder).is_ok_and(|d| d.contains("ByteLevel")),
            None => true,
        };
        let mut decode = HashMap::new();
        let mut n = 0u32;
        for b in 0..=255u8 {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
            let c = if printable {
                char::from(b)
            } else {
                n += 1;
                char::from_u32(255 + n).expect("valid char")
            };
            decode.insert(c, b);
        }
        let size = tokenizer.get_vocab_size(true);
        let specials: HashMap<u32, String> = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (*id, t.content.clone()))
            .collect();
        let bytes = (0..size as u32)
            .map(|id| {
                if specials.contains_key(&id) {
                    return Vec::new();
                }
                let token = tokenizer.id_to_token(id).unwrap_or_default();
                if !byte_level {
                    return sentencepiece_bytes(&token);
                }
                token
                    .chars()
                    .flat_map(|c| {
                        decode.get(&c).copied().map(|b| vec![b]).unwrap_or_else(|| c.to_string().into_bytes())
                    })
                    .collect()
            })
            .collect();
        Self { bytes, specials }
    }

    /// A token as log-probabilities show it: its bytes, or a special token's text.
    fn shown(&self, id: u32) -> Vec<u8> {
        match self.specials.get(&id) {
            Some(text) => text.clone().into_bytes(),
            None => self.get(id).to_vec(),
        }
    }

    /// The log-probability of `token` in the raw `logits`, and the `top` most likely tokens.
    fn logprob(&self, logits: &[f32], token: u32, top: usize) -> TokenLogprob {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
        let best = crate::engines::nn::ranking::top(logits, top);
        TokenLogprob {
            bytes: self.shown(token),
            logprob: Some(logits[token as usize] - lse),
            top: best.into_iter().map(|t| (self.shown(t as u32), logits[t] - lse)).collect(),
        }
    }

    fn get(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A SentencePiece piece's bytes: `<0xHH>` is byte HH, `▁` a space.
fn sentencepiece_bytes(piece: &str) -> Vec<u8> {
    let byte = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')).filter(|h| h.len() == 2);
    match byte.and_then(|h| u8::from_str_radix(h, 16).ok()) {
        Some(b) => vec![b],
        None => piece.replace('\u{2581}', " ").into_bytes(),
    }
}

/// A sequence's image features, computed when it joins and fed to the prefill chunks they fall in.
struct SequenceVisual {
    /// Rotary positions of every prompt token.
    positions: Vec<[u32; 3]>,
    /// Prompt offsets of the image tokens, ascending.
    rows: Vec<usize>,
    /// `[rows, hidden]`.
    embeds: candle_core::Tensor,
    /// Per DeepStack layer, `[rows, hidden]`.
    deepstack: Vec<candle_core::Tensor>,
    /// How far the text positions after the prompt run behind the cache slots.
    delta: i64,
}

impl SequenceVisual {
    /// The features of the prompt tokens `start..end`.
    fn chunk(&self, start: usize, end: usize) -> candle_core::Result<Option<StepVisual>> {
        let (a, b) = (self.rows.partition_point(|&r| r < start), self.rows.partition_point(|&r| r < end));
        if a == b {
            return Ok(None);
        }
        Ok(Some(StepVisual {
            rows: self.rows[a..b].iter().map(|&r| (r - start) as u32).collect(),
            embeds: self.embeds.narrow(0, a, b - a)?,
            deepstack: self.deepstack.iter().map(|d| d.narrow(0, a, b - a)).collect::<candle_core::Result<_>>()?,
        }))
    }
}

struct Sequence {
    request: ChatRequest,
    cache: KvCache,
    prefilled: usize,
    /// Where this step's prompt chunk starts, when the step prefills.
    chunk_start: Option<usize>,
    visual: Option<SequenceVisual>,
    next: Vec<u32>,
    generated: usize,
    counts: HashMap<u32, u32>,
    rng: StdRng,
    utf8: Vec<u8>,
    held: String,
    json: Option<JsonMatcher>,
    /// Prompt log-probabilities: the last row of the previous prompt chunk (it predicts this chunk's
    /// first token), and the entries so far, sent with the first event.
    prompt_row: Option<Vec<f32>>,
    prompt_logprobs: Vec<TokenLogprob>,
}

/// The loaded chat engine.
pub struct ChatEngine {
    model: Llama,
    vision: Option<(VisionTower, VisionTokens)>,
    bytes: TokenBytes,
    eos: Vec<u32>,
    prefill_chunk: usize,
    sequences: HashMap<u64, Sequence>,
    order: Vec<u64>,
    oom: OomPolicy,
    /// The device memory the model holds (none on the CPU), given back when it drops.
    _memory: Option<crate::engines::device::Reservation>,
}

impl ChatEngine {
    /// Wraps a model; `eos` lists the tokens that end a turn.
    pub fn new(model: Llama, tokenizer: &Tokenizer, eos: Vec<u32>, prefill_chunk: usize) -> Self {
        Self {
            model,
            vision: None,
            bytes: TokenBytes::new(tokenizer),
            eos,
            prefill_chunk: prefill_chunk.max(1),
            sequences: HashMap::new(),
            order: Vec::new(),
            oom: OomPolicy::default(),
            _memory: None,
        }
    }
}

impl ChatEngine {
    /// Sets what a step that runs out of device memory does.
    pub fn with_oom(mut self, oom: OomPolicy) -> Self {
        self.oom = oom;
        self
    }

    /// Adds the vision tower of a vision-language model.
    pub fn with_vision(mut self, tower: VisionTower, tokens: VisionTokens) -> Self {
        self.vision = Some((tower, tokens));
        self
    }

    /// Runs the vision tower on a request's images and places their features in its prompt.
    fn encode_images(&self, request: &ChatRequest) -> Result<Option<SequenceVisual>, EngineError> {
        if request.images.is_empty() {
            return Ok(None);
        }
        let Some((tower, tokens)) = &self.vision else {
            return Err(EngineError::new("this model has no vision tower"));
        };
        let merge = tower.config().spatial_merge_size;
        let rows: Vec<usize> =
            request.prompt.iter().enumerate().filter(|(_, &t)| t == tokens.image).map(|(i, _)| i).collect();
        let expected: usize = request.images.iter().map(|i| i.tokens(merge)).sum();
        if rows.len() != expected {
            return Err(EngineError::new(format!("the prompt has {} image tokens for {expected}", rows.len())));
        }
        let (mut embeds, mut deepstack) = (Vec::new(), Vec::<Vec<candle_core::Tensor>>::new());
        for image in &request.images {
            let (e, d) = tower.forward(image).map_err(|e| EngineError::new(format!("{e:#}")))?;
            embeds.push(e);
            for (layer, f) in d.into_iter().enumerate() {
                match deepstack.get_mut(layer) {
                    Some(list) => list.push(f),
                    None => deepstack.push(vec![f]),
                }
            }
        }
        let grids: Vec<[usize; 3]> = request.images.iter().map(|i| i.grid).collect();
        let (positions, delta) = rope_positions(&request.prompt, tokens.image, &grids, merge);
        let cat = |list: &[candle_core::Tensor]| candle_core::Tensor::cat(list, 0).map_err(EngineError::new);
        Ok(Some(SequenceVisual {
            positions,
            rows,
            embeds: cat(&embeds)?,
            deepstack: deepstack.iter().map(|l| cat(l)).collect::<Result<_, _>>()?,
            delta,
        }))
    }
}

/// Appends decoded bytes and returns the text that can be released, holding back a possible stop-string
/// prefix; `Some(stop)` text when a stop string completed (everything before it).
fn release(seq: &mut Sequence, bytes: &[u8]) -> (String, bool) {
    seq.utf8.extend_from_slice(bytes);
    let valid = match std::str::from_utf8(&seq.utf8) {
        Ok(s) => s.len(),
        Err(e) => e.valid_up_to(),
    };
    let text = String::from_utf8(seq.utf8.drain(..valid).collect()).expect("validated");
    seq.held.push_str(&text);
    if let Some(at) = seq.request.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| seq.held.find(s.as_str())).min()
    {
        let out = seq.held[..at].to_string();
        seq.held.clear();
        return (out, true);
    }
    // Hold back the longest tail that could still start a stop string.
    let mut keep = 0;
    for stop in &seq.request.stop {
        for (i, _) in seq.held.char_indices() {
            let tail = &seq.held[i..];
            if tail.len() > keep && tail.len() < stop.len() && stop.starts_with(tail) {
                keep = tail.len();
            }
        }
    }
    let cut = seq.held.len() - keep;
    let out = seq.held[..cut].to_string();
    seq.held.drain(..cut);
    (out, false)
}

impl StepEngine for ChatEngine {
    type Request = ChatRequest;
    type Event = ChatEvent;

    fn add(&mut self, id: u64, request: ChatRequest) -> Result<(), EngineError> {
        let context = self.model.config.context;
        if request.prompt.is_empty() {
            return Err(EngineError::new("empty prompt"));
        }
        if request.max_tokens == 0 && !request.prompt_logprobs {
            return Err(EngineError::new("max_tokens 0 only scores a prompt (echo with logprobs)"));
        }
        if request.prompt.len() + request.max_tokens > context {
            return Err(EngineError::new(format!("prompt and max_tokens exceed the context of {context} tokens")));
        }
        let visual = self.encode_images(&request)?;
        let mut cache = self.model.new_cache();
        if let Some(visual) = &visual {
            cache.rope_delta = visual.delta;
        }
        let seq = Sequence {
            rng: StdRng::seed_from_u64(request.seed),
            cache,
            prefilled: 0,
            chunk_start: None,
            visual,
            next: Vec::new(),
            generated: 0,
            counts: HashMap::new(),
            utf8: Vec::new(),
            held: String::new(),
            json: request.json.clone().map(JsonMatcher::new),
            prompt_row: None,
            prompt_logprobs: Vec::new(),
            request,
        };
        self.sequences.insert(id, seq);
        self.order.push(id);
        Ok(())
    }

    fn remove(&mut self, id: u64) {
        self.sequences.remove(&id);
        self.order.retain(|o| *o != id);
    }

    fn step(&mut self, events: &mut Vec<(u64, ChatEvent, bool)>) -> Result<(), EngineError> {
        // Decode tokens first, then prompt chunks within the prefill budget (oldest first), so
        // running sequences keep getting tokens while long prompts are prefilled.
        let mut budget = self.prefill_chunk;
        let mut ids = Vec::with_capacity(self.order.len());
        for &id in &self.order {
            let seq = self.sequences.get_mut(&id).expect("ordered ids exist");
            if seq.request.fault {
                panic!("fault injection: panic requested by the test hook");
            }
            seq.chunk_start = None;
            if seq.prefilled == seq.request.prompt.len() {
                seq.visual = None; // prefilled: the image features live in the cache now
            }
            if seq.prefilled < seq.request.prompt.len() {
                if budget == 0 {
                    continue;
                }
                seq.chunk_start = Some(seq.prefilled);
                let end = (seq.prefilled + budget).min(seq.request.prompt.len());
                seq.next = seq.request.prompt[seq.prefilled..end].to_vec();
                budget -= end - seq.prefilled;
                seq.prefilled = end;
            }
            ids.push(id);
        }
        let mut inputs: Vec<(u64, StepInput<'_>)> = Vec::with_capacity(ids.len());
        for (id, seq) in self.sequences.iter_mut() {
            if ids.contains(id) {
                let logits = seq.prefilled == seq.request.prompt.len();
                let mut input = StepInput::text(&mut seq.cache, &seq.next, logits);
                input.prompt = seq.chunk_start.is_some();
                input.all_logits = input.prompt && seq.request.prompt_logprobs;
                if let (Some(visual), Some(start)) = (&seq.visual, seq.chunk_start) {
                    let end = start + seq.next.len();
                    input.positions = Some(&visual.positions[start..end]);
                    input.visual = visual.chunk(start, end).map_err(EngineError::new)?;
                }
                inputs.push((*id, input));
            }
        }
        inputs.sort_by_key(|(id, _)| ids.iter().position(|x| x == id));
        // Rows of logits each input gets back: every new token's, the last one's, or none.
        let order: Vec<(u64, usize)> = inputs
            .iter()
            .map(|(id, i)| (*id, if i.all_logits { i.tokens.len() } else { usize::from(i.logits) }))
            .collect();
        let mut step: Vec<StepInput<'_>> = inputs.into_iter().map(|(_, i)| i).collect();
        let logits = oom::step(&self.model, &mut step, &self.oom).map_err(EngineError::new)?;
        drop(step);

        let mut rows = logits.into_iter();
        for (id, count) in order {
            if count == 0 {
                continue;
            }
            let mut chunk: Vec<Vec<f32>> = rows.by_ref().take(count).collect();
            if chunk.len() != count {
                return Err(EngineError::new("missing logits"));
            }
            let seq = self.sequences.get_mut(&id).expect("present");
            if let (Some(start), true) = (seq.chunk_start, seq.request.prompt_logprobs) {
                // Row i predicts prompt token start + i + 1; this chunk's first token was predicted by
                // the previous chunk's last row (the prompt's first token by nothing).
                let top = seq.request.logprobs.unwrap_or(0);
                let tokens = &seq.request.prompt[start..start + count];
                for (i, &token) in tokens.iter().enumerate() {
                    let entry = match if i == 0 { seq.prompt_row.as_deref() } else { Some(&chunk[i - 1][..]) } {
                        Some(row) => self.bytes.logprob(row, token, top),
                        None => TokenLogprob { bytes: self.bytes.shown(token), logprob: None, top: Vec::new() },
                    };
                    seq.prompt_logprobs.push(entry);
                }
                seq.prompt_row = chunk.pop();
                if seq.prefilled < seq.request.prompt.len() {
                    continue;
                }
                if seq.request.max_tokens == 0 {
                    // Scored, nothing to generate.
                    let logprobs = std::mem::take(&mut seq.prompt_logprobs);
                    let event = ChatEvent {
                        text: String::new(),
                        finish: Some(FinishReason::Length),
                        completion_tokens: 0,
                        logprobs,
                    };
                    events.push((id, event, true));
                    self.remove(id);
                    continue;
                }
                chunk.push(seq.prompt_row.take().expect("the last row"));
            }
            let mut row = chunk.pop().expect("one row");
            let raw = seq.request.logprobs.map(|_| row.clone());
            if let Some(matcher) = seq.json.as_mut() {
                // Leave room to close the document before max_tokens.
                if seq.request.max_tokens - seq.generated <= 2 * matcher.depth() + 3 {
                    matcher.close_soon();
                }
            }
            let token = match &seq.json {
                None => sample(&mut row, &seq.request.sampling, &seq.counts, &mut seq.rng),
                Some(matcher) => {
                    let (bytes, eos) = (&self.bytes, &self.eos);
                    let allowed = |t: u32| {
                        if eos.contains(&t) {
                            matcher.is_complete()
                        } else {
                            matcher.allows(bytes.get(t))
                        }
                    };
                    let pick = if matcher.is_complete() {
                        None
                    } else {
                        sample_allowed(&mut row, &seq.request.sampling, &seq.counts, &mut seq.rng, &allowed)
                    };
                    // A complete document (or, never expected, a dead end) ends the turn.
                    pick.unwrap_or(eos[0])
                }
            };
            if let (Some(matcher), false) = (seq.json.as_mut(), self.eos.contains(&token)) {
                matcher.advance(self.bytes.get(token));
            }
            seq.generated += 1;
            *seq.counts.entry(token).or_insert(0) += 1;
            seq.next = vec![token];
            let (text, finish) = if self.eos.contains(&token) {
                let rest = std::mem::take(&mut seq.held) + &String::from_utf8_lossy(&std::mem::take(&mut seq.utf8));
                (rest, Some(FinishReason::Stop))
            } else {
                let (text, stopped) = release(seq, self.bytes.get(token));
                if stopped {
                    (text, Some(FinishReason::Stop))
                } else if seq.generated >= seq.request.max_tokens {
                    let rest = std::mem::take(&mut seq.held) + &String::from_utf8_lossy(&std::mem::take(&mut seq.utf8));
                    (text + &rest, Some(FinishReason::Length))
                } else {
                    (text, None)
                }
            };
            let mut logprobs = std::mem::take(&mut seq.prompt_logprobs);
            if let (Some(raw), Some(top)) = (raw, seq.request.logprobs) {
                logprobs.push(self.bytes.logprob(&raw, token, top));
            }
            let event = ChatEvent { text, finish, completion_tokens: seq.generated, logprobs };
            events.push((id, event, finish.is_some()));
            if finish.is_some() {
                self.remove(id);
            }
        }
        Ok(())
    }

    fn warmup(&mut self, steps: usize, batch_size: usize) -> Result<(), EngineError> {
        let vocab = self.model.config.vocab as u32;
        let mut caches: Vec<KvCache> = (0..batch_size).map(|_| self.model.new_cache()).collect();
        let prompts: Vec<Vec<u32>> =
            (0..batch_size).map(|i| (0..8 + i as u32).map(|t| (100 + t * 31) % vocab).collect()).collect();
        let mut inputs: Vec<StepInput<'_>> =
            caches.iter_mut().zip(&prompts).map(|(cache, p)| StepInput::text(cache, p, true).prompt()).collect();
        self.model.step(&mut inputs).map_err(EngineError::new)?;
        let one = [100u32];
        for _ in 0..steps {
            let mut inputs: Vec<StepInput<'_>> =
                caches.iter_mut().map(|cache| StepInput::text(cache, &one, true)).collect();
            self.model.step(&mut inputs).map_err(EngineError::new)?;
        }
        Ok(())
    }
}

/// Loads a GGUF chat model on the actor's thread.
pub struct ChatLoader {
    /// The .gguf file, or the folder of a safetensors checkpoint.
    pub path: PathBuf,
    /// The tokenizer (shared with the request path).
    pub tokenizer: std::sync::Arc<Tokenizer>,
    /// End-of-turn tokens.
    pub eos: Vec<u32>,
    /// Prompt tokens prefilled per step.
    pub prefill_chunk: usize,
    /// The roster's `precision`: `auto` runs a GGUF model's prompt rows on bf16 products where the
    /// kernel runs, `f32` keeps them in f32, `bf16` insists (the model fails to load without the kernel;
    /// safetensors checkpoints run in f32 and refuse it).
    pub precision: Precision,
    /// What the weights are (from the spec), for choosing and reporting kernels.
    pub weights: ChatWeights,
    /// The device it runs on.
    pub device: DeviceName,
    /// What a step that runs out of device memory does.
    pub oom: OomPolicy,
}

impl ChatLoader {
    /// The loader of a model read by [`ChatSpec`], prefilling `prefill_chunk` prompt tokens per step,
    /// on `device`.
    pub fn new(spec: &ChatSpec, prefill_chunk: usize, precision: Precision, device: DeviceName) -> Self {
        Self {
            path: spec.path.clone(),
            tokenizer: spec.tokenizer.clone(),
            eos: spec.eos_ids.clone(),
            prefill_chunk,
            precision,
            weights: spec.weights.clone(),
            device,
            oom: OomPolicy::default(),
        }
    }

    /// The kernels this model runs: the operator's selection and the model's precision on the CPU;
    /// candle's ops (the reference path) on a GPU.
    fn resolve(&self) -> anyhow::Result<Kernels> {
        if !self.device.is_cpu() {
            return Ok(Kernels::REFERENCE);
        }
        let kernels = selection()?.for_model(self.precision, true, &self.weights.shapes(self.prefill_chunk))?;
        if !self.weights.gguf && self.precision == Precision::Bf16 {
            anyhow::bail!(
                "precision = \"bf16\" applies to GGUF chat models (the dense copy their prompt rows run on); \
                 safetensors checkpoints run in f32: use auto or f32"
            );
        }
        Ok(kernels)
    }

    /// Which implementation each hot operation runs for this model on this machine (`"quantized
    /// matmul: int8-avx2 (Q4_1)"`, `"prompt rows: dense copy on fma-avx2 (measured: …)"`, …); one `error: …`
    /// line where the model cannot load with the selected kernels.
    pub fn kernels(&self) -> Vec<String> {
        match self.resolve() {
            Ok(_) if !self.device.is_cpu() => vec![format!("device: {} (candle's ops)", self.device)],
            Ok(kernels) => self.weights.report(kernels),
            Err(e) => vec![format!("error: {e:#}")],
        }
    }
}

impl StepLoader for ChatLoader {
    type Engine = ChatEngine;

    fn load(&self) -> Result<ChatEngine, EngineError> {
        let error = crate::engines::load_error;
        let kernels = self.resolve().map_err(error)?;
        let device = crate::engines::device::open(self.device).map_err(EngineError::new)?;
        let weights = crate::engines::device::weight_bytes(&self.path);
        let loading = crate::engines::device::Loading::start(&device, weights).map_err(EngineError::permanent)?;
        let engine = self.load_on(&device, kernels).map_err(error)?.with_oom(self.oom.clone());
        Ok(ChatEngine { _memory: Some(loading.finish()), ..engine })
    }
}

impl ChatLoader {
    /// The engine of a GGUF file or of a safetensors folder (with its vision tower, if it has one).
    fn load_on(&self, device: &candle_core::Device, kernels: Kernels) -> anyhow::Result<ChatEngine> {
        if !self.path.is_dir() {
            let (model, _) = Llama::from_gguf(&self.path, kernels, device)?;
            return Ok(ChatEngine::new(model, &self.tokenizer, self.eos.clone(), self.prefill_chunk));
        }
        tracing::info!(path = %self.path.display(), kernels = %self.weights.report(kernels).join("; "), "chat kernels");
        let model = Llama::from_safetensors(&self.path, kernels, device)?;
        let engine = ChatEngine::new(model, &self.tokenizer, self.eos.clone(), self.prefill_chunk);
        match crate::engines::vision::qwen3_vl::read_config(&self.path.join("config.json"))? {
            Some((config, tokens)) => {
                let files = llama::safetensors_files(&self.path)?;
                let tower = VisionTower::load(&files, config, device, llama::run_dtype(&self.path, device)?)?;
                Ok(engine.with_vision(tower, tokens))
            }
            None => Ok(engine),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(stop: &[&str]) -> Sequence {
        Sequence {
            request: ChatRequest {
                prompt: vec![1],
                max_tokens: 10,
                sampling: Sampling { temperature: 0.0, top_p: 1.0, presence_penalty: 0.0, frequency_penalty: 0.0 },
                seed: 0,
                stop: stop.iter().map(|s| s.to_string()).collect(),
                json: None,
                images: Vec::new(),
                fault: false,
                logprobs: None,
                prompt_logprobs: false,
            },
            cache: KvCache::default(),
            prefilled: 0,
            chunk_start: None,
            visual: None,
            next: vec![],
            generated: 0,
            counts: HashMap::new(),
            rng: StdRng::seed_from_u64(0),
            utf8: vec![],
            held: String::new(),
            json: None,
            prompt_row: None,
            prompt_logprobs: Vec::new(),
        }
    }

    fn loader(gguf: bool, precision: Precision) -> ChatLoader {
        ChatLoader {
            path: PathBuf::from("model"),
            tokenizer: std::sync::Arc::new(Tokenizer::new(tokenizers::models::bpe::BPE::default())),
            eos: vec![0],
            prefill_chunk: 16,
            precision,
            device: DeviceName::Cpu,
            oom: OomPolicy::default(),
            weights: ChatWeights {
                gguf,
                prompt_copy: gguf,
                types: if gguf { vec![candle_core::quantized::GgmlDType::Q8_0] } else { Vec::new() },
                vision: false,
                widths: Some((64, 128)),
            },
        }
    }

    #[test]
    fn precision_reaches_the_prompt_rows_and_safetensors_refuse_bf16() {
        if let Err(e) = crate::engines::kernels::selection() {
            // An invalid SIS_CPU_KERNELS: the loader reports it instead (and fails to load).
            assert_eq!(loader(true, Precision::Auto).kernels(), [format!("error: {e}")]);
            return;
        }
        let f32 = loader(true, Precision::F32).kernels();
        let prompt = f32.iter().find(|l| l.starts_with("prompt rows: dense copy on ")).expect("a dense copy");
        assert!(!prompt.contains("bf16"), "{f32:?}");
        let refused = loader(false, Precision::Bf16).kernels();
        assert!(refused.len() == 1 && refused[0].starts_with("error: precision = \"bf16\""), "{refused:?}");
        assert_eq!(loader(false, Precision::Auto).kernels()[0], "matmul: reference (f32 weights)");
    }

    #[test]
    fn stop_strings_match_across_tokens_and_are_never_emitted() {
        let mut s = seq(&["END"]);
        assert_eq!(release(&mut s, b"hello E"), ("hello ".to_string(), false));
        assert_eq!(release(&mut s, b"N"), (String::new(), false));
        assert_eq!(release(&mut s, b"D tail"), (String::new(), true));
        let mut s = seq(&["END"]);
        assert_eq!(release(&mut s, b"EN"), (String::new(), false));
        assert_eq!(release(&mut s, b"ough"), ("ENough".to_string(), false));
    }

    #[test]
    fn sentencepiece_pieces_are_their_bytes() {
        assert_eq!(sentencepiece_bytes("\u{2581}Paris"), b" Paris");
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_bytes("<0xE2>"), [0xE2]);
        assert_eq!(sentencepiece_bytes("<0xZZ>"), b"<0xZZ>");
        assert_eq!(sentencepiece_bytes("<start_of_turn>"), b"<start_of_turn>");
    }

    #[test]
    fn multibyte_characters_wait_for_their_last_byte() {
        let mut s = seq(&[]);
        let e = "é".as_bytes();
        assert_eq!(release(&mut s, &e[..1]), (String::new(), false));
        assert_eq!(release(&mut s, &e[1..]), ("é".to_string(), false));
    }
}
