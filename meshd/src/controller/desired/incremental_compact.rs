//! The standing state built again in blocks of its own, after a pass that computed it in
//! full. Pure: no I/O, no logging.
//!
//! A full computation builds the desired state and the claim index in the middle of the
//! pass's transient data (every record copied twice, the plan's steps, the devices' dumps):
//! once those are freed, the blocks that stay are scattered over pages that are otherwise
//! empty, and each such page stays resident. Built again from its sorted entries once the
//! pass is over, the standing state fills its B-trees' nodes and shares pages with itself.
//! Contents unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keyexchange::peers::PeerSet;

use super::{ClaimIndex, Desired, Name, Standing};

/// A map built again, entry by entry, from its sorted entries (full nodes, fresh blocks).
fn fresh_map<K: Ord + Clone, V: Clone>(m: &BTreeMap<K, V>) -> BTreeMap<K, V> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A set built again from its sorted items.
fn fresh_set<T: Ord + Clone>(s: &BTreeSet<T>) -> BTreeSet<T> {
    s.iter().cloned().collect()
}

fn fresh_peers(p: &PeerSet) -> PeerSet {
    PeerSet {
        peers: fresh_map(&p.peers),
        conflicts: p.conflicts.clone(),
    }
}

/// `want` built again in fresh blocks.
fn fresh_desired(want: &Desired) -> Desired {
    Desired {
        peers: [fresh_peers(&want.peers[0]), fresh_peers(&want.peers[1])],
        keepalive: want.keepalive,
        routes: fresh_map(&want.routes),
        redirects: fresh_map(&want.redirects),
        plain_routes: fresh_map(&want.plain_routes),
        host_routes: fresh_map(&want.host_routes),
        guard_mode: want.guard_mode,
        mtu: want.mtu,
        local_pods: fresh_set(&want.local_pods),
        pod_interfaces: want.pod_interfaces.as_ref().map(fresh_set),
        pod_sources: want
            .pod_sources
            .iter()
            .map(|(veth, sources)| (veth.clone(), fresh_set(sources)))
            .collect(),
        guard_interfaces: fresh_set(&want.guard_interfaces),
        underlay: want.underlay.clone(),
        peer_slots: fresh_map(&want.peer_slots),
        conflicts: fresh_set(&want.conflicts),
    }
}

/// `index` built again in fresh blocks, each node's name allocated once anew.
fn fresh_index(index: &ClaimIndex) -> ClaimIndex {
    fn renamed<'a>(names: &mut BTreeMap<&'a str, Name>, n: &'a Name) -> Name {
        Arc::clone(names.entry(&**n).or_insert_with(|| Name::from(&**n)))
    }
    let mut names = BTreeMap::new();
    // Pairs collected in order, so the sets are built from sorted sequences.
    let keys: Vec<_> = (index.keys.iter())
        .map(|(k, n)| (*k, renamed(&mut names, n)))
        .collect();
    let nets: Vec<_> = (index.nets.iter())
        .map(|(net, n)| (*net, renamed(&mut names, n)))
        .collect();
    ClaimIndex {
        keys: keys.into_iter().collect(),
        nets: nets.into_iter().collect(),
        lengths: fresh_map(&index.lengths),
        contested: index
            .contested
            .iter()
            .map(|(node, rivals)| (node.clone(), fresh_set(rivals)))
            .collect(),
    }
}

impl Standing {
    /// Builds the desired state and the claim index again in fresh blocks (see the module
    /// docs). Call it once the pass that computed them in full has dropped its transient data.
    pub fn compact(&mut self) {
        self.desired = fresh_desired(&self.desired);
        self.index = fresh_index(&self.index);
        self.refused = fresh_map(&self.refused);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_fresh_index_holds_the_same_pairs_with_one_name_per_node() {
        let mut index = ClaimIndex::default();
        let (a, b): (Name, Name) = (Name::from("n1"), Name::from("n2"));
        for i in 0..40u8 {
            let name = if i % 2 == 0 { &a } else { &b };
            index.keys.insert((
                keyexchange::PublicKey::from_bytes([i; 32]),
                Arc::clone(name),
            ));
            index.nets.insert((
                format!("10.244.{i}.0/24").parse().unwrap(),
                Arc::clone(name),
            ));
        }
        index.lengths.insert((false, 24), 40);
        index
            .contested
            .insert("n1".into(), BTreeSet::from(["n2".to_string()]));
        let fresh = fresh_index(&index);
        assert_eq!(fresh.keys, index.keys);
        assert_eq!(fresh.nets, index.nets);
        assert_eq!(fresh.lengths, index.lengths);
        assert_eq!(fresh.contested, index.contested);
        // Every pair of a node shares the node's one new name, not the old one.
        let first = fresh.keys.iter().find(|(_, n)| &**n == "n1").unwrap();
        assert!(!Arc::ptr_eq(&first.1, &a));
        let n1 = fresh
            .keys
            .iter()
            .map(|(_, n)| n)
            .chain(fresh.nets.iter().map(|(_, n)| n))
            .filter(|n| &***n == "n1");
        for n in n1 {
            assert!(Arc::ptr_eq(n, &first.1));
        }
    }
}
