//! Packet processing, free of I/O: a TUN read → segments → sealed datagrams in an
//! [`Outbox`]; a received datagram → opened packets for the TUN and any handshake replies in
//! an [`Outbox`] ([`RxCtx`], in `open`); a timer tick → boringtun's timer actions. The
//! thread loops in `threads` feed these from the TUN and sockets, and so does the fuzzing
//! harness from byte slices.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Instant;

use defguard_boringtun::noise::errors::WireGuardError;
use defguard_boringtun::noise::{Tunn, TunnResult};
use wgdp_offload::{InPlaceSegments, VNET_HDR_LEN};

mod message;
mod open;

pub use open::RxCtx;

use crate::device::{lock, Core, Noise, Peer, State, TICK};
use crate::stats::DropReason;
use crate::sys::SendScratch;
use crate::udp::Sockets;

/// Bytes of sealed datagrams an outbox holds before it must be flushed.
const ARENA: usize = 1 << 20;
/// Room kept free for one TUN read's worth of datagrams (64 KiB plus 32 bytes per segment).
pub const HEADROOM: usize = 160 * 1024;
/// Largest IP packet (and decrypted payload).
pub const MAX_PACKET: usize = 65_536;
/// Segments sealed per hold of a peer's lock.
const SEAL_CHUNK: usize = 8;
/// Smallest `dst` boringtun accepts for any output (a handshake initiation).
const MIN_DST: usize = 148;
/// Message type of a handshake initiation.
const HANDSHAKE_INIT: u8 = 1;
/// Message type of a handshake response.
const HANDSHAKE_RESP: u8 = 2;
/// WireGuard message type of a cookie reply.
const COOKIE_REPLY: u8 = 3;
/// Message type of a data message.
const DATA: u8 = 4;
/// How long after the last traffic a peer keeps being ticked (boringtun's keepalive and
/// "no reply" handshake rules act up to 15 s after it).
const ACTIVE_NS: u64 = 25_000_000_000;
/// How long after the last handshake initiation (boringtun retries for 90 s).
const INIT_PENDING_NS: u64 = 95_000_000_000;

/// Sealed datagrams waiting to be sent, back to back in one buffer.
pub struct Outbox {
    arena: Vec<u8>,
    cursor: usize,
    list: Vec<(SocketAddr, Range<usize>)>,
    scratch: SendScratch,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("bytes", &self.cursor)
            .field("datagrams", &self.list.len())
            .finish()
    }
}

impl Outbox {
    /// An empty outbox of `size` bytes.
    pub fn new(size: usize) -> Self {
        Outbox {
            arena: vec![0u8; size.max(2 * MIN_DST)],
            cursor: 0,
            list: Vec::new(),
            scratch: SendScratch::new(),
        }
    }

    /// Free bytes.
    pub fn room(&self) -> usize {
        self.arena.len() - self.cursor
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The waiting datagrams (for tests and the fuzzing harness).
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.list
            .iter()
            .map(|(a, r)| (*a, self.arena.get(r.clone()).unwrap_or_default()))
    }

    fn slot(&mut self) -> &mut [u8] {
        &mut self.arena[self.cursor..]
    }

    /// Records that `n` bytes were written at the cursor for `to`, sent to `peer`.
    fn commit(&mut self, to: SocketAddr, n: usize, peer: &Peer, now: u64) {
        let start = self.cursor;
        let traffic = peer.traffic();
        if self.arena.get(start).copied() == Some(HANDSHAKE_INIT) {
            traffic.last_init.store(now, Ordering::Relaxed);
        }
        self.cursor += n;
        self.list.push((to, start..start + n));
        traffic.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        traffic.last_tx.store(now, Ordering::Relaxed);
    }

    /// Copies an already formed message (a handshake reply, a cookie).
    fn push_copy(
        &mut self,
        to: SocketAddr,
        msg: &[u8],
        peer: Option<&Peer>,
        core: &Core,
        now: u64,
    ) {
        if self.room() < msg.len() {
            core.stats.drop(DropReason::UdpSend);
            return;
        }
        self.arena[self.cursor..self.cursor + msg.len()].copy_from_slice(msg);
        match peer {
            Some(p) => self.commit(to, msg.len(), p, now),
            None => {
                let start = self.cursor;
                self.cursor += msg.len();
                self.list.push((to, start..start + msg.len()));
            }
        }
    }

    /// Handles a result boringtun wrote into [`Outbox::slot`].
    fn take(
        &mut self,
        r: Result<usize, WireGuardError>,
        to: Option<SocketAddr>,
        peer: &Peer,
        core: &Core,
        now: u64,
    ) {
        match (r, to) {
            (Ok(0), _) => {}
            (Ok(n), Some(to)) => self.commit(to, n, peer, now),
            (Ok(_), None) => core.stats.drop(DropReason::NoEndpoint),
            (Err(WireGuardError::ConnectionExpired), _) => {}
            (Err(e), _) => core.stats.drop(DropReason::of(&e)),
        }
    }

    /// Seals `pkt` for `peer`, or holds it in `n` while a handshake settles
    /// ([`Noise::must_hold`]) or while there is no session (`session`: whether boringtun
    /// has a current one, read by the caller once per lock hold), in which case the handshake
    /// initiation is what gets sent; packets held earlier go first. An empty `pkt` (a
    /// keepalive) is never held.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &mut self,
        n: &mut Noise,
        pkt: &[u8],
        session: bool,
        to: Option<SocketAddr>,
        peer: &Peer,
        core: &Core,
        now: u64,
    ) {
        let hold = n.must_hold(now, peer.read(|t| &t.last_init));
        if !hold && !n.held.is_empty() {
            self.release_held(n, to, peer, core, now);
        }
        if hold || !n.held.is_empty() {
            if !pkt.is_empty() {
                n.hold(pkt, now, &core.stats);
            }
            return;
        }
        let Some(t) = n.tunn.as_deref_mut() else {
            core.stats.drop(DropReason::NoKey);
            return;
        };
        if !session && !pkt.is_empty() {
            // boringtun would queue the packet itself, where no budget sees it: it is held
            // here instead and boringtun only starts the handshake.
            let r = flatten(t.format_handshake_initiation(self.slot(), false));
            self.take(r, to, peer, core, now);
            n.hold(pkt, now, &core.stats);
            return;
        }
        let r = flatten(t.encapsulate(pkt, self.slot()));
        self.take(r, to, peer, core, now);
    }

    /// Seals the packets held in `n`, oldest first, as far as the outbox has room. Without a
    /// session they stay held and a handshake is started (if none is under way).
    fn release_held(
        &mut self,
        n: &mut Noise,
        to: Option<SocketAddr>,
        peer: &Peer,
        core: &Core,
        now: u64,
    ) {
        let Noise { tunn, held, .. } = n;
        let Some(t) = tunn.as_deref_mut() else {
            return;
        };
        if held.is_empty() {
            return;
        }
        if t.time_since_last_handshake().is_none() {
            if self.room() >= MIN_DST {
                let r = flatten(t.format_handshake_initiation(self.slot(), false));
                self.take(r, to, peer, core, now);
            }
            return;
        }
        while let Some(p) = held.front() {
            if self.room() < (p.len() + 32).max(MIN_DST) + MIN_DST {
                return;
            }
            let r = flatten(t.encapsulate(p, self.slot()));
            self.take(r, to, peer, core, now);
            held.pop_front();
        }
    }

    /// Once `n` has a confirmed session: sends what boringtun queued during the handshake,
    /// then what was held here.
    fn release(
        &mut self,
        n: &mut Noise,
        dec: &mut [u8],
        to: SocketAddr,
        peer: &Peer,
        core: &Core,
        now: u64,
    ) {
        if !n.confirmed() {
            return;
        }
        if let Some(t) = n.tunn.as_deref_mut() {
            while self.room() >= MAX_PACKET {
                match t.decapsulate(None, &[], dec) {
                    TunnResult::WriteToNetwork(p) => self.push_copy(to, p, Some(peer), core, now),
                    _ => break,
                }
            }
        }
        self.release_held(n, Some(to), peer, core, now);
    }

    /// Runs boringtun's timers for `peer` and keeps what they want sent.
    fn run_timers(
        &mut self,
        t: &mut Tunn,
        to: Option<SocketAddr>,
        peer: &Peer,
        core: &Core,
        now: u64,
    ) {
        let r = flatten(t.update_timers(self.slot()));
        self.take(r, to, peer, core, now);
    }

    /// Sends what fills GSO trains, keeping a last train that could take more datagrams for
    /// the next flush (its datagrams stay where they are; the outbox empties at the next
    /// [`flush`](Self::flush)). Returns how many datagrams were sent (or dropped as unsendable).
    /// Without sockets, the same as `flush`.
    pub fn flush_filled(&mut self, core: &Core, sockets: Option<&Sockets>) -> usize {
        let Some(s) = sockets else {
            let n = self.list.len();
            self.flush(core, None);
            return n;
        };
        let sent = s.send_filled(
            &mut self.scratch,
            &self.arena[..self.cursor],
            &self.list,
            &core.stats,
            true,
        );
        if sent == self.list.len() {
            self.list.clear();
            self.cursor = 0;
        } else {
            self.list.drain(..sent);
        }
        sent
    }

    /// Sends everything (if there are sockets) and empties the outbox.
    pub fn flush(&mut self, core: &Core, sockets: Option<&Sockets>) {
        if let Some(s) = sockets {
            if !self.list.is_empty() {
                s.send_all(
                    &mut self.scratch,
                    &self.arena[..self.cursor],
                    &self.list,
                    &core.stats,
                );
            }
        }
        self.list.clear();
        self.cursor = 0;
    }
}

/// A network-bound result as the length written at the start of `dst`.
fn flatten(r: TunnResult<'_>) -> Result<usize, WireGuardError> {
    match r {
        TunnResult::WriteToNetwork(p) => Ok(p.len()),
        TunnResult::Err(e) => Err(e),
        _ => Ok(0),
    }
}

/// The TUN → UDP half: one per TUN queue.
pub struct TxCtx {
    vnet: bool,
    /// Sealed datagrams waiting to be sent.
    pub outbox: Outbox,
}

impl std::fmt::Debug for TxCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxCtx")
            .field("outbox", &self.outbox)
            .finish()
    }
}

impl TxCtx {
    /// A context for a TUN with (`vnet`) or without virtio-net headers.
    pub fn new(vnet: bool) -> Self {
        TxCtx {
            vnet,
            outbox: Outbox::new(ARENA),
        }
    }

    /// Processes one TUN read: segments it (in place: `frame` is used up), finds the peer,
    /// seals every segment into the outbox (flushing to `sockets` when it fills).
    pub fn handle_tun_read(
        &mut self,
        core: &Core,
        st: &State,
        frame: &mut [u8],
        sockets: Option<&Sockets>,
    ) {
        let TxCtx { vnet, outbox } = self;
        let ip_start = if *vnet { VNET_HDR_LEN } else { 0 };
        // Every segment goes where the read's first one goes.
        let dst = frame.get(ip_start..).and_then(Tunn::dst_address);
        let mut segments = if *vnet {
            match InPlaceSegments::from_frame(frame) {
                Ok(s) => Segments::Gso(s),
                Err(err) => {
                    tracing::trace!(%err, "segmentation failed");
                    core.stats.drop(DropReason::Segmentation);
                    return;
                }
            }
        } else {
            Segments::One(Some(frame))
        };
        let n = segments.count();
        let Some(dst) = dst else {
            core.stats.drop_n(DropReason::BadTunPacket, n as u64);
            return;
        };
        let Some(peer) = st.route(dst) else {
            core.stats.drop_n(DropReason::NoRoute, n as u64);
            return;
        };
        let Some(to) = peer.endpoint() else {
            core.stats.drop_n(DropReason::NoEndpoint, n as u64);
            return;
        };
        let woke = core.activity(peer);
        let now = core.clock.now();
        let per_segment = (segments.max_len() + 32).max(MIN_DST);
        // The noise state is locked for a few segments at a time (the I/O thread needs
        // it too), never across a send.
        let mut left = n;
        let mut first = true;
        while left > 0 {
            let k = left.min(SEAL_CHUNK);
            left -= k;
            if outbox.room() < k * per_segment + MIN_DST {
                outbox.flush(core, sockets);
            }
            let mut noise = lock(&peer.tunn);
            let Some(t) = peer.tunn_in(&mut noise, st.key.as_ref()) else {
                core.stats.drop_n(DropReason::NoKey, n as u64);
                return;
            };
            if woke && first {
                outbox.run_timers(t, Some(to), peer, core, now);
            }
            first = false;
            let session = t.time_since_last_handshake().is_some();
            for _ in 0..k {
                if let Some(pkt) = segments.next_segment() {
                    outbox.seal(&mut noise, pkt, session, Some(to), peer, core, now);
                }
            }
        }
    }
}

/// The packets of one TUN read.
enum Segments<'a> {
    /// A read with a virtio-net header, segmented in place.
    Gso(InPlaceSegments<'a>),
    /// A plain TUN's read: one packet.
    One(Option<&'a mut [u8]>),
}

impl Segments<'_> {
    fn count(&self) -> usize {
        match self {
            Segments::Gso(s) => s.count(),
            Segments::One(p) => usize::from(p.is_some()),
        }
    }

    fn max_len(&self) -> usize {
        match self {
            Segments::Gso(s) => s.max_len(),
            Segments::One(p) => p.as_ref().map_or(0, |p| p.len()),
        }
    }

    fn next_segment(&mut self) -> Option<&[u8]> {
        match self {
            Segments::Gso(s) => s.next_segment(),
            Segments::One(p) => p.take().map(|p| &*p),
        }
    }
}

/// One timer tick of `peer`: boringtun's timers, our persistent keepalive, then a new
/// deadline if anything is still pending (else the peer goes idle and costs nothing).
pub fn tick(core: &Core, st: &State, peer: &Peer, outbox: &mut Outbox) {
    // Cleared first: traffic from here on re-arms the peer itself.
    peer.armed.store(false, Ordering::SeqCst);
    let now = core.clock.now();
    let to = peer.endpoint();
    let ka = u64::from(peer.keepalive.load(Ordering::Relaxed));
    let mut has_session = false;
    let holding;
    {
        let mut noise = lock(&peer.tunn);
        if let Some(t) = noise.tunn.as_deref_mut() {
            outbox.run_timers(t, to, peer, core, now);
            has_session = t.time_since_last_handshake().is_some();
        }
        if ka > 0 && to.is_some() {
            let last = peer.read(|t| &t.last_tx);
            if (last == 0 || now.saturating_sub(last) >= ka * 1_000_000_000)
                && peer.tunn_in(&mut noise, st.key.as_ref()).is_some()
            {
                outbox.seal(&mut noise, &[], has_session, to, peer, core, now);
            }
        }
        // Packets held past the hold are sealed (or, without a session, the handshake is
        // retried) even when no new traffic comes to push them; after `HELD_MAX_NS` without
        // a session they are dropped.
        if !noise.held.is_empty() && !noise.must_hold(now, peer.read(|t| &t.last_init)) {
            outbox.release_held(&mut noise, to, peer, core, now);
        }
        let expired = noise.expire_held(now);
        if expired > 0 {
            core.stats.drop_n(DropReason::HeldExpired, expired as u64);
        }
        holding = !noise.held.is_empty();
    }
    let last_traffic = peer.read(|t| &t.last_tx).max(peer.read(|t| &t.last_rx));
    let init = peer.read(|t| &t.last_init);
    let pending = has_session
        || holding
        || (last_traffic != 0 && now.saturating_sub(last_traffic) < ACTIVE_NS)
        || (init != 0 && now.saturating_sub(init) < INIT_PENDING_NS)
        || (ka > 0 && to.is_some() && st.key.is_some());
    if pending && !peer.armed.swap(true, Ordering::SeqCst) {
        core.schedule(peer.index, Instant::now() + TICK);
    }
}
