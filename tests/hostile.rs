//! Promise 4: hostile input is refused cheaply. Oversized bodies and headers, clients that send too
//! slowly, deeply nested or huge JSON, invalid UTF-8, malformed multipart and absurd numbers each get
//! a 4xx quickly, on a real socket, and the server is healthy afterwards.

mod common;

use common::{client, TestServer, MINILM, SMOLLM};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends raw bytes on a fresh connection and reads what comes back until the server closes it (or
/// `wait` passes); returns the response text and how long it took.
fn raw(server: &TestServer, bytes: &[u8], wait: Duration) -> (String, Duration) {
    let address = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let started = Instant::now();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && response_complete(&out) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&out).to_string(), started.elapsed())
}

/// Whether a buffered HTTP/1.1 response holds its whole body (by Content-Length).
fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().ok()))
        .flatten();
    length.is_some_and(|n| body.len() >= n)
}

fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn healthy(server: &TestServer) {
    assert_eq!(server.get("/health/ready").status, 200);
    assert_eq!(server.embed(json!({ "model": MINILM, "input": "still fine" })).status, 200);
}

#[test]
fn slow_clients_are_cut_off_with_408() {
    let server = TestServer::builder().env("HEADER_READ_TIMEOUT_SEC", 1).env("BODY_READ_TIMEOUT_SEC", 1).start();
    // Headers that never finish.
    let (response, took) =
        raw(&server, b"POST /v1/embeddings HTTP/1.1\r\nHost: sis\r\nX-Slow: ", Duration::from_secs(5));
    assert_eq!(status_of(&response), 408, "{response:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // A body that never finishes: 10 of the announced 100 bytes.
    let request = b"POST /v1/embeddings HTTP/1.1\r\nHost: sis\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\": ";
    let (response, took) = raw(&server, request, Duration::from_secs(5));
    assert_eq!(status_of(&response), 408, "{response:?}");
    assert!(response.contains("request_timeout"), "{response}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    healthy(&server);
}

#[test]
fn oversized_bodies_and_headers_are_refused_before_they_are_read() {
    let server = TestServer::builder().env("MAX_REQUEST_BYTES", 64 * 1024).start();
    // A body announced at 1 GB is refused from its headers alone.
    let request = b"POST /v1/embeddings HTTP/1.1\r\nHost: sis\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n";
    let (response, took) = raw(&server, request, Duration::from_secs(5));
    assert_eq!(status_of(&response), 413, "{response:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A chunked body that grows past the limit.
    let big = json!({ "model": MINILM, "input": "x".repeat(100 * 1024) }).to_string();
    let r = client()
        .post(server.url("/v1/embeddings"))
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(big)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    // 100 KB of headers.
    let mut request = b"GET /health/live HTTP/1.1\r\nHost: sis\r\n".to_vec();
    for i in 0..1000 {
        request.extend_from_slice(format!("X-Padding-{i}: {}\r\n", "p".repeat(100)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let (response, took) = raw(&server, &request, Duration::from_secs(5));
    let status = status_of(&response);
    assert!((400..500).contains(&status), "oversized headers get a 4xx: {response:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    healthy(&server);
}

#[test]
fn malformed_json_utf8_and_multipart_get_400() {
    let server = TestServer::builder().env("MODELS", format!("{MINILM},{SMOLLM}")).start();
    let post = |path: &str, content_type: &str, body: Vec<u8>| {
        let started = Instant::now();
        let r = client().post(server.url(path)).header("Content-Type", content_type).body(body).send().unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "{path} took {:?}", started.elapsed());
        common::Response::from(r)
    };
    // 100 000 nested arrays: serde's recursion limit refuses it without a stack overflow.
    let nested = format!("{{\"model\": \"{MINILM}\", \"input\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(post("/v1/embeddings", "application/json", nested.into_bytes()).expect_error(400).contains("JSON"));
    // A huge array of inputs is refused by count, not embedded.
    let many = json!({ "model": MINILM, "input": vec!["word"; 50_000] }).to_string();
    post("/v1/embeddings", "application/json", many.into_bytes()).expect_error(400);
    // Invalid UTF-8 inside a JSON string.
    let mut bad = format!("{{\"model\": \"{MINILM}\", \"input\": \"").into_bytes();
    bad.extend_from_slice(&[0xff, 0xfe, 0x80]);
    bad.extend_from_slice(b"\"}");
    post("/v1/embeddings", "application/json", bad).expect_error(400);
    post("/v1/chat/completions", "application/json", vec![0xc3, 0x28]).expect_error(400);
    // Multipart: a body that does not match its boundary, a missing boundary, no multipart at all.
    let broken = b"--XYZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper".to_vec();
    post("/v1/audio/transcriptions", "multipart/form-data; boundary=ABC", broken.clone()).expect_error(400);
    post("/v1/audio/transcriptions", "multipart/form-data", broken).expect_error(400);
    post("/v1/audio/transcriptions", "application/json", b"{}".to_vec()).expect_error(400);
    // A form whose body ends inside the file field: refused at once as malformed, not left waiting.
    let cut =
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....\r\n--B-".to_vec();
    post("/v1/audio/transcriptions", "multipart/form-data; boundary=B", cut).expect_error(400);
    healthy(&server);
}

#[test]
fn absurd_numbers_are_refused_with_400() {
    let server =
        TestServer::builder().env("MODELS", format!("{MINILM},{SMOLLM}")).env("CHAT_MAX_NEW_TOKENS", 4).start();
    let chat = |extra: &str| {
        let body = format!(
            "{{\"model\": \"{SMOLLM}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}], {extra}}}"
        );
        let r = client()
            .post(server.url("/v1/chat/completions"))
            .header("Content-Type", "application/json")
            .body(body)
            .send();
        common::Response::from(r.unwrap())
    };
    for extra in [
        "\"max_tokens\": 9223372036854775808",
        "\"max_tokens\": 1e300",
        "\"max_tokens\": -1",
        "\"temperature\": NaN",
        "\"temperature\": \"NaN\"",
        "\"temperature\": 1e309",
        "\"top_p\": -0.5",
        "\"n\": 18446744073709551616",
        "\"seed\": 1.5",
        "\"presence_penalty\": 99",
        "\"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]",
    ] {
        let r = chat(extra);
        assert_eq!(r.status, 400, "{extra}: {}", r.text);
    }
    let embed = |extra: &str| {
        let body = format!("{{\"model\": \"{MINILM}\", \"input\": \"hi\", {extra}}}");
        let r =
            client().post(server.url("/v1/embeddings")).header("Content-Type", "application/json").body(body).send();
        common::Response::from(r.unwrap())
    };
    for extra in ["\"dimensions\": -1", "\"dimensions\": 0", "\"dimensions\": 10000000000", "\"dimensions\": 1e400"] {
        let r = embed(extra);
        assert_eq!(r.status, 400, "{extra}: {}", r.text);
    }
    // A huge max_tokens that still fits is clamped (SPEC: clamped on every path), not an error.
    let r = chat("\"max_tokens\": 9223372036854775807, \"temperature\": 0");
    assert_eq!(r.status, 200, "{}", r.text);
    healthy(&server);
}
