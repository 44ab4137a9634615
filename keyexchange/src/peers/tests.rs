//! Tests of the peer computation and diff, with property tests that applying the diff reaches the
//! desired peers.
#![allow(clippy::unwrap_used)]

use super::*;
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
        listen_port: 51820 + u16::from(k),
        endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
        rotation: Default::default(),
    }
}

fn me_dual() -> NodeRecord {
    rec(
        "me",
        1,
        &["198.18.0.1", "fd00:1::1"],
        &["10.244.1.0/24", "fd00:244:1::/64"],
    )
}

/// Peer names, sorted by name.
fn names(set: &PeerSet) -> Vec<&str> {
    let mut names: Vec<&str> = set.peers.values().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    names
}

#[test]
fn empty_and_alone() {
    let me = me_dual();
    assert_eq!(compute_peers([], &me), PeerSet::default());
    assert_eq!(compute_peers([&me], &me), PeerSet::default());
}

#[test]
fn self_excluded_other_included() {
    let me = me_dual();
    let other = rec("n2", 2, &["198.18.0.2"], &["10.244.2.0/24"]);
    let set = compute_peers([&me, &other], &me);
    assert_eq!(names(&set), vec!["n2"]);
    assert!(set.conflicts.is_empty());
    let p = &set.peers[&key(2)];
    assert_eq!(p.endpoint, Some("198.18.0.2:51822".parse().unwrap()));
    assert_eq!(p.allowed_ips, vec![net("10.244.2.0/24")]);
    // A stale record with my name (e.g. old key) is replaced by `me`, not peered.
    let stale_me = rec("me", 9, &["198.18.0.9"], &["10.9.0.0/24"]);
    let set = compute_peers([&stale_me, &other], &me);
    assert_eq!(names(&set), vec!["n2"]);
    assert!(set.conflicts.is_empty());
}

#[test]
fn dual_stack_allowed_ips_normalised_sorted() {
    let me = me_dual();
    let mut other = rec(
        "n2",
        2,
        &["198.18.0.2"],
        &["fd00:244:2::/64", "10.244.2.0/24"],
    );
    other.pod_cidrs.push(net("10.244.2.0/24"));
    let set = compute_peers([&other], &me);
    assert_eq!(
        set.peers[&key(2)].allowed_ips,
        vec![net("10.244.2.0/24"), net("fd00:244:2::/64")]
    );
}

#[test]
fn endpoint_family_selection() {
    let peer = rec(
        "n2",
        2,
        &["fd00:1::2", "198.18.0.2", "198.18.0.22"],
        &["10.244.2.0/24"],
    );
    let v4_me = rec("me", 1, &["198.18.0.1"], &[]);
    let v6_me = rec("me", 1, &["fd00:1::1"], &[]);
    let dual_me = rec("me", 1, &["fd00:1::1", "198.18.0.1"], &[]);
    let ep = |me: &NodeRecord, p: &NodeRecord| compute_peers([p], me).peers[&p.public_key].endpoint;
    assert_eq!(ep(&v4_me, &peer), Some("198.18.0.2:51822".parse().unwrap()));
    assert_eq!(
        ep(&v6_me, &peer),
        Some("[fd00:1::2]:51822".parse().unwrap())
    );
    assert_eq!(
        ep(&dual_me, &peer),
        Some("198.18.0.2:51822".parse().unwrap())
    );
    let v6_peer = rec("n3", 3, &["fd00:1::3"], &[]);
    assert_eq!(
        ep(&dual_me, &v6_peer),
        Some("[fd00:1::3]:51823".parse().unwrap())
    );
    assert_eq!(ep(&v4_me, &v6_peer), None);
    let v4_peer = rec("n4", 4, &["198.18.0.4"], &[]);
    assert_eq!(ep(&v6_me, &v4_peer), None);
}

#[test]
fn duplicate_key_between_peers() {
    let me = me_dual();
    let a = rec("b-node", 5, &["198.18.0.5"], &["10.244.5.0/24"]);
    let b = rec("a-node", 5, &["198.18.0.6"], &["10.244.6.0/24"]);
    let ok = rec("ok", 7, &["198.18.0.7"], &["10.244.7.0/24"]);
    let set = compute_peers([&a, &b, &ok], &me);
    assert_eq!(names(&set), vec!["ok"]);
    assert_eq!(
        set.conflicts,
        vec![Conflict::DuplicateKey {
            key: key(5),
            nodes: vec!["a-node".into(), "b-node".into()]
        }]
    );
    let line = set.conflicts[0].to_string();
    assert!(
        line.contains("a-node, b-node") && line.contains(&key(5).to_string()),
        "{line}"
    );
}

#[test]
fn peer_claiming_my_key_is_excluded() {
    let me = me_dual();
    let thief = rec("thief", 1, &["198.18.0.5"], &["10.244.5.0/24"]);
    let ok = rec("ok", 7, &["198.18.0.7"], &["10.244.7.0/24"]);
    let set = compute_peers([&thief, &ok, &me], &me);
    assert_eq!(names(&set), vec!["ok"]);
    assert_eq!(
        set.conflicts,
        vec![Conflict::DuplicateKey {
            key: key(1),
            nodes: vec!["me".into(), "thief".into()]
        }]
    );
}

#[test]
fn overlapping_cidrs() {
    let me = me_dual();
    // Peer vs peer, identical CIDR.
    let a = rec("a", 2, &["198.18.0.2"], &["10.244.2.0/24"]);
    let b = rec("b", 3, &["198.18.0.3"], &["10.244.2.0/24"]);
    let ok = rec(
        "ok",
        7,
        &["198.18.0.7"],
        &["10.244.7.0/24", "fd00:244:7::/64"],
    );
    let set = compute_peers([&a, &b, &ok], &me);
    assert_eq!(names(&set), vec!["ok"]);
    assert_eq!(
        set.conflicts,
        vec![Conflict::OverlappingCidr {
            nodes: ("a".into(), "b".into()),
            cidrs: (net("10.244.2.0/24"), net("10.244.2.0/24"))
        }]
    );

    // Peer vs me (v6 only overlap).
    let c = rec(
        "c",
        4,
        &["198.18.0.4"],
        &["10.244.4.0/24", "fd00:244:1::/48"],
    );
    let set = compute_peers([&c, &ok], &me);
    assert_eq!(names(&set), vec!["ok"]);
    assert_eq!(
        set.conflicts,
        vec![Conflict::OverlappingCidr {
            nodes: ("c".into(), "me".into()),
            cidrs: (net("fd00:244:1::/48"), net("fd00:244:1::/64"))
        }]
    );

    // /16 containing /24: order of the pair follows node names, cidrs follow nodes.
    let wide = rec("zz-wide", 5, &["198.18.0.5"], &["10.250.0.0/16"]);
    let narrow = rec("aa-narrow", 6, &["198.18.0.6"], &["10.250.3.0/24"]);
    let set = compute_peers([&wide, &narrow, &ok], &me);
    assert_eq!(names(&set), vec!["ok"]);
    assert_eq!(
        set.conflicts,
        vec![Conflict::OverlappingCidr {
            nodes: ("aa-narrow".into(), "zz-wide".into()),
            cidrs: (net("10.250.3.0/24"), net("10.250.0.0/16"))
        }]
    );
    let line = set.conflicts[0].to_string();
    assert!(
        line.contains("10.250.3.0/24") && line.contains("zz-wide"),
        "{line}"
    );

    // Adjacent but not overlapping is fine.
    let adj = rec("adj", 8, &["198.18.0.8"], &["10.244.0.0/24"]);
    let set = compute_peers([&adj, &ok], &me);
    assert_eq!(names(&set), vec!["adj", "ok"]);
    assert!(set.conflicts.is_empty());
}

#[test]
fn wide_cidr_conflicts_with_several_nested() {
    let me = rec("me", 1, &["198.18.0.1"], &["10.1.0.0/24"]);
    let wide = rec("wide", 2, &["198.18.0.2"], &["10.0.0.0/8"]);
    let x = rec("x", 3, &["198.18.0.3"], &["10.2.0.0/24"]);
    let y = rec("y", 4, &["198.18.0.4"], &["10.2.0.128/25"]);
    let set = compute_peers([&wide, &x, &y], &me);
    assert!(set.peers.is_empty());
    let pairs: Vec<_> = set
        .conflicts
        .iter()
        .map(|c| match c {
            Conflict::OverlappingCidr { nodes, .. } => nodes.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        pairs,
        vec![s("me", "wide"), s("wide", "x"), s("wide", "y"), s("x", "y")]
    );
}

#[test]
fn own_nested_cidrs_are_not_a_conflict() {
    let me = me_dual();
    let a = rec("a", 2, &["198.18.0.2"], &["10.8.0.0/16", "10.8.1.0/24"]);
    let set = compute_peers([&a], &me);
    assert_eq!(names(&set), vec!["a"]);
    assert!(set.conflicts.is_empty());
}

fn desired(peers: &[DesiredPeer]) -> PeerSet {
    PeerSet {
        peers: peers.iter().map(|p| (p.public_key, p.clone())).collect(),
        conflicts: vec![],
    }
}

fn dp(k: u8, ep: Option<&str>, ips: &[&str]) -> DesiredPeer {
    DesiredPeer {
        name: format!("n{k}"),
        public_key: key(k),
        endpoint: ep.map(|e| e.parse().unwrap()),
        allowed_ips: normalise(&ips.iter().map(|c| net(c)).collect::<Vec<_>>()),
    }
}

fn as_programmed(p: &DesiredPeer) -> ProgrammedPeer {
    ProgrammedPeer {
        public_key: p.public_key,
        endpoint: p.endpoint,
        allowed_ips: p.allowed_ips.clone(),
        keepalive: None,
    }
}

#[test]
fn diff_empty_and_identical() {
    assert!(diff_peers(&[], &PeerSet::default(), None).is_empty());
    let want = desired(&[dp(1, Some("198.18.0.1:1"), &["10.0.1.0/24", "fd00::/64"])]);
    let have: Vec<_> = want.peers.values().map(as_programmed).collect();
    assert!(diff_peers(&have, &want, None).is_empty());
}

#[test]
fn diff_allowed_ips_order_insensitive() {
    let want = desired(&[dp(1, Some("198.18.0.1:1"), &["10.0.1.0/24", "fd00::/64"])]);
    let have = vec![ProgrammedPeer {
        public_key: key(1),
        endpoint: Some("198.18.0.1:1".parse().unwrap()),
        allowed_ips: vec![net("fd00::/64"), net("10.0.1.0/24"), net("10.0.1.0/24")],
        keepalive: None,
    }];
    assert!(diff_peers(&have, &want, None).is_empty());
}

#[test]
fn diff_endpoint_none_does_not_fight_roaming() {
    let want = desired(&[dp(1, None, &["10.0.1.0/24"])]);
    let have = vec![ProgrammedPeer {
        public_key: key(1),
        endpoint: Some("203.0.113.9:4444".parse().unwrap()),
        allowed_ips: vec![net("10.0.1.0/24")],
        keepalive: None,
    }];
    assert!(diff_peers(&have, &want, None).is_empty());
    // But a desired endpoint differing from the device's is enforced.
    let want = desired(&[dp(1, Some("198.18.0.1:51820"), &["10.0.1.0/24"])]);
    assert_eq!(
        diff_peers(&have, &want, None),
        vec![PeerOp::Update(dp(
            1,
            Some("198.18.0.1:51820"),
            &["10.0.1.0/24"]
        ))]
    );
}

#[test]
fn diff_keepalive_change_updates_the_peer() {
    let want = desired(&[dp(1, Some("198.18.0.1:1"), &["10.0.1.0/24"])]);
    let mut have: Vec<_> = want.peers.values().map(as_programmed).collect();
    have[0].keepalive = Some(25);
    // The device still has the old keepalive: the peer is updated to the wanted one.
    assert_eq!(
        diff_peers(&have, &want, Some(10)),
        vec![PeerOp::Update(want.peers[&key(1)].clone())]
    );
    assert_eq!(
        diff_peers(&have, &want, None),
        vec![PeerOp::Update(want.peers[&key(1)].clone())]
    );
    assert!(diff_peers(&have, &want, Some(25)).is_empty());
    // Off is off, however it is spelled.
    have[0].keepalive = None;
    assert!(diff_peers(&have, &want, Some(0)).is_empty());
}

#[test]
fn diff_one_change_touches_only_that_peer_and_orders_ops() {
    let base = [
        dp(1, Some("198.18.0.1:1"), &["10.0.1.0/24"]),
        dp(2, Some("198.18.0.2:1"), &["10.0.2.0/24"]),
        dp(3, Some("198.18.0.3:1"), &["10.0.3.0/24"]),
    ];
    let have: Vec<_> = base.iter().map(as_programmed).collect();

    let mut changed = base.clone();
    changed[1].allowed_ips.push(net("fd00:2::/64"));
    assert_eq!(
        diff_peers(&have, &desired(&changed), None),
        vec![PeerOp::Update(changed[1].clone())]
    );

    let mut changed = base.clone();
    changed[2].endpoint = Some("198.18.0.33:1".parse().unwrap());
    assert_eq!(
        diff_peers(&have, &desired(&changed), None),
        vec![PeerOp::Update(changed[2].clone())]
    );

    // Remove 1, add 5 and 4 (taking over 1's CIDR), update 3.
    let mut updated3 = base[2].clone();
    updated3.allowed_ips = vec![net("10.0.33.0/24")];
    let want = desired(&[
        base[1].clone(),
        updated3.clone(),
        dp(5, None, &["10.0.5.0/24"]),
        dp(4, None, &["10.0.1.0/24"]),
    ]);
    assert_eq!(
        diff_peers(&have, &want, None),
        vec![
            PeerOp::Remove(key(1)),
            PeerOp::Update(updated3),
            PeerOp::Add(dp(4, None, &["10.0.1.0/24"])),
            PeerOp::Add(dp(5, None, &["10.0.5.0/24"])),
        ]
    );
}

/// Applies ops to a model of the device, with the semantics documented on [`PeerOp`].
fn apply(programmed: &[ProgrammedPeer], ops: &[PeerOp]) -> BTreeMap<PublicKey, ProgrammedPeer> {
    let mut dev: BTreeMap<PublicKey, ProgrammedPeer> = programmed
        .iter()
        .map(|p| (p.public_key, p.clone()))
        .collect();
    for op in ops {
        match op {
            PeerOp::Remove(k) => {
                assert!(dev.remove(k).is_some(), "remove of absent peer");
            }
            PeerOp::Add(p) => {
                assert!(
                    dev.insert(p.public_key, as_programmed(p)).is_none(),
                    "add of existing peer"
                );
            }
            PeerOp::Update(p) => {
                let cur = dev.get_mut(&p.public_key).expect("update of absent peer");
                cur.allowed_ips = p.allowed_ips.clone();
                if p.endpoint.is_some() {
                    cur.endpoint = p.endpoint;
                }
            }
        }
    }
    dev
}

fn mk_net(ip: IpAddr, len: u8) -> IpNet {
    IpNet::new(ip, len).unwrap().trunc()
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (0u8..4, 0u8..4, 16u8..=24)
            .prop_map(|(b, c, len)| mk_net(IpAddr::from([10, b, c, 0]), len)),
        (0u16..4, 0u16..4, 32u8..=64).prop_map(|(b, c, len)| {
            mk_net(
                IpAddr::from(std::net::Ipv6Addr::new(0xfd00, b, c, 0, 0, 0, 0, 0)),
                len,
            )
        }),
    ]
}

fn arb_endpoint() -> impl Strategy<Value = Option<SocketAddr>> {
    proptest::option::of(
        (0u8..3, 1u16..3).prop_map(|(h, port)| SocketAddr::from(([198, 18, 0, h], port))),
    )
}

fn arb_programmed() -> impl Strategy<Value = Vec<ProgrammedPeer>> {
    proptest::collection::btree_map(
        0u8..8,
        (arb_endpoint(), proptest::collection::vec(arb_net(), 0..4)),
        0..6,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, (endpoint, allowed_ips))| ProgrammedPeer {
                public_key: key(k),
                endpoint,
                allowed_ips,
                keepalive: None,
            })
            .collect()
    })
}

fn arb_desired() -> impl Strategy<Value = PeerSet> {
    proptest::collection::btree_map(
        0u8..8,
        (arb_endpoint(), proptest::collection::vec(arb_net(), 0..4)),
        0..6,
    )
    .prop_map(|m| PeerSet {
        peers: m
            .into_iter()
            .map(|(k, (endpoint, ips))| {
                (
                    key(k),
                    DesiredPeer {
                        name: format!("n{k}"),
                        public_key: key(k),
                        endpoint,
                        allowed_ips: normalise(&ips),
                    },
                )
            })
            .collect(),
        conflicts: vec![],
    })
}

proptest! {
    #[test]
    fn applying_diff_reaches_desired(programmed in arb_programmed(), want in arb_desired()) {
        let ops = diff_peers(&programmed, &want, None);
        let dev = apply(&programmed, &ops);
        prop_assert_eq!(dev.keys().collect::<Vec<_>>(), want.peers.keys().collect::<Vec<_>>());
        for (k, p) in &want.peers {
            let got = &dev[k];
            prop_assert_eq!(normalise(&got.allowed_ips), p.allowed_ips.clone());
            if p.endpoint.is_some() {
                prop_assert_eq!(got.endpoint, p.endpoint);
            }
        }
        // Minimality: every op is necessary.
        let before: BTreeMap<_, _> = programmed.iter().map(|p| (p.public_key, p)).collect();
        for op in &ops {
            if let PeerOp::Update(p) = op {
                let old = before[&p.public_key];
                prop_assert!(
                    normalise(&old.allowed_ips) != p.allowed_ips
                        || (p.endpoint.is_some() && p.endpoint != old.endpoint)
                );
            }
        }
        // Ordering: removes, then updates, then adds, each sorted by key.
        let rank = |op: &PeerOp| match op {
            PeerOp::Remove(k) => (0, *k),
            PeerOp::Update(p) => (1, p.public_key),
            PeerOp::Add(p) => (2, p.public_key),
        };
        let ranks: Vec<_> = ops.iter().map(rank).collect();
        let mut sorted = ranks.clone();
        sorted.sort();
        prop_assert_eq!(ranks, sorted);
        // After applying, nothing is left to do.
        let now: Vec<_> = dev.into_values().collect();
        prop_assert!(diff_peers(&now, &want, None).is_empty());
    }

    #[test]
    fn desired_as_programmed_is_a_fixpoint(want in arb_desired()) {
        let have: Vec<_> = want.peers.values().map(as_programmed).collect();
        prop_assert!(diff_peers(&have, &want, None).is_empty());
    }

    #[test]
    fn computed_peers_never_overlap_or_include_me(
        cidrs in proptest::collection::vec(proptest::collection::vec(arb_net(), 0..3), 1..6),
        keys in proptest::collection::vec(0u8..5, 6),
    ) {
        let records: Vec<NodeRecord> = cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| NodeRecord {
                name: format!("n{i}"),
                public_key: key(keys[i]),
                listen_port: 51820,
                endpoints: vec!["198.18.0.1".parse().unwrap()],
                pod_cidrs: c.clone(),
                rotation: Default::default(),
            })
            .collect();
        let me = &records[0];
        let set = compute_peers(&records, me);
        prop_assert!(set.peers.values().all(|p| p.name != me.name && p.public_key != me.public_key));
        let all: Vec<(&str, IpNet)> = set
            .peers
            .values()
            .flat_map(|p| p.allowed_ips.iter().map(move |c| (p.name.as_str(), *c)))
            .chain(normalise(&me.pod_cidrs).into_iter().map(|c| (me.name.as_str(), c)))
            .collect();
        for (i, (na, a)) in all.iter().enumerate() {
            for (nb, b) in &all[i + 1..] {
                if na != nb {
                    prop_assert!(!a.contains(b) && !b.contains(a), "{} {} vs {} {}", na, a, nb, b);
                }
            }
        }
        // Deterministic regardless of input order.
        let reversed: Vec<&NodeRecord> = records.iter().rev().collect();
        prop_assert_eq!(compute_peers(reversed, me), set);
    }
}
