//! Hostile records against the whole pure pipeline (record trust, then the desired state):
//! an honest node's peering, routes and redirects never change because of one.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::bpf::Encryption;
use keyexchange::trust::{admit, Admission, Established, TrustPolicy};

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn record(name: &str, k: u8, cidrs: &[&str], endpoints: &[&str]) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        public_key: key(k),
        listen_port: 51820,
        endpoints: endpoints.iter().map(|e| e.parse().expect("ip")).collect(),
        pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
        rotation: Default::default(),
    }
}

fn live() -> Live {
    Live {
        encryption: Encryption::Enabled,
        strict_mode: true,
        keepalive: None,
        mtu: 1420,
        listen_port: 51820,
        host_encryption: true,
    }
}

/// n1 (this node), n2 and n3, all honest, in the lab's pools.
fn honest() -> (NodeRecord, BTreeMap<String, NodeRecord>) {
    let me = record(
        "n1",
        1,
        &["10.244.1.0/24", "fd00:244:0:1::/64"],
        &["198.18.0.11", "fd00:198::11"],
    );
    let mut records = BTreeMap::new();
    for r in [
        me.clone(),
        record(
            "n2",
            2,
            &["10.244.2.0/24", "fd00:244:0:2::/64"],
            &["198.18.0.12", "fd00:198::12"],
        ),
        record(
            "n3",
            3,
            &["10.244.3.0/24", "fd00:244:0:3::/64"],
            &["198.18.0.13", "fd00:198::13"],
        ),
    ] {
        records.insert(r.name.clone(), r);
    }
    (me, records)
}

fn lab_policy() -> TrustPolicy {
    TrustPolicy {
        cluster_pools: vec![net("10.244.0.0/16"), net("fd00:244::/48")],
        service_ranges: vec![net("10.96.0.0/12")],
        node_subnets: vec![],
    }
}

/// The desired state of n1 from `records`, as a pass computes it, the honest nodes being
/// established (a pass has accepted them before).
fn desired_for(me: &NodeRecord, records: &BTreeMap<String, NodeRecord>) -> Desired {
    let (_, honest) = honest();
    let established = admit(&honest, me, &lab_policy(), &Established::default()).established;
    trusted_with(me, records, &lab_policy(), &established).0
}

fn trusted_with(
    me: &NodeRecord,
    records: &BTreeMap<String, NodeRecord>,
    policy: &TrustPolicy,
    established: &Established,
) -> (Desired, Admission) {
    let live = live();
    let up: BTreeSet<PublicKey> = (1..=20).map(key).collect();
    let inputs = Inputs {
        records,
        me,
        live: &live,
        ifindex: [7, 8],
        mesh_marked: true,
        tunnels_up: &up,
        host_exclude: &[],
        local_pods: BTreeSet::new(),
        pod_interfaces: None,
        pod_sources: BTreeMap::new(),
        guard_interfaces: BTreeSet::new(),
        underlay: "eth0",
    };
    trusted(&inputs, policy, established)
}

/// What an honest pass programs, without the refusal report.
fn programmed(d: &Desired) -> impl PartialEq + std::fmt::Debug {
    (
        d.peers.clone(),
        d.routes.clone(),
        d.redirects.clone(),
        d.host_routes.clone(),
        d.peer_slots.clone(),
    )
}

fn with(
    records: &BTreeMap<String, NodeRecord>,
    hostile: NodeRecord,
) -> BTreeMap<String, NodeRecord> {
    let mut out = records.clone();
    out.insert(hostile.name.clone(), hostile);
    out
}

#[test]
fn a_default_route_pod_cidr_changes_nothing_for_the_honest_nodes() {
    let (me, records) = honest();
    let before = desired_for(&me, &records);
    for cidr in [
        "0.0.0.0/0",
        "::/0",
        "10.0.0.0/8",
        "10.244.0.0/16",
        "10.244.2.0/24",
    ] {
        let evil = record("evil", 66, &[cidr], &["198.18.0.66"]);
        let after = desired_for(&me, &with(&records, evil));
        assert_eq!(programmed(&after), programmed(&before), "pod CIDR {cidr}");
    }
}

#[test]
fn hostile_endpoints_become_no_allowed_ip_and_no_host_route() {
    let (me, records) = honest();
    let before = desired_for(&me, &records);
    for endpoint in [
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "10.244.2.7",
        "198.18.0.12",
        "198.18.0.11",
        "::ffff:127.0.0.1",
    ] {
        let evil = record("evil", 66, &["10.244.66.0/24"], &[endpoint]);
        let after = desired_for(&me, &with(&records, evil));
        // (An honest node's own address keeps the route it had: `programmed` compares them.)
        let honest_address = endpoint.starts_with("198.18.");
        assert!(
            honest_address
                || !after
                    .host_routes
                    .contains_key(&endpoint.parse::<IpAddr>().unwrap()),
            "{endpoint}"
        );
        let evil_peer = after.peers[0].peers.get(&key(66));
        assert!(evil_peer.is_none(), "endpoint {endpoint}: {evil_peer:?}");
        assert_eq!(
            programmed(&after),
            programmed(&before),
            "endpoint {endpoint}"
        );
    }
}

#[test]
fn refusals_are_reported_as_conflicts_and_honest_routes_stay() {
    let (me, records) = honest();
    let evil = record("evil", 66, &["0.0.0.0/0"], &["198.18.0.66"]);
    let after = desired_for(&me, &with(&records, evil));
    assert!(
        after
            .conflicts
            .iter()
            .any(|c| c.contains("\"evil\"") && c.contains("podCIDRs") && c.contains("0.0.0.0/0")),
        "{:?}",
        after.conflicts
    );
    assert_eq!(
        after
            .routes
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![
            "10.244.2.0/24",
            "10.244.3.0/24",
            "fd00:244:0:2::/64",
            "fd00:244:0:3::/64"
        ]
    );
}

#[test]
fn a_plain_routed_cluster_is_protected_too() {
    let (me, records) = honest();
    let (_, honest) = honest();
    let established = admit(&honest, &me, &lab_policy(), &Established::default()).established;
    let mut live_disabled = live();
    live_disabled.encryption = Encryption::Disabled;
    let evil = record("a", 66, &["10.244.2.0/24"], &["198.18.0.66"]);
    let all = with(&records, evil);
    let up = BTreeSet::new();
    let d = trusted(
        &Inputs {
            records: &all,
            me: &me,
            live: &live_disabled,
            ifindex: [7, 8],
            mesh_marked: true,
            tunnels_up: &up,
            host_exclude: &[],
            local_pods: BTreeSet::new(),
            pod_interfaces: None,
            pod_sources: BTreeMap::new(),
            guard_interfaces: BTreeSet::new(),
            underlay: "eth0",
        },
        &lab_policy(),
        &established,
    )
    .0;
    assert_eq!(
        d.plain_routes.get(&net("10.244.2.0/24")),
        Some(&"198.18.0.12".parse().unwrap())
    );
}

/// A hostile record drawn to collide with the honest nodes: copied keys, their CIDRs and
/// addresses, supernets, special addresses, or nothing in common at all.
fn hostile() -> impl proptest::strategy::Strategy<Value = NodeRecord> {
    use proptest::prelude::*;
    let cidr = prop_oneof![
        Just("0.0.0.0/0"),
        Just("::/0"),
        Just("10.244.0.0/16"),
        Just("10.244.2.0/24"),
        Just("10.244.3.128/25"),
        Just("fd00:244:0:2::/64"),
        Just("fd00:244::/48"),
        Just("10.244.90.0/24"),
        Just("10.96.0.0/12"),
    ];
    let endpoint = prop_oneof![
        Just("198.18.0.11"),
        Just("198.18.0.12"),
        Just("fd00:198::13"),
        Just("127.0.0.1"),
        Just("169.254.169.254"),
        Just("fe80::1"),
        Just("10.244.2.1"),
        Just("198.18.0.90"),
    ];
    (
        prop_oneof![Just("a"), Just("evil"), Just("m"), Just("zz")],
        prop_oneof![1u8..=3, 90u8..=99],
        proptest::collection::vec(endpoint, 1..3),
        proptest::collection::vec(cidr, 0..3),
    )
        .prop_map(|(name, k, endpoints, cidrs)| {
            let mut r = record(name, k, &cidrs, &endpoints);
            r.pod_cidrs.sort();
            r.pod_cidrs.dedup();
            r
        })
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(256))]

    /// Whatever hostile records join the established honest ones, every honest peer, route,
    /// redirect and host route stays exactly as it was, and nothing else is steered into
    /// an honest node's pod CIDR or address.
    #[test]
    fn hostile_records_never_change_what_is_programmed_for_honest_nodes(
        hostiles in proptest::collection::vec(hostile(), 1..4),
    ) {
        let (me, records) = honest();
        let before = desired_for(&me, &records);
        let mut all = records.clone();
        for h in hostiles {
            all.entry(h.name.clone()).or_insert(h);
        }
        let after = desired_for(&me, &all);
        for slot in 0..2 {
            for (key, peer) in &before.peers[slot].peers {
                proptest::prop_assert_eq!(after.peers[slot].peers.get(key), Some(peer));
            }
        }
        for (cidr, ifindex) in &before.routes {
            proptest::prop_assert_eq!(after.routes.get(cidr), Some(ifindex));
            proptest::prop_assert_eq!(after.redirects.get(cidr), Some(ifindex));
        }
        for (ip, route) in &before.host_routes {
            proptest::prop_assert_eq!(after.host_routes.get(ip), Some(route));
        }
        let honest_nets: Vec<IpNet> = records
            .values()
            .flat_map(|r| {
                r.pod_cidrs
                    .iter()
                    .copied()
                    .chain(r.endpoints.iter().map(|ip| IpNet::from(*ip)))
            })
            .collect();
        let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
        for peer in after.peers.iter().flat_map(|s| s.peers.values()) {
            if records.values().any(|r| r.public_key == peer.public_key) {
                continue;
            }
            for ip in &peer.allowed_ips {
                proptest::prop_assert!(
                    !honest_nets.iter().any(|h| overlaps(h, ip)),
                    "{} got {ip}", peer.name
                );
            }
        }
    }
}
