//! The device's UDP input from many source addresses under fuzzing: roaming, replays,
//! tampering, handshake floods and garbage, as a structured input ([`FloodOp`]s decoded with
//! `arbitrary` from the fuzzer's bytes) driving one device with an established session and
//! the remote end that owns it.
//!
//! # Input format
//!
//! Operations one after the other, at most [`MAX_OPS`]; each is a kind byte (modulo 5), a
//! source byte (see [`source_addr`]) and, for some kinds, more:
//!
//! | kind | operation | then |
//! |------|-----------|------|
//! | 0 | [`FloodOp::Raw`]: a datagram as given | length (u16 LE, at most 2048), bytes |
//! | 1 | [`FloodOp::Data`]: the remote seals an IPv4 packet carrying the payload | length (u16 LE, at most 1400), bytes |
//! | 2 | [`FloodOp::Replay`]: the last sealed datagram again | — |
//! | 3 | [`FloodOp::Tamper`]: the last sealed datagram, one byte flipped | offset (u16 LE) |
//! | 4 | [`FloodOp::Initiation`]: a fresh handshake initiation of the remote; the device's answers go back to it | — |
//!
//! The source byte 0 is the peer's configured endpoint; a truncated operation ends the input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use defguard_boringtun::noise::{Tunn, TunnResult};

use crate::datapath::RxCtx;
use crate::device::{lock, Core, Peer};

/// The most operations one input runs.
pub const MAX_OPS: usize = 4;

/// One thing that arrives on the device's UDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloodOp {
    /// A datagram as given.
    Raw {
        /// See [`source_addr`].
        source: u8,
        /// The datagram.
        datagram: Vec<u8>,
    },
    /// A data message the remote seals (an IPv4 packet from 10.1.0.1 to 10.0.0.1 carrying
    /// `payload`): authentic, so the device must accept it and learn `source` as the
    /// peer's endpoint.
    Data {
        /// See [`source_addr`].
        source: u8,
        /// The packet's payload.
        payload: Vec<u8>,
    },
    /// The last data message sealed, again (a replay: refused, the endpoint stays).
    Replay {
        /// See [`source_addr`].
        source: u8,
    },
    /// The last data message sealed with the byte at `at` (modulo its length) flipped
    /// (refused, the endpoint stays).
    Tamper {
        /// See [`source_addr`].
        source: u8,
        /// Which byte.
        at: u16,
    },
    /// A fresh handshake initiation from the remote; the device's answers (a response or a
    /// cookie reply) are given back to the remote, and what it sends then goes to the device.
    Initiation {
        /// See [`source_addr`].
        source: u8,
    },
}

fn bytes_up_to(u: &mut Unstructured<'_>, max: u16) -> arbitrary::Result<Vec<u8>> {
    let len = u16::from_le_bytes([u8::arbitrary(u)?, u8::arbitrary(u)?]).min(max);
    Ok(u.bytes(usize::from(len).min(u.len()))?.to_vec())
}

impl<'a> Arbitrary<'a> for FloodOp {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.len() < 2 {
            return Err(arbitrary::Error::NotEnoughData);
        }
        let kind = u8::arbitrary(u)? % 5;
        let source = u8::arbitrary(u)?;
        Ok(match kind {
            0 => FloodOp::Raw {
                source,
                datagram: bytes_up_to(u, 2048)?,
            },
            1 => FloodOp::Data {
                source,
                payload: bytes_up_to(u, 1400)?,
            },
            2 => FloodOp::Replay { source },
            3 => FloodOp::Tamper {
                source,
                at: u16::from_le_bytes([u8::arbitrary(u)?, u8::arbitrary(u)?]),
            },
            _ => FloodOp::Initiation { source },
        })
    }
}

/// Decodes `data` into operations (see the module docs).
pub fn decode(data: &[u8]) -> Vec<FloodOp> {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        match FloodOp::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

/// Where a datagram comes from: 0 is the peer's configured endpoint; otherwise IPv4, IPv6
/// and IPv4-mapped IPv6 addresses of documentation ranges, with ports, by the byte's bits.
pub fn source_addr(source: u8) -> SocketAddr {
    if source == 0 {
        return super::peer_addr();
    }
    let port = 1024 + u16::from(source);
    let ip = match source % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, source)),
        1 => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            u16::from(source),
        )),
        _ => IpAddr::V6(Ipv4Addr::new(203, 0, 113, source).to_ipv6_mapped()),
    };
    SocketAddr::new(ip, port)
}

struct Flood {
    core: Core,
    rx: RxCtx,
    remote: Box<Tunn>,
    /// The last data message the remote sealed.
    last_sealed: Vec<u8>,
}

fn flood() -> &'static Mutex<Flood> {
    static F: OnceLock<Mutex<Flood>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(Flood::new()))
}

fn the_peer(core: &Core) -> Arc<Peer> {
    let st = core.read();
    let peer = st.peers.values().next().cloned();
    peer.expect("the harness has one peer")
}

/// What the device knows about its peer, compared around every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    rx_bytes: u64,
    endpoint: Option<SocketAddr>,
}

fn seen(peer: &Peer) -> Seen {
    Seen {
        rx_bytes: peer.read(|t| &t.rx_bytes),
        endpoint: peer.endpoint(),
    }
}

impl Flood {
    fn new() -> Flood {
        let (core, rx, remote) = super::device_with_session();
        Flood {
            core,
            rx,
            remote,
            last_sealed: Vec::new(),
        }
    }

    /// Gives `datagram` to the device from `from`; returns the replies it sent, and whether
    /// it authenticated the datagram, asserting that an authenticated datagram (counted
    /// whole) moved the endpoint to `from` and any other left it alone.
    fn input(&mut self, from: SocketAddr, datagram: &[u8]) -> (Vec<Vec<u8>>, bool) {
        let peer = the_peer(&self.core);
        let before = seen(&peer);
        let st = self.core.read();
        self.rx.handle_datagram(&self.core, &st, from, datagram);
        drop(st);
        let replies: Vec<Vec<u8>> = self
            .rx
            .outbox
            .datagrams()
            .map(|(_, d)| d.to_vec())
            .collect();
        self.rx.flush(&self.core, None, None);
        let after = seen(&peer);
        let authenticated = after.rx_bytes != before.rx_bytes;
        if authenticated {
            assert_eq!(
                after.rx_bytes - before.rx_bytes,
                datagram.len() as u64,
                "an authenticated datagram is counted whole"
            );
            assert_eq!(
                after.endpoint,
                Some(from),
                "an authenticated datagram from {from} did not move the endpoint"
            );
        } else {
            assert_eq!(
                after.endpoint, before.endpoint,
                "a datagram the device refused (from {from}) moved the endpoint"
            );
        }
        (replies, authenticated)
    }

    fn seal(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let total = 20 + payload.len();
        let len = u16::try_from(total).ok()?;
        let mut packet = Vec::with_capacity(total);
        packet.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 253, 0, 0]);
        packet[2..4].copy_from_slice(&len.to_be_bytes());
        packet.extend_from_slice(&[10, 1, 0, 1, 10, 0, 0, 1]);
        packet.extend_from_slice(payload);
        let mut out = vec![0u8; total + 64];
        match self.remote.encapsulate(&packet, &mut out) {
            TunnResult::WriteToNetwork(d) if d.first() == Some(&4) => Some(d.to_vec()),
            _ => None,
        }
    }

    fn run(&mut self, op: &FloodOp) {
        match op {
            FloodOp::Raw { source, datagram } => {
                let (_, authenticated) = self.input(source_addr(*source), datagram);
                assert!(!authenticated, "a made-up datagram authenticated");
            }
            FloodOp::Data { source, payload } => {
                if let Some(sealed) = self.seal(payload) {
                    self.input(source_addr(*source), &sealed);
                    self.last_sealed = sealed;
                }
            }
            FloodOp::Replay { source } => {
                if !self.last_sealed.is_empty() {
                    let replay = self.last_sealed.clone();
                    let (_, authenticated) = self.input(source_addr(*source), &replay);
                    assert!(!authenticated, "a replayed data message authenticated");
                }
            }
            FloodOp::Tamper { source, at } => {
                if !self.last_sealed.is_empty() {
                    let mut forged = self.last_sealed.clone();
                    let i = usize::from(*at) % forged.len();
                    forged[i] ^= 0x01;
                    let (_, authenticated) = self.input(source_addr(*source), &forged);
                    assert!(!authenticated, "a tampered data message authenticated");
                }
            }
            FloodOp::Initiation { source } => {
                let from = source_addr(*source);
                let mut buf = vec![0u8; 2048];
                let init = match self.remote.format_handshake_initiation(&mut buf, true) {
                    TunnResult::WriteToNetwork(d) => d.to_vec(),
                    _ => return,
                };
                let (replies, _) = self.input(from, &init);
                for reply in replies {
                    let mut answer = Vec::new();
                    if let TunnResult::WriteToNetwork(d) =
                        self.remote.decapsulate(None, &reply, &mut buf)
                    {
                        answer = d.to_vec();
                    }
                    // The remote's keepalive confirming the new session.
                    if !answer.is_empty() {
                        self.input(from, &answer);
                    }
                }
            }
        }
    }
}

/// Runs the operations `data` decodes to (see the module docs) against the shared flood
/// device, asserting after every datagram that an authenticated one was counted whole and
/// moved the peer's endpoint to its source, that anything refused left the endpoint alone,
/// and that no made-up, replayed or tampered datagram authenticated.
pub fn udp_flood(data: &[u8]) {
    let ops = decode(data);
    let mut f = lock(flood());
    for op in &ops {
        f.run(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut Flood, data: &[u8]) -> Option<SocketAddr> {
        for op in decode(data) {
            f.run(&op);
        }
        the_peer(&f.core).endpoint()
    }

    #[test]
    fn authentic_data_roams_and_forgeries_do_not() {
        let mut f = Flood::new();
        // Data from source 7, then a replay and a tampered copy from source 8.
        let mut input = vec![1, 7, 4, 0, b'p', b'i', b'n', b'g'];
        input.extend_from_slice(&[2, 8, 3, 8, 40, 0]);
        assert_eq!(run(&mut f, &input), Some(source_addr(7)));
        // A handshake from source 9, then data from it.
        assert_eq!(run(&mut f, &[4, 9, 1, 9, 0, 0]), Some(source_addr(9)));
        // Garbage from source 10 changes nothing.
        assert_eq!(run(&mut f, &[0, 10, 3, 0, 4, 0, 0]), Some(source_addr(9)));
    }

    #[test]
    fn decoding_stops_at_a_truncated_operation() {
        assert_eq!(
            decode(&[0, 3, 2, 0, 0xaa, 0xbb, 2, 1, 7]),
            vec![
                FloodOp::Raw {
                    source: 3,
                    datagram: vec![0xaa, 0xbb]
                },
                FloodOp::Replay { source: 1 },
            ]
        );
    }
}
