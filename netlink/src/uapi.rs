//! Client for the cross-platform WireGuard configuration protocol ("UAPI") spoken by
//! user-space implementations over `/var/run/wireguard/NAME.sock`.
//!
//! The wire format: a `get=1\n\n` request is answered with `key=value` lines ending in
//! `errno=N\n\n`; a `set=1\n` request carries `key=value` lines, ends with an empty line,
//! and is answered with `errno=N\n\n`. Keys are lowercase hex.
//!
//! Serialising ([`set_request`]) and parsing ([`parse_get`]) are pure functions; the
//! socket I/O is in [`get`], [`set`] and [`peer_pid`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::device::{PeerChange, PeerStatus};

/// Directory holding the UAPI sockets of user-space WireGuard devices.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long one UAPI exchange may take before it is abandoned.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the UAPI client.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// Connecting to the UAPI socket failed.
    #[error("connecting to UAPI socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the request or reading the answer failed.
    #[error("UAPI {op} exchange on {path}")]
    Io {
        /// `get` or `set`.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange did not finish in time.
    #[error("UAPI {op} on {path} timed out")]
    Timeout {
        /// `get` or `set`.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
    },
    /// The device answered with a non-zero errno.
    #[error("UAPI {op} failed with errno={errno}")]
    Errno {
        /// `get` or `set`.
        op: &'static str,
        /// The errno the device reported.
        errno: i32,
    },
    /// The answer could not be parsed.
    #[error("parsing UAPI answer line {line:?}: {reason}")]
    Parse {
        /// The offending line.
        line: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Reading the peer credentials of the socket failed.
    #[error("reading SO_PEERCRED of {path}")]
    PeerCred {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
}

/// The socket path of the user-space device `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// The device state reported by a UAPI `get`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UapiState {
    /// The device's private key, if set.
    pub private_key: Option<[u8; 32]>,
    /// The UDP listen port (0 when the device did not report one).
    pub listen_port: u16,
    /// The firewall mark on the device's UDP packets (0: none).
    pub fwmark: u32,
    /// The peers, in the order the device reported them.
    pub peers: Vec<PeerStatus>,
}

/// Lowercase hex of a key.
pub fn key_to_hex(key: &[u8; 32]) -> String {
    let mut out = String::with_capacity(64);
    for b in key {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses a 64-digit hex key.
pub fn key_from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Collapses `changes` to the last change per public key, keeping their order.
fn normalise(changes: &[PeerChange]) -> Vec<&PeerChange> {
    let mut last: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    for (i, change) in changes.iter().enumerate() {
        last.insert(change_key(change), i);
    }
    changes
        .iter()
        .enumerate()
        .filter(|(i, c)| last.get(&change_key(c)) == Some(i))
        .map(|(_, c)| c)
        .collect()
}

fn change_key(change: &PeerChange) -> [u8; 32] {
    match change {
        PeerChange::Upsert(p) => p.public_key,
        PeerChange::Remove(k) => *k,
    }
}

fn format_endpoint(ep: &SocketAddr) -> String {
    match ep {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

/// Serialises peer changes into complete `set=1` requests (each terminated by the empty
/// line), to be sent in order. Other peers are never touched.
///
/// One request: removals first, then every upsert in place (a peer section states its
/// endpoint, keepalive (0 = off) and, after `replace_allowed_ips`, its allowed IPs), so an
/// updated peer keeps its session and counters. If a key appears more than once, its last
/// change wins.
pub fn set_requests(changes: &[PeerChange]) -> Vec<String> {
    let changes = normalise(changes);
    if changes.is_empty() {
        return Vec::new();
    }
    let mut req = String::from("set=1\n");
    for change in &changes {
        if let PeerChange::Remove(key) = change {
            let _ = writeln!(req, "public_key={}", key_to_hex(key));
            req.push_str("remove=true\n");
        }
    }
    for change in &changes {
        let PeerChange::Upsert(peer) = change else {
            continue;
        };
        let _ = writeln!(req, "public_key={}", key_to_hex(&peer.public_key));
        if let Some(ep) = &peer.endpoint {
            let _ = writeln!(req, "endpoint={}", format_endpoint(ep));
        }
        let _ = writeln!(
            req,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive.unwrap_or(0)
        );
        req.push_str("replace_allowed_ips=true\n");
        for net in &peer.allowed_ips {
            let _ = writeln!(req, "allowed_ip={net}");
        }
    }
    req.push('\n');
    vec![req]
}

/// Serialises a `set=1` request for the device's own key, listen port and firewall mark;
/// `None` fields are left untouched.
pub fn set_device_request(
    private_key: Option<&[u8; 32]>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
) -> String {
    let mut out = String::from("set=1\n");
    if let Some(key) = private_key {
        let _ = writeln!(out, "private_key={}", key_to_hex(key));
    }
    if let Some(port) = listen_port {
        let _ = writeln!(out, "listen_port={port}");
    }
    if let Some(mark) = fwmark {
        let _ = writeln!(out, "fwmark={mark}");
    }
    out.push('\n');
    out
}

fn bad(line: &str, reason: &'static str) -> UapiError {
    UapiError::Parse {
        line: line.to_string(),
        reason,
    }
}

fn num<T: std::str::FromStr>(line: &str, val: &str) -> Result<T, UapiError> {
    val.parse().map_err(|_| bad(line, "not a number"))
}

/// Parses the answer to `get=1` (up to and including `errno=N`). A non-zero errno is
/// returned as [`UapiError::Errno`]; a missing errno line is a parse error.
pub fn parse_get(text: &str) -> Result<UapiState, UapiError> {
    let mut state = UapiState::default();
    // Handshake seconds/nanoseconds arrive on separate lines; combine per peer.
    let mut hs: Option<(u64, u32)> = None;
    let mut errno = None;
    fn finish(state: &mut UapiState, hs: &mut Option<(u64, u32)>) {
        if let (Some(peer), Some((sec, nsec))) = (state.peers.last_mut(), hs.take()) {
            peer.last_handshake = if sec == 0 && nsec == 0 {
                None
            } else {
                Some(UNIX_EPOCH + Duration::new(sec, nsec))
            };
        }
    }
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let (key, val) = line.split_once('=').ok_or_else(|| bad(line, "no '='"))?;
        match key {
            "errno" => {
                errno = Some(num::<i32>(line, val)?);
                break;
            }
            "private_key" => {
                state.private_key = Some(key_from_hex(val).ok_or_else(|| bad(line, "bad key"))?)
            }
            "listen_port" => state.listen_port = num(line, val)?,
            "fwmark" if state.peers.is_empty() => state.fwmark = num(line, val)?,
            "public_key" => {
                finish(&mut state, &mut hs);
                state.peers.push(PeerStatus::new(
                    key_from_hex(val).ok_or_else(|| bad(line, "bad key"))?,
                ));
            }
            _ => {
                let Some(peer) = state.peers.last_mut() else {
                    // Device-level keys we do not model.
                    continue;
                };
                match key {
                    "endpoint" => {
                        peer.endpoint = Some(val.parse().map_err(|_| bad(line, "bad endpoint"))?)
                    }
                    "allowed_ip" => peer
                        .allowed_ips
                        .push(val.parse::<IpNet>().map_err(|_| bad(line, "bad cidr"))?),
                    "last_handshake_time_sec" => {
                        hs.get_or_insert((0, 0)).0 = num(line, val)?;
                    }
                    "last_handshake_time_nsec" => {
                        hs.get_or_insert((0, 0)).1 = num(line, val)?;
                    }
                    "rx_bytes" => peer.rx_bytes = num(line, val)?,
                    "tx_bytes" => peer.tx_bytes = num(line, val)?,
                    "persistent_keepalive_interval" => {
                        let n: u16 = num(line, val)?;
                        peer.persistent_keepalive = (n != 0).then_some(n);
                    }
                    _ => {}
                }
            }
        }
    }
    finish(&mut state, &mut hs);
    match errno {
        Some(0) => Ok(state),
        Some(errno) => Err(UapiError::Errno { op: "get", errno }),
        None => Err(bad("", "answer ended without errno")),
    }
}

/// Parses the answer to a `set=1` request.
pub fn parse_set(text: &str) -> Result<(), UapiError> {
    for line in text.lines() {
        if let Some(val) = line.strip_prefix("errno=") {
            let errno: i32 = num(line, val)?;
            return if errno == 0 {
                Ok(())
            } else {
                Err(UapiError::Errno { op: "set", errno })
            };
        }
    }
    Err(bad(text, "answer ended without errno"))
}

/// Sends `request` and reads the answer until the terminating empty line (or EOF).
async fn exchange(path: &Path, op: &'static str, request: &str) -> Result<String, UapiError> {
    let work = async {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| UapiError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let io = |source| UapiError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer_complete(&answer) {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(IO_TIMEOUT, work)
        .await
        .map_err(|_| UapiError::Timeout {
            op,
            path: path.to_path_buf(),
        })?
}

/// The answer ends with an `errno=N` line followed by an empty line.
fn answer_complete(answer: &[u8]) -> bool {
    if !answer.ends_with(b"\n\n") {
        return false;
    }
    let body = &answer[..answer.len() - 2];
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    last.starts_with(b"errno=")
}

/// Reads the device state from the UAPI socket at `path`.
pub async fn get(path: &Path) -> Result<UapiState, UapiError> {
    let answer = exchange(path, "get", "get=1\n\n").await?;
    parse_get(&answer)
}

/// Sends a complete `set=1` request (see [`set_request`]) to the UAPI socket at `path`.
pub async fn set(path: &Path, request: &str) -> Result<(), UapiError> {
    let answer = exchange(path, "set", request).await?;
    parse_set(&answer)
}

/// The pid of the process serving the UAPI socket at `path` (via `SO_PEERCRED`).
pub fn peer_pid(path: &Path) -> Result<i32, UapiError> {
    let stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| UapiError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|source| UapiError::PeerCred {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(cred.pid())
}

/// Converts a UAPI handshake time to `SystemTime` (exposed for callers formatting ages).
pub fn handshake_time(sec: u64, nsec: u32) -> Option<SystemTime> {
    (sec != 0 || nsec != 0).then(|| UNIX_EPOCH + Duration::new(sec, nsec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::PeerConfig;

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn hex_roundtrip() {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let h = key_to_hex(&k);
        assert_eq!(h.len(), 64);
        assert_eq!(h, h.to_lowercase());
        assert_eq!(key_from_hex(&h), Some(k));
        assert_eq!(key_from_hex("zz"), None);
        assert_eq!(key_from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn serialise_upsert_and_remove() {
        let changes = vec![
            PeerChange::Remove(key(3)),
            PeerChange::Upsert(PeerConfig {
                public_key: key(1),
                endpoint: Some("[2001:db8::1]:51820".parse().expect("ep")),
                allowed_ips: vec![net("10.1.0.0/24"), net("fd00::/64")],
                persistent_keepalive: Some(25),
            }),
            PeerChange::Upsert(PeerConfig {
                public_key: key(2),
                endpoint: None,
                allowed_ips: vec![],
                persistent_keepalive: None,
            }),
        ];
        let (k1, k2, k3) = (
            key_to_hex(&key(1)),
            key_to_hex(&key(2)),
            key_to_hex(&key(3)),
        );
        let got = set_requests(&changes);
        let want = vec![format!(
            "set=1\npublic_key={k3}\nremove=true\n\
             public_key={k1}\nendpoint=[2001:db8::1]:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=10.1.0.0/24\nallowed_ip=fd00::/64\n\
             public_key={k2}\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\n\n"
        )];
        assert_eq!(got, want);
    }

    #[test]
    fn serialise_last_change_per_key_wins() {
        let up = PeerConfig {
            public_key: key(1),
            endpoint: Some("192.0.2.1:51820".parse().expect("ep")),
            allowed_ips: vec![net("10.0.0.0/8")],
            persistent_keepalive: None,
        };
        let got = set_requests(&[PeerChange::Upsert(up.clone()), PeerChange::Remove(key(1))]);
        assert_eq!(
            got,
            vec![format!(
                "set=1\npublic_key={}\nremove=true\n\n",
                key_to_hex(&key(1))
            )]
        );
        let got = set_requests(&[PeerChange::Remove(key(1)), PeerChange::Upsert(up)]);
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("endpoint=192.0.2.1:51820\n"));
        assert!(!got[0].contains("remove"));
        assert!(set_requests(&[]).is_empty());
    }

    #[test]
    fn serialise_device() {
        assert_eq!(
            set_device_request(Some(&key(0xab)), Some(51820), Some(0x6d65)),
            format!(
                "set=1\nprivate_key={}\nlisten_port=51820\nfwmark=28005\n\n",
                "ab".repeat(32)
            )
        );
        assert_eq!(set_device_request(None, None, None), "set=1\n\n");
    }

    #[test]
    fn parse_full_get() {
        let text = format!(
            "private_key={}\nlisten_port=51820\nfwmark=28005\n\
             public_key={}\nendpoint=[fd00::2]:51821\nallowed_ip=10.2.0.0/24\nallowed_ip=fd10::/64\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             rx_bytes=100\ntx_bytes=200\npersistent_keepalive_interval=25\n\
             public_key={}\nendpoint=192.0.2.7:51820\nlast_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\nrx_bytes=0\ntx_bytes=0\n\
             errno=0\n\n",
            "11".repeat(32),
            "22".repeat(32),
            "33".repeat(32)
        );
        let st = parse_get(&text).expect("parse");
        assert_eq!(st.private_key, Some([0x11; 32]));
        assert_eq!(st.listen_port, 51820);
        assert_eq!(st.fwmark, 28005);
        assert_eq!(st.peers.len(), 2);
        let a = &st.peers[0];
        assert_eq!(a.public_key, [0x22; 32]);
        assert_eq!(a.endpoint, Some("[fd00::2]:51821".parse().expect("ep")));
        assert_eq!(a.allowed_ips, vec![net("10.2.0.0/24"), net("fd10::/64")]);
        assert_eq!(
            a.last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!((a.rx_bytes, a.tx_bytes), (100, 200));
        assert_eq!(a.persistent_keepalive, Some(25));
        let b = &st.peers[1];
        assert_eq!(b.public_key, [0x33; 32]);
        assert_eq!(b.endpoint, Some("192.0.2.7:51820".parse().expect("ep")));
        assert!(b.allowed_ips.is_empty());
        assert_eq!(b.last_handshake, None);
        assert_eq!(b.persistent_keepalive, None);
    }

    #[test]
    fn parse_empty_and_errors() {
        let st = parse_get("errno=0\n\n").expect("parse");
        assert_eq!(st, UapiState::default());
        assert!(matches!(
            parse_get("errno=22\n\n"),
            Err(UapiError::Errno {
                op: "get",
                errno: 22
            })
        ));
        assert!(matches!(
            parse_get("listen_port=1\n"),
            Err(UapiError::Parse { .. })
        ));
        assert!(matches!(
            parse_get("public_key=zz\nerrno=0\n\n"),
            Err(UapiError::Parse { .. })
        ));
        assert!(parse_set("errno=0\n\n").is_ok());
        assert!(matches!(
            parse_set("errno=-22\n\n"),
            Err(UapiError::Errno {
                op: "set",
                errno: -22
            })
        ));
        assert!(parse_set("").is_err());
    }

    #[test]
    fn answer_completion() {
        assert!(answer_complete(b"errno=0\n\n"));
        assert!(answer_complete(b"listen_port=1\nerrno=0\n\n"));
        assert!(!answer_complete(b"listen_port=1\n"));
        assert!(!answer_complete(b"listen_port=1\n\n"));
        assert_eq!(
            handshake_time(0, 0),
            None,
            "a zero handshake time means never"
        );
        assert!(handshake_time(1, 0).is_some());
    }

    #[test]
    fn socket_paths() {
        assert_eq!(
            socket_path("wg0"),
            PathBuf::from("/var/run/wireguard/wg0.sock")
        );
    }
}
