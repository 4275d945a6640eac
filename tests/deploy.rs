//! The deployment artifacts under `deploy/` stay valid and stay in step with the server: the
//! Kubernetes manifests validate against the API schemas, the alert rules load in Prometheus and
//! behave as their unit tests say, the dashboard and the alerts only query metrics that sis really
//! exports, and every role's Deployment probes health and drains gracefully on shutdown.
//!
//! The validators are external tools that `scripts/test` installs; a missing tool fails the test
//! rather than skipping it, so a green run always means the artifacts were checked.

mod common;

use common::TestServer;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Kubernetes version whose API schemas the manifests must satisfy.
const KUBERNETES_VERSION: &str = "1.30.0";

/// Metric names that are not sis's but may appear in queries: Prometheus's own scrape health.
const PROMETHEUS_OWN_METRICS: &[&str] = &["up"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir(sub: &str) -> PathBuf {
    repo().join("deploy").join(sub)
}

/// Files of a directory whose names end with one of `extensions`, sorted.
fn files_with_extension(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            path.is_file() && path.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e))
        })
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// Both output streams of a finished tool, for failure messages.
fn combined_output(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

// ------------------------------------------------------------------------------------------------
// Kubernetes manifests
// ------------------------------------------------------------------------------------------------

/// Whether a YAML file holds Kubernetes API objects: it has top-level `apiVersion:` and `kind:`
/// and is not a kustomize file (whose `Kustomization` kind is no API object).
fn is_kubernetes_object_file(path: &Path, text: &str) -> bool {
    let name = file_name(path);
    if name == "kustomization.yaml" || name == "kustomization.yml" {
        return false;
    }
    let has = |key: &str| text.lines().any(|line| line.starts_with(key));
    has("apiVersion:") && has("kind:")
}

/// The `deploy/k8s` files to validate, including the generated `roster-configmap.yaml` when present.
fn kubernetes_object_files() -> Vec<PathBuf> {
    files_with_extension(&deploy_dir("k8s"), &["yaml", "yml"])
        .into_iter()
        .filter(|path| is_kubernetes_object_file(path, &read(path)))
        .collect()
}

/// The `kubernetes-validate` command: on PATH, or as the Python module.
fn kubernetes_validate() -> Command {
    let works = |mut command: Command| command.output().map(|o| o.status.success()).unwrap_or(false);
    let mut on_path = Command::new("kubernetes-validate");
    on_path.arg("--version");
    if works(on_path) {
        return Command::new("kubernetes-validate");
    }
    let mut module = Command::new("python3");
    module.args(["-m", "kubernetes_validate", "--version"]);
    if works(module) {
        let mut command = Command::new("python3");
        command.args(["-m", "kubernetes_validate"]);
        return command;
    }
    panic!(
        "kubernetes-validate is not installed (neither on PATH nor as `python3 -m kubernetes_validate`); \
         scripts/test installs it with `python3 -m pip install kubernetes-validate`"
    );
}

/// Every Kubernetes object under `deploy/k8s` — the role Deployments, Services,
/// PodDisruptionBudgets and autoscalers, the Ingress, the prometheus-adapter ConfigMap and, once it
/// has been generated, the roster ConfigMap — validates strictly against the API schemas of
/// Kubernetes 1.30: no unknown field, no wrong type, and no kind the validator has no schema for
/// (it only warns about those, so a warning fails the test too).
#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let files = kubernetes_object_files();
    let names: Vec<&str> = files.iter().map(|f| file_name(f)).collect();
    for expected in ["embeddings.yaml", "chat.yaml", "audio.yaml", "ingress.yaml"] {
        assert!(names.contains(&expected), "deploy/k8s/{expected} is missing; found {names:?}");
    }

    let output = kubernetes_validate()
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let report = combined_output(&output);
    let complaints: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("ERROR") || line.starts_with("WARN") || line.starts_with("FATAL"))
        .collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "kubernetes-validate rejected the manifests ({}):\n{report}",
        output.status
    );
    for file in &files {
        let passed = format!("INFO {} passed", file.display());
        assert!(report.contains(&passed), "no object of {} was validated:\n{report}", file.display());
    }
    println!("validated {names:?} against Kubernetes {KUBERNETES_VERSION}");
}

// ------------------------------------------------------------------------------------------------
// Alert rules
// ------------------------------------------------------------------------------------------------

/// Runs promtool in the repository root.
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool").args(args).current_dir(repo()).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is not installed; scripts/test installs it with `apt-get install -y prometheus`")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

/// The alert rules load in Prometheus (`promtool check rules`), and their unit tests pass
/// (`promtool test rules`): a failed model and a dead target page, a 10% 5xx ratio fires the
/// error alert but not the overload one, a queue kept 90% full warns.
#[test]
fn alert_rules_pass_promtool() {
    for args in [
        ["check", "rules", "deploy/prometheus/sis-alerts.yaml"],
        ["test", "rules", "deploy/prometheus/sis-alerts.test.yaml"],
    ] {
        let output = promtool(&args);
        assert!(
            output.status.success(),
            "`promtool {}` failed ({}):\n{}",
            args.join(" "),
            output.status,
            combined_output(&output)
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Metric names in PromQL
// ------------------------------------------------------------------------------------------------

/// PromQL words that need not be followed by `(` yet name no metric (compared in lower case):
/// operators and modifiers, and the aggregations, which may be followed by `by (…)` or
/// `without (…)` instead (`sum by (model) (…)`).
#[rustfmt::skip]
const PROMQL_KEYWORDS: &[&str] = &[
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "inf",
    "nan", "atan2", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
];

/// Keywords whose parenthesised argument is a list of label names, not an expression.
const PROMQL_LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

fn is_identifier_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string literal that starts at `start` (`"…"`, `'…'` or a raw `` `…` ``).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

/// The index just past the bracketed group that opens at `start`, nested groups and string
/// literals (which may contain brackets) included.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    chars.len()
}

/// The metric names a PromQL expression reads, as written (histogram series keep their `_bucket`,
/// `_sum` or `_count` suffix). A small tokenizer, not a parser: it drops string literals, label
/// matchers `{…}`, ranges and subqueries `[…]`, comments, numbers and durations, Grafana variables
/// (`$x`, `${x}`), function and aggregation names (identifiers followed by `(`), keywords, and the
/// label lists of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(&chars, i, '{', '}');
            } else {
                while i < chars.len() && is_identifier_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            // 0.95, 3.5e9, 0x1f, and durations such as 5m or 1h30m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if is_identifier_start(c) {
            let start = i;
            while i < chars.len() && is_identifier_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let followed_by_paren = chars.get(next) == Some(&'(');
            if followed_by_paren && PROMQL_LABEL_LISTS.contains(&lower.as_str()) {
                i = skip_group(&chars, next, '(', ')');
            } else if !followed_by_paren && !PROMQL_KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric families of a `/metrics` page: name -> type, from its `# TYPE <name> <type>` lines.
fn metric_families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut fields = rest.split_whitespace();
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect()
}

/// Whether a series name belongs to an exported family: the family itself, or the `_bucket` of a
/// histogram, or the `_sum`/`_count` of a histogram or summary.
fn is_exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    let series_of: [(&str, &[&str]); 3] =
        [("_bucket", &["histogram"]), ("_sum", &["histogram", "summary"]), ("_count", &["histogram", "summary"])];
    series_of.iter().any(|(suffix, kinds)| {
        name.strip_suffix(suffix).and_then(|base| families.get(base)).is_some_and(|kind| kinds.contains(&kind.as_str()))
    })
}

/// The PromQL of a Grafana dashboard: `(panel title, expr)` for every `targets[].expr`, in nested
/// rows too.
fn dashboard_expressions(value: &serde_json::Value, panel: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(panel);
            if let Some(serde_json::Value::Array(targets)) = map.get("targets") {
                for target in targets {
                    if let Some(expr) = target.get("expr").and_then(|e| e.as_str()) {
                        out.push((title.to_string(), expr.to_string()));
                    }
                }
            }
            for child in map.values() {
                dashboard_expressions(child, title, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_expressions(item, panel, out);
            }
        }
        _ => {}
    }
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Removes one level of YAML quoting from a plain one-line value.
fn unquote(value: &str) -> String {
    let value = value.trim();
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        return value[1..value.len() - 1].replace("''", "'");
    }
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        return value[1..value.len() - 1].replace("\\\"", "\"").replace("\\\\", "\\");
    }
    value.to_string()
}

/// The `expr:` values of a Prometheus rules file, one-line (plain or quoted) or block scalars
/// (`expr: |` followed by more-indented lines).
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let key = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        if let Some(rest) = key.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let indent = indentation(line);
                let mut block = String::new();
                i += 1;
                while i < lines.len() && (lines[i].trim().is_empty() || indentation(lines[i]) > indent) {
                    block.push_str(lines[i].trim());
                    block.push('\n');
                    i += 1;
                }
                out.push(block);
                continue;
            }
            out.push(unquote(rest));
        }
        i += 1;
    }
    out
}

/// Every PromQL expression of the dashboards and alert rules under `deploy/`, with where it is.
fn deploy_expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for path in files_with_extension(&deploy_dir("grafana"), &["json"]) {
        let dashboard: serde_json::Value =
            serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let mut found = Vec::new();
        dashboard_expressions(&dashboard, "", &mut found);
        assert!(!found.is_empty(), "{} has no panel queries", path.display());
        for (panel, expr) in found {
            exprs.push((format!("{} panel {panel:?}", file_name(&path)), expr));
        }
    }
    for path in files_with_extension(&deploy_dir("prometheus"), &["yaml", "yml"]) {
        if file_name(&path).contains(".test.") {
            continue; // promtool unit tests: input series, not queries
        }
        for expr in rule_expressions(&read(&path)) {
            exprs.push((file_name(&path).to_string(), expr));
        }
    }
    exprs
}

/// The tokenizer keeps metric names and drops everything else PromQL and Grafana put around them.
#[test]
fn promql_tokenizer_finds_metric_names_only() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();

    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, model) (rate(chat_time_to_first_token_seconds_bucket{model=~"$model", status!="5.."}[$__rate_interval])))"#
        ),
        ["chat_time_to_first_token_seconds_bucket"]
    );
    assert_eq!(
        names(
            r#"sum(rate(a_total{x="}", y='{'}[5m:1m])) / ignoring(status) group_left sum(b_total) > bool 0.5 or up == 0 offset 1h"#
        ),
        ["a_total", "b_total", "up"]
    );
    assert_eq!(
        names(
            "# the failed models\nlabel_replace(model_state == 1, \"capability\", \"chat\", \"\", \"\")\n  unless on (model) absent(foo:bar)"
        ),
        ["foo:bar", "model_state"]
    );
    assert_eq!(names("sum(rate(x_bucket[${window}])) without (instance) * 3.5e9 + .5 - Inf"), ["x_bucket"]);
    assert_eq!(names("process_resident_memory_bytes > 3.5e9"), ["process_resident_memory_bytes"]);

    let families = metric_families(
        "# HELP h A histogram\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE c_total counter\n# TYPE g gauge\n",
    );
    assert!(is_exported("h_bucket", &families) && is_exported("h_sum", &families) && is_exported("h_count", &families));
    assert!(is_exported("c_total", &families) && is_exported("g", &families));
    assert!(!is_exported("c_total_bucket", &families) && !is_exported("g_count", &families));
    assert!(!is_exported("missing", &families));

    let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n      - alert: B\n        expr: |\n          sum(x)\n            / sum(y)\n        labels: {}\n      - alert: C\n        expr: 'z > 1'\n";
    assert_eq!(rule_expressions(rules), ["up == 0", "sum(x)\n/ sum(y)\n", "z > 1"]);
}

/// Dashboards and alerts that query a metric sis does not export show empty panels and never
/// fire. Every metric name in the dashboard's panel queries and the alert rules' expressions is
/// one that a running sis lists on `/metrics` (a histogram's `_bucket`, `_sum` and `_count` series
/// count as its family), or Prometheus's own `up`.
#[test]
fn dashboards_and_alerts_use_only_metrics_sis_exports() {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (origin, expr) in deploy_expressions() {
        for name in metric_names(&expr) {
            used.entry(name).or_default().insert(origin.clone());
        }
    }
    // A tokenizer that lost its way would find nothing and prove nothing.
    assert!(used.len() >= 20, "suspiciously few metric names found in deploy/: {:?}", used.keys());

    let server = TestServer::start();
    let families = metric_families(&server.metrics());
    assert!(!families.is_empty(), "/metrics lists no metric family");

    let unknown: Vec<String> = used
        .iter()
        .filter(|(name, _)| !PROMETHEUS_OWN_METRICS.contains(&name.as_str()) && !is_exported(name, &families))
        .map(|(name, origins)| format!("{name} (used in {})", origins.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics queried under deploy/ that sis does not export:\n  {}\nexported families: {:?}",
        unknown.join("\n  "),
        families.keys()
    );
}

// ------------------------------------------------------------------------------------------------
// Role Deployments
// ------------------------------------------------------------------------------------------------

/// The text of a YAML file without its comments (a `#` at a line's start or after whitespace),
/// so that checks read what Kubernetes reads.
fn without_comments(yaml: &str) -> String {
    yaml.lines()
        .map(|line| {
            let bytes = line.as_bytes();
            let cut = (0..bytes.len())
                .find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t'))
                .unwrap_or(bytes.len());
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first whole number after the first occurrence of `marker`.
fn first_number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let digits: String = rest[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The value of the container environment variable `name` (`- name: NAME` then `value: …`).
fn env_value(text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|line| line.trim() == format!("- name: {name}"))?;
    lines[at + 1..].iter().take(3).find_map(|line| line.trim().strip_prefix("value:")).map(unquote)
}

/// Each role — embeddings, chat, audio — runs as its own Deployment serving its roster model, and
/// each is wired for zero-downtime rollouts: a startup probe covers the model download, liveness
/// watches `/health/live`, readiness watches `/health/ready` (503 while loading or draining), the
/// roster comes from the `sis-roster` ConfigMap, a preStop pause lets endpoints go before SIGTERM,
/// and the pod's termination grace period outlasts the preStop pause plus sis's own drain window
/// (`SHUTDOWN_GRACE_SEC`), so in-flight requests finish before the kubelet kills the process.
#[test]
fn every_role_deployment_probes_health_and_drains_gracefully() {
    let roles = [
        ("sis-embeddings", "all-MiniLM-L6-v2"),
        ("sis-chat", "SmolLM2-135M-Instruct"),
        ("sis-audio", "whisper-tiny.en"),
    ];
    let deployments: Vec<(PathBuf, String)> = files_with_extension(&deploy_dir("k8s"), &["yaml", "yml"])
        .into_iter()
        .map(|path| {
            let text = without_comments(&read(&path));
            (path, text)
        })
        .filter(|(_, text)| text.lines().any(|line| line.trim() == "kind: Deployment"))
        .collect();

    for (role, model) in roles {
        let (path, text) = deployments
            .iter()
            .find(|(_, text)| text.lines().any(|line| line.trim() == format!("name: {role}")))
            .unwrap_or_else(|| panic!("no Deployment named {role} under deploy/k8s"));
        let file = path.display();

        for needle in [
            "startupProbe",
            "livenessProbe",
            "readinessProbe",
            "/health/live",
            "/health/ready",
            "preStop",
            "terminationGracePeriodSeconds",
            "SHUTDOWN_GRACE_SEC",
            "sis-roster",
            "/etc/sis/models.toml",
        ] {
            assert!(text.contains(needle), "{file}: the {role} Deployment lacks {needle}");
        }
        let ready_path = text.find("readinessProbe").and_then(|at| text[at..].find("path:").map(|p| at + p));
        assert!(
            ready_path
                .is_some_and(|at| text[at..].trim_start_matches("path:").trim_start().starts_with("/health/ready")),
            "{file}: the readiness probe of {role} must watch /health/ready"
        );

        assert_eq!(env_value(text, "MODELS").as_deref(), Some(model), "{file}: {role} must serve {model}");
        assert_eq!(env_value(text, "SIS_CONFIG").as_deref(), Some("/etc/sis/models.toml"), "{file}: SIS_CONFIG");

        let shutdown_grace: u64 = env_value(text, "SHUTDOWN_GRACE_SEC")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{file}: SHUTDOWN_GRACE_SEC has no numeric value"));
        let termination_grace = first_number_after(text, "terminationGracePeriodSeconds:")
            .unwrap_or_else(|| panic!("{file}: terminationGracePeriodSeconds has no value"));
        let pre_stop_pause = first_number_after(text, "preStop").unwrap_or(0);
        assert!(
            termination_grace > shutdown_grace + pre_stop_pause,
            "{file}: terminationGracePeriodSeconds ({termination_grace}) must outlast the preStop pause \
             ({pre_stop_pause} s) plus SHUTDOWN_GRACE_SEC ({shutdown_grace}), or the drain is cut off by SIGKILL"
        );
    }
}

/// The roster ConfigMap in `deploy/k8s/` is generated from `config/models.toml` by `sis config
/// configmap`; it must be regenerated whenever the roster changes, so the two never drift apart.
#[test]
fn the_roster_configmap_is_rendered_from_the_roster() {
    let output = Command::new(env!("CARGO_BIN_EXE_sis"))
        .args(["config", "configmap", "--config", "config/models.toml"])
        .current_dir(repo())
        .env_remove("SIS_CONFIG_OVERLAY")
        .env_remove("MODELS")
        .output()
        .expect("run sis config configmap");
    assert!(output.status.success(), "{}", combined_output(&output));
    let rendered = String::from_utf8(output.stdout).unwrap();
    let committed = read(&deploy_dir("k8s").join("roster-configmap.yaml"));
    assert_eq!(
        rendered, committed,
        "deploy/k8s/roster-configmap.yaml is stale: run `sis config configmap > deploy/k8s/roster-configmap.yaml`"
    );
    for id in ["all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", "whisper-tiny.en"] {
        assert!(committed.contains(&format!("    id = \"{id}\"")), "{id} in the ConfigMap");
    }
}
