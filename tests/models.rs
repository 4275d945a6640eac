//! The models users bring: a Hub id in `MODELS` served by name with its kind read from its own files,
//! the seed's `models.yaml` catalogue as a roster, a model that cannot start failing alone, and the
//! architectures beyond BERT (MPNet) checked against sentence-transformers.
//!
//! Our machines cannot reach the Hub, so the Hub ids here live in a Hugging Face cache the test lays
//! out itself (the standard `models--org--name` layout, links to the real weights) with downloads off:
//! the same resolution users get, minus the network.

mod common;

use common::{dot, model_files, norm, tiny_model_folder, TestServer, MINILM, SMOLLM};
use serde_json::{json, Value};
use std::path::Path;

const FOOD: &str = "A man is eating food.";
const BREAD: &str = "A man is eating a piece of bread.";

/// Lays out `org/name` in a Hugging Face cache with `files` (name → the real file to link to).
fn cached_repo(cache: &Path, repo: &str, files: &[(&str, &Path)]) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots/0123456789abcdef0123456789abcdef01234567");
    for (name, target) in files {
        let link = snapshot.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), "0123456789abcdef0123456789abcdef01234567").unwrap();
}

fn model_state(health: &Value, id: &str) -> String {
    health["actors"][id]["state"].as_str().unwrap_or_default().to_string()
}

fn capital_of_france(server: &TestServer, model: &str) -> String {
    let response = server.chat(common::pinned_chat(model, "What is the capital of France?"));
    assert_eq!(response.status, 200, "{}", response.text);
    response.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

#[test]
fn hub_ids_are_served_by_name_with_their_kind_read_from_their_files() {
    let cache = tempfile::tempdir().unwrap();
    let (_, minilm) = model_files(MINILM);
    let files: Vec<(&str, std::path::PathBuf)> = [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ]
    .iter()
    .map(|f| (*f, minilm.join(f)))
    .collect();
    let files: Vec<(&str, &Path)> = files.iter().map(|(f, p)| (*f, p.as_path())).collect();
    cached_repo(cache.path(), "acme/minilm", &files);
    // A GGUF-only repo: no config.json; the chat model is served from its one GGUF file.
    let (smol_entry, smol) = model_files(SMOLLM);
    let gguf = smol.join(smol_entry.file.unwrap());
    cached_repo(cache.path(), "acme/smol-GGUF", &[("smol.Q4_1.gguf", &gguf)]);
    // An architecture sis does not run: it fails alone, naming itself, while the others serve.
    let strange = cache.path().join("strange-config.json");
    std::fs::write(&strange, r#"{"architectures": ["MambaForTokens"], "model_type": "mamba"}"#).unwrap();
    cached_repo(cache.path(), "acme/mamba", &[("config.json", &strange)]);

    let server = TestServer::builder()
        .env("HF_HUB_CACHE", cache.path().display())
        .env("AUTO_DOWNLOAD_MODELS", "0")
        .env("MODELS", "acme/minilm,acme/smol-GGUF,acme/mamba")
        .live_only()
        .start();
    let health = server.wait_health("the two good models ready", |h| {
        model_state(h, "acme/minilm") == "ready" && model_state(h, "acme/smol-GGUF") == "ready"
    });
    assert_eq!(model_state(&health, "acme/mamba"), "failed");
    let reason = health["actors"]["acme/mamba"]["last_error"].as_str().unwrap();
    assert!(reason.contains("MambaForTokens") && reason.contains("kind"), "{reason}");
    assert_eq!(health["status"], "unhealthy", "a failed model makes the server unhealthy");
    assert_eq!(health["actors"]["acme/minilm"]["capabilities"], json!(["embeddings"]));
    assert_eq!(health["actors"]["acme/smol-GGUF"]["capabilities"], json!(["chat"]));

    let v = server.embed(json!({ "model": "acme/minilm", "input": [FOOD, BREAD] })).vectors();
    assert!((dot(&v[0], &v[1]) - 0.755).abs() < 0.01, "cos = {}", dot(&v[0], &v[1]));
    assert!(capital_of_france(&server, "acme/smol-GGUF").contains("Paris"));

    let refused = server.embed(json!({ "model": "acme/mamba", "input": FOOD }));
    let message = refused.expect_error(503);
    assert!(message.contains("could not start") && message.contains("MambaForTokens"), "{message}");
    let listed = server.get("/v1/models").json();
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["acme/mamba", "acme/minilm", "acme/smol-GGUF"]);
}

#[test]
fn the_seed_catalogue_starts_unchanged_and_repo_ids_find_roster_entries() {
    // The seed's models.yaml, as an existing deployment has it; MODELS picks from it as in the seed.
    let catalogue = r#"
models:
  - hf_repo_id: "sentence-transformers/all-MiniLM-L6-v2"
    handler: "app.models.hf_embedding.HFEmbeddingModel"
    supports_structured_outputs: false
  - hf_repo_id: "Systran/faster-whisper-tiny.en"
    handler: "app.models.whisper.WhisperASR"
"#;
    let server = TestServer::builder()
        .roster_file("models.yaml", catalogue)
        .env("MODELS", "sentence-transformers/all-MiniLM-L6-v2")
        .env("AUTO_DOWNLOAD_MODELS", "0")
        .start();
    let v =
        server.embed(json!({ "model": "sentence-transformers/all-MiniLM-L6-v2", "input": [FOOD, BREAD] })).vectors();
    assert!((dot(&v[0], &v[1]) - 0.755).abs() < 0.01);
    let health = server.get("/health").json();
    assert_eq!(health["actors"].as_object().unwrap().len(), 1, "only what MODELS names: {health}");
    drop(server);

    // With sis's own roster, a Hub repo id finds the entry for that repo (its package mirror and
    // settings); the model answers to the name asked for and to its roster id.
    let server = TestServer::builder().env("MODELS", "sentence-transformers/all-MiniLM-L6-v2").start();
    for name in ["sentence-transformers/all-MiniLM-L6-v2", MINILM] {
        let v = server.embed(json!({ "model": name, "input": FOOD })).vectors();
        assert!((norm(&v[0]) - 1.0).abs() < 1e-4, "{name}");
    }
    let listed = server.get("/v1/models").json();
    assert_eq!(listed["data"][0]["id"], "sentence-transformers/all-MiniLM-L6-v2");
}

/// Reference vectors of sentence-transformers (`scripts/references/embeddings.py`, committed under
/// `tests/fixtures/`): every vector within 1e-3 cosine of the reference, sent together or alone.
fn matches_reference(model: &str, fixture: &str) {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/tests/fixtures/{fixture}.json", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    )
    .unwrap();
    let sentences: Vec<&str> = reference["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let expected: Vec<Vec<f32>> = reference["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    let server = TestServer::builder().env("MODELS", model).start();
    let together = server.embed(json!({ "model": model, "input": sentences })).vectors();
    for (i, (got, want)) in together.iter().zip(&expected).enumerate() {
        assert_eq!(got.len(), want.len());
        let cosine = dot(got, want) / (norm(got) * norm(want));
        assert!(cosine > 0.999, "{model}, sentence {i}: cosine {cosine} to sentence-transformers");
        let alone = &server.embed(json!({ "model": model, "input": sentences[i] })).vectors()[0];
        let drift = got.iter().zip(alone).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(drift < 1e-5, "{model}, sentence {i}: batched and alone differ by {drift}");
    }
    // The model's own query prompt, named as sentence-transformers names it or as an input type.
    if let Some(queries) = reference.get("query_vectors").and_then(Value::as_array) {
        for body in [json!({ "prompt_name": "query" }), json!({ "input_type": "search_query" })] {
            let mut request = json!({ "model": model, "input": sentences[..queries.len()] });
            request.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            let got = server.embed(request).vectors();
            for (i, want) in queries.iter().enumerate() {
                let want: Vec<f32> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                let cosine = dot(&got[i], &want) / (norm(&got[i]) * norm(&want));
                assert!(cosine > 0.999, "{model}, query {i} ({body}): cosine {cosine} to sentence-transformers");
                let plain = dot(&got[i], &together[i]) / (norm(&got[i]) * norm(&together[i]));
                assert!(plain < 0.999, "{model}, query {i}: the prompt changed nothing (cosine {plain})");
            }
        }
        let unknown = server.embed(json!({ "model": model, "input": "x", "prompt_name": "klingon" }));
        assert!(unknown.expect_error(400).contains("query"), "the error lists the model's prompts");
    }
}

#[test]
fn mpnet_matches_sentence_transformers() {
    matches_reference("all-mpnet-base-v2", "all-mpnet-base-v2");
}

/// Older repos ship `pytorch_model.bin` (a torch pickle) instead of safetensors: a tiny random BERT
/// saved that way (`scripts/references/tiny_pth.py`) embeds as `transformers` computes it.
#[test]
fn a_pytorch_model_bin_checkpoint_loads() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-pth");
    let dir = tempfile::tempdir().unwrap();
    let folder = tiny_model_folder(dir.path(), "tiny-bert-pth", &["config.json", "pytorch_model.bin"]);
    let roster = format!(
        "[[models]]\nid = \"tiny\"\nkind = \"embedding\"\nprecision = \"f32\"\npath = {:?}\n",
        folder.display().to_string()
    );
    let server = TestServer::builder().roster(&roster).env("MODELS", "tiny").start();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
    let sentences: Vec<&str> = reference["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let got = server.embed(json!({ "model": "tiny", "input": sentences })).vectors();
    for (i, want) in reference["vectors"].as_array().unwrap().iter().enumerate() {
        let want: Vec<f32> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let worst = got[i].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "sentence {i}: off by {worst}: {:?} vs {want:?}", got[i]);
    }
}

/// Llama 3's RoPE scaling (and the linear and YaRN ones other configs use) on tiny random checkpoints
/// (`scripts/references/tiny_rope.py`): logits equal to `transformers`' at positions before and well
/// past the original context of 16, fed in prompt chunks and then token by token, as serving feeds them.
#[test]
fn rope_scalings_match_transformers_past_the_original_context() {
    use sis::engines::chat::llama::Llama;
    use sis::engines::kernels::Kernels;
    for scaling in ["llama3", "linear", "yarn"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama-rope").join(scaling);
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let model = Llama::from_safetensors(&dir, Kernels::REFERENCE, &candle_core::Device::Cpu).unwrap();
        logits_match_reference(&model, &reference, scaling);
    }
}

/// The logits `transformers` computed (`reference.json`: `ids`, and at `positions` the `logits`) against
/// `model`'s, fed as serving feeds them: prompt chunks (the first token alone, then up to 7 and 15)
/// with a decode step between, then one token at a time.
fn logits_match_reference(model: &sis::engines::chat::llama::Llama, reference: &Value, what: &str) {
    use sis::engines::chat::llama::StepInput;
    let ids: Vec<u32> = reference["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
    let mut cache = model.new_cache();
    let mut logits = std::collections::BTreeMap::new();
    let mut at = 0;
    for (end, prompt) in
        [(1, true), (8, true), (9, false), (16, true)].into_iter().chain((17..=ids.len()).map(|e| (e, false)))
    {
        let input = StepInput::text(&mut cache, &ids[at..end], true);
        let input = if prompt { input.prompt() } else { input };
        logits.insert(end - 1, model.step(&mut [input]).unwrap().remove(0));
        at = end;
    }
    let positions = reference["positions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as usize);
    for (p, want) in positions.zip(reference["logits"].as_array().unwrap()) {
        let got = &logits[&p];
        let worst = got
            .iter()
            .zip(want.as_array().unwrap())
            .map(|(g, w)| (g - w.as_f64().unwrap() as f32).abs())
            .fold(0.0, f32::max);
        assert!(worst < 2e-3, "{what}, position {p}: logits off by {worst}");
    }
}

fn tiny_gemma3() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gemma3")
}

/// Gemma 3 chat (`scripts/references/tiny_gemma3.py`): a tiny random `Gemma3ForCausalLM` with
/// sliding-window layers (window 8) and a linearly scaled global layer, from its safetensors and from
/// the GGUF llama.cpp's converter made of it, on the reference kernels and on this machine's: logits
/// equal to `transformers'` inside the window and well past it.
#[test]
fn gemma3_chat_matches_transformers() {
    use sis::engines::chat::llama::Llama;
    use sis::engines::kernels::Kernels;
    let dir = tiny_gemma3();
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let auto = sis::engines::kernels::Selection::resolve(sis::engines::kernels::Request::Auto).unwrap().kernels();
    for kernels in [Kernels::REFERENCE, auto] {
        let model = Llama::from_safetensors(&dir, kernels, &candle_core::Device::Cpu).unwrap();
        logits_match_reference(&model, &reference, &format!("safetensors, {kernels:?}"));
        let (model, _) =
            Llama::from_gguf(&dir.join("tiny-gemma3-f32.gguf"), kernels, &candle_core::Device::Cpu).unwrap();
        logits_match_reference(&model, &reference, &format!("GGUF, {kernels:?}"));
    }
}

/// Served: the safetensors folder and the GGUF (its tokenizer and template from the metadata) answer
/// a chat with `transformers`' greedy reply, from the same prompt tokens.
#[test]
fn gemma3_chat_is_served_from_safetensors_and_gguf() {
    let dir = tiny_gemma3();
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let roster = format!(
        "[[models]]\nid = \"gemma-st\"\nkind = \"chat\"\npath = {:?}\n\n\
         [[models]]\nid = \"gemma-gguf\"\nkind = \"chat\"\npath = {:?}\nfile = \"tiny-gemma3-f32.gguf\"\n",
        dir.display().to_string(),
        dir.display().to_string()
    );
    let server = TestServer::builder().roster(&roster).env("MODELS", "gemma-st,gemma-gguf").start();
    for model in ["gemma-st", "gemma-gguf"] {
        let response = server.chat(json!({
            "model": model,
            "messages": reference["messages"],
            "temperature": 0,
            "max_tokens": reference["max_tokens"],
        }));
        assert_eq!(response.status, 200, "{model}: {}", response.text);
        let body = response.json();
        assert_eq!(body["usage"]["prompt_tokens"], reference["prompt_ids"].as_array().unwrap().len(), "{model}");
        assert_eq!(body["choices"][0]["message"]["content"], reference["reply"], "{model}");
    }
}

/// EmbeddingGemma (Gemma 3 with bidirectional attention, then two sentence-transformers Dense
/// projections) against sentence-transformers.
#[test]
fn embeddinggemma_matches_sentence_transformers() {
    matches_reference("embeddinggemma-300m", "embeddinggemma-300m");
}

/// Decoder embeddings as Qwen3-Embedding makes them (causal attention, the final norm, the last
/// token's state, normalized) on a tiny random Qwen3 (`scripts/references/tiny_qwen3_embedding.py`),
/// against `transformers`, batched and alone.
#[test]
fn decoder_embeddings_match_transformers() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen3-embedding");
    let dir = tempfile::tempdir().unwrap();
    let files = ["config.json", "model.safetensors", "modules.json", "1_Pooling/config.json"];
    let folder = tiny_model_folder(dir.path(), "tiny-qwen3-embedding", &files);
    let roster =
        format!("[[models]]\nid = \"tiny-qwen3\"\nkind = \"embedding\"\npath = {:?}\n", folder.display().to_string());
    let server = TestServer::builder().roster(&roster).env("MODELS", "tiny-qwen3").start();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
    let sentences: Vec<&str> = reference["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let together = server.embed(json!({ "model": "tiny-qwen3", "input": sentences })).vectors();
    for (i, want) in reference["vectors"].as_array().unwrap().iter().enumerate() {
        let want: Vec<f32> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let alone = &server.embed(json!({ "model": "tiny-qwen3", "input": sentences[i] })).vectors()[0];
        for got in [&together[i], alone] {
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-4, "sentence {i}: off by {worst}: {got:?} vs {want:?}");
        }
    }
}

/// FP8 checkpoints (Qwen's `…-FP8` layout: e4m3 linear weights in blocks, each block's
/// `weight_scale_inv`) dequantized at load: a tiny random Qwen3 (`scripts/references/tiny_fp8.py`)
/// gives the logits `transformers` computes from the same weights.
#[test]
fn fp8_checkpoints_are_dequantized_at_load() {
    use sis::engines::chat::llama::{Llama, StepInput};
    use sis::engines::kernels::Kernels;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen3-fp8");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids: Vec<u32> = reference["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
    let model = Llama::from_safetensors(&dir, Kernels::REFERENCE, &candle_core::Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let logits = model.step(&mut [StepInput::text(&mut cache, &ids, true).prompt()]).unwrap().remove(0);
    let want = reference["last_logits"].as_array().unwrap();
    let worst = logits.iter().zip(want).map(|(g, w)| (g - w.as_f64().unwrap() as f32).abs()).fold(0.0, f32::max);
    assert!(worst < 2e-3, "logits off by {worst}");
}

/// nomic-embed-text-v1.5 as an f16 GGUF (nomic-bert; its WordPiece tokenizer rebuilt from the GGUF)
/// against llama.cpp's own server on the same file (`scripts/references/llama_cpp_embeddings.py`):
/// the same token counts and vectors within 1e-3 cosine.
#[test]
fn nomic_bert_gguf_matches_llama_cpp() {
    let model = "nomic-embed-text-v1.5";
    let path = format!("{}/tests/fixtures/{model}.json", env!("CARGO_MANIFEST_DIR"));
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let server = TestServer::builder().env("MODELS", model).start();
    let sentences = reference["sentences"].as_array().unwrap();
    for (i, (text, want)) in sentences.iter().zip(reference["vectors"].as_array().unwrap()).enumerate() {
        let response = server.embed(json!({ "model": model, "input": text }));
        let tokens = reference["tokens"][i].as_array().unwrap().len();
        assert_eq!(response.json()["usage"]["prompt_tokens"], tokens, "sentence {i}: token count");
        let got = &response.vectors()[0];
        let want: Vec<f32> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let cosine = dot(got, &want) / (norm(got) * norm(&want));
        assert!(cosine > 0.999, "sentence {i}: cosine {cosine} to llama.cpp");
    }
}
