//! Whisper's log-mel front end: the Slaney mel filterbank computed in code (80 or 128 bins over a
//! 400-point FFT at 16 kHz), the short-time Fourier transform, and the log10 / (max − 8) / (x + 4) / 4
//! scaling. The framing and padding are those of whisper.cpp's (and candle's) `pcm_to_mel`, which the
//! decoder was tuned with; the FFT is planned once (rustfft) and the filterbank applied as one matmul.
//! The tests hold it to the definition computed independently (a naive DFT in f64).

/// Sample rate Whisper expects.
pub const SAMPLE_RATE: usize = 16_000;
/// FFT size.
pub const N_FFT: usize = 400;

fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let (min_log_hz, min_log_mel) = (1000.0, 1000.0 / f_sp);
    let logstep = (6.4f64).ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let (min_log_hz, min_log_mel) = (1000.0, 1000.0 / f_sp);
    let logstep = (6.4f64).ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// The `[mels, N_FFT / 2 + 1]` filterbank, row-major, Slaney-normalized (librosa's `mel(htk=False,
/// norm="slaney")`, as Whisper's own assets are).
pub fn filterbank(mels: usize) -> Vec<f32> {
    let bins = N_FFT / 2 + 1;
    let fmax = SAMPLE_RATE as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..bins).map(|k| k as f64 * SAMPLE_RATE as f64 / N_FFT as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(fmax));
    let points: Vec<f64> = (0..mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (mels + 1) as f64)).collect();
    let mut out = vec![0f32; mels * bins];
    for m in 0..mels {
        let (left, center, right) = (points[m], points[m + 1], points[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let rising = (f - left) / (center - left);
            let falling = (right - f) / (right - center);
            out[m * bins + k] = (rising.min(falling).max(0.0) * norm) as f32;
        }
    }
    out
}

/// Hop between frames, in samples.
pub const HOP_LENGTH: usize = 160;
/// Frames of zero padding appended past the audio (15 seconds), as `pcm_to_mel` does.
const PAD_FRAMES: usize = 1500;

/// The log-mel spectrogram `[mels, frames]` (row-major) of 16 kHz samples: a periodic Hann window of 400
/// samples every 160, power spectrum (bins 1–199 counted twice for their mirror image), the filterbank,
/// log10 floored at 1e-10, then floored at (max − 8) and mapped by x / 4 + 1.
pub fn log_mel_spectrogram(samples: &[f32], filters: &[f32], mels: usize) -> candle_core::Result<Vec<f32>> {
    use rustfft::num_complex::Complex;
    let bins = N_FFT / 2 + 1;
    let frames = samples.len() / HOP_LENGTH;
    let frames = frames.div_ceil(PAD_FRAMES).max(1) * PAD_FRAMES + PAD_FRAMES;
    let hann: Vec<f32> =
        (0..N_FFT).map(|i| 0.5 * (1.0 - (2.0 * std::f32::consts::PI * i as f32 / N_FFT as f32).cos())).collect();
    let fft = rustfft::FftPlanner::<f32>::new().plan_fft_forward(N_FFT);
    let mut scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
    let mut buffer = vec![Complex::default(); N_FFT];
    let mut power = vec![0f32; frames * bins];
    for (i, row) in power.chunks_exact_mut(bins).enumerate() {
        let offset = i * HOP_LENGTH;
        for (j, slot) in buffer.iter_mut().enumerate() {
            let x = samples.get(offset + j).copied().unwrap_or(0.0);
            *slot = Complex::new(hann[j] * x, 0.0);
        }
        fft.process_with_scratch(&mut buffer, &mut scratch);
        for (k, p) in row.iter_mut().enumerate() {
            let c = buffer[k];
            let twice = if k == 0 || k == N_FFT / 2 { 1.0 } else { 2.0 };
            *p = twice * (c.re * c.re + c.im * c.im);
        }
    }
    let device = candle_core::Device::Cpu;
    let power = candle_core::Tensor::from_vec(power, (frames, bins), &device)?;
    let filters = candle_core::Tensor::from_slice(filters, (mels, bins), &device)?;
    // [mels, bins] × [bins, frames]: the spectrogram already laid out mel-major.
    let mel = filters.matmul(&power.t()?)?.flatten_all()?.to_vec1::<f32>()?;
    let mut mel: Vec<f32> = mel.into_iter().map(|v| v.max(1e-10).log10()).collect();
    let floor = mel.iter().copied().fold(f32::NEG_INFINITY, f32::max) - 8.0;
    for m in mel.iter_mut() {
        *m = m.max(floor) / 4.0 + 1.0;
    }
    Ok(mel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librosa's `mel(sr=16000, n_fft=400, n_mels, htk=False, norm="slaney")`, written the way librosa
    /// writes it (ramps between mel-spaced points), in f64: `[mels, 201]`.
    fn librosa_filterbank(mels: usize) -> Vec<f64> {
        // The Slaney mel scale: linear to 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per
        // factor 6.4).
        let to_mel =
            |hz: f64| if hz < 1000.0 { hz * 3.0 / 200.0 } else { 15.0 + (hz / 1000.0).ln() * 27.0 / 6.4f64.ln() };
        let to_hz =
            |mel: f64| if mel < 15.0 { mel * 200.0 / 3.0 } else { 1000.0 * ((mel - 15.0) * 6.4f64.ln() / 27.0).exp() };
        let top = to_mel(8000.0);
        let points: Vec<f64> = (0..mels + 2).map(|i| to_hz(top * i as f64 / (mels + 1) as f64)).collect();
        let mut weights = vec![0f64; mels * 201];
        for i in 0..mels {
            let enorm = 2.0 / (points[i + 2] - points[i]);
            for k in 0..201 {
                let f = k as f64 * 40.0;
                let lower = (f - points[i]) / (points[i + 1] - points[i]);
                let upper = (points[i + 2] - f) / (points[i + 2] - points[i + 1]);
                weights[i * 201 + k] = lower.min(upper).max(0.0) * enorm;
            }
        }
        weights
    }

    /// Whisper's log-mel spectrogram from its definition, in f64: frames of 400 samples every 160 (the
    /// audio's frames rounded up to whole 15 seconds, plus 15 seconds of silence), a periodic Hann
    /// window, the power at bins 0–200 by a naive DFT (bins 1–199 twice: their mirror images), the
    /// filterbank, log10 floored at 1e-10, then at the maximum − 8, then x / 4 + 1.
    fn naive_log_mel(samples: &[f32], mels: usize) -> Vec<f32> {
        let frames = (samples.len() / 160).div_ceil(1500) * 1500 + 1500;
        let filters = librosa_filterbank(mels);
        let tau = 2.0 * std::f64::consts::PI;
        let hann: Vec<f64> = (0..400).map(|j| 0.5 - 0.5 * (tau * j as f64 / 400.0).cos()).collect();
        // e^(−2πi·m/400) for every m = k·j mod 400.
        let (cos, sin): (Vec<f64>, Vec<f64>) =
            (0..400).map(|m| tau * m as f64 / 400.0).map(|a| (a.cos(), a.sin())).unzip();
        let mut mel = vec![0f64; mels * frames];
        for t in 0..frames {
            let window: Vec<f64> =
                (0..400).map(|j| hann[j] * samples.get(t * 160 + j).copied().unwrap_or(0.0) as f64).collect();
            let power: Vec<f64> = (0..201)
                .map(|k| {
                    let (mut re, mut im) = (0.0, 0.0);
                    for (j, x) in window.iter().enumerate() {
                        re += x * cos[k * j % 400];
                        im -= x * sin[k * j % 400];
                    }
                    let twice = if k == 0 || k == 200 { 1.0 } else { 2.0 };
                    twice * (re * re + im * im)
                })
                .collect();
            for m in 0..mels {
                let energy: f64 = (0..201).map(|k| filters[m * 201 + k] * power[k]).sum();
                mel[m * frames + t] = energy.max(1e-10).log10();
            }
        }
        let floor = mel.iter().copied().fold(f64::NEG_INFINITY, f64::max) - 8.0;
        mel.iter().map(|&v| (v.max(floor) / 4.0 + 1.0) as f32).collect()
    }

    #[test]
    fn the_filterbank_is_librosas() {
        for mels in [80, 128] {
            let (ours, theirs) = (filterbank(mels), librosa_filterbank(mels));
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!((*a as f64 - b).abs() < 1e-7, "{mels} mels, weight {i}: {a} vs {b}");
            }
        }
    }

    /// The FFT front end against the definition, computed independently (naive DFT, librosa's
    /// filterbank, f64).
    #[test]
    fn the_spectrogram_matches_a_naive_dft() {
        let samples: Vec<f32> = (0..16_000 * 3)
            .map(|i| {
                let t = i as f32 / SAMPLE_RATE as f32;
                0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.1 * (2.0 * std::f32::consts::PI * 1234.5 * t).sin()
            })
            .collect();
        let ours = log_mel_spectrogram(&samples, &filterbank(80), 80).unwrap();
        let reference = naive_log_mel(&samples, 80);
        assert_eq!(ours.len(), reference.len());
        // f32 FFT rounding shows only in the faintest bins, where log10 magnifies it.
        let diffs: Vec<f32> = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).collect();
        let worst = diffs.iter().copied().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(worst < 2e-3 && mean < 1e-5, "largest difference {worst}, mean {mean}");
    }

    #[test]
    fn slaney_filterbank_shape_and_values() {
        let f = filterbank(80);
        assert_eq!(f.len(), 80 * 201);
        // Reference values of librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (Whisper's mel_80).
        assert!((f[1] - 0.024_862_594).abs() < 1e-6, "{}", f[1]);
        assert!((f[201 + 1] - 0.001_990_82).abs() < 1e-6, "{}", f[202]);
        assert!((f[201 + 2] - 0.022_871_772).abs() < 1e-6, "{}", f[203]);
        let row_sum: f32 = f[79 * 201..].iter().sum();
        assert!(row_sum > 0.0);
        assert!(f.iter().all(|&x| x >= 0.0));
        assert_eq!(filterbank(128).len(), 128 * 201);
    }
}
