//! The device's budgets against floods, free of I/O (the caller passes the time):
//!
//! - [`HandshakeBudget`]: handshake initiations that passed the MAC and cookie checks, per
//!   source address. While the device is under load (more initiations a second than it
//!   answers without cookies) each source address gets a token bucket, so one address that
//!   proved it can receive cookie replies still cannot take the device's handshake work
//!   (an X25519 and more per initiation) for itself. The table of sources is bounded: idle
//!   sources are forgotten first, then the one seen longest ago.
//! - [`HeldBudget`] and [`HeldQueue`]: the bytes of packets held while a peer has no usable
//!   session, counted device-wide against one limit on top of the per-peer packet cap, so
//!   traffic sprayed at many unreachable peers cannot grow the process past its memory
//!   limit. A peer over the limit drops its own oldest held packets first.
//!
//! Must not: do per-packet work proportional to the number of peers or sources (the source
//! table is only scanned when it is full, and then emptied of idle sources in one pass).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::device::lock;

/// Cookie-valid handshake initiations one source address may send per second while the
/// device is under load (the rate the Linux and Go implementations allow).
pub const DEFAULT_HANDSHAKES_PER_SOURCE: u32 = 20;
/// Initiations one source may send at once before its rate applies.
pub const HANDSHAKE_BURST: u32 = 5;
/// Source addresses tracked at most; beyond that, idle ones and then the stalest are dropped.
pub const MAX_SOURCES: usize = 4096;
/// Initiations a second (after the cookie check) above which the device is under load and
/// the per-source budget applies; the same rate as the device's cookie threshold.
pub const LOAD_THRESHOLD: u32 = 100;

/// The container's memory limit `meshd-wg` is deployed with (deploy/: 128Mi).
pub const CONTAINER_MEMORY_LIMIT: usize = 128 << 20;
/// Bytes of held packets the device keeps at most unless told otherwise: an eighth of the
/// container's memory limit, which leaves the rest for the peers' noise states (~15 KiB
/// each, 75 MiB at 5,000 peers), the I/O buffers and the allocator.
pub const DEFAULT_HELD_BYTES: usize = CONTAINER_MEMORY_LIMIT / 8;
/// What one held packet costs beyond its bytes: the queue slot, the allocation's header and
/// its rounding.
pub const HELD_OVERHEAD: usize = 64;

/// The budgets a device runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Cookie-valid initiations per second per source address under load (at least 1).
    pub handshakes_per_source: u32,
    /// Bytes of held packets, device-wide.
    pub held_bytes: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            handshakes_per_source: DEFAULT_HANDSHAKES_PER_SOURCE,
            held_bytes: DEFAULT_HELD_BYTES,
        }
    }
}

/// What one initiation costs in a bucket, in units of which a bucket earns `rate` a
/// nanosecond.
const INITIATION_COST: u64 = 1_000_000_000;

/// One source's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in units of one initiation times the rate (integer arithmetic).
    tokens: u64,
    /// When the bucket was last refilled.
    at: Instant,
}

/// What [`HandshakeBudget::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The initiation may be processed.
    Admitted,
    /// Its source used up its budget: drop it.
    SourceOverBudget,
}

#[derive(Debug)]
struct SourceTable {
    /// Start of the current one-second load window and the initiations seen in it.
    window: Instant,
    seen: u32,
    /// The device counts as under load until then: a second after a window last went over
    /// [`LOAD_THRESHOLD`] (so a new window does not open the gate to a flood again).
    loaded_until: Option<Instant>,
    buckets: HashMap<IpAddr, Bucket>,
}

/// Per-source budget of cookie-valid handshake initiations (see the module doc).
#[derive(Debug)]
pub struct HandshakeBudget {
    /// Initiations per second per source.
    rate: u64,
    /// Tokens a full bucket holds.
    capacity: u64,
    /// Sources tracked at most.
    max_sources: usize,
    table: Mutex<SourceTable>,
}

impl HandshakeBudget {
    /// A budget of `per_second` initiations a second per source (at least 1), bursts of
    /// [`HANDSHAKE_BURST`], for at most [`MAX_SOURCES`] sources.
    pub fn new(per_second: u32, now: Instant) -> Self {
        Self::with_sources(per_second, MAX_SOURCES, now)
    }

    /// The same with a table of at most `max_sources` sources (at least 1).
    pub fn with_sources(per_second: u32, max_sources: usize, now: Instant) -> Self {
        let rate = u64::from(per_second.max(1));
        HandshakeBudget {
            rate,
            // Integer tokens: one initiation costs 10^9 units and the bucket earns `rate`
            // units a nanosecond, i.e. `rate` initiations a second.
            capacity: u64::from(HANDSHAKE_BURST) * INITIATION_COST,
            max_sources: max_sources.max(1),
            table: Mutex::new(SourceTable {
                window: now,
                seen: 0,
                loaded_until: None,
                buckets: HashMap::new(),
            }),
        }
    }

    /// Whether an initiation from `source` at `now` would be refused whatever it carries:
    /// the device is under load and the source's budget is used up. Checked before the MACs
    /// are, so a flooding source costs no MAC computations. Consumes nothing, so packets
    /// with spoofed source addresses cannot use up anybody's budget: only initiations that
    /// passed the cookie check, which needs replies received at the address, do ([`admit`]).
    ///
    /// [`admit`]: HandshakeBudget::admit
    pub fn exhausted(&self, source: IpAddr, now: Instant) -> bool {
        let t = lock(&self.table);
        if t.loaded_until.is_none_or(|until| now >= until) {
            return false;
        }
        t.buckets.get(&source).is_some_and(|b| {
            let ns = now.saturating_duration_since(b.at).as_nanos();
            let earned =
                u64::try_from(ns.saturating_mul(u128::from(self.rate))).unwrap_or(u64::MAX);
            b.tokens.saturating_add(earned) < INITIATION_COST
        })
    }

    /// Decides on an initiation from `source` that passed the MAC and cookie checks at `now`.
    /// Outside of load every initiation is admitted (and counted towards the load); under
    /// load the source's bucket must have a token.
    pub fn admit(&self, source: IpAddr, now: Instant) -> Admission {
        let mut t = lock(&self.table);
        if now.saturating_duration_since(t.window) >= Duration::from_secs(1) {
            t.window = now;
            t.seen = 0;
        }
        t.seen = t.seen.saturating_add(1);
        if t.seen > LOAD_THRESHOLD {
            t.loaded_until = Some(now + Duration::from_secs(1));
        }
        let under_load = t.loaded_until.is_some_and(|until| now < until);
        let cost = INITIATION_COST;
        let (rate, capacity) = (self.rate, self.capacity);
        let refill = |b: &mut Bucket| {
            let ns = now.saturating_duration_since(b.at).as_nanos();
            let earned = u64::try_from(ns.saturating_mul(u128::from(rate))).unwrap_or(u64::MAX);
            b.tokens = b.tokens.saturating_add(earned).min(capacity);
            b.at = now;
        };
        if let Some(b) = t.buckets.get_mut(&source) {
            refill(b);
            if !under_load {
                b.tokens = b.tokens.saturating_sub(cost);
                return Admission::Admitted;
            }
            if b.tokens < cost {
                return Admission::SourceOverBudget;
            }
            b.tokens -= cost;
            return Admission::Admitted;
        }
        if t.buckets.len() >= self.max_sources {
            self.evict(&mut t.buckets, now);
        }
        t.buckets.insert(
            source,
            Bucket {
                tokens: capacity - cost,
                at: now,
            },
        );
        Admission::Admitted
    }

    /// Makes room for one source: forgets every source whose bucket has refilled (it carries
    /// no information), or else the one seen longest ago.
    fn evict(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let full_after = Duration::from_nanos(self.capacity / self.rate);
        buckets.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        if buckets.len() >= self.max_sources {
            let stalest = buckets.iter().min_by_key(|(_, b)| b.at).map(|(ip, _)| *ip);
            if let Some(ip) = stalest {
                buckets.remove(&ip);
            }
        }
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        lock(&self.table).buckets.len()
    }
}

/// The device-wide byte budget of held packets.
#[derive(Debug)]
pub struct HeldBudget {
    limit: usize,
    used: AtomicUsize,
}

impl HeldBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        HeldBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` bytes if they fit.
    fn reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&sum| sum <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes.
    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now, device-wide.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// What [`HeldQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Whether the new packet is held.
    pub held: bool,
    /// Older packets of this queue dropped to make room for it under the device-wide budget.
    pub evicted: usize,
}

/// One peer's held packets, oldest first, each with the clock reading it was held at;
/// their bytes count against the device's [`HeldBudget`] until they leave the queue (or it
/// is dropped).
///
/// Boxed and created by the first packet held, dropped again once empty: every peer has one,
/// and most hold nothing for their whole life (16 bytes per peer instead of 48).
#[derive(Debug)]
pub struct HeldQueue {
    packets: Option<Box<Packets>>,
    budget: Arc<HeldBudget>,
}

/// The packets of a non-empty [`HeldQueue`] and the bytes they count against the budget.
#[derive(Debug, Default)]
struct Packets {
    queue: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
}

fn cost(pkt: &[u8]) -> usize {
    pkt.len() + HELD_OVERHEAD
}

impl HeldQueue {
    /// An empty queue counting against `budget`.
    pub fn new(budget: Arc<HeldBudget>) -> Self {
        HeldQueue {
            packets: None,
            budget,
        }
    }

    /// The budget it counts against.
    pub fn budget(&self) -> &Arc<HeldBudget> {
        &self.budget
    }

    /// Holds a copy of `pkt` at clock reading `now`, unless the queue already has `max`
    /// packets. If the device-wide budget has no room, this queue's oldest packets are
    /// dropped until it has; if it still has none (this queue is empty), `pkt` is not held.
    pub fn push(&mut self, pkt: &[u8], now: u64, max: usize) -> Held {
        if self.len() >= max {
            return Held {
                held: false,
                evicted: 0,
            };
        }
        let n = cost(pkt);
        let mut evicted = 0;
        while !self.budget.reserve(n) {
            if self.pop_front().is_none() {
                return Held {
                    held: false,
                    evicted,
                };
            }
            evicted += 1;
        }
        let packets = self.packets.get_or_insert_with(Box::default);
        packets.bytes += n;
        packets.queue.push_back((now, pkt.to_vec()));
        Held {
            held: true,
            evicted,
        }
    }

    /// The oldest packet.
    pub fn front(&self) -> Option<&[u8]> {
        self.packets
            .as_ref()?
            .queue
            .front()
            .map(|(_, p)| p.as_slice())
    }

    /// When the oldest packet was held (clock reading).
    pub fn oldest_since(&self) -> Option<u64> {
        self.packets.as_ref()?.queue.front().map(|(t, _)| *t)
    }

    /// Removes the oldest packet, giving its bytes back to the budget.
    pub fn pop_front(&mut self) -> Option<Vec<u8>> {
        let packets = self.packets.as_mut()?;
        let (_, p) = packets.queue.pop_front()?;
        let n = cost(&p);
        packets.bytes -= n;
        self.budget.release(n);
        if packets.queue.is_empty() {
            self.packets = None;
        }
        Some(p)
    }

    /// Drops everything; returns how many packets that was.
    pub fn clear(&mut self) -> usize {
        let Some(packets) = self.packets.take() else {
            return 0;
        };
        self.budget.release(packets.bytes);
        packets.queue.len()
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.packets.as_ref().map_or(0, |p| p.queue.len())
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.packets.is_none()
    }

    /// Bytes this queue counts against the budget.
    pub fn bytes(&self) -> usize {
        self.packets.as_ref().map_or(0, |p| p.bytes)
    }
}

impl Drop for HeldQueue {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests;
