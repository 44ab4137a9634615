//! The control socket under stuck and hostile clients: a 1 GiB request line is refused after
//! its first bytes, a silent client neither blocks `status` nor stays, and clients beyond
//! [`MAX_CLIENTS`] are closed at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::RwLock;

use super::tests_support::sample;
use super::{query, serve, ControlError, SharedStatus, MAX_CLIENTS, REQUEST_TIMEOUT};

async fn serving(dir: &Path) -> (PathBuf, tokio::task::JoinHandle<Result<(), ControlError>>) {
    let path = dir.join("meshd.sock");
    let status: SharedStatus = Arc::new(RwLock::new(Some(sample())));
    let (commands, _rx) = tokio::sync::mpsc::channel(1);
    let server = tokio::spawn(serve(path.clone(), status, commands));
    for _ in 0..100 {
        if UnixStream::connect(&path).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    (path, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_line_is_refused_unread_and_status_keeps_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, server) = serving(dir.path()).await;
    let stream = UnixStream::connect(&path).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    // Up to 1 GiB without a newline: the daemon stops reading after its limit, answers
    // and closes, so the writer fails long before the end.
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..1024 {
            if write.write_all(&chunk).await.is_err() {
                return sent;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        read.read_to_string(&mut answer),
    )
    .await
    .expect("answered in time")
    .expect("read");
    assert!(answer.contains("longer than 256 bytes"), "{answer}");
    let sent = writer.await.expect("writer");
    assert!(sent < 64 << 20, "the daemon read {sent} bytes of the line");
    assert_eq!(query(&path).await.expect("status"), sample());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_neither_blocks_status_nor_stays_for_ever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, server) = serving(dir.path()).await;
    let mut silent = UnixStream::connect(&path).await.expect("connect");
    let started = std::time::Instant::now();
    assert_eq!(query(&path).await.expect("status"), sample());
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    // The silent client is dropped after the request timeout, with a reason.
    let mut answer = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT + std::time::Duration::from_secs(3),
        silent.read_to_string(&mut answer),
    )
    .await
    .expect("dropped in time")
    .expect("read");
    assert!(answer.contains("no request line within"), "{answer}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_the_cap_are_closed_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, server) = serving(dir.path()).await;
    let mut held = Vec::new();
    for _ in 0..MAX_CLIENTS {
        held.push(UnixStream::connect(&path).await.expect("connect"));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut extra = UnixStream::connect(&path).await.expect("connect");
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        extra.read_to_end(&mut buf),
    )
    .await
    .expect("closed at once")
    .unwrap_or(0);
    assert_eq!(n, 0, "the excess client got an answer");
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(query(&path).await.expect("status"), sample());
    server.abort();
}
