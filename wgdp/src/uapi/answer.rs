//! UAPI answers: the `get` answer written from a [`DeviceInfo`] ([`write_get`], what the
//! device does) and read back into one ([`parse_get_answer`], what clients do); the
//! `errno=N` that ends every answer ([`write_errno`], [`parse_set_answer`],
//! [`answer_errno`]); and when an answer read so far is complete ([`answer_complete`]).
//!
//! Reading is lenient where the protocol grows: keys a client does not model (from other
//! implementations or newer versions) are skipped. A non-zero errno or a missing errno line is
//! an error.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use super::request::format_endpoint;
use super::{loggable_key, withheld, Key};

/// Errors of reading a UAPI answer. They name the offending key, never its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    /// The device answered with a non-zero errno.
    #[error("the device answered errno={0}")]
    Errno(i32),
    /// The answer ended without an `errno=` line.
    #[error("answer ended without errno")]
    MissingErrno,
    /// A line without `=`.
    #[error("answer line without '=' ({length} characters)")]
    NoEquals {
        /// The line's length.
        length: usize,
    },
    /// A value that does not parse.
    #[error("answer has an invalid {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// What is wrong with the value.
        reason: &'static str,
    },
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

impl PeerInfo {
    /// A peer known only by its key: nothing else set, no handshake, no traffic.
    pub fn new(public_key: Key) -> Self {
        PeerInfo {
            public_key,
            preshared_key: None,
            endpoint: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        }
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

fn invalid(key: &str, reason: &'static str) -> AnswerError {
    AnswerError::InvalidValue {
        key: loggable_key(key),
        reason,
    }
}

fn num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, AnswerError> {
    value.parse().map_err(|_| invalid(key, "not a number"))
}

fn key(key: &str, value: &str) -> Result<Key, AnswerError> {
    Key::from_hex(value).ok_or_else(|| invalid(key, "not 64 hex digits"))
}

/// Reads the answer to `get=1` (up to and including `errno=N`; anything after it is
/// ignored). `last_handshake_time_sec` and `_nsec` of zero mean "never".
pub fn parse_get_answer(text: &str) -> Result<DeviceInfo, AnswerError> {
    let mut info = DeviceInfo::default();
    // Handshake seconds and nanoseconds arrive on separate lines; combined per peer.
    let mut handshake: Option<(u64, u32)> = None;
    fn finish(
        info: &mut DeviceInfo,
        handshake: &mut Option<(u64, u32)>,
    ) -> Result<(), AnswerError> {
        if let (Some(peer), Some((sec, nsec))) = (info.peers.last_mut(), handshake.take()) {
            peer.last_handshake = handshake_time(sec, nsec)?;
        }
        Ok(())
    }
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let (k, value) = line
            .split_once('=')
            .ok_or(AnswerError::NoEquals { length: line.len() })?;
        if k == "errno" {
            finish(&mut info, &mut handshake)?;
            return match num::<i32>(k, value)? {
                0 => Ok(info),
                errno => Err(AnswerError::Errno(errno)),
            };
        }
        if k == "public_key" {
            finish(&mut info, &mut handshake)?;
            info.peers.push(PeerInfo::new(key(k, value)?));
            continue;
        }
        let Some(peer) = info.peers.last_mut() else {
            match k {
                "private_key" => info.private_key = Some(key(k, value)?),
                "listen_port" => info.listen_port = num(k, value)?,
                "fwmark" => info.fwmark = num(k, value)?,
                // Device keys this codec does not model.
                _ => {}
            }
            continue;
        };
        match k {
            "preshared_key" => {
                let psk = key(k, value)?;
                peer.preshared_key = (!psk.is_zero()).then_some(psk);
            }
            "endpoint" => {
                peer.endpoint = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|_| invalid(k, "not an address:port"))?,
                )
            }
            "allowed_ip" => peer.allowed_ips.push(
                value
                    .parse::<IpNet>()
                    .map_err(|_| invalid(k, "not a CIDR"))?,
            ),
            "last_handshake_time_sec" => handshake.get_or_insert((0, 0)).0 = num(k, value)?,
            "last_handshake_time_nsec" => handshake.get_or_insert((0, 0)).1 = num(k, value)?,
            "rx_bytes" => peer.rx_bytes = num(k, value)?,
            "tx_bytes" => peer.tx_bytes = num(k, value)?,
            "persistent_keepalive_interval" => peer.persistent_keepalive = num(k, value)?,
            // `protocol_version` and peer keys this codec does not model.
            _ => {}
        }
    }
    Err(AnswerError::MissingErrno)
}

/// The time of a peer's last handshake from its `last_handshake_time_sec` and `_nsec`
/// (both zero: never); nanoseconds of a second or more, or a time the system clock cannot
/// hold, are invalid.
fn handshake_time(sec: u64, nsec: u32) -> Result<Option<SystemTime>, AnswerError> {
    if sec == 0 && nsec == 0 {
        return Ok(None);
    }
    if nsec >= 1_000_000_000 {
        return Err(invalid("last_handshake_time_nsec", "not below one second"));
    }
    UNIX_EPOCH
        .checked_add(Duration::new(sec, nsec))
        .map(Some)
        .ok_or_else(|| invalid("last_handshake_time_sec", "out of range"))
}

/// Reads the answer to a `set=1` request: `Ok` for `errno=0`.
pub fn parse_set_answer(text: &str) -> Result<(), AnswerError> {
    match answer_errno(text) {
        Some(0) => Ok(()),
        Some(errno) => Err(AnswerError::Errno(errno)),
        None => Err(AnswerError::MissingErrno),
    }
}

/// The errno of an answer: its last `errno=N` line (`None` when it has none or N is not a
/// number).
pub fn answer_errno(text: &str) -> Option<i32> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("errno="))
        .and_then(|n| n.trim().parse().ok())
}

/// Whether an answer read so far is complete: an `errno=N` line followed by an empty line.
pub fn answer_complete(answer: &[u8]) -> bool {
    let Some(body) = answer.strip_suffix(b"\n\n") else {
        return false;
    };
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    last.starts_with(b"errno=")
}

/// An answer line as an error may show it: never a value (kept for callers that report
/// a whole unexpected answer).
pub fn loggable_answer_line(line: &str) -> String {
    match line.split_once('=') {
        Some(("errno", v)) => format!("errno={v}"),
        Some((k, v)) => format!("{}={}", loggable_key(k), withheld(v)),
        None => withheld(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key([b; 32])
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

    #[test]
    fn get_answers_are_read_back() {
        let text = format!(
            "private_key={}\nlisten_port=51820\nfwmark=28005\n\
             public_key={}\nendpoint=[fd00::2]:51821\nallowed_ip=10.2.0.0/24\nallowed_ip=fd10::/64\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             rx_bytes=100\ntx_bytes=200\npersistent_keepalive_interval=25\n\
             public_key={}\nprotocol_version=1\nendpoint=192.0.2.7:51820\nlast_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\nrx_bytes=0\ntx_bytes=0\n\
             errno=0\n\n",
            "11".repeat(32),
            "22".repeat(32),
            "33".repeat(32)
        );
        let info = parse_get_answer(&text).expect("parse");
        assert_eq!(info.private_key, Some(key(0x11)));
        assert_eq!((info.listen_port, info.fwmark), (51820, 28005));
        assert_eq!(info.peers.len(), 2);
        let a = &info.peers[0];
        assert_eq!(a.public_key, key(0x22));
        assert_eq!(
            a.last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!(
            (a.rx_bytes, a.tx_bytes, a.persistent_keepalive),
            (100, 200, 25)
        );
        assert_eq!(info.peers[1].last_handshake, None);
        assert_eq!(parse_get_answer("errno=0\n\n"), Ok(DeviceInfo::default()));
        assert_eq!(
            parse_get_answer("errno=22\n\n"),
            Err(AnswerError::Errno(22))
        );
        assert_eq!(
            parse_get_answer("listen_port=1\n"),
            Err(AnswerError::MissingErrno)
        );
        assert!(matches!(
            parse_get_answer("public_key=zz\nerrno=0\n\n"),
            Err(AnswerError::InvalidValue { .. })
        ));
    }

    /// Found by the `uapi_answer` fuzz target: a handshake time of 2^64-1 seconds, or
    /// nanoseconds of a second or more, panicked (`Duration::new` and `SystemTime + Duration`
    /// overflow) in the client reading a device's answer.
    #[test]
    fn out_of_range_handshake_times_are_errors_not_panics() {
        let peer = format!("public_key={}\n", Key([2; 32]).to_hex());
        for (times, key) in [
            (
                "last_handshake_time_sec=18446744073709551615\nlast_handshake_time_nsec=4294967295\n",
                "last_handshake_time_nsec",
            ),
            (
                "last_handshake_time_sec=18446744073709551615\nlast_handshake_time_nsec=0\n",
                "last_handshake_time_sec",
            ),
            (
                "last_handshake_time_sec=1\nlast_handshake_time_nsec=1000000000\n",
                "last_handshake_time_nsec",
            ),
        ] {
            let answer = format!("{peer}{times}errno=0\n\n");
            match parse_get_answer(&answer) {
                Err(AnswerError::InvalidValue { key: k, .. }) => assert_eq!(k, key, "{times}"),
                other => panic!("{times}: {other:?}"),
            }
        }
        let answer = format!(
            "{peer}last_handshake_time_sec=1\nlast_handshake_time_nsec=999999999\nerrno=0\n\n"
        );
        let info = parse_get_answer(&answer).expect("a valid time");
        assert_eq!(
            info.peers[0].last_handshake,
            Some(UNIX_EPOCH + Duration::new(1, 999_999_999))
        );
    }

    #[test]
    fn rejected_answer_values_are_not_repeated() {
        let secret = "ab".repeat(31);
        let err = parse_get_answer(&format!("private_key={secret}\nerrno=0\n\n"))
            .expect_err("63 hex digits");
        assert!(!err.to_string().contains(&secret[..16]), "{err}");
        let err = parse_get_answer(&format!("{secret}\nerrno=0\n\n")).expect_err("no '='");
        assert!(!err.to_string().contains(&secret[..16]), "{err}");
        let line = loggable_answer_line(&format!("private_key={secret}"));
        assert!(!line.contains(&secret[..16]), "{line}");
        assert_eq!(loggable_answer_line("errno=22"), "errno=22");
    }

    #[test]
    fn set_answers_and_completion() {
        assert_eq!(parse_set_answer("errno=0\n\n"), Ok(()));
        assert_eq!(
            parse_set_answer("errno=-22\n\n"),
            Err(AnswerError::Errno(-22))
        );
        assert_eq!(parse_set_answer(""), Err(AnswerError::MissingErrno));
        assert_eq!(answer_errno("private_key=00\nerrno=0\n\n"), Some(0));
        assert_eq!(answer_errno(""), None);
        assert!(answer_complete(b"errno=0\n\n"));
        assert!(answer_complete(b"listen_port=1\nerrno=0\n\n"));
        assert!(!answer_complete(b"listen_port=1\n"));
        assert!(!answer_complete(b"listen_port=1\n\n"));
        assert!(!answer_complete(b"errno=0\n"));
    }
}
