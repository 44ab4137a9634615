//! The devices under test: the user-space WireGuard implementations, their UAPI sockets, the
//! synthetic peers of the peer-scale runs and a small blocking UAPI client.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wgdp::uapi::{self as codec, AnswerError, Key, PeerUpdate, SetRequest};

use super::{BenchError, BORINGTUN, MESHD_WG, WIREGUARD_GO};

/// The user-space WireGuard implementations the bench starts itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Userspace {
    /// wireguard-go (Debian's package).
    WireguardGo,
    /// boringtun-cli (`cargo install boringtun-cli`), with one thread: its best setting here.
    Boringtun,
    /// meshd's datapath process, `meshd-wg`.
    MeshdWg,
}

impl Userspace {
    /// Its name in the report, which is also its binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Userspace::WireguardGo => WIREGUARD_GO,
            Userspace::Boringtun => BORINGTUN,
            Userspace::MeshdWg => MESHD_WG,
        }
    }

    /// One letter for namespace and interface names.
    pub fn tag(self) -> char {
        match self {
            Userspace::WireguardGo => 'g',
            Userspace::Boringtun => 'b',
            Userspace::MeshdWg => 'm',
        }
    }

    /// The arguments that run it in the foreground serving TUN `ifname`.
    pub fn args(self, ifname: &str) -> Vec<String> {
        let a: Vec<&str> = match self {
            Userspace::WireguardGo => vec!["-f", ifname],
            Userspace::Boringtun => {
                vec!["-f", "--disable-drop-privileges", "--threads", "1", ifname]
            }
            Userspace::MeshdWg => vec!["--interface", ifname],
        };
        a.into_iter().map(String::from).collect()
    }

    /// Parses a name as given on the command line.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Userspace::WireguardGo,
            Userspace::Boringtun,
            Userspace::MeshdWg,
        ]
        .into_iter()
        .find(|u| u.name() == name)
    }
}

/// The UAPI socket of interface `ifname`.
pub fn uapi_socket(ifname: &str) -> PathBuf {
    codec::socket_path(ifname)
}

/// Lower-case hex, as UAPI wants keys.
pub fn key_hex(key: &[u8; 32]) -> String {
    Key(*key).to_hex()
}

/// A deterministic 32-byte key: SHA-256 of `label/index`.
pub fn synthetic_key(label: &str, index: u32) -> [u8; 32] {
    Sha256::digest(format!("{label}/{index}").as_bytes()).into()
}

/// Highest peer index [`synthetic_peer`] keeps distinct.
pub const MAX_SYNTHETIC_PEERS: u32 = 65_536;

/// A peer of the peer-scale runs: its own IPv4 /24 and IPv6 /64 and an endpoint. The devices
/// live in namespaces with nothing but loopback and their TUN, and peers without traffic never
/// handshake, so nothing is ever sent to these addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticPeer {
    /// Its public key.
    pub public_key: [u8; 32],
    /// Its IPv4 allowed IP (`10.H.L.0/24`).
    pub allowed_v4: String,
    /// Its IPv6 allowed IP (`fd6d:6273:0:I::/64`).
    pub allowed_v6: String,
    /// Its endpoint (`198.19.H.L:51820`).
    pub endpoint: String,
}

/// Peer number `i` (distinct for `i` below [`MAX_SYNTHETIC_PEERS`]).
pub fn synthetic_peer(i: u32) -> SyntheticPeer {
    let (hi, lo) = ((i >> 8) & 0xff, i & 0xff);
    SyntheticPeer {
        public_key: synthetic_key("mesh-bench-peer", i),
        allowed_v4: format!("10.{hi}.{lo}.0/24"),
        allowed_v6: format!("fd6d:6273:0:{:x}::/64", i & 0xffff),
        endpoint: format!("198.19.{hi}.{lo}:51820"),
    }
}

/// `set=1` of a device's private key and listen port.
pub fn uapi_device_request(private_key: &[u8; 32], listen_port: u16) -> String {
    set_request(&SetRequest {
        private_key: Some(Some(Key(*private_key))),
        listen_port: Some(listen_port),
        ..SetRequest::default()
    })
}

/// `set=1` adding (or updating) `peers`, each with its two allowed IPs and endpoint.
pub fn uapi_add_peers_request(peers: &[SyntheticPeer]) -> String {
    set_request(&SetRequest {
        peers: peers.iter().map(SyntheticPeer::update).collect(),
        ..SetRequest::default()
    })
}

/// `set=1` removing the peer with `public_key`.
pub fn uapi_remove_peer_request(public_key: &[u8; 32]) -> String {
    set_request(&SetRequest {
        peers: vec![PeerUpdate {
            remove: true,
            ..PeerUpdate::new(Key(*public_key))
        }],
        ..SetRequest::default()
    })
}

fn set_request(req: &SetRequest) -> String {
    let mut text = String::new();
    codec::write_set(req, &mut text);
    text
}

impl SyntheticPeer {
    /// Its `set` section: endpoint, then its allowed IPs replacing any others.
    fn update(&self) -> PeerUpdate {
        // `synthetic_peer` formats all three from numbers; they always parse.
        let net = |s: &str| s.parse().expect("synthetic_peer writes valid networks");
        PeerUpdate {
            endpoint: Some(
                self.endpoint
                    .parse()
                    .expect("synthetic_peer writes a valid endpoint"),
            ),
            replace_allowed_ips: true,
            allowed_ips: vec![net(&self.allowed_v4), net(&self.allowed_v6)],
            ..PeerUpdate::new(Key(self.public_key))
        }
    }
}

/// True once a UAPI answer is complete (its `errno=N` line and the empty line after it).
pub fn uapi_answer_complete(answer: &str) -> bool {
    codec::answer_complete(answer.as_bytes())
}

/// The errno of a UAPI answer (`None` when it has none).
pub fn uapi_errno(answer: &str) -> Option<i64> {
    codec::answer_errno(answer).map(i64::from)
}

/// The number of peers in a `get=1` answer (0 when it cannot be read; [`uapi_get`] only
/// returns answers that can).
pub fn uapi_peer_count(answer: &str) -> usize {
    codec::parse_get_answer(answer).map_or(0, |info| info.peers.len())
}

/// Sends one request on a fresh connection to `socket` and reads the answer up to its
/// `errno=N` and empty line (or until the device closes the connection).
pub fn uapi_exchange(socket: &Path, request: &str) -> Result<String, BenchError> {
    let io = |source| BenchError::UapiIo {
        path: socket.to_path_buf(),
        source,
    };
    let mut conn = UnixStream::connect(socket).map_err(io)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    conn.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::with_capacity(64);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if codec::answer_complete(&answer) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn refused(socket: &Path, answer: &str) -> BenchError {
    let tail: Vec<String> = answer
        .lines()
        .rev()
        .take(3)
        .map(codec::loggable_answer_line)
        .collect();
    BenchError::UapiRefused {
        path: socket.to_path_buf(),
        answer: tail.into_iter().rev().collect::<Vec<_>>().join("\\n"),
    }
}

/// A `set=1` request; an answer other than `errno=0` is an error.
pub fn uapi_set(socket: &Path, request: &str) -> Result<(), BenchError> {
    let answer = uapi_exchange(socket, request)?;
    codec::parse_set_answer(&answer).map_err(|_| refused(socket, &answer))
}

/// A `get=1` request: the whole answer, once the codec has read it without error.
pub fn uapi_get(socket: &Path) -> Result<String, BenchError> {
    let mut request = String::new();
    codec::write_request(&codec::Request::Get, &mut request);
    let answer = uapi_exchange(socket, &request)?;
    match codec::parse_get_answer(&answer) {
        Ok(_) => Ok(answer),
        Err(AnswerError::Errno(_) | AnswerError::MissingErrno) => Err(refused(socket, &answer)),
        Err(source) => Err(BenchError::UapiAnswer {
            path: socket.to_path_buf(),
            source,
        }),
    }
}
