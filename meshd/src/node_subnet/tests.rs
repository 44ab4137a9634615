#![allow(clippy::unwrap_used)]
use std::collections::{BTreeMap, BTreeSet, HashSet};

use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config(ranges: &[&str]) -> NodeSubnetConfig {
    NodeSubnetConfig {
        ranges: ranges.iter().map(|r| net(r)).collect(),
        block_v4: DEFAULT_BLOCK_V4,
        block_v6: DEFAULT_BLOCK_V6,
        headroom: 4,
        settle: secs(2),
        release_grace: secs(30),
    }
}

fn observed<'a>(
    now: Duration,
    others: &'a BTreeMap<String, Vec<IpNet>>,
    nodes: &'a [IpAddr],
    in_use: &'a [IpAddr],
) -> Observed<'a> {
    Observed {
        now,
        others,
        node_addresses: nodes,
        in_use,
    }
}

/// The lowest address the CNI would hand out in `blocks`, not in `taken`.
fn cni_pick(blocks: &[IpNet], taken: &HashSet<IpAddr>) -> Option<IpAddr> {
    blocks
        .iter()
        .find_map(|b| meshd_cni::ipam::first_free(*b, taken))
}

#[test]
fn configuration_is_checked() {
    assert_eq!(config(&["10.0.0.0/24", "fd00::/112"]).validate(), Ok(()));
    let two = config(&["10.0.0.0/24", "10.0.1.0/24"]);
    assert!(matches!(
        two.validate(),
        Err(NodeSubnetError::TwoRanges { .. })
    ));
    let mut wide = config(&["10.0.0.0/29"]);
    assert!(matches!(
        wide.validate(),
        Err(NodeSubnetError::BadBlock { block: 28, .. })
    ));
    // /30 blocks hold one pod each: 110 pods need far more than the cap.
    wide = config(&["10.0.0.0/24"]);
    wide.block_v4 = 30;
    assert_eq!(
        wide.validate(),
        Err(NodeSubnetError::BlockTooSmall { block: 30 })
    );
    let err = NodeSubnetError::BlockTooSmall { block: 30 }.to_string();
    assert!(err.contains("/30") && err.contains("110"), "{err}");
}

#[test]
fn a_node_claims_settles_fills_claims_again_and_releases_what_empties() {
    let mut a = Allocator::new("n1", config(&["10.0.0.0/24", "fd00::/112"]));
    let others = BTreeMap::new();
    let nodes = [ip("10.0.0.10"), ip("fd00::10")];
    // Nothing held: one block of each family, pending.
    let s = a.step(&observed(secs(0), &others, &nodes, &[]));
    assert_eq!(s.changes.len(), 2, "{s:?}");
    assert!(s.problems.is_empty());
    assert_eq!(a.blocks().len(), 2);
    assert!(a.usable().is_empty(), "a pending block is not usable");
    for b in a.blocks() {
        assert_eq!(b.prefix_len(), b.max_prefix_len() - 4);
        assert!(!nodes.iter().any(|n| b.contains(n)));
    }
    // No second claim while one is pending, settled after the settle period.
    assert!(a
        .step(&observed(secs(1), &others, &nodes, &[]))
        .changes
        .is_empty());
    let s = a.step(&observed(secs(2), &others, &nodes, &[]));
    assert_eq!(
        s.changes
            .iter()
            .filter(|c| matches!(c, Change::Settled(_)))
            .count(),
        2
    );
    assert_eq!(a.usable(), a.blocks());
    // Fill the IPv4 block up to the headroom (13 usable addresses, 4 kept): a second block.
    let v4 = a.usable()[0];
    let mut pods: Vec<IpAddr> = Vec::new();
    let mut taken = HashSet::new();
    for _ in 0..9 {
        let p = cni_pick(&[v4], &taken).unwrap();
        taken.insert(p);
        pods.push(p);
    }
    assert!(a
        .step(&observed(secs(3), &others, &nodes, &pods))
        .changes
        .is_empty());
    let p = cni_pick(&[v4], &taken).unwrap();
    pods.push(p);
    let s = a.step(&observed(secs(4), &others, &nodes, &pods));
    let [Change::Claimed(second)] = s.changes[..] else {
        panic!("{s:?}")
    };
    assert!(second.addr().is_ipv4() && second != v4);
    a.step(&observed(secs(6), &others, &nodes, &pods));
    assert!(a.usable().contains(&second));
    // The pods go: after the grace period one IPv4 block is released, never both.
    let s = a.step(&observed(secs(10), &others, &nodes, &[]));
    assert!(s.changes.is_empty(), "{s:?}");
    let s = a.step(&observed(secs(40), &others, &nodes, &[]));
    assert_eq!(
        s.changes
            .iter()
            .filter(|c| matches!(c, Change::Released(_)))
            .count(),
        1,
        "{s:?}"
    );
    assert_eq!(a.blocks().len(), 2, "one block of each family stays");
}

#[test]
fn simultaneous_claims_of_one_block_leave_it_to_the_smaller_name() {
    let cfg = config(&["10.0.0.0/24"]);
    // Make both nodes pick the same block: the other node's start is not taken into account
    // because neither has published yet.
    let mut a = Allocator::new("n1", cfg.clone());
    let mut b = Allocator::new("n2", cfg.clone());
    let none = BTreeMap::new();
    a.step(&observed(secs(0), &none, &[], &[]));
    b.step(&observed(secs(0), &none, &[], &[]));
    // Force the collision: n2 claims what n1 claimed.
    b.held[0].block = a.held[0].block;
    let x = a.held[0].block;
    let seen_by_a = BTreeMap::from([("n2".to_string(), b.blocks())]);
    let seen_by_b = BTreeMap::from([("n1".to_string(), a.blocks())]);
    let sa = a.step(&observed(secs(1), &seen_by_a, &[], &[]));
    let sb = b.step(&observed(secs(1), &seen_by_b, &[], &[]));
    assert!(sa.changes.is_empty(), "{sa:?}");
    assert_eq!(
        sb.changes[0],
        Change::Yielded {
            block: x,
            to: "n1".into()
        }
    );
    // n2 claims elsewhere in the same step; n1 settles once n2's record no longer has x.
    assert!(matches!(sb.changes[1], Change::Claimed(c) if c != x));
    let seen_by_a = BTreeMap::from([("n2".to_string(), b.blocks())]);
    let sa = a.step(&observed(secs(2), &seen_by_a, &[], &[]));
    assert_eq!(sa.changes, vec![Change::Settled(x)]);
}

#[test]
fn a_contested_pending_block_yields_even_to_a_greater_name_after_the_settle_period() {
    let cfg = config(&["10.0.0.0/24"]);
    let mut a = Allocator::new("n1", cfg);
    a.step(&observed(secs(0), &BTreeMap::new(), &[], &[]));
    let x = a.blocks()[0];
    // n9 holds x settled (it claimed it first; n1 did not see it in time).
    let others = BTreeMap::from([("n9".to_string(), vec![x])]);
    assert!(a
        .step(&observed(secs(1), &others, &[], &[]))
        .changes
        .is_empty());
    let s = a.step(&observed(secs(3), &others, &[], &[]));
    assert_eq!(
        s.changes[0],
        Change::Yielded {
            block: x,
            to: "n9".into()
        }
    );
}

#[test]
fn a_settled_block_with_pods_is_kept_and_the_conflict_reported() {
    let cfg = config(&["10.0.0.0/24"]);
    let x = net("10.0.0.32/28");
    let mut a = Allocator::resume("n2", cfg, &[x, net("10.9.0.0/28")], secs(0));
    assert_eq!(a.usable(), vec![x], "a block outside the range is dropped");
    let others = BTreeMap::from([("n1".to_string(), vec![x])]);
    let pods = [ip("10.0.0.34")];
    let s = a.step(&observed(secs(1), &others, &[], &pods));
    assert_eq!(a.usable(), vec![x]);
    assert!(matches!(
        s.problems[..],
        [NodeSubnetError::ContestedWithPods { pods: 1, .. }]
    ));
    // Without pods it yields to the smaller name.
    let s = a.step(&observed(secs(2), &others, &[], &[]));
    assert!(matches!(&s.changes[0], Change::Yielded { block, .. } if *block == x));
}

#[test]
fn blocks_never_hold_a_node_address_and_the_cap_is_kept() {
    let range = net("10.0.0.0/26");
    // Node addresses in three of the four /28s: only the last is free.
    let nodes = [ip("10.0.0.1"), ip("10.0.0.17"), ip("10.0.0.47")];
    for name in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            choose_block(range, 28, &[], &nodes, name).unwrap(),
            net("10.0.0.48/28")
        );
    }
    assert_eq!(
        choose_block(range, 28, &[net("10.0.0.48/28")], &nodes, "a"),
        Err(NodeSubnetError::Exhausted { range, block: 28 })
    );
    let blocks: Vec<IpNet> = (0..MAX_BLOCKS_PER_FAMILY as u8)
        .map(|i| net(&format!("10.1.0.{}/28", i * 16)))
        .collect();
    let mut a = Allocator::resume("n1", config(&["10.1.0.0/16"]), &blocks, secs(0));
    let full: Vec<IpAddr> = blocks
        .iter()
        .flat_map(|b| b.hosts().collect::<Vec<_>>())
        .collect();
    let s = a.step(&observed(secs(1), &BTreeMap::new(), &[], &full));
    assert!(matches!(s.problems[..], [NodeSubnetError::AtCap { .. }]));
    assert_eq!(a.blocks().len(), MAX_BLOCKS_PER_FAMILY);
}

#[test]
fn starts_spread_over_the_range() {
    let range = net("10.0.0.0/16");
    let picks: BTreeSet<IpNet> = (0..50)
        .map(|i| choose_block(range, 28, &[], &[], &format!("node-{i}")).unwrap())
        .collect();
    assert!(picks.len() >= 45, "{picks:?}");
}

/// Eight nodes starting at once in a range of eight blocks, each seeing the others one tick
/// late: several pick the same block, every race is resolved by yielding, and all end up
/// with a settled block of their own.
#[test]
fn nodes_starting_together_race_for_blocks_and_settle_apart() {
    let cfg = NodeSubnetConfig {
        ranges: vec![net("10.0.0.0/25")],
        settle: secs(1),
        ..config(&[])
    };
    let mut nodes: Vec<Allocator> = same_start_names(8, 8)
        .into_iter()
        .map(|name| Allocator::new(name, cfg.clone()))
        .collect();
    let mut yields = 0;
    for tick in 0..12 {
        let published: BTreeMap<String, Vec<IpNet>> = nodes
            .iter()
            .map(|a| (a.node().to_string(), a.blocks()))
            .collect();
        for a in &mut nodes {
            let mut others = published.clone();
            others.remove(a.node());
            let step = a.step(&observed(secs(tick), &others, &[], &[]));
            yields += step
                .changes
                .iter()
                .filter(|c| matches!(c, Change::Yielded { .. }))
                .count();
        }
    }
    assert!(yields > 0, "no race happened: the test shows nothing");
    let settled: Vec<IpNet> = nodes.iter().flat_map(Allocator::usable).collect();
    assert_eq!(settled.len(), 8, "{settled:?}");
    let distinct: BTreeSet<IpNet> = settled.iter().copied().collect();
    assert_eq!(distinct.len(), 8, "{settled:?}");
}

/// `n` node names whose walks over a range of `blocks` blocks all start at the same block
/// (the worst case: every node starting at once picks the same one).
fn same_start_names(n: usize, blocks: u64) -> Vec<String> {
    let names: Vec<String> = (0..)
        .map(|k| format!("node-{k}"))
        .filter(|name| fnv1a(name).is_multiple_of(blocks))
        .take(n)
        .collect();
    assert_eq!(names.len(), n);
    names
}

/// One simulated node: its allocator and its pods.
struct SimNode {
    alloc: Allocator,
    address: IpAddr,
    pods: Vec<IpAddr>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Nodes sharing a /25 with their own addresses in it, each seeing the others' records
    /// one tick late (so simultaneous claims collide), pods coming and going at random.
    #[test]
    fn settled_blocks_never_overlap_and_only_empty_blocks_are_given_up(
        n in 2usize..6,
        settle in 1u64..4,
        ops in proptest::collection::vec((0usize..6, any::<bool>()), 1..160),
    ) {
        let range = net("10.0.0.0/25");
        let cfg = NodeSubnetConfig {
            ranges: vec![range],
            block_v4: 28,
            block_v6: 124,
            headroom: 2,
            settle: secs(settle),
            release_grace: secs(3),
        };
        // Every node's walk starts at the same block of the 8: simultaneous claims collide.
        let names = same_start_names(n, 8);
        let name = |i: usize| names[i].clone();
        let mut nodes: Vec<SimNode> = (0..n).map(|i| SimNode {
            alloc: Allocator::new(name(i), cfg.clone()),
            address: IpAddr::from([10, 0, 0, (i * 23 + 5) as u8]),
            pods: Vec::new(),
        }).collect();
        let addresses: Vec<IpAddr> = nodes.iter().map(|s| s.address).collect();
        for (tick, (who, add)) in ops.into_iter().enumerate() {
            let now = secs(tick as u64);
            // The registry as published at the end of the last tick.
            let published: BTreeMap<String, Vec<IpNet>> = nodes
                .iter()
                .map(|s| (s.alloc.node().to_string(), s.alloc.blocks()))
                .collect();
            // A pod comes or goes on one node (taking the CNI's lowest free address).
            let k = who % n;
            if add {
                let taken: HashSet<IpAddr> = nodes[k].pods.iter().copied().collect();
                if let Some(p) = cni_pick(&nodes[k].alloc.usable(), &taken) {
                    nodes[k].pods.push(p);
                }
            } else {
                nodes[k].pods.pop();
            }
            for s in &mut nodes {
                let mut others = published.clone();
                others.remove(s.alloc.node());
                let before = s.alloc.blocks();
                let step = s.alloc.step(&observed(now, &others, &addresses, &s.pods));
                for c in &step.changes {
                    match c {
                        Change::Released(b) | Change::Yielded { block: b, .. } => {
                            prop_assert!(before.contains(b));
                            prop_assert!(
                                !s.pods.iter().any(|p| b.contains(p)),
                                "{} gave up {b} with pods in it: {:?}", s.alloc.node(), s.pods
                            );
                        }
                        Change::Claimed(b) => {
                            prop_assert!(range.contains(b) && b.prefix_len() == 28);
                            prop_assert!(!addresses.iter().any(|a| b.contains(a)), "{b} holds a node address");
                        }
                        Change::Settled(_) => {}
                    }
                }
                prop_assert!(s.alloc.blocks().len() <= MAX_BLOCKS_PER_FAMILY);
            }
            // Settled blocks of different nodes never overlap; every pod is in a settled block
            // of its node, so no address is handed out twice.
            for (i, a) in nodes.iter().enumerate() {
                for b in &nodes[i + 1..] {
                    for x in a.alloc.usable() {
                        for y in b.alloc.usable() {
                            prop_assert!(!overlaps(&x, &y), "{} and {} both settled {x}/{y}", a.alloc.node(), b.alloc.node());
                        }
                    }
                }
                for p in &a.pods {
                    prop_assert!(a.alloc.usable().iter().any(|b| b.contains(p)), "{p} outside {:?}", a.alloc.usable());
                }
            }
        }
    }
}
