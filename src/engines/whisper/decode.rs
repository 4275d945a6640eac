//! openai-whisper's decoding policy: timestamp rules, window-by-window seeking on long audio with the
//! previous text as prompt, temperature fallback on repetitive or low-confidence output, language
//! detection, and word timings from the alignment heads.

use crate::engines::kernels::elementwise;
use crate::engines::nn::ranking::top;
use candle_core::{IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

use super::*;

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

/// One sequence of a search: its sampled tokens and their summed log-probability.
#[derive(Clone, Default)]
struct Hypothesis {
    tokens: Vec<u32>,
    sum_logprob: f64,
}

impl Hypothesis {
    /// This sequence with `token` appended (none for the end of text) and a new score.
    fn extended(&self, token: Option<u32>, sum_logprob: f64) -> Hypothesis {
        let mut tokens = self.tokens.clone();
        tokens.extend(token);
        Hypothesis { tokens, sum_logprob }
    }

    /// The score sequences are ranked by: log-probability over length (faster-whisper's
    /// `length_penalty=1`, openai-whisper's default).
    fn ranking(&self) -> f64 {
        self.sum_logprob / self.tokens.len().max(1) as f64
    }
}

/// Log-softmax in f64 (masked entries are −∞).
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&l| l as f64 - log_sum).collect()
}

/// Draws a token from `logits / temperature`; none when every token is masked.
fn sample(logits: &[f32], temperature: f64, rng: &mut StdRng) -> Option<u32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        return None;
    }
    let weights: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / temperature).exp()).collect();
    let mut r = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        r -= w;
        if r <= 0.0 && *w > 0.0 {
            return Some(i as u32);
        }
    }
    weights.iter().rposition(|&w| w > 0.0).map(|i| i as u32)
}

impl WhisperModel {
    fn decode_text(&self, tokens: &[u32]) -> String {
        let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < self.spec.specials.eot).collect();
        self.spec.tokenizer.decode(&text, true).unwrap_or_default()
    }

    fn detect_language(&self, features: &Tensor) -> candle_core::Result<String> {
        let s = &self.spec.specials;
        let mut state = self.decoder.start(features)?;
        let hidden = self.decoder.forward(&mut state, &[s.sot], None)?;
        let logits = self.decoder.logits(&hidden.i(0..1)?)?;
        let best = s.languages.iter().max_by(|a, b| logits[a.1 as usize].total_cmp(&logits[b.1 as usize]));
        Ok(best.map(|(c, _)| c.clone()).unwrap_or_else(|| "en".into()))
    }

    /// Decodes one window with openai-whisper's timestamp rules: at temperature 0 a beam search of
    /// `search.beam_size` sequences (1 is greedy), above it `search.best_of` samples drawn side by side;
    /// either way the finished sequence with the best length-normalized log-probability wins.
    fn decode_window(
        &self,
        features: &Tensor,
        prefix: &[u32],
        temperature: f64,
        search: Search,
        rng: &mut StdRng,
    ) -> candle_core::Result<Decoded> {
        let s = self.spec.specials.clone();
        let vocab = self.config.vocab_size;
        let sot_index = prefix.iter().position(|&t| t == s.sot).unwrap_or(0);
        let max_new = (self.config.max_target_positions / 2).min(self.config.max_target_positions - prefix.len());
        let beam = temperature <= 0.0;
        let width = if beam { search.beam_size } else { search.best_of }.max(1);
        // Finished sequences to collect before stopping: openai-whisper's patience for a beam; every
        // sample when sampling.
        let wanted = if beam { ((width as f64 * search.patience).round() as usize).max(1) } else { width };

        let mut state = self.decoder.start(features)?;
        let hidden = self.decoder.forward(&mut state, prefix, None)?;
        let mut no_speech_prob = 0.0;
        if let Some(ns) = s.no_speech {
            let at_sot = self.decoder.logits(&hidden.i(sot_index..sot_index + 1)?)?;
            no_speech_prob = log_softmax(&at_sot)[ns as usize].exp();
        }
        let mut logits = self.decoder.logits(&hidden.i(prefix.len() - 1..prefix.len())?)?;
        // Samples start as copies of the prompt; a beam grows from it.
        let mut alive = vec![Hypothesis::default()];
        if !beam && width > 1 {
            state.select(&vec![0; width])?;
            logits = logits.repeat(width);
            alive = vec![Hypothesis::default(); width];
        }
        let mut finished: Vec<Hypothesis> = Vec::new();
        for _ in 0..max_new {
            // (score, parent, token) of each continuation considered.
            let mut next: Vec<(f64, usize, u32)> = Vec::with_capacity(width);
            if beam {
                let mut candidates = Vec::with_capacity(alive.len() * (width + 1));
                for (i, hyp) in alive.iter().enumerate() {
                    let logprobs = &mut logits[i * vocab..(i + 1) * vocab];
                    self.logprobs(logprobs, &hyp.tokens);
                    for t in top(logprobs, width + 1) {
                        candidates.push((hyp.sum_logprob + logprobs[t] as f64, i, t as u32));
                    }
                }
                candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
                for (score, i, t) in candidates {
                    if t == s.eot {
                        if finished.len() < wanted {
                            finished.push(alive[i].extended(None, score));
                        }
                    } else {
                        next.push((score, i, t));
                        if next.len() == width {
                            break;
                        }
                    }
                }
            } else {
                for (i, hyp) in alive.iter().enumerate() {
                    let logprobs = &mut logits[i * vocab..(i + 1) * vocab];
                    self.logprobs(logprobs, &hyp.tokens);
                    let t = sample(logprobs, temperature, rng).unwrap_or(s.eot);
                    let score = hyp.sum_logprob + logprobs[t as usize] as f64;
                    if t == s.eot {
                        finished.push(hyp.extended(None, score));
                    } else {
                        next.push((score, i, t));
                    }
                }
            }
            if finished.len() >= wanted || next.is_empty() {
                alive.clear();
                break;
            }
            let parents: Vec<u32> = next.iter().map(|&(_, i, _)| i as u32).collect();
            let tokens: Vec<u32> = next.iter().map(|&(_, _, t)| t).collect();
            alive = next.iter().map(|&(score, i, t)| alive[i].extended(Some(t), score)).collect();
            state.select(&parents)?;
            let hidden = self.decoder.forward(&mut state, &tokens, None)?;
            logits = self.decoder.logits(&hidden)?;
        }
        // Out of room: sequences still going count as they stand, best first.
        alive.sort_by(|a, b| b.sum_logprob.total_cmp(&a.sum_logprob));
        finished.extend(alive.into_iter().take(wanted.saturating_sub(finished.len())));
        let best = finished
            .into_iter()
            .max_by(|a, b| a.ranking().total_cmp(&b.ranking()))
            .expect("a window always keeps one sequence");
        let text = self.decode_text(&best.tokens);
        Ok(Decoded {
            avg_logprob: best.sum_logprob / (best.tokens.len() + 1) as f64,
            compression_ratio: compression_ratio(&text),
            tokens: best.tokens,
            no_speech_prob,
            temperature,
        })
    }

    /// Applies the decoding rules to one sequence's logits and turns them into its log-probabilities,
    /// in place (sampling from them draws from the same distribution as from the logits).
    fn logprobs(&self, row: &mut [f32], sampled: &[u32]) {
        self.apply_rules(row, sampled);
        match self.decoder.kernels().simd {
            Some(simd) => elementwise::log_softmax(simd, row),
            None => elementwise::log_softmax_reference(row),
        }
        // A timestamp whenever timestamps together are likelier than any single text token; then the
        // text tokens are masked and the timestamps' probabilities renormalized among themselves.
        let ts = self.spec.specials.timestamp_begin as usize;
        let ts_mass = row[ts..].iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        let text_max = row[..ts].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if ts_mass > text_max as f64 {
            row[..ts].iter_mut().for_each(|l| *l = f32::NEG_INFINITY);
            row[ts..].iter_mut().for_each(|l| *l = (*l as f64 - ts_mass) as f32);
        }
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

    /// Transcribes (or translates) a whole recording; runs on a thread of the model's pool.
    pub(super) fn transcribe_in_pool(&self, job: &AudioJob) -> anyhow::Result<Transcript> {
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
            let started = std::time::Instant::now();
            let features = self.encoder.forward(&window, mels)?;
            let encoded = started.elapsed();
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
            // Temperature fallback on repetitive or low-confidence windows.
            let mut result = None;
            for &t in TEMPERATURES.iter().filter(|&&t| t >= job.temperature) {
                let decoded = self.decode_window(&features, &prefix, t, job.search, &mut rng)?;
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
            tracing::debug!(
                seek,
                encode_ms = encoded.as_secs_f64() * 1e3,
                decode_ms = (started.elapsed() - encoded).as_secs_f64() * 1e3,
                tokens = decoded.tokens.len(),
                temperature = decoded.temperature,
                "whisper window"
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_never_draws_a_masked_token() {
        let mut rng = StdRng::seed_from_u64(7);
        let logits = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 0.5];
        for _ in 0..1000 {
            let t = sample(&logits, 1.0, &mut rng).unwrap();
            assert!(t == 1 || t == 3, "{t}");
        }
        assert_eq!(sample(&[f32::NEG_INFINITY; 2], 1.0, &mut rng), None);
    }

    #[test]
    fn hypotheses_rank_by_log_probability_per_token() {
        let short = Hypothesis { tokens: vec![1, 2], sum_logprob: -1.0 };
        let long = Hypothesis { tokens: vec![1, 2, 3, 4, 5], sum_logprob: -2.0 };
        assert!(long.ranking() > short.ranking());
        assert_eq!(short.extended(Some(9), -1.5).tokens, vec![1, 2, 9]);
        assert_eq!(short.extended(None, -1.5).tokens, vec![1, 2]);
    }
}
