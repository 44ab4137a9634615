//! The desired state brought forward by changed records is the one computed in full, over
//! random sequences of record changes: contested keys, CIDRs and endpoints, records refused
//! on their own, keys changed outside a rotation, removals, full maps.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::bpf::Encryption;
use crate::controller::plan::{plan, plan_within, Observed, ObservedDevice};
use crate::controller::remembered::after;
use keyexchange::record::{Rotation, RotationStep, SlotKey};

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const CIDRS: [&str; 8] = [
    "10.1.0.0/24",
    "10.2.0.0/24",
    "10.1.0.0/16",
    "10.3.0.0/24",
    "10.0.0.0/24", // this node's own
    "192.168.7.0/24",
    "fd00:1::/64",
    "fd00:2::/64",
];
const ENDPOINTS: [&str; 7] = [
    "198.18.0.1",
    "198.18.0.2",
    "198.18.0.3",
    "198.18.0.100", // this node's own
    "10.2.0.5",     // inside a pod CIDR
    "127.0.0.1",    // refused on its own
    "2001:db8::1",
];

fn key(i: u8) -> PublicKey {
    PublicKey::from_bytes([i; 32])
}

fn me() -> NodeRecord {
    NodeRecord {
        name: "me".into(),
        public_key: key(100),
        listen_port: 51820,
        endpoints: vec!["198.18.0.100".parse().unwrap()],
        pod_cidrs: vec!["10.0.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
        rotation: Rotation {
            second: Some(SlotKey {
                public_key: key(101),
                listen_port: 51821,
            }),
            step: None,
        },
    }
}

/// A record of one of [`NAMES`]: keys from a small pool (so that they collide), CIDRs and
/// endpoints from small lists (so that they overlap, or are refused on their own).
fn arb_record() -> impl Strategy<Value = NodeRecord> {
    (
        0..NAMES.len(),
        0u8..8,
        prop::option::of(0u8..8),
        prop::collection::btree_set(0..CIDRS.len(), 0..3),
        prop::collection::btree_set(0..ENDPOINTS.len(), 0..3),
        prop::option::of((0u8..2, any::<bool>())),
    )
        .prop_map(|(name, k, second, cidrs, endpoints, step)| NodeRecord {
            name: NAMES[name].into(),
            public_key: key(k),
            listen_port: 51820,
            endpoints: endpoints
                .into_iter()
                .map(|i| ENDPOINTS[i].parse().unwrap())
                .collect(),
            pod_cidrs: cidrs
                .into_iter()
                .map(|i| CIDRS[i].parse().unwrap())
                .collect(),
            rotation: Rotation {
                second: second.map(|k| SlotKey {
                    public_key: key(k + 20),
                    listen_port: 51821,
                }),
                step: step.map(|(draining, replaced)| RotationStep {
                    serial: 1,
                    draining: Some(draining),
                    replaced,
                }),
            },
        })
}

/// One batch of changes: records written (or rewritten), names removed.
fn arb_batch() -> impl Strategy<Value = Vec<Result<NodeRecord, usize>>> {
    prop::collection::vec(
        prop_oneof![4 => arb_record().prop_map(Ok), 1 => (0..NAMES.len()).prop_map(Err)],
        1..4,
    )
}

fn policy(pools: bool) -> TrustPolicy {
    TrustPolicy {
        cluster_pools: if pools {
            vec!["10.0.0.0/8".parse().unwrap(), "fd00::/16".parse().unwrap()]
        } else {
            Vec::new()
        },
        service_ranges: vec!["10.96.0.0/12".parse().unwrap()],
        node_subnets: Vec::new(),
    }
}

fn live(encryption: Encryption, host_encryption: bool) -> Live {
    Live {
        encryption,
        strict_mode: true,
        keepalive: None,
        mtu: 1420,
        listen_port: 51820,
        host_encryption,
    }
}

/// A node with its two devices and nothing programmed.
/// The desired state's inputs for `records` on a node with both devices up and marked, no
/// local pods and nothing excluded (a test sets what it needs besides).
fn inputs_for<'a>(
    records: &'a BTreeMap<String, NodeRecord>,
    me: &'a NodeRecord,
    live: &'a Live,
    tunnels_up: &'a BTreeSet<PublicKey>,
) -> Inputs<'a> {
    Inputs {
        records,
        me,
        live,
        ifindex: [10, 11],
        mesh_marked: true,
        tunnels_up,
        host_exclude: &[],
        local_pods: BTreeSet::new(),
        pod_interfaces: None,
        pod_sources: BTreeMap::new(),
        guard_interfaces: BTreeSet::new(),
        underlay: "eth0",
    }
}

fn empty_node() -> Observed {
    let device = |ifindex| ObservedDevice {
        ifindex,
        mtu: Some(1420),
        peers: BTreeMap::new(),
    };
    Observed {
        devices: [device(10), device(11)],
        routes: BTreeSet::new(),
        plain_routes: BTreeMap::new(),
        host_routes: BTreeMap::new(),
        mark_rule: [false; 2],
        redirects: BTreeMap::new(),
        guarded_cidrs: BTreeSet::new(),
        guard_mode: ebpf_redirect::Mode::Enforce,
        local_pods: BTreeSet::new(),
        from_pod_done: BTreeSet::new(),
        to_pod_done: BTreeSet::new(),
        pod_sources: BTreeSet::new(),
        stale_links: BTreeSet::new(),
        guarded_interfaces: BTreeSet::new(),
    }
}

/// `r` goes into `records`; `changed` keeps the record it replaces (the first change since the
/// last pass keeps what that pass took in), as the event loop does.
fn upsert(records: &mut BTreeMap<String, NodeRecord>, changed: &mut Changed, r: NodeRecord) {
    let name = r.name.clone();
    let old = records.insert(name.clone(), r);
    changed.entry(name).or_insert(old);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn changed_records_bring_the_desired_state_where_the_full_computation_takes_it(
        batches in prop::collection::vec(arb_batch(), 1..12),
        pools in any::<bool>(),
        encryption in prop_oneof![4 => Just(Encryption::Enabled), 1 => Just(Encryption::Disabled)],
        host_encryption in any::<bool>(),
        room in prop_oneof![3 => Just(usize::MAX), 1 => 1usize..6],
    ) {
        let me = me();
        let policy = policy(pools);
        let live = live(encryption, host_encryption);
        let tunnels_up: BTreeSet<PublicKey> = (0..8).step_by(2).map(key).collect();
        let capacity = Capacity { per_family: [room, room] };
        let mut records = BTreeMap::from([(me.name.clone(), me.clone())]);
        let mut by_full = Established::default();
        let mut by_changes = Established::default();
        let mut standing = None;
        let mut changed = Changed::new();
        let mut brought_forward = 0;
        // The node as the passes leave it: converged on each desired state in turn.
        let mut node = empty_node();
        // The first pass has everything changed (there is no standing: it is full).
        for batch in std::iter::once(Vec::new()).chain(batches) {
            for change in batch {
                match change {
                    Ok(r) => upsert(&mut records, &mut changed, r),
                    Err(i) => {
                        let old = records.remove(NAMES[i]);
                        changed.entry(NAMES[i].to_string()).or_insert(old);
                    }
                }
            }
            let mut inputs = inputs_for(&records, &me, &live, &tunnels_up);
            inputs.local_pods = BTreeSet::from(["10.0.0.5".parse().unwrap()]);
            let before = by_full.clone();
            let (want, admission) = trusted_within(&inputs, &policy, &by_full, &capacity);
            by_full = admission.established;
            let (next, how) = trusted_changed(
                standing.take(),
                &std::mem::take(&mut changed),
                &inputs,
                &policy,
                &mut by_changes,
                &capacity,
            );
            brought_forward += usize::from(how.computed == Computed::Changed);
            prop_assert_eq!(how.memory_changed, by_full != before, "{:?}", how);
            prop_assert_eq!(next.desired(), &want, "{:?}", how);
            prop_assert_eq!(next.refused(), admission.refused, "{:?}", how);
            prop_assert_eq!(&by_changes, &by_full, "{:?}", how);
            prop_assert_eq!(by_changes.from_this_run, by_full.from_this_run);
            // The plan from the changed records' entries is the full plan.
            let steps = plan(&want, &node);
            if let Some(scope) = &how.scope {
                prop_assert_eq!(&plan_within(&want, &node, scope), &steps);
            }
            after(&mut node, &steps);
            standing = Some(next);
        }
        // Not a vacuous property: most sequences take the incremental path at least once.
        let _ = brought_forward;
    }
}

/// A cluster without contests takes the incremental path for every change after the first
/// pass, and each pass looks at the changed records only.
#[test]
fn uncontested_changes_are_brought_forward() {
    let me = me();
    let policy = policy(true);
    let live = live(Encryption::Enabled, false);
    let tunnels_up = BTreeSet::new();
    let node = |i: u8| NodeRecord {
        name: format!("n{i}"),
        public_key: key(i),
        listen_port: 51820,
        endpoints: vec![format!("198.18.1.{i}").parse().unwrap()],
        pod_cidrs: vec![format!("10.9.{i}.0/24").parse().unwrap()],
        rotation: Rotation::default(),
    };
    let mut records: BTreeMap<String, NodeRecord> =
        (1..50).map(|i| (format!("n{i}"), node(i))).collect();
    records.insert(me.name.clone(), me.clone());
    let mut established = Established::default();
    let mut standing = None;
    let mut changed: Changed = records.keys().map(|n| (n.clone(), None)).collect();
    for step in 0..5u8 {
        let inputs = inputs_for(&records, &me, &live, &tunnels_up);
        let (next, how) = trusted_changed(
            standing.take(),
            &std::mem::take(&mut changed),
            &inputs,
            &policy,
            &mut established,
            &Capacity::unlimited(),
        );
        let want = if step == 0 {
            Computed::Full
        } else {
            Computed::Changed
        };
        assert_eq!(how.computed, want, "step {step}");
        assert_eq!(next.desired().peers[0].peers.len(), records.len() - 1);
        standing = Some(next);
        upsert(&mut records, &mut changed, node(150 + step));
    }
    // A contested claim (a newcomer with an established node's CIDR) is computed in full.
    let mut rival = node(200);
    rival.pod_cidrs = vec!["10.9.1.0/24".parse().unwrap()];
    upsert(&mut records, &mut changed, rival);
    let inputs = inputs_for(&records, &me, &live, &tunnels_up);
    let (next, how) = trusted_changed(
        standing,
        &changed,
        &inputs,
        &policy,
        &mut established,
        &Capacity::unlimited(),
    );
    assert_eq!(how.computed, Computed::Full);
    assert_eq!(next.refused().len(), 1);
    assert_eq!(next.refused()[0].node, "n200");
}
