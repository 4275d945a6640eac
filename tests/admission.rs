//! Admission and supervision through the real server: bounded queues answer 429 with Retry-After,
//! every request is answered, and a model whose engine panics comes back.

mod common;

use common::{metric, TestServer, MINILM};
use serde_json::json;
use std::collections::BTreeMap;

/// 32 distinct sentences of a few dozen tokens: enough work that concurrent requests overlap.
fn heavy_input(seed: usize) -> Vec<String> {
    (0..32)
        .map(|i| {
            format!(
                "Request {seed} sentence {i}: the committee reviewed the long report about rivers, bridges and trains."
            )
        })
        .collect()
}

/// Sends `n` heavy requests at once; returns status -> count, and asserts 429s carry Retry-After.
fn burst(server: &TestServer, n: usize) -> BTreeMap<u16, usize> {
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let r = server.embed(json!({ "model": MINILM, "input": heavy_input(i) }));
                    if r.status == 429 {
                        let retry = r.headers.get("retry-after").expect("429 carries Retry-After");
                        assert!(retry.to_str().unwrap().parse::<u64>().unwrap() >= 1);
                        assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
                    }
                    r.status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("every request answered")).collect()
    });
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_insert(0) += 1;
    }
    counts
}

#[test]
fn a_full_queue_answers_429_and_every_request_is_answered() {
    let server = TestServer::builder().env("MAX_QUEUE_SIZE", 2).env("EMBEDDING_CACHE_SIZE", 0).start();
    let watch = common::QueueWatch::start(&server, "embeddings", MINILM);
    let counts = burst(&server, 24);
    assert!(watch.deepest() <= 2.0, "the queue never holds more than its bound");
    assert_eq!(counts.values().sum::<usize>(), 24, "every request answered: {counts:?}");
    assert!(counts.keys().all(|s| *s == 200 || *s == 429), "only 200 and 429: {counts:?}");
    assert!(counts.get(&429).copied().unwrap_or(0) > 0, "a queue of 2 must refuse some of 24: {counts:?}");
    assert!(counts.get(&200).copied().unwrap_or(0) >= 2, "admitted requests are served: {counts:?}");
    let metrics = server.metrics();
    let rejected = metric(&metrics, "embedding_queue_rejections_total").unwrap();
    assert_eq!(rejected as usize, counts[&429]);
    let depth = metric(&metrics, &format!("model_queue_depth{{capability=\"embeddings\",model=\"{MINILM}\"}}"));
    assert_eq!(depth, Some(0.0), "the queue drains once everything is answered");
}

#[test]
fn waiting_longer_than_the_queue_timeout_answers_429() {
    let server = TestServer::builder()
        .env("QUEUE_TIMEOUT_SEC", "0.05")
        .env("BATCH_WINDOW_MAX_SIZE", 32)
        .env("EMBEDDING_CACHE_SIZE", 0)
        .start();
    let counts = burst(&server, 12);
    assert_eq!(counts.values().sum::<usize>(), 12);
    assert!(counts.keys().all(|s| *s == 200 || *s == 429), "only 200 and 429: {counts:?}");
    assert!(counts.get(&429).copied().unwrap_or(0) > 0, "requests behind a busy model time out: {counts:?}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_request_that_panics_the_engine_fails_alone_and_the_model_restarts() {
    let roster = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml"))
        .unwrap()
        .replace("kind = \"embedding\"", "kind = \"embedding\"\nfault_panic_marker = \"PANIC-NOW\"");
    let server =
        TestServer::builder().roster(&roster).env("BATCH_WINDOW_MS", 100).env("EMBEDDING_CACHE_SIZE", 0).start();

    // The batch window gathers the poisoned request and its neighbours into one batch.
    let (failed, queued) = std::thread::scope(|s| {
        let failed = s.spawn(|| server.embed(json!({ "model": MINILM, "input": "PANIC-NOW please" })));
        let server = &server;
        let queued: Vec<_> = (0..6)
            .map(|i| s.spawn(move || server.embed(json!({ "model": MINILM, "input": format!("queued text {i}") }))))
            .collect();
        (failed.join().unwrap(), queued.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>())
    });
    assert!(failed.expect_error(500).contains("panicked"), "{}", failed.text);
    for r in &queued {
        assert_eq!(r.status, 200, "requests that shared the batch or queued behind it are served: {}", r.text);
    }
    let health = server.wait_health("the model to be ready again", |h| h["actors"][MINILM]["state"] == "ready");
    // One restart if the poisoned request ran alone; two if it first shared a batch (the batcher then
    // retries each request of that batch alone, and the poisoned one panics again).
    let restarts = health["actors"][MINILM]["restarts"].as_f64().unwrap();
    assert!(restarts == 1.0 || restarts == 2.0, "restarts: {restarts}");
    assert!(health["actors"][MINILM]["last_error"].as_str().unwrap_or("").contains("panicked"));
    let after = server.embed(json!({ "model": MINILM, "input": "after the restart" }));
    assert_eq!(after.status, 200);
    let metrics = server.metrics();
    assert_eq!(metric(&metrics, &format!("model_restarts_total{{model=\"{MINILM}\"}}")), Some(restarts));
    assert_eq!(
        metric(&metrics, &format!("model_lifecycle_events_total{{model=\"{MINILM}\",state=\"restarting\"}}")),
        Some(restarts)
    );
    assert_eq!(metric(&metrics, &format!("embedding_requests_total{{model=\"{MINILM}\",status=\"500\"}}")), Some(1.0));
}
