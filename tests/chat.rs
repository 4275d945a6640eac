//! `/v1/chat/completions` end to end: a real `sis serve` with SmolLM2-135M-Instruct (Q4_1 GGUF).

mod common;

use common::{metric, Response, TestServer, SMOLLM};
use serde_json::{json, Value};

fn server() -> TestServer {
    TestServer::builder().env("MODELS", SMOLLM).start()
}

/// The pinned prompt of MODELS.md: this small 4-bit model needs its system message.
fn france(extra: Value) -> Value {
    let mut body = common::pinned_chat(SMOLLM, "What is the capital of France?");
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn content(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

/// Reads an SSE body into its JSON chunks; asserts it ends with `[DONE]`.
fn chunks(r: &Response) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events: Vec<&str> =
        r.text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{}", r.text);
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[test]
fn greedy_answer_names_paris() {
    let server = server();
    let r = server.chat(france(json!({})));
    let body = r.json();
    let text = content(&r);
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], 27, "ChatML prompt of 27 tokens: {body}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(completion > 0 && completion < 32);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), 27 + completion);
}

#[test]
fn streaming_gives_the_same_text_and_usage() {
    let server = server();
    let plain = server.chat(france(json!({ "max_tokens": 24 })));
    let streamed =
        server.chat(france(json!({ "max_tokens": 24, "stream": true, "stream_options": { "include_usage": true } })));
    let chunks = chunks(&streamed);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"], "one id for the whole stream");
        if let Some(choice) = c["choices"].get(0) {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if !choice["finish_reason"].is_null() {
                finish = Some(choice["finish_reason"].clone());
            }
        }
    }
    assert_eq!(text, content(&plain), "stream and non-stream give the same greedy text");
    assert_eq!(Some(plain.json()["choices"][0]["finish_reason"].clone()), finish);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "the usage chunk has no choices");
    assert_eq!(last["usage"], plain.json()["usage"]);
}

#[test]
fn concurrent_greedy_requests_match_their_solo_runs() {
    let server = server();
    let questions = [
        "What is the capital of France?",
        "Name a fruit.",
        "What is 2+2?",
        "Write one sentence about the sea and the wind and the boats.",
        "Say hello.",
        "What color is the sky on a clear day?",
        "Give me a word that rhymes with cat.",
        "Why do birds sing in the morning? Answer briefly, please.",
    ];
    let body = |q: &str| {
        json!({
            "model": SMOLLM,
            "messages": [{ "role": "system", "content": "You are a helpful assistant." }, { "role": "user", "content": q }],
            "temperature": 0,
            "max_tokens": 24,
        })
    };
    let solo: Vec<String> = questions.iter().map(|q| content(&server.chat(body(q)))).collect();
    let server = &server;
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = questions.iter().map(|q| s.spawn(move || content(&server.chat(body(q))))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(solo, together, "batching must not change greedy output");
    let steps = metric(&server.metrics(), &format!("chat_batch_size_count{{model=\"{SMOLLM}\"}}")).unwrap();
    assert!(steps > 0.0);
    let metrics = server.metrics();
    let batched = common::parse_prometheus(&metrics)
        .into_iter()
        .find(|(s, _)| s == &format!("chat_batch_size_bucket{{model=\"{SMOLLM}\",le=\"1\"}}"))
        .map(|(_, v)| v)
        .unwrap();
    assert!(batched < steps, "some steps ran more than one sequence");
}

#[test]
fn seeds_stops_and_lengths() {
    let server = server();
    let sampled = |seed: u64| {
        content(&server.chat(json!({
            "model": SMOLLM,
            "messages": [{ "role": "user", "content": "Tell me a short story about a cat." }],
            "temperature": 0.9,
            "top_p": 0.95,
            "seed": seed,
            "max_tokens": 20,
        })))
    };
    assert_eq!(sampled(7), sampled(7), "same seed, same text");

    let stopped = server.chat(france(json!({ "stop": ["Paris"] })));
    let text = content(&stopped);
    assert!(!text.contains("Paris"), "the stop string is never included: {text}");
    assert!(text.contains("France"), "{text}");
    assert_eq!(stopped.json()["choices"][0]["finish_reason"], "stop");
    // A stop string that spans tokens: " is Pa" ends inside "Paris".
    let text = content(&server.chat(france(json!({ "stop": " is Pa" }))));
    assert!(text.ends_with("France"), "{text}");

    let long = server.chat(france(json!({ "max_tokens": 3 })));
    assert_eq!(long.json()["choices"][0]["finish_reason"], "length");
    assert_eq!(long.json()["usage"]["completion_tokens"], 3);
    let long = server.chat(france(json!({ "max_completion_tokens": 2 })));
    assert_eq!(long.json()["usage"]["completion_tokens"], 2);
}

#[test]
fn client_mistakes_get_clear_errors() {
    let server = TestServer::builder()
        .env("MODELS", format!("{SMOLLM},{}", common::MINILM))
        .env("CHAT_MAX_PROMPT_TOKENS", 40)
        .start();
    let err = |body: Value, status: u16| server.chat(body).expect_error(status);
    assert!(err(france(json!({ "n": 2 })), 400).contains("n=1"));
    assert!(err(france(json!({ "max_tokens": 0 })), 400).contains("max_tokens"));
    assert!(err(france(json!({ "max_tokens": -5 })), 400).contains("max_tokens"));
    assert!(err(france(json!({ "temperature": 7 })), 400).contains("temperature"));
    assert!(err(france(json!({ "model": "nope" })), 404).contains("nope"));
    assert!(err(france(json!({ "model": common::MINILM })), 400).contains("does not support chat"));
    assert!(err(france(json!({ "messages": [] })), 400).contains("empty"));
    assert!(err(france(json!({ "messages": "hi" })), 400).contains("messages"));
    assert!(err(france(json!({ "messages": [{ "role": "wizard", "content": "x" }] })), 400).contains("wizard"));
    let image = json!({ "messages": [{ "role": "user", "content": [
        { "type": "text", "text": "What is this?" },
        { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } },
    ] }] });
    assert!(err(france(image), 400).contains("does not accept images"));
    let long = json!({ "messages": [{ "role": "user", "content": "word ".repeat(200) }] });
    assert!(err(france(long), 400).contains("Prompt too long; max 40 tokens"));
    assert!(err(france(json!({ "stop": 5 })), 400).contains("stop"));
    // Text parts are accepted and joined.
    let parts = json!({ "messages": [
        { "role": "system", "content": "You are a helpful assistant." },
        { "role": "user", "content": [{ "type": "text", "text": "What is the capital " }, { "type": "text", "text": "of France?" }] },
    ] });
    assert!(content(&server.chat(france(parts))).contains("Paris"));
}

#[test]
fn overload_answers_429_and_every_request_is_answered() {
    let server =
        TestServer::builder().env("MODELS", SMOLLM).env("CHAT_MAX_QUEUE_SIZE", 2).env("CHAT_BATCH_MAX_SIZE", 1).start();
    let server = &server;
    let watch = common::QueueWatch::start(server, "chat", SMOLLM);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(move || {
                    let r = server.chat(france(json!({ "max_tokens": 16 })));
                    if r.status == 429 {
                        assert!(r.headers.contains_key("retry-after"));
                    }
                    r.status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.len(), 10);
    assert!(watch.deepest() <= 2.0, "the queue never holds more than its bound");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(statuses.contains(&429) && statuses.contains(&200), "{statuses:?}");
    let metrics = server.metrics();
    let rejected = metric(&metrics, &format!("chat_batch_queue_rejections_total{{model=\"{SMOLLM}\"}}")).unwrap();
    assert_eq!(rejected as usize, statuses.iter().filter(|s| **s == 429).count());
    for name in [
        "chat_time_to_first_token_seconds_count",
        "chat_inter_token_latency_seconds_count",
        "chat_tokens_generated_total",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
}

#[test]
fn the_gguf_tokenizer_encodes_like_the_reference() {
    use sis::config::{Overrides, Settings};
    let overrides = Overrides {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml").into()),
        ..Default::default()
    };
    let (settings, roster) = Settings::load(&overrides).unwrap();
    let entry = roster.select(&[SMOLLM.into()]).unwrap().remove(0);
    let found = sis::models::resolve(&entry, &sis::models::Sources::new(&settings).downloading()).unwrap();
    let spec = sis::engines::chat::spec::ChatSpec::from_gguf(&found.dir.join(entry.file.unwrap())).unwrap();
    // Expected ids from an independent byte-level BPE (the GPT-2 algorithm in Python over the same
    // GGUF vocab and merges, SmolLM2's digit split, special tokens matched first).
    let cases: [(&str, &[u32]); 6] = [
        ("Hello world 1234 naïve café!", &[19556, 905, 216, 33, 34, 35, 36, 15486, 46494, 37366, 17]),
        (
            "<|im_start|>user\nWhat's 3.14 + 2,718?<|im_end|>\n",
            &[1, 4093, 198, 1780, 506, 216, 35, 30, 33, 36, 1232, 216, 34, 28, 39, 33, 40, 47, 2, 198],
        ),
        (
            "  Multiple   spaces\tand\ttabs\n\nnew lines",
            &[216, 16560, 256, 5600, 197, 397, 197, 100, 7366, 198, 198, 2241, 3204],
        ),
        (
            "Ünïcödé ÀÉÎÕÜ — “quotes” and emoji 🙂!",
            &[
                142, 246, 94, 25972, 83, 7466, 84, 2756, 5549, 218, 39614, 142, 232, 142, 239, 142, 246, 1841, 619,
                385, 2346, 573, 284, 649, 33777, 47526, 17,
            ],
        ),
        ("I'll they've we're it's DON'T", &[57, 3060, 502, 3543, 392, 2316, 357, 506, 422, 2154, 23, 68]),
        (
            "x=1234567890;y=-0.5e10",
            &[104, 45, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 43, 105, 15196, 32, 30, 37, 85, 33, 32],
        ),
    ];
    for (text, expected) in cases {
        let ids = spec.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, expected, "{text:?}");
        let decoded = spec.tokenizer.decode(&ids, false).unwrap();
        assert_eq!(decoded, text, "decoding gives the text back");
    }
}

#[test]
fn json_modes_produce_valid_json() {
    let server = server();
    let ask = |content: &str, format: Value, max_tokens: u32| {
        server.chat(json!({
            "model": SMOLLM,
            "messages": [
                { "role": "system", "content": "You are a helpful assistant. Answer in JSON." },
                { "role": "user", "content": content },
            ],
            "temperature": 0,
            "max_tokens": max_tokens,
            "response_format": format,
        }))
    };
    // Free-form JSON closes within the token budget, however small.
    for max_tokens in [12, 40] {
        let text =
            content(&ask("Give me the capital of France as JSON.", json!({ "type": "json_object" }), max_tokens));
        let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(parsed.is_object(), "{text}");
    }
    // A schema fixes keys, types and enums, also when sampling.
    let schema = json!({
        "type": "json_schema",
        "json_schema": { "name": "person", "strict": true, "schema": {
            "type": "object",
            "properties": {
                "name": { "type": "string" },
                "age": { "type": "integer" },
                "pet": { "enum": ["cat", "dog"] },
                "hobbies": { "type": "array", "items": { "type": "string" } },
            },
            "required": ["name", "age", "pet", "hobbies"],
            "additionalProperties": false,
        } },
    });
    for seed in [1, 2] {
        let r = server.chat(json!({
            "model": SMOLLM,
            "messages": [{ "role": "user", "content": "Describe a person." }],
            "temperature": 0.8,
            "seed": seed,
            "max_tokens": 120,
            "response_format": schema,
        }));
        let text = content(&r);
        let person: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let keys: Vec<&String> = person.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "age", "pet", "hobbies"], "{text}");
        assert!(person["name"].is_string() && person["age"].is_i64(), "{text}");
        assert!(person["pet"] == "cat" || person["pet"] == "dog", "{text}");
        assert!(person["hobbies"].as_array().unwrap().iter().all(Value::is_string), "{text}");
    }
    let bad = ask("x", json!({ "type": "json_schema", "json_schema": { "schema": { "type": "tuple" } } }), 10);
    assert!(bad.expect_error(400).contains("tuple"));
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    use std::io::{Read, Write};
    // One slot in the running batch: a stream that is abandoned must free it for the next request.
    let server = TestServer::builder().env("MODELS", SMOLLM).env("CHAT_BATCH_MAX_SIZE", 1).start();
    let address = server.base.trim_start_matches("http://").to_string();
    let body = json!({
        "model": SMOLLM,
        "messages": [{ "role": "user", "content": "Count from one to one thousand, in words." }],
        "temperature": 0,
        "max_tokens": 2000,
        "stream": true,
    })
    .to_string();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 512];
    let n = socket.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));
    drop(socket);
    // The next request gets the only slot, and the scheduler reports the abandoned sequence cancelled.
    let r = server.chat(france(json!({})));
    assert!(content(&r).contains("Paris"));
    let metrics = server.metrics();
    let cancelled = metric(&metrics, &format!("chat_requests_cancelled_total{{model=\"{SMOLLM}\"}}"));
    assert_eq!(cancelled, Some(1.0));
    // The request is counted with nginx's "client closed request" status, as the seed counts it.
    let gone = metric(&metrics, &format!("chat_requests_total{{model=\"{SMOLLM}\",status=\"499\"}}"));
    assert_eq!(gone, Some(1.0), "{metrics}");
}

/// Writes a tiny random model of `arch` (llama or qwen2) twice: as a Hub-layout safetensors folder and
/// as a GGUF file (with llama's Q/K row permutation, as llama.cpp's converter does), both with
/// SmolLM2's tokenizer and chat template. Returns (safetensors dir, gguf path).
fn tiny_checkpoints(dir: &std::path::Path, arch: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use candle_core::quantized::gguf_file::{self, Value as G};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;

    let (vocab, hidden, heads, kv_heads, ffn, layers) = (49152usize, 64usize, 4usize, 2usize, 128usize, 2usize);
    let head_dim = hidden / heads;
    let mut seed = 0x5eed_u64 + arch.len() as u64;
    let mut random = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    };
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    // llama.cpp's converter reorders Q/K rows so that RoPE rotates adjacent pairs.
    let permute = |w: &Tensor, n_head: usize| {
        let (out, inp) = w.dims2().unwrap();
        w.reshape((n_head, 2, out / n_head / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((out, inp))
            .unwrap()
    };

    let mut hub: HashMap<String, Tensor> = HashMap::new();
    let mut gguf: Vec<(String, Tensor)> = Vec::new();
    let embed = random(&[vocab, hidden], 0.5);
    hub.insert("model.embed_tokens.weight".into(), embed.clone());
    gguf.push(("token_embd.weight".into(), embed));
    hub.insert("model.norm.weight".into(), ones(hidden));
    gguf.push(("output_norm.weight".into(), ones(hidden)));
    for i in 0..layers {
        let q = random(&[heads * head_dim, hidden], 0.3);
        let k = random(&[kv_heads * head_dim, hidden], 0.3);
        let (q_g, k_g) =
            if arch == "llama" { (permute(&q, heads), permute(&k, kv_heads)) } else { (q.clone(), k.clone()) };
        let mut put = |h: &str, g: &str, t: Tensor, tg: Option<Tensor>| {
            hub.insert(format!("model.layers.{i}.{h}"), t.clone());
            gguf.push((format!("blk.{i}.{g}"), tg.unwrap_or(t)));
        };
        put("self_attn.q_proj.weight", "attn_q.weight", q, Some(q_g));
        put("self_attn.k_proj.weight", "attn_k.weight", k, Some(k_g));
        put("self_attn.v_proj.weight", "attn_v.weight", random(&[kv_heads * head_dim, hidden], 0.3), None);
        put("self_attn.o_proj.weight", "attn_output.weight", random(&[hidden, heads * head_dim], 0.3), None);
        put("mlp.gate_proj.weight", "ffn_gate.weight", random(&[ffn, hidden], 0.3), None);
        put("mlp.up_proj.weight", "ffn_up.weight", random(&[ffn, hidden], 0.3), None);
        put("mlp.down_proj.weight", "ffn_down.weight", random(&[hidden, ffn], 0.3), None);
        put("input_layernorm.weight", "attn_norm.weight", ones(hidden), None);
        put("post_attention_layernorm.weight", "ffn_norm.weight", ones(hidden), None);
        if arch == "qwen2" {
            put("self_attn.q_proj.bias", "attn_q.bias", random(&[heads * head_dim], 0.1), None);
            put("self_attn.k_proj.bias", "attn_k.bias", random(&[kv_heads * head_dim], 0.1), None);
            put("self_attn.v_proj.bias", "attn_v.bias", random(&[kv_heads * head_dim], 0.1), None);
        }
    }

    // The tokenizer and template come from SmolLM2's GGUF.
    let (settings, roster) = sis::config::Settings::load(&sis::config::Overrides {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml").into()),
        ..Default::default()
    })
    .unwrap();
    let entry = roster.select(&[SMOLLM.into()]).unwrap().remove(0);
    let smol = sis::models::resolve(&entry, &sis::models::Sources::new(&settings).downloading())
        .unwrap()
        .dir
        .join(entry.file.unwrap());
    let mut file = std::fs::File::open(&smol).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let spec = sis::engines::chat::spec::ChatSpec::from_gguf(&smol).unwrap();

    let hub_dir = dir.join(format!("{arch}-safetensors"));
    std::fs::create_dir_all(&hub_dir).unwrap();
    candle_core::safetensors::save(&hub, hub_dir.join("model.safetensors")).unwrap();
    std::fs::write(
        hub_dir.join("config.json"),
        json!({
            "model_type": arch, "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 512, "vocab_size": vocab, "tie_word_embeddings": true,
        })
        .to_string(),
    )
    .unwrap();
    spec.tokenizer.save(hub_dir.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        hub_dir.join("tokenizer_config.json"),
        json!({ "chat_template": spec.template, "bos_token": spec.bos, "eos_token": spec.eos }).to_string(),
    )
    .unwrap();

    let gguf_path = dir.join(format!("{arch}.gguf"));
    let mut metadata: Vec<(String, G)> = vec![
        ("general.architecture".into(), G::String(arch.into())),
        (format!("{arch}.block_count"), G::U32(layers as u32)),
        (format!("{arch}.context_length"), G::U32(512)),
        (format!("{arch}.embedding_length"), G::U32(hidden as u32)),
        (format!("{arch}.feed_forward_length"), G::U32(ffn as u32)),
        (format!("{arch}.attention.head_count"), G::U32(heads as u32)),
        (format!("{arch}.attention.head_count_kv"), G::U32(kv_heads as u32)),
        (format!("{arch}.rope.freq_base"), G::F32(10000.0)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), G::F32(1e-5)),
    ];
    for (key, value) in &content.metadata {
        if key.starts_with("tokenizer.") {
            metadata.push((key.clone(), value.clone()));
        }
    }
    let tensors: Vec<(String, QTensor)> =
        gguf.into_iter().map(|(name, t)| (name, QTensor::quantize(&t, GgmlDType::F32).unwrap())).collect();
    let metadata_refs: Vec<(&str, &G)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = std::fs::File::create(&gguf_path).unwrap();
    gguf_file::write(&mut out, &metadata_refs, &tensor_refs).unwrap();
    (hub_dir, gguf_path)
}

#[test]
fn safetensors_and_gguf_checkpoints_of_one_model_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut roster = String::new();
    for arch in ["llama", "qwen2"] {
        let (hub, gguf) = tiny_checkpoints(dir.path(), arch);
        roster.push_str(&format!(
            "[[models]]\nid = \"{arch}-st\"\nkind = \"chat\"\npath = {:?}\n\n[[models]]\nid = \"{arch}-gguf\"\nkind = \"chat\"\npath = {:?}\nfile = {:?}\n\n",
            hub.display().to_string(),
            gguf.parent().unwrap().display().to_string(),
            gguf.file_name().unwrap().to_str().unwrap(),
        ));
    }
    let server = TestServer::builder().roster(&roster).env("MODELS", "llama-st,llama-gguf,qwen2-st,qwen2-gguf").start();
    for arch in ["llama", "qwen2"] {
        let ask = |id: String| {
            let r = server.chat(json!({
                "model": id,
                "messages": [{ "role": "user", "content": "Hello there, tiny model!" }],
                "temperature": 0,
                "max_tokens": 12,
            }));
            (content(&r), r.json()["usage"]["completion_tokens"].clone())
        };
        let (st, st_tokens) = ask(format!("{arch}-st"));
        let (gg, gg_tokens) = ask(format!("{arch}-gguf"));
        assert_eq!(st_tokens, 12, "{arch}: random weights still generate 12 tokens");
        assert_eq!(st, gg, "{arch}: the same weights in both formats give the same greedy text");
        assert_eq!(st_tokens, gg_tokens);
    }
}

/// Qwen2.5-Coder-0.5B-Instruct as GGUF Q4_K_M: the K-quant mix users download (Q4_K, Q5_0, Q6_K and Q8_0
/// matrices), off the default roster. Every one of its quantized types runs on the int8 kernel where the
/// CPU has it (the model's `/health` kernels say which), and the answer is still right, alone or batched.
#[test]
fn a_q4_k_m_model_answers_and_batching_does_not_change_it() {
    const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct";
    let server = TestServer::builder().env("MODELS", QWEN).start();
    let body = |q: &str| {
        json!({
            "model": QWEN,
            "messages": [{ "role": "user", "content": q }],
            "temperature": 0,
            "max_tokens": 12,
        })
    };
    let questions = ["What is the capital of France? Answer in one word.", "Name a primary color.", "What is 3+4?"];
    let solo: Vec<String> = questions.iter().map(|q| content(&server.chat(body(q)))).collect();
    assert!(solo[0].contains("Paris"), "{solo:?}");
    assert!(solo[2].contains('7'), "{solo:?}");
    let server = &server;
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = questions.iter().map(|q| s.spawn(move || content(&server.chat(body(q))))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(solo, together, "batching must not change greedy output");
    let health = server.get("/health").json();
    let products = health["actors"][QWEN]["kernels"][0].as_str().unwrap().to_string();
    assert!(products.starts_with("quantized matmul: "), "{products}");
    for dtype in ["Q4K", "Q5_0", "Q6K", "Q8_0"] {
        assert!(products.contains(dtype), "{dtype} missing from {products}");
    }
    if sis::engines::kernels::quantized::supported() {
        assert!(!products.contains("reference"), "every quantized type takes the int8 kernel: {products}");
    }
}
