//! Upstream models: roster entries another OpenAI-compatible server answers. Here the upstream is a
//! second sis (MiniLM and SmolLM2, behind an API key), and the front serves them under names of its
//! own: answers equal to the upstream's, streams passed through, its key sent, an unreachable
//! upstream a 502 and `reachable: false` in `/health`, every request counted.

mod common;

use common::{metric, pinned_chat, TestServer, MINILM, SMOLLM};
use serde_json::{json, Value};

fn stream_text(text: &str) -> String {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str::<Value>(data).unwrap())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn upstream_models_forward_to_another_openai_compatible_server() {
    let upstream = TestServer::builder().env("MODELS", format!("{MINILM},{SMOLLM}")).env("API_KEYS", "sekrit").start();
    let base = format!("{}/v1", upstream.base);
    let roster = format!(
        "[[models]]\nid = \"remote-minilm\"\nkind = \"embedding\"\nupstream = {base:?}\nupstream_model = {MINILM:?}\n\
         api_key_env = \"UPSTREAM_KEY\"\n\n\
         [[models]]\nid = \"remote-chat\"\nkind = \"chat\"\nupstream = {base:?}\nupstream_model = {SMOLLM:?}\n\
         api_key_env = \"UPSTREAM_KEY\"\n\n\
         [[models]]\nid = \"keyless\"\nkind = \"chat\"\nupstream = {base:?}\nupstream_model = {SMOLLM:?}\n\n\
         [[models]]\nid = \"nowhere\"\nkind = \"chat\"\nupstream = \"http://127.0.0.1:9/v1\"\n"
    );
    let front = TestServer::builder()
        .roster(&roster)
        .env("MODELS", "remote-minilm,remote-chat,keyless,nowhere")
        .env("UPSTREAM_KEY", "sekrit")
        .start();

    // Embeddings: the upstream's own vectors.
    let input = json!(["A man is eating food.", "A man is eating a piece of bread."]);
    let request = common::client().post(upstream.url("/v1/embeddings")).bearer_auth("sekrit");
    let direct = common::Response::from(request.json(&json!({ "model": MINILM, "input": input })).send().unwrap());
    let direct = direct.vectors();
    let forwarded = front.embed(json!({ "model": "remote-minilm", "input": input })).vectors();
    assert_eq!(direct, forwarded);

    // Chat, whole and streamed: the same greedy answer.
    let whole = front.chat(pinned_chat("remote-chat", "What is the capital of France?"));
    assert_eq!(whole.status, 200, "{}", whole.text);
    let answer = whole.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(answer.contains("Paris"), "{answer}");
    let mut body = pinned_chat("remote-chat", "What is the capital of France?");
    body["stream"] = json!(true);
    let streamed = front.chat(body);
    assert!(streamed.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert!(streamed.text.trim_end().ends_with("data: [DONE]"), "{}", streamed.text);
    assert_eq!(stream_text(&streamed.text), answer);

    // The upstream's own refusal (no key) comes through as it is; an upstream that does not answer is
    // a 502 in OpenAI's error shape.
    let refused = front.chat(pinned_chat("keyless", "Hi"));
    assert_eq!(refused.status, 401, "{}", refused.text);
    let unreachable = front.chat(pinned_chat("nowhere", "Hi"));
    assert!(unreachable.expect_error(502).contains("did not answer"));
    // Wrong endpoint for the model: a 400 like a local model's.
    front.embed(json!({ "model": "remote-chat", "input": "x" })).expect_error(400);

    let health = front.wait_health("the probes", |h| {
        h["actors"]["nowhere"]["upstream"]["reachable"] == false
            && h["actors"]["remote-chat"]["upstream"]["reachable"] == true
    });
    assert_eq!(health["actors"]["remote-chat"]["state"], "ready");
    assert_eq!(health["warmup"]["completed"], true, "upstream models have no warmup to wait for");
    assert_eq!(health["actors"]["remote-chat"]["upstream"]["url"], base);
    let models = front.get("/v1/models").json();
    let listed = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "remote-chat").unwrap();
    assert_eq!(listed["upstream"], base);

    let metrics = front.metrics();
    let count = |model: &str, status: &str| {
        metric(&metrics, &format!("chat_requests_total{{model=\"{model}\",status=\"{status}\"}}")).unwrap_or(0.0)
    };
    assert_eq!((count("remote-chat", "200"), count("keyless", "401"), count("nowhere", "502")), (2.0, 1.0, 1.0));
    let embedded = metric(&metrics, "embedding_requests_total{model=\"remote-minilm\",status=\"200\"}");
    assert_eq!(embedded, Some(1.0));
}

/// An upstream whose key variable is not set cannot start: it fails alone, naming the variable.
#[test]
fn an_upstream_without_its_key_fails_alone() {
    let roster = "[[models]]\nid = \"remote\"\nkind = \"chat\"\nupstream = \"http://127.0.0.1:9/v1\"\n\
                  api_key_env = \"SIS_TEST_UNSET_KEY\"\n";
    let front = TestServer::builder().roster(roster).env("MODELS", "remote").live_only().start();
    let health = front.wait_health("the entry to fail", |h| h["actors"]["remote"]["state"] == "failed");
    let reason = health["actors"]["remote"]["last_error"].as_str().unwrap();
    assert!(reason.contains("SIS_TEST_UNSET_KEY"), "{reason}");
}
