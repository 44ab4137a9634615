#![allow(clippy::unwrap_used)]
use std::collections::{BTreeMap, BTreeSet};

use keyexchange::trust::{Claims, Established};
use keyexchange::{NodeRecord, PublicKey};
use proptest::prelude::*;

use super::*;

fn record(name: &str, i: u32, cidrs: &[&str]) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        public_key: PublicKey::from_bytes([(i % 250) as u8 + 1; 32]),
        listen_port: 51820,
        endpoints: vec![format!("198.18.{}.{}", i / 250, i % 250 + 1)
            .parse()
            .unwrap()],
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        rotation: Default::default(),
    }
}

fn dual(name: &str, i: u32) -> NodeRecord {
    record(
        name,
        i,
        &[
            &format!("10.{}.{}.0/24", 100 + i / 256, i % 256),
            &format!("fd00:{i:x}::/64"),
        ],
    )
}

fn established(names: &[&str]) -> Established {
    Established {
        nodes: names
            .iter()
            .map(|n| (n.to_string(), Claims::default()))
            .collect(),
        from_this_run: true,
    }
}

fn peers(n: u32) -> BTreeMap<String, NodeRecord> {
    (0..n)
        .map(|i| {
            let name = format!("n{i:05}");
            (name.clone(), dual(&name, i))
        })
        .collect()
}

#[test]
fn everyone_fits_when_there_is_room() {
    let mut p = peers(10);
    let refused = refuse_beyond(
        &mut p,
        "me",
        &Established::default(),
        &Capacity::unlimited(),
    );
    assert!(refused.is_empty());
    assert_eq!(p.len(), 10);
}

#[test]
fn established_peers_keep_their_place_and_newcomers_are_refused_by_name() {
    let mut p = peers(5);
    // n00003 and n00004 were programmed by the last pass; room for three peers per family.
    let refused = refuse_beyond(
        &mut p,
        "me",
        &established(&["n00003", "n00004"]),
        &Capacity { per_family: [3, 3] },
    );
    let kept: Vec<&str> = p.keys().map(String::as_str).collect();
    assert_eq!(kept, ["n00000", "n00003", "n00004"]);
    let names: Vec<&str> = refused.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(names, ["n00001", "n00002"]);
    assert!(refused.iter().all(|r| r.field == CAPACITY_FIELD));
    assert!(
        refused[0].reason.contains("--max-nodes"),
        "{}",
        refused[0].reason
    );
}

#[test]
fn this_node_is_never_counted_nor_refused() {
    let mut p = peers(3);
    p.insert("me".into(), dual("me", 99));
    let refused = refuse_beyond(
        &mut p,
        "me",
        &Established::default(),
        &Capacity { per_family: [1, 1] },
    );
    assert_eq!(refused.len(), 2);
    assert!(p.contains_key("me"));
    assert!(p.contains_key("n00000"));
}

#[test]
fn a_peer_fits_only_if_both_families_have_room_and_a_smaller_one_may_fit_after_it() {
    let mut p = BTreeMap::new();
    p.insert(
        "a".to_string(),
        record("a", 1, &["10.1.0.0/24", "10.1.1.0/24"]),
    );
    p.insert("b".to_string(), record("b", 2, &["fd00:2::/64"]));
    p.insert("c".to_string(), record("c", 3, &["10.3.0.0/24"]));
    let refused = refuse_beyond(
        &mut p,
        "me",
        &Established::default(),
        &Capacity { per_family: [1, 1] },
    );
    assert_eq!(
        refused.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(p.keys().map(String::as_str).collect::<Vec<_>>(), ["b", "c"]);
}

#[test]
fn room_is_the_smaller_of_the_redirect_map_and_what_the_cluster_map_has_left() {
    assert_eq!(Capacity::of_maps(100, 120, [10, 30]).per_family, [100, 90]);
    assert_eq!(Capacity::of_maps(100, 5, [10, 0]).per_family, [0, 5]);
}

proptest! {
    /// Whatever the records and the room: what is kept fits, nothing kept is over an
    /// established peer that was refused, and the outcome does not depend on the order the
    /// records arrived in (maps are ordered) nor changes when the pass runs again on its own
    /// result (stable).
    #[test]
    fn kept_peers_fit_and_the_choice_is_stable(
        n in 0u32..60,
        room4 in 0usize..80,
        room6 in 0usize..80,
        est in proptest::collection::btree_set(0u32..60, 0..30),
    ) {
        let all = peers(n);
        let names: Vec<String> = est.iter().map(|i| format!("n{i:05}")).collect();
        let established = established(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let cap = Capacity { per_family: [room4, room6] };
        let mut kept = all.clone();
        let refused = refuse_beyond(&mut kept, "me", &established, &cap);
        prop_assert_eq!(kept.len() + refused.len(), all.len());
        let used: usize = kept.len(); // one CIDR of each family per peer
        prop_assert!(used <= room4 && used <= room6);
        // An established peer is refused only when every kept peer is established too.
        let refused_est = refused.iter().any(|r| established.nodes.contains_key(&r.node));
        if refused_est {
            prop_assert!(kept.keys().all(|k| established.nodes.contains_key(k)));
        }
        // Running again with the kept peers as the established ones keeps all of them.
        let again_est = Established {
            nodes: kept.keys().map(|k| (k.clone(), Claims::default())).collect(),
            from_this_run: true,
        };
        let mut again = all.clone();
        refuse_beyond(&mut again, "me", &again_est, &cap);
        let a: BTreeSet<&String> = again.keys().collect();
        let k: BTreeSet<&String> = kept.keys().collect();
        prop_assert_eq!(a, k);
    }
}
