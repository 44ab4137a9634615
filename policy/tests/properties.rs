//! Property tests of the compiler against the reference evaluator over random worlds:
//! * the compiled maps, evaluated by the datapath model on each node (egress on the source's
//!   node, ingress on the destination's), give the reference's verdict for random packets;
//! * compiling is deterministic and independent of rule and policy order;
//! * the incremental compiler, fed a random sequence of changes, ends with exactly the maps of a
//!   full compile, and each delta touches exactly the endpoints whose entries changed;
//! * other nodes' pods held as address → identity entries (`ipcache`) compile exactly as the
//!   same pods held whole, in a full compile and through the incremental compiler.
//!
//! Run: `cargo test -p meshd-policy --test properties` (debug, about 30 s on 2 loaded cores).

mod common;

use std::collections::BTreeMap;

use common::{endpoints_of, packet, world, RandomPacket, NODES};
use meshd_policy::compile::{compile, compile_endpoint};
use meshd_policy::datapath_model::{self, DatapathPacket};
use meshd_policy::ipcache::RemotePod;
use meshd_policy::maps::{EndpointId, MapDelta, PolicyMaps};
use meshd_policy::model::{Namespace, Pod, PodKey, Policy, World};
use meshd_policy::reference::{self, Endpoint};
use meshd_policy::{Change, Compiler};
use proptest::prelude::*;
use proptest::sample::Index;

/// The datapath's verdict: egress checked with the source node's maps, ingress with the
/// destination node's.
fn datapath_verdict(
    world: &World,
    nodes: &BTreeMap<&str, (BTreeMap<PodKey, EndpointId>, PolicyMaps)>,
    src: &Endpoint,
    dst: &Endpoint,
    protocol: u8,
    port: u16,
) -> bool {
    // Which node an end is local to, and its endpoint id there.
    let local = |end: &Endpoint| match end {
        Endpoint::Pod { pod, .. } => {
            let node = world.pods[pod].node.as_str();
            let (endpoints, maps) = &nodes[node];
            Some((endpoints[pod], maps))
        }
        Endpoint::External(_) => None,
    };
    let packet = |src_endpoint, dst_endpoint| DatapathPacket {
        src: src.address(),
        dst: dst.address(),
        protocol,
        port,
        src_endpoint,
        dst_endpoint,
    };
    let egress =
        local(src).is_none_or(|(id, maps)| datapath_model::allows(maps, &packet(Some(id), None)));
    let ingress =
        local(dst).is_none_or(|(id, maps)| datapath_model::allows(maps, &packet(None, Some(id))));
    egress && ingress
}

proptest! {
    // 10,000 random worlds per run, each with 24 random packets (240,000 verdicts): about 25 s
    // in a debug build on this 2-core machine under load.
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_datapath_agrees_with_the_reference(
        world in world(),
        packets in proptest::collection::vec(packet(), 24),
    ) {
        let mut nodes = BTreeMap::new();
        for node in NODES {
            let endpoints = endpoints_of(&world, node);
            let compiled = compile(&world, &endpoints);
            // Random worlds stay far below the rule limit.
            prop_assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
            nodes.insert(node, (endpoints, compiled.maps));
        }
        for RandomPacket { src, dst, v6, protocol, port } in &packets {
            let (Some(src), Some(dst)) = (src.endpoint(&world, *v6), dst.endpoint(&world, *v6)) else {
                continue;
            };
            let expected = reference::allowed(&world, &src, &dst, *protocol, *port);
            let got = datapath_verdict(&world, &nodes, &src, &dst, *protocol, *port);
            prop_assert_eq!(got, expected, "{:?} -> {:?} proto {} port {}", src, dst, protocol, port);
        }
    }
}

proptest! {
    // 2,000 worlds: compile twice, and with every policy's rules and peers reversed.
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn compile_is_deterministic_and_order_independent(world in world()) {
        let endpoints = endpoints_of(&world, NODES[0]);
        let first = compile(&world, &endpoints);
        prop_assert_eq!(&compile(&world, &endpoints), &first);
        let mut reversed = world.clone();
        for policy in reversed.policies.values_mut() {
            for rules in [&mut policy.ingress, &mut policy.egress] {
                rules.reverse();
                for rule in rules.iter_mut() {
                    rule.peers.reverse();
                    rule.ports.reverse();
                }
            }
        }
        prop_assert_eq!(&compile(&reversed, &endpoints), &first);
        // Built policy by policy in reverse order through the incremental compiler.
        let mut compiler = Compiler::new();
        for ns in world.namespaces.values() {
            compiler.apply(Change::UpsertNamespace(ns.clone()));
        }
        for pod in world.pods.values() {
            compiler.apply(Change::UpsertPod((**pod).clone()));
        }
        for (pod, id) in &endpoints {
            compiler.apply(Change::AttachEndpoint { pod: pod.clone(), endpoint: *id });
        }
        for policy in world.policies.values().rev() {
            compiler.apply(Change::UpsertPolicy(policy.clone()));
        }
        prop_assert_eq!(compiler.maps(), first.maps);
    }
}

/// A change picked from a pool of random objects.
#[derive(Clone, Debug)]
enum Step {
    Namespace(usize),
    RemoveNamespace(usize),
    Pod(usize),
    RemovePod(usize),
    Policy(usize),
    RemovePolicy(usize),
    Attach(Index),
    Detach(Index),
    /// Remote node `0` (of two) holds the pool's pods whose bit is set in `1`, as entries.
    Remote(usize, u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0usize..3).prop_map(Step::Namespace),
        2 => (0usize..3).prop_map(Step::RemoveNamespace),
        4 => (0usize..8).prop_map(Step::Pod),
        1 => (0usize..8).prop_map(Step::RemovePod),
        4 => (0usize..8).prop_map(Step::Policy),
        1 => (0usize..8).prop_map(Step::RemovePolicy),
        2 => any::<Index>().prop_map(Step::Attach),
        1 => any::<Index>().prop_map(Step::Detach),
        3 => (0usize..2, any::<u8>()).prop_map(|(node, mask)| Step::Remote(node, mask)),
    ]
}

/// Pools the steps draw from: 3 namespace versions, 8 pod versions over 5 pod identities,
/// 8 policy versions over 4 policy identities (so upserts also change existing objects).
#[allow(clippy::type_complexity)]
fn pools() -> impl Strategy<Value = (Vec<Namespace>, Vec<Pod>, Vec<Policy>)> {
    (
        (
            common::namespace("n0"),
            common::namespace("n1"),
            common::namespace("n2"),
        ),
        proptest::collection::vec((0usize..5).prop_flat_map(common::pod), 8),
        proptest::collection::vec((0usize..4).prop_flat_map(common::policy), 8),
    )
        .prop_map(|((a, b, c), pods, policies)| (vec![a, b, c], pods, policies))
}

proptest! {
    // 2,000 random sequences of 24 changes, each delta checked against two full compiles.
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full_compile(
        (namespaces, pods, policies) in pools(),
        steps in proptest::collection::vec(step(), 1..24),
    ) {
        let mut compiler = Compiler::new();
        let mut maps = PolicyMaps::default();
        for step in steps {
            let change = match step {
                Step::Namespace(i) => Change::UpsertNamespace(namespaces[i].clone()),
                Step::RemoveNamespace(i) => Change::RemoveNamespace(namespaces[i].name.clone()),
                Step::Pod(i) => Change::UpsertPod(pods[i].clone()),
                Step::RemovePod(i) => Change::RemovePod(pods[i].key.clone()),
                Step::Policy(i) => Change::UpsertPolicy(policies[i].clone()),
                Step::RemovePolicy(i) => Change::RemovePolicy(policies[i].key.clone()),
                Step::Attach(i) => {
                    // Ids from the pool position: distinct pods never share one.
                    let position = i.index(pods.len());
                    Change::AttachEndpoint {
                        pod: pods[position].key.clone(),
                        endpoint: EndpointId(10 + position as u32),
                    }
                }
                Step::Detach(i) => Change::DetachEndpoint(i.get(&pods).key.clone()),
                Step::Remote(node, mask) => Change::SetNodeEndpoints {
                    node: format!("remote-{node}"),
                    pods: pods
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << i) != 0)
                        .map(|(_, pod)| RemotePod::of(pod.clone()))
                        .collect(),
                },
            };
            let before = compile(compiler.world(), compiler.endpoints());
            let delta = compiler.apply(change);
            let after = compile(compiler.world(), compiler.endpoints());
            maps.apply(&delta);
            prop_assert_eq!(&maps, &after.maps);
            prop_assert_eq!(&compiler.maps(), &after.maps);
            prop_assert_eq!(compiler.errors(), after.errors);
            // The delta touches exactly the endpoints whose entries changed.
            let changed: std::collections::BTreeSet<EndpointId> = MapDelta::between(&before.maps, &after.maps).endpoints();
            prop_assert_eq!(delta.endpoints(), changed);
        }
        // And each endpoint's entries are those of compiling it alone.
        for (pod, id) in compiler.endpoints() {
            let alone = compile_endpoint(compiler.world(), pod, *id);
            let mut own = compiler.maps();
            own.isolation.retain(|k, _| k.endpoint == id.0);
            own.peer_v4.retain(|k, _| k.endpoint == id.0);
            own.peer_v6.retain(|k, _| k.endpoint == id.0);
            own.ports.retain(|k, _| k.endpoint == id.0);
            prop_assert_eq!(own, alone.maps);
        }
    }
}

/// `world` with every pod not on `node` held as another node's entries instead of a pod, and
/// the changes that build it through the incremental compiler.
fn with_remote_entries(world: &World, node: &str) -> (World, Vec<Change>) {
    let mut remote = world.clone();
    let mut by_node: BTreeMap<String, Vec<RemotePod>> = BTreeMap::new();
    for pod in world.pods.values().filter(|p| p.node != node) {
        remote.pods.remove(&pod.key);
        by_node
            .entry(pod.node.to_string())
            .or_default()
            .push(RemotePod::of((**pod).clone()));
    }
    let changes: Vec<Change> = by_node
        .into_iter()
        .map(|(node, pods)| Change::SetNodeEndpoints { node, pods })
        .collect();
    for change in &changes {
        if let Change::SetNodeEndpoints { node, pods } = change {
            remote.remote.set_node(node, pods.clone());
        }
    }
    (remote, changes)
}

proptest! {
    // 2,000 worlds, each compiled for both nodes with the other node's pods as entries.
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn remote_entries_compile_as_the_pods_they_stand_for(world in world()) {
        for node in NODES {
            let endpoints = endpoints_of(&world, node);
            let whole = compile(&world, &endpoints);
            let (remote, changes) = with_remote_entries(&world, node);
            prop_assert_eq!(&compile(&remote, &endpoints), &whole);
            // Through the incremental compiler, the entries arriving last.
            let mut compiler = Compiler::new();
            for ns in world.namespaces.values() {
                compiler.apply(Change::UpsertNamespace(ns.clone()));
            }
            for pod in remote.pods.values() {
                compiler.apply(Change::UpsertPod((**pod).clone()));
            }
            for (pod, id) in &endpoints {
                compiler.apply(Change::AttachEndpoint { pod: pod.clone(), endpoint: *id });
            }
            for policy in world.policies.values() {
                compiler.apply(Change::UpsertPolicy(policy.clone()));
            }
            let mut maps = compiler.maps();
            for change in changes {
                maps.apply(&compiler.apply(change));
            }
            prop_assert_eq!(&maps, &whole.maps);
            prop_assert_eq!(compiler.maps(), whole.maps);
        }
    }
}
