//! The sizes of the maps the loader may choose ([`MapSizes`], `max_entries` overrides given to
//! aya's loader), and the retirement of pinned maps whose size no longer matches.
//!
//! Maps are pinned by name and reused on reload with their contents. The kernel never resizes
//! a map, and aya reuses a pin whatever its shape, so a pinned map whose `max_entries` differs
//! from what this loader wants (an older object's `VERDICTS` with fewer counters, a policy or
//! connection-tracking map sized by another configuration, per-node maps sized for another
//! `--max-nodes`) is unpinned before loading: the new programs get a fresh map, the old
//! programs keep theirs until they are replaced.
//!
//! The per-node maps (`REMOTE_*`, `CLUSTER_*`: one entry per peer pod CIDR) are what strict
//! mode and the redirect depend on, so they are never handed over empty: their entries are
//! read before the pin goes and written into the new map before the loader returns, that is
//! before the caller attaches the new programs ([`crate::carry`]). For the others what is
//! lost: the counters restart at zero, the policy maps must be written again by their owner
//! (the daemon writes its full policy on start), and connections tracked in a retired
//! `CONNTRACK` are judged again as new ones.

use std::{fs, io, path::Path};

use aya::maps::MapData;
use ebpf_redirect_common::{
    flows::{DEFAULT_FLOW_RING_BYTES, MAX_FLOWS},
    map_names as mn, MAX_CONNTRACK, MAX_POLICY_ISOLATION, MAX_POLICY_PEERS, MAX_POLICY_PORTS,
    VERDICT_COUNT,
};

use crate::carry::Carried;
use crate::Result;

/// The node count the per-node maps are sized for by default (`meshd --max-nodes`).
pub const DEFAULT_MAX_NODES: u32 = 16_384;
/// Pod CIDRs of one family a single node record may hold (record trust refuses more): the
/// per-record cap multiplied into the per-node maps' sizes.
pub const DEFAULT_CIDRS_PER_NODE: u32 = 4;
/// Entries of each `CLUSTER_*` map kept for the operator's configured cluster CIDRs, on top of
/// the peers' pod CIDRs.
pub const CONFIGURED_CLUSTER_SLACK: u32 = 256;
/// The largest per-node map this loader asks for (2^24 entries): a bound on a mistyped
/// configuration, far above any cluster Kubernetes supports.
pub const MAX_PER_NODE_ENTRIES: u32 = 1 << 24;

/// `max_entries` of the maps whose size is a deployment choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `POLICY_ISOLATION` (two entries per local pod at most).
    pub policy_isolation: u32,
    /// Each of `POLICY_PEER_V4` and `POLICY_PEER_V6`.
    pub policy_peers: u32,
    /// `POLICY_PORT`.
    pub policy_ports: u32,
    /// `CONNTRACK` (an LRU: when full, the least recently used connection is forgotten).
    pub conntrack: u32,
    /// Each of `REMOTE_V4` and `REMOTE_V6` (one entry per peer pod CIDR of the family).
    pub remote_cidrs: u32,
    /// Each of `CLUSTER_V4` and `CLUSTER_V6` (the configured cluster CIDRs and one learned
    /// entry per peer pod CIDR of the family).
    pub cluster_cidrs: u32,
    /// `FLOW_EVENTS`, in bytes: a power of two, at least a page (see [`ring_bytes`]).
    pub flow_ring_bytes: u32,
    /// `FLOW_TABLE` (an LRU: when full, the least recently used flow is forgotten and its next
    /// packet is reported as a first packet again).
    pub flow_table: u32,
}

/// The smallest size the kernel accepts for a ring buffer of at least `bytes` bytes: a power
/// of two, at least one page (4 KiB assumed; larger pages round up the same way), at most
/// 1 GiB.
pub fn ring_bytes(bytes: u32) -> u32 {
    bytes.clamp(4096, 1 << 30).next_power_of_two()
}

impl Default for MapSizes {
    fn default() -> Self {
        Self::for_nodes(DEFAULT_MAX_NODES, DEFAULT_CIDRS_PER_NODE)
    }
}

impl MapSizes {
    /// The default sizes with the per-node maps sized for `max_nodes` nodes holding at most
    /// `cidrs_per_node` pod CIDRs of each family each (saturating, at most
    /// [`MAX_PER_NODE_ENTRIES`], at least one node).
    pub fn for_nodes(max_nodes: u32, cidrs_per_node: u32) -> Self {
        let remote = max_nodes
            .max(1)
            .saturating_mul(cidrs_per_node.max(1))
            .min(MAX_PER_NODE_ENTRIES);
        Self {
            policy_isolation: MAX_POLICY_ISOLATION,
            policy_peers: MAX_POLICY_PEERS,
            policy_ports: MAX_POLICY_PORTS,
            conntrack: MAX_CONNTRACK,
            remote_cidrs: remote,
            cluster_cidrs: remote.saturating_add(CONFIGURED_CLUSTER_SLACK),
            flow_ring_bytes: DEFAULT_FLOW_RING_BYTES,
            flow_table: MAX_FLOWS,
        }
    }

    /// Every map whose size this loader decides, with that size.
    pub(crate) fn entries(&self) -> [(&'static str, u32); 12] {
        [
            (mn::REMOTE_V4, self.remote_cidrs),
            (mn::REMOTE_V6, self.remote_cidrs),
            (mn::CLUSTER_V4, self.cluster_cidrs),
            (mn::CLUSTER_V6, self.cluster_cidrs),
            (mn::VERDICTS, VERDICT_COUNT),
            (mn::POLICY_ISOLATION, self.policy_isolation),
            (mn::POLICY_PEER_V4, self.policy_peers),
            (mn::POLICY_PEER_V6, self.policy_peers),
            (mn::POLICY_PORT, self.policy_ports),
            (mn::CONNTRACK, self.conntrack),
            (mn::FLOW_EVENTS, ring_bytes(self.flow_ring_bytes)),
            (mn::FLOW_TABLE, self.flow_table.max(1)),
        ]
    }
}

/// Unpins the maps in `dir` whose `max_entries` differs from `sizes`; returns their names and
/// the entries of the per-node maps among them, read before their pins went (for
/// [`crate::carry::fill`]).
pub(crate) fn retire_mismatched_pins(
    dir: &Path,
    sizes: &MapSizes,
) -> Result<(Vec<&'static str>, Carried)> {
    let mut retired = Vec::new();
    let mut carried = Carried::default();
    for (name, wanted) in sizes.entries() {
        let path = dir.join(name);
        let pinned = match MapData::from_pin(&path) {
            Ok(map) => map,
            // No pin (first load) or not a map we can open: the loader creates or fails later.
            Err(_) => continue,
        };
        let had = pinned.info()?.max_entries();
        if had != wanted {
            carried.take(dir, name, had)?;
            match fs::remove_file(&path) {
                Ok(()) => retired.push(name),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok((retired, carried))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_maps_hold_every_node_at_its_cap_plus_the_configured_cidrs() {
        let sizes = MapSizes::default();
        assert_eq!(
            sizes.remote_cidrs,
            DEFAULT_MAX_NODES * DEFAULT_CIDRS_PER_NODE
        );
        assert_eq!(
            sizes.cluster_cidrs,
            sizes.remote_cidrs + CONFIGURED_CLUSTER_SLACK
        );
        let small = MapSizes::for_nodes(3, 2);
        assert_eq!((small.remote_cidrs, small.cluster_cidrs), (6, 262));
        // Policy and conntrack keep their own defaults.
        assert_eq!(small.conntrack, MAX_CONNTRACK);
    }

    #[test]
    fn ring_sizes_are_powers_of_two_of_at_least_a_page() {
        assert_eq!(ring_bytes(0), 4096);
        assert_eq!(ring_bytes(4097), 8192);
        assert_eq!(ring_bytes(1 << 20), 1 << 20);
        assert_eq!(ring_bytes(u32::MAX), 1 << 30);
    }

    #[test]
    fn absurd_node_counts_are_bounded_and_zero_means_one() {
        let huge = MapSizes::for_nodes(u32::MAX, 4);
        assert_eq!(huge.remote_cidrs, MAX_PER_NODE_ENTRIES);
        assert_eq!(MapSizes::for_nodes(0, 0).remote_cidrs, 1);
    }
}
