//! `/v1/completions` and log-probabilities, on the real SmolLM2 and Qwen2.5-Coder weights and on the
//! tiny Gemma 3 whose logits `transformers` computed (`scripts/references/tiny_gemma3.py`).
//!
//! A completion of the prompt the chat template renders is the chat answer; streamed equals whole;
//! `echo` with `logprobs` and `max_tokens: 0` scores a prompt (what lm-evaluation-harness's
//! loglikelihood uses) with the log-softmax of the reference logits; and a sequence's
//! log-probabilities do not change with the company it keeps in the batch.

mod common;

use common::{client, pinned_chat, Response, TestServer, SMOLLM};
use serde_json::{json, Value};
use std::path::Path;

const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct";
const QUESTION: &str = "What is the capital of France?";

/// The ChatML prompt both models' templates render for [`pinned_chat`].
fn chatml(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

fn complete(server: &TestServer, body: Value) -> Response {
    Response::from(client().post(server.url("/v1/completions")).json(&body).send().unwrap())
}

fn text(r: &Response, i: usize) -> String {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["choices"][i]["text"].as_str().unwrap().to_string()
}

#[test]
fn a_completion_of_the_rendered_prompt_is_the_chat_answer_streamed_or_not() {
    let server = TestServer::builder().env("MODELS", format!("{SMOLLM},{QWEN}")).start();
    for model in [SMOLLM, QWEN] {
        let chat = server.chat(pinned_chat(model, QUESTION));
        assert_eq!(chat.status, 200, "{}", chat.text);
        let answer = chat.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        assert!(answer.contains("Paris"), "{model}: {answer}");
        let body = json!({ "model": model, "prompt": chatml(QUESTION), "max_tokens": 32, "temperature": 0 });
        let whole = complete(&server, body.clone());
        assert_eq!(text(&whole, 0), answer, "{model}");
        let whole = whole.json();
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(whole["usage"]["prompt_tokens"], chat.json()["usage"]["prompt_tokens"], "{model}: same tokens");

        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        let streamed = complete(&server, streaming);
        assert!(streamed.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let events: Vec<&str> = streamed.text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
        assert_eq!(events.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let joined: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
        assert_eq!(joined, answer, "{model}: streamed");
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
    }

    // Two prompts in one request: two choices, each as it would be alone.
    let both = complete(
        &server,
        json!({ "model": SMOLLM, "prompt": [chatml(QUESTION), "The capital of Germany is"], "max_tokens": 8, "temperature": 0 }),
    );
    let alone = complete(
        &server,
        json!({ "model": SMOLLM, "prompt": "The capital of Germany is", "max_tokens": 8, "temperature": 0 }),
    );
    assert_eq!(text(&both, 1), text(&alone, 0));
    assert_eq!(both.json()["choices"][1]["index"], 1);
}

#[test]
fn chat_logprobs_name_each_generated_token_with_its_alternatives() {
    let server = TestServer::builder().env("MODELS", SMOLLM).start();
    let mut body = pinned_chat(SMOLLM, QUESTION);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let r = server.chat(body.clone());
    assert_eq!(r.status, 200, "{}", r.text);
    let r = r.json();
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    assert_eq!(content.len() as u64, r["usage"]["completion_tokens"].as_u64().unwrap());
    let spelled: String = content.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert!(spelled.starts_with(r["choices"][0]["message"]["content"].as_str().unwrap()), "{spelled}");
    for token in content {
        let top = token["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lp = |v: &Value| v["logprob"].as_f64().unwrap();
        assert!(lp(&top[0]) >= lp(&top[1]) && lp(&top[1]) >= lp(&top[2]) && lp(&top[0]) <= 0.0);
        // Greedy without penalties picks the most likely token.
        assert_eq!((token["token"].clone(), lp(token)), (top[0]["token"].clone(), lp(&top[0])));
        let bytes: Vec<u8> = token["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), token["token"].as_str().unwrap());
    }
    // Streamed, the same tokens arrive chunk by chunk.
    body["stream"] = json!(true);
    let streamed = server.chat(body);
    let tokens: Vec<Value> = streamed
        .text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .flat_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(&tokens, content);
    server
        .chat(json!({ "model": SMOLLM, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2 }))
        .expect_error(400);
}

/// `echo` + `logprobs` + `max_tokens: 0` on the tiny Gemma 3: each prompt token's log-probability is the
/// log-softmax of `transformers`' logits at the position before it.
#[test]
fn echo_scores_a_prompt_with_the_reference_log_probabilities() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gemma3");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let roster = format!(
        "[[models]]\nid = \"gemma\"\nkind = \"chat\"\npath = {:?}\nbase_model = true\n",
        dir.display().to_string()
    );
    let server = TestServer::builder().roster(&roster).env("MODELS", "gemma").start();
    let ids = reference["ids"].clone();
    let r = complete(&server, json!({ "model": "gemma", "prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 2 }));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = r.json();
    let logprobs = &r["choices"][0]["logprobs"];
    let scored = logprobs["token_logprobs"].as_array().unwrap();
    assert_eq!(scored.len(), ids.as_array().unwrap().len());
    assert!(scored[0].is_null() && logprobs["top_logprobs"][0].is_null(), "nothing predicts the first token");
    assert_eq!(r["usage"]["completion_tokens"], 0);
    let positions = reference["positions"].as_array().unwrap();
    let mut checked = 0;
    for (p, logits) in positions.iter().zip(reference["logits"].as_array().unwrap()) {
        let p = p.as_u64().unwrap() as usize;
        let Some(next) = ids.get(p + 1) else { continue };
        let logits: Vec<f64> = logits.as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        let want = logits[next.as_u64().unwrap() as usize] - lse;
        let got = scored[p + 1].as_f64().unwrap();
        assert!((got - want).abs() < 2e-3, "position {}: {got} vs {want}", p + 1);
        checked += 1;
    }
    assert!(checked >= 6);
    // A base model has no chat: it says where to go.
    let refused = server.chat(json!({ "model": "gemma", "messages": [{"role": "user", "content": "hi"}] }));
    assert!(refused.expect_error(400).contains("/v1/completions"));
}

/// A prompt's log-probabilities are the same bits alone and sharing the batch with seven others.
#[test]
fn log_probabilities_do_not_depend_on_the_batch() {
    let server = TestServer::builder().env("MODELS", SMOLLM).start();
    let score = |prompt: &str| json!({ "model": SMOLLM, "prompt": prompt, "max_tokens": 4, "temperature": 0, "echo": true, "logprobs": 3 });
    let target = "The quick brown fox jumps over the lazy dog, and then it";
    let logprobs = |r: Response| {
        assert_eq!(r.status, 200, "{}", r.text);
        let logprobs = r.json()["choices"][0]["logprobs"].clone();
        assert!(logprobs["token_logprobs"].as_array().unwrap().len() > 10);
        logprobs
    };
    let alone = logprobs(complete(&server, score(target)));
    let busy = std::thread::scope(|s| {
        let others: Vec<_> = (0..7)
            .map(|i| {
                let server = &server;
                s.spawn(move || complete(server, score(&format!("Story {i}: once upon a time, far away, there"))))
            })
            .collect();
        let r = complete(&server, score(target));
        for o in others {
            assert_eq!(o.join().unwrap().status, 200);
        }
        logprobs(r)
    });
    assert_eq!(alone, busy);
    // And the target did share steps with the others.
    let metrics = server.metrics();
    let steps = common::metric(&metrics, &format!("chat_batch_size_count{{model=\"{SMOLLM}\"}}")).unwrap();
    let single = common::metric(&metrics, &format!("chat_batch_size_bucket{{model=\"{SMOLLM}\",le=\"1\"}}")).unwrap();
    assert!(single < steps, "some steps ran more than one sequence");
}

#[test]
fn completion_mistakes_get_clear_errors() {
    let server = TestServer::builder().env("MODELS", SMOLLM).start();
    let ask = |extra: Value| {
        let mut body = json!({ "model": SMOLLM, "prompt": "Hello" });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        complete(&server, body)
    };
    assert!(ask(json!({ "suffix": "end" })).expect_error(400).contains("suffix"));
    assert!(ask(json!({ "n": 2 })).expect_error(400).contains("n=1"));
    assert!(ask(json!({ "logprobs": 6 })).expect_error(400).contains("logprobs"));
    assert!(ask(json!({ "max_tokens": 0 })).expect_error(400).contains("max_tokens"));
    assert!(ask(json!({ "prompt": [] })).expect_error(400).contains("prompt"));
    assert!(ask(json!({ "prompt": [1, -2] })).expect_error(400).contains("prompt"));
    assert!(ask(json!({ "prompt": [99999999] })).expect_error(400).contains("vocabulary"));
    assert!(ask(json!({ "prompt": {"a": 1} })).expect_error(400).contains("prompt"));
    let r = ask(json!({ "max_tokens": 3, "temperature": 0 }));
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
}
