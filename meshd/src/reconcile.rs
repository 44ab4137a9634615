//! The reconcile plan: from the desired peer set and what the device and routing table hold now,
//! the ordered, minimal list of changes. Pure: no I/O, unit-tested without root.
//!
//! Ordering is what keeps the mesh from leaking: a peer is programmed *before* the route that
//! sends traffic to it exists, and a route is withdrawn only *after* its peer is gone (traffic
//! for a CIDR without a peer is dropped by WireGuard, and the cluster-wide blackhole route
//! catches anything once the specific route is gone). Nothing unchanged is touched.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use keyexchange::peers::{diff_peers, PeerOp, PeerSet, ProgrammedPeer};
use keyexchange::slots::{pair_slot, Slot};
use keyexchange::{NodeRecord, PublicKey};
use netlink::{PeerChange, PeerConfig, PeerStatus};

/// The ordered changes one reconcile pass applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Peers to remove (applied first).
    pub remove_peers: Vec<PeerChange>,
    /// Routes to delete (after their peers are gone).
    pub del_routes: Vec<IpNet>,
    /// Peers to add or update.
    pub upsert_peers: Vec<PeerChange>,
    /// Routes to add (after their peers exist).
    pub add_routes: Vec<IpNet>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove_peers.is_empty()
            && self.del_routes.is_empty()
            && self.upsert_peers.is_empty()
            && self.add_routes.is_empty()
    }
}

/// What the device has programmed, in keyexchange's terms.
pub fn programmed(peers: &[PeerStatus]) -> Vec<ProgrammedPeer> {
    peers
        .iter()
        .map(|p| ProgrammedPeer {
            public_key: PublicKey::from_bytes(p.public_key),
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.clone(),
        })
        .collect()
}

/// Which slot's device carries the traffic to each peer node, and the peer's key there: the
/// slot both ends agree on ([`pair_slot`]) when that slot's peer set holds the node, else
/// slot 0 when it does (a node whose second slot is in conflict), else none.
pub fn peer_slots<'a>(
    records: impl IntoIterator<Item = &'a NodeRecord>,
    me: &NodeRecord,
    wants: &[PeerSet; 2],
) -> BTreeMap<String, (Slot, PublicKey)> {
    let mut out = BTreeMap::new();
    for r in records {
        if r.name == me.name {
            continue;
        }
        let chosen = pair_slot(me, r);
        for slot in [chosen, 0] {
            let Some(key) = r.slot(slot).map(|k| k.public_key) else {
                continue;
            };
            if wants[usize::from(slot)].peers.contains_key(&key) {
                out.insert(r.name.clone(), (slot, key));
                break;
            }
        }
    }
    out
}

/// Where pod traffic to each peer's pod CIDRs goes: the routes and the eBPF redirects, both
/// `CIDR → device ifindex` of the peer's slot (`ifindex[slot]`). The `hosts` prefixes (peer
/// node addresses) are left out.
pub fn steering(
    wants: &[PeerSet; 2],
    slots: &BTreeMap<String, (Slot, PublicKey)>,
    ifindex: [u32; 2],
    hosts: &BTreeSet<IpNet>,
) -> BTreeMap<IpNet, u32> {
    let mut out = BTreeMap::new();
    for (slot, key) in slots.values() {
        let Some(peer) = wants[usize::from(*slot)].peers.get(key) else {
            continue;
        };
        for c in peer.allowed_ips.iter().map(IpNet::trunc) {
            if !hosts.contains(&c) {
                out.insert(c, ifindex[usize::from(*slot)]);
            }
        }
    }
    out
}

/// Adds each peer's node addresses (as /32 and /128) to its AllowedIPs, so that host traffic
/// a peer sends through the tunnel is accepted. Returns those host prefixes: they are never
/// routed or redirected like pod CIDRs (a route to a peer's own address through the tunnel
/// would carry the tunnel's packets into itself). An address that is also inside some pod
/// CIDR is left out.
pub fn add_host_addresses<'a>(
    desired: &mut PeerSet,
    records: impl IntoIterator<Item = &'a NodeRecord>,
) -> BTreeSet<IpNet> {
    let pod: Vec<IpNet> = desired
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect();
    let mut hosts = BTreeSet::new();
    for r in records {
        let Some(peer) = desired.peers.get_mut(&r.public_key) else {
            continue;
        };
        for ip in &r.endpoints {
            if pod.iter().any(|c| c.contains(ip)) {
                continue;
            }
            let host = IpNet::from(*ip);
            if !peer.allowed_ips.contains(&host) {
                peer.allowed_ips.push(host);
                peer.allowed_ips.sort();
            }
            hosts.insert(host);
        }
    }
    hosts
}

/// Host encryption: the peer node addresses whose traffic goes into the tunnel, and the device
/// it goes into. Only peers whose tunnel is up carry it (`live`, by public key): the pair's
/// slot ([`peer_slots`]) when its tunnel is up, else the other slot's when that one is up and
/// neither end drains it. While either node is rotating its keys, the pair's slot is used as
/// long as any of the node's tunnels is up: a key just replaced has had no time to prove
/// itself, and WireGuard holds the first packets while it handshakes. Otherwise none: host
/// traffic to that node stays off the tunnel (fails open). `exclude` addresses never go
/// through the tunnel.
pub fn encrypted_hosts<'a>(
    records: impl IntoIterator<Item = &'a NodeRecord>,
    me: &NodeRecord,
    wants: &[PeerSet; 2],
    slots: &BTreeMap<String, (Slot, PublicKey)>,
    live: &BTreeSet<PublicKey>,
    exclude: &[std::net::IpAddr],
    ifindex: [u32; 2],
) -> BTreeMap<std::net::IpAddr, u32> {
    let mut out = BTreeMap::new();
    for r in records {
        let Some((preferred, key)) = slots.get(&r.name) else {
            continue;
        };
        let other = 1 - *preferred;
        let usable_other = r.slot(other).map(|k| k.public_key).filter(|k| {
            me.draining() != Some(other)
                && r.draining() != Some(other)
                && wants[usize::from(other)].peers.contains_key(k)
        });
        let rotating = me.rotation.step.is_some() || r.rotation.step.is_some();
        let node_up = [0, 1]
            .iter()
            .filter_map(|s| r.slot(*s))
            .any(|k| live.contains(&k.public_key));
        let slot = if live.contains(key) {
            *preferred
        } else if usable_other.is_some_and(|k| live.contains(&k)) {
            other
        } else if rotating && node_up {
            *preferred
        } else {
            continue;
        };
        for ip in r.endpoints.iter().filter(|ip| !exclude.contains(ip)) {
            out.insert(*ip, ifindex[usize::from(slot)]);
        }
    }
    out
}

/// The plain routed path (encryption disabled): every programmable peer's pod CIDRs via that
/// node's underlay address of the same family. A CIDR whose node has no address of its family
/// gets no route.
pub fn plain_routes<'a>(
    records: impl IntoIterator<Item = &'a NodeRecord>,
    desired: &PeerSet,
) -> BTreeMap<IpNet, std::net::IpAddr> {
    let mut out = BTreeMap::new();
    for r in records {
        if !desired.peers.contains_key(&r.public_key) {
            continue;
        }
        for cidr in &r.pod_cidrs {
            let gw = r
                .endpoints
                .iter()
                .find(|e| e.is_ipv4() == matches!(cidr, IpNet::V4(_)));
            if let Some(gw) = gw {
                out.insert(cidr.trunc(), *gw);
            }
        }
    }
    out
}

/// The first step towards `want`: the redirects in `present` that stay, unchanged. Applying it
/// removes only the departing ones, before their peers are removed.
pub fn redirects_kept<K: Ord + Copy>(
    want: &BTreeMap<K, u32>,
    present: &BTreeMap<K, u32>,
) -> BTreeMap<K, u32> {
    present
        .iter()
        .filter(|(k, _)| want.contains_key(*k))
        .map(|(k, i)| (*k, *i))
        .collect()
}

/// Compute the plan that takes the device and routes from their present state to `desired`.
/// AllowedIPs in `unrouted` (peers' node addresses) get no route.
pub fn plan(
    desired: &PeerSet,
    device_peers: &[PeerStatus],
    present_routes: &[IpNet],
    keepalive: Option<u16>,
    unrouted: &BTreeSet<IpNet>,
) -> Plan {
    let mut out = Plan::default();
    for op in diff_peers(&programmed(device_peers), desired) {
        match op {
            PeerOp::Remove(key) => out.remove_peers.push(PeerChange::Remove(*key.as_bytes())),
            PeerOp::Add(peer) | PeerOp::Update(peer) => {
                out.upsert_peers.push(PeerChange::Upsert(PeerConfig {
                    public_key: *peer.public_key.as_bytes(),
                    endpoint: peer.endpoint,
                    allowed_ips: peer.allowed_ips.clone(),
                    persistent_keepalive: keepalive,
                }))
            }
        }
    }
    let wanted: BTreeSet<IpNet> = desired
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter().map(IpNet::trunc))
        .filter(|c| !unrouted.contains(c))
        .collect();
    let present: BTreeSet<IpNet> = present_routes.iter().map(IpNet::trunc).collect();
    out.del_routes = present.difference(&wanted).copied().collect();
    out.add_routes = wanted.difference(&present).copied().collect();
    out
}

/// The addresses host encryption never tunnels: the configured ones
/// (`--host-encryption-exclude`, plus the kubeconfig's server address) and the API servers'
/// real endpoints as last learnt from the cluster (in a pod the configured server is the
/// `kubernetes` Service's ClusterIP, which is no node's address).
pub fn host_exclusions(
    configured: &[std::net::IpAddr],
    api_servers: Option<&BTreeSet<std::net::IpAddr>>,
) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = configured.to_vec();
    out.extend(
        api_servers
            .into_iter()
            .flatten()
            .filter(|a| !configured.contains(a)),
    );
    out
}

#[cfg(test)]
mod tests {
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

    fn status(key: PublicKey, cidrs: &[&str]) -> PeerStatus {
        PeerStatus {
            public_key: *key.as_bytes(),
            endpoint: Some("198.18.0.12:51820".parse().expect("addr")),
            allowed_ips: cidrs.iter().map(|c| net(c)).collect(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
        }
    }

    #[test]
    fn converged_state_plans_nothing() {
        let k = PrivateKey::generate().public_key();
        let want = desired(&[(k, "n2", &["10.244.2.0/24", "fd00:244:0:2::/64"])]);
        let got = plan(
            &want,
            &[status(k, &["fd00:244:0:2::/64", "10.244.2.0/24"])],
            &[net("10.244.2.0/24"), net("fd00:244:0:2::/64")],
            None,
            &BTreeSet::new(),
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn new_peer_gets_peer_then_routes_for_both_families() {
        let k = PrivateKey::generate().public_key();
        let want = desired(&[(k, "n2", &["10.244.2.0/24", "fd00:244:0:2::/64"])]);
        let got = plan(&want, &[], &[], Some(25), &BTreeSet::new());
        assert_eq!(got.upsert_peers.len(), 1);
        match &got.upsert_peers[0] {
            PeerChange::Upsert(cfg) => {
                assert_eq!(cfg.public_key, *k.as_bytes());
                assert_eq!(cfg.persistent_keepalive, Some(25));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            got.add_routes,
            vec![net("10.244.2.0/24"), net("fd00:244:0:2::/64")]
        );
        assert!(got.remove_peers.is_empty() && got.del_routes.is_empty());
    }

    #[test]
    fn removed_peer_loses_peer_and_routes_and_others_are_untouched() {
        let keep = PrivateKey::generate().public_key();
        let gone = PrivateKey::generate().public_key();
        let want = desired(&[(keep, "n2", &["10.244.2.0/24"])]);
        let got = plan(
            &want,
            &[
                status(keep, &["10.244.2.0/24"]),
                status(gone, &["10.244.3.0/24"]),
            ],
            &[net("10.244.2.0/24"), net("10.244.3.0/24")],
            None,
            &BTreeSet::new(),
        );
        assert_eq!(got.remove_peers, vec![PeerChange::Remove(*gone.as_bytes())]);
        assert_eq!(got.del_routes, vec![net("10.244.3.0/24")]);
        assert!(got.upsert_peers.is_empty() && got.add_routes.is_empty());
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
        assert!(
            allowed.contains(&net("198.18.0.12/32")) && allowed.contains(&net("10.244.2.0/24"))
        );
        let got = plan(&want, &[], &[], None, &hosts);
        assert_eq!(
            got.add_routes,
            vec![net("10.244.2.0/24"), net("fd00:244:0:2::/64")]
        );
        let me = record(
            "n1",
            PrivateKey::generate().public_key(),
            &[],
            &["198.18.0.11"],
        );
        let wants = [want.clone(), PeerSet::default()];
        let slots = peer_slots([&r], &me, &wants);
        assert_eq!(steering(&wants, &slots, [7, 8], &hosts).len(), 2);
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
        assert_eq!(slots["n2"], (1, a1), "n2 drains slot 0");
        assert_eq!(slots["n3"], (0, b0));
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
}
