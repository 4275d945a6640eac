//! Audio files in, 16 kHz mono f32 out: any container and codec symphonia decodes (wav, flac, mp3,
//! ogg/vorbis, m4a/aac, …), channels averaged, resampled with a windowed-sinc resampler.

use std::io::Cursor;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Why a file could not be turned into samples (a 400 for the client).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Empty upload.
    #[error("the audio file is empty")]
    Empty,
    /// Not a format we can read.
    #[error("unsupported or unrecognised audio format: {0}")]
    Unsupported(String),
    /// Recognised but broken.
    #[error("the audio file is corrupt: {0}")]
    Corrupt(String),
    /// Longer than allowed once decoded.
    #[error("the audio is longer than the {0} s limit")]
    TooLong(u64),
}

/// Decodes a whole file to 16 kHz mono; `max_seconds` bounds the decoded length (decompression bombs).
pub fn decode(bytes: Vec<u8>, extension: Option<&str>, max_seconds: u64) -> Result<Vec<f32>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let stream = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions { enable_gapless: true, ..Default::default() },
            &MetadataOptions::default(),
        )
        .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| DecodeError::Unsupported("no audio track".into()))?;
    let track_id = track.id;
    let rate = track.codec_params.sample_rate.ok_or_else(|| DecodeError::Unsupported("unknown sample rate".into()))?;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
    let limit = max_seconds as usize * rate as usize;
    let mut mono: Vec<f32> = Vec::new();
    let mut buffer: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(DecodeError::Corrupt(e.to_string())),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymphoniaError::DecodeError(e)) => {
                tracing::debug!(error = e, "skipping an undecodable packet");
                continue;
            }
            Err(e) => return Err(DecodeError::Corrupt(e.to_string())),
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let buf = buffer.get_or_insert_with(|| SampleBuffer::new(decoded.capacity() as u64, spec));
        if buf.capacity() < decoded.capacity() * channels {
            *buf = SampleBuffer::new(decoded.capacity() as u64, spec);
        }
        buf.copy_interleaved_ref(decoded);
        mono.extend(buf.samples().chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32));
        if mono.len() > limit {
            return Err(DecodeError::TooLong(max_seconds));
        }
    }
    if mono.is_empty() {
        return Err(DecodeError::Corrupt("no audio samples decoded".into()));
    }
    resample(mono, rate as usize, crate::engines::whisper::mel::SAMPLE_RATE)
}

/// Windowed-sinc resampling of a mono signal.
pub fn resample(samples: Vec<f32>, from: usize, to: usize) -> Result<Vec<f32>, DecodeError> {
    use rubato::{Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction};
    if from == to {
        return Ok(samples);
    }
    let params = SincInterpolationParameters {
        sinc_len: 128,
        f_cutoff: 0.95,
        interpolation: SincInterpolationType::Linear,
        oversampling_factor: 128,
        window: WindowFunction::BlackmanHarris2,
    };
    let chunk = 4096;
    let mut resampler = SincFixedIn::<f32>::new(to as f64 / from as f64, 1.0, params, chunk, 1)
        .map_err(|e| DecodeError::Unsupported(format!("cannot resample from {from} Hz: {e}")))?;
    let mut out = Vec::with_capacity(samples.len() * to / from + chunk);
    let mut pos = 0;
    while pos + chunk <= samples.len() {
        let block =
            resampler.process(&[&samples[pos..pos + chunk]], None).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        out.extend_from_slice(&block[0]);
        pos += chunk;
    }
    let tail =
        resampler.process_partial(Some(&[&samples[pos..]]), None).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    out.extend_from_slice(&tail[0]);
    // Flush what the filter still holds, then trim to the exact expected length (rubato's sinc
    // resampler already aligns its output with the input).
    let flushed = resampler.process_partial::<&[f32]>(None, None).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    out.extend_from_slice(&flushed[0]);
    out.truncate(samples.len() * to / from);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, samples: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        let data = (samples.len() * 2) as u32;
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data.to_le_bytes());
        for s in samples {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    #[test]
    fn decodes_and_resamples_a_tone() {
        let rate = 44_100;
        let tone: Vec<i16> = (0..rate)
            .map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 16000.0) as i16)
            .collect();
        let out = decode(wav(rate as u32, &tone), Some("wav"), 60).unwrap();
        assert_eq!(out.len(), 16_000, "one second at 16 kHz");
        // The resampled tone keeps its amplitude (16000 / 32768 ≈ 0.49) and its frequency (880 zero crossings).
        let peak = out[1000..15000].iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!((peak - 0.488).abs() < 0.02, "peak {peak}");
        let crossings = out.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        // In phase: the tone starts at zero going up, as the input does.
        assert!(out[0].abs() < 0.1 && out[3] > out[0], "head {:?}", &out[..4]);
        assert!((438..=442).contains(&crossings), "{crossings} upward crossings");
    }

    #[test]
    fn refuses_empty_garbage_and_long_input() {
        assert!(matches!(decode(vec![], None, 60), Err(DecodeError::Empty)));
        assert!(matches!(decode(b"definitely not audio at all".to_vec(), None, 60), Err(DecodeError::Unsupported(_))));
        let long = wav(8000, &vec![0i16; 8000 * 3]);
        assert!(matches!(decode(long, Some("wav"), 2), Err(DecodeError::TooLong(2))));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Random bytes, and real headers followed by garbage, are refused without a panic.
        #[test]
        fn any_upload_decodes_or_is_refused(
            prefix in prop::sample::select(vec![&b""[..], b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x03\x00", b"\xff\xfb\x90"]),
            tail in prop::collection::vec(any::<u8>(), 0..2048),
            extension in prop::sample::select(vec![None, Some("wav"), Some("mp3"), Some("flac"), Some("ogg")]),
        ) {
            let bytes = [prefix, &tail[..]].concat();
            let _ = decode(bytes, extension, 60);
        }
    }
}
