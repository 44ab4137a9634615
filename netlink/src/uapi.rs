//! Client for the cross-platform WireGuard configuration protocol ("UAPI") spoken by
//! user-space implementations over `/var/run/wireguard/NAME.sock`: the user-space back end
//! of `device`.
//!
//! The wire format is written and read by `wgdp`'s codec ([`wgdp::uapi`], the one the
//! device serves with); this module turns [`PeerChange`]s into requests ([`set_requests`],
//! [`set_device_request`]), answers into a [`DeviceState`] ([`parse_get`], [`parse_set`]),
//! and does the socket I/O ([`get`], [`set`], [`peer_pid`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wgdp::uapi::{self as codec, AnswerError, Key, PeerUpdate, SetRequest};

use crate::model::{DeviceState, PeerChange, PeerStatus};

pub use wgdp::uapi::{socket_path, SOCKET_DIR};

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
    /// The answer could not be read.
    #[error("reading the UAPI {op} answer")]
    Parse {
        /// `get` or `set`.
        op: &'static str,
        /// What is wrong with it (never a value that could be a key).
        #[source]
        source: AnswerError,
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

impl UapiError {
    fn from_answer(op: &'static str, err: AnswerError) -> UapiError {
        match err {
            AnswerError::Errno(errno) => UapiError::Errno { op, errno },
            source => UapiError::Parse { op, source },
        }
    }
}

/// Lowercase hex of a key.
pub fn key_to_hex(key: &[u8; 32]) -> String {
    Key(*key).to_hex()
}

/// Parses a 64-digit hex key.
pub fn key_from_hex(hex: &str) -> Option<[u8; 32]> {
    Key::from_hex(hex).map(|k| k.0)
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
    let mut req = SetRequest::default();
    for change in &changes {
        if let PeerChange::Remove(key) = change {
            req.peers.push(PeerUpdate {
                remove: true,
                ..PeerUpdate::new(Key(*key))
            });
        }
    }
    for change in &changes {
        let PeerChange::Upsert(peer) = change else {
            continue;
        };
        req.peers.push(PeerUpdate {
            endpoint: peer.endpoint,
            persistent_keepalive: Some(peer.persistent_keepalive.unwrap_or(0)),
            replace_allowed_ips: true,
            allowed_ips: peer.allowed_ips.clone(),
            ..PeerUpdate::new(Key(peer.public_key))
        });
    }
    let mut text = String::new();
    codec::write_set(&req, &mut text);
    vec![text]
}

/// Serialises a `set=1` request for the device's own key, listen port and firewall mark;
/// `None` fields are left untouched.
pub fn set_device_request(
    private_key: Option<&[u8; 32]>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
) -> String {
    let req = SetRequest {
        private_key: private_key.map(|k| Some(Key(*k))),
        listen_port,
        fwmark,
        ..SetRequest::default()
    };
    let mut text = String::new();
    codec::write_set(&req, &mut text);
    text
}

/// Parses the answer to `get=1` (up to and including `errno=N`). A non-zero errno is
/// returned as [`UapiError::Errno`]; a missing errno line is a parse error.
pub fn parse_get(text: &str) -> Result<DeviceState, UapiError> {
    let info = codec::parse_get_answer(text).map_err(|e| UapiError::from_answer("get", e))?;
    Ok(DeviceState {
        private_key: info.private_key.map(|k| k.0),
        listen_port: info.listen_port,
        fwmark: info.fwmark,
        peers: info
            .peers
            .into_iter()
            .map(|p| PeerStatus {
                public_key: p.public_key.0,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips,
                last_handshake: p.last_handshake,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                persistent_keepalive: (p.persistent_keepalive != 0)
                    .then_some(p.persistent_keepalive),
            })
            .collect(),
    })
}

/// Parses the answer to a `set=1` request.
pub fn parse_set(text: &str) -> Result<(), UapiError> {
    codec::parse_set_answer(text).map_err(|e| UapiError::from_answer("set", e))
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
    codec::answer_complete(answer)
}

/// Reads the device state from the UAPI socket at `path`.
pub async fn get(path: &Path) -> Result<DeviceState, UapiError> {
    let answer = exchange(path, "get", "get=1\n\n").await?;
    parse_get(&answer)
}

/// Sends a complete `set=1` request (see [`set_requests`]) to the UAPI socket at `path`.
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

/// Converts a UAPI handshake time to `SystemTime` (exposed for callers formatting ages):
/// `None` for "never" (both zero) and for a time that is not one (nanoseconds of a second or
/// more, or beyond what the system clock holds).
pub fn handshake_time(sec: u64, nsec: u32) -> Option<SystemTime> {
    if (sec == 0 && nsec == 0) || nsec >= 1_000_000_000 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::new(sec, nsec))
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;

    use super::*;
    use crate::model::PeerConfig;

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    /// Found while fuzzing the UAPI client: these panicked (Duration and SystemTime
    /// overflow).
    #[test]
    fn handshake_time_of_out_of_range_values_is_none() {
        assert_eq!(handshake_time(0, 0), None);
        assert_eq!(handshake_time(u64::MAX, u32::MAX), None);
        assert_eq!(handshake_time(u64::MAX, 0), None);
        assert_eq!(handshake_time(1, 1_000_000_000), None);
        assert_eq!(handshake_time(1, 5), Some(UNIX_EPOCH + Duration::new(1, 5)));
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
        assert_eq!(st, DeviceState::default());
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
