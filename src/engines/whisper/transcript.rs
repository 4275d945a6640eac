//! The types the request path and the engine exchange: a job, and the transcript it gives.

use serde::Serialize;
use sis_actors::BatchItem;

use super::mel;

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
    /// How each window is searched.
    pub search: Search,
}

/// How a window's text is searched for, as faster-whisper and openai-whisper name it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Search {
    /// Sequences a beam search keeps at temperature 0 (1: greedy).
    pub beam_size: usize,
    /// Finished sequences a beam search waits for, as a multiple of `beam_size`.
    pub patience: f64,
    /// Samples drawn at each temperature above 0; the likeliest wins.
    pub best_of: usize,
}

impl Search {
    /// Greedy at temperature 0, one sample above it.
    pub const GREEDY: Search = Search { beam_size: 1, patience: 1.0, best_of: 1 };
    /// Most sequences a request may ask for (each one is decoded beside the others).
    pub const MAX_WIDTH: usize = 10;

    /// Whether `width` is a beam width or sample count sis accepts (1 to [`Self::MAX_WIDTH`]).
    pub fn valid_width(width: usize) -> bool {
        (1..=Self::MAX_WIDTH).contains(&width)
    }
}

impl AudioJob {
    /// A plain transcription of `samples`: English, no prompt, greedy, no word timings (warmup and
    /// benchmarks).
    pub fn greedy(samples: Vec<f32>) -> AudioJob {
        AudioJob {
            samples,
            task: Task::Transcribe,
            language: None,
            prompt: None,
            temperature: 0.0,
            words: false,
            search: Search::GREEDY,
        }
    }
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
