//! Liveness and readiness over HTTP for the kubelet's probes.
//!
//! `/healthz` answers 200 while the daemon's loop keeps publishing its status (meshd is
//! alive, even while it is still converging) and 503 once the status is older than
//! [`STALE_AFTER`]; `/readyz` answers 200 only while the last reconcile converged, so a
//! node whose mesh is not programmed is reported not ready. `/metrics` is the Prometheus
//! exposition of [`crate::metrics`]; `/status` is the node's status report as JSON (what
//! `meshctl status -o json` prints), which `meshctl audit` reads from every node of a cluster.

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
    metrics: crate::metrics::Metrics,
    started: Instant,
}

async fn metrics(State(s): State<Shared>) -> ([(&'static str, &'static str); 1], String) {
    let status = s.status.read().await;
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(status.as_ref()),
    )
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
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "meshd's loop has not reported for 30 s\n",
        )
    }
}

async fn status(
    State(s): State<Shared>,
) -> (StatusCode, axum::Json<Option<crate::control::StatusReport>>) {
    let report = s.status.read().await.clone();
    let code = if report.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(report))
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    match s.status.read().await.as_ref() {
        Some(st) if st.converged => (StatusCode::OK, "ready\n"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "mesh not converged\n"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    }
}

/// Serve the probes and `/metrics` on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    heartbeat: Heartbeat,
    metrics: crate::metrics::Metrics,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health and metrics endpoints listening");
    serve_on(listener, status, heartbeat, metrics).await
}

/// Serve the probes and `/metrics` on a bound listener until the task is dropped.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    status: SharedStatus,
    heartbeat: Heartbeat,
    metrics: crate::metrics::Metrics,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .route("/status", get(self::status))
        .with_state(Shared {
            status,
            heartbeat,
            metrics,
            started: Instant::now(),
        });
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> u16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn readiness_follows_convergence_and_liveness_the_heartbeat() {
        let status: SharedStatus = Arc::new(RwLock::new(None));
        let heartbeat: Heartbeat = Arc::new(RwLock::new(None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_on(
            listener,
            status.clone(),
            heartbeat.clone(),
            crate::metrics::Metrics::new(),
        ));
        // Starting: alive, not ready.
        assert_eq!(get(addr, "/healthz").await, 200);
        assert_eq!(get(addr, "/readyz").await, 503);
        let mut report = crate::control::tests_support::sample();
        report.converged = false;
        *status.write().await = Some(report.clone());
        *heartbeat.write().await = Some(Instant::now());
        assert_eq!(get(addr, "/readyz").await, 503, "not converged");
        report.converged = true;
        *status.write().await = Some(report);
        assert_eq!(get(addr, "/readyz").await, 200);
        // A loop that stopped reporting is not alive.
        *heartbeat.write().await = Instant::now().checked_sub(STALE_AFTER + Duration::from_secs(1));
        assert_eq!(get(addr, "/healthz").await, 503);
        assert_eq!(get(addr, "/metrics").await, 200);
        assert_eq!(get(addr, "/status").await, 200);
        assert_eq!(get(addr, "/nope").await, 404);
        server.abort();
    }
}
