//! Source validation, the first step of `from_pod`: a pod may send only from its own
//! addresses. The maps `SOURCE_V4` / `SOURCE_V6` hold, per host veth (`skb->ifindex`, the
//! interface `from_pod` runs on), the addresses of the pod behind it; the CNI plugin writes
//! them on ADD before `from_pod` goes on, and the daemon keeps them in step with the IPAM
//! store. An IP packet whose (interface, source) pair is not there is spoofed.
//!
//! IPv6 exceptions: the unspecified source `::` (duplicate address detection, MLD before an
//! address exists) and link-local sources `fe80::/10` (neighbour discovery, MLD). The kernel
//! never forwards a link-local source off its link, so they reach at most the node itself.
//! An interface without entries drops every other IP packet: fail closed.

use aya_ebpf::{macros::map, maps::HashMap};
use ebpf_redirect_common::{
    Ipv4Addr, Ipv6Addr, SourceKeyV4, SourceKeyV6, SourceMarker, MAX_SOURCE_V4, MAX_SOURCE_V6,
};

use crate::Ip;

// Preallocated hashes (flags 0), pinned by name like every map of the object.
#[map]
static SOURCE_V4: HashMap<SourceKeyV4, SourceMarker> = HashMap::pinned(MAX_SOURCE_V4, 0);
#[map]
static SOURCE_V6: HashMap<SourceKeyV6, SourceMarker> = HashMap::pinned(MAX_SOURCE_V6, 0);

/// Whether the packet `ip` (`None`: not IP, e.g. ARP) may leave the pod behind `ifindex`.
#[inline(always)]
pub fn own(ifindex: u32, ip: &Option<Ip>) -> bool {
    match ip {
        Some(Ip::V4 { src, .. }) => v4_allowed(ifindex, *src),
        Some(Ip::V6 { src, .. }) => v6_allowed(ifindex, *src),
        None => true,
    }
}

/// Whether the pod on `ifindex` may send from `src`.
#[inline(always)]
fn v4_allowed(ifindex: u32, src: Ipv4Addr) -> bool {
    let key = SourceKeyV4 { ifindex, addr: src };
    // SAFETY: only presence is checked; the value reference is not kept.
    unsafe { SOURCE_V4.get(&key) }.is_some()
}

/// Whether the pod on `ifindex` may send from `src` (see the module's exceptions).
#[inline(always)]
fn v6_allowed(ifindex: u32, src: Ipv6Addr) -> bool {
    let unspecified = src == [0u8; 16];
    // fe80::/10: first byte 0xfe, top two bits of the second 0b10.
    let link_local = src[0] == 0xfe && (src[1] & 0xc0) == 0x80;
    if unspecified || link_local {
        return true;
    }
    let key = SourceKeyV6 { ifindex, addr: src };
    // SAFETY: only presence is checked; the value reference is not kept.
    unsafe { SOURCE_V6.get(&key) }.is_some()
}
