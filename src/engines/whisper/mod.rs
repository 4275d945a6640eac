//! Speech to text with Whisper: our encoder and decoder (whisper_encoder, whisper_decoder) fed with weights from a
//! CTranslate2 model.bin (faster-whisper folders) or Hub safetensors, and the decoding of
//! openai-whisper: timestamp rules, window-by-window seeking on long audio with the previous text as
//! prompt, temperature fallback on repetitive or low-confidence output, language detection.

pub mod ct2;
pub mod decoder;
pub mod encoder;
pub mod mel;
pub mod word_alignment;

use candle_core::{Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use crate::config::roster::Precision;
use crate::engines::kernels::{selection, KernelError, Kernels};
use decoder::TextDecoder;
use encoder::AudioEncoder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

use sis_actors::{BatchItem, Engine, EngineError, EngineLoader};

/// Frames of one 30-second window.
const WINDOW_FRAMES: usize = 3000;
/// Samples of one 30-second window.
const WINDOW_SAMPLES: usize = WINDOW_FRAMES * mel::HOP_LENGTH;
/// Seconds per timestamp step.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per encoder position.
const FRAMES_PER_POSITION: usize = 2;
const TEMPERATURES: [f64; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Speech to text in its own language.
    Transcribe,
    /// Speech to English text.
    Translate,
}

/// One request.
#[derive(Debug, Clone)]
pub struct AudioJob {
    /// 16 kHz mono samples.
    pub samples: Vec<f32>,
    /// Task.
    pub task: Task,
    /// Language code (`en`, `fr`…); detected when absent on multilingual models.
    pub language: Option<String>,
    /// Text that precedes the audio (names, spelling).
    pub prompt: Option<String>,
    /// First temperature; the fallback raises it.
    pub temperature: f64,
    /// Whether to time every word.
    pub words: bool,
}

impl BatchItem for AudioJob {
    fn cost(&self) -> usize {
        self.samples.len() / mel::SAMPLE_RATE + 1
    }
}

/// A transcribed segment.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// Index.
    pub id: usize,
    /// Window start, in mel frames.
    pub seek: usize,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Text.
    pub text: String,
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Temperature that produced it.
    pub temperature: f64,
    /// Mean log-probability of its window's tokens.
    pub avg_logprob: f64,
    /// gzip compression ratio of its window's text.
    pub compression_ratio: f64,
    /// Probability that the window holds no speech.
    pub no_speech_prob: f64,
}

/// A timed word.
#[derive(Debug, Clone, Serialize)]
pub struct Word {
    /// The word, with its punctuation.
    pub word: String,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
}

/// A finished transcription.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// Language code.
    pub language: String,
    /// Audio length in seconds.
    pub duration: f64,
    /// Task run.
    pub task: Task,
    /// Segments in time order.
    pub segments: Vec<Segment>,
    /// Whole text.
    pub text: String,
    /// Timed words, when asked for.
    pub words: Vec<Word>,
}

/// A model's shapes, by their Hub `config.json` names (openai-whisper's names in the comments).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct WhisperConfig {
    /// `n_mels`.
    num_mel_bins: usize,
    /// `n_audio_ctx`.
    max_source_positions: usize,
    /// `n_audio_state` (= `n_text_state`).
    d_model: usize,
    /// `n_audio_head`.
    encoder_attention_heads: usize,
    /// `n_audio_layer`.
    encoder_layers: usize,
    /// `n_vocab`.
    vocab_size: usize,
    /// `n_text_ctx`.
    max_target_positions: usize,
    /// `n_text_head`.
    decoder_attention_heads: usize,
    /// `n_text_layer`.
    decoder_layers: usize,
}

/// Special tokens, looked up by their text in the tokenizer.
#[derive(Debug, Clone)]
struct Specials {
    sot: u32,
    eot: u32,
    transcribe: u32,
    translate: u32,
    no_timestamps: u32,
    start_of_prev: u32,
    no_speech: Option<u32>,
    timestamp_begin: u32,
    languages: Vec<(String, u32)>,
}

/// Everything read from the model folder before loading weights.
#[derive(Clone)]
pub struct WhisperSpec {
    /// Folder.
    pub dir: PathBuf,
    /// Tokenizer.
    pub tokenizer: std::sync::Arc<Tokenizer>,
    /// Whether the model knows several languages.
    pub multilingual: bool,
    /// Encoder arithmetic.
    pub precision: Precision,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    specials: Specials,
}

impl WhisperSpec {
    /// Reads tokenizer.json and config.json (CTranslate2 or Hub).
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        let id = |t: &str| tokenizer.token_to_id(t).ok_or_else(|| anyhow::anyhow!("tokenizer has no {t}"));
        let ids = |key: &str| -> Vec<u32> {
            config[key]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect())
                .unwrap_or_default()
        };
        let mut languages: Vec<(String, u32)> = ids("lang_ids")
            .into_iter()
            .filter_map(|i| {
                Some((tokenizer.id_to_token(i)?.trim_start_matches("<|").trim_end_matches("|>").to_string(), i))
            })
            .collect();
        if languages.is_empty() {
            for code in ["en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "it", "nl", "ar", "sv", "uk"]
            {
                if let Some(i) = tokenizer.token_to_id(&format!("<|{code}|>")) {
                    languages.push((code.to_string(), i));
                }
            }
        }
        let specials = Specials {
            sot: id("<|startoftranscript|>")?,
            eot: id("<|endoftext|>")?,
            transcribe: id("<|transcribe|>")?,
            translate: id("<|translate|>")?,
            no_timestamps: id("<|notimestamps|>")?,
            start_of_prev: id("<|startofprev|>")?,
            no_speech: tokenizer.token_to_id("<|nospeech|>").or_else(|| tokenizer.token_to_id("<|nocaptions|>")),
            // Timestamp tokens follow <|notimestamps|>; CTranslate2 tokenizers do not list them.
            timestamp_begin: tokenizer.token_to_id("<|0.00|>").unwrap_or(id("<|notimestamps|>")? + 1),
            languages,
        };
        let vocab = tokenizer.get_vocab_size(true);
        let mut suppress = ids("suppress_ids");
        if suppress.is_empty() {
            suppress = config["suppress_tokens"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect())
                .unwrap_or_default();
        }
        let mut suppress_begin = ids("suppress_ids_begin");
        if suppress_begin.is_empty() {
            suppress_begin = config["begin_suppress_tokens"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect())
                .unwrap_or_default();
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            // openai-whisper's rule, n_vocab ≥ 51865, counting the 1501 timestamp tokens that
            // CTranslate2 tokenizers leave out.
            multilingual: if tokenizer.token_to_id("<|0.00|>").is_some() {
                vocab >= 51865
            } else {
                vocab + 1501 >= 51865
            },
            tokenizer: std::sync::Arc::new(tokenizer),
            precision: Precision::default(),
            suppress,
            suppress_begin,
            specials,
        })
    }

    /// The kernels this model runs: the operator's selection and the model's precision.
    fn resolve(&self) -> Result<Kernels, KernelError> {
        selection()?.for_model(self.precision, true)
    }

    /// Which implementation each hot operation runs for this model on this machine (`"dense:
    /// bf16-avx512"`, `"output projection: vnni-avx512"`, …); one `error: …` line where the model cannot
    /// load with the selected kernels.
    pub fn kernels(&self) -> Vec<String> {
        match self.resolve() {
            Ok(kernels) => report(kernels),
            Err(e) => vec![format!("error: {e}")],
        }
    }

    /// Whether `code` names a language this model knows.
    pub fn knows_language(&self, code: &str) -> bool {
        self.specials.languages.iter().any(|(c, _)| c == code)
    }
}

/// What [`WhisperSpec::kernels`] says: the encoder's window is always 1500 positions long, so its
/// attention takes the matrix products (see [`crate::engines::nn::attention::packed_attention`]), and every Whisper
/// width is a multiple of 32, so the output projection takes the int8 kernel whenever the decoder's
/// dense layers run on bf16 and the kernel is selected.
fn report(kernels: Kernels) -> Vec<String> {
    let products = if kernels.simd.is_some() { kernels.dense() } else { "reference" };
    let projection = if kernels.bf16.is_some() { kernels.quantized() } else { "reference" };
    vec![
        format!("dense: {}", kernels.dense()),
        format!("attention (encoder): {products}"),
        format!("gelu (encoder): {}", kernels.loops()),
        "attention (decoder): reference".to_string(),
        format!("output projection: {projection}"),
    ]
}

/// A loaded Whisper model.
pub struct WhisperEngine {
    /// The threads its transcriptions run on.
    pool: std::sync::Arc<crate::engines::kernels::Pool>,
    encoder: AudioEncoder,
    decoder: TextDecoder,
    spec: WhisperSpec,
    filters: Vec<f32>,
    config: WhisperConfig,
    /// (layer, head) pairs whose cross-attention follows the audio (for word timestamps).
    alignment_heads: Vec<(usize, usize)>,
}

/// The model's alignment heads (CTranslate2 config.json `alignment_heads`, Hub generation_config.json),
/// else openai-whisper's default: every head of the second half of the decoder layers.
fn alignment_heads(dir: &Path, config: &WhisperConfig) -> Vec<(usize, usize)> {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
    };
    let listed = |v: serde_json::Value| -> Option<Vec<(usize, usize)>> {
        v.get("alignment_heads")?
            .as_array()?
            .iter()
            .map(|p| Some((p.get(0)?.as_u64()? as usize, p.get(1)?.as_u64()? as usize)))
            .collect()
    };
    read("config.json").and_then(listed).or_else(|| read("generation_config.json").and_then(listed)).unwrap_or_else(
        || {
            (config.decoder_layers / 2..config.decoder_layers)
                .flat_map(|l| (0..config.decoder_attention_heads).map(move |h| (l, h)))
                .collect()
        },
    )
}

/// Loads Whisper on the model actor's thread.
pub struct WhisperLoader {
    /// What to load.
    pub spec: WhisperSpec,
}

impl WhisperLoader {
    /// Which implementation each hot operation runs for this model (see [`WhisperSpec::kernels`]).
    pub fn kernels(&self) -> Vec<String> {
        self.spec.kernels()
    }
}

impl EngineLoader for WhisperLoader {
    type Engine = WhisperEngine;

    fn load(&self) -> Result<WhisperEngine, EngineError> {
        load(&self.spec).map_err(|e| EngineError::new(format!("{e:#}")))
    }
}

fn load(spec: &WhisperSpec) -> anyhow::Result<WhisperEngine> {
    let device = Device::Cpu;
    let ct2 = spec.dir.join("model.bin");
    let (vb, config) = if ct2.is_file() {
        let vars = ct2::read(&ct2)?;
        let (tensors, shape) = ct2::whisper_tensors(&vars)?;
        let config = WhisperConfig {
            num_mel_bins: shape.mels,
            max_source_positions: shape.audio_positions,
            d_model: shape.width,
            encoder_attention_heads: shape.encoder_heads,
            encoder_layers: shape.encoder_layers,
            vocab_size: shape.vocab,
            max_target_positions: shape.text_positions,
            decoder_attention_heads: shape.decoder_heads,
            decoder_layers: shape.decoder_layers,
        };
        (VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device), config)
    } else {
        let config: WhisperConfig = serde_json::from_str(&std::fs::read_to_string(spec.dir.join("config.json"))?)?;
        // SAFETY: the file is mapped read-only and not modified while the model loads.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[spec.dir.join("model.safetensors")],
                candle_core::DType::F32,
                &device,
            )?
        };
        (vb, config)
    };
    let kernels = spec.resolve()?;
    tracing::info!(dir = %spec.dir.display(), kernels = %report(kernels).join("; "), "whisper kernels");
    let encoder = AudioEncoder::load(
        &vb.pp("model.encoder"),
        config.num_mel_bins,
        config.d_model,
        config.encoder_attention_heads,
        config.encoder_layers,
        config.max_source_positions,
        kernels,
    )?;
    let decoder = TextDecoder::load(
        vb.pp("model.decoder"),
        config.d_model,
        config.decoder_attention_heads,
        config.decoder_layers,
        config.vocab_size,
        config.max_target_positions,
        kernels,
    )?;
    let alignment_heads = alignment_heads(&spec.dir, &config);
    Ok(WhisperEngine {
        pool: std::sync::Arc::new(crate::engines::kernels::Pool::new("whisper")?),
        encoder,
        decoder,
        spec: spec.clone(),
        filters: mel::filterbank(config.num_mel_bins),
        config,
        alignment_heads,
    })
}

struct Decoded {
    tokens: Vec<u32>,
    avg_logprob: f64,
    no_speech_prob: f64,
    temperature: f64,
    compression_ratio: f64,
}

/// gzip-style compression ratio of a text (repetitive text compresses well).
fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(text.as_bytes());
    let compressed = z.finish().map(|v| v.len()).unwrap_or(1).max(1);
    text.len() as f64 / compressed as f64
}

impl WhisperEngine {
    fn decode_text(&self, tokens: &[u32]) -> String {
        let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < self.spec.specials.eot).collect();
        self.spec.tokenizer.decode(&text, true).unwrap_or_default()
    }

    fn detect_language(&mut self, features: &Tensor) -> candle_core::Result<String> {
        let s = &self.spec.specials;
        let mut state = self.decoder.start(features)?;
        let hidden = self.decoder.forward(&mut state, &[s.sot], None)?;
        let logits = self.decoder.logits(&hidden.i(0)?)?;
        let best = s.languages.iter().max_by(|a, b| logits[a.1 as usize].total_cmp(&logits[b.1 as usize]));
        Ok(best.map(|(c, _)| c.clone()).unwrap_or_else(|| "en".into()))
    }

    /// Greedy or sampled decoding of one window with openai-whisper's timestamp rules.
    fn decode_window(
        &mut self,
        features: &Tensor,
        prefix: &[u32],
        sample_begin: usize,
        temperature: f64,
        rng: &mut StdRng,
    ) -> candle_core::Result<Decoded> {
        let s = self.spec.specials.clone();
        let mut tokens = prefix.to_vec();
        let sot_index = prefix.iter().position(|&t| t == s.sot).unwrap_or(0);
        let max_new = self.config.max_target_positions / 2;
        let (mut sum_logprob, mut no_speech_prob) = (0f64, 0f64);
        let mut state = self.decoder.start(features)?;
        let mut hidden = self.decoder.forward(&mut state, prefix, None)?;
        if let Some(ns) = s.no_speech {
            let at_sot = Tensor::new(self.decoder.logits(&hidden.i(sot_index)?)?, &Device::Cpu)?;
            let probs = candle_nn::ops::softmax_last_dim(&at_sot)?.to_vec1::<f32>()?;
            no_speech_prob = probs[ns as usize] as f64;
        }
        for step in 0..max_new {
            if step > 0 {
                hidden = self.decoder.forward(&mut state, &tokens[tokens.len() - 1..], None)?;
            }
            let last = hidden.dim(0)? - 1;
            let mut logits = self.decoder.logits(&hidden.i(last)?)?;
            let sampled = &tokens[sample_begin..];
            self.apply_rules(&mut logits, sampled);
            // Log-probabilities for the timestamp rule and the average log-probability.
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() + max as f64;
            let ts = s.timestamp_begin as usize;
            let ts_mass = logits[ts..].iter().map(|&l| (l as f64 - log_sum).exp()).sum::<f64>();
            let text_max = logits[..ts].iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 - log_sum;
            if ts_mass.ln() > text_max {
                logits[..ts].iter_mut().for_each(|l| *l = f32::NEG_INFINITY);
            }
            let token = if temperature <= 0.0 {
                crate::engines::chat::sampling::argmax(&logits)
            } else {
                let probs: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max as f64) / temperature).exp()).collect();
                let total: f64 = probs.iter().sum();
                let mut r = rng.random::<f64>() * total;
                let mut pick = s.eot;
                for (i, p) in probs.iter().enumerate() {
                    r -= p;
                    if r <= 0.0 {
                        pick = i as u32;
                        break;
                    }
                }
                pick
            };
            let max2 = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum2 = logits.iter().map(|&l| ((l - max2) as f64).exp()).sum::<f64>().ln() + max2 as f64;
            sum_logprob += logits[token as usize] as f64 - log_sum2;
            if token == s.eot {
                break;
            }
            tokens.push(token);
            if tokens.len() >= self.config.max_target_positions {
                break;
            }
        }
        let out: Vec<u32> = tokens[sample_begin..].to_vec();
        let text = self.decode_text(&out);
        Ok(Decoded {
            avg_logprob: sum_logprob / (out.len() + 1) as f64,
            compression_ratio: compression_ratio(&text),
            tokens: out,
            no_speech_prob,
            temperature,
        })
    }

    fn apply_rules(&self, logits: &mut [f32], sampled: &[u32]) {
        let s = &self.spec.specials;
        let ts = s.timestamp_begin as usize;
        let neg = f32::NEG_INFINITY;
        for &t in &self.spec.suppress {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = neg;
            }
        }
        for t in [s.sot, s.transcribe, s.translate, s.no_timestamps, s.start_of_prev].into_iter().chain(s.no_speech) {
            logits[t as usize] = neg;
        }
        for (_, t) in &s.languages {
            logits[*t as usize] = neg;
        }
        if sampled.is_empty() {
            for &t in &self.spec.suppress_begin {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = neg;
                }
            }
            // Begin with a timestamp, no later than 1 s.
            logits[..ts].iter_mut().for_each(|l| *l = neg);
            let latest = ts + (1.0 / TIME_PRECISION) as usize + 1;
            if latest < logits.len() {
                logits[latest..].iter_mut().for_each(|l| *l = neg);
            }
            return;
        }
        let last_ts = sampled.last().is_some_and(|&t| t as usize >= ts);
        let penultimate_ts = sampled.len() < 2 || sampled[sampled.len() - 2] as usize >= ts;
        if last_ts {
            if penultimate_ts {
                logits[ts..].iter_mut().for_each(|l| *l = neg);
            } else {
                logits[..s.eot as usize].iter_mut().for_each(|l| *l = neg);
            }
        }
        if let Some(&latest) = sampled.iter().rev().find(|&&t| t as usize >= ts) {
            let floor = if last_ts && !penultimate_ts { latest as usize } else { latest as usize + 1 };
            let end = floor.min(logits.len());
            logits[ts..end].iter_mut().for_each(|l| *l = neg);
        }
    }

    /// Transcribes (or translates) a whole recording.
    pub fn transcribe(&mut self, job: &AudioJob) -> anyhow::Result<Transcript> {
        let pool = self.pool.clone();
        pool.run(|| self.transcribe_in_pool(job))
    }

    fn transcribe_in_pool(&mut self, job: &AudioJob) -> anyhow::Result<Transcript> {
        let s = self.spec.specials.clone();
        let duration = job.samples.len() as f64 / mel::SAMPLE_RATE as f64;
        let content_frames = job.samples.len() / mel::HOP_LENGTH;
        let mut padded = job.samples.clone();
        padded.extend(std::iter::repeat_n(0.0, WINDOW_SAMPLES));
        let mels = self.config.num_mel_bins;
        let mel = mel::log_mel_spectrogram(&padded, &self.filters, mels)?;
        let frames = mel.len() / mels;
        let mut window = vec![0f32; mels * WINDOW_FRAMES];
        let mut rng = StdRng::seed_from_u64(0);

        let mut language = job.language.clone();
        let mut previous: Vec<u32> = match &job.prompt {
            Some(p) if !p.trim().is_empty() => self
                .spec
                .tokenizer
                .encode(format!(" {}", p.trim()), false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let mut segments = Vec::new();
        let mut words = Vec::new();
        let mut seek = 0;
        while seek < content_frames {
            // This window's frames, zero-padded to 30 seconds.
            let take = WINDOW_FRAMES.min(frames - seek);
            for (c, row) in window.chunks_exact_mut(WINDOW_FRAMES).enumerate() {
                row[..take].copy_from_slice(&mel[c * frames + seek..][..take]);
                row[take..].fill(0.0);
            }
            let features = self.encoder.forward(&window, mels)?;
            if self.spec.multilingual && language.is_none() {
                language = Some(self.detect_language(&features)?);
            }
            let mut prefix = Vec::new();
            if !previous.is_empty() {
                prefix.push(s.start_of_prev);
                let keep = previous.len().saturating_sub(self.config.max_target_positions / 2 - 1);
                prefix.extend_from_slice(&previous[keep..]);
            }
            prefix.push(s.sot);
            if self.spec.multilingual {
                let code = language.as_deref().unwrap_or("en");
                let lang = s.languages.iter().find(|(c, _)| c == code).map(|l| l.1).unwrap_or(s.languages[0].1);
                prefix.push(lang);
                prefix.push(if job.task == Task::Translate { s.translate } else { s.transcribe });
            }
            let sample_begin = prefix.len();
            // Temperature fallback on repetitive or low-confidence windows.
            let mut result = None;
            for &t in TEMPERATURES.iter().filter(|&&t| t >= job.temperature) {
                let decoded = self.decode_window(&features, &prefix, sample_begin, t, &mut rng)?;
                let repetitive = decoded.compression_ratio > 2.4;
                let unsure = decoded.avg_logprob < -1.0;
                let silent = decoded.no_speech_prob > 0.6 && unsure;
                let last = t >= 1.0;
                if silent || (!repetitive && !unsure) || last {
                    result = Some((decoded, silent));
                    break;
                }
            }
            let (decoded, silent) = result.expect("the last temperature always yields");
            let window_frames = WINDOW_FRAMES.min(content_frames - seek);
            let offset = seek as f64 * mel::HOP_LENGTH as f64 / mel::SAMPLE_RATE as f64;
            if silent {
                seek += window_frames;
                continue;
            }
            let toks = &decoded.tokens;
            let window_first_segment = segments.len();
            let is_ts = |t: u32| t >= s.timestamp_begin;
            let single_ending = toks.len() >= 2 && !is_ts(toks[toks.len() - 2]) && is_ts(toks[toks.len() - 1]);
            let mut cuts: Vec<usize> = (1..toks.len()).filter(|&i| is_ts(toks[i - 1]) && is_ts(toks[i])).collect();
            let push = |segments: &mut Vec<Segment>, start: f64, end: f64, tokens: Vec<u32>, engine: &Self| {
                let text = engine.decode_text(&tokens);
                if text.trim().is_empty() {
                    return;
                }
                segments.push(Segment {
                    id: segments.len(),
                    seek,
                    start: (offset + start).min(duration),
                    end: (offset + end).min(duration),
                    text,
                    tokens,
                    temperature: decoded.temperature,
                    avg_logprob: decoded.avg_logprob,
                    compression_ratio: decoded.compression_ratio,
                    no_speech_prob: decoded.no_speech_prob,
                });
            };
            if !cuts.is_empty() {
                if single_ending {
                    cuts.push(toks.len());
                }
                let mut last = 0;
                for &cut in &cuts {
                    let slice = &toks[last..cut];
                    let start = (slice[0].saturating_sub(s.timestamp_begin)) as f64 * TIME_PRECISION;
                    let end = (slice[slice.len() - 1].saturating_sub(s.timestamp_begin)) as f64 * TIME_PRECISION;
                    push(&mut segments, start, end, slice.to_vec(), self);
                    last = cut;
                }
                if single_ending {
                    seek += window_frames;
                } else {
                    let last_ts = toks[last - 1].saturating_sub(s.timestamp_begin) as usize;
                    seek += (last_ts * FRAMES_PER_POSITION).max(1);
                }
            } else {
                let mut end = window_frames as f64 * mel::HOP_LENGTH as f64 / mel::SAMPLE_RATE as f64;
                if let Some(&t) = toks.iter().rev().find(|&&t| is_ts(t)) {
                    if t != s.timestamp_begin {
                        end = (t - s.timestamp_begin) as f64 * TIME_PRECISION;
                    }
                }
                push(&mut segments, 0.0, end, toks.clone(), self);
                seek += window_frames;
            }
            if job.words {
                let sot_index = prefix.iter().position(|&t| t == s.sot).unwrap_or(0);
                let timed = self.align_words(&features, &prefix[sot_index..], toks, window_frames, offset)?;
                place_words(timed, &segments[window_first_segment..], &mut words, s.eot);
            }
            previous.extend(toks.iter().copied().filter(|&t| t < s.eot || t >= s.timestamp_begin));
        }
        // Times never go backwards.
        let mut floor = 0.0;
        for seg in &mut segments {
            seg.start = seg.start.max(floor);
            seg.end = seg.end.max(seg.start);
            floor = seg.end;
        }
        let text = segments.iter().map(|s| s.text.as_str()).collect::<String>().trim().to_string();
        Ok(Transcript {
            language: language.unwrap_or_else(|| "en".into()),
            duration,
            task: job.task,
            segments,
            text,
            words,
        })
    }

    /// Times the words of a window's text tokens from the alignment heads' cross-attention; returns
    /// (word, token count, start, end) with absolute times.
    fn align_words(
        &self,
        features: &Tensor,
        sot_sequence: &[u32],
        tokens: &[u32],
        window_frames: usize,
        offset: f64,
    ) -> anyhow::Result<Vec<(String, usize, f64, f64)>> {
        let s = &self.spec.specials;
        let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < s.eot).collect();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut sequence = sot_sequence.to_vec();
        sequence.push(s.no_timestamps);
        sequence.extend_from_slice(&text);
        sequence.push(s.eot);
        let mut state = self.decoder.start(features)?;
        let mut captured = Vec::new();
        self.decoder.forward(&mut state, &sequence, Some(&mut captured))?;
        // Rows: <|notimestamps|> then each text token; columns: the audio positions of the content.
        let (first_row, rows) = (sot_sequence.len(), text.len() + 1);
        let cols = (window_frames / FRAMES_PER_POSITION).clamp(1, self.config.max_source_positions);
        let mut heads = Vec::new();
        for &(layer, head) in &self.alignment_heads {
            if let Some(w) = captured.get(layer) {
                heads.push(w.i(head)?.narrow(0, first_row, rows)?.narrow(1, 0, cols)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        let times = word_alignment::token_times(&heads, rows, cols);
        let mut out = Vec::new();
        let mut boundary = 0;
        for (word, count) in self.split_words(&text) {
            let start = times[boundary];
            let end = times[(boundary + count).min(rows - 1)];
            out.push((word, count, offset + start, offset + end.max(start)));
            boundary += count;
        }
        Ok(out)
    }

    /// Splits text tokens into words: a word starts with a space; punctuation joins the word before.
    fn split_words(&self, text: &[u32]) -> Vec<(String, usize)> {
        let mut words: Vec<(String, usize)> = Vec::new();
        let mut pending: Vec<u32> = Vec::new();
        for &t in text {
            pending.push(t);
            let piece = self.spec.tokenizer.decode(&pending, false).unwrap_or_default();
            if piece.contains('\u{FFFD}') {
                continue; // a character split across tokens
            }
            let n = std::mem::take(&mut pending).len();
            let trimmed = piece.trim();
            let punctuation = !trimmed.is_empty() && trimmed.chars().all(|c| !c.is_alphanumeric());
            match words.last_mut() {
                Some(last) if !piece.starts_with(' ') || punctuation => {
                    last.0.push_str(&piece);
                    last.1 += n;
                }
                _ => words.push((piece, n)),
            }
        }
        if !pending.is_empty() {
            match words.last_mut() {
                Some(last) => last.1 += pending.len(),
                None => words.push((String::new(), pending.len())),
            }
        }
        words.into_iter().map(|(w, n)| (w.trim().to_string(), n)).collect()
    }
}

/// Puts a window's timed words into its segments: each word belongs to the segment holding its first
/// token and is clamped to it; times never decrease.
fn place_words(timed: Vec<(String, usize, f64, f64)>, segments: &[Segment], words: &mut Vec<Word>, eot: u32) {
    let mut ends = Vec::new();
    let mut total = 0;
    for seg in segments {
        total += seg.tokens.iter().filter(|&&t| t < eot).count();
        ends.push(total);
    }
    let mut first_token = 0;
    for (word, count, start, end) in timed {
        let seg = ends.iter().position(|&e| e > first_token).and_then(|i| segments.get(i));
        first_token += count;
        let (Some(seg), false) = (seg, word.is_empty()) else { continue };
        let floor = words.last().map(|w: &Word| w.end).unwrap_or(0.0).max(seg.start);
        let start = start.clamp(floor.min(seg.end), seg.end);
        let end = end.clamp(start, seg.end);
        words.push(Word { word, start: round(start), end: round(end) });
    }
}

fn round(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

impl Engine for WhisperEngine {
    type Input = AudioJob;
    type Output = Transcript;

    fn infer(&mut self, batch: &[AudioJob]) -> Result<Vec<Transcript>, EngineError> {
        batch.iter().map(|job| self.transcribe(job).map_err(|e| EngineError::new(format!("{e:#}")))).collect()
    }

    fn warmup(&mut self, steps: usize, _batch_size: usize) -> Result<(), EngineError> {
        let job = AudioJob {
            samples: vec![0.0; mel::SAMPLE_RATE],
            task: Task::Transcribe,
            language: None,
            prompt: None,
            temperature: 0.0,
            words: false,
        };
        for _ in 0..steps.min(1) {
            self.transcribe(&job).map_err(|e| EngineError::new(format!("{e:#}")))?;
        }
        Ok(())
    }
}
