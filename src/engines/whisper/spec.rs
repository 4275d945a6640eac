//! What a Whisper model folder says before its weights load: shapes, special tokens, languages, the
//! tokens to suppress, alignment heads, and which kernels the model will run.

use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

use crate::config::roster::Precision;
use crate::engines::kernels::measure::Shape;
use crate::engines::kernels::{selection, DenseKernel, KernelError, Kernels};
use anyhow::Context;

/// A model's shapes, by their Hub `config.json` names (openai-whisper's names in the comments).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub(super) struct WhisperConfig {
    /// `n_mels`.
    pub(super) num_mel_bins: usize,
    /// `n_audio_ctx`.
    pub(super) max_source_positions: usize,
    /// `n_audio_state` (= `n_text_state`).
    pub(super) d_model: usize,
    /// `n_audio_head`.
    pub(super) encoder_attention_heads: usize,
    /// `n_audio_layer`.
    pub(super) encoder_layers: usize,
    /// `n_vocab`.
    pub(super) vocab_size: usize,
    /// `n_text_ctx`.
    pub(super) max_target_positions: usize,
    /// `n_text_head`.
    pub(super) decoder_attention_heads: usize,
    /// `n_text_layer`.
    pub(super) decoder_layers: usize,
}

/// Special tokens, looked up by their text in the tokenizer.
#[derive(Debug, Clone)]
pub(super) struct Specials {
    pub(super) sot: u32,
    pub(super) eot: u32,
    pub(super) transcribe: u32,
    pub(super) translate: u32,
    pub(super) no_timestamps: u32,
    pub(super) start_of_prev: u32,
    pub(super) no_speech: Option<u32>,
    pub(super) timestamp_begin: u32,
    pub(super) languages: Vec<(String, u32)>,
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
    /// The device it runs on (the CPU kernels run on the CPU only; a GPU runs candle's ops).
    pub device: crate::engines::device::DeviceName,
    pub(super) suppress: Vec<u32>,
    pub(super) suppress_begin: Vec<u32>,
    pub(super) specials: Specials,
    /// The model's width (`d_model`), for timing kernels on its shapes before it loads.
    pub(super) width: usize,
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
        let ct2 = dir.join("model.bin");
        let width = match config["d_model"].as_u64() {
            Some(width) => width as usize,
            None if ct2.is_file() => {
                let dims = super::ct2::dims_of(&ct2, "encoder/conv1/weight")?;
                *dims.first().context("encoder/conv1/weight has no dimensions")?
            }
            None => anyhow::bail!("config.json has no d_model"),
        };
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
            device: Default::default(),
            suppress,
            suppress_begin,
            specials,
            width,
        })
    }

    /// The kernels this model runs: the operator's selection and the model's precision.
    pub(super) fn resolve(&self) -> Result<Kernels, KernelError> {
        if !self.device.is_cpu() {
            return Ok(Kernels::REFERENCE);
        }
        selection()?.for_model(self.precision, true, &self.shapes())
    }

    /// The products that dominate a transcription, `(rows, out, in)`: the encoder's over a 30-second
    /// window (1500 positions; QKV, feed-forward in and out) and a decoder step's feed-forward.
    fn shapes(&self) -> Vec<Shape> {
        let w = self.width;
        vec![(1500, 3 * w, w), (1500, 4 * w, w), (1500, w, 4 * w), (4, 4 * w, w)]
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
/// width is a multiple of 32, so the output projection takes the int8 kernel whenever the kernel is
/// selected and the model's precision allows rounding (not `f32`). Where the dense kernel is sis's f32
/// GEMM, the decoder's cross-attention runs on it.
pub(super) fn report(kernels: Kernels) -> Vec<String> {
    let products = if kernels.simd.is_some() { kernels.dense() } else { "reference" };
    let projection = if kernels.exact { "reference" } else { kernels.quantized() };
    vec![
        format!("dense: {}", kernels.dense_report()),
        format!("attention (encoder): {products}"),
        format!("gelu (encoder): {}", kernels.loops()),
        format!(
            "attention (decoder): {}",
            if matches!(kernels.dense, DenseKernel::Fma(_)) { kernels.dense() } else { "reference" }
        ),
        format!("output projection: {projection}"),
    ]
}

/// The model's alignment heads (CTranslate2 config.json `alignment_heads`, Hub generation_config.json),
/// else openai-whisper's default: every head of the second half of the decoder layers.
pub(super) fn alignment_heads(dir: &Path, config: &WhisperConfig) -> Vec<(usize, usize)> {
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
