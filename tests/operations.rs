//! What an operator touches: API keys, the admin key, roster reloads (HTTP and SIGHUP), graceful
//! shutdown on SIGTERM, per-capability request timeouts, CORS, and a `/metrics` that promtool accepts.
//! Each test starts a real `sis serve` on a free loopback port.

mod common;

use common::{client, metric, TestServer, MINILM, SMOLLM};
use serde_json::{json, Value};
use std::time::Duration;

fn embed_body(model: &str) -> Value {
    json!({ "model": model, "input": "A man is eating food." })
}

/// The MiniLM entry of the default roster under another id, with extra keys.
fn minilm_entry(id: &str, extra: &str) -> String {
    format!(
        "[[models]]\nid = \"{id}\"\nkind = \"embedding\"\nrepo = \"sentence-transformers/all-MiniLM-L6-v2\"\n{extra}\n"
    )
}

#[test]
fn api_keys_guard_the_api_and_leave_the_probes_open() {
    let server = TestServer::builder().env("API_KEYS", "key-one, key-two").env("ADMIN_API_KEY", "admin-key").start();
    let post = |key: Option<&str>| {
        let mut request = client().post(server.url("/v1/embeddings")).json(&embed_body(MINILM));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        common::Response::from(request.send().unwrap())
    };
    let missing = post(None);
    assert!(missing.expect_error(401).contains("API key"));
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    assert!(missing.headers.contains_key("www-authenticate"));
    assert!(post(Some("nope")).expect_error(401).contains("Incorrect API key"));
    assert_eq!(post(Some("key-two")).status, 200);
    // The admin key is not an API key, and API keys do not open the admin endpoints.
    assert_eq!(post(Some("admin-key")).status, 401);
    let reload = |key: &str| client().post(server.url("/admin/reload")).bearer_auth(key).send().unwrap().status();
    assert_eq!(reload("key-one"), 401);
    // Probes and metrics stay open; keys never appear in /health.
    for path in ["/health/live", "/health/ready", "/health", "/metrics"] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
    let health = server.get("/health").text;
    assert!(!health.contains("key-one") && !health.contains("admin-key"), "keys leak into /health");
    assert_eq!(server.get("/health").json()["runtime_config"]["access"]["api_keys"], "2 key(s)");
}

#[test]
fn admin_reload_adds_replaces_and_removes_models_without_dropping_requests() {
    let base = minilm_entry(MINILM, "");
    let mut server = TestServer::builder().roster(&base).env("MODELS", "").env("ADMIN_API_KEY", "admin-key").start();
    let reload = || {
        let r = client().post(server.url("/admin/reload")).bearer_auth("admin-key").send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    // Without the key: 401. Nothing changed: everything is unchanged.
    assert_eq!(client().post(server.url("/admin/reload")).send().unwrap().status(), 401);
    let (status, report) = reload();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["unchanged"], json!([MINILM]));

    // Add a second model and change the first, while requests keep flowing.
    let copy = "minilm-copy";
    std::fs::write(
        server.roster_path(),
        format!("{}\n{}", minilm_entry(MINILM, "max_queue_size = 7"), minilm_entry(copy, "")),
    )
    .unwrap();
    let (report, statuses) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                statuses.push(server.embed(embed_body(MINILM)).status);
            }
            statuses
        });
        let (status, report) = reload();
        assert_eq!(status, 200, "{report}");
        (report, load.join().unwrap())
    });
    assert!(statuses.iter().all(|s| *s == 200), "no request dropped during the reload: {statuses:?}");
    assert_eq!(report["added"], json!([copy]), "{report}");
    assert_eq!(report["replaced"], json!([MINILM]), "{report}");
    assert_eq!(server.embed(embed_body(copy)).status, 200);
    let health = server.get("/health").json();
    assert_eq!(health["actors"][MINILM]["queue_capacity"], 7, "the changed entry is served");

    // Remove the copy again, this time with SIGHUP.
    std::fs::write(server.roster_path(), minilm_entry(MINILM, "max_queue_size = 7")).unwrap();
    server.signal("HUP");
    server.wait_health("the copy to be removed", |h| h["actors"].get(copy).is_none());
    assert!(server.embed(embed_body(copy)).expect_error(404).contains(copy));
    assert_eq!(server.embed(embed_body(MINILM)).status, 200);

    // A broken roster is refused with its reason and changes nothing.
    std::fs::write(server.roster_path(), "[[models]]\nid = \"x\"\ncolour = 1\n").unwrap();
    let (status, body) = reload();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("colour"), "{body}");
    assert_eq!(server.embed(embed_body(MINILM)).status, 200);
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn sigterm_drains_in_flight_work_then_exits_cleanly() {
    let mut server = TestServer::builder().env("MODELS", SMOLLM).env("SHUTDOWN_GRACE_SEC", 60).start();
    let chat = |max_tokens: u32| {
        json!({ "model": SMOLLM, "temperature": 0, "max_tokens": max_tokens,
                "messages": [{ "role": "user", "content": "Tell me a long story about the sea." }] })
    };
    let (in_flight, refused, ready) = std::thread::scope(|s| {
        let in_flight: Vec<_> = (0..2).map(|_| s.spawn(|| server.chat(chat(96)))).collect();
        // Wait until both sequences are admitted, then ask the server to stop.
        let depth = format!("model_queue_depth{{capability=\"chat\",model=\"{SMOLLM}\"}}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while metric(&server.metrics(), &depth) != Some(2.0) {
            assert!(std::time::Instant::now() < deadline, "requests never admitted");
            std::thread::sleep(Duration::from_millis(10));
        }
        server.signal("TERM");
        std::thread::sleep(Duration::from_millis(200));
        let refused = server.chat(chat(4));
        let ready = server.get("/health/ready");
        (in_flight.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>(), refused, ready)
    });
    for r in &in_flight {
        assert_eq!(r.status, 200, "admitted work finishes during the drain: {}", r.text);
        assert!(r.json()["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    assert!(refused.expect_error(503).contains("shutting down"));
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(ready.status, 503, "orchestrators see the drain: {}", ready.text);
    assert_eq!(ready.json()["status"], "draining");
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let log = server.log();
    assert!(log.contains("drained; stopping"), "{log}");
}

#[test]
fn requests_over_their_capability_timeout_get_504_and_are_cancelled() {
    let server = TestServer::builder()
        .env("MODELS", SMOLLM)
        .env("CHAT_REQUEST_TIMEOUT_SEC", "1.5")
        .env("CHAT_BATCH_MAX_SIZE", 1)
        .start();
    let long = json!({ "model": SMOLLM, "temperature": 0, "max_tokens": 400,
                       "messages": [{ "role": "user", "content": "Write a long essay about rivers." }] });
    let r = server.chat(long);
    assert!(r.expect_error(504).contains("longer than"));
    assert_eq!(r.json()["error"]["code"], "timeout");
    // The timed-out sequence left the batch: a short request is served at once by the single slot.
    let short = json!({ "model": SMOLLM, "temperature": 0, "max_tokens": 2,
                        "messages": [{ "role": "user", "content": "Hi" }] });
    assert_eq!(server.chat(short).status, 200);
    let metrics = server.metrics();
    assert_eq!(metric(&metrics, &format!("chat_requests_total{{model=\"{SMOLLM}\",status=\"504\"}}")), Some(1.0));
}

#[test]
fn cors_answers_preflights_for_allowed_origins_only() {
    let server = TestServer::builder().env("CORS_ALLOW_ORIGINS", "https://app.example").start();
    let preflight = |origin: &str| {
        client()
            .request(reqwest::Method::OPTIONS, server.url("/v1/embeddings"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type, authorization")
            .send()
            .unwrap()
    };
    let allowed = preflight("https://app.example");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
    let other = preflight("https://evil.example");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let r = client()
        .post(server.url("/v1/embeddings"))
        .header("Origin", "https://app.example")
        .json(&embed_body(MINILM))
        .send()
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
}

#[test]
fn metrics_pass_promtool_and_list_every_family() {
    let server = TestServer::start();
    assert_eq!(server.embed(embed_body(MINILM)).status, 200);
    assert_eq!(server.embed(json!({ "model": "nope", "input": "x" })).status, 404);
    let text = server.metrics();
    for family in ["chat_time_to_first_token_seconds", "audio_requests_total", "process_resident_memory_bytes"] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} listed");
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is on PATH (scripts/test installs Debian's prometheus package)");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_request_logs_one_line_with_its_model_status_and_queue_wait() {
    let server = TestServer::builder().env("LOG_FORMAT", "json").start();
    let r = client()
        .post(server.url("/v1/embeddings"))
        .header("X-Request-ID", "trace-me-42")
        .json(&embed_body(MINILM))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = server
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "request" && l["request_id"] == "trace-me-42");
        match found {
            Some(line) => break line,
            None if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("no access-log line for the request; log:\n{}", server.log()),
        }
    };
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["model"], MINILM);
    assert_eq!(line["status"], 200);
    assert_eq!(line["path"], "/v1/embeddings");
    assert!(line["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(line["queue_wait_ms"].as_f64().unwrap() >= 0.0, "{line}");
}

#[test]
fn sigterm_under_load_answers_every_accepted_request() {
    let mut server = TestServer::builder().env("SHUTDOWN_GRACE_SEC", 20).env("EMBEDDING_CACHE_SIZE", 0).start();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outcomes: Vec<Result<u16, String>> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..12)
            .map(|c| {
                let (server, stop) = (&server, &stop);
                s.spawn(move || {
                    let mut seen = Vec::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let body =
                            json!({ "model": MINILM, "input": format!("client {c} request {i}: a sentence to embed") });
                        // Once the server has stopped, connecting fails: those requests were never accepted.
                        match client().post(server.url("/v1/embeddings")).json(&body).send() {
                            Ok(r) => seen.push(Ok(r.status().as_u16())),
                            Err(e) if e.is_connect() => break,
                            Err(e) => seen.push(Err(e.to_string())),
                        }
                        i += 1;
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        // Clients send no new request from here on (new ones get 503, as the test above shows); the
        // ones on the wire when the signal lands must still be answered.
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        server.signal("TERM");
        clients.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let errors: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(errors.is_empty(), "no accepted request lost its answer: {errors:?}");
    let statuses: Vec<u16> = outcomes.iter().filter_map(|o| o.as_ref().ok().copied()).collect();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    assert!(statuses.contains(&200), "served before the signal");
}

/// The seed's habits: its environment (fallbacks, a fractional window, a setting-like name sis does
/// not read, named in one start-up warning and in `/health`) and its benchmark scripts' flags and
/// variables on `sis bench`.
#[test]
fn the_seeds_environment_and_benchmark_flags_work_as_in_the_seed() {
    let server = TestServer::builder()
        .env("BATCH_WINDOW_MS", "2.5")
        .env("MAX_QUEUE_SIZE", "40")
        .env("SIS_BATCH_WINDOW", "3")
        .start();
    let health = server.get("/health").json();
    let config = &health["runtime_config"];
    assert_eq!((&config["batch_window_ms"], &config["max_queue_size"]), (&json!(2.5), &json!(40)));
    assert_eq!(config["chat_batch_queue_size"], 40, "MAX_QUEUE_SIZE reaches chat too");
    let ignored = config["ignored_env"].as_array().unwrap();
    assert!(ignored.contains(&json!("SIS_BATCH_WINDOW")) && !ignored.contains(&json!("MAX_QUEUE_SIZE")), "{ignored:?}");
    let log = server.log();
    assert!(log.contains("look like settings") && log.contains("SIS_BATCH_WINDOW"), "{log}");

    // `sis bench` with the seed's flags, then with its variables.
    let bench = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sis"))
            .args(["bench", "embeddings", "--concurrency", "2", "--json"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let flags = bench(&["--base-url", &server.base, "--model-name", MINILM, "--n-requests", "4"], &[]);
    assert_eq!((&flags["requests"], &flags["completed"]), (&json!(4), &json!(4)));
    let vars = bench(&["--n-requests", "3"], &[("BASE_URL", &server.base), ("MODEL_NAME", MINILM)]);
    assert_eq!((&vars["requests"], &vars["completed"]), (&json!(3), &json!(3)));
}

/// A model asked to run on a device this build or machine lacks fails alone, saying what is missing,
/// rather than running on the CPU unannounced; `auto` takes the CPU here.
#[test]
fn a_model_on_a_missing_device_fails_alone_and_auto_takes_the_cpu() {
    let roster = format!(
        "{}device = \"cuda:0\"\n\n{}",
        minilm_entry("minilm-gpu", ""),
        minilm_entry("minilm-auto", "device = \"auto\"")
    );
    let server = TestServer::builder().roster(&roster).env("MODELS", "minilm-gpu,minilm-auto").live_only().start();
    let health = server.wait_health("both settled", |h| {
        h["actors"]["minilm-gpu"]["state"] == "failed" && h["actors"]["minilm-auto"]["state"] == "ready"
    });
    let reason = health["actors"]["minilm-gpu"]["last_error"].as_str().unwrap();
    if cfg!(not(feature = "cuda")) {
        assert!(reason.contains("--features cuda"), "{reason}");
    }
    assert_eq!(health["actors"]["minilm-gpu"]["settings"]["device"], "cuda:0");
    assert_eq!(server.embed(embed_body("minilm-auto")).status, 200);
}
