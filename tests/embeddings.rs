//! `/v1/embeddings` end to end: a real `sis serve` with all-MiniLM-L6-v2 on a loopback port.

mod common;

use base64::Engine as _;
use common::{dot, metric, norm, parse_prometheus, roster_with_copy, TestServer, MINILM};
use serde_json::json;

const FOOD: &str = "A man is eating food.";
const BREAD: &str = "A man is eating a piece of bread.";
const HORSE: &str = "A man is riding a horse.";

#[test]
fn similarities_match_the_reference_and_vectors_are_unit_length() {
    let server = TestServer::start();
    let response = server.embed(json!({ "model": MINILM, "input": [FOOD, BREAD, HORSE] }));
    let v = response.vectors();
    assert_eq!(v.len(), 3);
    for vector in &v {
        assert_eq!(vector.len(), 384);
        assert!((norm(vector) - 1.0).abs() < 1e-4, "norm {}", norm(vector));
    }
    // Reference values of sentence-transformers for this model (MODELS.md).
    let similar = dot(&v[0], &v[1]);
    let different = dot(&v[0], &v[2]);
    assert!((similar - 0.755).abs() < 0.01, "cos(food, bread) = {similar}");
    assert!((different - 0.247).abs() < 0.01, "cos(food, horse) = {different}");

    let body = response.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MINILM);
    assert_eq!(body["data"][0]["object"], "embedding");
    // [CLS] a man is eating food . [SEP] = 8 tokens; the three texts have 8 + 11 + 9.
    assert_eq!(body["usage"]["prompt_tokens"], 28, "{body}");
    assert_eq!(body["usage"]["total_tokens"], 28);
}

#[test]
fn base64_decodes_to_the_float_vectors() {
    let server = TestServer::start();
    let floats = server.embed(json!({ "model": MINILM, "input": [FOOD, HORSE] })).vectors();
    let encoded = server.embed(json!({ "model": MINILM, "input": [FOOD, HORSE], "encoding_format": "base64" }));
    assert_eq!(encoded.status, 200, "{}", encoded.text);
    let body = encoded.json();
    for (i, expected) in floats.iter().enumerate() {
        let b64 = body["data"][i]["embedding"].as_str().expect("base64 string");
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(&decoded, expected, "vector {i}: base64 must carry the exact float bits");
    }
    let bad = server.embed(json!({ "model": MINILM, "input": FOOD, "encoding_format": "hex" }));
    assert!(bad.expect_error(400).contains("encoding_format"));
}

#[test]
fn dimensions_truncate_and_renormalize() {
    let server = TestServer::start();
    let full = &server.embed(json!({ "model": MINILM, "input": FOOD })).vectors()[0];
    let short = &server.embed(json!({ "model": MINILM, "input": FOOD, "dimensions": 128 })).vectors()[0];
    assert_eq!(short.len(), 128);
    assert!((norm(short) - 1.0).abs() < 1e-4);
    let prefix_norm = norm(&full[..128]);
    for (s, f) in short.iter().zip(&full[..128]) {
        assert!((s - f / prefix_norm).abs() < 1e-5, "{s} vs {}", f / prefix_norm);
    }
    for bad in [0, 385, 1000, -1] {
        let r = server.embed(json!({ "model": MINILM, "input": FOOD, "dimensions": bad }));
        assert!(r.expect_error(400).contains("dimensions"), "dimensions={bad}");
    }
}

/// A model set to `normalize = false` keeps its raw vectors, cut to `dimensions` and not scaled to unit
/// length; the model that normalizes gives the same direction at length 1. `/health` shows each model's
/// effective settings, its roster overrides applied.
#[test]
fn dimensions_keep_a_non_normalizing_model_raw() {
    let roster = roster_with_copy(MINILM, "minilm-raw", "normalize = false\nbatch_window_ms = 1");
    let server = TestServer::builder().roster(&roster).env("MODELS", format!("{MINILM},minilm-raw")).start();
    let raw = &server.embed(json!({ "model": "minilm-raw", "input": FOOD })).vectors()[0];
    assert!((norm(raw) - 1.0).abs() > 1e-2, "mean-pooled MiniLM vectors are not unit length: {}", norm(raw));
    let cut = &server.embed(json!({ "model": "minilm-raw", "input": FOOD, "dimensions": 64 })).vectors()[0];
    assert_eq!(cut.as_slice(), &raw[..64], "a raw model's cut vector is its prefix, unscaled");
    let unit = &server.embed(json!({ "model": MINILM, "input": FOOD, "dimensions": 64 })).vectors()[0];
    assert!((norm(unit) - 1.0).abs() < 1e-4);
    let cosine = dot(unit, cut) / norm(cut);
    assert!(cosine > 0.9999, "same direction: {cosine}");

    let health = server.get("/health").json();
    let settings = |id: &str| health["actors"][id]["settings"].clone();
    assert_eq!(settings("minilm-raw")["embeddings"]["batch_window_ms"], 1.0);
    assert_eq!(settings(MINILM)["embeddings"]["batch_window_ms"], 5.0);
    assert_eq!(settings(MINILM)["capability"], "embedding");
    assert!(settings(MINILM)["queue"]["max_queue_size"].as_u64().unwrap() > 0);
}

#[test]
fn a_batch_equals_the_same_texts_sent_one_by_one() {
    // The cache is off so every vector below is computed, in different batch company each time.
    let server = TestServer::builder().env("EMBEDDING_CACHE_SIZE", 0).start();
    let texts = [
        "Hi.",
        FOOD,
        "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence.",
        BREAD,
        "Rust",
        "Numbers like 3.14159 and 2,718 and words like naïve café résumé",
        HORSE,
    ];
    let batched = server.embed(json!({ "model": MINILM, "input": texts })).vectors();
    // Concurrent single requests: the batcher packs them together with other lengths.
    let server = &server;
    let singles: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| s.spawn(move || server.embed(json!({ "model": MINILM, "input": t })).vectors()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().remove(0)).collect()
    });
    for (i, (b, s)) in batched.iter().zip(&singles).enumerate() {
        let max_diff = b.iter().zip(s).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "text {i} differs by {max_diff} between batch and single request");
    }
}

#[test]
fn bf16_dense_layers_stay_within_1e_3_cosine_of_full_precision() {
    // The same weights served twice: the default (bf16 products where the CPU has them and they
    // measure fastest) and `precision = "f32"` (f32 products throughout).
    let roster = roster_with_copy(MINILM, "minilm-f32", "precision = \"f32\"");
    let server = TestServer::builder()
        .roster(&roster)
        .env("MODELS", format!("{MINILM},minilm-f32"))
        .env("EMBEDDING_CACHE_SIZE", 0)
        .start();
    let mut texts = sis::bench::corpus::sentences(27, 11);
    texts.extend([FOOD, BREAD, HORSE, "Hi."].map(String::from));
    // A long text: attention of sequences from 64 tokens on also runs on bf16 products.
    texts.push(sis::bench::corpus::sentences(12, 5).join(" "));
    let fast = server.embed(json!({ "model": MINILM, "input": texts })).vectors();
    let exact = server.embed(json!({ "model": "minilm-f32", "input": texts })).vectors();
    assert_eq!(fast.len(), texts.len());
    let mut worst = 1f32;
    for (f, e) in fast.iter().zip(&exact) {
        worst = worst.min(dot(f, e) / (norm(f) * norm(e)));
    }
    assert!(worst >= 0.999, "worst cosine between bf16 and f32 vectors: {worst}");
    // Each model says which dense kernel it chose; f32 never takes bf16, and where the default did, its
    // vectors are not the f32 ones.
    let health = server.get("/health").json();
    let dense = |id: &str| health["actors"][id]["kernels"][0].as_str().unwrap_or_default().to_string();
    assert!(dense(MINILM).starts_with("dense: "), "{health}");
    assert!(!dense("minilm-f32").starts_with("dense: bf16"), "{}", dense("minilm-f32"));
    if dense(MINILM).starts_with("dense: bf16") {
        assert_ne!(fast, exact, "the default runs the bf16 path, not f32");
    }
}

#[test]
fn the_official_openai_python_client_gets_correct_vectors() {
    let server = TestServer::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/openai_embeddings.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(python)
        .args([script, &server.base, MINILM])
        .output()
        .expect("python3 runs (the test script installs the openai package)");
    assert!(
        output.status.success(),
        "openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("client printed JSON");
    assert_eq!(result["count"], 3);
    assert_eq!(result["dims"], json!([384, 384, 384]));
    for n in result["norms"].as_array().unwrap() {
        assert!((n.as_f64().unwrap() - 1.0).abs() < 1e-4);
    }
    assert!((result["similar"].as_f64().unwrap() - 0.755).abs() < 0.01, "{result}");
    assert!((result["different"].as_f64().unwrap() - 0.247).abs() < 0.01, "{result}");
    assert_eq!(result["prompt_tokens"], 28);
    assert_eq!(result["short_dims"], 128);
    assert!((result["short_norm"].as_f64().unwrap() - 1.0).abs() < 1e-4);
}

#[test]
fn client_mistakes_get_openai_shaped_errors() {
    let server = TestServer::builder().env("MAX_REQUEST_BYTES", 30_000).start();

    let r = server.embed(json!({ "model": "no-such-model", "input": FOOD }));
    assert!(r.expect_error(404).contains("no-such-model"));
    assert_eq!(r.json()["error"]["code"], "model_not_found");

    assert!(server.embed(json!({ "model": MINILM, "input": "" })).expect_error(400).contains("empty"));
    assert!(server.embed(json!({ "model": MINILM, "input": [] })).expect_error(400).contains("empty"));
    let many: Vec<String> = (0..33).map(|i| format!("text {i}")).collect();
    assert!(server.embed(json!({ "model": MINILM, "input": many })).expect_error(400).contains("33 items"));
    let r = server.embed(json!({ "model": MINILM, "input": ["fine", "x".repeat(20_001)] }));
    assert!(r.expect_error(400).contains("input[1]"));
    assert!(server.embed(json!({ "model": MINILM, "input": ["ok", 42] })).expect_error(400).contains("input[1]"));
    assert!(server.embed(json!({ "model": MINILM, "input": {"text": FOOD} })).expect_error(400).contains("input"));
    assert!(server.embed(json!({ "model": 7, "input": FOOD })).expect_error(400).contains("wrong type"));
    assert!(server.embed(json!({ "input": FOOD })).expect_error(400).contains("model"));

    let client = common::client();
    let malformed =
        common::Response::from(client.post(server.url("/v1/embeddings")).body("{\"model\": ").send().unwrap());
    assert!(malformed.expect_error(400).contains("not valid JSON"));
    let huge = json!({ "model": MINILM, "input": "word ".repeat(8000) });
    let r = common::Response::from(client.post(server.url("/v1/embeddings")).json(&huge).send().unwrap());
    r.expect_error(413);

    server.get("/v1/nothing-here").expect_error(404);
    assert!(server.get("/v1/embeddings").expect_error(405).contains("GET"));
    // The server is still healthy after all of that.
    assert_eq!(server.embed(json!({ "model": MINILM, "input": FOOD })).status, 200);
}

#[test]
fn every_response_carries_a_request_id() {
    let server = TestServer::start();
    let r = server.get("/health");
    let generated = r.headers.get("x-request-id").expect("generated id").to_str().unwrap().to_string();
    assert!(generated.len() >= 16);
    let echoed = common::client()
        .post(server.url("/v1/embeddings"))
        .header("X-Request-ID", "client-id-123")
        .json(&json!({ "model": "missing", "input": "x" }))
        .send()
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "client-id-123");
}

#[test]
fn models_health_and_metrics_describe_the_server() {
    let server = TestServer::start();
    let models = server.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    let minilm = models["data"].as_array().unwrap().iter().find(|m| m["id"] == MINILM).expect("listed");
    assert_eq!(minilm["object"], "model");
    assert_eq!(minilm["dimensions"], 384);
    assert_eq!(minilm["embedding_dimensions"], 384, "the seed's name");
    assert_eq!(minilm["capabilities"], json!(["embeddings"]));
    assert!(minilm["created"].is_u64() && minilm["owned_by"].is_string());

    let health = server.get("/health").json();
    assert_eq!(health["status"], "ok");
    let model = &health["actors"][MINILM];
    assert_eq!(model["state"], "ready");
    assert_eq!(model["restarts"], 0);
    assert!(model["queue_capacity"].as_u64().unwrap() > 0);
    assert_eq!(model["warmup"]["ok"], true);
    // The seed's keys, in the seed's shapes.
    assert_eq!(health["models"], json!([MINILM]));
    assert_eq!(health["warmup"]["ok_models"], json!([MINILM]));
    assert_eq!(health["warmup"]["capabilities"][MINILM]["embeddings"], true);
    assert_eq!((&health["warmup"]["required"], &health["warmup"]["completed"]), (&json!(true), &json!(true)));
    assert_eq!((&health["warmup"]["failures"], &health["warmup_failures"]), (&json!([]), &json!([])));
    assert_eq!(health["runtime_config"]["warmup"]["steps"], 1, "runtime_config shows the effective env value");
    assert_eq!(health["runtime_config"]["warmup_steps"], 1, "and under the seed's flat key");
    assert_eq!(health["runtime_config"]["batch_window_ms"], 5.0);
    let queue = &health["embedding_batch_queues"][0];
    assert_eq!((&queue["model"], &queue["size"]), (&json!(MINILM), &json!(0)));
    assert!(queue["max_size"].as_u64().unwrap() > 0);
    assert_eq!(server.get("/health/live").status, 200);
    assert_eq!(server.get("/health/ready").json()["models"][MINILM], "ready");

    // One text twice: a miss, then a hit.
    let text = json!({ "model": MINILM, "input": "Counting cache hits." });
    assert_eq!(server.embed(text.clone()).status, 200);
    assert_eq!(server.embed(text).status, 200);
    let metrics = server.metrics();
    let samples = parse_prometheus(&metrics);
    for name in [
        "embedding_requests_total",
        "embedding_request_latency_seconds_bucket",
        "embedding_request_queue_wait_seconds_bucket",
        "embedding_batch_wait_seconds_bucket",
        "embedding_queue_rejections_total",
        "embedding_cache_hits_total",
        "embedding_cache_misses_total",
        "model_state",
        "warmup_pool_ready_workers",
    ] {
        assert!(samples.iter().any(|(s, _)| s.starts_with(name)), "{name} missing from /metrics:\n{metrics}");
    }
    let hits = metric(&metrics, &format!("embedding_cache_hits_total{{model=\"{MINILM}\"}}"));
    assert_eq!(hits, Some(1.0), "{metrics}");
    let ok = metric(&metrics, &format!("embedding_requests_total{{model=\"{MINILM}\",status=\"200\"}}"));
    assert_eq!(ok, Some(2.0));
    let ready = metric(&metrics, &format!("model_state{{model=\"{MINILM}\",state=\"ready\"}}"));
    assert_eq!(ready, Some(1.0));

    // A name no model answers to is counted too, under one fixed label; `/metrics/` is the seed's path.
    server.embed(json!({ "model": "no-such-model", "input": "x" })).expect_error(404);
    let metrics = server.get("/metrics/");
    assert_eq!(metrics.status, 200);
    assert_eq!(metric(&metrics.text, "embedding_requests_total{model=\"_unknown\",status=\"404\"}"), Some(1.0));
}
