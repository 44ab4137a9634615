//! The cross-platform WireGuard configuration protocol ("UAPI") spoken on
//! `/var/run/wireguard/NAME.sock`: the one codec of the workspace, for both ends. Pure: no
//! socket, no logging, no state.
//!
//! - Requests ([`request`]): `get=1\n\n`, or `set=1\n` followed by `key=value` lines and an
//!   empty line. The device parses them with [`parse_request`]; clients write them with
//!   [`write_request`] / [`write_set`].
//! - Answers ([`answer`]): the `get` answer is `key=value` lines ending in `errno=0\n\n`, a
//!   `set` answer is `errno=N\n\n`. The device writes them with [`write_get`] and
//!   [`write_errno`]; clients read them with [`parse_get_answer`] and [`parse_set_answer`].
//!
//! Who uses it: wgdp's UAPI server (`control`, which applies a parsed `set` through
//! [`crate::Core`]), netlink's user-space device client, and mesh-bench's raw client.
//!
//! Errors never carry a rejected value that could be a key: values of `*_key` lines, lines
//! without `=` and unusual key names are reported by their length only.

pub mod answer;
pub mod request;
#[cfg(test)]
mod tests;

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

pub use answer::{
    answer_complete, answer_errno, loggable_answer_line, parse_get_answer, parse_set_answer,
    write_errno, write_get, write_peer, AnswerError, DeviceInfo, PeerInfo,
};
pub use request::{
    parse_request, write_request, write_set, PeerUpdate, Request, SetRequest, UapiError,
};

/// Directory of the UAPI sockets of user-space WireGuard devices.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The UAPI socket of device `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

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
        // The same type holds private and preshared keys: no byte of any key is ever shown
        // (a few bytes of a secret key are a few bytes less to guess).
        f.write_str("Key(<withheld>)")
    }
}

/// Longest key name or value an error repeats verbatim.
const LOGGABLE_MAX: usize = 64;

/// A key name as an error may show it: verbatim when it looks like a protocol key (short,
/// lowercase letters and `_`), else only its length (a base64 key pasted on a line of its
/// own splits at its trailing `=` into a "key name").
fn loggable_key(key: &str) -> String {
    if key.len() <= 32 && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        key.to_string()
    } else {
        withheld(key)
    }
}

/// A rejected value as an error may show it: only its length for `*_key` lines (it may be a
/// secret key, or most of one) and for long values, else verbatim and quoted.
fn loggable_value(key: &str, value: &str) -> String {
    if key.ends_with("_key") || value.len() > LOGGABLE_MAX {
        withheld(value)
    } else {
        format!("{value:?}")
    }
}

fn withheld(text: &str) -> String {
    format!("<{} characters withheld>", text.len())
}
