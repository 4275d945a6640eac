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

use candle_nn::VarBuilder;
use sis_actors::{Engine, EngineError, EngineLoader};
use std::sync::{Arc, Mutex, Weak};

use crate::engines::kernels::Pool;

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

/// A loaded Whisper model: weights, decoding policy and the threads its transcriptions run on,
/// shared by the model's workers.
struct WhisperModel {
    pool: Pool,
    encoder: AudioEncoder,
    decoder: TextDecoder,
    spec: WhisperSpec,
    filters: Vec<f32>,
    config: WhisperConfig,
    /// (layer, head) pairs whose cross-attention follows the audio (for word timestamps).
    alignment_heads: Vec<(usize, usize)>,
    /// The device memory the model holds (nothing on the CPU), given back when it drops.
    _memory: crate::engines::device::Reservation,
}

/// One worker's engine: the shared model.
///
/// A model's workers (`AUDIO_MAX_CONCURRENT`) share one copy of the weights and one pool with a thread
/// per core. Each transcription runs on a worker of the pool and forks its products inside it, so with
/// one transcription running its products use every core, and with several each mostly keeps to its own
/// thread: a decode step's small products then cost no fork and join across cores, and a thread whose
/// transcription is done takes work from the others.
pub struct WhisperEngine {
    model: Arc<WhisperModel>,
}

impl WhisperEngine {
    /// Transcribes (or translates) a whole recording.
    pub fn transcribe(&self, job: &AudioJob) -> anyhow::Result<Transcript> {
        self.model.pool.run(|| self.model.transcribe_in_pool(job))
    }
}

/// Loads Whisper on the model actor's thread; every worker of a model gets the same weights.
pub struct WhisperLoader {
    spec: WhisperSpec,
    /// What the workers share while any of them holds it; the lock also makes a second worker wait
    /// for the first one's load instead of loading the weights again.
    shared: Mutex<Weak<WhisperModel>>,
}

impl WhisperLoader {
    /// A loader of the model `spec` describes.
    pub fn new(spec: WhisperSpec) -> Self {
        Self { spec, shared: Mutex::new(Weak::new()) }
    }

    /// Which implementation each hot operation runs for this model (see [`WhisperSpec::kernels`]).
    pub fn kernels(&self) -> Vec<String> {
        self.spec.kernels()
    }
}

impl EngineLoader for WhisperLoader {
    type Engine = WhisperEngine;

    fn load(&self) -> Result<WhisperEngine, EngineError> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let model = match shared.upgrade() {
            Some(model) => model,
            None => {
                let model = Arc::new(load(&self.spec).map_err(crate::engines::load_error)?);
                *shared = Arc::downgrade(&model);
                model
            }
        };
        Ok(WhisperEngine { model })
    }
}

fn load(spec: &WhisperSpec) -> anyhow::Result<WhisperModel> {
    // f32 on every device: Whisper's encoder is small enough that precision costs more than it saves.
    let device = crate::engines::device::open(spec.device)?;
    let loading = crate::engines::device::Loading::start(&device, crate::engines::device::weight_bytes(&spec.dir))?;
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
    Ok(WhisperModel {
        pool: Pool::new("whisper")?,
        encoder,
        decoder,
        spec: spec.clone(),
        filters: mel::filterbank(config.num_mel_bins),
        config,
        alignment_heads,
        _memory: loading.finish(),
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
