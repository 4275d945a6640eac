//! `/v1/audio/transcriptions` and `/v1/audio/translations` end to end: a real `sis serve` with
//! whisper-tiny.en (CTranslate2 weights), fed speech that espeak-ng makes from known text.

mod common;

use common::{Response, TestServer, MINILM, WHISPER};
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const SHORT: &str = "The weather today is sunny and warm. Please remember to bring your umbrella tomorrow.";
const LONG: &[&str] = &[
    "Good morning and welcome to the weekly project meeting.",
    "First, the kitchen on the third floor will be closed on Friday.",
    "Second, the new printer is ready in the library next to the window.",
    "Third, please send your travel requests to Maria before the end of the month.",
    "The marketing team finished the spring campaign two weeks early.",
    "Everyone did a wonderful job with the customer survey.",
    "Our next goal is to improve the mobile application and fix the login problems.",
    "The engineers will test the new version on Tuesday and Wednesday.",
    "The office will also get new chairs and brighter lamps in December.",
    "Lunch on Thursday is pizza, and there will be a salad for everyone.",
    "The garden outside needs water every evening during the summer.",
    "Our football team won the final match on Saturday afternoon.",
    "Remember that the parking lot will be painted next weekend.",
    "Thank you all for listening, and have a great week.",
];

/// Speaks German text with espeak-ng's German voice.
fn speak_german(dir: &Path, text: &str) -> PathBuf {
    let raw = dir.join("german-raw.wav");
    let wav = dir.join("german.wav");
    run(Command::new("espeak-ng").args(["-v", "de", "-s", "120", "-w"]).arg(&raw).arg(text));
    run(Command::new("sox").arg(&raw).arg(&wav).args(["pad", "0.5", "0.5"]));
    wav
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} failed to start ({e}); scripts/test installs espeak-ng and sox"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Speaks `text` into `<name>.wav` (with half a second of silence around it) and converts it to
/// flac, mp3 and ogg.
fn speak(dir: &Path, name: &str, text: &str) -> PathBuf {
    let raw = dir.join(format!("{name}-raw.wav"));
    let wav = dir.join(format!("{name}.wav"));
    run(Command::new("espeak-ng").args(["-v", "en-us", "-s", "140", "-w"]).arg(&raw).arg(text));
    run(Command::new("sox").arg(&raw).arg(&wav).args(["pad", "0.5", "0.5"]));
    for ext in ["flac", "mp3", "ogg"] {
        run(Command::new("sox").arg(&wav).arg(dir.join(format!("{name}.{ext}"))));
    }
    wav
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

fn words_of(text: &str) -> usize {
    words(text).len()
}

/// Word error rate of `hypothesis` against `reference`.
fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for i in 1..=r.len() {
        let mut prev = row[0];
        row[0] = i;
        for j in 1..=h.len() {
            let cur = row[j];
            row[j] = (prev + (r[i - 1] != h[j - 1]) as usize).min(row[j] + 1).min(row[j - 1] + 1);
            prev = cur;
        }
    }
    row[h.len()] as f64 / r.len() as f64
}

fn transcribe(server: &TestServer, path: &Path, fields: &[(&str, &str)]) -> Response {
    upload(server, "/v1/audio/transcriptions", WHISPER, path, fields)
}

fn upload(server: &TestServer, endpoint: &str, model: &str, path: &Path, fields: &[(&str, &str)]) -> Response {
    let bytes = std::fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut form = Form::new().part("file", Part::bytes(bytes).file_name(name)).text("model", model.to_string());
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    Response::from(common::client().post(server.url(endpoint)).multipart(form).send().unwrap())
}

fn server() -> TestServer {
    TestServer::builder().env("MODELS", WHISPER).start()
}

#[test]
fn short_clips_in_every_format_are_transcribed() {
    let dir = tempfile::tempdir().unwrap();
    let wav = speak(dir.path(), "short", SHORT);
    let server = server();
    let mut texts = Vec::new();
    for ext in ["wav", "flac", "mp3", "ogg"] {
        let r = transcribe(&server, &wav.with_extension(ext), &[]);
        assert_eq!(r.status, 200, "{ext}: {}", r.text);
        let text = r.json()["text"].as_str().unwrap().to_string();
        let error = wer(SHORT, &text);
        assert!(error < 0.3, "{ext}: WER {error:.2} for {text:?}");
        texts.push(text);
    }
    // Lossless formats carry the same samples, so the same text; lossy ones may differ by a word.
    assert_eq!(texts[0], texts[1], "wav and flac");
    let plain = transcribe(&server, &wav, &[("response_format", "text")]);
    assert_eq!(plain.text.trim(), texts[0]);
}

/// What phones record: AAC in an MP4 container (m4a) and raw ADTS AAC. No tool CI installs writes AAC,
/// so these clips of the same sentence are fixtures (`scripts/references/phone_audio.py`).
#[test]
fn phone_recordings_in_m4a_and_aac_are_transcribed() {
    let server = server();
    for name in ["short.m4a", "short.aac"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let r = transcribe(&server, &path, &[]);
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        let text = r.json()["text"].as_str().unwrap().to_string();
        let error = wer(SHORT, &text);
        assert!(error < 0.3, "{name}: WER {error:.2} for {text:?}");
    }
}

/// Sentences whisper-tiny.en mishears in places when it decodes greedily.
const HARD: &[&str] = &[
    "The quick brown fox jumps over the lazy dog while the meeting starts at nine.",
    "Please send the quarterly report to the finance team before Friday afternoon.",
    "The weather tomorrow will be cloudy with a chance of rain in the northern mountains.",
    "She bought three apples, two pears and a loaf of bread at the market on Sunday.",
];

#[test]
fn beam_search_is_the_default_and_hears_better_than_greedy() {
    // Like faster-whisper, windows are searched with a beam of 5 unless the request (or the roster)
    // asks otherwise; `beam_size=1` is greedy decoding.
    let dir = tempfile::tempdir().unwrap();
    let server = server();
    let health = server.get("/health").json();
    let search = &health["actors"][WHISPER]["settings"]["audio"]["search"];
    assert_eq!(search["beam_size"], 5, "{search}");
    assert_eq!(search["best_of"], 5, "{search}");
    let (mut greedy_errors, mut beam_errors) = (0.0, 0.0);
    for (i, sentence) in HARD.iter().enumerate() {
        let wav = speak(dir.path(), &format!("hard{i}"), sentence);
        let text = |fields: &[(&str, &str)]| {
            let r = transcribe(&server, &wav, fields);
            assert_eq!(r.status, 200, "{fields:?}: {}", r.text);
            r.json()["text"].as_str().unwrap().to_string()
        };
        let (greedy, default, beam) = (text(&[("beam_size", "1")]), text(&[]), text(&[("beam_size", "5")]));
        assert_eq!(default, beam, "the default is a beam of 5");
        greedy_errors += wer(sentence, &greedy);
        beam_errors += wer(sentence, &beam);
        eprintln!("greedy: {greedy:?}\nbeam 5: {beam:?}");
    }
    let (greedy, beam) = (greedy_errors / HARD.len() as f64, beam_errors / HARD.len() as f64);
    assert!(beam < greedy, "beam 5 WER {beam:.3} is not below greedy's {greedy:.3}");
    assert!(beam < 0.15, "beam 5 WER {beam:.3}");

    // Samples drawn at a temperature above 0: best_of of them, the likeliest kept.
    let wav = dir.path().join("hard0.wav");
    let sampled = transcribe(&server, &wav, &[("temperature", "0.4"), ("best_of", "3")]);
    assert_eq!(sampled.status, 200, "{}", sampled.text);
    assert!(wer(HARD[0], sampled.json()["text"].as_str().unwrap()) < 0.5, "{}", sampled.text);

    for (field, value) in [("beam_size", "0"), ("beam_size", "11"), ("best_of", "two"), ("patience", "0")] {
        let r = transcribe(&server, &wav, &[(field, value)]);
        assert_eq!(r.status, 400, "{field}={value}: {}", r.text);
        assert_eq!(r.json()["error"]["param"], field, "{}", r.text);
    }
}

#[test]
fn the_bf16_encoder_hears_what_the_f32_encoder_hears() {
    // The default encoder runs on bf16 products where the CPU has them; `precision = "f32"` does not.
    let dir = tempfile::tempdir().unwrap();
    let wav = speak(dir.path(), "short", SHORT);
    let server = TestServer::builder()
        .roster(&common::roster_with_copy(WHISPER, "whisper-f32", "precision = \"f32\""))
        .env("MODELS", format!("{WHISPER},whisper-f32"))
        .start();
    let fast = transcribe(&server, &wav, &[]);
    let exact = upload(&server, "/v1/audio/transcriptions", "whisper-f32", &wav, &[]);
    assert_eq!(exact.status, 200, "{}", exact.text);
    let (fast, exact) =
        (fast.json()["text"].as_str().unwrap().to_string(), exact.json()["text"].as_str().unwrap().to_string());
    assert!(wer(SHORT, &exact) < 0.3, "f32: {exact:?}");
    assert!(wer(&exact, &fast) <= 0.1, "bf16 {fast:?} against f32 {exact:?}");
}

#[test]
fn a_long_recording_is_transcribed_window_by_window() {
    let dir = tempfile::tempdir().unwrap();
    let text = LONG.join(" ");
    let wav = speak(dir.path(), "long", &text);
    let server = server();
    let r = transcribe(
        &server,
        &wav,
        &[
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "segment"),
            ("timestamp_granularities[]", "word"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    assert_eq!(body["task"], "transcribe");
    assert_eq!(body["language"], "english");
    let duration = body["duration"].as_f64().unwrap();
    assert!((60.0..=90.0).contains(&duration), "a 60–90 s clip: {duration}");
    let segments = body["segments"].as_array().unwrap();
    assert!(segments.len() >= LONG.len() / 2, "{} segments", segments.len());
    let mut last_end = 0.0;
    for s in segments {
        for field in [
            "id",
            "seek",
            "start",
            "end",
            "text",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        ] {
            assert!(s.get(field).is_some(), "segment without {field}: {s}");
        }
        let (start, end) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        assert!(start >= last_end - 1e-6 && end >= start, "times increase: {s}");
        last_end = end;
    }
    assert!(segments[0]["start"].as_f64().unwrap() < 2.0);
    assert!(last_end > duration - 5.0, "segments cover the recording: ends at {last_end} of {duration}");
    assert!(segments.iter().any(|s| s["seek"].as_u64().unwrap() > 0), "more than one 30 s window");
    // Every sentence is there, in order.
    let heard = body["text"].as_str().unwrap();
    assert!(wer(&text, heard) < 0.2, "WER {:.2}: {heard}", wer(&text, heard));
    let mut at = 0;
    for key in [
        "welcome",
        "kitchen",
        "printer",
        "Maria",
        "marketing",
        "survey",
        "mobile",
        "engineers",
        "chairs",
        "pizza",
        "garden",
        "football",
        "parking",
        "listening",
    ] {
        let found = heard[at..].find(key).unwrap_or_else(|| panic!("{key:?} missing or out of order in {heard}"));
        at += found + key.len();
    }

    // Words: inside their segment, in order, and together they spell the text.
    let words = body["words"].as_array().expect("words asked for");
    assert!(words.len() >= words_of(&text) * 8 / 10, "{} words", words.len());
    let mut previous_end = 0.0;
    let mut seg = 0;
    for w in words {
        let (start, end) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
        assert!(start >= previous_end - 1e-6 && end >= start, "word times increase: {w}");
        while seg + 1 < segments.len()
            && start >= segments[seg]["end"].as_f64().unwrap()
            && start >= segments[seg + 1]["start"].as_f64().unwrap()
        {
            seg += 1;
        }
        let (s0, s1) = (segments[seg]["start"].as_f64().unwrap(), segments[seg]["end"].as_f64().unwrap());
        assert!(start >= s0 - 1e-6 && end <= s1 + 1e-6, "word {w} lies inside its segment [{s0}, {s1}]");
        previous_end = end;
    }
    let spelled: Vec<&str> = words.iter().map(|w| w["word"].as_str().unwrap()).collect();
    assert_eq!(words_of(&spelled.join(" ")), words_of(heard), "the words spell the text");

    // srt and vtt carry the same segments.
    let srt = transcribe(&server, &wav, &[("response_format", "srt")]);
    assert_eq!(srt.headers["content-type"], "application/x-subrip; charset=utf-8", "SubRip's type, as the seed sends");
    let srt = srt.text;
    let vtt = transcribe(&server, &wav, &[("response_format", "vtt")]).text;
    assert!(vtt.starts_with("WEBVTT\n\n"));
    let cues: Vec<&str> = srt.trim().split("\n\n").collect();
    assert_eq!(cues.len(), segments.len());
    for (i, (cue, seg)) in cues.iter().zip(segments).enumerate() {
        let lines: Vec<&str> = cue.lines().collect();
        assert_eq!(lines[0], (i + 1).to_string());
        let (from, to) = lines[1].split_once(" --> ").unwrap();
        let seconds = |t: &str| {
            let p: Vec<f64> = t.replace(',', ".").split(':').map(|x| x.parse().unwrap()).collect();
            p[0] * 3600.0 + p[1] * 60.0 + p[2]
        };
        assert!((seconds(from) - seg["start"].as_f64().unwrap()).abs() < 0.002);
        assert!((seconds(to) - seg["end"].as_f64().unwrap()).abs() < 0.002);
        assert_eq!(lines[2], seg["text"].as_str().unwrap().trim());
        assert!(vtt.contains(&format!("{} --> {}\n{}", from.replace(',', "."), to.replace(',', "."), lines[2])));
    }
}

#[test]
fn bad_uploads_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let wav = speak(dir.path(), "clip", "Hello there.");
    let server =
        TestServer::builder().env("MODELS", format!("{WHISPER},{MINILM}")).env("MAX_AUDIO_BYTES", 150_000).start();
    let post = |form: Form, path: &str| {
        Response::from(common::client().post(server.url(path)).multipart(form).send().unwrap())
    };
    let file = |bytes: Vec<u8>, name: &str| Part::bytes(bytes).file_name(name.to_string());
    let good = std::fs::read(&wav).unwrap();

    // A FLAC signature followed by noise: recognised, then undecodable.
    let mut corrupt = b"fLaC".to_vec();
    corrupt.extend((0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    let cases: Vec<(Form, u16, &str)> = vec![
        (
            Form::new().text("model", WHISPER).part("file", file(b"just some text, not audio".to_vec(), "notes.txt")),
            400,
            "audio",
        ),
        (Form::new().text("model", WHISPER).part("file", file(corrupt, "clip.flac")), 400, "audio"),
        (Form::new().text("model", WHISPER).part("file", file(vec![], "empty.wav")), 400, "empty"),
        (Form::new().text("model", WHISPER).part("file", file(vec![0u8; 200_000], "big.wav")), 413, "larger"),
        (Form::new().text("model", WHISPER), 400, "file"),
        (Form::new().part("file", file(good.clone(), "clip.wav")), 400, "model"),
        (Form::new().text("model", "nope").part("file", file(good.clone(), "clip.wav")), 404, "nope"),
        (Form::new().text("model", MINILM).part("file", file(good.clone(), "clip.wav")), 400, "does not support audio"),
        (
            Form::new()
                .text("model", WHISPER)
                .text("response_format", "mp4")
                .part("file", file(good.clone(), "clip.wav")),
            400,
            "response_format",
        ),
        (
            Form::new()
                .text("model", WHISPER)
                .text("timestamp_granularities[]", "syllable")
                .part("file", file(good.clone(), "c.wav")),
            400,
            "granularity",
        ),
        (
            Form::new().text("model", WHISPER).text("temperature", "hot").part("file", file(good.clone(), "c.wav")),
            400,
            "temperature",
        ),
        (
            Form::new().text("model", WHISPER).text("language", "xx").part("file", file(good.clone(), "c.wav")),
            400,
            "language",
        ),
    ];
    for (form, status, needle) in cases {
        let r = post(form, "/v1/audio/transcriptions");
        let message = r.expect_error(status);
        assert!(message.contains(needle), "{status} should mention {needle:?}: {message}");
    }
    let english_only =
        post(Form::new().text("model", WHISPER).part("file", file(good.clone(), "clip.wav")), "/v1/audio/translations");
    assert!(english_only.expect_error(400).contains("English-only"));
    let not_multipart = Response::from(
        common::client().post(server.url("/v1/audio/transcriptions")).json(&json!({"model": WHISPER})).send().unwrap(),
    );
    not_multipart.expect_error(400);
    // Still healthy and serving.
    let ok = post(Form::new().text("model", WHISPER).part("file", file(good, "clip.wav")), "/v1/audio/transcriptions");
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.json()["text"].as_str().unwrap().to_lowercase().contains("hello"));
}

/// Embeddings keep their latency while the speech model is busy: the two models have their own
/// queues, actors, threads and thread pools, so an embedding never waits for a transcription.
///
/// The test times embeddings on an idle server, then again while two clients keep the speech model
/// transcribing back to back (one clip running, one queued, for the whole measurement). The two
/// models still share the machine's cores, so the busy server is slower: on 2 cores the embedding
/// engine gets about half the CPU, and measurements are noisy. Hence medians (one slow request does
/// not count) and a loose bound: eight times the idle median plus 100 ms. What the bound rules out
/// is an embedding waiting behind audio work: that costs a transcription (seconds) or at least a
/// Whisper forward pass, far beyond the bound on a slow machine and a fast one alike.
#[test]
fn audio_load_does_not_hold_up_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let wav = speak(dir.path(), "load", SHORT);
    let server = TestServer::builder()
        .env("MODELS", format!("{WHISPER},{MINILM}"))
        .env("AUDIO_MAX_QUEUE_SIZE", 2)
        // Every text is new anyway; no cache keeps the timing honest.
        .env("EMBEDDING_CACHE_SIZE", 0)
        .start();
    let embed_ms = |i: usize| {
        let started = std::time::Instant::now();
        let r = server.embed(json!({ "model": MINILM, "input": format!("Sentence number {i} of the latency probe.") }));
        assert_eq!(r.status, 200, "{}", r.text);
        started.elapsed().as_secs_f64() * 1e3
    };
    let audio_in_flight = || server.get("/health").json()["actors"][WHISPER]["queue_depth"].as_u64().unwrap();
    const SAMPLES: usize = 15;

    // Idle: a few requests to settle, then the measurement.
    (0..3).for_each(|i| {
        embed_ms(i);
    });
    let idle = median((0..SAMPLES).map(|i| embed_ms(100 + i)).collect());

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (busy, transcribed) = std::thread::scope(|s| {
        let (server, wav, stop) = (&server, &wav, &stop);
        let clients: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(move || {
                    let mut done = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let r = transcribe(server, wav, &[]);
                        assert_eq!(r.status, 200, "{}", r.text);
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let started = std::time::Instant::now();
        while audio_in_flight() < 2 {
            assert!(started.elapsed().as_secs() < 60, "the audio clients never got going");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let busy: Vec<f64> = (0..SAMPLES)
            .map(|i| {
                assert!(audio_in_flight() >= 1, "audio stopped during the measurement");
                let ms = embed_ms(200 + i);
                assert!(audio_in_flight() >= 1, "audio stopped during the measurement");
                ms
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let transcribed: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
        (median(busy), transcribed)
    });
    assert!(transcribed >= 2, "the speech model was busy: {transcribed} transcriptions");
    let bound = 8.0 * idle + 100.0;
    assert!(
        busy <= bound,
        "embeddings under audio load: median {busy:.1} ms against {idle:.1} ms idle (bound {bound:.0} ms)"
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
fn a_multilingual_model_detects_the_language_and_translates() {
    let dir = tempfile::tempdir().unwrap();
    let german = speak_german(dir.path(), "Ich habe einen Hund und eine Katze. Der Hund ist sehr groß.");
    let server = TestServer::builder().env("MODELS", "whisper-base").start();
    let verbose = [("response_format", "verbose_json")];

    let translated = upload(&server, "/v1/audio/translations", "whisper-base", &german, &verbose);
    assert_eq!(translated.status, 200, "{}", translated.text);
    let body = translated.json();
    assert_eq!(body["task"], "translate");
    assert_eq!(body["language"], "german", "the language is detected");
    let english = body["text"].as_str().unwrap().to_lowercase();
    assert!(english.contains("cat") && english.contains("big"), "English key words in {english:?}");

    let heard = upload(&server, "/v1/audio/transcriptions", "whisper-base", &german, &verbose).json();
    assert_eq!(heard["language"], "german");
    assert!(heard["text"].as_str().unwrap().contains("Katze"), "{heard}");
    // A given language skips detection and is reported back.
    let given = upload(
        &server,
        "/v1/audio/transcriptions",
        "whisper-base",
        &german,
        &[("response_format", "verbose_json"), ("language", "de")],
    );
    assert_eq!(given.json()["language"], "german");
}

#[test]
fn a_hub_safetensors_whisper_matches_its_ctranslate2_original() {
    // Convert the CTranslate2 model.bin into a Hub-layout folder (model.safetensors, config.json,
    // generation_config.json, tokenizer.json) and serve both: the same audio gives the same words.
    let (settings, roster) = sis::config::Settings::load(&sis::config::Overrides {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml").into()),
        ..Default::default()
    })
    .unwrap();
    let entry = roster.select(&[WHISPER.into()]).unwrap().remove(0);
    let ct2 = sis::models::resolve(&entry, &sis::models::Sources::new(&settings).downloading()).unwrap().dir;
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("whisper-hub");
    std::fs::create_dir_all(&hub).unwrap();
    let vars = sis::engines::whisper::ct2::read(&ct2.join("model.bin")).unwrap();
    let (tensors, shape) = sis::engines::whisper::ct2::whisper_tensors(&vars).unwrap();
    candle_core::safetensors::save(&tensors, hub.join("model.safetensors")).unwrap();
    let ct2_config: Value = serde_json::from_str(&std::fs::read_to_string(ct2.join("config.json")).unwrap()).unwrap();
    std::fs::write(
        hub.join("config.json"),
        json!({
            "num_mel_bins": shape.mels, "max_source_positions": shape.audio_positions, "d_model": shape.width,
            "encoder_attention_heads": shape.encoder_heads, "encoder_layers": shape.encoder_layers,
            "vocab_size": shape.vocab, "max_target_positions": shape.text_positions,
            "decoder_attention_heads": shape.decoder_heads, "decoder_layers": shape.decoder_layers,
            "suppress_tokens": ct2_config["suppress_ids"], "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        hub.join("generation_config.json"),
        json!({ "alignment_heads": ct2_config["alignment_heads"] }).to_string(),
    )
    .unwrap();
    std::fs::copy(ct2.join("tokenizer.json"), hub.join("tokenizer.json")).unwrap();

    let roster = format!(
        "[[models]]\nid = \"ct2\"\nkind = \"audio\"\npath = {:?}\n\n[[models]]\nid = \"hub\"\nkind = \"audio\"\npath = {:?}\n",
        ct2.display().to_string(),
        hub.display().to_string()
    );
    let server = TestServer::builder().roster(&roster).env("MODELS", "ct2,hub").start();
    let wav = speak(dir.path(), "clip", SHORT);
    let fields = [("response_format", "verbose_json"), ("timestamp_granularities[]", "word")];
    let a = upload(&server, "/v1/audio/transcriptions", "ct2", &wav, &fields).json();
    let b = upload(&server, "/v1/audio/transcriptions", "hub", &wav, &fields).json();
    assert_eq!(a["text"], b["text"]);
    for (x, y) in a["segments"].as_array().unwrap().iter().zip(b["segments"].as_array().unwrap()) {
        for key in ["start", "end", "text", "tokens", "temperature"] {
            assert_eq!(x[key], y[key], "{key}");
        }
        assert!((x["avg_logprob"].as_f64().unwrap() - y["avg_logprob"].as_f64().unwrap()).abs() < 1e-4);
    }
    assert_eq!(a["words"], b["words"]);
    assert!(wer(SHORT, a["text"].as_str().unwrap()) < 0.3);
}

/// `AUDIO_MAX_CONCURRENT=2` runs two transcriptions at the same time, not one after the other.
///
/// Three clients upload a clip at once. The server's own record says what ran when: the queue wait
/// of each request (`audio_request_queue_wait_seconds`, from arrival to the start of its
/// transcription). Two requests start at once, on the two workers; the third waits for one of
/// them to finish. A wall-clock comparison would say little on a 2-core machine, where two
/// transcriptions side by side each run about half as fast; the queue waits do not depend on speed.
#[test]
fn audio_max_concurrent_runs_two_transcriptions_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let wav = speak(dir.path(), "pair", SHORT);
    let server = TestServer::builder().env("MODELS", WHISPER).env("AUDIO_MAX_CONCURRENT", 2).start();
    // Lifecycle metrics arrive through the event bus: wait until both engines have reported.
    let series = format!("model_lifecycle_events_total{{model=\"{WHISPER}\",state=\"loaded\"}}");
    let started = std::time::Instant::now();
    while common::metric(&server.metrics(), &series) != Some(2.0) {
        assert!(
            started.elapsed().as_secs() < 60,
            "two engines should load: {:?}",
            common::metric(&server.metrics(), &series)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let waits = "audio_request_queue_wait_seconds";
    let count = |metrics: &str, bucket: &str| {
        let series = match bucket {
            "" => format!("{waits}_count{{model=\"{WHISPER}\"}}"),
            le => format!("{waits}_bucket{{model=\"{WHISPER}\",le=\"{le}\"}}"),
        };
        common::metric(metrics, &series).unwrap_or(0.0)
    };
    let before = server.metrics();

    let (server, wav) = (&server, &wav);
    let barrier = std::sync::Barrier::new(3);
    let (texts, latencies): (Vec<String>, Vec<f64>) = std::thread::scope(|s| {
        let barrier = &barrier;
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(move || {
                    barrier.wait();
                    let started = std::time::Instant::now();
                    let r = transcribe(server, wav, &[]);
                    assert_eq!(r.status, 200, "{}", r.text);
                    (r.json()["text"].as_str().unwrap().to_string(), started.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).unzip()
    });
    assert!(texts.iter().all(|t| t == &texts[0]), "every worker gives the same transcript: {texts:?}");
    assert!(wer(SHORT, &texts[0]) < 0.3, "{}", texts[0]);

    // A wait "at once" is one far shorter than a transcription: a quarter of the quickest request,
    // rounded down to a bucket of the histogram (its bounds are 1 ms, 2.5 ms, …, 0.1 s, 0.25 s, …).
    let quickest = latencies.iter().copied().fold(f64::INFINITY, f64::min);
    let bucket = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5"]
        .into_iter()
        .rev()
        .find(|b| b.parse::<f64>().unwrap() <= quickest / 4.0)
        .unwrap_or_else(|| panic!("a transcription of {quickest:.3} s is too quick to tell waits apart"));
    let after = server.metrics();
    assert_eq!(count(&after, "") - count(&before, ""), 3.0);
    let at_once = count(&after, bucket) - count(&before, bucket);
    assert_eq!(at_once, 2.0, "two of three requests started within {bucket} s, the quickest took {quickest:.2} s");
}

/// A burst at several times the audio queue's capacity: every request is answered, with 200 or 429
/// (with `Retry-After`), and the queue never holds more than its bound.
#[test]
fn an_audio_burst_is_answered_with_200_or_429_within_the_queue_bound() {
    let dir = tempfile::tempdir().unwrap();
    let wav = speak(dir.path(), "burst", SHORT);
    let server = TestServer::builder().env("MODELS", WHISPER).env("AUDIO_MAX_QUEUE_SIZE", 2).start();
    let watch = common::QueueWatch::start(&server, "audio", WHISPER);
    let (server, wav) = (&server, &wav);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(move || {
                    let r = transcribe(server, wav, &[]);
                    if r.status == 429 {
                        assert!(r.headers.contains_key("retry-after"), "429 carries Retry-After");
                    }
                    r.status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("every request answered")).collect()
    });
    assert_eq!(statuses.len(), 8);
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(statuses.contains(&429) && statuses.contains(&200), "{statuses:?}");
    assert!(watch.deepest() <= 2.0, "the queue never holds more than its bound");
    let served =
        common::metric(&server.metrics(), &format!("audio_requests_total{{model=\"{WHISPER}\",status=\"200\"}}"));
    assert_eq!(served, Some(statuses.iter().filter(|s| **s == 200).count() as f64));
}

/// A decompression bomb: two hours of silence compress to a small FLAC, but decoding stops at
/// `MAX_AUDIO_SECONDS` and the upload is refused quickly, with the server healthy afterwards.
#[test]
fn an_audio_decompression_bomb_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("silence.flac");
    run(Command::new("sox")
        .args(["-D", "-n", "-r", "16000", "-c", "1", "-b", "16"])
        .arg(&bomb)
        .args(["trim", "0", "7200"]));
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 1_000_000, "the bomb is small on the wire: {size} bytes");
    let server = TestServer::builder().env("MODELS", WHISPER).env("MAX_AUDIO_SECONDS", 60).start();
    let started = std::time::Instant::now();
    let r = transcribe(&server, &bomb, &[]);
    assert!(r.expect_error(400).contains("60"), "{}", r.text);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "refused in {:?}", started.elapsed());
    assert_eq!(server.get("/health/ready").status, 200);
}

/// Writes a CTranslate2 model.bin whose linear, convolution and embedding weights are int8 with one
/// scale per output row, as `ct2-transformers-converter --quantization int8` stores them
/// (`weight = round(w · 127 / max|row|)`, `weight_scale = 127 / max|row|`); everything else f32.
fn write_int8_ct2(vars: &std::collections::HashMap<String, sis::engines::whisper::ct2::Variable>, path: &Path) {
    let mut b = Vec::new();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    };
    let var = |b: &mut Vec<u8>, name: &str, dims: &[usize], dtype: u8, raw: &[u8]| {
        string(b, name);
        b.push(dims.len() as u8);
        dims.iter().for_each(|d| b.extend_from_slice(&(*d as u32).to_le_bytes()));
        b.push(dtype);
        b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        b.extend_from_slice(raw);
    };
    b.extend_from_slice(&6u32.to_le_bytes());
    string(&mut b, "WhisperSpec");
    b.extend_from_slice(&3u32.to_le_bytes());
    let quantized = |name: &str, dims: &[usize]| name.ends_with("/weight") && dims.len() >= 2;
    let count: usize = vars.iter().map(|(n, v)| if quantized(n, &v.dims) { 2 } else { 1 }).sum();
    b.extend_from_slice(&(count as u32).to_le_bytes());
    for (name, v) in vars {
        if !quantized(name, &v.dims) {
            let raw: Vec<u8> = v.values.iter().flat_map(|x| x.to_le_bytes()).collect();
            var(&mut b, name, &v.dims, 0, &raw);
            continue;
        }
        let rows = v.dims[0];
        let mut ints = Vec::with_capacity(v.values.len());
        let mut scales = Vec::with_capacity(rows);
        for row in v.values.chunks(v.values.len() / rows) {
            let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = if amax == 0.0 { 1.0 } else { 127.0 / amax };
            ints.extend(row.iter().map(|x| (x * scale).round() as i8 as u8));
            scales.extend_from_slice(&scale.to_le_bytes());
        }
        var(&mut b, name, &v.dims, 1, &ints);
        var(&mut b, &format!("{name}_scale"), &[rows], 0, &scales);
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

/// An int8 CTranslate2 folder (made here from whisper-tiny.en's float16 one, quantized as CTranslate2
/// does) is read with its scales and transcribes as well as the original.
#[test]
fn int8_ctranslate2_folders_transcribe() {
    let dir = tempfile::tempdir().unwrap();
    let (_, original) = common::model_files(WHISPER);
    let folder = dir.path().join("tiny-int8");
    std::fs::create_dir_all(&folder).unwrap();
    for file in std::fs::read_dir(&original).unwrap().flatten() {
        if file.file_name() != "model.bin" {
            std::os::unix::fs::symlink(file.path(), folder.join(file.file_name())).unwrap();
        }
    }
    let vars = sis::engines::whisper::ct2::read(&original.join("model.bin")).unwrap();
    write_int8_ct2(&vars, &folder.join("model.bin"));
    let roster =
        format!("[[models]]\nid = \"tiny-int8\"\nkind = \"audio\"\npath = {:?}\n", folder.display().to_string());
    let server = TestServer::builder().roster(&roster).env("MODELS", "tiny-int8").start();
    let wav = speak(dir.path(), "short", SHORT);
    let r = upload(&server, "/v1/audio/transcriptions", "tiny-int8", &wav, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.json()["text"].as_str().unwrap().to_string();
    let error = wer(SHORT, &text);
    assert!(error < 0.3, "int8: WER {error:.2} for {text:?}");
}

/// Whisper in the Hub's transformers layout (what `openai/whisper-*` and its fine-tunes ship:
/// `model.safetensors` with Hub names and a transformers `config.json`), named by its Hub id: here
/// whisper-tiny.en's weights rewritten in that layout into a Hugging Face cache laid out by the test.
/// Its kind is read from `WhisperForConditionalGeneration`, and it transcribes as the original does.
#[test]
fn hub_layout_whisper_served_by_its_repo_id() {
    let (_, original) = common::model_files(WHISPER);
    let vars = sis::engines::whisper::ct2::read(&original.join("model.bin")).unwrap();
    let (tensors, shape) = sis::engines::whisper::ct2::whisper_tensors(&vars).unwrap();
    let ct2: Value = serde_json::from_str(&std::fs::read_to_string(original.join("config.json")).unwrap()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let snapshot =
        cache.path().join("models--openai--whisper-tiny.en/snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(cache.path().join("models--openai--whisper-tiny.en/refs")).unwrap();
    std::fs::write(
        cache.path().join("models--openai--whisper-tiny.en/refs/main"),
        "0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    candle_core::safetensors::save(&tensors, snapshot.join("model.safetensors")).unwrap();
    let config = json!({
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "num_mel_bins": shape.mels,
        "max_source_positions": shape.audio_positions,
        "d_model": shape.width,
        "encoder_attention_heads": shape.encoder_heads,
        "encoder_layers": shape.encoder_layers,
        "vocab_size": shape.vocab,
        "max_target_positions": shape.text_positions,
        "decoder_attention_heads": shape.decoder_heads,
        "decoder_layers": shape.decoder_layers,
        "suppress_tokens": ct2["suppress_ids"],
        "begin_suppress_tokens": ct2["suppress_ids_begin"],
    });
    std::fs::write(snapshot.join("config.json"), config.to_string()).unwrap();
    std::os::unix::fs::symlink(original.join("tokenizer.json"), snapshot.join("tokenizer.json")).unwrap();

    let server = TestServer::builder()
        .env("HF_HUB_CACHE", cache.path().display())
        .env("AUTO_DOWNLOAD_MODELS", "0")
        .env("MODELS", "openai/whisper-tiny.en")
        .start();
    let health = server.get("/health").json();
    assert_eq!(health["actors"]["openai/whisper-tiny.en"]["capabilities"], json!(["audio"]), "{health}");
    let dir = tempfile::tempdir().unwrap();
    let wav = speak(dir.path(), "short", SHORT);
    let r = upload(&server, "/v1/audio/transcriptions", "openai/whisper-tiny.en", &wav, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.json()["text"].as_str().unwrap().to_string();
    let error = wer(SHORT, &text);
    assert!(error < 0.3, "Hub layout: WER {error:.2} for {text:?}");
}
