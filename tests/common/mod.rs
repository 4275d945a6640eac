//! Test support: a real `sis serve` process on a free loopback port, and small HTTP helpers.
#![allow(dead_code)]

pub mod tiny_qwen3_vl;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The default embedding model of the roster.
pub const MINILM: &str = "all-MiniLM-L6-v2";
/// The default chat model of the roster.
pub const SMOLLM: &str = "SmolLM2-135M-Instruct";
/// The default speech model of the roster.
pub const WHISPER: &str = "whisper-tiny.en";

/// A running server, killed when dropped. Its log goes to a temp file shown if start-up fails.
pub struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Builds a server: extra environment and, optionally, a roster of its own. It serves the embedding
/// model alone unless `MODELS` is set.
#[derive(Default)]
pub struct ServerBuilder {
    env: Vec<(String, String)>,
    /// The roster's file name and text.
    roster: Option<(String, String)>,
    /// Return once the server answers `/health/live`, not waiting for its models to be ready.
    live_only: bool,
}

impl ServerBuilder {
    /// Sets an environment variable of the server.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Serves this roster text instead of `config/models.toml`.
    pub fn roster(mut self, toml: &str) -> Self {
        self.roster = Some(("roster.toml".into(), toml.to_string()));
        self
    }

    /// Serves a roster file of this name (a `.yaml` one is the seed's model catalogue).
    pub fn roster_file(mut self, name: &str, text: &str) -> Self {
        self.roster = Some((name.to_string(), text.to_string()));
        self
    }

    /// Returns as soon as the server is up, without waiting for its models (for models that fail).
    pub fn live_only(mut self) -> Self {
        self.live_only = true;
        self
    }

    /// Starts the server and waits until every model is ready.
    pub fn start(self) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let roster = match &self.roster {
            Some((name, text)) => {
                let path = dir.path().join(name);
                std::fs::write(&path, text).expect("write roster");
                path
            }
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/models.toml"),
        };
        let port = free_port();
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sis"));
        command
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--config"])
            .arg(&roster)
            .env("WARMUP_STEPS", "1")
            .env("HTTP_WORKERS", "2")
            .env("MODELS", MINILM)
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn sis");
        let mut server = TestServer { child, base: format!("http://127.0.0.1:{port}"), log, _dir: dir };
        let probe = if self.live_only { "/health/live" } else { "/health/ready" };
        server.wait_for(probe, Duration::from_secs(180));
        server
    }
}

/// The default roster plus a copy of entry `id`, named `copy_id`, with `extra` (TOML lines) added to it:
/// the same weights served twice with one setting changed.
pub fn roster_with_copy(id: &str, copy_id: &str, extra: &str) -> String {
    let roster = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml")).unwrap();
    let start = roster.find(&format!("id = \"{id}\"")).unwrap_or_else(|| panic!("no entry {id}"));
    let end = roster[start..].find("[[models]]").map_or(roster.len(), |e| start + e);
    let entry = roster[start..end].replacen(&format!("id = \"{id}\""), &format!("id = \"{copy_id}\"\n{extra}"), 1);
    format!("{roster}\n[[models]]\n{entry}")
}

/// The folder of a default-roster model's files (fetched by `sis models pull`), and its entry.
pub fn model_files(id: &str) -> (sis::config::ModelEntry, PathBuf) {
    use sis::config::{Overrides, Settings};
    let overrides = Overrides {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml").into()),
        ..Default::default()
    };
    let (settings, roster) = Settings::load(&overrides).expect("roster");
    let entry = roster.select(&[id.to_string()]).expect("entry").remove(0);
    let found = sis::models::resolve(&entry, &sis::models::Sources::new(&settings).downloading()).expect("model files");
    (entry, found.dir)
}

/// A model folder for a tiny committed checkpoint (`tests/fixtures/NAME`) under `dir`: links to its
/// `files` and to all-MiniLM-L6-v2's tokenizer.json, whose vocabulary the tiny checkpoints use.
pub fn tiny_model_folder(dir: &std::path::Path, name: &str, files: &[&str]) -> PathBuf {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let folder = dir.join(name);
    let (_, minilm) = model_files(MINILM);
    let tokenizer = ("tokenizer.json", minilm.join("tokenizer.json"));
    for (file, target) in files.iter().map(|f| (*f, fixture.join(f))).chain([tokenizer]) {
        let link = folder.join(file);
        std::fs::create_dir_all(link.parent().expect("inside the folder")).expect("folder");
        std::os::unix::fs::symlink(target, link).expect("link");
    }
    folder
}

/// The pinned chat prompt of MODELS.md (SmolLM2, a small 4-bit model, needs its system message): `user`
/// to `model`, greedy, at most 32 tokens.
pub fn pinned_chat(model: &str, user: &str) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [
            { "role": "system", "content": "You are a helpful assistant." },
            { "role": "user", "content": user },
        ],
        "temperature": 0,
        "max_tokens": 32,
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl TestServer {
    /// A server with the default roster.
    pub fn start() -> TestServer {
        ServerBuilder::default().start()
    }

    /// A builder for a customised server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The server's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The roster file the server was started with, when the test gave one (tests may rewrite it).
    pub fn roster_path(&self) -> PathBuf {
        self._dir.path().join("roster.toml")
    }

    /// Sends a signal (`TERM`, `HUP`, …) with the shell's built-in `kill` (no procps needed).
    pub fn signal(&self, name: &str) {
        let command = format!("kill -{name} {}", self.pid());
        let status = Command::new("sh").args(["-c", &command]).status().expect("sh");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > limit {
                panic!("server still running after {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, probe: &str, limit: Duration) {
        let client = client();
        let started = Instant::now();
        loop {
            // A server that stopped (a configuration error) will never answer: say so at once.
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("server exited ({status}) before it was ready; log:\n{}", self.log());
            }
            if let Ok(r) = client.get(self.url(probe)).send() {
                if r.status().is_success() {
                    return;
                }
            }
            if started.elapsed() > limit {
                panic!("server not ready after {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `check(/health json)` holds.
    pub fn wait_health(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let health: serde_json::Value = client().get(self.url("/health")).send().unwrap().json().unwrap();
            if check(&health) {
                return health;
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!("timed out waiting for {what}; last /health: {health:#}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON to `/v1/embeddings`.
    pub fn embed(&self, body: serde_json::Value) -> Response {
        Response::from(client().post(self.url("/v1/embeddings")).json(&body).send().expect("request sent"))
    }

    /// POSTs JSON to `/v1/chat/completions`.
    pub fn chat(&self, body: serde_json::Value) -> Response {
        Response::from(client().post(self.url("/v1/chat/completions")).json(&body).send().expect("request sent"))
    }

    /// GETs a path.
    pub fn get(&self, path: &str) -> Response {
        Response::from(client().get(self.url(path)).send().expect("request sent"))
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").text
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "--- server log ---\n{}", self.log());
        }
    }
}

/// A blocking client with a generous timeout, so a hang fails the test instead of blocking it.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().expect("client")
}

/// A response read to the end.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body text.
    pub text: String,
}

impl From<reqwest::blocking::Response> for Response {
    fn from(r: reqwest::blocking::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().expect("body");
        Response { status, headers, text }
    }
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts an OpenAI-shaped error with this status; returns its message.
    pub fn expect_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "expected {status}, got {}: {}", self.status, self.text);
        let body = self.json();
        let error = &body["error"];
        assert!(error["message"].is_string(), "no error.message: {body}");
        assert!(error["type"].is_string(), "no error.type: {body}");
        assert!(error.get("param").is_some() && error.get("code").is_some(), "no param/code: {body}");
        error["message"].as_str().unwrap().to_string()
    }

    /// The vectors of an embeddings response (float format).
    pub fn vectors(&self) -> Vec<Vec<f32>> {
        assert_eq!(self.status, 200, "{}", self.text);
        let body = self.json();
        body["data"]
            .as_array()
            .expect("data")
            .iter()
            .enumerate()
            .map(|(i, d)| {
                assert_eq!(d["index"], i, "data out of order: {body}");
                d["embedding"].as_array().expect("float embedding").iter().map(|x| x.as_f64().unwrap() as f32).collect()
            })
            .collect()
    }
}

/// Dot product (cosine for unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// L2 norm.
pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// Parses Prometheus text into (series, value) pairs; panics on any malformed line.
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(rest.starts_with("HELP ") || rest.starts_with("TYPE "), "bad comment line: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels: {line}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        out.push((series.to_string(), value));
    }
    out
}

/// The value of one exact series, if exported.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    parse_prometheus(text).into_iter().find(|(s, _)| s == series).map(|(_, v)| v)
}

/// Watches `model_queue_depth` of one model on `/metrics` while a burst runs, to prove the queue never
/// grows past its bound.
pub struct QueueWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<f64>,
}

impl QueueWatch {
    /// Starts polling the depth of `model` (`capability` as in the metric's label).
    pub fn start(server: &TestServer, capability: &str, model: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (url, series) =
            (server.url("/metrics"), format!("model_queue_depth{{capability=\"{capability}\",model=\"{model}\"}}"));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let client = client();
            let mut max = 0f64;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(r) = client.get(&url).send() {
                    if let Some(depth) = metric(&r.text().unwrap_or_default(), &series) {
                        max = max.max(depth);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            max
        });
        Self { stop, handle }
    }

    /// Stops watching; returns the deepest queue seen.
    pub fn deepest(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().expect("watcher")
    }
}
