//! `ebpf-redirect-common` owns the ABI shared by the BPF programs and the user-space loader:
//! map names, map sizes, `#[repr(C)]` key/value types and the `Verdict` counter indices.
//! It is `no_std` so that the BPF crate can use it; with the `user` feature it also
//! implements `aya::Pod` for the types so that the loader can put them in maps.
//!
//! Modules:
//! * [`policy`]: the NetworkPolicy maps' keys and values (the one definition of their layout).
//! * [`conntrack`]: the connection-tracking map's key and value, the policy generation and the
//!   idle timeouts.
//! * [`flows`]: flow events (ring buffer records), the forwarded-flow table and its switch.
#![cfg_attr(not(test), no_std)]

pub mod conntrack;
pub mod flows;
pub mod policy;

pub use conntrack::{CtKey, CtValue};
pub use policy::{
    IsolationKey, IsolationValue, PeerKeyV4, PeerKeyV6, PortKey, RuleBits, DIRECTION_EGRESS,
    DIRECTION_INGRESS, MAX_RULES, PEER_KEY_FIXED_BITS, PORT_KEY_FIXED_BITS,
};

/// Index into the per-CPU `VERDICTS` counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `from_pod`: destination in `REMOTE_*`, packet redirected into the tunnel.
    Redirect = 0,
    /// `from_pod`: destination is a local pod (`LOCAL_*`), left to the kernel.
    Local = 1,
    /// `from_pod`: neither remote nor local (or not IP), left to the kernel.
    Pass = 2,
    /// `underlay_egress`: cluster traffic outside WireGuard, dropped (enforce mode).
    StrictDrop = 3,
    /// `underlay_egress`: cluster traffic outside WireGuard, allowed (permissive mode).
    WouldDrop = 4,
    /// `from_pod`: an IP packet whose source is not an address of the pod on that interface
    /// (no `SOURCE_*` entry for the host veth and the address), dropped.
    Spoofed = 5,
    /// `from_pod`: a packet the pod's egress policy does not allow, dropped.
    PolicyDeniedEgress = 6,
    /// `to_pod`: a packet the pod's ingress policy does not allow, dropped.
    PolicyDeniedIngress = 7,
}

/// Number of entries in `VERDICTS`.
pub const VERDICT_COUNT: u32 = 8;

/// `Config::mode`: drop cluster traffic that is not the tunnel's (marked) ciphertext.
pub const MODE_ENFORCE: u32 = 0;
/// `Config::mode`: only count cluster traffic that is not the tunnel's (marked) ciphertext.
pub const MODE_PERMISSIVE: u32 = 1;

/// Value of the one-entry `CONFIG` array (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The mesh's WireGuard UDP port (host byte order). Recorded for tools; the programs do
    /// not exempt it: only the mesh mark identifies the tunnel's own packets.
    pub wg_port: u16,
    /// The WireGuard port of the node's second key slot (0: none). Was explicit padding in
    /// the first layout, so maps pinned by an older loader read it as "none".
    pub second_wg_port: u16,
    /// `MODE_ENFORCE` or `MODE_PERMISSIVE`.
    pub mode: u32,
    /// The firewall mark the WireGuard devices put on their own UDP packets (0: none). A
    /// packet carrying it is the tunnel's ciphertext (fragments included) and is never
    /// checked or redirected again.
    pub mesh_mark: u32,
}

/// Data part of an IPv4 LPM_TRIE key / key of `LOCAL_V4`: address bytes in network order.
pub type Ipv4Addr = [u8; 4];
/// Data part of an IPv6 LPM_TRIE key / key of `LOCAL_V6`: address bytes in network order.
pub type Ipv6Addr = [u8; 16];

/// Value of `LOCAL_V4` / `LOCAL_V6` (presence is what matters; 1 by convention).
pub type LocalMarker = u32;

/// Key of `SOURCE_V4`: an address a pod may send from on its host veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKeyV4 {
    /// Ifindex of the pod's host-side veth (host byte order): `skb->ifindex` in `from_pod`.
    pub ifindex: u32,
    /// The pod's address, network order.
    pub addr: Ipv4Addr,
}

/// Key of `SOURCE_V6`: an address a pod may send from on its host veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKeyV6 {
    /// Ifindex of the pod's host-side veth (host byte order): `skb->ifindex` in `from_pod`.
    pub ifindex: u32,
    /// The pod's address, network order.
    pub addr: Ipv6Addr,
}

/// Value of `SOURCE_V4` / `SOURCE_V6` (presence is what matters): [`SOURCE_POD`].
pub type SourceMarker = u32;
/// The value of every source entry: the address is the pod's (written by the CNI plugin on
/// ADD, or by the daemon's backstop).
pub const SOURCE_POD: SourceMarker = 1;
/// Value of `REMOTE_V4` / `REMOTE_V6`: ifindex of the tunnel (WireGuard) device.
pub type TunnelIfindex = u32;
/// Value of `CLUSTER_V4` / `CLUSTER_V6`. The programs only look at presence; the value says
/// where the entry came from, for the loader: [`CLUSTER_CONFIGURED`] or [`CLUSTER_LEARNED`].
pub type ClusterMarker = u32;
/// A cluster CIDR from the operator's configuration (replaced when the configuration changes).
pub const CLUSTER_CONFIGURED: ClusterMarker = 1;
/// A pod CIDR learned from a peer: kept after the peer is gone, so that its traffic stays
/// guarded once there is no tunnel for it.
pub const CLUSTER_LEARNED: ClusterMarker = 2;

/// Map names as they appear in the object and under the pin directory.
pub mod map_names {
    /// LPM_TRIE `Key<[u8;4]>` -> tunnel ifindex.
    pub const REMOTE_V4: &str = "REMOTE_V4";
    /// LPM_TRIE `Key<[u8;16]>` -> tunnel ifindex.
    pub const REMOTE_V6: &str = "REMOTE_V6";
    /// HASH `[u8;4]` -> 1.
    pub const LOCAL_V4: &str = "LOCAL_V4";
    /// HASH `[u8;16]` -> 1.
    pub const LOCAL_V6: &str = "LOCAL_V6";
    /// LPM_TRIE `Key<[u8;4]>` -> 1.
    pub const CLUSTER_V4: &str = "CLUSTER_V4";
    /// LPM_TRIE `Key<[u8;16]>` -> 1.
    pub const CLUSTER_V6: &str = "CLUSTER_V6";
    /// ARRAY[1] of `Config`.
    pub const CONFIG: &str = "CONFIG";
    /// PER_CPU_ARRAY[`VERDICT_COUNT`] of u64, indexed by `Verdict`.
    pub const VERDICTS: &str = "VERDICTS";
    /// HASH `SourceKeyV4` (host veth ifindex, address) -> `SOURCE_POD`.
    pub const SOURCE_V4: &str = "SOURCE_V4";
    /// HASH `SourceKeyV6` (host veth ifindex, address) -> `SOURCE_POD`.
    pub const SOURCE_V6: &str = "SOURCE_V6";
    /// HASH `IsolationKey` -> `IsolationValue`: present = the endpoint-direction is isolated.
    pub const POLICY_ISOLATION: &str = "POLICY_ISOLATION";
    /// LPM_TRIE `PeerKeyV4` -> `RuleBits`.
    pub const POLICY_PEER_V4: &str = "POLICY_PEER_V4";
    /// LPM_TRIE `PeerKeyV6` -> `RuleBits`.
    pub const POLICY_PEER_V6: &str = "POLICY_PEER_V6";
    /// LPM_TRIE `PortKey` -> `RuleBits`.
    pub const POLICY_PORT: &str = "POLICY_PORT";
    /// ARRAY[1] of u64: the policy generation, bumped by the loader after every policy change.
    pub const POLICY_GENERATION: &str = "POLICY_GENERATION";
    /// LRU_HASH `CtKey` -> `CtValue`: connection tracking.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// RINGBUF of `FlowEvent` records (size in bytes).
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    /// LRU_HASH `FlowKey` -> `FlowCounters`: forwarded flows.
    pub const FLOW_TABLE: &str = "FLOW_TABLE";
    /// ARRAY[1] of `FlowConfig`.
    pub const FLOW_CONFIG: &str = "FLOW_CONFIG";
    /// PER_CPU_ARRAY[1] of u64: events the ring buffer had no room for.
    pub const FLOW_LOST: &str = "FLOW_LOST";
    /// PROG_ARRAY[1]: the `flow_report` program, tail-called by the others.
    pub const FLOW_REPORT: &str = "FLOW_REPORT";
    /// All map names.
    pub const ALL: [&str; 21] = [
        REMOTE_V4,
        REMOTE_V6,
        LOCAL_V4,
        LOCAL_V6,
        CLUSTER_V4,
        CLUSTER_V6,
        CONFIG,
        VERDICTS,
        POLICY_ISOLATION,
        POLICY_PEER_V4,
        POLICY_PEER_V6,
        POLICY_PORT,
        POLICY_GENERATION,
        CONNTRACK,
        SOURCE_V4,
        SOURCE_V6,
        FLOW_EVENTS,
        FLOW_TABLE,
        FLOW_CONFIG,
        FLOW_LOST,
        FLOW_REPORT,
    ];
}

/// Max entries of the LPM tries (remote CIDRs, cluster CIDRs).
pub const MAX_CIDRS: u32 = 4096;
/// Max entries of the local pod address hashes.
pub const MAX_LOCAL: u32 = 4096;
/// Default max entries of `POLICY_ISOLATION` (two per local pod at most: 8,192 pods).
pub const MAX_POLICY_ISOLATION: u32 = 16_384;
/// Default max entries of each of `POLICY_PEER_V4` and `POLICY_PEER_V6`.
pub const MAX_POLICY_PEERS: u32 = 65_536;
/// Default max entries of `POLICY_PORT`.
pub const MAX_POLICY_PORTS: u32 = 65_536;
/// Default max entries of `CONNTRACK` (LRU: the least recently used entry is evicted when full).
pub const MAX_CONNTRACK: u32 = 262_144;
/// Max entries of `SOURCE_V4` (one per pod IPv4 address on the node). The size is the
/// object's; a loader can override it when the map is first created
/// (`aya::EbpfLoader::set_max_entries`), never for a map already pinned (reused as it is).
pub const MAX_SOURCE_V4: u32 = 16_384;
/// Max entries of `SOURCE_V6` (one per pod IPv6 address on the node); see [`MAX_SOURCE_V4`].
pub const MAX_SOURCE_V6: u32 = 16_384;

#[cfg(feature = "user")]
// SAFETY: `Config` is `#[repr(C)]`, `Copy`, made only of integers, has explicit padding
// (no implicit padding bytes) and every bit pattern is valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for Config {}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, `Copy`, a `u32` then a byte array whose length is a multiple of 4: no
// padding, and every bit pattern is valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for SourceKeyV4 {}

#[cfg(feature = "user")]
// SAFETY: as for `SourceKeyV4` (20 bytes, no padding).
#[allow(unsafe_code)]
unsafe impl aya::Pod for SourceKeyV6 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_keys_have_no_padding() {
        assert_eq!(core::mem::size_of::<SourceKeyV4>(), 8);
        assert_eq!(core::mem::size_of::<SourceKeyV6>(), 20);
    }
}
