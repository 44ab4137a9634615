//! Unit tests of the desired state's pure parts (moved from `reconcile.rs`).
#![allow(clippy::unwrap_used)]
use super::*;
use keyexchange::peers::DesiredPeer;
use keyexchange::PrivateKey;

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn desired(entries: &[(PublicKey, &str, &[&str])]) -> PeerSet {
    let mut set = PeerSet::default();
    for (key, name, cidrs) in entries {
        set.peers.insert(
            *key,
            DesiredPeer {
                name: (*name).to_string(),
                public_key: *key,
                endpoint: Some("198.18.0.12:51820".parse().expect("addr")),
                allowed_ips: cidrs.iter().map(|c| net(c)).collect(),
            },
        );
    }
    set
}

fn record(name: &str, key: PublicKey, cidrs: &[&str], endpoints: &[&str]) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        public_key: key,
        listen_port: 51820,
        endpoints: endpoints.iter().map(|e| e.parse().expect("ip")).collect(),
        pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
        rotation: Default::default(),
    }
}

#[test]
fn node_addresses_are_allowed_but_never_routed_or_redirected() {
    let k = PrivateKey::generate().public_key();
    let mut want = desired(&[(k, "n2", &["10.244.2.0/24", "fd00:244:0:2::/64"])]);
    let r = record(
        "n2",
        k,
        &["10.244.2.0/24", "fd00:244:0:2::/64"],
        &["198.18.0.12", "fd00:198::12"],
    );
    let hosts = add_host_addresses(&mut want, [&r]);
    assert_eq!(
        hosts,
        [net("198.18.0.12/32"), net("fd00:198::12/128")]
            .into_iter()
            .collect()
    );
    let allowed = &want.peers[&k].allowed_ips;
    assert!(allowed.contains(&net("198.18.0.12/32")) && allowed.contains(&net("10.244.2.0/24")));
    let me = record(
        "n1",
        PrivateKey::generate().public_key(),
        &[],
        &["198.18.0.11"],
    );
    let wants = [want.clone(), PeerSet::default()];
    let slots = peer_slots([&r], &me, &wants);
    let routes = steering(&wants, &slots, [7, 8], &hosts);
    assert_eq!(
        routes.keys().copied().collect::<Vec<_>>(),
        vec![net("10.244.2.0/24"), net("fd00:244:0:2::/64")]
    );
    // An endpoint inside some pod CIDR is not added (it would steal that CIDR's traffic).
    let mut want2 = desired(&[(k, "n2", &["10.244.2.0/24"])]);
    let inside = record("n2", k, &["10.244.2.0/24"], &["10.244.2.9"]);
    assert!(add_host_addresses(&mut want2, [&inside]).is_empty());
}

#[test]
fn the_api_servers_endpoints_are_excluded_not_just_the_service_address() {
    let a = PrivateKey::generate().public_key();
    let wants = [
        desired(&[(a, "cp1", &["10.244.2.0/24"])]),
        PeerSet::default(),
    ];
    // A control-plane node that is also a peer: the API server listens on its InternalIP.
    let cp = record("cp1", a, &["10.244.2.0/24"], &["198.18.0.12"]);
    let me = record(
        "n1",
        PrivateKey::generate().public_key(),
        &[],
        &["198.18.0.11"],
    );
    let slots = peer_slots([&cp], &me, &wants);
    let live: BTreeSet<PublicKey> = [a].into_iter().collect();
    let hosts = |exclude: &[std::net::IpAddr]| {
        encrypted_hosts([&cp], &me, &wants, &slots, &live, exclude, [9, 10])
    };
    // In a pod the kubeconfig's server is the `kubernetes` Service's ClusterIP: excluding
    // it alone leaves the API server's real address in the tunnel.
    let cluster_ip: std::net::IpAddr = "10.96.0.1".parse().expect("ip");
    let endpoint: std::net::IpAddr = "198.18.0.12".parse().expect("ip");
    assert!(hosts(&host_exclusions(&[cluster_ip], None)).contains_key(&endpoint));
    // With the Service's endpoints, it never goes through the tunnel.
    let api: BTreeSet<std::net::IpAddr> = [endpoint].into_iter().collect();
    let exclude = host_exclusions(&[cluster_ip], Some(&api));
    assert_eq!(exclude, vec![cluster_ip, endpoint]);
    assert!(hosts(&exclude).is_empty());
    // No duplicates when a flag already names it.
    assert_eq!(host_exclusions(&[endpoint], Some(&api)), vec![endpoint]);
}

#[test]
fn only_live_peers_addresses_are_encrypted_and_exclusions_hold() {
    let (a, b) = (
        PrivateKey::generate().public_key(),
        PrivateKey::generate().public_key(),
    );
    let want = desired(&[(a, "n2", &["10.244.2.0/24"]), (b, "n3", &["10.244.3.0/24"])]);
    let ra = record(
        "n2",
        a,
        &["10.244.2.0/24"],
        &["198.18.0.12", "fd00:198::12"],
    );
    let rb = record("n3", b, &["10.244.3.0/24"], &["198.18.0.13"]);
    let live: BTreeSet<PublicKey> = [a].into_iter().collect();
    let me = record(
        "n1",
        PrivateKey::generate().public_key(),
        &[],
        &["198.18.0.11"],
    );
    let wants = [want, PeerSet::default()];
    let slots = peer_slots([&ra, &rb], &me, &wants);
    let got = encrypted_hosts(
        [&ra, &rb],
        &me,
        &wants,
        &slots,
        &live,
        &["fd00:198::12".parse().expect("ip")],
        [9, 10],
    );
    assert_eq!(
        got,
        [("198.18.0.12".parse().expect("ip"), 9)]
            .into_iter()
            .collect()
    );
}

fn with_second(mut r: NodeRecord, key: PublicKey, draining: Option<u8>) -> NodeRecord {
    r.rotation.second = Some(keyexchange::record::SlotKey {
        public_key: key,
        listen_port: 51821,
    });
    r.rotation.step = draining.map(|d| keyexchange::record::RotationStep {
        serial: 1,
        draining: Some(d),
        replaced: false,
    });
    r
}

#[test]
fn a_drained_slot_moves_routes_and_host_traffic_to_the_other_device() {
    let k = |_| PrivateKey::generate().public_key();
    let (a0, a1, b0, b1, m0, m1) = (k(0), k(1), k(2), k(3), k(4), k(5));
    let me = with_second(record("n1", m0, &[], &["198.18.0.11"]), m1, None);
    let ra = with_second(
        record("n2", a0, &["10.244.2.0/24"], &["198.18.0.12"]),
        a1,
        Some(0),
    );
    let rb = with_second(
        record("n3", b0, &["10.244.3.0/24"], &["198.18.0.13"]),
        b1,
        None,
    );
    let wants = [
        desired(&[
            (a0, "n2", &["10.244.2.0/24"]),
            (b0, "n3", &["10.244.3.0/24"]),
        ]),
        desired(&[
            (a1, "n2", &["10.244.2.0/24"]),
            (b1, "n3", &["10.244.3.0/24"]),
        ]),
    ];
    let slots = peer_slots([&ra, &rb, &me], &me, &wants);
    assert_eq!(slots["n2"], (Slot::SECOND, a1), "n2 drains slot 0");
    assert_eq!(slots["n3"], (Slot::FIRST, b0));
    let routes = steering(&wants, &slots, [7, 8], &BTreeSet::new());
    assert_eq!(routes[&net("10.244.2.0/24")], 8);
    assert_eq!(routes[&net("10.244.3.0/24")], 7);
    // Host traffic: n3's slot-0 tunnel is down but slot 1 is up and not drained, so it
    // goes through slot 1. n2 is rotating and alive (its slot-0 tunnel is up), so its
    // fresh slot-1 key carries host traffic already.
    let live: BTreeSet<PublicKey> = [b1, a0].into_iter().collect();
    let hosts = encrypted_hosts([&ra, &rb], &me, &wants, &slots, &live, &[], [7, 8]);
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    assert_eq!(
        hosts,
        [(ip("198.18.0.12"), 8), (ip("198.18.0.13"), 8)]
            .into_iter()
            .collect()
    );
    // Once nothing of n2 is up, its host traffic leaves the tunnel (fails open).
    let live: BTreeSet<PublicKey> = [b1].into_iter().collect();
    let hosts = encrypted_hosts([&ra, &rb], &me, &wants, &slots, &live, &[], [7, 8]);
    assert_eq!(hosts, [(ip("198.18.0.13"), 8)].into_iter().collect());
}
