//! Regression tests: handshakes that cross under traffic, between two in-process devices
//! (no sockets, no TUN: datagrams are carried between them by the test).
//!
//! When both ends start sending to each other at once (a new peer, a pair moving onto a new
//! key), both initiate, each answers the other's initiation, and packets keep coming while
//! the answers are under way. The pair must settle on a session after one exchange and lose
//! no packet; and a session an end answered must carry nothing before the initiator has it.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::net::SocketAddr;

use defguard_boringtun::x25519::{PublicKey, StaticSecret};

use crate::datapath::{RxCtx, TxCtx};
use crate::device::Core;
use crate::uapi::{parse_request, Key, Request};

const HANDSHAKE_INIT: u8 = 1;
const DATA: u8 = 4;

struct End {
    core: Core,
    tx: TxCtx,
    rx: RxCtx,
    /// This end's underlay address.
    addr: SocketAddr,
    /// This end's pod network (the source of what it sends).
    net: [u8; 2],
    /// Handshake initiations sent.
    inits: usize,
    /// Packets delivered to the TUN.
    delivered: u64,
}

/// An end with key `key` at `addr` (pod network `net`), peered with the end of key `peer_key`
/// at `peer_addr` (pod network `peer_net`).
fn end(
    key: u8,
    addr: SocketAddr,
    net: [u8; 2],
    peer_key: u8,
    peer_addr: SocketAddr,
    peer_net: [u8; 2],
) -> End {
    let core = Core::new(None, Box::new(|| {}));
    let peer_public = PublicKey::from(&StaticSecret::from([peer_key; 32]));
    let req = format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint={}\nallowed_ip={}.{}.0.0/16\n",
        Key([key; 32]).to_hex(),
        Key(*peer_public.as_bytes()).to_hex(),
        peer_addr,
        peer_net[0],
        peer_net[1],
    );
    let Ok(Request::Set(set)) = parse_request(req.lines()) else {
        panic!("bad request");
    };
    core.apply(&set).unwrap();
    End {
        core,
        tx: TxCtx::new(true),
        rx: RxCtx::new(true, false, false),
        addr,
        net,
        inits: 0,
        delivered: 0,
    }
}

/// Two ends, A (10.1/16) and B (10.2/16), peered with each other, no session yet.
fn pair() -> (End, End) {
    let (a_addr, a_net) = (SocketAddr::from(([192, 0, 2, 1], 51820)), [10, 1]);
    let (b_addr, b_net) = (SocketAddr::from(([192, 0, 2, 2], 51820)), [10, 2]);
    (
        end(0xa1, a_addr, a_net, 0xb2, b_addr, b_net),
        end(0xb2, b_addr, b_net, 0xa1, a_addr, a_net),
    )
}

/// One TUN read on `from`: an IPv4 packet (virtio-net header first) to the other end's
/// network carrying `seq` as its IP ID. Returns the datagrams it produced.
fn send(from: &mut End, to_net: [u8; 2], seq: u16) -> Vec<Vec<u8>> {
    let mut frame = vec![0u8; 10];
    let id = seq.to_be_bytes();
    frame.extend_from_slice(&[
        0x45,
        0,
        0,
        20,
        id[0],
        id[1],
        0,
        0,
        64,
        17,
        0,
        0,
        from.net[0],
        from.net[1],
        0,
        1,
        to_net[0],
        to_net[1],
        0,
        1,
    ]);
    let st = from.core.read();
    from.tx.handle_tun_read(&from.core, &st, &mut frame, None);
    drop(st);
    let out = collect(from.tx.outbox.datagrams(), &mut from.inits);
    from.tx.outbox.flush(&from.core, None);
    out
}

fn collect<'a>(
    ds: impl Iterator<Item = (SocketAddr, &'a [u8])>,
    inits: &mut usize,
) -> Vec<Vec<u8>> {
    let out: Vec<Vec<u8>> = ds.map(|(_, d)| d.to_vec()).collect();
    *inits += out.iter().filter(|d| d[0] == HANDSHAKE_INIT).count();
    out
}

/// `to` receives `datagrams` from `from_addr`; returns what it sent in reply.
fn receive(to: &mut End, from_addr: SocketAddr, datagrams: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let st = to.core.read();
    for d in datagrams {
        to.rx.handle_datagram(&to.core, &st, from_addr, d);
    }
    drop(st);
    let out = collect(to.rx.outbox.datagrams(), &mut to.inits);
    to.rx.flush(&to.core, None, None);
    to.delivered += to.rx.delivered;
    out
}

/// Carries datagrams both ways until neither end has anything more to say.
fn settle(a: &mut End, b: &mut End, mut to_b: Vec<Vec<u8>>, mut to_a: Vec<Vec<u8>>) {
    for _ in 0..20 {
        if to_a.is_empty() && to_b.is_empty() {
            return;
        }
        let from_b = receive(b, a.addr, &to_b);
        let from_a = receive(a, b.addr, &to_a);
        to_a = from_b;
        to_b = from_a;
    }
    panic!("the ends never stopped talking");
}

#[test]
fn crossing_handshakes_under_traffic_settle_at_once_and_lose_nothing() {
    let (mut a, mut b) = pair();
    let (a_net, b_net) = (a.net, b.net);
    // Both send first: two initiations cross.
    let mut to_b = send(&mut a, b_net, 0);
    let mut to_a = send(&mut b, a_net, 0);
    assert_eq!((a.inits, b.inits), (1, 1));
    // Every round each initiation or answer lands while both keep sending.
    let mut sent = 1u64;
    for seq in 1..30u16 {
        let mut from_b = receive(&mut b, a.addr, &to_b);
        let mut from_a = receive(&mut a, b.addr, &to_a);
        from_a.extend(send(&mut a, b_net, seq));
        from_b.extend(send(&mut b, a_net, seq));
        sent += 1;
        to_a = from_b;
        to_b = from_a;
    }
    settle(&mut a, &mut b, to_b, to_a);
    assert_eq!(
        (a.inits, b.inits),
        (1, 1),
        "each end initiates once: no handshake is abandoned for a new one"
    );
    assert_eq!(b.delivered, sent, "every packet from A arrived");
    assert_eq!(a.delivered, sent, "every packet from B arrived");
}

#[test]
fn an_answered_session_carries_nothing_before_the_initiator_has_it() {
    let (mut a, mut b) = pair();
    let (a_net, b_net) = (a.net, b.net);
    let init = send(&mut a, b_net, 0);
    let answer = receive(&mut b, a.addr, &init);
    // B has answered; A has not seen the answer yet. B's packets wait.
    for seq in 0..10u16 {
        let out = send(&mut b, a_net, seq);
        assert!(
            out.iter().all(|d| d[0] != DATA),
            "B sealed data on a session A does not have yet"
        );
    }
    assert_eq!(b.inits, 0, "B does not start a handshake of its own");
    // A's confirmation (its first packet on the session) releases them, in order.
    let confirm = receive(&mut a, b.addr, &answer);
    assert_eq!(b.delivered, 0);
    let released = receive(&mut b, a.addr, &confirm);
    assert_eq!(b.delivered, 1, "A's first packet arrived");
    assert_eq!(released.iter().filter(|d| d[0] == DATA).count(), 10);
    receive(&mut a, b.addr, &released);
    assert_eq!(a.delivered, 10, "every held packet arrived");
}
