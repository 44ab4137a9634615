//! Liveness and readiness over HTTP for the kubelet's probes.
//!
//! `/healthz` answers 200 while the daemon's loop keeps publishing its status (meshd is
//! alive, even while it is still converging) and 503 once the status is older than
//! [`STALE_AFTER`]; `/readyz` answers 200 only while the last reconcile converged, so a
//! node whose mesh is not programmed is reported not ready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::RwLock;

use crate::control::SharedStatus;

/// A status older than this means the daemon's loop is stuck.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// When the daemon last published its status.
pub type Heartbeat = Arc<RwLock<Option<Instant>>>;

#[derive(Clone)]
struct Shared {
    status: SharedStatus,
    heartbeat: Heartbeat,
    started: Instant,
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    let last = *s.heartbeat.read().await;
    let fresh = match last {
        Some(at) => at.elapsed() < STALE_AFTER,
        // Starting: give the first pass the same allowance.
        None => s.started.elapsed() < STALE_AFTER,
    };
    if fresh {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "meshd's loop has not reported for 30 s\n")
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    match s.status.read().await.as_ref() {
        Some(st) if st.converged => (StatusCode::OK, "ready\n"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "mesh not converged\n"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    }
}

/// Serve the probes on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    heartbeat: Heartbeat,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared {
            status,
            heartbeat,
            started: Instant::now(),
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health endpoints listening");
    axum::serve(listener, app).await
}
