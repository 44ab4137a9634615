//! Flow events (ABI in `ebpf_redirect_common::flows`): [`dropped`] writes one event per
//! dropped (or permissive would-drop) packet into the `FLOW_EVENTS` ring buffer;
//! [`forwarded`] counts a forwarded packet in its flow's `FLOW_TABLE` entry and writes an
//! event only for the packet that created the entry. An event the ring buffer has no room for
//! is counted in the per-CPU `FLOW_LOST`. Nothing happens unless `FLOW_CONFIG[0].events` is
//! set. These functions only observe: they never change a program's verdict or counters.
//!
//! The work is done in a program of its own, `flow_report`, reached by a tail call: the pod
//! programs' decisions (policy, connection tracking) use nearly all of the 512 bytes of stack
//! the verifier allows a program, and a tail-called program starts with a fresh stack. A
//! program decides as before, noting what to report ([`drop_note`], [`forwarded_note`]); then
//! [`report`] (inline) checks the switch, puts the action, the note, the observation point and
//! the IP header's offset in `skb->cb[0..3]` and tail-calls `flow_report` through the
//! one-entry `FLOW_REPORT` program array (set by the loader), which reports and returns the
//! action. When the tail call fails (slot empty: an older loader) the action is returned as
//! it is: events are lost, verdicts never change.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use ebpf_redirect_common::flows::{
    FlowConfig, FlowCounters, FlowEvent, FlowKey, DEFAULT_FLOW_RING_BYTES, FLOW_FAMILY_UNKNOWN,
    FLOW_KIND_DROP, FLOW_KIND_FIRST_PACKET, FLOW_POINT_UNDERLAY, FLOW_POLICY_DIRECTION_NONE,
    FLOW_REASON_LOCAL_DELIVERY, FLOW_REASON_TO_TUNNEL, FLOW_VERDICT_FORWARDED, MAX_FLOWS,
};

use crate::parse::{self, Packet, PROTO_ICMP, PROTO_ICMPV6};

// Pinned by name like every map of the object; the loader sizes the ring and the table.
#[map]
static FLOW_EVENTS: RingBuf = RingBuf::pinned(DEFAULT_FLOW_RING_BYTES, 0);
#[map]
static FLOW_TABLE: LruHashMap<FlowKey, FlowCounters> = LruHashMap::pinned(MAX_FLOWS, 0);
#[map]
static FLOW_CONFIG: Array<FlowConfig> = Array::pinned(1, 0);
#[map]
static FLOW_LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);
/// Index 0: `flow_report`, written by the loader.
#[map]
static FLOW_REPORT: ProgramArray = ProgramArray::pinned(1, 0);

/// The note of a dropped (or would-be-dropped) packet.
#[inline(always)]
pub const fn drop_note(verdict: u8, reason: u8, policy_direction: u8) -> u32 {
    u32::from_le_bytes([FLOW_KIND_DROP, verdict, reason, policy_direction])
}

/// Notes that the packet in `ctx` is dropped (a [`drop_note`]; 0: not dropped, every entry point
/// clears it first).
#[inline(always)]
pub fn note(ctx: &TcContext, note: u32) {
    // SAFETY: `cb` is the program's scratch area in the context, writable by tc programs.
    unsafe { (*ctx.skb.skb).cb[1] = note };
}

/// Whether a [`note`] says the packet in `ctx` is dropped.
#[inline(always)]
pub fn noted(ctx: &TcContext) -> bool {
    ctx.cb()[1] != 0
}

/// Has `flow_report` report the packet in `ctx`, seen at `point` with its IP header at
/// `l3_off`, and return `action` (a drop if a [`note`] says so, else a forwarded packet);
/// returns `action` itself when events are off or the tail call fails.
///
/// The action goes through `skb->cb[0]` and is read back (volatile) after the tail call: not
/// keeping it in a register across the call keeps `from_pod` within its 512 bytes of stack.
#[inline(always)]
pub fn report(ctx: &TcContext, point: u8, l3_off: u32, action: i32) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: `cb` is the program's scratch area in the context, readable and writable by tc
    // programs; `skb` is the context the kernel passed in.
    unsafe {
        core::ptr::write_volatile(&raw mut (*skb).cb[0], action as u32);
        if enabled() {
            (*skb).cb[2] = u32::from(point) | (l3_off << 8);
            // On success control continues in `flow_report`, which returns the action.
            FLOW_REPORT.tail_call(ctx, 0);
        }
        core::ptr::read_volatile(&raw const (*skb).cb[0]) as i32
    }
}

/// The reporter, entered by tail call from [`report`] only.
#[classifier]
pub fn flow_report(ctx: TcContext) -> i32 {
    let cb = ctx.cb();
    let (action, note, place) = (cb[0] as i32, cb[1], cb[2]);
    let point = place as u8;
    let l3_off = (place >> 8) as usize;
    let [kind, verdict, reason, policy_direction] = note.to_le_bytes();
    if kind == FLOW_KIND_DROP {
        report_drop(&ctx, l3_off, [point, verdict, reason, policy_direction]);
    } else if action == TC_ACT_REDIRECT {
        count_forwarded(&ctx, point, l3_off, FLOW_REASON_TO_TUNNEL);
    } else if action == TC_ACT_OK && point != FLOW_POINT_UNDERLAY {
        // A local pod, the node, or out through the host stack. Not IP: nothing counted.
        count_forwarded(&ctx, point, l3_off, FLOW_REASON_LOCAL_DELIVERY);
    }
    action
}

/// Whether flow events are on.
#[inline(always)]
fn enabled() -> bool {
    FLOW_CONFIG.get(0).is_some_and(|c| c.events != 0)
}

/// The interface the program runs on.
#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reads a scalar field of the context the kernel passed in.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// ICMP type and code of `p` (zero for other protocols or a truncated header; a non-first
/// IPv4 fragment has no ICMP header, so its first two payload bytes are read instead).
#[inline(always)]
fn icmp(ctx: &TcContext, p: &Packet) -> [u8; 2] {
    if p.protocol == PROTO_ICMP || p.protocol == PROTO_ICMPV6 {
        ctx.load::<[u8; 2]>(p.l4_off).unwrap_or([0; 2])
    } else {
        [0; 2]
    }
}

/// Counts an event the ring buffer had no room for.
#[inline(always)]
fn lost() {
    if let Some(lost) = FLOW_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, valid pointer returned by the map lookup.
        unsafe { *lost += 1 };
    }
}

/// Writes the event of the packet in `ctx` (IP header at `l3_off`, parsed into `p` when
/// `parsed`) into the ring buffer with its kind, verdict, reason, point and policy direction
/// packed in `what` (as [`dropped`] packs them), or counts it lost.
#[inline(always)]
fn emit(ctx: &TcContext, l3_off: usize, p: &Packet, parsed: bool, time_ns: u64, what: [u8; 5]) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        lost();
        return;
    };
    let [kind, point, verdict, reason, policy_direction] = what;
    let event = entry.write(FlowEvent {
        time_ns,
        ifindex: ifindex(ctx),
        ip_len: ctx.len().saturating_sub(l3_off as u32),
        kind,
        verdict,
        reason,
        point,
        policy_direction,
        family: FLOW_FAMILY_UNKNOWN,
        ..FlowEvent::default()
    });
    if parsed {
        event.src = p.src;
        event.dst = p.dst;
        event.family = p.family;
        event.protocol = p.protocol;
        if p.protocol == PROTO_ICMP || p.protocol == PROTO_ICMPV6 {
            // Type and code; the parser's echo identifiers are not ports.
            [event.icmp_type, event.icmp_code] = icmp(ctx, p);
        } else {
            event.src_port = u16::from_be_bytes(p.src_port);
            event.dst_port = u16::from_be_bytes(p.dst_port);
        }
    }
    entry.submit(0);
}

/// Reports a dropped packet (or, verdict audit, one strict mode would have dropped) seen at
/// `point` with its IP header at `l3_off`; `policy_direction` names the refusing policy's
/// direction for a policy drop.
#[inline(always)]
fn report_drop(
    ctx: &TcContext,
    l3_off: usize,
    [point, verdict, reason, policy_direction]: [u8; 4],
) {
    let mut p = Packet::EMPTY;
    let parsed = parse::ip_at(ctx, l3_off, &mut p).unwrap_or(false);
    // SAFETY: plain BPF helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(
        ctx,
        l3_off,
        &p,
        parsed,
        now,
        [FLOW_KIND_DROP, point, verdict, reason, policy_direction],
    );
}

/// Counts a forwarded packet (IP header at `l3_off`) in its flow's entry; the packet that
/// creates the entry is reported as the flow's first packet.
#[inline(always)]
fn count_forwarded(ctx: &TcContext, point: u8, l3_off: usize, reason: u8) {
    let mut p = Packet::EMPTY;
    if !parse::ip_at(ctx, l3_off, &mut p).unwrap_or(false) {
        return;
    }
    let key = FlowKey {
        ifindex: ifindex(ctx),
        family: p.family,
        protocol: p.protocol,
        point,
        reserved: 0,
        src_port: p.src_port,
        dst_port: p.dst_port,
        src: p.src,
        dst: p.dst,
    };
    let bytes = u64::from(ctx.len().saturating_sub(l3_off as u32));
    // SAFETY: plain BPF helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if add(&key, bytes, now) {
        return;
    }
    let [icmp_type, icmp_code] = icmp(ctx, &p);
    let counters = FlowCounters {
        packets: 1,
        bytes,
        first_ns: now,
        last_ns: now,
        verdict: FLOW_VERDICT_FORWARDED,
        reason,
        icmp_type,
        icmp_code,
        reserved: [0; 4],
    };
    if FLOW_TABLE
        .insert(&key, &counters, u64::from(BPF_NOEXIST))
        .is_err()
    {
        // Another CPU created the entry (or the insert failed): count the packet there.
        add(&key, bytes, now);
        return;
    }
    emit(
        ctx,
        l3_off,
        &p,
        true,
        now,
        [
            FLOW_KIND_FIRST_PACKET,
            point,
            FLOW_VERDICT_FORWARDED,
            reason,
            FLOW_POLICY_DIRECTION_NONE,
        ],
    );
}

/// Adds one packet of `bytes` to the entry of `key`; false when there is none.
#[inline(always)]
fn add(key: &FlowKey, bytes: u64, now: u64) -> bool {
    let Some(counters) = FLOW_TABLE.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: the pointer comes from the map lookup and stays valid for this program run;
    // the counters are shared between CPUs, hence the atomic adds (BPF_ATOMIC_ADD).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counters).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counters).bytes, bytes);
        (*counters).last_ns = now;
    }
    true
}
