//! The device's state: its key, sockets, the peer table (by public key, by receiver index,
//! by allowed IP) and the per-peer timer deadlines; applying UAPI `set` requests to it and
//! reporting it for `get`. No packet processing (that is `datapath`).
//!
//! Locking: [`Core::state`] is read-locked by the datapath for one batch at a time and
//! write-locked by a UAPI `set`, so configuration changes never race packet processing.
//! Inside, each peer's noise state ([`Peer::tunn`]) has its own mutex, held for one packet
//! at a time, which arbitrates between the datapath threads. Order: `state` → `tunn` →
//! anything else (`conf`, which holds the endpoint, the timer queue).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use defguard_boringtun::noise::rate_limiter::RateLimiter;
use defguard_boringtun::noise::Tunn;
use defguard_boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use rand_core::{OsRng, RngCore};

use crate::allowed_ips::AllowedIps;
use crate::budget::{Budgets, HandshakeBudget, HeldBudget, HeldQueue};
use crate::peer_table::{IndexTable, PeerTable, SlotTable};
use crate::stats::{DropReason, Stats};
use crate::timers::TimerQueue;
use crate::uapi::{DeviceInfo, Key, PeerInfo, PeerUpdate, SetRequest};
use crate::udp::{Sockets, UdpError};

/// Handshake messages per second the device answers before it demands cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// How often a peer with something pending is ticked.
pub const TICK: Duration = Duration::from_secs(1);
/// Packets held for one peer while its handshake settles, at most (as many as boringtun
/// queues while it waits for a handshake).
pub const MAX_HELD: usize = 256;
/// How long packets are held for a handshake to settle: WireGuard's REKEY_TIMEOUT, after
/// which a lost handshake message is retried anyway.
pub const HOLD_NS: u64 = 5_000_000_000;
/// How long a packet is held at most while the peer has no session: WireGuard's
/// REKEY_ATTEMPT_TIME, after which a handshake is given up.
pub const HELD_MAX_NS: u64 = 90_000_000_000;

/// Locks a mutex, recovering the data if another thread panicked while holding it (every
/// critical section leaves the data consistent).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Errors of applying a `set`.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Rebinding to a new listen port failed.
    #[error("rebinding to listen port {port}")]
    Rebind {
        /// The requested port.
        port: u16,
        /// The underlying error.
        #[source]
        source: UdpError,
    },
    /// Setting the fwmark failed.
    #[error("setting fwmark")]
    Mark(#[source] UdpError),
}

impl DeviceError {
    /// The errno to report over the UAPI.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Rebind { source, .. } | DeviceError::Mark(source) => source.errno(),
        }
    }
}

/// The device's own key pair. Wiped on drop: `secret` by x25519-dalek's own `zeroize`,
/// `raw` by this type's `Drop`.
pub struct DeviceKey {
    /// The private key.
    pub secret: StaticSecret,
    /// Its public key.
    pub public: PublicKey,
    /// The raw private key, as the UAPI reports it.
    pub raw: Key,
}

impl Drop for DeviceKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.raw.0);
    }
}

impl zeroize::ZeroizeOnDrop for DeviceKey {}

/// A monotonic clock in nanoseconds since the device started; 0 means "never".
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// Starts the clock.
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    /// Nanoseconds since start, plus one (so 0 stays free for "never").
    pub fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// The `Instant` of a clock reading.
    pub fn instant(&self, t: u64) -> Instant {
        self.0 + Duration::from_nanos(t.saturating_sub(1))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A peer's configuration (the UAPI changes it, and the datapath the endpoint when the peer
/// roams), under one mutex.
#[derive(Debug, Default)]
pub struct PeerConf {
    /// The preshared key, boxed: meshd sets none, and an absent key then costs 8 bytes per
    /// peer instead of 33.
    pub psk: Option<Box<Key>>,
    /// The allowed IPs, in the order they were added (a boxed slice of exactly their number:
    /// they change only with the configuration).
    pub allowed_ips: Box<[IpNet]>,
    /// The current endpoint (configured or learned from authenticated packets).
    pub endpoint: Option<SocketAddr>,
}

/// One peer. Small until it carries traffic: the noise state (~15 KiB) is created on first
/// use and kept while the peer lives.
pub struct Peer {
    /// The peer's public key.
    pub key: Key,
    /// Our 24-bit receiver index prefix for this peer (boringtun adds 8 session bits).
    pub index: u32,
    /// Its slot in [`State::slots`], which the allowed-IP maps hold.
    pub slot: u32,
    /// boringtun's noise state (created lazily) and the packets held back from it.
    pub tunn: Mutex<Noise>,
    /// The configuration and the current endpoint.
    pub conf: Mutex<PeerConf>,
    /// Persistent keepalive interval in seconds (0 = off).
    pub keepalive: AtomicU32,
    /// Whether the peer has a deadline in the timer queue.
    pub armed: AtomicBool,
    /// The traffic counters, created by the first datagram sent or received (16 bytes per
    /// peer until then, not 48): read with [`Peer::read`], written through [`Peer::traffic`].
    traffic: OnceLock<Box<Traffic>>,
}

/// A peer's traffic counters and times.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes received (authenticated datagrams, all message types).
    pub rx_bytes: AtomicU64,
    /// Bytes sent (all message types).
    pub tx_bytes: AtomicU64,
    /// UNIX nanoseconds of the last completed handshake; 0 = never.
    pub last_handshake: AtomicU64,
    /// Clock reading of the last datagram sent; 0 = never.
    pub last_tx: AtomicU64,
    /// Clock reading of the last authenticated datagram received; 0 = never.
    pub last_rx: AtomicU64,
    /// Clock reading of the last handshake initiation sent; 0 = never.
    pub last_init: AtomicU64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("key", &self.key)
            .field("index", &self.index)
            .finish()
    }
}

impl Peer {
    fn new(key: Key, index: u32, slot: u32, held: Arc<HeldBudget>) -> Peer {
        Peer {
            key,
            index,
            slot,
            tunn: Mutex::new(Noise::new(held)),
            conf: Mutex::new(PeerConf::default()),
            keepalive: AtomicU32::new(0),
            armed: AtomicBool::new(false),
            traffic: OnceLock::new(),
        }
    }

    /// The traffic counters, created (all zero) if the peer had no traffic yet.
    pub fn traffic(&self) -> &Traffic {
        self.traffic.get_or_init(Box::default)
    }

    /// One traffic counter's value (0 if the peer had no traffic yet), e.g.
    /// `peer.read(|t| &t.rx_bytes)`.
    pub fn read(&self, counter: impl Fn(&Traffic) -> &AtomicU64) -> u64 {
        self.traffic
            .get()
            .map_or(0, |t| counter(t).load(Ordering::Relaxed))
    }

    /// The current endpoint.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        lock(&self.conf).endpoint
    }

    /// Records a completed handshake now.
    pub fn handshake_done(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(1);
        self.traffic()
            .last_handshake
            .store(now.max(1), Ordering::Relaxed);
    }

    /// The noise state in `noise`, created with the device key if absent (`None` without a
    /// device key).
    pub fn tunn_in<'a>(
        &self,
        noise: &'a mut Noise,
        key: Option<&DeviceKey>,
    ) -> Option<&'a mut Tunn> {
        let slot = &mut noise.tunn;
        if slot.is_none() {
            let key = key?;
            let psk = lock(&self.conf).psk.as_deref().map(|k| k.0);
            *slot = Some(Box::new(Tunn::new(
                key.secret.clone(),
                PublicKey::from(self.key.0),
                psk,
                None,
                self.index,
                None,
            )));
        }
        slot.as_deref_mut()
    }
}

/// A peer's noise state: boringtun's state machine, and the packets held back from it while
/// a handshake settles.
///
/// boringtun, given a packet while it has no session, starts a new handshake and forgets the
/// one it had pending; when both ends send at once (a pair moving onto a new key, a new
/// peer), each answers the other's initiation and then, with the next packet, replaces its
/// own, so the answers it gets never match and neither handshake completes while the traffic
/// lasts. And a session this end answered (as responder) can become the one boringtun sends
/// on before the initiator has it, so those packets cannot be opened. Both are avoided by
/// holding packets here until a session is confirmed (see [`Noise::must_hold`]), as
/// WireGuard's own implementations do.
///
/// Packets are never left in boringtun's own queue (it queues what it is given without a
/// session, out of sight of any budget): while there is no session they are held here, where
/// they count against the device's [`HeldBudget`], and boringtun is only asked for the
/// handshake initiation.
pub struct Noise {
    /// boringtun's state, created lazily.
    pub tunn: Option<Box<Tunn>>,
    /// Clock reading since which a session this end answered waits for the initiator's
    /// first message on it while no older session exists; 0 = none.
    pub unconfirmed_since: u64,
    /// Packets from the TUN waiting for a usable session, oldest first.
    pub held: HeldQueue,
}

impl Noise {
    /// No noise state and nothing held; held packets will count against `budget`.
    pub fn new(budget: Arc<HeldBudget>) -> Self {
        Noise {
            tunn: None,
            unconfirmed_since: 0,
            held: HeldQueue::new(budget),
        }
    }

    /// Forgets the noise state and everything held (giving its bytes back to the budget).
    pub fn reset(&mut self) {
        *self = Noise::new(self.held.budget().clone());
    }

    /// Whether a session is established that the other end can open (boringtun has a
    /// current session, and it is not one this end answered and awaits confirmation of).
    pub fn confirmed(&self) -> bool {
        self.unconfirmed_since == 0
            && self
                .tunn
                .as_ref()
                .is_some_and(|t| t.time_since_last_handshake().is_some())
    }

    /// Whether a packet must be held instead of given to boringtun at clock reading `now`:
    /// a session this end answered is not confirmed yet, or there is no session and this end
    /// sent an initiation (at `last_init`) less than [`HOLD_NS`] ago. Past that, packets go
    /// to boringtun again, which queues them and retries the handshake.
    pub fn must_hold(&mut self, now: u64, last_init: u64) -> bool {
        if self.unconfirmed_since != 0 {
            if now.saturating_sub(self.unconfirmed_since) < HOLD_NS {
                return true;
            }
            self.unconfirmed_since = 0;
        }
        // The cheap test first: this runs for every packet sent.
        last_init != 0
            && now.saturating_sub(last_init) < HOLD_NS
            && self
                .tunn
                .as_ref()
                .is_none_or(|t| t.time_since_last_handshake().is_none())
    }

    /// Holds `pkt` at clock reading `now` (at most [`MAX_HELD`] packets, and within the
    /// device-wide byte budget: this peer's oldest held packets are dropped to make room),
    /// counting what was dropped in `stats`.
    pub fn hold(&mut self, pkt: &[u8], now: u64, stats: &Stats) {
        let full = self.held.len() >= MAX_HELD;
        let r = self.held.push(pkt, now, MAX_HELD);
        if r.evicted > 0 {
            stats.drop_n(DropReason::HeldBudget, r.evicted as u64);
        }
        if !r.held {
            stats.drop(if full {
                DropReason::HeldOverflow
            } else {
                DropReason::HeldBudget
            });
        }
    }

    /// Drops the held packets if the oldest has waited [`HELD_MAX_NS`] at clock reading
    /// `now` without a session: the other end has not answered for as long as WireGuard
    /// keeps trying a handshake. Returns how many were dropped.
    pub fn expire_held(&mut self, now: u64) -> usize {
        match self.held.oldest_since() {
            Some(t) if now.saturating_sub(t) >= HELD_MAX_NS => self.held.clear(),
            _ => 0,
        }
    }
}

/// Everything a `set` changes.
pub struct State {
    /// The private key.
    pub key: Option<DeviceKey>,
    /// Checks MACs (and cookies under load) of handshake initiations before the expensive
    /// identification of their sender.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The bound sockets (`None` only in the fuzzing harness).
    pub sockets: Option<Arc<Sockets>>,
    /// The configured listen port (the bound one is `sockets.port()`).
    pub fwmark: u32,
    /// Peers by public key.
    pub peers: PeerTable,
    /// Peers by receiver index.
    pub by_index: IndexTable,
    /// Peers by slot.
    pub slots: SlotTable,
    /// Peers' slots by allowed IP.
    pub allowed: AllowedIps<u32>,
}

impl State {
    /// The peer whose allowed IPs hold `addr` (the longest match).
    pub fn route(&self, addr: IpAddr) -> Option<&Arc<Peer>> {
        self.slots.get(*self.allowed.lookup(addr)?)
    }

    /// The bound port (0 without sockets).
    pub fn listen_port(&self) -> u16 {
        self.sockets.as_ref().map_or(0, |s| s.port())
    }
}

/// The device's shared core: state, timers, counters.
pub struct Core {
    /// The state, see the module doc for the locking rules.
    pub state: RwLock<State>,
    /// Per-peer deadlines, by receiver index.
    pub timers: Mutex<TimerQueue<u32>>,
    /// Signalled when a deadline earlier than all others is added.
    pub timers_changed: Condvar,
    /// Drop counters.
    pub stats: Stats,
    /// The monotonic clock.
    pub clock: Clock,
    /// Called after the sockets were replaced (wakes the I/O thread).
    pub on_rebind: Box<dyn Fn() + Send + Sync>,
    /// The device-wide byte budget of held packets.
    pub held: Arc<HeldBudget>,
    /// Rate limits, per source address, the handshake initiations that passed the MAC and
    /// cookie checks.
    pub handshakes: HandshakeBudget,
}

impl Core {
    /// A core with the given sockets and no key or peers.
    pub fn new(sockets: Option<Arc<Sockets>>, on_rebind: Box<dyn Fn() + Send + Sync>) -> Core {
        Self::with_budgets(sockets, on_rebind, Budgets::default())
    }

    /// The same, with the given budgets against floods.
    pub fn with_budgets(
        sockets: Option<Arc<Sockets>>,
        on_rebind: Box<dyn Fn() + Send + Sync>,
        budgets: Budgets,
    ) -> Core {
        Core {
            state: RwLock::new(State {
                key: None,
                limiter: None,
                sockets,
                fwmark: 0,
                peers: PeerTable::new(),
                by_index: IndexTable::new(),
                slots: SlotTable::new(),
                allowed: AllowedIps::new(),
            }),
            timers: Mutex::new(TimerQueue::new()),
            timers_changed: Condvar::new(),
            stats: Stats::default(),
            clock: Clock::new(),
            on_rebind,
            held: Arc::new(HeldBudget::new(budgets.held_bytes)),
            handshakes: HandshakeBudget::new(budgets.handshakes_per_source, Instant::now()),
        }
    }

    /// Read-locks the state.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        read(&self.state)
    }

    /// Notes traffic for `peer`: arms its timer if it had none. Returns `true` if it was
    /// idle, in which case the caller refreshes boringtun's timers before using the noise
    /// state (they only advance when ticked).
    pub fn activity(&self, peer: &Peer) -> bool {
        if peer.armed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.schedule(peer.index, Instant::now() + TICK);
        true
    }

    /// Sets a deadline for the peer with receiver index `index` (keeps an earlier one).
    pub fn schedule(&self, index: u32, at: Instant) {
        if lock(&self.timers).schedule(index, at) {
            self.timers_changed.notify_one();
        }
    }

    /// Applies a parsed `set` request atomically with respect to the datapath.
    pub fn apply(&self, req: &SetRequest) -> Result<(), DeviceError> {
        let mut st = write(&self.state);
        if let Some(key) = &req.private_key {
            self.set_private_key(&mut st, key.as_ref());
        }
        if let Some(mark) = req.fwmark {
            if let Some(s) = &st.sockets {
                s.set_mark(mark).map_err(DeviceError::Mark)?;
            }
            st.fwmark = mark;
        }
        if let Some(port) = req.listen_port {
            let offloads = st.sockets.as_ref().map(|s| s.offloads());
            if let Some(offloads) = offloads.filter(|_| port == 0 || port != st.listen_port()) {
                let new = Sockets::bind(port, st.fwmark, offloads)
                    .map_err(|source| DeviceError::Rebind { port, source })?;
                tracing::info!(port = new.port(), "listening");
                st.sockets = Some(Arc::new(new));
                (self.on_rebind)();
            }
        }
        if req.replace_peers {
            let keys: Vec<Key> = st.peers.keys().copied().collect();
            for k in keys {
                self.remove_peer(&mut st, &k);
            }
        }
        // The tables grow once for all the new peers, not by doubling along the way.
        let new = req
            .peers
            .iter()
            .filter(|p| !p.remove && !p.update_only && st.peers.get(&p.public_key).is_none())
            .count();
        st.peers.reserve(new);
        st.by_index.reserve(new);
        st.slots.reserve(new);
        for p in &req.peers {
            self.apply_peer(&mut st, p);
        }
        Ok(())
    }

    fn set_private_key(&self, st: &mut State, key: Option<&Key>) {
        if st.key.as_ref().map(|k| &k.raw) == key {
            return;
        }
        match key {
            Some(raw) => {
                let secret = StaticSecret::from(raw.0);
                let public = PublicKey::from(&secret);
                st.limiter = Some(Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)));
                for peer in st.peers.values() {
                    let mut noise = lock(&peer.tunn);
                    if let Some(t) = noise.tunn.as_deref_mut() {
                        t.set_static_private(secret.clone(), public, None);
                    }
                    // Sessions are gone: nothing pending under the old key holds packets.
                    noise.unconfirmed_since = 0;
                    if let Some(t) = peer.traffic.get() {
                        t.last_init.store(0, Ordering::Relaxed);
                    }
                }
                st.key = Some(DeviceKey {
                    secret,
                    public,
                    raw: *raw,
                });
            }
            None => {
                st.key = None;
                st.limiter = None;
                for peer in st.peers.values() {
                    lock(&peer.tunn).reset();
                }
            }
        }
    }

    fn new_index(st: &State) -> u32 {
        loop {
            let i = OsRng.next_u32() & 0x00ff_ffff;
            if i != 0 && !st.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    fn remove_peer(&self, st: &mut State, key: &Key) {
        let Some(peer) = st.peers.remove(key) else {
            return;
        };
        st.by_index.remove(&peer.index);
        let nets = std::mem::take(&mut lock(&peer.conf).allowed_ips);
        for net in &nets {
            if st.allowed.get(net) == Some(&peer.slot) {
                st.allowed.remove(net);
            }
        }
        st.slots.remove(peer.slot);
        lock(&self.timers).cancel(&peer.index);
        // Drop the session now; in-flight batches holding the Arc find no noise state.
        lock(&peer.tunn).reset();
    }

    fn apply_peer(&self, st: &mut State, u: &PeerUpdate) {
        if u.remove {
            self.remove_peer(st, &u.public_key);
            return;
        }
        let peer = match st.peers.get(&u.public_key) {
            Some(p) => p.clone(),
            None if u.update_only => return,
            None => {
                let p = Arc::new(Peer::new(
                    u.public_key,
                    Self::new_index(st),
                    st.slots.vacant(),
                    self.held.clone(),
                ));
                st.peers.insert(p.clone());
                st.by_index.insert(p.clone());
                st.slots.insert(p.clone());
                p
            }
        };
        if let Some(psk) = &u.preshared_key {
            let changed = {
                let mut conf = lock(&peer.conf);
                let changed = conf.psk.as_deref() != psk.as_ref();
                conf.psk = psk.map(Box::new);
                changed
            };
            if changed {
                // boringtun takes the key only at creation: start over with it.
                lock(&peer.tunn).reset();
            }
        }
        if let Some(ep) = u.endpoint {
            lock(&peer.conf).endpoint = Some(ep);
        }
        if u.replace_allowed_ips {
            let nets = std::mem::take(&mut lock(&peer.conf).allowed_ips);
            for net in &nets {
                if st.allowed.get(net) == Some(&peer.slot) {
                    st.allowed.remove(net);
                }
            }
        }
        let mut added = Vec::new();
        for net in &u.allowed_ips {
            let prev = st.allowed.insert(net, peer.slot);
            match prev.and_then(|slot| st.slots.get(slot)) {
                Some(old) if Arc::ptr_eq(old, &peer) => {}
                Some(old) => {
                    // The prefix moves to this peer.
                    let mut conf = lock(&old.conf);
                    conf.allowed_ips = conf
                        .allowed_ips
                        .iter()
                        .filter(|n| *n != net)
                        .copied()
                        .collect();
                    drop(conf);
                    added.push(*net);
                }
                None => added.push(*net),
            }
        }
        if !added.is_empty() {
            let mut conf = lock(&peer.conf);
            conf.allowed_ips = conf.allowed_ips.iter().copied().chain(added).collect();
        }
        if let Some(ka) = u.persistent_keepalive {
            let old = peer.keepalive.swap(u32::from(ka), Ordering::Relaxed);
            if ka != 0 && old != u32::from(ka) && st.key.is_some() {
                // Like wireguard-go: a newly set keepalive goes out right away.
                peer.armed.store(true, Ordering::Release);
                lock(&self.timers).reschedule(peer.index, Instant::now());
                self.timers_changed.notify_one();
            }
        }
    }

    /// The device as `get` reports it.
    pub fn info(&self) -> DeviceInfo {
        let st = self.read();
        let peers = st
            .peers
            .values()
            .map(|p| {
                let conf = lock(&p.conf);
                let hs = p.read(|t| &t.last_handshake);
                PeerInfo {
                    public_key: p.key,
                    preshared_key: conf.psk.as_deref().copied(),
                    endpoint: conf.endpoint,
                    last_handshake: (hs != 0).then(|| UNIX_EPOCH + Duration::from_nanos(hs)),
                    rx_bytes: p.read(|t| &t.rx_bytes),
                    tx_bytes: p.read(|t| &t.tx_bytes),
                    persistent_keepalive: u16::try_from(p.keepalive.load(Ordering::Relaxed))
                        .unwrap_or(u16::MAX),
                    allowed_ips: conf.allowed_ips.to_vec(),
                }
            })
            .collect();
        DeviceInfo {
            private_key: st.key.as_ref().map(|k| k.raw),
            listen_port: st.listen_port(),
            fwmark: st.fwmark,
            peers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::{parse_request, Request};

    fn set(core: &Core, text: &str) {
        let Ok(Request::Set(req)) = parse_request(text.lines()) else {
            panic!("parse {text}");
        };
        core.apply(&req).expect("apply");
    }

    fn k(b: u8) -> Key {
        Key([b; 32])
    }

    #[test]
    fn the_process_is_not_dumpable_after_forbidding_core_dumps() {
        crate::forbid_core_dumps().expect("prctl");
        assert_eq!(nix::sys::prctl::get_dumpable(), Ok(false));
    }

    #[test]
    fn the_device_key_is_wiped_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        // boringtun's x25519 secrets (x25519-dalek's `zeroize` is on) and the raw key both.
        wiped_on_drop::<StaticSecret>();
        wiped_on_drop::<DeviceKey>();
        let secret = StaticSecret::from([7; 32]);
        let mut key = std::mem::ManuallyDrop::new(DeviceKey {
            public: PublicKey::from(&secret),
            secret,
            raw: k(7),
        });
        #[allow(unsafe_code)]
        // SAFETY: dropped exactly once, here. `ManuallyDrop` never frees the memory and the
        // raw key is a plain byte array, so reading it after the drop reads valid bytes.
        unsafe {
            std::mem::ManuallyDrop::drop(&mut key)
        };
        assert_eq!(key.raw.0, [0; 32]);
    }

    fn owner(core: &Core, ip: &str) -> Option<Key> {
        let st = core.read();
        st.route(ip.parse().expect("ip")).map(|p| p.key)
    }

    #[test]
    fn peers_are_modified_in_place_and_prefixes_move() {
        let core = Core::new(None, Box::new(|| {}));
        set(
            &core,
            &format!(
                "set=1\nprivate_key={}\npublic_key={}\nendpoint=192.0.2.1:1\nallowed_ip=10.0.1.0/24\n\
                 public_key={}\nallowed_ip=10.0.2.0/24\n",
                k(9).to_hex(),
                k(1).to_hex(),
                k(2).to_hex()
            ),
        );
        let idx1 = core.read().peers[&k(1)].index;
        assert_eq!(owner(&core, "10.0.1.5"), Some(k(1)));
        // Modify peer 1 in place: endpoint, keepalive, allowed IPs (taking one from 2).
        set(
            &core,
            &format!(
                "set=1\npublic_key={}\nendpoint=[fd00::1]:2\npersistent_keepalive_interval=25\n\
                 replace_allowed_ips=true\nallowed_ip=10.0.3.0/24\nallowed_ip=10.0.2.0/24\n",
                k(1).to_hex()
            ),
        );
        {
            let st = core.read();
            let p1 = &st.peers[&k(1)];
            assert_eq!(p1.index, idx1, "same peer object, not re-created");
            assert_eq!(p1.endpoint(), Some("[fd00::1]:2".parse().expect("ep")));
            assert_eq!(p1.keepalive.load(Ordering::Relaxed), 25);
            assert!(lock(&st.peers[&k(2)].conf).allowed_ips.is_empty());
        }
        assert_eq!(owner(&core, "10.0.1.5"), None);
        assert_eq!(owner(&core, "10.0.2.5"), Some(k(1)));
        assert_eq!(owner(&core, "10.0.3.5"), Some(k(1)));
        // update_only on an unknown peer does nothing; remove cleans every table.
        set(
            &core,
            &format!(
                "set=1\npublic_key={}\nupdate_only=true\nallowed_ip=10.9.0.0/16\npublic_key={}\nremove=true\n",
                k(3).to_hex(),
                k(1).to_hex()
            ),
        );
        let st = core.read();
        assert_eq!(st.peers.len(), 1);
        assert_eq!(st.by_index.len(), 1);
        assert!(st.allowed.is_empty());
        drop(st);
        let info = core.info();
        assert_eq!(info.private_key, Some(k(9)));
        assert_eq!(info.peers.len(), 1);
        assert_eq!(info.peers[0].public_key, k(2));
        // replace_peers empties the table.
        set(&core, "set=1\nreplace_peers=true\n");
        assert!(core.info().peers.is_empty());
        assert!(lock(&core.timers).is_empty());
    }
}
