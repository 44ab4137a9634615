//! What the datagrams of one received message share: with UDP GRO a message is up to 64
//! datagrams from one sender, nearly always to the same peer and session, all opened under
//! one read of the device state. The peer found for a receiver index, the source addresses
//! found among that peer's allowed IPs, and the peer's receive accounting (bytes, last
//! receive, endpoint) are kept here for the message instead of being redone per datagram.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::device::{lock, Peer, State};

/// Lookups and accounting for the datagrams of one message from `from`, read at clock `now`.
/// Lives no longer than the state read it borrows from, so nothing cached here can go stale.
pub(super) struct MessageCache<'a> {
    from: SocketAddr,
    now: u64,
    /// The peer of the last receiver index looked up (index prefix, peer).
    index: Option<(u32, &'a Arc<Peer>)>,
    /// The last source address found among that peer's allowed IPs.
    source: Option<(IpAddr, &'a Arc<Peer>)>,
    /// Authenticated bytes from one peer not yet added to its counters.
    pending: Option<Received<'a>>,
}

/// Authenticated datagrams from one peer, to be accounted.
struct Received<'a> {
    peer: &'a Arc<Peer>,
    bytes: u64,
    /// Whether one of them makes `from` the peer's endpoint.
    roams: bool,
}

impl<'a> MessageCache<'a> {
    /// A cache for a message from `from` received at clock reading `now`.
    pub(super) fn new(from: SocketAddr, now: u64) -> Self {
        MessageCache {
            from,
            now,
            index: None,
            source: None,
            pending: None,
        }
    }

    /// The sender.
    pub(super) fn from(&self) -> SocketAddr {
        self.from
    }

    /// The clock reading of the message.
    pub(super) fn now(&self) -> u64 {
        self.now
    }

    /// The peer whose receiver index prefix is `index`.
    pub(super) fn peer_of_index(&mut self, st: &'a State, index: u32) -> Option<&'a Arc<Peer>> {
        if let Some((i, peer)) = self.index {
            if i == index {
                return Some(peer);
            }
        }
        let peer = st.by_index.get(&index)?;
        self.index = Some((index, peer));
        Some(peer)
    }

    /// Whether `src` is one of `peer`'s allowed IPs.
    pub(super) fn source_allowed(&mut self, st: &'a State, peer: &Arc<Peer>, src: IpAddr) -> bool {
        if let Some((s, owner)) = self.source {
            if s == src && Arc::ptr_eq(owner, peer) {
                return true;
            }
        }
        match st.route(src) {
            Some(owner) if Arc::ptr_eq(owner, peer) => {
                self.source = Some((src, owner));
                true
            }
            _ => false,
        }
    }

    /// Counts `bytes` authenticated from `peer`; `roams` if the datagram makes the sender the
    /// peer's endpoint. Accounted at once when `now` (a handshake, which the following
    /// datagrams may depend on), else with the next peer's or at [`settle`](Self::settle).
    pub(super) fn received(&mut self, peer: &'a Arc<Peer>, bytes: usize, roams: bool, now: bool) {
        match &mut self.pending {
            Some(p) if Arc::ptr_eq(p.peer, peer) => {
                p.bytes += bytes as u64;
                p.roams |= roams;
            }
            _ => {
                self.settle();
                self.pending = Some(Received {
                    peer,
                    bytes: bytes as u64,
                    roams,
                });
            }
        }
        if now {
            self.settle();
        }
    }

    /// Adds what was received to the peer's counters and moves its endpoint to the sender
    /// if that is where it now is.
    pub(super) fn settle(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let traffic = p.peer.traffic();
        traffic.rx_bytes.fetch_add(p.bytes, Ordering::Relaxed);
        traffic.last_rx.store(self.now, Ordering::Relaxed);
        if p.roams {
            let mut conf = lock(&p.peer.conf);
            if conf.endpoint != Some(self.from) {
                conf.endpoint = Some(self.from);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::net::SocketAddr;

    use defguard_boringtun::noise::{Tunn, TunnResult};

    use crate::fuzzing::device_with_session;
    use crate::stats::DropReason;

    /// An IPv4/UDP packet from `src` to 10.9.0.1 with `len` bytes of payload (no checksum).
    fn packet(src: [u8; 4], len: usize) -> Vec<u8> {
        let total = (28 + len) as u16;
        let [t0, t1] = total.to_be_bytes();
        let [u0, u1] = (8 + len as u16).to_be_bytes();
        let mut p = vec![
            0x45, 0, t0, t1, 0, 0, 0x40, 0, 64, 17, 0, 0, src[0], src[1], src[2], src[3], 10, 9, 0,
            1, 0x30, 0x39, 0x30, 0x3a, u0, u1, 0, 0,
        ];
        p.resize(28 + len, 0xab);
        p
    }

    /// `remote`'s datagrams for `packets`, back to back as UDP GRO delivers them, and
    /// their size.
    fn message(remote: &mut Tunn, packets: &[Vec<u8>]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut size = 0;
        let mut buf = vec![0u8; 2048];
        for p in packets {
            let TunnResult::WriteToNetwork(d) = remote.encapsulate(p, &mut buf) else {
                panic!("no session");
            };
            size = d.len();
            out.extend_from_slice(d);
        }
        (out, size)
    }

    #[test]
    fn a_message_is_opened_whole_and_accounted_once_per_peer() {
        let (core, mut rx, mut remote) = device_with_session();
        let st = core.read();
        let peer = st.peers.values().next().unwrap().clone();
        let rx_before = peer.read(|t| &t.rx_bytes);
        // The third packet's source is not among the peer's allowed IPs: it alone is dropped,
        // although the packets before it (same peer) had allowed sources.
        let packets = [
            packet([10, 1, 0, 1], 100),
            packet([10, 1, 0, 1], 100),
            packet([192, 168, 0, 1], 100),
            packet([10, 1, 0, 2], 100),
        ];
        let (data, size) = message(&mut remote, &packets);
        let roamed = SocketAddr::from(([192, 0, 2, 77], 4444));
        rx.handle_message(&core, &st, roamed, &data, Some(size));
        drop(st);
        rx.flush(&core, None, None);
        assert_eq!(rx.delivered, 3);
        assert_eq!(core.stats.get(DropReason::SourceNotAllowed), 1);
        // Every authenticated byte counts, the dropped packet's too (it was authenticated).
        assert_eq!(peer.read(|t| &t.rx_bytes) - rx_before, data.len() as u64);
        assert_eq!(
            peer.endpoint(),
            Some(roamed),
            "the peer moved to the sender"
        );
        assert!(peer.read(|t| &t.last_rx) > 0);
    }

    #[test]
    fn a_forged_message_moves_nothing() {
        let (core, mut rx, mut remote) = device_with_session();
        let st = core.read();
        let peer = st.peers.values().next().unwrap().clone();
        let endpoint = peer.endpoint();
        let rx_before = peer.read(|t| &t.rx_bytes);
        let (mut data, size) = message(&mut remote, &vec![packet([10, 1, 0, 1], 100); 3]);
        // Every datagram's tag broken.
        for d in data.chunks_mut(size) {
            let last = d.len() - 1;
            d[last] ^= 1;
        }
        let attacker = SocketAddr::from(([198, 51, 100, 1], 5555));
        rx.handle_message(&core, &st, attacker, &data, Some(size));
        drop(st);
        rx.flush(&core, None, None);
        assert_eq!(rx.delivered, 0);
        assert_eq!(peer.read(|t| &t.rx_bytes), rx_before);
        assert_eq!(peer.endpoint(), endpoint, "no roaming on forged datagrams");
    }
}
