//! Speech to text with Whisper: our [`encoder`] and [`decoder`] fed with weights from a CTranslate2
//! model.bin (faster-whisper folders, [`ct2`]) or Hub safetensors; the folder's description
//! ([`WhisperSpec`]); loading ([`WhisperLoader`]); openai-whisper's decoding policy (`decode`); and the
//! job and transcript types the request path exchanges with the engine.

pub mod ct2;
mod decode;
pub mod decoder;
pub mod encoder;
pub mod mel;
mod spec;
mod transcript;
pub mod word_alignment;

pub use spec::WhisperSpec;
pub use transcript::{AudioJob, Search, Segment, Task, Transcript, Word};

use candle_core::Device;
use candle_nn::VarBuilder;
use sis_actors::{Engine, EngineError, EngineLoader};

use decoder::TextDecoder;
use encoder::AudioEncoder;
use spec::{alignment_heads, report, WhisperConfig};

/// Frames of one 30-second window.
const WINDOW_FRAMES: usize = 3000;
/// Samples of one 30-second window.
const WINDOW_SAMPLES: usize = WINDOW_FRAMES * mel::HOP_LENGTH;
/// Seconds per timestamp step.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per encoder position.
const FRAMES_PER_POSITION: usize = 2;
const TEMPERATURES: [f64; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];

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

impl Engine for WhisperEngine {
    type Input = AudioJob;
    type Output = Transcript;

    fn infer(&mut self, batch: &[AudioJob]) -> Result<Vec<Transcript>, EngineError> {
        batch.iter().map(|job| self.transcribe(job).map_err(|e| EngineError::new(format!("{e:#}")))).collect()
    }

    fn warmup(&mut self, steps: usize, _batch_size: usize) -> Result<(), EngineError> {
        let job = AudioJob::greedy(vec![0.0; mel::SAMPLE_RATE]);
        for _ in 0..steps.min(1) {
            self.transcribe(&job).map_err(|e| EngineError::new(format!("{e:#}")))?;
        }
        Ok(())
    }
}
