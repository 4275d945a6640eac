//! Transcript renderings: json, text, srt, vtt, verbose_json.

use serde_json::{json, Value};

use crate::engines::whisper::{Task, Transcript};

/// A requested output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"text": …}`.
    Json,
    /// Plain text.
    Text,
    /// SubRip subtitles.
    Srt,
    /// WebVTT subtitles.
    Vtt,
    /// Segments with timings and scores.
    VerboseJson,
}

impl Format {
    /// Parses `response_format`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "json" => Format::Json,
            "text" => Format::Text,
            "srt" => Format::Srt,
            "vtt" => Format::Vtt,
            "verbose_json" => Format::VerboseJson,
            _ => return None,
        })
    }
}

fn timestamp(seconds: f64, separator: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}{separator}{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// Subtitles: SubRip (numbered cues, comma milliseconds) or WebVTT.
pub fn subtitles(t: &Transcript, vtt: bool) -> String {
    let mut out = String::new();
    if vtt {
        out.push_str("WEBVTT\n\n");
    }
    for (i, s) in t.segments.iter().enumerate() {
        if !vtt {
            out.push_str(&format!("{}\n", i + 1));
        }
        let sep = if vtt { '.' } else { ',' };
        out.push_str(&format!("{} --> {}\n{}\n\n", timestamp(s.start, sep), timestamp(s.end, sep), s.text.trim()));
    }
    out
}

/// English names of the language codes OpenAI reports in verbose_json.
fn language_name(code: &str) -> &str {
    match code {
        "en" => "english",
        "fr" => "french",
        "de" => "german",
        "es" => "spanish",
        "it" => "italian",
        "pt" => "portuguese",
        "nl" => "dutch",
        "ru" => "russian",
        "zh" => "chinese",
        "ja" => "japanese",
        "ko" => "korean",
        "pl" => "polish",
        "sv" => "swedish",
        "tr" => "turkish",
        "uk" => "ukrainian",
        "ar" => "arabic",
        other => other,
    }
}

/// The verbose_json body.
pub fn verbose(t: &Transcript, words: bool) -> Value {
    let mut body = json!({
        "task": match t.task { Task::Transcribe => "transcribe", Task::Translate => "translate" },
        "language": language_name(&t.language),
        "duration": (t.duration * 1000.0).round() / 1000.0,
        "text": t.text,
        "segments": t.segments,
    });
    if words {
        body["words"] = json!(t.words);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::whisper::Segment;

    fn transcript() -> Transcript {
        let seg = |id, start, end, text: &str| Segment {
            id,
            seek: 0,
            start,
            end,
            text: text.into(),
            tokens: vec![],
            temperature: 0.0,
            avg_logprob: -0.2,
            compression_ratio: 1.1,
            no_speech_prob: 0.01,
        };
        Transcript {
            language: "en".into(),
            duration: 3725.5,
            task: Task::Transcribe,
            segments: vec![seg(0, 0.0, 2.5, " Hello there."), seg(1, 3661.25, 3725.5, " Bye.")],
            text: "Hello there. Bye.".into(),
            words: vec![],
        }
    }

    #[test]
    fn srt_and_vtt_cues() {
        let t = transcript();
        assert_eq!(
            subtitles(&t, false),
            "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:01:01,250 --> 01:02:05,500\nBye.\n\n"
        );
        assert_eq!(
            subtitles(&t, true),
            "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n01:01:01.250 --> 01:02:05.500\nBye.\n\n"
        );
        let v = verbose(&t, false);
        assert_eq!(v["language"], "english");
        assert_eq!(v["segments"][1]["start"], 3661.25);
    }
}
