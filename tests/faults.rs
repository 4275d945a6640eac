//! Promise 2: a failing model does not take the process or its neighbours down.
//!
//! The real MiniLM and SmolLM2 models are broken on purpose through the test-only `fault_*` roster
//! hooks (accepted only by builds with the `fault-injection` feature): loads that fail, warmups that
//! panic, batches that fail or panic, once or for good, and chat steps that panic. Each test checks
//! what clients get, what `/health` and `/metrics` say, and that a healthy neighbour keeps serving.
#![cfg(feature = "fault-injection")]

mod common;

use common::{metric, TestServer, MINILM, SMOLLM};
use serde_json::{json, Value};
use std::io::BufRead;
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
    assert_eq!(health["actors"][MINILM]["state"], "ready");
    assert_eq!(health["actors"][MINILM]["restarts"], 2);
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
        h["actors"][BROKEN]["state"] == "failed" && h["actors"][MINILM]["state"] == "ready"
    });
    assert!(health["actors"][BROKEN]["last_error"].as_str().unwrap().contains("load failure"));
    assert_eq!(health["actors"][BROKEN]["restarts"], 2, "restarts stop at the budget");
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
    assert_eq!(server.get("/health").json()["actors"][BROKEN]["restarts"], 2);
}

/// As in the seed, a warmup that fails (without a panic: the model still serves) makes `/health`
/// unhealthy and is listed, unless the roster says the model may serve without it.
#[test]
fn a_failed_warmup_is_unhealthy_unless_the_roster_allows_it() {
    let server = TestServer::builder().roster(&entry(MINILM, "fault_warmup_errors = 1")).env("MODELS", "").start();
    let health = server.get("/health");
    assert_eq!(health.status, 503);
    let health = health.json();
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["warmup_failures"][0]["model"], MINILM);
    assert!(health["warmup"]["failures"][0]["error"].as_str().unwrap().contains("warmup error"));
    assert_eq!(health["warmup"]["capabilities"][MINILM]["embeddings"], false);
    assert_eq!(embed(&server, MINILM, "hello").status, 200, "the model serves all the same");
    drop(server);

    let lenient = entry(MINILM, "fault_warmup_errors = 1\nwarmup_optional = true");
    let server = TestServer::builder().roster(&lenient).env("MODELS", "").start();
    let health = server.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["warmup_failures"][0]["model"], MINILM, "still listed");
}

#[test]
fn a_warmup_that_panics_restarts_the_model_which_then_serves() {
    let server = TestServer::builder().roster(&entry(MINILM, "fault_warmup_panics = 1")).env("MODELS", "").start();
    let health = server.get("/health").json();
    let model = &health["actors"][MINILM];
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
    let health = server.wait_health("the model to be ready again", |h| h["actors"][MINILM]["state"] == "ready");
    assert_eq!(health["actors"][MINILM]["restarts"], 1);
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
            matches!(h["actors"][BROKEN]["state"].as_str(), Some("ready" | "failed"))
        });
    }
    let health = server.get("/health").json();
    assert_eq!(health["actors"][BROKEN]["state"], "failed");
    assert_eq!(health["actors"][BROKEN]["restarts"], 2);
    // From now on it answers 503, even to healthy input; the neighbour is untouched.
    assert!(embed(&server, BROKEN, "healthy text").expect_error(503).contains("panicked"));
    assert_eq!(embed(&server, MINILM, "healthy text").status, 200);
    assert_eq!(restarts(&server, BROKEN), Some(2.0));
    let failed: Value = health["actors"][BROKEN].clone();
    assert!(failed["last_error"].as_str().unwrap().contains("panicked"), "{failed}");
}

// ---------------------------------------------------------------------------------------------
// Chat: a decode step that panics
// ---------------------------------------------------------------------------------------------

/// SmolLM2 served under another id, with the chat fault hook: a request whose messages contain
/// the marker makes the engine panic in the first decode step it joins, with whatever other
/// sequences share that step.
const FAULTY_CHAT: &str = "faulty-smollm";
const MARKER: &str = "PANIC";

/// A chat request to the faulty model; `extra` adds or overrides fields.
fn chat(user: &str, extra: Value) -> Value {
    let mut body = common::pinned_chat(FAULTY_CHAT, user);
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn france() -> Value {
    chat("What is the capital of France?", json!({}))
}

fn poisoned(extra: Value) -> Value {
    chat(&format!("{MARKER} What is the capital of France?"), extra)
}

/// A long generation, streamed: it is still running when the poisoned request joins its batch.
fn story() -> Value {
    chat("Write a long story about a dragon who learns to cook.", json!({ "stream": true, "max_tokens": 400 }))
}

fn answer(r: &common::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

/// A chat stream read frame by frame as it arrives.
struct Sse {
    lines: std::io::Lines<std::io::BufReader<reqwest::blocking::Response>>,
}

/// How a stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// A finish chunk, then `[DONE]`.
    Finished { reason: String },
    /// An error frame, then `[DONE]`.
    Failed { error: Value },
}

impl Sse {
    fn open(server: &TestServer, body: Value) -> Sse {
        let r = common::client().post(server.url("/v1/chat/completions")).json(&body).send().expect("request sent");
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Sse { lines: std::io::BufReader::new(r).lines() }
    }

    /// The next frame's payload; `None` at the end of the body. A hang fails the read after the
    /// client's timeout.
    fn frame(&mut self) -> Option<String> {
        for line in self.lines.by_ref() {
            let line = line.expect("the stream is read to its end, not cut or left hanging");
            if line.is_empty() {
                continue;
            }
            return Some(line.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data frame: {line}")).to_string());
        }
        None
    }

    /// Reads up to the first content chunk: the sequence is in the running batch and generating.
    fn first_content(&mut self) -> String {
        loop {
            let frame = self.frame().expect("the stream ended before any content");
            let chunk: Value = serde_json::from_str(&frame).unwrap_or_else(|_| panic!("not JSON: {frame}"));
            assert!(chunk.get("error").is_none(), "failed before the poisoned request: {chunk}");
            if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                return text.to_string();
            }
        }
    }

    /// Reads the rest: it must end cleanly, with a finish chunk or one error frame, then `[DONE]`
    /// and nothing after it.
    fn end(mut self) -> StreamEnd {
        let end = loop {
            let frame = self.frame().expect("the stream ended without [DONE]");
            assert_ne!(frame, "[DONE]", "[DONE] without a finish chunk or an error frame");
            let chunk: Value = serde_json::from_str(&frame).unwrap_or_else(|_| panic!("not JSON: {frame}"));
            if let Some(error) = chunk.get("error") {
                break StreamEnd::Failed { error: error.clone() };
            }
            if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
                break StreamEnd::Finished { reason: reason.to_string() };
            }
        };
        assert_eq!(self.frame().as_deref(), Some("[DONE]"), "{end:?} is followed by [DONE]");
        assert_eq!(self.frame(), None, "nothing after [DONE]");
        end
    }
}

/// An error frame in OpenAI's error shape, naming the model and the injected panic: the same error a
/// non-streaming request gets as its 500.
fn assert_generation_failed(error: &Value) {
    assert_eq!(error["type"], "server_error", "{error}");
    assert_eq!(error["code"], "internal_error", "{error}");
    assert!(error.get("param").is_some(), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("panicked") && message.contains("fault injection"), "{message}");
    assert!(message.contains("failed on this request"), "the model is named: {message}");
}

/// A request carrying the marker makes a decode step of the real SmolLM2 panic while two long
/// streams share the running batch. The poisoned request gets a clear 500; the two streams end
/// cleanly (an error frame, or their finish if they were already done), none is left hanging; the
/// supervisor reloads the model, which gives the same "Paris" answer as before. The same marker in
/// a streamed request gives a 200 stream whose only news is one error frame; a request sent right
/// behind it waits out the reload and is answered.
#[test]
fn a_chat_step_that_panics_fails_its_batch_cleanly_and_the_model_serves_again() {
    let server = TestServer::builder()
        .roster(&common::roster_with_copy(SMOLLM, FAULTY_CHAT, &format!("fault_panic_marker = \"{MARKER}\"")))
        .env("MODELS", FAULTY_CHAT)
        .start();
    let before = answer(&server.chat(france()));
    assert!(before.contains("Paris"), "{before}");

    // Two long generations are running: each has streamed its first words.
    let mut stories = [Sse::open(&server, story()), Sse::open(&server, story())];
    for s in &mut stories {
        s.first_content();
    }
    // The poisoned request joins their batch and the next step panics.
    let failed = server.chat(poisoned(json!({})));
    let message = failed.expect_error(500);
    assert!(message.contains(FAULTY_CHAT) && message.contains("fault injection"), "{message}");
    let ends: Vec<StreamEnd> = stories.into_iter().map(Sse::end).collect();
    for end in &ends {
        match end {
            StreamEnd::Failed { error } => assert_generation_failed(error),
            StreamEnd::Finished { reason } => assert!(reason == "stop" || reason == "length", "{reason}"),
        }
    }
    // 400 tokens take seconds: the stories were mid-generation and shared the panicking step.
    assert!(ends.iter().any(|e| matches!(e, StreamEnd::Failed { .. })), "{ends:?}");

    let health = server.wait_health("the chat model to be back", |h| {
        h["actors"][FAULTY_CHAT]["state"] == "ready" && h["actors"][FAULTY_CHAT]["restarts"] == 1
    });
    let model = &health["actors"][FAULTY_CHAT];
    assert!(model["last_error"].as_str().unwrap().contains("fault injection"), "{model}");
    assert_eq!(answer(&server.chat(france())), before, "the reloaded model answers as before");

    // Streaming: admitted, so the response is a 200 stream; it carries the error, then [DONE].
    let mut stream = Sse::open(&server, poisoned(json!({ "stream": true })));
    let role: Value = serde_json::from_str(&stream.frame().unwrap()).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant", "{role}");
    match stream.end() {
        StreamEnd::Failed { error } => assert_generation_failed(&error),
        other => panic!("the poisoned stream should fail, got {other:?}"),
    }
    // Sent while the model reloads: it waits in the queue and is served by the new engine.
    assert_eq!(answer(&server.chat(france())), before);

    let health = server.wait_health("the second restart", |h| h["actors"][FAULTY_CHAT]["state"] == "ready");
    assert_eq!(health["actors"][FAULTY_CHAT]["restarts"], 2);
    assert_eq!(restarts(&server, FAULTY_CHAT), Some(2.0));
    // Every request that failed is counted with its error's status, streamed or not: the two poisoned
    // requests and the stories that shared the panicking step.
    let failed_stories = ends.iter().filter(|e| matches!(e, StreamEnd::Failed { .. })).count();
    let served = format!("chat_requests_total{{model=\"{FAULTY_CHAT}\",status=\"500\"}}");
    assert_eq!(metric(&server.metrics(), &served), Some(2.0 + failed_stories as f64));
}

/// A batched chat step that runs out of device memory (simulated after the step ran, as a GPU
/// reports it: `fault_oom_above = 1`) is rolled back, split and retried: every request of the batch
/// gets the answer it gets alone, none fails, and `chat_batch_oom_retries_total` counts the splits.
#[test]
fn a_chat_batch_that_runs_out_of_memory_is_split_and_every_request_answered() {
    let model = "oom-smollm";
    let server = TestServer::builder()
        .roster(&common::roster_with_copy(SMOLLM, model, "fault_oom_above = 1"))
        .env("MODELS", model)
        .start();
    let questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello."];
    let request = |q: &str| {
        let mut body = common::pinned_chat(model, q);
        body["max_tokens"] = json!(24);
        body
    };
    // Alone: steps of one sequence never split.
    let alone: Vec<String> = questions.iter().map(|q| answer(&server.chat(request(q)))).collect();
    let retries = || metric(&server.metrics(), &format!("chat_batch_oom_retries_total{{model=\"{model}\"}}"));
    assert_eq!(retries().unwrap_or(0.0), 0.0);
    // Together: the batched steps split, and each answer is the one it got alone.
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = questions.iter().map(|q| s.spawn(|| answer(&server.chat(request(q))))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    assert!(alone[0].contains("Paris"), "{}", alone[0]);
    let split = retries().unwrap_or(0.0);
    assert!(split >= 1.0, "the four requests shared steps, which were split: {split}");
}
