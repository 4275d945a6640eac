//! `/v1/rerank` (the seed's shape) and `/rerank` (text-embeddings-inference's) end to end, on tiny
//! random cross-encoders whose logits `transformers` computed once (`scripts/references/
//! tiny_rerankers.py`): a BERT one (pooler head, token types for the document) and an XLM-RoBERTa one
//! (`classifier.dense` / `out_proj` head, positions after the padding id). No real reranker weights are
//! reachable from our machines; the tiny checkpoints use all-MiniLM-L6-v2's vocabulary.

mod common;

use common::{metric, model_files, tiny_model_folder, TestServer, MINILM};
use serde_json::{json, Value};
use std::path::Path;

struct Reference {
    query: String,
    documents: Vec<String>,
    logits: Vec<f32>,
}

fn reference(kind: &str) -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/tiny-rerank-{kind}/reference.json"));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    Reference {
        query: r["query"].as_str().unwrap().into(),
        documents: r["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().into()).collect(),
        logits: r["logits"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap() as f32).collect(),
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// A server with both tiny cross-encoders (their folders link the fixture's weights and MiniLM's
/// tokenizer) and MiniLM for embeddings.
fn server(dir: &Path) -> TestServer {
    let (_, minilm) = model_files(MINILM);
    let mut roster = String::new();
    for kind in ["bert", "xlmr"] {
        let folder = tiny_model_folder(dir, &format!("tiny-rerank-{kind}"), &["config.json", "model.safetensors"]);
        roster += &format!(
            "[[models]]\nid = \"tiny-{kind}\"\nkind = \"rerank\"\nprecision = \"f32\"\npath = {:?}\n",
            folder.display().to_string()
        );
    }
    roster +=
        &format!("[[models]]\nid = \"{MINILM}\"\nkind = \"embedding\"\npath = {:?}\n", minilm.display().to_string());
    TestServer::builder().roster(&roster).env("MODELS", format!("tiny-bert,tiny-xlmr,{MINILM}")).start()
}

fn rerank(server: &TestServer, path: &str, body: Value) -> common::Response {
    common::Response::from(common::client().post(server.url(path)).json(&body).send().unwrap())
}

/// The reference's documents, best first.
fn expected_order(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
}

#[test]
fn both_heads_rank_as_transformers_scores() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    for kind in ["bert", "xlmr"] {
        let r = reference(kind);
        let model = format!("tiny-{kind}");
        let response = rerank(
            &server,
            "/v1/rerank",
            json!({ "model": model, "query": r.query, "documents": r.documents, "top_n": 3 }),
        );
        assert_eq!(response.status, 200, "{}", response.text);
        let body = response.json();
        assert_eq!(body["model"], model.as_str());
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 3, "top_n keeps the best three");
        let order: Vec<usize> = results.iter().map(|x| x["index"].as_u64().unwrap() as usize).collect();
        assert_eq!(order, expected_order(&r.logits)[..3], "{kind}");
        for result in results {
            let i = result["index"].as_u64().unwrap() as usize;
            let score = result["relevance_score"].as_f64().unwrap() as f32;
            assert!(
                (score - sigmoid(r.logits[i])).abs() < 1e-4,
                "{kind} document {i}: {score} vs {}",
                sigmoid(r.logits[i])
            );
            assert_eq!(result["document"], r.documents[i].as_str());
        }
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 20, "{body}");

        // TEI's shape: raw logits, every text, the text itself when asked.
        let tei = rerank(
            &server,
            "/rerank",
            json!({ "model": model, "query": r.query, "texts": r.documents, "raw_scores": true, "return_text": true }),
        );
        assert_eq!(tei.status, 200, "{}", tei.text);
        let ranked = tei.json();
        let ranked = ranked.as_array().unwrap();
        assert_eq!(ranked.len(), r.documents.len());
        for (rank, result) in ranked.iter().enumerate() {
            let i = result["index"].as_u64().unwrap() as usize;
            assert_eq!(i, expected_order(&r.logits)[rank]);
            let logit = result["score"].as_f64().unwrap() as f32;
            assert!((logit - r.logits[i]).abs() < 1e-4, "{kind} document {i}: logit {logit} vs {}", r.logits[i]);
            assert_eq!(result["text"], r.documents[i].as_str());
        }
    }
    let text = server.metrics();
    assert_eq!(metric(&text, "rerank_requests_total{model=\"tiny-bert\",status=\"200\"}"), Some(2.0), "{text}");
}

#[test]
fn rerank_mistakes_get_openai_shaped_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let r = reference("bert");
    let cases = [
        (json!({ "model": "tiny-bert", "query": r.query, "documents": [] }), 400, "documents"),
        (json!({ "model": "tiny-bert", "query": "", "documents": ["a"] }), 400, "query"),
        (json!({ "model": "tiny-bert", "query": "q", "documents": ["a", ""] }), 400, "documents[1]"),
        (json!({ "model": "tiny-bert", "query": "q", "documents": ["a"], "top_n": 0 }), 400, "top_n"),
        (json!({ "model": "tiny-bert", "query": "q", "documents": ["a", 7] }), 400, "documents[1] must be a string"),
        (json!({ "model": MINILM, "query": "q", "documents": ["a"] }), 400, "does not support rerank"),
        (json!({ "model": "nope", "query": "q", "documents": ["a"] }), 404, "nope"),
    ];
    for (body, status, needle) in cases {
        let message = rerank(&server, "/v1/rerank", body.clone()).expect_error(status);
        assert!(message.contains(needle), "{body}: {message}");
    }
    // Cohere's document objects are read as their text.
    let objects =
        rerank(&server, "/v1/rerank", json!({ "model": "tiny-bert", "query": "q", "documents": [{ "text": "a" }] }));
    assert_eq!(objects.status, 200, "{}", objects.text);
    // TEI's requests name no model: with two rerankers served, the client must choose.
    let ambiguous = rerank(&server, "/rerank", json!({ "query": "q", "texts": ["a"] })).expect_error(400);
    assert!(ambiguous.contains("tiny-bert") && ambiguous.contains("tiny-xlmr"), "{ambiguous}");
    // An embedding request to a reranker is refused the same way.
    let embed = server.embed(json!({ "model": "tiny-bert", "input": "q" })).expect_error(400);
    assert!(embed.contains("does not support embeddings"), "{embed}");
}
