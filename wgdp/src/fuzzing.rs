//! Entry points for fuzzers: arbitrary bytes through the same code the device runs on a
//! datagram from its UDP socket ([`udp_input`]) and on a read from its TUN ([`tun_input`]).
//!
//! The harness is one device core without I/O: a fixed private key, one peer (fixed key,
//! an endpoint, allowed IPs `10.0.0.0/8` and `fd00::/8`) with an established session (a
//! handshake with a simulated remote boringtun is run once), and a TUN with virtio-net
//! headers. Outputs (datagrams, TUN writes) are produced and discarded. Every input is
//! either processed or dropped and counted; nothing may panic.
//!
//! The cargo-fuzz targets in `fuzz/` (see `docs/fuzzing.md`) call these entry points, and so
//! do this crate's tests with every committed seed ([`uapi`]: the UAPI server's request
//! parser; [`flood`]: UDP input from many source addresses, behind the `fuzzing` feature).

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use defguard_boringtun::noise::{Tunn, TunnResult};
use defguard_boringtun::x25519::{PublicKey, StaticSecret};

use crate::datapath::{RxCtx, TxCtx};
use crate::device::{lock, Core};
use crate::stats::Stats;
use crate::uapi::{parse_request, Key, Request};

#[cfg(any(test, feature = "fuzzing"))]
pub mod flood;
#[cfg(test)]
mod seed_tests;
pub mod uapi;

/// The device's private key in the harness.
pub const DEVICE_KEY: [u8; 32] = [0x11; 32];
/// The peer's private key in the harness.
pub const PEER_KEY: [u8; 32] = [0x22; 32];

/// Where the harness's datagrams come from (the peer's endpoint).
pub(crate) fn peer_addr() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 2], 51820))
}

struct Harness {
    core: Core,
    tx: TxCtx,
    rx: RxCtx,
    /// The simulated remote side (kept so its session stays valid).
    _remote: Box<Tunn>,
}

/// A fresh device core with the harness's keys, one peer at [`peer_addr`] (allowed IPs
/// `10.0.0.0/8`, `fd00::/8`), an RX context, and a session established by a real handshake
/// with a remote boringtun (returned, so its session stays valid).
pub(crate) fn device_with_session() -> (Core, RxCtx, Box<Tunn>) {
    let core = Core::new(None, Box::new(|| {}));
    let peer_public = PublicKey::from(&StaticSecret::from(PEER_KEY));
    let req = format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint={}\nallowed_ip=10.0.0.0/8\nallowed_ip=fd00::/8\n",
        Key(DEVICE_KEY).to_hex(),
        Key(*peer_public.as_bytes()).to_hex(),
        peer_addr()
    );
    if let Ok(Request::Set(set)) = parse_request(req.lines()) {
        let _ = core.apply(&set);
    }
    let mut rx = RxCtx::new(true, true, true);
    // Handshake: the remote initiates, the device answers, the remote confirms.
    let device_public = PublicKey::from(&StaticSecret::from(DEVICE_KEY));
    let mut remote = Box::new(Tunn::new(
        StaticSecret::from(PEER_KEY),
        device_public,
        None,
        None,
        7,
        None,
    ));
    let mut buf = vec![0u8; 2048];
    if let TunnResult::WriteToNetwork(init) = remote.format_handshake_initiation(&mut buf, false) {
        let init = init.to_vec();
        let st = core.read();
        rx.handle_datagram(&core, &st, peer_addr(), &init);
        let replies: Vec<Vec<u8>> = rx.outbox.datagrams().map(|(_, d)| d.to_vec()).collect();
        rx.flush(&core, None, None);
        for reply in replies {
            if let TunnResult::WriteToNetwork(ka) = remote.decapsulate(None, &reply, &mut buf) {
                let ka = ka.to_vec();
                rx.handle_datagram(&core, &st, peer_addr(), &ka);
            }
        }
        rx.flush(&core, None, None);
    }
    (core, rx, remote)
}

fn build() -> Harness {
    let (core, rx, remote) = device_with_session();
    Harness {
        core,
        tx: TxCtx::new(true),
        rx,
        _remote: remote,
    }
}

fn harness() -> &'static Mutex<Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(build()))
}

/// Feeds `data` to the device as a datagram received from the peer's endpoint.
pub fn udp_input(data: &[u8]) {
    let mut h = lock(harness());
    let Harness { core, rx, .. } = &mut *h;
    let st = core.read();
    rx.handle_datagram(core, &st, peer_addr(), data);
    drop(st);
    rx.flush(core, None, None);
}

/// Feeds `data` to the device as one read from its TUN (virtio-net header + IP packet).
pub fn tun_input(data: &[u8]) {
    let mut h = lock(harness());
    let Harness { core, tx, .. } = &mut *h;
    let st = core.read();
    // The send path segments in the read buffer itself, as the TUN reader's.
    let mut frame = data.to_vec();
    tx.handle_tun_read(core, &st, &mut frame, None);
    drop(st);
    tx.outbox.flush(core, None);
}

/// Runs `f` on the harness's drop counters (for tests of the harness itself).
pub fn with_stats<T>(f: impl FnOnce(&Stats) -> T) -> T {
    let h = lock(harness());
    f(&h.core.stats)
}

/// Whether the harness's peer completed its handshake (the harness is usable).
pub fn session_established() -> bool {
    let h = lock(harness());
    let st = h.core.read();
    st.peers.values().any(|p| {
        p.read(|t| &t.last_handshake) != 0
            && lock(&p.tunn)
                .tunn
                .as_ref()
                .is_some_and(|t| t.time_since_last_handshake().is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DropReason;

    /// The harness and its counters are shared: tests that count drops run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn harness_has_a_session_and_counts_garbage() {
        let _serial = lock(&SERIAL);
        assert!(session_established());
        let before = with_stats(|s| s.get(DropReason::Malformed));
        udp_input(&[]);
        udp_input(&[4, 0, 0, 0]);
        udp_input(&[9; 200]);
        assert_eq!(with_stats(|s| s.get(DropReason::Malformed)), before + 3);
        // A data message for our session's index but garbage ciphertext fails to decrypt.
        let idx = {
            let h = lock(harness());
            let st = h.core.read();
            st.peers.values().next().map(|p| p.index).unwrap_or(0)
        };
        let mut msg = vec![0u8; 64];
        msg[0] = 4;
        // Session indices are index << 8 | n, n counting up from 1 per handshake.
        msg[4..8].copy_from_slice(&((idx << 8) | 1).to_le_bytes());
        // Counter 0 was the remote's keepalive: replayed.
        let replay = with_stats(|s| s.get(DropReason::Replay));
        udp_input(&msg);
        assert_eq!(with_stats(|s| s.get(DropReason::Replay)), replay + 1);
        msg[8..16].copy_from_slice(&1000u64.to_le_bytes());
        let dec = with_stats(|s| s.get(DropReason::Decryption));
        udp_input(&msg);
        assert_eq!(
            with_stats(|s| s.get(DropReason::Decryption)),
            dec + 1,
            "{}",
            with_stats(|s| s.to_string())
        );
        // TUN junk: a bad vnet header, a non-IP packet, an unroutable one.
        let bad = with_stats(|s| s.total());
        tun_input(&[1, 2, 3]);
        tun_input(&[0; 30]);
        let mut v4 = vec![0u8; 10];
        v4.extend_from_slice(&[
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 1, 1, 1, 1, 192, 0, 2, 9,
        ]);
        tun_input(&v4);
        assert_eq!(with_stats(|s| s.total()), bad + 3);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// Arbitrary bytes, and bytes shaped like the real thing (a message type and a
        /// receiver index; a virtio-net header and an IPv4/IPv6 header to a routed
        /// address), never panic.
        #[test]
        fn arbitrary_input_never_panics(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            ty in 1u8..5,
            hdr in proptest::collection::vec(proptest::prelude::any::<u8>(), 10),
            v6 in proptest::prelude::any::<bool>(),
        ) {
            let _serial = lock(&SERIAL);
            udp_input(&data);
            let mut msg = data.clone();
            if msg.len() >= 16 {
                msg[..4].copy_from_slice(&u32::from(ty).to_le_bytes());
                let idx = {
                    let h = lock(harness());
                    let st = h.core.read();
                    st.peers.values().next().map(|p| p.index).unwrap_or(0)
                };
                let off = if ty == 2 { 8 } else { 4 };
                msg[off..off + 4].copy_from_slice(&((idx << 8) | 1).to_le_bytes());
            }
            udp_input(&msg);
            tun_input(&data);
            let mut frame = hdr.clone();
            let mut ip = data.clone();
            if v6 && ip.len() >= 40 {
                ip[0] = 0x60 | (ip[0] & 0x0f);
                ip[24] = 0xfd;
            } else if ip.len() >= 20 {
                ip[0] = 0x45;
                ip[16] = 10;
            }
            frame.extend_from_slice(&ip);
            tun_input(&frame);
        }
    }

    #[test]
    fn a_routable_packet_is_sealed_without_drops() {
        let _serial = lock(&SERIAL);
        let before = with_stats(|s| s.total());
        let mut v4 = vec![0u8; 10];
        v4.extend_from_slice(&[
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        let sent = || {
            let h = lock(harness());
            let st = h.core.read();
            st.peers
                .values()
                .map(|p| p.read(|t| &t.tx_bytes))
                .sum::<u64>()
        };
        let tx = sent();
        tun_input(&v4);
        assert_eq!(with_stats(|s| s.total()), before);
        // 16-byte header + the 20-byte packet + 16-byte tag (boringtun does not pad).
        assert_eq!(sent(), tx + 52);
    }
}
