//! The incremental path: a pass for record changes plans against what the last pass left
//! ([`crate::controller::remembered::after`]) instead of reading the node. These properties
//! check that the memory is what the model of the kernel holds after the same steps, and that
//! a sequence of record changes handled from memory ends where full passes end.

use super::properties::{arb_node, arb_world, desired_of, node_after, World};
use super::*;
use crate::controller::remembered::after;

/// A full pass and the memory it leaves: `node` read, planned, applied, brought forward.
fn full_pass(want: &Desired, node: &Observed) -> (Observed, Observed) {
    let steps = plan(want, node);
    let mut memory = node.clone();
    after(&mut memory, &steps);
    (applied(node.clone(), &steps), memory)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_is_what_the_steps_leave_on_the_node(
        before in arb_world(),
        later in arb_world(),
        done in prop_oneof![3 => Just(usize::MAX), 1 => 0usize..40],
    ) {
        let node = node_after(&desired_of(&before), done);
        let steps = plan(&desired_of(&later), &node);
        let mut memory = node.clone();
        after(&mut memory, &steps);
        prop_assert_eq!(memory, applied(node, &steps));
    }

    #[test]
    fn record_changes_from_memory_end_where_full_passes_end(
        first in arb_world(),
        changes in prop::collection::vec(prop::collection::vec(arb_node(), 1..5), 1..6),
        done in prop_oneof![3 => Just(usize::MAX), 1 => 0usize..40],
    ) {
        // A node left by some earlier (possibly interrupted) pass; a full pass on start.
        let start = node_after(&desired_of(&first), done);
        let (mut node, mut memory) = full_pass(&desired_of(&first), &start);
        let mut by_full_passes = node.clone();
        for nodes in changes {
            // Only the records change: the settings, pods and ways out stay.
            let mut world: World = first.clone();
            world.nodes = nodes;
            let want = desired_of(&world);
            by_full_passes = applied(by_full_passes.clone(), &plan(&want, &by_full_passes));
            let steps = plan(&want, &memory);
            node = applied(node, &steps);
            after(&mut memory, &steps);
            prop_assert_eq!(&memory, &node);
            prop_assert_eq!(&node, &by_full_passes);
            prop_assert!(plan(&want, &node).is_empty(), "not converged");
        }
    }
}

/// Drift nothing reports (a route deleted behind meshd's back) is invisible to a pass from
/// memory, and repaired by the next full pass, which reads the node.
#[test]
fn drift_is_repaired_by_the_full_pass() {
    let want = wanting(peer_set(&[(
        key(1),
        "n1",
        &["10.244.1.0/24", "fd00:244:0:1::/64"],
    )]));
    let (mut node, memory) = full_pass(&want, &bare_node());
    assert!(plan(&want, &node).is_empty());
    // Drift: the IPv4 route and the peer on slot 0 vanish.
    node.routes.remove(&(net("10.244.1.0/24"), IFINDEX[0]));
    node.devices[0].peers.clear();
    assert!(plan(&want, &memory).is_empty(), "memory does not see drift");
    let (repaired, memory) = full_pass(&want, &node);
    assert!(plan(&want, &repaired).is_empty());
    assert_eq!(memory, repaired);
    assert!(repaired
        .routes
        .contains(&(net("10.244.1.0/24"), IFINDEX[0])));
    assert!(repaired.devices[0].peers.contains_key(&key(1)));
}

/// An allowed IP given to one peer leaves the peer that held it, in memory as in the kernel.
#[test]
fn an_allowed_ip_moves_between_peers_in_memory() {
    let mut node = bare_node();
    node.devices[0].peers.insert(
        key(1),
        programmed(key(1), &["10.244.1.0/24", "10.244.2.0/24"], None),
    );
    let steps = vec![Step::UpsertPeer {
        slot: Slot::FIRST,
        peer: netlink::PeerConfig {
            public_key: *key(2).as_bytes(),
            endpoint: None,
            allowed_ips: vec![net("10.244.2.0/24")],
            persistent_keepalive: None,
        },
    }];
    let mut memory = node.clone();
    after(&mut memory, &steps);
    assert_eq!(
        memory.devices[0].peers[&key(1)].allowed_ips.to_vec(),
        vec![net("10.244.1.0/24")]
    );
    assert_eq!(
        memory.devices[0].peers[&key(2)].allowed_ips.to_vec(),
        vec![net("10.244.2.0/24")]
    );
    assert_eq!(memory, applied(node, &steps));
}

/// A plan large enough that memory's B-trees are built again after it (a cold pass at scale)
/// leaves exactly what the kernel holds, a peer with more allowed IPs than are kept in place
/// included.
#[test]
fn a_large_plan_leaves_memory_as_the_kernel_holds_it() {
    let node = bare_node();
    let mut steps = Vec::new();
    for i in 0..300u16 {
        let [hi, lo] = i.to_be_bytes();
        let cidr = net(&format!("10.{}.{lo}.0/24", 100 + hi));
        let mut allowed_ips = vec![cidr, net(&format!("fd00:{i:x}::/64"))];
        if i % 7 == 0 {
            allowed_ips.extend([
                net(&format!("198.18.{hi}.{lo}/32")),
                net(&format!("fd01::{i:x}/128")),
                net(&format!("198.19.{hi}.{lo}/32")),
            ]);
        }
        steps.push(Step::UpsertPeer {
            slot: Slot::FIRST,
            peer: netlink::PeerConfig {
                public_key: [
                    hi, lo, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                    1, 1, 1, 1, 1, 1,
                ],
                endpoint: None,
                allowed_ips,
                persistent_keepalive: None,
            },
        });
        steps.push(Step::AddRoute {
            cidr,
            ifindex: IFINDEX[0],
            replacing: None,
        });
        steps.push(Step::SetRedirect {
            cidr,
            ifindex: IFINDEX[0],
        });
    }
    let mut memory = node.clone();
    after(&mut memory, &steps);
    assert_eq!(memory.devices[0].peers.len(), 300);
    assert_eq!(memory.routes.len(), 300);
    assert_eq!(memory.redirects.len(), 300);
    let spilled = PublicKey::from_bytes([
        0, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1,
    ]);
    assert_eq!(memory.devices[0].peers[&spilled].allowed_ips.len(), 5);
    assert_eq!(memory, applied(node, &steps));
}
