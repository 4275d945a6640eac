//! Process signals. SIGTERM and SIGINT drain and stop: new API requests get 503 and `/health/ready`
//! fails, admitted work finishes within `SHUTDOWN_GRACE_SEC`, then the server stops and the process
//! exits 0. SIGHUP reloads the roster.

use actix_web::dev::ServerHandle;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtime::Runtime;

/// Waits for signals until one asks to stop, then drains and stops the server.
pub async fn watch(runtime: Arc<Runtime>, server: ServerHandle) {
    wait_for_stop(&runtime).await;
    drain(&runtime).await;
    server.stop(true).await;
}

#[cfg(unix)]
async fn wait_for_stop(runtime: &Arc<Runtime>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => return tracing::info!("SIGINT: shutting down"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the roster");
                let runtime = runtime.clone();
                actix_web::rt::spawn(async move {
                    match crate::reload::reload(runtime).await {
                        Ok(report) => tracing::info!(report = %serde_json::to_string(&report).unwrap_or_default(), "roster reloaded"),
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "roster not reloaded"),
                    }
                });
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_stop(_: &Arc<Runtime>) {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("Ctrl-C: shutting down");
}

/// Stops admitting, then waits until every admitted request is answered or the grace period ends.
async fn drain(runtime: &Runtime) {
    runtime.start_draining();
    let grace = runtime.settings.shutdown_grace;
    let deadline = Instant::now() + grace;
    tracing::info!(in_flight = runtime.in_flight(), grace_sec = grace.as_secs_f64(), "draining");
    while runtime.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match runtime.in_flight() {
        0 => tracing::info!("drained; stopping"),
        left => tracing::warn!(left, "grace period over with requests still in flight; stopping"),
    }
}
