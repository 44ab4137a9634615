//! The UAPI socket `/var/run/wireguard/NAME.sock`: binding it (refusing one a live device
//! serves, replacing a stale one) and serving `get`/`set` requests on it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::PollTimeout;

use crate::device::Core;
use crate::threads::Runtime;
use crate::uapi::{parse_request, socket_path, write_errno, write_get, Request, SOCKET_DIR};

/// Longest request line accepted.
pub const MAX_LINE: u64 = 4096;
/// Largest request (all its lines) accepted: a `set` of thousands of peers fits many times.
pub const MAX_REQUEST: usize = 4 << 20;
/// How long one connection may stall before it is dropped.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take to arrive, however it trickles in.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 4;

/// Errors of setting up the UAPI socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Creating the socket directory failed.
    #[error("creating {}", path.display())]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A live device already answers on the socket (maybe in another network namespace).
    #[error("UAPI socket {} is served by a live device", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Binding or preparing the socket failed.
    #[error("binding UAPI socket {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A bound UAPI socket and the inode it was bound as (to notice removal or replacement).
#[derive(Debug)]
pub struct UapiSocket {
    /// The listener (non-blocking).
    pub listener: UnixListener,
    /// Its path.
    pub path: PathBuf,
    /// The inode of the socket file.
    pub ino: u64,
}

impl UapiSocket {
    /// Fails if a live device already answers on the socket of `name` (checked before the
    /// TUN is touched, so a second device of the same name changes nothing).
    pub fn check_free(name: &str) -> Result<(), ControlError> {
        let path = socket_path(name);
        if UnixStream::connect(&path).is_ok() {
            return Err(ControlError::InUse { path });
        }
        Ok(())
    }

    /// Binds the socket of device `name`.
    pub fn bind(name: &str) -> Result<UapiSocket, ControlError> {
        let dir = Path::new(SOCKET_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| ControlError::SocketDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let path = socket_path(name);
        let bind_err = |source| ControlError::Bind {
            path: path.clone(),
            source,
        };
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(ControlError::InUse { path });
            }
            tracing::warn!(path = %path.display(), "removing stale UAPI socket");
            std::fs::remove_file(&path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let ino = std::fs::metadata(&path).map_err(bind_err)?.ino();
        Ok(UapiSocket {
            listener,
            path,
            ino,
        })
    }

    /// Whether the socket file is still the one bound (not removed or replaced).
    pub fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino)
    }

    /// Removes the socket file if it is still ours.
    pub fn remove(&self) {
        if self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Accepts connections until the device stops, serving each on a thread of its own (at
    /// most [`MAX_CLIENTS`] at once; one more is closed at once).
    pub fn serve(&self, rt: &Runtime) {
        let active = Arc::new(AtomicUsize::new(0));
        loop {
            if rt.stop.load(Ordering::Relaxed) {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => dispatch(&rt.core, &active, stream),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [
                        nix::poll::PollFd::new(self.listener.as_fd(), nix::poll::PollFlags::POLLIN),
                        nix::poll::PollFd::new(rt.stop_fd.as_fd(), nix::poll::PollFlags::POLLIN),
                    ];
                    let _ = nix::poll::poll(&mut fds, PollTimeout::NONE);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::warn!(%err, "UAPI accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Serves `stream` on a thread of its own, or closes it when [`MAX_CLIENTS`] are served.
fn dispatch(core: &Arc<Core>, active: &Arc<AtomicUsize>, stream: UnixStream) {
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
        active.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            max = MAX_CLIENTS,
            "UAPI: too many connections at once, closing a new one"
        );
        return;
    }
    let core = core.clone();
    let done = ActiveGuard(active.clone());
    let spawned = std::thread::Builder::new()
        .name("wgdp-uapi-conn".into())
        .spawn(move || {
            let _done = done;
            if let Err(err) = serve_connection(&core, stream) {
                tracing::debug!(%err, "UAPI connection ended");
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(%err, "UAPI: no thread for a connection");
    }
}

/// Counts a connection as served until dropped (also when its thread could not start).
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves requests on one connection until EOF.
pub fn serve_connection(core: &Core, stream: UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Arc::new(std::sync::Mutex::new(Instant::now() + REQUEST_TIMEOUT));
    let mut reader = BufReader::new(DeadlineReader {
        stream: &stream,
        deadline: deadline.clone(),
    });
    let mut writer = DeadlineResetWriter {
        stream: &stream,
        deadline,
    };
    serve_requests(core, &mut reader, &mut writer)
}

/// Reads from the socket, failing once the current request's deadline passed, each read
/// waiting at most [`IO_TIMEOUT`] (or what is left before the deadline).
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Arc<std::sync::Mutex<Instant>>,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "request not complete within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
            ));
        }
        self.stream.set_read_timeout(Some(left.min(IO_TIMEOUT)))?;
        let mut stream = self.stream;
        match stream.read(buf) {
            // SO_RCVTIMEO expiring reads as EAGAIN.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                if left <= IO_TIMEOUT {
                    format!(
                        "request not complete within {} s",
                        REQUEST_TIMEOUT.as_secs()
                    )
                } else {
                    format!("nothing read for {} s", IO_TIMEOUT.as_secs())
                },
            )),
            other => other,
        }
    }
}

/// Writes answers; each answer flushed starts the next request's deadline.
struct DeadlineResetWriter<'a> {
    stream: &'a UnixStream,
    deadline: Arc<std::sync::Mutex<Instant>>,
}

impl Write for DeadlineResetWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut stream = self.stream;
        stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + REQUEST_TIMEOUT;
        let mut stream = self.stream;
        stream.flush()
    }
}

/// Reads requests from `r` and writes the answers to `w` until EOF.
///
/// A request's lines are kept in one buffer (not a `String` each): a `set` of 5,000 peers is
/// 35,000 lines, which as separate allocations cost 2.8 MB of heap and left it fragmented
/// around the peers the same request created. After a large request or answer the freed
/// memory is handed back to the kernel ([`crate::memory::release_free`]).
pub fn serve_requests(core: &Core, r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    let mut request = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.by_ref().take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            // Too long (or cut by EOF): say so, and end the connection unread.
            let mut answer = String::new();
            write_errno(libc::E2BIG, &mut answer);
            let _ = w.write_all(answer.as_bytes()).and_then(|()| w.flush());
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "line too long or unterminated",
            ));
        }
        if line != "\n" {
            if request.len() + line.len() > MAX_REQUEST {
                // Answered, then the connection ends: the rest of the request is not read.
                tracing::warn!(max = MAX_REQUEST, "UAPI request too large");
                let mut answer = String::new();
                write_errno(libc::E2BIG, &mut answer);
                w.write_all(answer.as_bytes())?;
                w.flush()?;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("request larger than {MAX_REQUEST} bytes"),
                ));
            }
            request.push_str(&line);
            continue;
        }
        if request.is_empty() {
            continue;
        }
        let mut answer = String::new();
        match parse_request(request.split_terminator('\n')) {
            Ok(Request::Get) => write_get(&core.info(), &mut answer),
            Ok(Request::Set(req)) => {
                let started = std::time::Instant::now();
                match core.apply(&req) {
                    Ok(()) => {
                        tracing::debug!(peers = req.peers.len(), elapsed = ?started.elapsed(), "UAPI set applied");
                        write_errno(0, &mut answer)
                    }
                    Err(err) => {
                        tracing::warn!(%err, "UAPI set failed");
                        write_errno(err.errno(), &mut answer)
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, "invalid UAPI request");
                write_errno(err.errno(), &mut answer)
            }
        }
        let large = request.len().max(answer.len()) >= crate::memory::LARGE_EXCHANGE;
        request = String::new();
        w.write_all(answer.as_bytes())?;
        w.flush()?;
        drop(answer);
        if large {
            crate::memory::release_free();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::Key;

    fn exchange(core: &Core, input: &str) -> String {
        let mut out = Vec::new();
        serve_requests(core, &mut io::Cursor::new(input.as_bytes()), &mut out).expect("serve");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn several_requests_on_one_connection() {
        let core = Core::new(None, Box::new(|| {}));
        let key = Key([3; 32]).to_hex();
        let peer = Key([4; 32]).to_hex();
        let out = exchange(
            &core,
            &format!(
                "set=1\nprivate_key={key}\npublic_key={peer}\nallowed_ip=10.1.0.0/16\n\nget=1\n\nset=1\nbogus=1\n\n"
            ),
        );
        let want_get = format!(
            "private_key={key}\nlisten_port=0\npublic_key={peer}\nprotocol_version=1\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=0\nallowed_ip=10.1.0.0/16\nerrno=0\n\n"
        );
        assert_eq!(out, format!("errno=0\n\n{want_get}errno=22\n\n"));
        // An overlong line ends the connection with an error.
        let mut out = Vec::new();
        let long = format!("set=1\n{}\n", "x".repeat(10_000));
        assert!(serve_requests(&core, &mut io::Cursor::new(long.as_bytes()), &mut out).is_err());
    }

    /// A listener at a temporary path whose connections go through [`dispatch`].
    fn listening(core: Arc<Core>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wg.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                dispatch(&core, &active, stream);
            }
        });
        (dir, path)
    }

    fn get(path: &Path) -> String {
        let mut c = UnixStream::connect(path).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        c.write_all(b"get=1\n\n").expect("write");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !crate::uapi::answer_complete(&answer) {
            let n = c.read(&mut buf).expect("answer in time");
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(answer).expect("utf-8")
    }

    #[test]
    fn a_silent_client_does_not_block_the_next_and_the_excess_is_closed() {
        let core = Arc::new(Core::new(None, Box::new(|| {})));
        let (_dir, path) = listening(core);
        let silent: Vec<UnixStream> = (0..MAX_CLIENTS - 1)
            .map(|_| UnixStream::connect(&path).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        assert!(get(&path).ends_with("errno=0\n\n"));
        // With every slot taken, one more is closed without an answer (once the served
        // client's thread has seen it leave).
        std::thread::sleep(Duration::from_millis(100));
        let held = UnixStream::connect(&path).expect("connect");
        std::thread::sleep(Duration::from_millis(100));
        let mut extra = UnixStream::connect(&path).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let _ = extra.write_all(b"get=1\n\n");
        let mut buf = [0u8; 64];
        assert_eq!(
            extra.read(&mut buf).unwrap_or(0),
            0,
            "the excess client was served"
        );
        drop(held);
        drop(silent);
        std::thread::sleep(Duration::from_millis(100));
        assert!(get(&path).ends_with("errno=0\n\n"));
    }

    #[test]
    fn an_oversized_request_is_refused_unread() {
        let core = Arc::new(Core::new(None, Box::new(|| {})));
        let (_dir, path) = listening(core);
        let mut c = UnixStream::connect(&path).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let writer = {
            let mut c = c.try_clone().expect("clone");
            std::thread::spawn(move || {
                // Endless short lines: each is fine, the request is not.
                let line = "allowed_ip=10.0.0.0/8\n".repeat(1000);
                let mut sent = 0usize;
                while sent < 256 << 20 {
                    if c.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                    sent += line.len();
                }
                sent
            })
        };
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert_eq!(answer, format!("errno={}\n\n", libc::E2BIG));
        let sent = writer.join().expect("writer");
        assert!(
            sent < 64 << 20,
            "the device read {sent} bytes of one request"
        );
        assert!(get(&path).ends_with("errno=0\n\n"));
    }

    #[test]
    fn a_trickling_request_times_out() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        let deadline = Arc::new(std::sync::Mutex::new(
            Instant::now() + Duration::from_secs(1),
        ));
        let trickle = std::thread::spawn(move || {
            for _ in 0..30 {
                if b.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut reader = BufReader::new(DeadlineReader {
            stream: &a,
            deadline,
        });
        let started = Instant::now();
        let mut line = String::new();
        let err = reader.read_line(&mut line).expect_err("cut off");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(reader);
        drop(a);
        trickle.join().expect("trickle");
    }
}
