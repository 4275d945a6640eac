//! Vision chat, end to end: a tiny randomly initialised Qwen3-VL checkpoint (written by the test in
//! the Hub's layout, since no Qwen3-VL weights are reachable from CI) served by `sis` as a `vision`
//! model. Images go in as data URIs of several formats and sizes; the prompt must hold exactly as
//! many image tokens as the processor's arithmetic says, which `usage.prompt_tokens` shows. Every
//! refused image is a 400 naming the reason, counted in `remote_image_rejections_total{reason}`.

mod common;

use base64::Engine as _;
use common::tiny_qwen3_vl::{self, image_tokens};
use common::{metric, TestServer};
use serde_json::{json, Value};

const MODEL: &str = "tiny-qwen3-vl";

/// A roster serving the tiny checkpoint in `dir` as a vision model.
fn roster(dir: &std::path::Path) -> String {
    format!("[[models]]\nid = \"{MODEL}\"\nkind = \"vision\"\npath = \"{}\"\n", dir.display())
}

fn server(dir: &std::path::Path, env: &[(&str, &str)]) -> TestServer {
    let mut builder = TestServer::builder().roster(&roster(dir)).env("MODELS", MODEL);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder.start()
}

/// An encoded test image: a colour gradient, so no two patches are alike.
fn image(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn image_part(url: &str) -> Value {
    json!({ "type": "image_url", "image_url": { "url": url, "detail": "auto" } })
}

fn ask(content: Value) -> Value {
    json!({ "model": MODEL, "temperature": 0, "max_tokens": 6,
            "messages": [{ "role": "user", "content": content }] })
}

fn prompt_tokens(r: &common::Response) -> u64 {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[test]
fn images_take_the_prompt_tokens_the_processor_computes() {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen3_vl::write(dir.path());
    let server = server(dir.path(), &[]);
    let health = server.get("/health").json();
    assert_eq!(health["actors"][MODEL]["capabilities"], json!(["vision"]));
    assert_eq!(health["vision_queues"][0]["model"], MODEL);
    assert_eq!(health["chat_batch_queues"][0]["model"], MODEL, "the seed counts vision models as chat");

    let png = data_uri("image/png", &image(64, 64, image::ImageFormat::Png));
    let jpeg = data_uri("image/jpeg", &image(96, 64, image::ImageFormat::Jpeg));
    let gif = data_uri("image/gif", &image(32, 96, image::ImageFormat::Gif));
    let text = json!({ "type": "text", "text": "Describe." });

    // Text only: the vision model serves plain chat too.
    let base = server.chat(ask(json!([text])));
    let base_tokens = prompt_tokens(&base);
    let answer = &base.json()["choices"][0];
    assert!(["stop", "length"].contains(&answer["finish_reason"].as_str().unwrap()));

    // Each image adds <|vision_start|>, its merged patch grid and <|vision_end|>: a 64×64 image is
    // a 4×4 grid of 16-pixel patches, 2×2 merged into 4 tokens; 96×64 is 4×6 → 6; 32×96 is 2×6 → 3.
    assert_eq!((image_tokens(64, 64), image_tokens(64, 96), image_tokens(96, 32)), (4, 6, 3));
    let one = server.chat(ask(json!([text, image_part(&png)])));
    assert_eq!(prompt_tokens(&one), base_tokens + 2 + 4);
    let two = ask(json!([image_part(&jpeg), text, image_part(&png)]));
    let first = server.chat(two.clone());
    assert_eq!(prompt_tokens(&first), base_tokens + 2 + 6 + 2 + 4);
    assert!(first.json()["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    // Greedy decoding over the same images is repeatable, and does not depend on how the prompt is
    // cut into prefill chunks: with 5-token chunks every image straddles several steps.
    assert_eq!(server.chat(two.clone()).json()["choices"], first.json()["choices"]);
    let chunked = self::server(dir.path(), &[("CHAT_PREFILL_CHUNK", "5")]);
    assert_eq!(chunked.chat(two).json()["choices"], first.json()["choices"]);
    drop(chunked);

    // A large image: 1024×1024 is within the processor's budget (a 64×64 grid, 1024 tokens); with
    // `detail: low` it is scaled to 512×512 pixels (256 tokens), as OpenAI's low detail does.
    let large = data_uri("image/png", &image(1024, 1024, image::ImageFormat::Png));
    let high = server.chat(ask(json!([text, image_part(&large)])));
    assert_eq!(prompt_tokens(&high), base_tokens + 2 + 1024);
    let low_part = json!({ "type": "image_url", "image_url": { "url": large, "detail": "low" } });
    assert_eq!(prompt_tokens(&server.chat(ask(json!([text, low_part])))), base_tokens + 2 + 256);

    // Images in several messages of a conversation, and a GIF.
    let conversation = json!({ "model": MODEL, "temperature": 0, "max_tokens": 4, "messages": [
        { "role": "user", "content": [image_part(&png), { "type": "text", "text": "Describe." }] },
        { "role": "assistant", "content": "A gradient." },
        { "role": "user", "content": [{ "type": "text", "text": "And this?" }, image_part(&gif)] },
    ] });
    let r = server.chat(conversation);
    assert_eq!(r.status, 200, "{}", r.text);

    // Streaming with an image gives the same greedy answer as the plain request, chunk by chunk:
    // a stream that broke off mid-generation would still end in `[DONE]`, so check what it says.
    let request = ask(json!([text, image_part(&jpeg)]));
    let plain = server.chat(request.clone()).json();
    let mut streamed = request;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let stream = Stream::read(&server.chat(streamed));
    assert_eq!(stream.content, plain["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(stream.finish_reason, plain["choices"][0]["finish_reason"]);
    assert_eq!(stream.usage["prompt_tokens"], plain["usage"]["prompt_tokens"]);
    assert_eq!(stream.usage["prompt_tokens"], base_tokens + 2 + 6, "the image's tokens are counted");
    // Every generated token is counted once: as many as the plain answer's, all of `max_tokens`
    // when the answer was cut at the limit, and at least one per content chunk.
    let generated = stream.usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(generated, plain["usage"]["completion_tokens"].as_u64().unwrap());
    if stream.finish_reason == "length" {
        assert_eq!(generated, 6, "max_tokens of the request");
    }
    assert!(generated >= stream.content_chunks as u64 && generated >= 1, "{generated} tokens");
    assert_eq!(stream.usage["total_tokens"].as_u64().unwrap(), base_tokens + 2 + 6 + generated);
}

/// A chat completion stream, read chunk by chunk.
struct Stream {
    /// The content deltas, joined.
    content: String,
    /// Chunks that carried content.
    content_chunks: usize,
    /// The finish chunk's reason.
    finish_reason: Value,
    /// The usage chunk's `usage`.
    usage: Value,
}

impl Stream {
    /// Parses an SSE body with `include_usage`: a role chunk, content chunks, one finish chunk, one
    /// usage chunk with no choices, then `[DONE]`; no error frame anywhere.
    fn read(r: &common::Response) -> Stream {
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let frames: Vec<&str> = r
            .text
            .split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| f.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data frame: {f:?}")))
            .collect();
        assert_eq!(frames.last(), Some(&"[DONE]"), "{}", r.text);
        let chunks: Vec<Value> = frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
        assert!(chunks.iter().all(|c| c.get("error").is_none()), "an error frame: {}", r.text);
        assert!(chunks.len() >= 3, "role, finish and usage chunks at least: {}", r.text);
        let (usage_chunk, chunks) = chunks.split_last().unwrap();
        let (finish_chunk, chunks) = chunks.split_last().unwrap();
        for chunk in chunks.iter().chain([finish_chunk, usage_chunk]) {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], chunks[0]["id"], "one id for the whole stream");
        }
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let mut content = String::new();
        let mut content_chunks = 0;
        for chunk in chunks {
            let choice = &chunk["choices"][0];
            assert!(choice["finish_reason"].is_null(), "a finish before the finish chunk: {chunk}");
            assert!(chunk["usage"].is_null(), "usage before the usage chunk: {chunk}");
            if let Some(delta) = choice["delta"]["content"].as_str().filter(|d| !d.is_empty()) {
                content.push_str(delta);
                content_chunks += 1;
            }
        }
        let finish_reason = finish_chunk["choices"][0]["finish_reason"].clone();
        assert!(finish_reason == "stop" || finish_reason == "length", "{finish_chunk}");
        assert_eq!(finish_chunk["choices"][0]["delta"], json!({}), "{finish_chunk}");
        assert_eq!(usage_chunk["choices"], json!([]), "{usage_chunk}");
        Stream { content, content_chunks, finish_reason, usage: usage_chunk["usage"].clone() }
    }
}

#[test]
fn refused_images_are_400_with_their_reason_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen3_vl::write(dir.path());
    let server = server(dir.path(), &[("MAX_REMOTE_IMAGE_BYTES", "4000"), ("VISION_MAX_PIXELS", "16384")]);
    let text = json!({ "type": "text", "text": "What is it?" });
    // VISION_MAX_PIXELS caps every image: 256×256 becomes 128×128, an 8×8 grid, 16 tokens.
    let base = prompt_tokens(&server.chat(ask(json!([text]))));
    let mut flat = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(256, 256, image::Rgb([200, 30, 90]))
        .write_to(&mut flat, image::ImageFormat::Png)
        .unwrap();
    let square = data_uri("image/png", flat.get_ref());
    assert_eq!(prompt_tokens(&server.chat(ask(json!([text, image_part(&square)])))), base + 2 + 16);
    let refused = |url: &str, reason: &str| {
        let before = metric(&server.metrics(), &format!("remote_image_rejections_total{{reason=\"{reason}\"}}"));
        let message = server.chat(ask(json!([text, image_part(url)]))).expect_error(400);
        assert!(message.contains(reason), "{url:.60} → {message}");
        let after = metric(&server.metrics(), &format!("remote_image_rejections_total{{reason=\"{reason}\"}}"));
        assert_eq!(after.unwrap_or(0.0), before.unwrap_or(0.0) + 1.0, "{reason} counted");
    };
    let small_png = image(32, 32, image::ImageFormat::Png);
    refused("http://example.com/cat.png", "disabled");
    refused("ftp://example.com/cat.png", "scheme");
    refused("/etc/passwd", "local_path");
    refused("file:///etc/hostname", "local_path");
    refused("data:image/png;base64,@@@not base64@@@", "bad_data_uri");
    refused("data:image/png,rawbytes", "bad_data_uri");
    refused(&data_uri("image/png", b"just some text, not an image"), "bad_mime");
    // A decompression bomb: a tiny PNG whose header announces 100 000 × 100 000 pixels.
    let mut bomb = small_png.clone();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    refused(&data_uri("image/png", &bomb), "bad_image");
    // A PNG signature in front of garbage passes sniffing but cannot be decoded.
    refused(&data_uri("image/png", &[&small_png[..16], &[0u8; 64][..]].concat()), "bad_image");
    // Noise does not compress: 64×64 random pixels are far over the 4000-byte limit.
    let noise = image::RgbImage::from_fn(64, 64, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut big = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut big, image::ImageFormat::Png).unwrap();
    assert!(big.get_ref().len() > 4000);
    refused(&data_uri("image/png", big.get_ref()), "too_large");

    // The MIME type in the data URI is not trusted: JPEG bytes labelled PNG are read as the JPEG they are.
    let jpeg = image(32, 32, image::ImageFormat::Jpeg);
    assert_eq!(server.chat(ask(json!([text, image_part(&data_uri("image/png", &jpeg))]))).status, 200);
    // A part without a URL is a plain validation error.
    let missing = json!([text, { "type": "image_url", "image_url": {} }]);
    assert!(server.chat(ask(missing)).expect_error(400).contains("image_url.url"));
}

#[test]
fn remote_images_need_an_allowlisted_host_with_public_addresses() {
    let dir = tempfile::tempdir().unwrap();
    tiny_qwen3_vl::write(dir.path());
    let text = json!({ "type": "text", "text": "What is it?" });
    // Remote images on, but the allowlist is empty: every host is refused.
    let open = server(dir.path(), &[("ALLOW_REMOTE_IMAGES", "1")]);
    let message = open.chat(ask(json!([text, image_part("https://example.com/cat.png")]))).expect_error(400);
    assert!(message.contains("host_not_allowed"), "{message}");
    drop(open);

    // `localhost` is allow-listed but resolves to loopback, which is never fetched from.
    let listed = server(dir.path(), &[("ALLOW_REMOTE_IMAGES", "1"), ("REMOTE_IMAGE_HOST_ALLOWLIST", "localhost")]);
    let message = listed.chat(ask(json!([text, image_part("http://localhost:9/cat.png")]))).expect_error(400);
    assert!(message.contains("private_address"), "{message}");
    let message = listed.chat(ask(json!([text, image_part("http://10.0.0.7/cat.png")]))).expect_error(400);
    assert!(message.contains("host_not_allowed"), "{message}");
    let metrics = listed.metrics();
    assert_eq!(metric(&metrics, "remote_image_rejections_total{reason=\"private_address\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "remote_image_rejections_total{reason=\"host_not_allowed\"}"), Some(1.0));
}
