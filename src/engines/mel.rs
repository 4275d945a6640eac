//! Whisper's log-mel front end: the Slaney mel filterbank computed in code (80 or 128 bins over a
//! 400-point FFT at 16 kHz), used by candle's STFT and log10 / (max − 8) / (x + 4) / 4 scaling.

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

#[cfg(test)]
mod tests {
    use super::*;

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
