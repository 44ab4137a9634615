//! The cross-platform WireGuard configuration protocol ("UAPI") as served on
//! `/var/run/wireguard/NAME.sock`: parsing requests into [`Request`] and serialising the
//! `get` answer from a [`DeviceInfo`]. Pure; the socket loop is in `control`.
//!
//! Requests are `get=1\n\n` or `set=1\n` followed by `key=value` lines and an empty line.
//! A `set` is parsed and validated whole before anything is applied, so a malformed request
//! changes nothing (wireguard-go applies the lines before the bad one).

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

/// A 32-byte Curve25519 or preshared key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lowercase hex, as the UAPI writes keys.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Key> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let hi = char::from(b[2 * i]).to_digit(16)?;
            let lo = char::from(b[2 * i + 1]).to_digit(16)?;
            *o = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Key(out))
    }

    /// Whether every byte is zero (the UAPI's "no key").
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell keys apart in logs; never a whole (possibly secret) key.
        write!(f, "Key({}…)", &self.to_hex()[..8])
    }
}

/// Errors of parsing a UAPI request; each maps to the errno the device answers with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiError {
    /// The first line is neither `get=1` nor `set=1`.
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
    /// A line without `=`.
    #[error("line without '=': {0:?}")]
    NoEquals(String),
    /// A key the protocol does not know, or a device key after the first `public_key`.
    #[error("unexpected key {0:?}")]
    UnexpectedKey(String),
    /// A value that does not parse.
    #[error("invalid value for {key}: {value:?}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The rejected value.
        value: String,
    },
    /// A `protocol_version` other than 1.
    #[error("unsupported protocol version {0}")]
    ProtocolVersion(String),
    /// A `get` request with lines after `get=1`.
    #[error("get request with arguments")]
    GetWithArguments,
}

impl UapiError {
    /// The errno the UAPI answers with.
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::ProtocolVersion(_) => libc::EPROTO,
            _ => libc::EINVAL,
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get=1`.
    Get,
    /// `set=1` with its changes.
    Set(SetRequest),
}

/// A `set=1` request: device changes, then per-peer changes in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `private_key=`: `Some(None)` removes the key (all-zero value).
    pub private_key: Option<Option<Key>>,
    /// `listen_port=`.
    pub listen_port: Option<u16>,
    /// `fwmark=` (0 removes the mark).
    pub fwmark: Option<u32>,
    /// `replace_peers=true`.
    pub replace_peers: bool,
    /// Peer sections, in order.
    pub peers: Vec<PeerUpdate>,
}

/// One `public_key=` section of a `set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    /// The peer.
    pub public_key: Key,
    /// `remove=true`.
    pub remove: bool,
    /// `update_only=true`: do nothing if the peer does not exist.
    pub update_only: bool,
    /// `preshared_key=`: `Some(None)` removes it.
    pub preshared_key: Option<Option<Key>>,
    /// `endpoint=`.
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval=` (0 turns it off).
    pub persistent_keepalive: Option<u16>,
    /// `replace_allowed_ips=true`.
    pub replace_allowed_ips: bool,
    /// `allowed_ip=` lines, host bits cleared.
    pub allowed_ips: Vec<IpNet>,
}

impl PeerUpdate {
    fn new(public_key: Key) -> Self {
        PeerUpdate {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

fn invalid(key: &str, value: &str) -> UapiError {
    UapiError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, UapiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value)),
    }
}

fn parse_key(key: &str, value: &str) -> Result<Key, UapiError> {
    Key::from_hex(value).ok_or_else(|| invalid(key, value))
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, UapiError> {
    // Only plain decimal digits: `str::parse` also takes a leading '+'.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(key, value));
    }
    value.parse().map_err(|_| invalid(key, value))
}

/// Parses an endpoint: `a.b.c.d:port` or `[v6]:port`.
fn parse_endpoint(key: &str, value: &str) -> Result<SocketAddr, UapiError> {
    value.parse().map_err(|_| invalid(key, value))
}

/// Parses a request given its lines (without the terminating empty line).
pub fn parse_request<'a>(mut lines: impl Iterator<Item = &'a str>) -> Result<Request, UapiError> {
    let first = lines.next().unwrap_or("");
    match first {
        "get=1" => {
            if lines.next().is_some() {
                return Err(UapiError::GetWithArguments);
            }
            Ok(Request::Get)
        }
        "set=1" => parse_set(lines).map(Request::Set),
        other => Err(UapiError::UnknownOperation(other.to_string())),
    }
}

fn parse_set<'a>(lines: impl Iterator<Item = &'a str>) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| UapiError::NoEquals(line.to_string()))?;
        if key == "public_key" {
            req.peers.push(PeerUpdate::new(parse_key(key, value)?));
            continue;
        }
        let Some(peer) = req.peers.last_mut() else {
            match key {
                "private_key" => {
                    let k = parse_key(key, value)?;
                    req.private_key = Some((!k.is_zero()).then_some(k));
                }
                "listen_port" => req.listen_port = Some(parse_num(key, value)?),
                "fwmark" => req.fwmark = Some(parse_num(key, value)?),
                "replace_peers" => req.replace_peers = parse_bool(key, value)?,
                _ => return Err(UapiError::UnexpectedKey(key.to_string())),
            }
            continue;
        };
        match key {
            "remove" => peer.remove = parse_bool(key, value)?,
            "update_only" => peer.update_only = parse_bool(key, value)?,
            "preshared_key" => {
                let k = parse_key(key, value)?;
                peer.preshared_key = Some((!k.is_zero()).then_some(k));
            }
            "endpoint" => peer.endpoint = Some(parse_endpoint(key, value)?),
            "persistent_keepalive_interval" => {
                peer.persistent_keepalive = Some(parse_num(key, value)?)
            }
            "replace_allowed_ips" => peer.replace_allowed_ips = parse_bool(key, value)?,
            "allowed_ip" => {
                let net: IpNet = value.parse().map_err(|_| invalid(key, value))?;
                peer.allowed_ips.push(net.trunc());
            }
            "protocol_version" => {
                if value != "1" {
                    return Err(UapiError::ProtocolVersion(value.to_string()));
                }
            }
            _ => return Err(UapiError::UnexpectedKey(key.to_string())),
        }
    }
    Ok(req)
}

/// What a `get` reports about the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The private key, if set.
    pub private_key: Option<Key>,
    /// The bound UDP port.
    pub listen_port: u16,
    /// The socket mark (0 = none).
    pub fwmark: u32,
    /// The peers.
    pub peers: Vec<PeerInfo>,
}

/// What a `get` reports about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's public key.
    pub public_key: Key,
    /// The preshared key, if any.
    pub preshared_key: Option<Key>,
    /// The current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Persistent keepalive interval (0 = off).
    pub persistent_keepalive: u16,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNet>,
}

fn format_endpoint(ep: &SocketAddr) -> String {
    match ep {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Serialises the answer to `get=1`, including the final `errno=0` and empty line.
pub fn write_get(info: &DeviceInfo, out: &mut String) {
    if let Some(k) = &info.private_key {
        let _ = writeln!(out, "private_key={}", k.to_hex());
    }
    let _ = writeln!(out, "listen_port={}", info.listen_port);
    if info.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", info.fwmark);
    }
    for p in &info.peers {
        write_peer(p, out);
    }
    out.push_str("errno=0\n\n");
}

/// Serialises one peer section of a `get` answer.
pub fn write_peer(p: &PeerInfo, out: &mut String) {
    let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
    if let Some(psk) = &p.preshared_key {
        let _ = writeln!(out, "preshared_key={}", psk.to_hex());
    }
    out.push_str("protocol_version=1\n");
    if let Some(ep) = &p.endpoint {
        let _ = writeln!(out, "endpoint={}", format_endpoint(ep));
    }
    let since = p
        .last_handshake
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO);
    let _ = writeln!(out, "last_handshake_time_sec={}", since.as_secs());
    let _ = writeln!(out, "last_handshake_time_nsec={}", since.subsec_nanos());
    let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
    let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
    let _ = writeln!(
        out,
        "persistent_keepalive_interval={}",
        p.persistent_keepalive
    );
    for net in &p.allowed_ips {
        let _ = writeln!(out, "allowed_ip={net}");
    }
}

/// The answer to a `set` (or a failed request).
pub fn write_errno(errno: i32, out: &mut String) {
    let _ = write!(out, "errno={errno}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key([b; 32])
    }

    fn parse(text: &str) -> Result<Request, UapiError> {
        parse_request(text.lines())
    }

    #[test]
    fn key_hex_roundtrip_and_rejects() {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::try_from(i * 9 % 256).expect("byte");
        }
        let k = Key(k);
        assert_eq!(Key::from_hex(&k.to_hex()), Some(k));
        assert_eq!(Key::from_hex(&k.to_hex().to_uppercase()), Some(k));
        assert_eq!(Key::from_hex("00"), None);
        assert_eq!(Key::from_hex(&"g".repeat(64)), None);
        assert_eq!(Key::from_hex(&format!("+{}", "0".repeat(63))), None);
        assert!(!format!("{k:?}").contains(&k.to_hex()));
    }

    #[test]
    fn get_is_parsed_and_rejects_arguments() {
        assert_eq!(parse("get=1\n"), Ok(Request::Get));
        assert_eq!(parse("get=1\nfoo=bar"), Err(UapiError::GetWithArguments));
        assert!(matches!(
            parse("list=1"),
            Err(UapiError::UnknownOperation(_))
        ));
    }

    #[test]
    fn set_as_wg_sends_it() {
        // What `wg setconf` sends (plus a few `wg set` extras).
        let text = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
             public_key={}\npreshared_key={}\nendpoint=[fd00::2]:51821\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
             allowed_ip=10.0.0.7/24\nallowed_ip=fd00::/64\nprotocol_version=1\n\
             public_key={}\nupdate_only=true\nendpoint=192.0.2.1:1\n\
             public_key={}\nremove=true\n",
            key(1).to_hex(),
            key(2).to_hex(),
            key(3).to_hex(),
            key(4).to_hex(),
            key(5).to_hex()
        );
        let Ok(Request::Set(req)) = parse(&text) else {
            panic!("parse failed: {:?}", parse(&text));
        };
        assert_eq!(req.private_key, Some(Some(key(1))));
        assert_eq!(req.listen_port, Some(51820));
        assert_eq!(req.fwmark, Some(0));
        assert!(req.replace_peers);
        assert_eq!(req.peers.len(), 3);
        let p = &req.peers[0];
        assert_eq!(p.public_key, key(2));
        assert_eq!(p.preshared_key, Some(Some(key(3))));
        assert_eq!(p.endpoint, Some("[fd00::2]:51821".parse().expect("ep")));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(
            p.allowed_ips,
            vec![
                "10.0.0.0/24".parse::<IpNet>().expect("net"),
                "fd00::/64".parse().expect("net")
            ]
        );
        assert!(req.peers[1].update_only && !req.peers[1].remove);
        assert!(req.peers[2].remove);
    }

    #[test]
    fn zero_keys_mean_removal() {
        let text = format!(
            "set=1\nprivate_key={z}\npublic_key={}\npreshared_key={z}\n",
            key(2).to_hex(),
            z = "0".repeat(64)
        );
        let Ok(Request::Set(req)) = parse(&text) else {
            panic!("parse");
        };
        assert_eq!(req.private_key, Some(None));
        assert_eq!(req.peers[0].preshared_key, Some(None));
    }

    #[test]
    fn malformed_sets_are_rejected_whole() {
        let pk = key(2).to_hex();
        for (text, errno) in [
            ("set=1\nlisten_port=65536".to_string(), libc::EINVAL),
            ("set=1\nlisten_port=-1".to_string(), libc::EINVAL),
            ("set=1\nlisten_port=+1".to_string(), libc::EINVAL),
            ("set=1\nprivate_key=abc".to_string(), libc::EINVAL),
            ("set=1\nbogus=1".to_string(), libc::EINVAL),
            ("set=1\nnoequals".to_string(), libc::EINVAL),
            ("set=1\nendpoint=1.2.3.4:5".to_string(), libc::EINVAL),
            (
                format!("set=1\npublic_key={pk}\nlisten_port=1"),
                libc::EINVAL,
            ),
            (
                format!("set=1\npublic_key={pk}\nendpoint=nope"),
                libc::EINVAL,
            ),
            (format!("set=1\npublic_key={pk}\nremove=yes"), libc::EINVAL),
            (
                format!("set=1\npublic_key={pk}\nallowed_ip=10.0.0.0/33"),
                libc::EINVAL,
            ),
            (
                format!("set=1\npublic_key={pk}\nprotocol_version=2"),
                libc::EPROTO,
            ),
        ] {
            let err = parse(&text).expect_err(&text);
            assert_eq!(err.errno(), errno, "{text}: {err}");
        }
    }

    #[test]
    fn get_answer_is_what_wg_reads() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let info = DeviceInfo {
            private_key: Some(key(0xab)),
            listen_port: 51820,
            fwmark: 7,
            peers: vec![
                PeerInfo {
                    public_key: key(1),
                    preshared_key: Some(key(2)),
                    endpoint: Some("[fd00::1]:5".parse().expect("ep")),
                    last_handshake: Some(t),
                    rx_bytes: 10,
                    tx_bytes: 20,
                    persistent_keepalive: 25,
                    allowed_ips: vec!["10.0.0.0/24".parse().expect("net")],
                },
                PeerInfo {
                    public_key: key(3),
                    preshared_key: None,
                    endpoint: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: 0,
                    allowed_ips: vec![],
                },
            ],
        };
        let mut out = String::new();
        write_get(&info, &mut out);
        let want = format!(
            "private_key={}\nlisten_port=51820\nfwmark=7\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=[fd00::1]:5\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123\n\
             tx_bytes=20\nrx_bytes=10\npersistent_keepalive_interval=25\n\
             allowed_ip=10.0.0.0/24\n\
             public_key={}\nprotocol_version=1\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
             tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n\
             errno=0\n\n",
            key(0xab).to_hex(),
            key(1).to_hex(),
            key(2).to_hex(),
            key(3).to_hex()
        );
        assert_eq!(out, want);
        // Without a key and mark those lines are left out.
        let mut out = String::new();
        write_get(&DeviceInfo::default(), &mut out);
        assert_eq!(out, "listen_port=0\nerrno=0\n\n");
        let mut out = String::new();
        write_errno(22, &mut out);
        assert_eq!(out, "errno=22\n\n");
    }
}
