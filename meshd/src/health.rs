//! Liveness and readiness over HTTP for the kubelet's probes.
//!
//! `/healthz` answers 200 while the daemon's loop keeps publishing its status (meshd is
//! alive, even while it is still converging) and 503 once the status is older than
//! [`STALE_AFTER`]; `/readyz` answers 200 only while the last reconcile converged, so a
//! node whose mesh is not programmed is reported not ready. `/metrics` is the Prometheus
//! exposition of [`crate::metrics`]; `/status` is the node's status report as JSON (what
//! `meshctl status -o json` prints), which `meshctl audit` reads from every node of a cluster.
//!
//! Two listeners: the full one ([`serve`], `--health-listen`, loopback by default) and a
//! probe-only one ([`serve_probes`], `--probe-listen`) that answers `/healthz` and `/readyz`
//! and nothing else, for a kubelet that can only probe the node's address. Both bound what a
//! client can hold: [`MAX_CONNECTIONS`] at once (a connection beyond them is closed as soon as
//! it is accepted), [`HEADER_TIMEOUT`] to send a request's head, [`CONNECTION_TIMEOUT`] for a
//! whole connection, and [`MAX_REQUEST_HEAD`] bytes of request head; request bodies are never
//! read.

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

/// Connections served at once per listener; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 128;

/// How long a client may take to send a request's line and headers (also between
/// requests on a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may last, whatever it does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request head (request line and headers) read.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

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
    // Read in place, under the lock: no copy of the status per scrape.
    let body = s.metrics.render_served(s.status.read().await.as_ref());
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
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
    let report = s
        .status
        .read()
        .await
        .as_ref()
        .map(crate::control::ServedStatus::report);
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

/// Serve the probes, `/metrics` and `/status` on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    heartbeat: Heartbeat,
    metrics: crate::metrics::Metrics,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health, metrics and status endpoints listening");
    serve_on(listener, status, heartbeat, metrics).await
}

/// Serve only `/healthz` and `/readyz` on `addr` until the task is dropped.
pub async fn serve_probes(
    addr: SocketAddr,
    status: SharedStatus,
    heartbeat: Heartbeat,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "probe endpoints listening");
    serve_probes_on(listener, status, heartbeat).await
}

/// Serve only `/healthz` and `/readyz` on a bound listener until the task is dropped.
pub async fn serve_probes_on(
    listener: tokio::net::TcpListener,
    status: SharedStatus,
    heartbeat: Heartbeat,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared {
            status,
            heartbeat,
            // Never rendered here: this listener has no /metrics.
            metrics: crate::metrics::Metrics::new(),
            started: Instant::now(),
        });
    serve_limited(listener, app).await
}

/// Serve the probes, `/metrics` and `/status` on a bound listener until the task is dropped.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    status: SharedStatus,
    heartbeat: Heartbeat,
    metrics: crate::metrics::Metrics,
) -> std::io::Result<()> {
    let shared = Shared {
        status,
        heartbeat,
        metrics,
        started: Instant::now(),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .route("/status", get(self::status))
        .with_state(shared);
    serve_limited(listener, app).await
}

/// Serve `app` on `listener` with the limits of this module (see its documentation).
async fn serve_limited(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Out of descriptors (EMFILE) lasts until connections close: do not spin.
                tracing::warn!(%err, "health listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = MAX_CONNECTIONS, "health listener: too many connections, closing a new one");
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(%peer, %err, "health connection ended"),
                Err(_) => tracing::debug!(%peer, "health connection closed after its time limit"),
            }
            drop(slot);
        });
    }
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

    async fn try_get(addr: SocketAddr, path: &str) -> Option<u16> {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
            .await
            .ok()?
            .ok()?;
        out.split_whitespace().nth(1)?.parse().ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_capped_and_timed_out() {
        let status: SharedStatus = Arc::new(RwLock::new(None));
        let heartbeat: Heartbeat = Arc::new(RwLock::new(None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_on(
            listener,
            status,
            heartbeat,
            crate::metrics::Metrics::new(),
        ));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 50 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // The ones beyond the cap are closed at once; all of them after the header timeout.
        let started = Instant::now();
        let mut closed_fast = 0;
        // Newest first: those are the excess.
        for s in idle.iter_mut().rev() {
            let mut buf = [0u8; 1];
            let remaining =
                (HEADER_TIMEOUT + Duration::from_secs(3)).saturating_sub(started.elapsed());
            let n = tokio::time::timeout(remaining, s.read(&mut buf))
                .await
                .expect("every idle connection is closed within the header timeout")
                .unwrap_or(0);
            assert_eq!(n, 0);
            if started.elapsed() < Duration::from_secs(1) {
                closed_fast += 1;
            }
        }
        assert!(
            closed_fast >= 50,
            "only {closed_fast} excess connections closed at once"
        );
        // A fresh client is served again.
        assert_eq!(try_get(addr, "/metrics").await, Some(200));
        // A request head larger than the bound is refused, not buffered.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(1 << 20)
        );
        let _ = s.write_all(huge.as_bytes()).await;
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
        assert!(!out.contains(" 200 "), "{out}");
        assert_eq!(try_get(addr, "/metrics").await, Some(200));
        server.abort();
    }

    #[tokio::test]
    async fn the_probe_listener_answers_probes_only() {
        let status: SharedStatus =
            Arc::new(RwLock::new(Some(crate::control::tests_support::sample())));
        let heartbeat: Heartbeat = Arc::new(RwLock::new(Some(Instant::now())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_probes_on(listener, status, heartbeat));
        assert_eq!(get(addr, "/healthz").await, 200);
        assert_eq!(get(addr, "/readyz").await, 200);
        assert_eq!(get(addr, "/metrics").await, 404);
        assert_eq!(get(addr, "/status").await, 404);
        server.abort();
    }
}
