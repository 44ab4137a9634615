//! `ebpf-redirect-ebpf` owns the tc BPF programs of meshd's datapath and their maps:
//! `from_pod` (clsact ingress on a pod's host-side veth: drop packets whose source is not the
//! pod's ([`source`]), the pod's egress policy, then redirect to the WireGuard device by LPM
//! lookup), `to_pod` (clsact egress on that veth: the pod's ingress policy) and
//! `underlay_egress` / `underlay_egress_ip` (tc egress on every way out of the node, Ethernet
//! links / links without a link-layer header: drop or count cluster traffic that bypasses
//! WireGuard, [`guard`]). Entry points only map the result of `try_<prog>()` to a tc action;
//! all logic lives in the `try_` functions and the modules: [`source`] (source validation),
//! [`parse`] (headers for the policy), [`policy`] (policy maps and decision, the two check
//! points), [`conntrack`] (connection tracking and re-validation after policy changes) and
//! [`flows`] (flow events: every drop, forwarded traffic per flow; observation only).
#![no_std]
#![no_main]
// `core::intrinsics::atomic_xadd`: the BPF target has no atomic types with `fetch_add`, but
// LLVM lowers the intrinsic to BPF_ATOMIC_ADD (flow counters shared between CPUs).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conntrack;
mod flows;
mod guard;
mod parse;
mod policy;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::{classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::TcContext,
};
use ebpf_redirect_common::flows::{
    FLOW_POINT_FROM_POD, FLOW_POINT_TO_POD, FLOW_POINT_UNDERLAY, FLOW_POLICY_DIRECTION_NONE,
    FLOW_REASON_SPOOFED_SOURCE, FLOW_VERDICT_DROPPED,
};
use ebpf_redirect_common::{
    ClusterMarker, Config, Ipv4Addr, Ipv6Addr, LocalMarker, TunnelIfindex, Verdict, MAX_CIDRS,
    MAX_LOCAL, VERDICT_COUNT,
};

mod source;

// All maps are pinned by name (LIBBPF_PIN_BY_NAME) so the loader can keep them in bpffs.
#[map]
static REMOTE_V4: LpmTrie<Ipv4Addr, TunnelIfindex> = LpmTrie::pinned(MAX_CIDRS, BPF_F_NO_PREALLOC);
#[map]
static REMOTE_V6: LpmTrie<Ipv6Addr, TunnelIfindex> = LpmTrie::pinned(MAX_CIDRS, BPF_F_NO_PREALLOC);
#[map]
static LOCAL_V4: HashMap<Ipv4Addr, LocalMarker> = HashMap::pinned(MAX_LOCAL, 0);
#[map]
static LOCAL_V6: HashMap<Ipv6Addr, LocalMarker> = HashMap::pinned(MAX_LOCAL, 0);
#[map]
static CLUSTER_V4: LpmTrie<Ipv4Addr, ClusterMarker> = LpmTrie::pinned(MAX_CIDRS, BPF_F_NO_PREALLOC);
#[map]
static CLUSTER_V6: LpmTrie<Ipv6Addr, ClusterMarker> = LpmTrie::pinned(MAX_CIDRS, BPF_F_NO_PREALLOC);
#[map]
static CONFIG: Array<Config> = Array::pinned(1, 0);
#[map]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(VERDICT_COUNT, 0);

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Addresses of an IP packet behind an Ethernet header (a pod's veth).
enum Ip {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Ip>, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    match ethertype {
        ETH_P_IP => {
            let src: Ipv4Addr = ctx.load(ETH_HLEN + 12)?;
            let dst: Ipv4Addr = ctx.load(ETH_HLEN + 16)?;
            Ok(Some(Ip::V4 { src, dst }))
        }
        ETH_P_IPV6 => {
            let src: Ipv6Addr = ctx.load(ETH_HLEN + 8)?;
            let dst: Ipv6Addr = ctx.load(ETH_HLEN + 24)?;
            Ok(Some(Ip::V6 { src, dst }))
        }
        _ => Ok(None),
    }
}

#[inline(always)]
pub(crate) fn count(v: Verdict) {
    if let Some(p) = VERDICTS.get_ptr_mut(v as u32) {
        // SAFETY: per-CPU slot, valid pointer returned by the map lookup.
        unsafe { *p += 1 };
    }
}

// Each entry point decides (noting what flow events must hear of it), then hands the action
// and the note to `flows::report` (which may tail-call the reporter).

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    flows::note(&ctx, 0);
    let action = try_from_pod(&ctx).unwrap_or(TC_ACT_OK);
    flows::report(&ctx, FLOW_POINT_FROM_POD, ETH_HLEN as u32, action)
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, i64> {
    // SAFETY: reads a scalar field of the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // A frame too short to show its addresses cannot prove its source: dropped too.
    let Ok(ip) = parse(ctx) else {
        count(Verdict::Spoofed);
        flows::note(ctx, SPOOFED);
        return Ok(TC_ACT_SHOT);
    };
    if !source::own(ifindex, &ip) {
        count(Verdict::Spoofed);
        flows::note(ctx, SPOOFED);
        return Ok(TC_ACT_SHOT);
    }
    // Only a packet from the pod's own address reaches the policy (and may open a tracked
    // connection).
    if let Some(action) = policy::egress(ctx) {
        return Ok(action);
    }
    // The addresses again (the same bytes, nothing rewrote them): keeping the first parse's
    // alive across the policy check made LLVM copy a register that is undefined on the IPv6
    // path (the enum's IPv4 fields), which the verifier refuses to read.
    let ip = parse(ctx)?;
    let remote = match ip {
        Some(Ip::V4 { dst, .. }) => {
            if let Some(ifx) = REMOTE_V4.get(Key::new(32, dst)) {
                Some(*ifx)
            // SAFETY: only presence is checked; the value reference is not kept.
            } else if unsafe { LOCAL_V4.get(&dst) }.is_some() {
                count(Verdict::Local);
                return Ok(TC_ACT_OK);
            } else {
                None
            }
        }
        Some(Ip::V6 { dst, .. }) => {
            if let Some(ifx) = REMOTE_V6.get(Key::new(128, dst)) {
                Some(*ifx)
            // SAFETY: only presence is checked; the value reference is not kept.
            } else if unsafe { LOCAL_V6.get(&dst) }.is_some() {
                count(Verdict::Local);
                return Ok(TC_ACT_OK);
            } else {
                None
            }
        }
        None => None,
    };
    match remote {
        Some(ifindex) => {
            count(Verdict::Redirect);
            // SAFETY: plain BPF helper call; returns TC_ACT_REDIRECT on success.
            Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
        }
        None => {
            count(Verdict::Pass);
            Ok(TC_ACT_OK)
        }
    }
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    flows::note(&ctx, 0);
    let action = try_to_pod(&ctx).unwrap_or(TC_ACT_OK);
    flows::report(&ctx, FLOW_POINT_TO_POD, ETH_HLEN as u32, action)
}

fn try_to_pod(ctx: &TcContext) -> Result<i32, i64> {
    match policy::ingress(ctx) {
        Some(action) => Ok(action),
        None => Ok(TC_ACT_OK),
    }
}

/// The flow note of a packet `from_pod` dropped for its source.
const SPOOFED: u32 = flows::drop_note(
    FLOW_VERDICT_DROPPED,
    FLOW_REASON_SPOOFED_SOURCE,
    FLOW_POLICY_DIRECTION_NONE,
);

#[classifier]
pub fn underlay_egress(ctx: TcContext) -> i32 {
    guard_with_report(ctx, guard::Framing::Ethernet)
}

#[classifier]
pub fn underlay_egress_ip(ctx: TcContext) -> i32 {
    guard_with_report(ctx, guard::Framing::Ip)
}

/// The guard on a link framed as `framing` (Ethernet, or no link-layer header: tun,
/// WireGuard, ipip, sit, raw IP), then the report of its drop.
#[inline(always)]
fn guard_with_report(ctx: TcContext, framing: guard::Framing) -> i32 {
    flows::note(&ctx, 0);
    let action = guard::check(&ctx, framing).unwrap_or(TC_ACT_OK);
    let l3_off = match framing {
        guard::Framing::Ethernet => ETH_HLEN as u32,
        guard::Framing::Ip => 0,
    };
    if !flows::noted(&ctx) {
        // The guard reports drops only: node traffic is not counted per flow.
        return action;
    }
    flows::report(&ctx, FLOW_POINT_UNDERLAY, l3_off, action)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
