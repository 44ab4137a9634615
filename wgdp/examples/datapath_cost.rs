//! Drives the packet path of two in-process devices without I/O, for counting what one
//! packet costs (under `valgrind --tool=callgrind`, or `perf stat` where the machine has
//! counters): device A reads bulk TCP from its TUN (64 KiB TSO super-packets with a
//! virtio-net header, MSS 1368 as behind a 1420-byte MTU), segments and seals them; device B
//! opens the datagrams and coalesces them for its TUN.
//!
//! `datapath_cost ROUNDS [tx|both]`: `tx` runs A's half only, `both` carries every datagram
//! to B as well, so B's cost is the difference. Run it with two round counts and divide the
//! difference by the segments of the extra rounds to leave the set-up out. Prints the
//! segments sealed and the packets B wrote (one merged packet per read when coalescing
//! works).

use std::net::SocketAddr;

use defguard_boringtun::x25519::{PublicKey, StaticSecret};
use wgdp::datapath::{RxCtx, TxCtx};
use wgdp::uapi::{parse_request, Key, Request};
use wgdp::Core;
use wgdp_offload::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
use wgdp_offload::{VnetHdr, VNET_HDR_LEN};

/// TCP payload per segment: a 1420-byte MTU less IPv4, TCP and the timestamp option.
const MSS: usize = 1368;
/// Segments per TUN read: as many as fit in a 64 KiB super-packet.
const SEGMENTS: usize = 47;
/// IPv4 header, TCP header with the timestamp option.
const HDRS: usize = 20 + 32;
/// Datagrams per received message: as many as one GSO send carries (64 KiB).
const GRO_SEGMENTS: usize = 45;

struct End {
    core: Core,
    tx: TxCtx,
    rx: RxCtx,
    addr: SocketAddr,
}

fn end(key: u8, addr: SocketAddr, peer_key: u8, peer_addr: SocketAddr, peer_net: u8) -> End {
    let core = Core::new(None, Box::new(|| {}));
    let peer_public = PublicKey::from(&StaticSecret::from([peer_key; 32]));
    let req = format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint={}\nallowed_ip=10.{}.0.0/16\n",
        Key([key; 32]).to_hex(),
        Key(*peer_public.as_bytes()).to_hex(),
        peer_addr,
        peer_net,
    );
    let Ok(Request::Set(set)) = parse_request(req.lines()) else {
        panic!("the set request does not parse");
    };
    if let Err(err) = core.apply(&set) {
        panic!("applying the set request: {err}");
    }
    End {
        core,
        tx: TxCtx::new(true),
        rx: RxCtx::new(true, true, true),
        addr,
    }
}

/// A TCP/IPv4 super-packet from 10.1.0.1 to 10.2.0.1 with `SEGMENTS` segments of `MSS`,
/// behind its virtio-net header, as the TUN hands it over.
fn tso_frame() -> Vec<u8> {
    let ip_len = HDRS + SEGMENTS * MSS;
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: HDRS as u16,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut f = hdr.encode().to_vec();
    let len = (ip_len as u16).to_be_bytes();
    f.extend_from_slice(&[
        0x45, 0, len[0], len[1], 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1,
    ]);
    // Ports, sequence and acknowledgement numbers, data offset 8 words, ACK, window,
    // checksum (the stack leaves the pseudo-header sum; segmentation recomputes it), urgent
    // pointer, then NOP NOP timestamp.
    f.extend_from_slice(&[
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x80, 0x10, 0x01, 0xf5, 0, 0, 0, 0,
        1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2,
    ]);
    f.extend((0..SEGMENTS * MSS).map(|i| (i * 7) as u8));
    debug_assert_eq!(f.len(), VNET_HDR_LEN + ip_len);
    f
}

/// One TUN read on A; returns the datagrams it sealed.
fn send(a: &mut End, frame: &mut [u8]) -> Vec<Vec<u8>> {
    let st = a.core.read();
    a.tx.handle_tun_read(&a.core, &st, frame, None);
    drop(st);
    let out = a.tx.outbox.datagrams().map(|(_, d)| d.to_vec()).collect();
    a.tx.outbox.flush(&a.core, None);
    out
}

/// `to` receives `datagrams` from `from`; returns its replies and the packets it wrote.
fn receive(to: &mut End, from: SocketAddr, datagrams: &[Vec<u8>]) -> (Vec<Vec<u8>>, u64) {
    let st = to.core.read();
    for d in datagrams {
        to.rx.handle_datagram(&to.core, &st, from, d);
    }
    drop(st);
    let out = to.rx.outbox.datagrams().map(|(_, d)| d.to_vec()).collect();
    to.rx.flush(&to.core, None, None);
    (out, to.rx.delivered)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let both = args.next().as_deref() != Some("tx");
    let (a_addr, b_addr) = (
        SocketAddr::from(([192, 0, 2, 1], 51820)),
        SocketAddr::from(([192, 0, 2, 2], 51820)),
    );
    let mut a = end(0xa1, a_addr, 0xb2, b_addr, 2);
    let mut b = end(0xb2, b_addr, 0xa1, a_addr, 1);
    let template = tso_frame();
    let mut frame = template.clone();
    // The handshake: A's first read starts it, and the exchange settles it.
    let mut to_b = send(&mut a, &mut frame);
    for _ in 0..4 {
        let (to_a, _) = receive(&mut b, a.addr, &to_b);
        to_b = receive(&mut a, b.addr, &to_a).0;
    }
    let (mut sealed, mut written) = (0usize, 0u64);
    let (mut message, mut messages) = (Vec::new(), Vec::new());
    // The datagrams of a round are carried in a reused list, as the receive batch would.
    for _ in 0..rounds {
        frame.copy_from_slice(&template);
        let st = a.core.read();
        a.tx.handle_tun_read(&a.core, &st, &mut frame, None);
        drop(st);
        sealed += a.tx.outbox.len();
        if both {
            // As UDP GRO hands them over: back to back, at most a train's worth per message.
            messages.clear();
            for (i, (_, d)) in a.tx.outbox.datagrams().enumerate() {
                if i % GRO_SEGMENTS == 0 {
                    messages.push((message.len(), d.len()));
                }
                message.extend_from_slice(d);
            }
            messages.push((message.len(), 0));
            let st = b.core.read();
            for w in messages.windows(2) {
                let (start, segment) = w[0];
                let data = &message[start..w[1].0];
                b.rx.handle_message(&b.core, &st, a_addr, data, Some(segment));
            }
            drop(st);
            message.clear();
            b.rx.flush(&b.core, None, None);
            written += b.rx.delivered;
        }
        a.tx.outbox.flush(&a.core, None);
    }
    println!("rounds {rounds}: {sealed} segments sealed, {written} packets written by B");
}
