//! The UAPI socket `/var/run/wireguard/NAME.sock`: binding it (refusing one a live device
//! serves, replacing a stale one) and serving `get`/`set` requests on it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::PollTimeout;

use crate::device::Core;
use crate::threads::Runtime;
use crate::uapi::{parse_request, socket_path, write_errno, write_get, Request, SOCKET_DIR};

/// Longest request line accepted.
const MAX_LINE: u64 = 4096;
/// How long one connection may stall before it is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// Accepts and serves connections, one at a time, until the device stops.
    pub fn serve(&self, rt: &Runtime) {
        loop {
            if rt.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(err) = serve_connection(&rt.core, stream) {
                        tracing::debug!(%err, "UAPI connection ended");
                    }
                }
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

/// Serves requests on one connection until EOF.
pub fn serve_connection(core: &Core, stream: UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    serve_requests(core, &mut reader, &mut writer)
}

/// Reads requests from `r` and writes the answers to `w` until EOF.
pub fn serve_requests(core: &Core, r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.by_ref().take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "line too long or unterminated",
            ));
        }
        let text = line.trim_end_matches('\n');
        if !text.is_empty() {
            lines.push(text.to_string());
            continue;
        }
        if lines.is_empty() {
            continue;
        }
        let mut answer = String::new();
        match parse_request(lines.iter().map(String::as_str)) {
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
        lines.clear();
        w.write_all(answer.as_bytes())?;
        w.flush()?;
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
}
