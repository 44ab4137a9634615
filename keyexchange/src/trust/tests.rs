//! Tests of record trust: each hostile record alone, the established-holder rule, restarts,
//! and property tests that random hostile records never touch an honest node's acceptance.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::record::{Rotation, SlotKey};
use proptest::prelude::*;

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn rec(name: &str, k: u8, endpoints: &[&str], cidrs: &[&str]) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        public_key: key(k),
        listen_port: 51820,
        endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
        rotation: Rotation::default(),
    }
}

fn honest(i: u8) -> NodeRecord {
    rec(
        &format!("n{i}"),
        i,
        &[
            &format!("198.18.0.{}", 10 + i),
            &format!("fd00:198::{}", 10 + i),
        ],
        &[&format!("10.244.{i}.0/24"), &format!("fd00:244:0:{i}::/64")],
    )
}

fn lab_policy() -> TrustPolicy {
    TrustPolicy {
        cluster_pools: vec![net("10.244.0.0/16"), net("fd00:244::/48")],
        service_ranges: vec![net("10.96.0.0/12"), net("fd00:96::/108")],
        node_subnets: vec![],
    }
}

fn map(records: impl IntoIterator<Item = NodeRecord>) -> BTreeMap<String, NodeRecord> {
    records.into_iter().map(|r| (r.name.clone(), r)).collect()
}

fn accepted_names(a: &Admission) -> Vec<&str> {
    a.accepted.keys().map(String::as_str).collect()
}

fn refused_names(a: &Admission) -> Vec<&str> {
    a.refused.iter().map(|r| r.node.as_str()).collect()
}

/// n1 (me), n2, n3, admitted once so n2 and n3 are established.
fn settled(policy: &TrustPolicy) -> (NodeRecord, BTreeMap<String, NodeRecord>, Established) {
    let me = honest(1);
    let records = map([me.clone(), honest(2), honest(3)]);
    let first = admit(&records, &me, policy, &Established::default());
    assert!(first.refused.is_empty(), "{:?}", first.refused);
    (me, records, first.established)
}

fn with(records: &BTreeMap<String, NodeRecord>, extra: NodeRecord) -> BTreeMap<String, NodeRecord> {
    let mut out = records.clone();
    out.insert(extra.name.clone(), extra);
    out
}

#[test]
fn honest_records_are_all_accepted_and_remembered() {
    let (me, records, established) = settled(&lab_policy());
    assert_eq!(
        established.nodes.keys().collect::<Vec<_>>(),
        vec!["n2", "n3"]
    );
    let again = admit(&records, &me, &lab_policy(), &established);
    assert_eq!(accepted_names(&again), vec!["n1", "n2", "n3"]);
    assert_eq!(again.established, established);
}

#[test]
fn a_default_route_pod_cidr_is_refused_alone_with_or_without_pools() {
    for policy in [lab_policy(), TrustPolicy::default()] {
        let (me, records, established) = settled(&policy);
        for cidr in ["0.0.0.0/0", "::/0", "0.0.0.0/1", "8000::/1"] {
            let evil = rec("evil", 66, &["198.18.0.66"], &[cidr]);
            let a = admit(&with(&records, evil), &me, &policy, &established);
            assert_eq!(accepted_names(&a), vec!["n1", "n2", "n3"], "{cidr}");
            assert_eq!(refused_names(&a), vec!["evil"], "{cidr}");
            let r = &a.refused[0];
            assert_eq!(r.field, "podCIDRs");
            assert!(r.to_string().contains(cidr), "{r}");
            assert!(r.to_string().contains("evil"), "{r}");
        }
    }
}

#[test]
fn pod_cidrs_must_lie_in_the_pools_with_a_sane_prefix_and_count() {
    let policy = lab_policy();
    let check = |cidrs: &[&str]| check_record(&rec("x", 9, &["198.18.0.9"], cidrs), &policy);
    assert!(check(&["10.244.9.0/24", "fd00:244:0:9::/64"]).is_ok());
    let outside = check(&["10.245.0.0/24"]).unwrap_err();
    assert!(
        outside.reason.contains("outside the cluster pools"),
        "{outside}"
    );
    let short = check(&["10.0.0.0/7"]).unwrap_err();
    assert!(short.reason.contains("prefix length /7"), "{short}");
    let v6short = check(&["fd00::/16"]).unwrap_err();
    assert!(v6short.reason.contains("prefix length /16"), "{v6short}");
    let many: Vec<String> = (0..=MAX_POD_CIDRS_PER_FAMILY)
        .map(|i| format!("10.244.{}.0/24", 100 + i))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = check(&many).unwrap_err();
    assert!(err.reason.contains("more than"), "{err}");
    assert!(check(&many[..MAX_POD_CIDRS_PER_FAMILY]).is_ok());
    // Endpoints are capped per family too (each is an allowed IP and a host route).
    let eps: Vec<String> = (0..=MAX_ENDPOINTS_PER_FAMILY)
        .map(|i| format!("198.18.1.{}", i + 1))
        .collect();
    let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
    let err = check_record(&rec("x", 9, &eps, &["10.244.9.0/24"]), &policy).unwrap_err();
    assert_eq!(err.field, "endpoints");
    assert!(err.reason.contains("more than"), "{err}");
    let enough = &eps[..MAX_ENDPOINTS_PER_FAMILY];
    assert!(check_record(
        &rec("x", 9, enough, &["10.244.9.0/24", "fd00:244:0:9::/64"]),
        &policy
    )
    .is_ok());
    // Without pools: special ranges and the service range still refuse.
    let open = TrustPolicy {
        cluster_pools: vec![],
        service_ranges: vec![net("10.96.0.0/12")],
        node_subnets: vec![],
    };
    for bad in [
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/8",
        "fe80::/64",
        "10.96.0.0/16",
    ] {
        let r = check_record(&rec("x", 9, &["198.18.0.9"], &[bad]), &open);
        assert!(r.is_err(), "{bad} accepted");
    }
    assert!(check_record(&rec("x", 9, &["198.18.0.9"], &["10.8.0.0/24"]), &open).is_ok());
}

#[test]
fn hostile_endpoints_are_refused() {
    let policy = lab_policy();
    for (endpoint, why) in [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.5", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("10.244.2.7", "cluster pool"),
        ("10.96.0.1", "service range"),
        ("fd00:96::1", "service range"),
    ] {
        let err =
            check_record(&rec("evil", 66, &[endpoint], &["10.244.66.0/24"]), &policy).unwrap_err();
        assert_eq!(err.field, "endpoints");
        assert!(err.reason.contains(why), "{endpoint}: {err}");
    }
}

#[test]
fn another_nodes_address_or_pod_cidr_as_endpoint_is_a_conflict_the_newcomer_loses() {
    for policy in [lab_policy(), TrustPolicy::default()] {
        let (me, records, established) = settled(&policy);
        // n2's address, this node's address, and (without pools) an address in n3's pods.
        for endpoint in ["198.18.0.12", "fd00:198::12", "198.18.0.11", "10.244.3.9"] {
            let evil = rec("a-evil", 66, &[endpoint], &["10.244.66.0/24"]);
            let a = admit(&with(&records, evil), &me, &policy, &established);
            assert_eq!(accepted_names(&a), vec!["n1", "n2", "n3"], "{endpoint}");
            assert_eq!(refused_names(&a), vec!["a-evil"], "{endpoint}");
        }
    }
}

#[test]
fn on_an_overlap_the_established_holder_keeps_its_peering_whatever_the_names() {
    let policy = lab_policy();
    let (me, records, established) = settled(&policy);
    for (name, cidr) in [
        ("a", "10.244.2.0/24"),
        ("zz", "10.244.2.128/25"),
        ("a", "10.244.0.0/20"),
        ("a", "fd00:244:0:3::/80"),
        ("a", "10.244.1.0/24"),
    ] {
        let evil = rec(name, 66, &["198.18.0.66"], &[cidr]);
        let a = admit(&with(&records, evil), &me, &policy, &established);
        assert_eq!(refused_names(&a), vec![name], "{cidr}");
        assert!(a.accepted.contains_key("n2") && a.accepted.contains_key("n3"));
        let r = &a.refused[0];
        assert!(r.holder.is_some(), "{r}");
        assert!(
            r.reason.contains("established") || r.reason.contains("own"),
            "{r}"
        );
    }
}

#[test]
fn a_copied_key_is_refused_and_the_holder_stays() {
    let policy = lab_policy();
    let (me, records, established) = settled(&policy);
    let impostor = rec("impostor", 2, &["198.18.0.99"], &["10.244.77.0/24"]);
    let a = admit(&with(&records, impostor), &me, &policy, &established);
    assert_eq!(refused_names(&a), vec!["impostor"]);
    assert_eq!(a.refused[0].field, "publicKey");
    assert_eq!(a.refused[0].holder.as_deref(), Some("n2"));
    // The second slot's key counts too.
    let mut sneaky = rec("sneaky", 70, &["198.18.0.70"], &["10.244.70.0/24"]);
    sneaky.rotation.second = Some(SlotKey {
        public_key: key(3),
        listen_port: 51821,
    });
    let a = admit(&with(&records, sneaky), &me, &policy, &established);
    assert_eq!(refused_names(&a), vec!["sneaky"]);
    assert_eq!(a.refused[0].field, "secondKey");
}

#[test]
fn an_established_node_that_changes_to_a_conflicting_claim_is_the_newcomer() {
    let policy = lab_policy();
    let (me, records, established) = settled(&policy);
    // n3 now claims n2's CIDR: n3's claim is new, n2's established.
    let grabbing = rec(
        "n3",
        3,
        &["198.18.0.13"],
        &["10.244.3.0/24", "10.244.2.0/25"],
    );
    let a = admit(&with(&records, grabbing), &me, &policy, &established);
    assert_eq!(refused_names(&a), vec!["n3"]);
    assert!(a.accepted.contains_key("n2"));
    // A key rotation (a new key in the step that replaced its slot, nothing contested) keeps
    // a node accepted.
    let mut rotated = rec(
        "n3",
        33,
        &["198.18.0.13", "fd00:198::13"],
        &["10.244.3.0/24", "fd00:244:0:3::/64"],
    );
    rotated.rotation.step = Some(replaced_step(0));
    let a = admit(&with(&records, rotated), &me, &policy, &established);
    assert!(a.refused.is_empty(), "{:?}", a.refused);
}

#[test]
fn newcomers_contesting_each_other_are_both_refused_and_the_rest_unaffected() {
    let policy = lab_policy();
    let (me, records, established) = settled(&policy);
    let x = rec("x", 80, &["198.18.0.80"], &["10.244.80.0/24"]);
    let y = rec("y", 81, &["198.18.0.81"], &["10.244.80.0/23"]);
    let a = admit(&with(&with(&records, x), y), &me, &policy, &established);
    assert_eq!(refused_names(&a), vec!["x", "y"]);
    assert!(a.refused[0].reason.contains("both are refused"));
    assert_eq!(accepted_names(&a), vec!["n1", "n2", "n3"]);
}

#[test]
fn a_newcomer_contesting_only_a_refused_node_is_accepted() {
    let policy = lab_policy();
    let (me, records, established) = settled(&policy);
    // evil loses to n2 (its endpoint); x only overlaps evil's CIDR.
    let evil = rec("evil", 66, &["198.18.0.12"], &["10.244.80.0/23"]);
    let x = rec("x", 80, &["198.18.0.80"], &["10.244.80.0/24"]);
    let a = admit(&with(&with(&records, evil), x), &me, &policy, &established);
    assert_eq!(refused_names(&a), vec!["evil"]);
    assert!(a.accepted.contains_key("x"));
}

#[test]
fn a_restart_with_its_memory_keeps_the_same_decisions() {
    let policy = lab_policy();
    let (me, records, established) = settled(&policy);
    let evil = rec("a", 66, &["198.18.0.66"], &["10.244.2.0/24"]);
    let all = with(&records, evil);
    let running = admit(&all, &me, &policy, &established);
    // The memory goes through its JSON form (the daemon's state file) and back.
    let text = serde_json::to_string(&running.established).unwrap();
    let reloaded: Established = serde_json::from_str(&text).unwrap();
    assert_eq!(reloaded, running.established);
    let restarted = admit(&all, &me, &policy, &reloaded);
    assert_eq!(restarted, running);
    // Without any memory (a new node) nobody gets the contested CIDR.
    let fresh = admit(&all, &me, &policy, &Established::default());
    assert_eq!(refused_names(&fresh), vec!["a", "n2"]);
    assert!(fresh.accepted.contains_key("n3"));
}

#[test]
fn refusal_messages_name_node_field_and_reason() {
    let r = check_record(
        &rec("evil", 66, &["198.18.0.66"], &["0.0.0.0/0"]),
        &lab_policy(),
    )
    .unwrap_err();
    assert_eq!(
        r.to_string(),
        "record of node \"evil\" refused: field podCIDRs: 0.0.0.0/0: prefix length /0 is outside /8../32"
    );
}

/// A hostile record: random name, key, endpoints and CIDRs drawn to collide with the honest
/// nodes' (copied keys, their CIDRs and addresses, supernets, special addresses).
fn hostile() -> impl Strategy<Value = NodeRecord> {
    let cidr = prop_oneof![
        Just("0.0.0.0/0"),
        Just("::/0"),
        Just("10.244.0.0/16"),
        Just("10.244.1.0/24"),
        Just("10.244.2.0/24"),
        Just("10.244.3.128/25"),
        Just("fd00:244:0:2::/64"),
        Just("fd00:244::/48"),
        Just("10.244.90.0/24"),
        Just("10.96.0.0/12"),
        Just("127.0.0.0/8"),
    ];
    let endpoint = prop_oneof![
        Just("198.18.0.11"),
        Just("198.18.0.12"),
        Just("fd00:198::13"),
        Just("127.0.0.1"),
        Just("169.254.169.254"),
        Just("::1"),
        Just("fe80::1"),
        Just("10.244.2.1"),
        Just("198.18.0.90"),
    ];
    (
        prop_oneof![Just("a"), Just("evil"), Just("n0"), Just("zz"), Just("m")],
        prop_oneof![1u8..=3, 90u8..=99],
        proptest::collection::vec(endpoint, 1..3),
        proptest::collection::vec(cidr, 0..3),
    )
        .prop_map(|(name, k, endpoints, cidrs)| {
            let mut r = rec(name, k, &endpoints, &cidrs);
            r.pod_cidrs.sort();
            r.pod_cidrs.dedup();
            r
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever hostile records appear next to the honest, established ones, every honest
    /// node stays accepted, with or without pools configured.
    #[test]
    fn hostile_records_never_affect_an_honest_nodes_acceptance(
        hostiles in proptest::collection::vec(hostile(), 0..5),
        pools in any::<bool>(),
        honest_count in 2u8..5,
    ) {
        let policy = if pools { lab_policy() } else { TrustPolicy::default() };
        let me = honest(1);
        let good = map((1..=honest_count).map(honest));
        let established = admit(&good, &me, &policy, &Established::default()).established;
        let mut all = good.clone();
        for h in hostiles {
            all.entry(h.name.clone()).or_insert(h);
        }
        let a = admit(&all, &me, &policy, &established);
        for name in good.keys() {
            prop_assert!(a.accepted.contains_key(name), "{name} refused: {:?}", a.refused);
        }
        for name in all.keys().filter(|n| !good.contains_key(*n)) {
            // Each hostile record is either refused or, if it contests nothing, accepted.
            let accepted = a.accepted.contains_key(name);
            let refused = a.refused.iter().any(|r| &r.node == name);
            prop_assert!(accepted != refused, "{name}");
        }
        // The decision is stable: the same inputs again, with the new memory, decide the same.
        let again = admit(&all, &me, &policy, &a.established);
        prop_assert_eq!(&again.accepted, &a.accepted);
        // And it never depends on the records' order (maps) or on being asked twice.
        prop_assert_eq!(admit(&all, &me, &policy, &established), a);
    }
}

fn replaced_step(slot: u8) -> crate::record::RotationStep {
    crate::record::RotationStep {
        serial: 7,
        draining: Some(slot),
        replaced: true,
    }
}

fn with_second(mut r: NodeRecord, k: u8) -> NodeRecord {
    r.rotation.second = Some(SlotKey {
        public_key: key(k),
        listen_port: 51821,
    });
    r
}

#[test]
fn an_established_nodes_key_changes_only_through_its_own_rotation() {
    let policy = lab_policy();
    let me = honest(1);
    let records = map([me.clone(), honest(2), with_second(honest(3), 43)]);
    let settled = admit(&records, &me, &policy, &Established::default());
    assert!(settled.refused.is_empty(), "{:?}", settled.refused);

    // Someone rewrites n3's record with a key of its own, no rotation step: refused, and n3
    // keeps its established claims (a newcomer still cannot take its CIDR).
    let hijacked = with_second(rec("n3", 66, &["198.18.0.13"], &["10.244.3.0/24"]), 43);
    let grab = rec("x", 67, &["198.18.0.67"], &["10.244.3.0/25"]);
    let a = admit(
        &with(&with(&records, hijacked.clone()), grab),
        &me,
        &policy,
        &settled.established,
    );
    assert_eq!(refused_names(&a), vec!["n3", "x"], "{:?}", a.refused);
    assert_eq!(a.refused[0].field, "publicKey");
    assert!(
        a.refused[0]
            .reason
            .contains("outside the node's key rotation"),
        "{}",
        a.refused[0].reason
    );
    assert!(a.accepted.contains_key("n2"));
    // The refusal does not wear off: the memory still holds n3's keys on the next pass...
    let again = admit(
        &with(&records, hijacked.clone()),
        &me,
        &policy,
        &a.established,
    );
    assert_eq!(refused_names(&again), vec!["n3"]);
    // ...and once n3's own record is back, it is accepted again.
    let back = admit(&records, &me, &policy, &again.established);
    assert!(back.refused.is_empty(), "{:?}", back.refused);

    // A changed second key, a drain that has not replaced yet, a replaced step of the other
    // slot: all refused.
    let second = with_second(honest(3), 68);
    let mut early = with_second(rec("n3", 69, &["198.18.0.13"], &["10.244.3.0/24"]), 43);
    early.rotation.step = Some(crate::record::RotationStep {
        replaced: false,
        ..replaced_step(0)
    });
    let mut other_slot = early.clone();
    other_slot.rotation.step = Some(replaced_step(1));
    for (bad, field) in [
        (second, "secondKey"),
        (early, "publicKey"),
        (other_slot, "publicKey"),
    ] {
        let a = admit(&with(&records, bad), &me, &policy, &settled.established);
        assert_eq!(refused_names(&a), vec!["n3"], "{:?}", a.refused);
        assert_eq!(a.refused[0].field, field);
    }

    // The rotation itself: slot 0 replaced, then slot 1, then idle with both new keys.
    let mut step0 = with_second(honest(3), 43);
    step0.public_key = key(70);
    step0.rotation.step = Some(replaced_step(0));
    let a0 = admit(
        &with(&records, step0.clone()),
        &me,
        &policy,
        &settled.established,
    );
    assert!(a0.refused.is_empty(), "{:?}", a0.refused);
    let mut step1 = with_second(step0, 71);
    step1.rotation.step = Some(replaced_step(1));
    let a1 = admit(
        &with(&records, step1.clone()),
        &me,
        &policy,
        &a0.established,
    );
    assert!(a1.refused.is_empty(), "{:?}", a1.refused);
    let mut idle = step1;
    idle.rotation.step = None;
    let done = admit(&with(&records, idle), &me, &policy, &a1.established);
    assert!(done.refused.is_empty(), "{:?}", done.refused);

    // The rotation's last write: slot 1 drained (not replaced), then its new key published
    // with the drain lifted. Accepted right after the drain, refused without it.
    let mut drain1 = with_second(step0_of(&records), 43);
    drain1.rotation.step = Some(crate::record::RotationStep {
        replaced: false,
        ..replaced_step(1)
    });
    let d = admit(
        &with(&records, drain1.clone()),
        &me,
        &policy,
        &a0.established,
    );
    assert!(d.refused.is_empty(), "{:?}", d.refused);
    let mut lifted = with_second(drain1, 75);
    lifted.rotation.step = None;
    let l = admit(
        &with(&records, lifted.clone()),
        &me,
        &policy,
        &d.established,
    );
    assert!(l.refused.is_empty(), "{:?}", l.refused);
    let skipped = admit(&with(&records, lifted), &me, &policy, &a0.established);
    assert_eq!(refused_names(&skipped), vec!["n3"], "{:?}", skipped.refused);
    assert_eq!(skipped.refused[0].field, "secondKey");

    // A meshd with one slot that gains its second: a first key, accepted.
    let single = map([me.clone(), honest(2), honest(3)]);
    let s = admit(&single, &me, &policy, &Established::default());
    let upgraded = admit(
        &with(&single, with_second(honest(3), 72)),
        &me,
        &policy,
        &s.established,
    );
    assert!(upgraded.refused.is_empty(), "{:?}", upgraded.refused);
}

/// n3's record from `records` with its slot-0 key replaced by the rotation above (key 70).
fn step0_of(records: &BTreeMap<String, NodeRecord>) -> NodeRecord {
    let mut r = records["n3"].clone();
    r.public_key = key(70);
    r.rotation.step = None;
    r
}

#[test]
fn a_node_back_from_a_restart_takes_keys_rotated_meanwhile() {
    let policy = lab_policy();
    let (me, records, established) = settled(&policy);
    let text = serde_json::to_string(&established).unwrap();
    let reloaded: Established = serde_json::from_str(&text).unwrap();
    assert!(!reloaded.from_this_run);
    // n3 rotated both keys while this node was down: its record is idle with new keys.
    let rotated = rec(
        "n3",
        73,
        &["198.18.0.13", "fd00:198::13"],
        &["10.244.3.0/24", "fd00:244:0:3::/64"],
    );
    let a = admit(&with(&records, rotated.clone()), &me, &policy, &reloaded);
    assert!(a.refused.is_empty(), "{:?}", a.refused);
    assert!(a.established.from_this_run);
    // From then on the new key is the established one.
    let hijacked = rec("n3", 74, &["198.18.0.13"], &["10.244.3.0/24"]);
    let b = admit(&with(&records, hijacked), &me, &policy, &a.established);
    assert_eq!(refused_names(&b), vec!["n3"]);
}

#[test]
fn node_subnet_blocks_lie_in_the_pod_range_and_share_the_subnet_with_endpoints() {
    let policy = TrustPolicy {
        cluster_pools: vec![],
        service_ranges: vec![net("10.96.0.0/12")],
        node_subnets: vec![net("192.168.10.0/24"), net("fd00:10::/112")],
    };
    // Endpoints in the same subnet as the blocks (the nodes' own addresses) are fine.
    let blocks = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("192.168.10.{}/28", 16 * (i + 1)))
            .collect()
    };
    let check = |cidrs: &[String]| {
        let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
        check_record(
            &rec("x", 9, &["192.168.10.5", "fd00:10::5"], &cidrs),
            &policy,
        )
    };
    assert!(check(&blocks(MAX_NODE_SUBNET_BLOCKS_PER_FAMILY - 1)).is_ok());
    // The cap is the node-subnet one, not the per-node-CIDR one.
    assert_eq!(
        TrustPolicy::default().max_pod_cidrs_per_family(),
        MAX_POD_CIDRS_PER_FAMILY
    );
    assert_eq!(
        policy.max_pod_cidrs_per_family(),
        MAX_NODE_SUBNET_BLOCKS_PER_FAMILY
    );
    let mut many = blocks(MAX_NODE_SUBNET_BLOCKS_PER_FAMILY - 1);
    many.push("192.168.10.0/28".into());
    many.push("192.168.11.0/28".into());
    let err = check(&many).unwrap_err();
    assert_eq!(err.field, "podCIDRs");
    assert!(err.reason.contains("more than 16"), "{err}");
    // A block outside the pod range is refused, naming the ranges.
    let err = check(&["192.168.11.16/28".to_string()]).unwrap_err();
    assert!(
        err.reason.contains("outside the node-subnet pod ranges"),
        "{err}"
    );
    // Two nodes: an endpoint inside another node's block is a conflict; the newcomer (no
    // established claims) whose block holds the established node's address is refused alone.
    let me = rec("me", 1, &["192.168.10.2"], &["192.168.10.32/28"]);
    let a = rec("a", 2, &["192.168.10.3"], &["192.168.10.48/28"]);
    let hostile = rec("h", 3, &["192.168.10.4"], &["192.168.10.0/28"]);
    let records: BTreeMap<String, NodeRecord> = [&me, &a, &hostile]
        .into_iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    let established = Established::of([&a]);
    let admission = admit(&records, &me, &policy, &established);
    assert!(admission.accepted.contains_key("a"), "{admission:?}");
    assert!(!admission.accepted.contains_key("h"), "{admission:?}");
    assert_eq!(admission.refused[0].node, "h");
}
