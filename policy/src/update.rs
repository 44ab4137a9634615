//! The order in which to write a [`MapDelta`] into the live maps so that no packet is ever
//! judged by a mixture of old and new entries that allows more than the old or the new maps do.
//!
//! Map updates are one syscall per entry, so the tc program sees every intermediate state, and
//! an endpoint-direction's bits may be renumbered by a change. [`ordered_ops`] writes:
//! 1. isolation changes (a direction becoming isolated denies at once; one becoming open
//!    allows at once, which is the new verdict);
//! 2. port-trie deletions, of every key deleted or changed (deleting a key the map does not hold
//!    is a no-op: ignore `ENOENT`). A port entry's bits only grow with its prefix length (there is
//!    no "except" for ports), so a missing entry falls back to one with fewer bits: the verdict
//!    can only shrink. What remains are entries equal in the old and new maps, whose bits every
//!    lookup then shares with both the old and the new answer;
//! 3. peer-trie upserts, longest prefix first: an address then finds either its old longest
//!    entry with its old value or its new longest entry with its new value, never a stale
//!    shorter one;
//! 4. peer-trie deletions, shortest prefix first, for the same reason;
//! 5. port-trie upserts (any order: the peers are new, and every intermediate port answer is a
//!    subset of the new one).
//!
//! So at every step each endpoint-direction admits a subset of what the old maps or the new maps
//! admit (property-tested). New connections of a changed endpoint-direction may be refused
//! while steps 2–5 run (fail closed for a few map writes); established flows are the
//! connection-tracking's business.

use crate::maps::{
    IsolationKey, IsolationValue, LpmKey, MapDelta, PeerKeyV4, PeerKeyV6, PolicyMaps, PortKey,
    RuleBits,
};

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Insert or overwrite a `POLICY_ISOLATION` entry.
    UpsertIsolation(IsolationKey, IsolationValue),
    /// Delete a `POLICY_ISOLATION` entry.
    DeleteIsolation(IsolationKey),
    /// Insert or overwrite a `POLICY_PEER_V4` entry.
    UpsertPeerV4(PeerKeyV4, RuleBits),
    /// Delete a `POLICY_PEER_V4` entry.
    DeletePeerV4(PeerKeyV4),
    /// Insert or overwrite a `POLICY_PEER_V6` entry.
    UpsertPeerV6(PeerKeyV6, RuleBits),
    /// Delete a `POLICY_PEER_V6` entry.
    DeletePeerV6(PeerKeyV6),
    /// Insert or overwrite a `POLICY_PORT` entry.
    UpsertPort(PortKey, RuleBits),
    /// Delete a `POLICY_PORT` entry (absent: no-op).
    DeletePort(PortKey),
}

impl MapOp {
    /// Performs the write on `maps` (the model of the live maps).
    pub fn apply(&self, maps: &mut PolicyMaps) {
        match *self {
            MapOp::UpsertIsolation(k, v) => {
                maps.isolation.insert(k, v);
            }
            MapOp::DeleteIsolation(k) => {
                maps.isolation.remove(&k);
            }
            MapOp::UpsertPeerV4(k, v) => {
                maps.peer_v4.insert(k, v);
            }
            MapOp::DeletePeerV4(k) => {
                maps.peer_v4.remove(&k);
            }
            MapOp::UpsertPeerV6(k, v) => {
                maps.peer_v6.insert(k, v);
            }
            MapOp::DeletePeerV6(k) => {
                maps.peer_v6.remove(&k);
            }
            MapOp::UpsertPort(k, v) => {
                maps.ports.insert(k, v);
            }
            MapOp::DeletePort(k) => {
                maps.ports.remove(&k);
            }
        }
    }
}

/// Keys sorted by prefix length, longest first (`longest_first`) or shortest first.
fn by_prefix_len<K: LpmKey>(keys: impl Iterator<Item = K>, longest_first: bool) -> Vec<K> {
    let mut keys: Vec<K> = keys.collect();
    keys.sort_by_key(|k| k.prefix_len());
    if longest_first {
        keys.reverse();
    }
    keys
}

/// The writes of `delta` in the safe order described in the module doc.
pub fn ordered_ops(delta: &MapDelta) -> Vec<MapOp> {
    let mut ops = Vec::new();
    ops.extend(
        delta
            .isolation
            .delete
            .iter()
            .map(|k| MapOp::DeleteIsolation(*k)),
    );
    ops.extend(
        delta
            .isolation
            .upsert
            .iter()
            .map(|(k, v)| MapOp::UpsertIsolation(*k, *v)),
    );
    ops.extend(
        delta
            .ports
            .delete
            .iter()
            .chain(delta.ports.upsert.keys())
            .map(|k| MapOp::DeletePort(*k)),
    );
    for key in by_prefix_len(delta.peer_v4.upsert.keys().copied(), true) {
        ops.push(MapOp::UpsertPeerV4(key, delta.peer_v4.upsert[&key]));
    }
    for key in by_prefix_len(delta.peer_v6.upsert.keys().copied(), true) {
        ops.push(MapOp::UpsertPeerV6(key, delta.peer_v6.upsert[&key]));
    }
    ops.extend(
        by_prefix_len(delta.peer_v4.delete.iter().copied(), false)
            .into_iter()
            .map(MapOp::DeletePeerV4),
    );
    ops.extend(
        by_prefix_len(delta.peer_v6.delete.iter().copied(), false)
            .into_iter()
            .map(MapOp::DeletePeerV6),
    );
    ops.extend(
        delta
            .ports
            .upsert
            .iter()
            .map(|(k, v)| MapOp::UpsertPort(*k, *v)),
    );
    ops
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::compile::compile;
    use crate::datapath_model::direction_allows;
    use crate::e2e_model::{policy, port, with, world};
    use crate::maps::EndpointId;
    use crate::model::{Direction, LabelSelector, Peer, PodKey, Protocol, Rule};

    /// A block with an except joins a rule's bit: written shortest first, the block would admit
    /// the except's addresses until the except's entry arrives; deleted longest first, after the
    /// except's entry is gone.
    #[test]
    fn an_except_is_written_before_and_deleted_after_its_block() {
        let allow_80_from = |name: &str, peer: Peer| {
            let mut p = policy("x", name, LabelSelector::labels([("pod", "a")]));
            p.ingress.push(Rule {
                peers: vec![peer],
                ports: vec![port(Protocol::Tcp, 80)],
            });
            p
        };
        let from_b = allow_80_from(
            "from-b",
            Peer::Pods {
                namespace_selector: None,
                pod_selector: Some(LabelSelector::labels([("pod", "b")])),
            },
        );
        let block = allow_80_from(
            "block",
            Peer::IpBlock {
                cidr: "10.0.0.0/16".parse().expect("literal"),
                except: vec!["10.0.0.0/28".parse().expect("literal")],
            },
        );
        let old_world = with(world(), from_b);
        let new_world = with(old_world.clone(), block);
        let endpoints: BTreeMap<PodKey, EndpointId> =
            [(PodKey::new("x", "a"), EndpointId(1))].into();
        let old = compile(&old_world, &endpoints).maps;
        let new = compile(&new_world, &endpoints).maps;
        let x_c = "10.0.0.3".parse().expect("literal");
        let admits = |maps: &PolicyMaps| {
            direction_allows(maps, EndpointId(1), Direction::Ingress, x_c, 6, 80)
        };
        assert!(!admits(&old) && !admits(&new));
        // Adding the block (upserts), then removing it (deletes).
        for (from, to) in [(&old, &new), (&new, &old)] {
            let mut live = from.clone();
            for op in ordered_ops(&MapDelta::between(from, to)) {
                op.apply(&mut live);
                assert!(!admits(&live), "x/c admitted after {op:?}");
            }
            assert_eq!(&live, to);
        }
    }
}
