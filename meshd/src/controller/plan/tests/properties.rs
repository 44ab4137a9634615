//! Property tests of the plan: random worlds before and after, a node left by an interrupted
//! pass, every step applied to the model and checked (see the parent module).

use super::*;

/// One node as the registry may say it: its keys (from a small pool, so keys repeat between
/// before and after), which slot it drains, its pod CIDR variant and families.
#[derive(Debug, Clone)]
pub(super) struct NodeSpec {
    present: bool,
    keys: (u8, u8),
    draining: Option<Slot>,
    cidr_variant: u8,
    v6: bool,
}

fn arb_slot() -> impl Strategy<Value = Slot> {
    prop_oneof![Just(Slot::FIRST), Just(Slot::SECOND)]
}

pub(super) fn arb_node() -> impl Strategy<Value = NodeSpec> {
    (
        prop::bool::weighted(0.8),
        (0u8..2, 0u8..2),
        prop::option::weighted(0.3, arb_slot()),
        0u8..2,
        any::<bool>(),
    )
        .prop_map(|(present, keys, draining, cidr_variant, v6)| NodeSpec {
            present,
            keys,
            draining,
            cidr_variant,
            v6,
        })
}

fn record(i: u8, spec: &NodeSpec) -> NodeRecord {
    let octet = i * 4 + spec.cidr_variant;
    let mut pod_cidrs = vec![net(&format!("10.244.{octet}.0/24"))];
    let mut endpoints: Vec<IpAddr> = vec![format!("198.18.0.{i}").parse().unwrap()];
    if spec.v6 {
        pod_cidrs.push(net(&format!("fd00:244:0:{octet:x}::/64")));
        endpoints.push(format!("fd00:198::{i}").parse().unwrap());
    }
    NodeRecord {
        name: format!("n{i}"),
        public_key: key(i * 10 + spec.keys.0),
        listen_port: 51820,
        endpoints,
        pod_cidrs,
        rotation: keyexchange::record::Rotation {
            second: Some(SlotKey {
                public_key: key(i * 10 + 5 + spec.keys.1),
                listen_port: 51821,
            }),
            step: spec.draining.map(|d| RotationStep {
                serial: 1,
                draining: Some(d.into()),
                replaced: false,
            }),
        },
    }
}

/// Everything a desired state is computed from.
#[derive(Debug, Clone)]
pub(super) struct World {
    pub(super) nodes: Vec<NodeSpec>,
    me_draining: Option<Slot>,
    encryption: Encryption,
    strict: bool,
    host_encryption: bool,
    keepalive: Option<u16>,
    mtu: u32,
    tunnels_up: u64,
    pods: u8,
    veth_generation: u8,
    ebpf: bool,
    guards: u8,
}

pub(super) fn arb_world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(arb_node(), 1..5),
        prop::option::weighted(0.3, arb_slot()),
        prop_oneof![
            3 => Just(Encryption::Enabled),
            1 => Just(Encryption::Permissive),
            1 => Just(Encryption::Disabled),
        ],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(None), Just(Some(25))],
        prop_oneof![Just(1420u32), Just(1380)],
        any::<u64>(),
        (0u8..8, 0u8..2),
        any::<bool>(),
        0u8..4,
    )
        .prop_map(
            |(
                nodes,
                me_draining,
                encryption,
                strict,
                host_encryption,
                keepalive,
                mtu,
                tunnels_up,
                (pods, veth_generation),
                ebpf,
                guards,
            )| World {
                nodes,
                me_draining,
                encryption,
                strict,
                host_encryption,
                keepalive,
                mtu,
                tunnels_up,
                pods,
                veth_generation,
                ebpf,
                guards,
            },
        )
}

pub(super) fn desired_of(world: &World) -> Desired {
    let me = record(
        0,
        &NodeSpec {
            present: true,
            keys: (0, 0),
            draining: world.me_draining,
            cidr_variant: 0,
            v6: true,
        },
    );
    let mut records: BTreeMap<String, NodeRecord> = BTreeMap::new();
    records.insert(me.name.clone(), me.clone());
    for (i, spec) in world.nodes.iter().enumerate() {
        if spec.present {
            let r = record(i as u8 + 1, spec);
            records.insert(r.name.clone(), r);
        }
    }
    let tunnels_up: BTreeSet<PublicKey> = (0u8..64)
        .filter(|b| world.tunnels_up & (1 << b) != 0)
        .map(key)
        .collect();
    let live = Live {
        encryption: world.encryption,
        strict_mode: world.strict,
        keepalive: world.keepalive,
        mtu: world.mtu,
        listen_port: 51820,
        host_encryption: world.host_encryption,
    };
    let bits = |n: u8, count: u8| (0..count).filter(move |b| n & (1 << b) != 0);
    let local_pods: BTreeSet<IpAddr> = bits(world.pods, 3)
        .map(|b| format!("10.244.0.{}", b + 2).parse().unwrap())
        .collect();
    let veths: BTreeSet<String> = bits(world.pods, 3).map(|b| format!("veth{b}")).collect();
    // Each veth's pod may send from its addresses; a later generation of a veth (a pod
    // re-created under the same name) has another ifindex, so entries go stale.
    let pod_sources: BTreeMap<String, BTreeSet<PodSource>> = bits(world.pods, 3)
        .map(|b| {
            let ifindex = 100 + u32::from(b) + 10 * u32::from(world.veth_generation);
            let addrs: [IpAddr; 2] = [
                format!("10.244.0.{}", b + 2).parse().unwrap(),
                format!("fd00:244::{}", b + 2).parse().unwrap(),
            ];
            let sources = addrs.map(|addr| PodSource { ifindex, addr });
            (format!("veth{b}"), sources.into_iter().collect())
        })
        .collect();
    let guards: BTreeSet<String> = bits(world.guards, 2)
        .map(|b| format!("eth{}", b + 1))
        .collect();
    desired(&Inputs {
        records: &records,
        me: &me,
        live: &live,
        ifindex: IFINDEX,
        mesh_marked: true,
        tunnels_up: &tunnels_up,
        host_exclude: &[],
        local_pods,
        pod_interfaces: world.ebpf.then_some(veths),
        pod_sources,
        guard_interfaces: guards,
        underlay: "eth0",
    })
}

/// The node a previous (possibly interrupted) pass left: the first `done` steps of the plan
/// from a bare node to `before`.
pub(super) fn node_after(before: &Desired, done: usize) -> Observed {
    let steps = plan(before, &bare_node());
    let done = done.min(steps.len());
    applied(bare_node(), &steps[..done])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_step_is_leak_safe_and_one_pass_converges(
        before in arb_world(),
        after in arb_world(),
        done in prop_oneof![3 => Just(usize::MAX), 1 => 0usize..40],
    ) {
        let node = node_after(&desired_of(&before), done);
        check_pass(&desired_of(&after), &node)?;
    }

    #[test]
    fn settings_changes_alone_are_leak_safe(
        world in arb_world(),
        encryption in prop_oneof![
            Just(Encryption::Enabled),
            Just(Encryption::Permissive),
            Just(Encryption::Disabled),
        ],
        strict in any::<bool>(),
        host_encryption in any::<bool>(),
        keepalive in prop_oneof![Just(None), Just(Some(10)), Just(Some(25))],
    ) {
        let node = node_after(&desired_of(&world), usize::MAX);
        let changed = World { encryption, strict, host_encryption, keepalive, ..world };
        check_pass(&desired_of(&changed), &node)?;
    }

    #[test]
    fn a_converged_node_plans_nothing(world in arb_world()) {
        let want = desired_of(&world);
        let node = node_after(&want, usize::MAX);
        prop_assert!(plan(&want, &node).is_empty());
    }
}
