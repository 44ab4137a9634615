//! `ebpf-redirect-ebpf` owns the tc BPF programs of meshd's datapath and their maps:
//! `from_pod` (clsact ingress on a pod's host-side veth: redirect to the WireGuard device
//! by LPM lookup) and `underlay_egress` (clsact egress on the node's underlay NIC: drop or
//! count cluster traffic that bypasses WireGuard). Entry points only map the result of
//! `try_<prog>()` to a tc action; all logic lives in the `try_` functions.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::{classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::TcContext,
};
use ebpf_redirect_common::{
    ClusterMarker, Config, Ipv4Addr, Ipv6Addr, LocalMarker, TunnelIfindex, Verdict, MAX_CIDRS,
    MAX_LOCAL, MODE_PERMISSIVE, VERDICT_COUNT,
};

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

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;

#[inline(always)]
fn is_wireguard(ctx: &TcContext, payload: usize) -> bool {
    match ctx.load::<u32>(payload) {
        Ok(word) => {
            let t = u32::from_le(word);
            (1..=4).contains(&t)
        }
        Err(_) => false,
    }
}

/// Addresses and L4 info of an IP packet behind an Ethernet header.
enum Ip {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        l4: usize,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        l4: usize,
    },
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Ip>, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    match ethertype {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            let proto: u8 = ctx.load(ETH_HLEN + 9)?;
            let src: Ipv4Addr = ctx.load(ETH_HLEN + 12)?;
            let dst: Ipv4Addr = ctx.load(ETH_HLEN + 16)?;
            Ok(Some(Ip::V4 {
                src,
                dst,
                proto,
                l4: ETH_HLEN + ihl,
            }))
        }
        ETH_P_IPV6 => {
            // Extension headers are not walked: `proto` is the first next-header.
            let proto: u8 = ctx.load(ETH_HLEN + 6)?;
            let src: Ipv6Addr = ctx.load(ETH_HLEN + 8)?;
            let dst: Ipv6Addr = ctx.load(ETH_HLEN + 24)?;
            Ok(Some(Ip::V6 {
                src,
                dst,
                proto,
                l4: ETH_HLEN + 40,
            }))
        }
        _ => Ok(None),
    }
}

#[inline(always)]
fn count(v: Verdict) {
    if let Some(p) = VERDICTS.get_ptr_mut(v as u32) {
        // SAFETY: per-CPU slot, valid pointer returned by the map lookup.
        unsafe { *p += 1 };
    }
}

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    try_from_pod(&ctx).unwrap_or(TC_ACT_OK)
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, i64> {
    let remote = match parse(ctx)? {
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
pub fn underlay_egress(ctx: TcContext) -> i32 {
    try_underlay_egress(&ctx).unwrap_or(TC_ACT_OK)
}

fn try_underlay_egress(ctx: &TcContext) -> Result<i32, i64> {
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => return Ok(TC_ACT_OK),
    };
    // SAFETY: reads a scalar field of the context the kernel passed in.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if cfg.mesh_mark != 0 && mark == cfg.mesh_mark {
        // The tunnel's own ciphertext (every fragment of it carries the mark).
        return Ok(TC_ACT_OK);
    }
    let (in_cluster, proto, l4) = match parse(ctx)? {
        Some(Ip::V4 {
            src,
            dst,
            proto,
            l4,
        }) => (
            CLUSTER_V4.get(Key::new(32, src)).is_some()
                || CLUSTER_V4.get(Key::new(32, dst)).is_some(),
            proto,
            l4,
        ),
        Some(Ip::V6 {
            src,
            dst,
            proto,
            l4,
        }) => (
            CLUSTER_V6.get(Key::new(128, src)).is_some()
                || CLUSTER_V6.get(Key::new(128, dst)).is_some(),
            proto,
            l4,
        ),
        None => return Ok(TC_ACT_OK),
    };
    if !in_cluster {
        return Ok(TC_ACT_OK);
    }
    // WireGuard of this mesh leaves as it is: its first four bytes are a message type 1..=4
    // followed by three reserved zero bytes (a little-endian u32 of 1..=4). Anything else
    // sent to that port is plaintext like any other packet.
    if proto == IPPROTO_UDP && (cfg.wg_port != 0 || cfg.second_wg_port != 0) {
        let sport = u16::from_be(ctx.load::<u16>(l4)?);
        let dport = u16::from_be(ctx.load::<u16>(l4 + 2)?);
        let ours = |p: u16| p != 0 && (p == cfg.wg_port || p == cfg.second_wg_port);
        if (ours(sport) || ours(dport)) && is_wireguard(ctx, l4 + UDP_HLEN) {
            return Ok(TC_ACT_OK);
        }
    }
    if cfg.mode == MODE_PERMISSIVE {
        count(Verdict::WouldDrop);
        Ok(TC_ACT_OK)
    } else {
        count(Verdict::StrictDrop);
        Ok(TC_ACT_SHOT)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
