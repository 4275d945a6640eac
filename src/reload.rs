//! Roster reload without a restart (`SIGHUP`, `POST /admin/reload`).
//!
//! The roster file and its overlay are read again and compared with what is served, entry by entry:
//! new entries start as new actors and are served once ready; removed ones leave the registry at once
//! and their actors stop when their last in-flight request is answered; changed ones start beside the
//! old ones, which keep serving until the new ones are ready. Server-wide `[settings]` are not
//! reloaded (a restart applies them). Requests in flight are never dropped.

use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Roster;
use crate::models::{locate, Sources};
use crate::runtime::Runtime;
use sis_actors::ModelState;

/// Longest a new or changed model may take to become ready before the reload gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What a reload did.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    /// Models started.
    pub added: Vec<String>,
    /// Models replaced by a changed entry.
    pub replaced: Vec<String>,
    /// Models no longer served (they drain).
    pub removed: Vec<String>,
    /// Models left as they were.
    pub unchanged: Vec<String>,
    /// Models that could not be started, with why; an old version keeps serving.
    pub failed: Vec<(String, String)>,
}

/// Reads the roster again and applies it. Must run inside an actix system; one reload at a time.
pub async fn reload(runtime: Arc<Runtime>) -> anyhow::Result<ReloadReport> {
    let _one_at_a_time = runtime.reloading.lock().await;
    let settings = &runtime.settings;
    let roster = Roster::load_with_overlay(&settings.config_path, settings.overlay_path.as_deref())?;
    let wanted = roster.select(&settings.models)?;
    let mut report = ReloadReport::default();

    for (id, _) in runtime.registry.all() {
        if !wanted.iter().any(|e| e.id == id) {
            runtime.registry.remove(&id);
            tracing::info!(model = %id, "model removed by reload; it drains");
            report.removed.push(id);
        }
    }

    let mut starting = Vec::new();
    for entry in wanted {
        let old = runtime.registry.get(&entry.id);
        if old.as_ref().is_some_and(|old| entry.describes(&old.entry)) {
            report.unchanged.push(entry.id);
            continue;
        }
        let id = entry.id.clone();
        let sources = Sources::new(settings);
        let mut probe = entry.clone();
        let located = tokio::task::spawn_blocking(move || locate(&mut probe, &sources).map(|r| (r, probe))).await;
        let (resolved, entry) = match located {
            Ok(Ok(located)) => located,
            Ok(Err(e)) => {
                report.failed.push((id, e.to_string()));
                continue;
            }
            Err(e) => {
                report.failed.push((id, e.to_string()));
                continue;
            }
        };
        match runtime.start_model(entry, resolved) {
            Ok(served) => starting.push((served, old.is_some())),
            Err(e) => report.failed.push((id, format!("{e:#}"))),
        }
    }

    for (served, replaces) in starting {
        let id = served.entry.id.clone();
        let started = Instant::now();
        let state = loop {
            let state = served.status.state();
            if matches!(state, ModelState::Ready | ModelState::Failed) || started.elapsed() > READY_TIMEOUT {
                break state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if state != ModelState::Ready {
            let why = served.status.last_error().unwrap_or_else(|| format!("not ready ({})", state.as_str()));
            report.failed.push((id, why));
            continue;
        }
        runtime.registry.insert(id.clone(), served);
        tracing::info!(model = %id, replaced = replaces, "model started by reload");
        if replaces {
            report.replaced.push(id);
        } else {
            report.added.push(id);
        }
    }
    Ok(report)
}
