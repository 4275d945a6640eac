//! The text-encoder engine: tokenizer, encoder, then either pooling and normalization as the model's
//! sentence-transformers files define them (embeddings), or a cross-encoder's classification head
//! scoring a (query, document) pair (rerank).

pub mod bert;
pub mod cross_encoder;
pub mod gemma;
pub mod nomic;
pub mod st_dense;

use candle_core::Device;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::config::roster::{ModelEntry, Pooling, Precision};
use crate::engines::chat::llama::config::LlamaConfig;
use crate::engines::chat::llama::{Llama, StepInput};
use crate::engines::kernels::measure::Shape;
use crate::engines::kernels::{selection, KernelError, Kernels};
use crate::engines::nn::attention::Packing;
use bert::{BertConfig, BertModel};
use gemma::{GemmaConfig, GemmaEncoder};
use nomic::{NomicConfig, NomicEncoder};
use sis_actors::{BatchItem, Engine, EngineError, EngineLoader};
use st_dense::StDense;

/// The encoder a checkpoint's `config.json` describes.
#[derive(Debug, Clone)]
pub enum EncoderConfig {
    /// BERT, RoBERTa, XLM-RoBERTa, MPNet ([`bert`]).
    Bert(BertConfig),
    /// Gemma 3 with bidirectional attention, EmbeddingGemma ([`gemma`]).
    Gemma(GemmaConfig),
    /// A decoder (qwen3, qwen2, llama) embedding with its last token's state, Qwen3-Embedding: the
    /// chat engine's model ([`crate::engines::chat::llama`]) run over each text.
    Decoder(LlamaConfig, Vec<String>),
    /// nomic-bert from a GGUF file (nomic-embed-text), its tokenizer from the same file ([`nomic`]).
    Nomic(NomicConfig, PathBuf),
}

impl EncoderConfig {
    /// Reads a GGUF embedding model's metadata (nomic-bert).
    pub fn read_gguf(path: &Path) -> anyhow::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{} is not a GGUF file: {e}", path.display()))?;
        let architecture = content.metadata.get("general.architecture").map(|v| v.to_string()).transpose()?;
        match architecture.map(String::as_str) {
            Some("nomic-bert") => Ok(Self::Nomic(NomicConfig::from_gguf(&content)?, path.to_path_buf())),
            other => anyhow::bail!(
                "GGUF embedding architecture {other:?} is not supported (nomic-bert is); serve the model's \
                 safetensors repo instead"
            ),
        }
    }

    /// Reads `config.json`; an architecture sis cannot run as an encoder fails here, naming it.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        match json["model_type"].as_str() {
            Some("gemma3_text" | "gemma3") => {
                let config: GemmaConfig = serde_json::from_value(json)?;
                if !config.use_bidirectional_attention {
                    anyhow::bail!(
                        "{:?} is a causal Gemma 3 (a chat model); sis embeds with bidirectional Gemma 3 (EmbeddingGemma)",
                        config.architectures
                    );
                }
                Ok(Self::Gemma(config))
            }
            Some("qwen3" | "qwen2" | "llama" | "mistral") => {
                let architectures = serde_json::from_value(json["architectures"].clone()).unwrap_or_default();
                Ok(Self::Decoder(LlamaConfig::from_hub_config(path)?, architectures))
            }
            _ => {
                let config: BertConfig = serde_json::from_str(&text)?;
                config.family()?;
                Ok(Self::Bert(config))
            }
        }
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Bert(c) => c.hidden_size,
            Self::Gemma(c) => c.hidden_size,
            Self::Decoder(c, _) => c.hidden,
            Self::Nomic(c, _) => c.hidden,
        }
    }

    /// Width of the feed-forward layers.
    pub fn intermediate_size(&self) -> usize {
        match self {
            Self::Bert(c) => c.intermediate_size,
            Self::Gemma(c) => c.intermediate_size,
            Self::Decoder(c, _) => c.ffn,
            Self::Nomic(c, _) => c.ffn,
        }
    }

    /// Longest sequence the positions allow.
    pub fn max_tokens(&self) -> usize {
        match self {
            Self::Bert(c) => c.max_tokens(),
            Self::Gemma(c) => c.max_position_embeddings,
            Self::Decoder(c, _) => c.context,
            Self::Nomic(c, _) => c.context,
        }
    }

    /// The checkpoint's classes.
    pub fn architectures(&self) -> &[String] {
        match self {
            Self::Bert(c) => &c.architectures,
            Self::Gemma(c) => &c.architectures,
            Self::Decoder(_, architectures) => architectures,
            Self::Nomic(..) => &[],
        }
    }
}

/// A loaded encoder of either family.
enum Encoder {
    Bert(BertModel),
    Gemma(GemmaEncoder),
    Decoder(Llama),
    Nomic(NomicEncoder),
}

impl Encoder {
    fn forward(
        &self,
        ids: &[u32],
        types: Option<&[u32]>,
        packing: &Packing,
    ) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Encoder::Bert(m) => m.forward(ids, types, packing),
            Encoder::Gemma(m) => m.forward(ids, packing),
            Encoder::Nomic(m) => m.forward(ids, packing),
            Encoder::Decoder(_) => unreachable!("decoders embed through last_states"),
        }
    }

    /// A decoder's final state of each sequence's last token: each sequence runs causally over a
    /// cache of its own, all in one packed step.
    fn last_states(model: &Llama, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let mut caches: Vec<_> = batch.iter().map(|_| model.new_cache()).collect();
        let mut inputs: Vec<StepInput<'_>> =
            caches.iter_mut().zip(batch).map(|(cache, ids)| StepInput::text(cache, ids, true).prompt()).collect();
        model.last_hidden(&mut inputs)
    }

    fn hidden_size(&self) -> usize {
        match self {
            Encoder::Bert(m) => m.hidden_size(),
            Encoder::Gemma(m) => m.hidden_size(),
            Encoder::Decoder(m) => m.config.hidden,
            Encoder::Nomic(m) => m.hidden_size(),
        }
    }

    fn vocab_size(&self) -> usize {
        match self {
            Encoder::Bert(m) => m.config.vocab_size,
            Encoder::Gemma(m) => m.config.vocab_size,
            Encoder::Decoder(m) => m.config.vocab,
            Encoder::Nomic(m) => m.config.vocab,
        }
    }
}

/// Everything needed to build the engine, read once from the model folder.
#[derive(Debug, Clone)]
pub struct EmbedderSpec {
    /// Model folder.
    pub dir: PathBuf,
    /// Encoder config.
    pub config: EncoderConfig,
    /// sentence-transformers `Dense` modules applied after pooling, in order (their folders).
    pub dense: Vec<PathBuf>,
    /// The model's named prompts (`config_sentence_transformers.json`: EmbeddingGemma's tasks,
    /// Qwen3-Embedding's query instruction), prefixed to the texts a request names them for.
    pub prompts: Prompts,
    /// Pooling.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalized.
    pub normalize: bool,
    /// Truncation length in tokens (special tokens included).
    pub max_tokens: usize,
    /// Output dimension.
    pub dimensions: usize,
    /// The device to load on.
    pub device: crate::engines::device::DeviceName,
    /// Dense-layer arithmetic.
    pub precision: Precision,
    /// Whether the checkpoint is a cross-encoder (`…ForSequenceClassification`): it scores pairs
    /// with its classification head instead of pooling vectors.
    pub cross_encoder: bool,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// A model's named prompts and the one used when a request names none.
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    /// Prompt name → the text prefixed to inputs.
    pub named: std::collections::BTreeMap<String, String>,
    /// The prompt of requests that name none (`default_prompt_name`).
    pub default: Option<String>,
}

#[derive(Deserialize, Default)]
struct StPrompts {
    #[serde(default)]
    prompts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    default_prompt_name: Option<String>,
}

impl Prompts {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let file = dir.join("config_sentence_transformers.json");
        let st: StPrompts = match file.is_file() {
            true => serde_json::from_str(&std::fs::read_to_string(file)?)?,
            false => StPrompts::default(),
        };
        let default = st.default_prompt_name.and_then(|name| st.prompts.get(&name).cloned());
        Ok(Self { named: st.prompts, default })
    }

    /// The prefix for a request's `prompt_name` (a name of the model's prompts) or `input_type`
    /// (`query`, `document`, and Cohere's and NVIDIA's spellings of them); the default without either.
    pub fn prefix(&self, name: Option<&str>) -> Result<Option<&str>, String> {
        let Some(name) = name else {
            return Ok(self.default.as_deref());
        };
        let canonical = match name {
            "search_query" => "query",
            "search_document" | "passage" => "document",
            other => other,
        };
        match self.named.get(canonical) {
            Some(prompt) => Ok(Some(prompt.as_str())),
            None if self.named.is_empty() => Err(format!("this model has no prompts; leave out {name:?}")),
            None => Err(format!("unknown prompt {name:?}; this model has {:?}", self.named.keys().collect::<Vec<_>>())),
        }
    }
}

#[derive(Deserialize)]
struct StConfig {
    max_seq_length: Option<usize>,
}

impl EmbedderSpec {
    /// Reads config.json and the sentence-transformers files; roster values override them.
    pub fn from_dir(
        dir: &Path,
        entry: &ModelEntry,
        device: crate::engines::device::DeviceName,
    ) -> anyhow::Result<Self> {
        // An architecture the encoder cannot run fails here, at start, naming it.
        let config = match &entry.file {
            Some(file) => EncoderConfig::read_gguf(&dir.join(file))?,
            None => EncoderConfig::read(&dir.join("config.json"))?,
        };
        let pooling_file = dir.join("1_Pooling/config.json");
        let file_pooling = if pooling_file.is_file() {
            let p: PoolingConfig = serde_json::from_str(&std::fs::read_to_string(pooling_file)?)?;
            if p.pooling_mode_cls_token {
                Some(Pooling::Cls)
            } else if p.pooling_mode_lasttoken {
                Some(Pooling::LastToken)
            } else if p.pooling_mode_mean_tokens {
                Some(Pooling::Mean)
            } else {
                None
            }
        } else {
            None
        };
        let modules_file = dir.join("modules.json");
        let modules: Vec<StModule> = match modules_file.is_file() {
            true => serde_json::from_str(&std::fs::read_to_string(&modules_file)?)?,
            false => Vec::new(),
        };
        let file_normalize = modules_file.is_file().then(|| modules.iter().any(|m| m.kind.ends_with(".Normalize")));
        let dense: Vec<PathBuf> =
            modules.iter().filter(|m| m.kind.ends_with(".Dense")).map(|m| dir.join(&m.path)).collect();
        let dimensions = match dense.last() {
            Some(last) => StDense::out_features(last)?,
            None => config.hidden_size(),
        };
        let st_file = dir.join("sentence_bert_config.json");
        let st_max = if st_file.is_file() {
            serde_json::from_str::<StConfig>(&std::fs::read_to_string(st_file)?)?.max_seq_length
        } else {
            None
        };
        let limit = config.max_tokens();
        let max_tokens = entry.max_seq_length.or(st_max).unwrap_or(limit).min(limit);
        let cross_encoder = config.architectures().iter().any(|a| a.ends_with("ForSequenceClassification"));
        let gguf_pooling = match &config {
            EncoderConfig::Nomic(c, _) => c.pooling,
            _ => None,
        };
        let pooling = entry.pooling.or(file_pooling).or(gguf_pooling).unwrap_or(Pooling::Mean);
        if matches!(config, EncoderConfig::Decoder(..)) && pooling != Pooling::LastToken {
            anyhow::bail!(
                "decoder embeddings ({:?}) pool with the last token; this model asks for {pooling:?}",
                config.architectures()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            dimensions,
            config,
            dense,
            prompts: Prompts::read(dir)?,
            pooling,
            normalize: entry.normalize.or(file_normalize).unwrap_or(true),
            max_tokens,
            device,
            precision: entry.precision.unwrap_or_default(),
            cross_encoder,
        })
    }

    /// The kernels this model runs on a device (`cpu`: the CPU): the operator's selection and the
    /// model's precision.
    fn resolve(&self, cpu: bool) -> Result<Kernels, KernelError> {
        selection()?.for_model(self.precision, cpu, &self.shapes())
    }

    /// The products of a typical batch (256 tokens), `(rows, out, in)`: QKV, feed-forward in and out.
    fn shapes(&self) -> Vec<Shape> {
        let (h, i) = (self.config.hidden_size(), self.config.intermediate_size());
        vec![(256, 3 * h, h), (256, i, h), (256, h, i)]
    }

    /// Which implementation each hot operation runs for this model on this machine (`"dense:
    /// bf16-avx512"`, `"attention: avx2 loops below 64 tokens, reference from 64"`, …); one `error: …`
    /// line where the model cannot load with the selected kernels.
    pub fn kernels(&self) -> Vec<String> {
        match self.resolve(self.device.is_cpu()) {
            Ok(kernels) => self.report(kernels),
            Err(e) => vec![format!("error: {e}")],
        }
    }

    fn report(&self, kernels: Kernels) -> Vec<String> {
        let (attention, activation) = match &self.config {
            EncoderConfig::Bert(c) => {
                let attention = crate::engines::nn::attention::describe(kernels);
                match c.hidden_act.as_str() {
                    "gelu" => (attention, format!("gelu: {}", kernels.loops())),
                    other => (attention, format!("{other}: reference")),
                }
            }
            EncoderConfig::Gemma(_) => ("reference".into(), "gelu_pytorch_tanh: reference".into()),
            EncoderConfig::Nomic(..) => ("reference".into(), "silu: reference".into()),
            EncoderConfig::Decoder(..) => {
                return vec!["decoder: the chat engine's (attention loops, products on candle's f32)".into()]
            }
        };
        vec![format!("dense: {}", kernels.dense_report()), format!("attention: {attention}"), activation]
    }

    /// Loads the tokenizer with truncation at the model's limit and no padding (the engine packs).
    pub fn tokenizer(&self) -> anyhow::Result<EmbeddingTokenizer> {
        let mut tokenizer = match &self.config {
            EncoderConfig::Nomic(_, gguf) => {
                let mut file = std::fs::File::open(gguf)?;
                let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
                crate::engines::chat::gguf_tokenizer::from_gguf(&content)?
            }
            _ => Tokenizer::from_file(self.dir.join("tokenizer.json")).map_err(anyhow::Error::msg)?,
        };
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: self.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(anyhow::Error::msg)?;
        Ok(EmbeddingTokenizer { tokenizer })
    }
}

/// The encoder's weights in a model folder: `model.safetensors`, else the `pytorch_model.bin` that older
/// repos ship.
pub fn weights_file(dir: &Path) -> PathBuf {
    let safetensors = dir.join("model.safetensors");
    if safetensors.is_file() {
        safetensors
    } else {
        dir.join("pytorch_model.bin")
    }
}

/// The model's tokenizer, shared by HTTP workers so tokenization runs beside inference, not in it.
#[derive(Clone)]
pub struct EmbeddingTokenizer {
    tokenizer: Tokenizer,
}

impl EmbeddingTokenizer {
    /// Token ids of a text, with special tokens, truncated to the model's limit.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer.encode(text, true).map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }

    /// A cross-encoder's input: the pair as the model's template joins it (`[CLS] q [SEP] d [SEP]`,
    /// `<s> q </s></s> d </s>`), the longer side truncated first; returns the ids and where the
    /// second segment (token type 1) starts.
    pub fn encode_pair(&self, first: &str, second: &str) -> Result<(Vec<u32>, usize), String> {
        let encoding = self.tokenizer.encode((first, second), true).map_err(|e| e.to_string())?;
        let types = encoding.get_type_ids();
        let segment_b = types.iter().position(|&t| t != 0).unwrap_or(types.len());
        Ok((encoding.get_ids().to_vec(), segment_b))
    }
}

/// One text (or text pair) to encode.
#[derive(Debug)]
pub struct EmbedInput {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Where the second segment of a pair starts (its tokens have token type 1); `ids.len()` for a
    /// single text.
    pub segment_b: usize,
    /// Test hook: the engine panics on this input (set only by fault-injection builds).
    pub fault: bool,
}

impl EmbedInput {
    /// A single text's ids.
    pub fn text(ids: Vec<u32>, fault: bool) -> Self {
        Self { segment_b: ids.len(), ids, fault }
    }
}

impl BatchItem for EmbedInput {
    fn cost(&self) -> usize {
        self.ids.len()
    }
}

/// A loaded encoder engine.
pub struct Embedder {
    model: Encoder,
    /// sentence-transformers `Dense` modules after pooling.
    dense: Vec<StDense>,
    /// The threads its forward passes run on.
    pool: crate::engines::kernels::Pool,
    pooling: Pooling,
    normalize: bool,
    /// A cross-encoder's head: each output is then the pair's one relevance logit.
    head: Option<cross_encoder::ClassifierHead>,
    ids: Vec<u32>,
    types: Vec<u32>,
    /// The device memory the model holds (nothing on the CPU), given back when it drops.
    _memory: crate::engines::device::Reservation,
}

impl Embedder {
    /// Embeds token sequences; one unit vector (if normalizing) per sequence.
    pub fn embed(&mut self, batch: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        let segments: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        self.encode(batch, &segments)
    }

    /// Runs the encoder on packed sequences (`segments[i]`: where sequence `i`'s token type 1 starts),
    /// then pools, or scores with the classification head.
    fn encode(&mut self, batch: &[&[u32]], segments: &[usize]) -> anyhow::Result<Vec<Vec<f32>>> {
        if let Encoder::Decoder(model) = &self.model {
            // The decoder runs its steps on its own threads.
            let states = Encoder::last_states(model, batch)?;
            return states.into_iter().map(|v| self.finish(v)).collect();
        }
        // Token types only for text pairs (rerank); single texts are type 0 throughout.
        let pairs = segments.iter().zip(batch).any(|(&b, s)| b < s.len());
        self.ids.clear();
        self.types.clear();
        for (seq, &b) in batch.iter().zip(segments) {
            self.ids.extend_from_slice(seq);
            if pairs {
                self.types.extend((0..seq.len()).map(|t| u32::from(t >= b)));
            }
        }
        let packing = Packing::new(batch.iter().map(|s| s.len()));
        let (model, ids, types) = (&self.model, &self.ids, pairs.then_some(self.types.as_slice()));
        let hidden = self.pool.run(|| model.forward(ids, types, &packing))?;
        if let Some(head) = &self.head {
            let first: Vec<u32> = packing.spans.iter().map(|&(start, _)| start as u32).collect();
            let first = candle_core::Tensor::from_vec(first, packing.spans.len(), hidden.device())?;
            let scores = head.forward(&hidden.index_select(&first, 0)?)?.to_device(&Device::Cpu)?;
            return Ok(scores.to_vec1::<f32>()?.into_iter().map(|s| vec![s]).collect());
        }
        let hidden = hidden.to_device(&Device::Cpu)?;
        let width = self.model.hidden_size();
        let states = hidden.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(batch.len());
        for &(start, len) in &packing.spans {
            let rows = &states[start * width..(start + len) * width];
            let v = match self.pooling {
                Pooling::Cls => rows[..width].to_vec(),
                Pooling::LastToken => rows[(len - 1) * width..].to_vec(),
                Pooling::Mean => {
                    let mut sum = vec![0f32; width];
                    for row in rows.chunks_exact(width) {
                        for (s, x) in sum.iter_mut().zip(row) {
                            *s += x;
                        }
                    }
                    let inv = 1.0 / len as f32;
                    sum.iter_mut().for_each(|s| *s *= inv);
                    sum
                }
            };
            out.push(self.finish(v)?);
        }
        Ok(out)
    }
}

impl Embedder {
    /// A pooled vector through the sentence-transformers Dense modules, then normalized if the model is.
    fn finish(&self, mut v: Vec<f32>) -> anyhow::Result<Vec<f32>> {
        for module in &self.dense {
            v = module.forward(&v)?;
        }
        if self.normalize {
            normalize(&mut v);
        }
        Ok(v)
    }
}

/// Scales a vector to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        let inv = 1.0 / norm;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

impl Engine for Embedder {
    type Input = EmbedInput;
    type Output = Vec<f32>;

    fn infer(&mut self, batch: &[EmbedInput]) -> Result<Vec<Vec<f32>>, EngineError> {
        if batch.iter().any(|i| i.fault) {
            panic!("fault injection: panic requested by the test hook");
        }
        if let Some(empty) = batch.iter().position(|i| i.ids.is_empty()) {
            return Err(EngineError::new(format!("input {empty} has no tokens")));
        }
        let seqs: Vec<&[u32]> = batch.iter().map(|i| i.ids.as_slice()).collect();
        let segments: Vec<usize> = batch.iter().map(|i| i.segment_b).collect();
        self.encode(&seqs, &segments).map_err(EngineError::new)
    }

    fn warmup(&mut self, steps: usize, batch_size: usize) -> Result<(), EngineError> {
        let vocab = self.model.vocab_size() as u32;
        let seqs: Vec<Vec<u32>> =
            (0..batch_size).map(|i| (0..16 + (i * 7) % 48).map(|t| (1000 + t as u32 * 13) % vocab).collect()).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        for _ in 0..steps {
            self.embed(&refs).map_err(EngineError::new)?;
        }
        Ok(())
    }
}

/// Builds [`Embedder`]s from a spec on the model actor's thread.
pub struct EmbedderLoader {
    /// What to load.
    pub spec: EmbedderSpec,
}

impl EmbedderLoader {
    /// Which implementation each hot operation runs for this model (see [`EmbedderSpec::kernels`]).
    pub fn kernels(&self) -> Vec<String> {
        self.spec.kernels()
    }
}

impl EngineLoader for EmbedderLoader {
    type Engine = Embedder;

    fn load(&self) -> Result<Embedder, EngineError> {
        let device = crate::engines::device::open(self.spec.device).map_err(EngineError::new)?;
        let kernels = self.spec.resolve(matches!(device, Device::Cpu)).map_err(EngineError::new)?;
        tracing::info!(dir = %self.spec.dir.display(), kernels = %self.spec.report(kernels).join("; "), "encoder kernels");
        let weights = weights_file(&self.spec.dir);
        let load = crate::engines::load_error;
        let loading = crate::engines::device::Loading::start(&device, crate::engines::device::weight_bytes(&weights))
            .map_err(EngineError::permanent)?;
        let (model, head) = match &self.spec.config {
            EncoderConfig::Bert(config) => {
                let model = BertModel::load(&weights, config.clone(), &device, kernels).map_err(load)?;
                let head = match self.spec.cross_encoder {
                    true => Some(cross_encoder::ClassifierHead::load(&weights, config, &device).map_err(load)?),
                    false => None,
                };
                (Encoder::Bert(model), head)
            }
            EncoderConfig::Gemma(config) => {
                if self.spec.cross_encoder {
                    return Err(EngineError::permanent("Gemma cross-encoders are not supported"));
                }
                (Encoder::Gemma(GemmaEncoder::load(&weights, config.clone(), &device, kernels).map_err(load)?), None)
            }
            EncoderConfig::Nomic(config, gguf) => {
                (Encoder::Nomic(NomicEncoder::load(gguf, config.clone(), &device, kernels).map_err(load)?), None)
            }
            EncoderConfig::Decoder(..) => {
                if self.spec.cross_encoder {
                    return Err(EngineError::permanent("decoder embeddings run without a classifier"));
                }
                (Encoder::Decoder(Llama::from_safetensors(&self.spec.dir, kernels, &device).map_err(load)?), None)
            }
        };
        let dense =
            self.spec.dense.iter().map(|dir| StDense::load(dir)).collect::<anyhow::Result<_>>().map_err(load)?;
        let pool = crate::engines::kernels::Pool::new("embed").map_err(EngineError::new)?;
        Ok(Embedder {
            model,
            dense,
            pool,
            pooling: self.spec.pooling,
            normalize: self.spec.normalize,
            head,
            ids: Vec::new(),
            types: Vec::new(),
            _memory: loading.finish(),
        })
    }
}
