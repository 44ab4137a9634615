//! Entry point for the `uapi_answer` cargo-fuzz target (`fuzz/`, see `docs/fuzzing.md`): the
//! client side of the UAPI, what this crate reads from a user-space device's socket. This
//! crate's tests feed every committed seed through it.

use wgdp::uapi::{answer_complete, write_get, DeviceInfo, Key, PeerInfo};

use crate::model::DeviceState;
use crate::uapi::{parse_get, parse_set, UapiError};

/// Reads `data` as a device's answer, as [`crate::uapi`]'s client does (lossy UTF-8), both
/// as the answer to `get` and to `set`, asserting (panicking otherwise):
///
/// - an answer that reads as a device state writes back (through the device's own writer)
///   to an answer that reads as the same state (round trip);
/// - a `set` answer with one `errno=` line is accepted exactly when that errno is 0, as the
///   `get` reader says (with several, the `get` reader stops at the first, the `set` reader
///   takes the last: a device writes one);
/// - an error names what was wrong and repeats no key-sized value of a `*_key` line.
///
/// Returns whether it read as a device state.
pub fn uapi_answer(data: &[u8]) -> bool {
    let _ = answer_complete(data);
    let text = String::from_utf8_lossy(data);
    let set = parse_set(&text);
    let one_errno = text.lines().filter(|l| l.starts_with("errno=")).count() == 1;
    match parse_get(&text) {
        Ok(state) => {
            let mut written = String::new();
            write_get(&device_info(&state), &mut written);
            let again = parse_get(&written)
                .unwrap_or_else(|e| panic!("the written answer {written:?} does not read: {e}"));
            assert_eq!(again, state, "a read state does not round-trip");
            assert!(
                set.is_ok() || !one_errno,
                "errno=0 read as a failed set: {set:?}"
            );
            true
        }
        Err(err) => {
            check_error(&err, &text);
            if let (UapiError::Errno { errno, .. }, true) = (&err, one_errno) {
                let errno = *errno;
                assert!(
                    matches!(set, Err(UapiError::Errno { errno: e, .. }) if e == errno),
                    "errno={errno} read as {set:?} for a set"
                );
            }
            if let Err(err) = &set {
                check_error(err, &text);
            }
            false
        }
    }
}

fn device_info(state: &DeviceState) -> DeviceInfo {
    DeviceInfo {
        private_key: state.private_key.map(Key),
        listen_port: state.listen_port,
        fwmark: state.fwmark,
        peers: state
            .peers
            .iter()
            .map(|p| PeerInfo {
                endpoint: p.endpoint,
                last_handshake: p.last_handshake,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                persistent_keepalive: p.persistent_keepalive.unwrap_or(0),
                allowed_ips: p.allowed_ips.clone(),
                ..PeerInfo::new(Key(p.public_key))
            })
            .collect(),
    }
}

/// The error and its causes say something, and repeat no key-sized value of a `*_key` line.
fn check_error(err: &UapiError, text: &str) {
    let mut message = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = cause {
        let part = e.to_string();
        assert!(!part.is_empty(), "an empty error message in {err:?}");
        message.push_str(&part);
        message.push('\n');
        cause = e.source();
    }
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.ends_with("_key") && value.len() >= 64 && value.is_char_boundary(64) {
            assert!(
                !message.contains(&value[..64]),
                "the error {message:?} repeats the value of a {key} line"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every committed seed of `fuzz/seeds/uapi_answer` through the fuzz target's entry point
    /// (so it cannot rot); seeds named `valid-*` must read as a device state.
    #[test]
    fn uapi_answer_seeds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/uapi_answer");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("the seed directory") {
            let path = entry.expect("a directory entry").path();
            let data = std::fs::read(&path).expect("a seed");
            let read = uapi_answer(&data);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("valid-") {
                assert!(read, "{name} did not read");
            }
            seen += 1;
        }
        assert!(seen > 0, "no seeds in {}", dir.display());
    }
}
