//! Promise 2: a failing model does not take the process or its neighbours down.
//!
//! The real MiniLM model is broken on purpose through the test-only `fault_*` roster hooks (accepted
//! only by builds with the `fault-injection` feature): loads that fail, warmups that panic, batches
//! that fail or panic, once or for good. Each test checks what clients get, what `/health` and
//! `/metrics` say, and that a healthy neighbour keeps serving.
#![cfg(feature = "fault-injection")]

mod common;

use common::{metric, TestServer, MINILM};
use serde_json::{json, Value};
use std::time::Duration;

const BROKEN: &str = "broken-minilm";

/// A MiniLM roster entry under `id` with extra keys (fault hooks).
fn entry(id: &str, extra: &str) -> String {
    format!(
        "[[models]]\nid = \"{id}\"\nkind = \"embedding\"\nrepo = \"sentence-transformers/all-MiniLM-L6-v2\"\n{extra}\n"
    )
}

fn embed(server: &TestServer, model: &str, text: &str) -> common::Response {
    server.embed(json!({ "model": model, "input": text }))
}

fn restarts(server: &TestServer, model: &str) -> Option<f64> {
    metric(&server.metrics(), &format!("model_restarts_total{{model=\"{model}\"}}"))
}

#[test]
fn a_model_whose_first_loads_fail_is_retried_with_backoff_until_it_serves() {
    let server = TestServer::builder().roster(&entry(MINILM, "fault_load_failures = 2")).env("MODELS", "").start();
    let health = server.get("/health").json();
    assert_eq!(health["models"][MINILM]["state"], "ready");
    assert_eq!(health["models"][MINILM]["restarts"], 2);
    assert_eq!(embed(&server, MINILM, "hello").status, 200);
    assert_eq!(restarts(&server, MINILM), Some(2.0));
    let loading = format!("model_lifecycle_events_total{{model=\"{MINILM}\",state=\"loading\"}}");
    assert_eq!(metric(&server.metrics(), &loading), Some(3.0), "three load attempts");
}

#[test]
fn a_model_that_never_loads_is_failed_and_its_neighbour_is_untouched() {
    let roster = format!("{}\n{}", entry(MINILM, ""), entry(BROKEN, "fault_load_failures = 1000"));
    let server =
        TestServer::builder().roster(&roster).env("MODELS", "").env("MODEL_MAX_RESTARTS", 2).live_only().start();
    let health = server.wait_health("the broken model to fail for good", |h| {
        h["models"][BROKEN]["state"] == "failed" && h["models"][MINILM]["state"] == "ready"
    });
    assert!(health["models"][BROKEN]["last_error"].as_str().unwrap().contains("load failure"));
    assert_eq!(health["models"][BROKEN]["restarts"], 2, "restarts stop at the budget");
    // /health answers 503 while a model has failed; the failed model answers 503 too.
    assert_eq!(server.get("/health").status, 503);
    assert_eq!(server.get("/health/ready").status, 503);
    assert!(embed(&server, BROKEN, "hello").expect_error(503).contains("load failure"));
    // The neighbour serves as if nothing happened.
    let ok = embed(&server, MINILM, "A man is eating food.");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.vectors()[0].len(), 384);
    let metrics = server.metrics();
    assert_eq!(metric(&metrics, &format!("model_state{{model=\"{BROKEN}\",state=\"failed\"}}")), Some(1.0));
    assert_eq!(metric(&metrics, &format!("model_state{{model=\"{MINILM}\",state=\"ready\"}}")), Some(1.0));
    // It stays failed: no restart loop.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.get("/health").json()["models"][BROKEN]["restarts"], 2);
}

#[test]
fn a_warmup_that_panics_restarts_the_model_which_then_serves() {
    let server = TestServer::builder().roster(&entry(MINILM, "fault_warmup_panics = 1")).env("MODELS", "").start();
    let health = server.get("/health").json();
    let model = &health["models"][MINILM];
    assert_eq!(model["state"], "ready");
    assert_eq!(model["restarts"], 1);
    assert!(model["last_error"].as_str().unwrap().contains("warmup panic"), "{model}");
    assert_eq!(model["warmup"]["ok"], true, "the second warmup succeeded");
    assert_eq!(embed(&server, MINILM, "hello").status, 200);
}

#[test]
fn a_batch_error_fails_only_its_request_and_the_model_recovers() {
    let server = TestServer::builder()
        .roster(&entry(MINILM, "fault_batch_errors = 1"))
        .env("MODELS", "")
        .env("ENABLE_WARMUP", 0)
        .env("EMBEDDING_CACHE_SIZE", 0)
        .start();
    let failed = embed(&server, MINILM, "first");
    assert!(failed.expect_error(500).contains("batch error"));
    for i in 0..5 {
        assert_eq!(embed(&server, MINILM, &format!("after {i}")).status, 200);
    }
    let health = server.wait_health("the model to be ready again", |h| h["models"][MINILM]["state"] == "ready");
    assert_eq!(health["models"][MINILM]["restarts"], 1);
    assert_eq!(restarts(&server, MINILM), Some(1.0));
}

#[test]
fn repeated_panics_mark_the_model_failed_instead_of_restarting_forever() {
    let roster = format!("{}\n{}", entry(MINILM, ""), entry(BROKEN, "fault_panic_marker = \"PANIC\""));
    let server = TestServer::builder()
        .roster(&roster)
        .env("MODELS", "")
        .env("MODEL_MAX_RESTARTS", 2)
        .env("EMBEDDING_CACHE_SIZE", 0)
        .start();
    // Each poisoned request fails alone with 500 while the budget lasts.
    for i in 0..3 {
        let r = embed(&server, BROKEN, &format!("PANIC {i}"));
        assert_eq!(r.status, 500, "{}", r.text);
        server.wait_health("the model to settle", |h| {
            matches!(h["models"][BROKEN]["state"].as_str(), Some("ready" | "failed"))
        });
    }
    let health = server.get("/health").json();
    assert_eq!(health["models"][BROKEN]["state"], "failed");
    assert_eq!(health["models"][BROKEN]["restarts"], 2);
    // From now on it answers 503, even to healthy input; the neighbour is untouched.
    assert!(embed(&server, BROKEN, "healthy text").expect_error(503).contains("panicked"));
    assert_eq!(embed(&server, MINILM, "healthy text").status, 200);
    assert_eq!(restarts(&server, BROKEN), Some(2.0));
    let failed: Value = health["models"][BROKEN].clone();
    assert!(failed["last_error"].as_str().unwrap().contains("panicked"), "{failed}");
}
