//! Connection tracking for the policy checks: an LRU hash keyed by (endpoint, the connection's
//! forward 5-tuple), so every endpoint on a packet's path keeps its own entry and its own
//! verdict (same-node A→B: A's egress entry, then B's ingress entry).
//!
//! At a check point, in order:
//! 1. ICMPv6 neighbour discovery (133–136) passes, untracked.
//! 2. An entry for (endpoint, tuple) (a packet of the connection's forward direction) or
//!    (endpoint, reversed tuple) (a reply) that has not idled out passes and is refreshed. If
//!    it was judged at an older policy generation, it is judged again first, as the forward
//!    tuple in the direction it was opened; no longer allowed → the entry is deleted and the
//!    packet dropped. Entries the node opened ([`CT_FLAG_HOST`]) are always re-allowed.
//! 3. An ICMP/ICMPv6 error whose quoted packet is a tracked connection of this endpoint (either
//!    way round) passes (related), untracked.
//! 4. Otherwise the policy decides (a packet the node sent, in `to_pod`, is allowed); an
//!    allowed packet creates the entry (isolated direction or not), stamped with the current
//!    generation and the direction. Only a connection's first packet opens one: for TCP a SYN
//!    without ACK. A TCP packet from the middle of an untracked connection (its entry was cut,
//!    evicted or idled out) is judged alone and tracks nothing, so the far end of a cut
//!    connection cannot re-open it with its next segment as if it were the opener.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap},
    programs::TcContext,
};
use ebpf_redirect_common::{
    conntrack::{
        CT_FLAG_CLOSING, CT_FLAG_HOST, CT_TIMEOUT_ICMP_NS, CT_TIMEOUT_OTHER_NS, CT_TIMEOUT_SCTP_NS,
        CT_TIMEOUT_TCP_CLOSING_NS, CT_TIMEOUT_TCP_NS, CT_TIMEOUT_UDP_NS,
    },
    CtKey, CtValue, DIRECTION_EGRESS, MAX_CONNTRACK,
};

use crate::{
    parse::{
        self, Packet, L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN,
    },
    policy,
};

#[map]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNTRACK, 0);
/// Index 0: the policy generation, bumped by the loader after every policy change.
#[map]
static POLICY_GENERATION: Array<u64> = Array::pinned(1, 0);

/// The outcome of a check point.
pub enum Judgement {
    /// Let the packet go on.
    Pass,
    /// Drop it; the policy direction that refused it.
    Deny(u8),
}

#[inline(always)]
fn key_of(endpoint: u32, p: &Packet) -> CtKey {
    CtKey {
        endpoint,
        family: p.family,
        protocol: p.protocol,
        src_port: p.src_port,
        dst_port: p.dst_port,
        reserved: [0; 2],
        src: p.src,
        dst: p.dst,
    }
}

#[inline(always)]
fn reverse(key: &mut CtKey) {
    core::mem::swap(&mut key.src, &mut key.dst);
    core::mem::swap(&mut key.src_port, &mut key.dst_port);
}

/// The idle timeout of an entry.
#[inline(always)]
fn timeout(protocol: u8, flags: u8) -> u64 {
    match protocol {
        PROTO_TCP if flags & CT_FLAG_CLOSING != 0 => CT_TIMEOUT_TCP_CLOSING_NS,
        PROTO_TCP => CT_TIMEOUT_TCP_NS,
        PROTO_SCTP => CT_TIMEOUT_SCTP_NS,
        PROTO_UDP => CT_TIMEOUT_UDP_NS,
        PROTO_ICMP | PROTO_ICMPV6 => CT_TIMEOUT_ICMP_NS,
        _ => CT_TIMEOUT_OTHER_NS,
    }
}

#[inline(always)]
fn live(protocol: u8, value: &CtValue, now: u64) -> bool {
    now.wrapping_sub(value.last_seen_ns) <= timeout(protocol, value.flags)
}

/// The destination port the policy sees: ICMP has none (its tuple's ports are the echo id).
#[inline(always)]
fn policy_port(protocol: u8, dst_port: [u8; 2]) -> [u8; 2] {
    if protocol == PROTO_ICMP || protocol == PROTO_ICMPV6 {
        [0; 2]
    } else {
        dst_port
    }
}

/// Judges the forward tuple `key` again in the direction its connection was opened.
#[inline(always)]
fn still_allowed(key: &CtKey, value: &CtValue) -> bool {
    if value.flags & CT_FLAG_HOST != 0 {
        return true;
    }
    let peer = if value.direction == DIRECTION_EGRESS {
        &key.dst
    } else {
        &key.src
    };
    policy::allows(
        key.endpoint,
        value.direction,
        key.family,
        peer,
        key.protocol,
        policy_port(key.protocol, key.dst_port),
    )
}

/// The verdict of a tracked connection whose forward tuple is `key`, if it is tracked.
#[inline(always)]
fn established(key: &CtKey, now: u64, generation: u64, tcp_flags: u8) -> Option<Judgement> {
    let value = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: a valid pointer into the map's value, used before this function returns; a
    // concurrent update of the same entry can only race on plain integer fields.
    let value = unsafe { &mut *value };
    if !live(key.protocol, value, now) {
        return None;
    }
    if value.generation != generation {
        if !still_allowed(key, value) {
            let direction = value.direction;
            let _ = CONNTRACK.remove(key);
            return Some(Judgement::Deny(direction));
        }
        value.generation = generation;
    }
    value.last_seen_ns = now;
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        value.flags |= CT_FLAG_CLOSING;
    }
    Some(Judgement::Pass)
}

/// Whether `key` is a live entry.
#[inline(always)]
fn tracked(key: &CtKey, now: u64) -> bool {
    match CONNTRACK.get_ptr(key) {
        // SAFETY: a valid pointer into the map's value, read at once.
        Some(value) => live(key.protocol, unsafe { &*value }, now),
        None => false,
    }
}

/// Whether the ICMP error `p` quotes a packet of a connection tracked at `endpoint`.
#[inline(always)]
fn related(ctx: &TcContext, endpoint: u32, p: &Packet, now: u64) -> bool {
    let quoted = match parse::quoted(ctx, p) {
        Ok(q) if q.family == p.family => q,
        _ => return false,
    };
    let mut key = key_of(endpoint, &quoted);
    if tracked(&key, now) {
        return true;
    }
    reverse(&mut key);
    tracked(&key, now)
}

/// Judges `p` at `endpoint` in `direction` (see the module doc).
#[inline(always)]
pub fn judge(
    ctx: &TcContext,
    endpoint: u32,
    direction: u8,
    p: &Packet,
    from_host: bool,
) -> Judgement {
    if p.l4 == L4::NeighbourDiscovery {
        return Judgement::Pass;
    }
    // SAFETY: plain BPF helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let generation = POLICY_GENERATION.get(0).copied().unwrap_or(0);
    let mut key = key_of(endpoint, p);
    if let Some(j) = established(&key, now, generation, p.tcp_flags) {
        return j;
    }
    reverse(&mut key);
    if let Some(j) = established(&key, now, generation, p.tcp_flags) {
        return j;
    }
    if p.l4 == L4::Error && related(ctx, endpoint, p, now) {
        return Judgement::Pass;
    }
    let peer = if direction == DIRECTION_EGRESS {
        &p.dst
    } else {
        &p.src
    };
    let allowed = from_host
        || policy::allows(
            endpoint,
            direction,
            p.family,
            peer,
            p.protocol,
            policy_port(p.protocol, p.dst_port),
        );
    if !allowed {
        return Judgement::Deny(direction);
    }
    let opens = p.protocol != PROTO_TCP || p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if p.l4 != L4::Error && opens {
        reverse(&mut key); // back to the packet's own tuple: the forward one
        let value = CtValue {
            last_seen_ns: now,
            generation,
            direction,
            flags: if from_host { CT_FLAG_HOST } else { 0 },
            reserved: [0; 6],
        };
        let _ = CONNTRACK.insert(&key, &value, 0);
    }
    Judgement::Pass
}
