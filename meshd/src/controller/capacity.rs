//! Map capacity: which accepted peers fit in the per-node maps. Pure: no I/O.
//!
//! Every pod CIDR of a peer takes one entry of its family's redirect map (`REMOTE_*`) and one
//! learned entry of the guard's cluster map (`CLUSTER_*`), both sized from `--max-nodes` times
//! the per-record cap ([`keyexchange::trust::MAX_POD_CIDRS_PER_FAMILY`], so no single record
//! can exhaust a map). When the maps cannot hold every accepted peer, the peers that do not
//! fit are refused, one by one, and the rest of the pass goes on: a full map never fails the
//! pass, and never costs this node its own pods.
//!
//! Which peers fit is deterministic and stable: peers accepted by the last pass (established)
//! come first, then new ones, each group by name; each peer takes its entries if both of its
//! families still have room, otherwise it is refused (field `capacity`) and the next one is
//! tried. So a newcomer never pushes out a programmed peer, and every node with the same view
//! of the registry refuses the same newcomers.

use std::collections::BTreeMap;

use ipnet::IpNet;
use keyexchange::trust::{Established, Refusal};
use keyexchange::NodeRecord;

/// The field named by a capacity refusal (status `refused`, metric `records_refused`).
pub const CAPACITY_FIELD: &str = "capacity";

/// Entries the per-node maps have left for peers' pod CIDRs, per family (`[IPv4, IPv6]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Free entries for peer pod CIDRs: `[IPv4, IPv6]`.
    pub per_family: [usize; 2],
}

impl Capacity {
    /// No limit (tests, and callers without a datapath).
    pub fn unlimited() -> Self {
        Self {
            per_family: [usize::MAX; 2],
        }
    }

    /// The room for peers' pod CIDRs of each family, given the maps' sizes and what they hold
    /// besides peers' pod CIDRs (`others`: configured cluster CIDRs and learned entries of
    /// nodes that are gone, per family). The redirect and cluster maps both take an entry per
    /// CIDR: the smaller room counts.
    pub fn of_maps(remote_size: u32, cluster_size: u32, others: [usize; 2]) -> Self {
        let remote = remote_size as usize;
        let cluster = cluster_size as usize;
        Self {
            per_family: others.map(|held| remote.min(cluster.saturating_sub(held))),
        }
    }
}

fn family(cidr: &IpNet) -> usize {
    match cidr {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

/// The entries `record` takes, per family.
fn demand(record: &NodeRecord) -> [usize; 2] {
    let mut d = [0; 2];
    for c in &record.pod_cidrs {
        d[family(c)] += 1;
    }
    d
}

/// Splits the accepted `peers` (this node's own record, named `me`, is never a peer and
/// always kept) into those that fit `capacity` and refusals for the rest (see the module
/// docs for the order). Returns the refusals, sorted by node.
pub fn refuse_beyond(
    peers: &mut BTreeMap<String, NodeRecord>,
    me: &str,
    established: &Established,
    capacity: &Capacity,
) -> Vec<Refusal> {
    let (known, new): (Vec<&String>, Vec<&String>) = peers
        .keys()
        .filter(|n| n.as_str() != me)
        .partition(|n| established.nodes.contains_key(n.as_str()));
    let mut left = capacity.per_family;
    let mut refused = Vec::new();
    for name in known.into_iter().chain(new) {
        let need = demand(&peers[name]);
        if need[0] <= left[0] && need[1] <= left[1] {
            left[0] -= need[0];
            left[1] -= need[1];
            continue;
        }
        refused.push(Refusal {
            node: name.clone(),
            field: CAPACITY_FIELD,
            reason: format!(
                "the datapath maps are full: {} IPv4 and {} IPv6 pod CIDRs asked, room for {} and {} (raise --max-nodes)",
                need[0], need[1], left[0], left[1]
            ),
            holder: None,
        });
    }
    for r in &refused {
        peers.remove(&r.node);
    }
    refused.sort_by(|a, b| a.node.cmp(&b.node));
    refused
}

#[cfg(test)]
#[path = "capacity_tests.rs"]
mod tests;
