//! `wgdp::fuzzing::udp_input`: a datagram from the peer's endpoint, through the receive
//! path (message parsing, the device's MAC1/cookie check and sender identification of
//! handshake initiations, peer lookup by receiver index, boringtun's `decapsulate`, the
//! drop accounting and the TUN/reply flush).
//!
//! Input: one mode byte, then the datagram. The mode helps mutated inputs get past the
//! cheap checks (the harness's receiver index is random, so the fuzzer could not find it):
//! * bits 1-2: the message type written over the first four bytes (type and reserved
//!   zeros): 0 keep the input's, 1 handshake response, 2 cookie reply, 3 data;
//! * bit 3: cut or zero-pad the datagram to that type's size (92, 64, at least 32);
//! * bit 0: address it to the harness's session: the receiver index's upper 24 bits become
//!   the harness peer's index (the low 8 session bits are the input's).
//!
//! Mode 0 feeds the rest unchanged. Oracle: no panic (arithmetic overflow included).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wgdp::fuzzing::{udp_input, with_stats};
use wgdp::stats::DropReason;

const HANDSHAKE_RESP: u8 = 2;
const COOKIE_REPLY: u8 = 3;
const DATA: u8 = 4;

/// The harness peer's 24-bit receiver index prefix.
static PEER_INDEX: OnceLock<u32> = OnceLock::new();

/// Finds the harness peer's receiver index (random per process, not exported): a data
/// message to an unknown index is counted as `UnknownIndex`, to the peer's as something
/// else (a failed decryption). Probes the 2^24 prefixes in batches, then bisects the batch.
fn find_peer_index() -> u32 {
    let unknown = || with_stats(|s| s.get(DropReason::UnknownIndex));
    let mut msg = [0u8; 32];
    msg[0] = DATA;
    // A counter far ahead of anything received: the replay check passes, the tag fails.
    msg[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let mut hits = |lo: u32, hi: u32| {
        let before = unknown();
        for i in lo..hi {
            msg[4..8].copy_from_slice(&((i << 8) | 1).to_le_bytes());
            udp_input(&msg);
        }
        unknown() - before < u64::from(hi - lo)
    };
    const BATCH: u32 = 1 << 14;
    let mut lo = 1;
    while lo < 1 << 24 {
        let hi = (lo + BATCH).min(1 << 24);
        if hits(lo, hi) {
            let (mut a, mut b) = (lo, hi);
            while b - a > 1 {
                let m = a + (b - a) / 2;
                if hits(a, m) {
                    b = m;
                } else {
                    a = m;
                }
            }
            return a;
        }
        lo = hi;
    }
    panic!("the harness has no peer with a session");
}

fuzz_target!(
    init: {
        assert!(wgdp::fuzzing::session_established());
        PEER_INDEX.get_or_init(find_peer_index);
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        if mode & 0x0f == 0 {
            udp_input(rest);
            return;
        }
        let mut msg = rest.to_vec();
        let ty = match (mode >> 1) & 3 {
            1 => Some(HANDSHAKE_RESP),
            2 => Some(COOKIE_REPLY),
            3 => Some(DATA),
            _ => msg.first().copied(),
        };
        if (mode >> 1) & 3 != 0 {
            if msg.len() < 4 {
                msg.resize(4, 0);
            }
            msg[..4].copy_from_slice(&[ty.unwrap_or(0), 0, 0, 0]);
        }
        if mode & 8 != 0 {
            match ty {
                Some(HANDSHAKE_RESP) => msg.resize(92, 0),
                Some(COOKIE_REPLY) => msg.resize(64, 0),
                Some(DATA) if msg.len() < 32 => msg.resize(32, 0),
                _ => {}
            }
        }
        if mode & 1 != 0 {
            let at = if ty == Some(HANDSHAKE_RESP) { 8 } else { 4 };
            if let Some(field) = msg.get_mut(at..at + 4) {
                let session = u32::from(field[0]);
                let index = PEER_INDEX.get().copied().unwrap_or(0);
                field.copy_from_slice(&((index << 8) | session).to_le_bytes());
            }
        }
        udp_input(&msg);
    }
);
