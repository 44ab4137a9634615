//! The UDP → TUN half of the packet path: a received datagram (or a GRO message of them) →
//! opened packets in a [`Coalescer`] (or a plain list) for the TUN, and handshake replies and
//! released packets in an [`Outbox`].

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use defguard_boringtun::noise::handshake::parse_handshake_anon;
use defguard_boringtun::noise::{Packet, Tunn, TunnResult};
use wgdp_offload::Coalescer;

use super::message::MessageCache;
use super::{Outbox, COOKIE_REPLY, DATA, HANDSHAKE_INIT, HANDSHAKE_RESP, MAX_PACKET, MIN_DST};
use crate::budget::Admission;
use crate::device::{lock, Core, Noise, Peer, State};
use crate::stats::DropReason;
use crate::tun::Tun;
use crate::uapi::Key;
use crate::udp::Sockets;

/// Where opened packets go before the TUN write.
enum Sink {
    /// Merged into super-packets (TUN with virtio-net headers).
    Coalesce(Box<Coalescer>),
    /// Written one by one, each with an all-zero virtio-net header if `vnet` (a TUN
    /// whose kernel refused TSO) or as is (plain TUN).
    Plain {
        vnet: bool,
        buf: Vec<u8>,
        ranges: Vec<Range<usize>>,
    },
}

/// The UDP → TUN half.
pub struct RxCtx {
    dec: Vec<u8>,
    sink: Sink,
    /// Handshake replies and released queued packets waiting to be sent.
    pub outbox: Outbox,
    /// Packets handed to the TUN by the last flush (for tests and the fuzzing harness).
    pub delivered: u64,
}

impl std::fmt::Debug for RxCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxCtx")
            .field("outbox", &self.outbox)
            .field("delivered", &self.delivered)
            .finish()
    }
}

impl RxCtx {
    /// A context writing to a TUN with (`vnet`) or without virtio-net headers; `tcp_gro`
    /// when the TUN accepted TSO (so TCP segments are merged), `udp_gro` when it accepted
    /// USO (`GSO_UDP_L4` writes).
    pub fn new(vnet: bool, tcp_gro: bool, udp_gro: bool) -> Self {
        let sink = if vnet && tcp_gro {
            let mut c = Coalescer::new();
            c.set_udp(udp_gro);
            // What it gets was opened by the AEAD, which authenticated every byte.
            c.trust_l4_checksums(true);
            Sink::Coalesce(Box::new(c))
        } else {
            Sink::Plain {
                vnet,
                buf: Vec::new(),
                ranges: Vec::new(),
            }
        };
        RxCtx {
            dec: vec![0u8; MAX_PACKET + 256],
            sink,
            // Room for boringtun's whole queue of packets held during a handshake (256).
            outbox: Outbox::new(512 * 1024),
            delivered: 0,
        }
    }

    /// Processes one received datagram from `from`.
    pub fn handle_datagram(&mut self, core: &Core, st: &State, from: SocketAddr, d: &[u8]) {
        let mut msg = MessageCache::new(from, core.clock.now());
        self.open(core, st, &mut msg, d);
        msg.settle();
    }

    /// Processes one received message from `from`: one datagram, or with UDP GRO
    /// (`segment`: the size of all but the last) several back to back. Peer lookups and the
    /// peer's receive accounting are done once for the message where they agree.
    pub fn handle_message(
        &mut self,
        core: &Core,
        st: &State,
        from: SocketAddr,
        data: &[u8],
        segment: Option<usize>,
    ) {
        let mut msg = MessageCache::new(from, core.clock.now());
        for d in data.chunks(segment.unwrap_or(data.len()).max(1)) {
            self.open(core, st, &mut msg, d);
        }
        msg.settle();
    }

    /// Opens datagram `d` of the message `msg`.
    fn open<'s>(&mut self, core: &Core, st: &'s State, msg: &mut MessageCache<'s>, d: &[u8]) {
        let RxCtx {
            dec, sink, outbox, ..
        } = self;
        let (from, now) = (msg.from(), msg.now());
        let packet = match Tunn::parse_incoming_packet(d) {
            Ok(p) => p,
            Err(_) => {
                core.stats.drop(DropReason::Malformed);
                return;
            }
        };
        let ty = d[0];
        let peer: &Arc<Peer> = match packet {
            Packet::HandshakeInit(_) => {
                let (Some(key), Some(limiter)) = (&st.key, &st.limiter) else {
                    core.stats.drop(DropReason::NoKey);
                    return;
                };
                // A source that already used up its budget under load is refused before any
                // MAC is computed (see `HandshakeBudget::exhausted`).
                if core.handshakes.exhausted(from.ip(), Instant::now()) {
                    core.stats.drop(DropReason::HandshakeBudget);
                    return;
                }
                limiter.reset_count();
                let init = match limiter.verify_packet(Some(from.ip()), d, dec) {
                    Ok(Packet::HandshakeInit(init)) => init,
                    Ok(_) => {
                        core.stats.drop(DropReason::Malformed);
                        return;
                    }
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        outbox.push_copy(from, cookie, None, core, now);
                        core.stats.drop(DropReason::UnderLoad);
                        return;
                    }
                    Err(TunnResult::Err(e)) => {
                        core.stats.drop(DropReason::of(&e));
                        return;
                    }
                    Err(_) => return,
                };
                // After the cookie check: a source that proved its address still gets only
                // its own share of the handshake work.
                if core.handshakes.admit(from.ip(), Instant::now()) == Admission::SourceOverBudget {
                    core.stats.drop(DropReason::HandshakeBudget);
                    return;
                }
                let Ok(half) = parse_handshake_anon(&key.secret, &key.public, &init) else {
                    core.stats.drop(DropReason::UnknownPeer);
                    return;
                };
                match st.peers.get(&Key(half.peer_static_public)) {
                    Some(p) => p,
                    None => {
                        core.stats.drop(DropReason::UnknownPeer);
                        return;
                    }
                }
            }
            Packet::HandshakeResponse(p) => match msg.peer_of_index(st, p.receiver_idx >> 8) {
                Some(peer) => peer,
                None => {
                    core.stats.drop(DropReason::UnknownIndex);
                    return;
                }
            },
            Packet::PacketCookieReply(p) => match msg.peer_of_index(st, p.receiver_idx >> 8) {
                Some(peer) => peer,
                None => {
                    core.stats.drop(DropReason::UnknownIndex);
                    return;
                }
            },
            Packet::PacketData(p) => match msg.peer_of_index(st, p.receiver_idx >> 8) {
                Some(peer) => peer,
                None => {
                    core.stats.drop(DropReason::UnknownIndex);
                    return;
                }
            },
        };
        let woke = core.activity(peer);
        let mut noise = lock(&peer.tunn);
        if peer.tunn_in(&mut noise, st.key.as_ref()).is_none() {
            core.stats.drop(DropReason::NoKey);
            return;
        }
        // Whether packets can already go somewhere the other end opens (checked before an
        // initiation is answered; only then, as it reads the clock).
        let was_confirmed = ty == HANDSHAKE_INIT && noise.confirmed();
        let held_before = noise.unconfirmed_since != 0 || !noise.held.is_empty();
        let Some(t) = noise.tunn.as_deref_mut() else {
            return;
        };
        if outbox.room() < 4 * MIN_DST {
            // Replies are few; when a batch somehow fills the outbox, later ones are lost
            // and the handshake retried.
            core.stats.drop(DropReason::UdpSend);
            return;
        }
        if woke {
            let to = peer.endpoint().or(Some(from));
            outbox.run_timers(t, to, peer, core, now);
        }
        let authenticated = match t.decapsulate(Some(from.ip()), d, dec) {
            // Under load boringtun answers a handshake with a cookie reply before
            // authenticating it: the sender proved nothing, so its address is not the
            // peer's endpoint and no handshake happened.
            TunnResult::WriteToNetwork(reply) if reply.first() == Some(&COOKIE_REPLY) => {
                outbox.push_copy(from, reply, None, core, now);
                core.stats.drop(DropReason::UnderLoad);
                false
            }
            TunnResult::WriteToNetwork(reply) => {
                outbox.push_copy(from, reply, Some(peer), core, now);
                match ty {
                    HANDSHAKE_INIT => {
                        peer.handshake_done();
                        // The answered session may already be boringtun's current one:
                        // until the initiator's first message on it shows it has the
                        // session, nothing is sent on it.
                        if !was_confirmed {
                            noise.unconfirmed_since = now.max(1);
                        }
                        // The answer leaves now, ahead of any packet sealed with the
                        // session it creates.
                        if let Some(sockets) = st.sockets.as_deref() {
                            outbox.flush(core, Some(sockets));
                        }
                    }
                    HANDSHAKE_RESP => {
                        peer.handshake_done();
                        // Initiator: the session is current and confirmed. Packets
                        // queued while waiting for it can go now.
                        noise.unconfirmed_since = 0;
                        outbox.release(&mut noise, dec, from, peer, core, now);
                    }
                    _ => {}
                }
                true
            }
            TunnResult::WriteToTunnelV4(pkt, src) => {
                deliver(core, st, msg, peer, sink, pkt, IpAddr::V4(src));
                confirm(&mut noise, held_before, outbox, dec, from, peer, core, now);
                true
            }
            TunnResult::WriteToTunnelV6(pkt, src) => {
                deliver(core, st, msg, peer, sink, pkt, IpAddr::V6(src));
                confirm(&mut noise, held_before, outbox, dec, from, peer, core, now);
                true
            }
            TunnResult::Done => {
                if ty == DATA {
                    confirm(&mut noise, held_before, outbox, dec, from, peer, core, now);
                }
                true
            }
            TunnResult::Err(e) => {
                core.stats.drop(DropReason::of(&e));
                false
            }
        };
        drop(noise);
        if authenticated {
            let roams = matches!(ty, HANDSHAKE_INIT | HANDSHAKE_RESP | DATA);
            msg.received(peer, d.len(), roams, ty != DATA);
        }
    }

    /// Packets waiting for the TUN.
    pub fn pending(&self) -> usize {
        match &self.sink {
            Sink::Coalesce(c) => c.len(),
            Sink::Plain { ranges, .. } => ranges.len(),
        }
    }

    /// Writes the opened packets to `tun` (queue 0) and sends the replies.
    pub fn flush(&mut self, core: &Core, tun: Option<&Tun>, sockets: Option<&Sockets>) {
        self.outbox.flush(core, sockets);
        let mut written = 0u64;
        let mut write = |b: &[u8]| {
            written += 1;
            if let Some(tun) = tun {
                if let Err(err) = tun.write(0, b) {
                    tracing::trace!(%err, "TUN write failed");
                    core.stats.drop(DropReason::TunWrite);
                }
            }
        };
        match &mut self.sink {
            Sink::Coalesce(c) => c.flush(&mut write),
            Sink::Plain { buf, ranges, .. } => {
                for r in ranges.iter() {
                    if let Some(p) = buf.get(r.clone()) {
                        write(p);
                    }
                }
                buf.clear();
                ranges.clear();
            }
        }
        self.delivered = written;
    }
}

/// A data message (or keepalive) from `peer` opened: the other end has the session, so a
/// session this end answered is confirmed, and what waited for it (`held_before`) goes.
#[allow(clippy::too_many_arguments)]
fn confirm(
    noise: &mut Noise,
    held_before: bool,
    outbox: &mut Outbox,
    dec: &mut [u8],
    from: SocketAddr,
    peer: &Peer,
    core: &Core,
    now: u64,
) {
    if held_before {
        noise.unconfirmed_since = 0;
        outbox.release(noise, dec, from, peer, core, now);
    }
}

/// Hands an opened packet to the TUN path if its source is one of `peer`'s allowed IPs.
fn deliver<'s>(
    core: &Core,
    st: &'s State,
    msg: &mut MessageCache<'s>,
    peer: &Arc<Peer>,
    sink: &mut Sink,
    pkt: &[u8],
    src: IpAddr,
) {
    if !msg.source_allowed(st, peer, src) {
        core.stats.drop(DropReason::SourceNotAllowed);
        return;
    }
    match sink {
        Sink::Coalesce(c) => c.push(pkt),
        Sink::Plain { vnet, buf, ranges } => {
            let start = buf.len();
            if *vnet {
                buf.extend_from_slice(&[0u8; wgdp_offload::VNET_HDR_LEN]);
            }
            buf.extend_from_slice(pkt);
            ranges.push(start..buf.len());
        }
    }
}
