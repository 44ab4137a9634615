//! The plan's tests: named cases, the keepalive defect, and property tests that apply every
//! plan one step at a time to a model of the node and check, after every single step, that no
//! traffic is sent towards a device that has no peer for it, and that `from_pod` goes on a
//! pod veth only once its pod's source entries and `to_pod` are there.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ebpf_redirect::{Mode, PodSource};
use ipnet::IpNet;
use keyexchange::peers::{DesiredPeer, PeerSet};
use keyexchange::record::{RotationStep, SlotKey};
use keyexchange::{NodeRecord, PublicKey};
use proptest::prelude::*;

use super::*;
use crate::bpf::Encryption;
use crate::controller::desired::{desired, Desired, Inputs};
use crate::controller::state::Live;

const IFINDEX: [u32; 2] = [7, 8];

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn peer_set(entries: &[(PublicKey, &str, &[&str])]) -> PeerSet {
    let mut set = PeerSet::default();
    for (key, name, cidrs) in entries {
        set.peers.insert(
            *key,
            DesiredPeer {
                name: (*name).to_string(),
                public_key: *key,
                endpoint: Some("198.18.0.12:51820".parse().unwrap()),
                allowed_ips: cidrs.iter().map(|c| net(c)).collect(),
            },
        );
    }
    set
}

/// Nothing wanted: no peer, no route, enforce, MTU 1420, the underlay guarded.
fn nothing_wanted() -> Desired {
    Desired {
        peers: Default::default(),
        keepalive: None,
        routes: BTreeMap::new(),
        redirects: BTreeMap::new(),
        plain_routes: BTreeMap::new(),
        host_routes: BTreeMap::new(),
        guard_mode: Mode::Enforce,
        mtu: 1420,
        local_pods: BTreeSet::new(),
        pod_interfaces: None,
        pod_sources: BTreeMap::new(),
        guard_interfaces: ["eth0".to_string()].into(),
        underlay: "eth0".into(),
        peer_slots: BTreeMap::new(),
        conflicts: BTreeSet::new(),
    }
}

/// Slot 0 wants `peers`, routed and redirected into slot 0's device.
fn wanting(peers: PeerSet) -> Desired {
    let mut want = nothing_wanted();
    let routes: BTreeMap<IpNet, u32> = peers
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter().map(|c| (c.trunc(), IFINDEX[0])))
        .collect();
    want.peers[0] = peers;
    want.routes = routes.clone();
    want.redirects = routes;
    want
}

/// A node with nothing on it but its two devices (MTU 1420) and the guarded underlay.
fn bare_node() -> Observed {
    Observed {
        devices: IFINDEX.map(|ifindex| ObservedDevice {
            ifindex,
            mtu: Some(1420),
            peers: BTreeMap::new(),
        }),
        routes: BTreeSet::new(),
        plain_routes: BTreeMap::new(),
        host_routes: BTreeMap::new(),
        mark_rule: [false; 2],
        redirects: BTreeMap::new(),
        guarded_cidrs: BTreeSet::new(),
        guard_mode: Mode::Enforce,
        local_pods: BTreeSet::new(),
        from_pod_done: BTreeSet::new(),
        to_pod_done: BTreeSet::new(),
        pod_sources: BTreeSet::new(),
        stale_links: BTreeSet::new(),
        guarded_interfaces: ["eth0".to_string()].into(),
    }
}

fn programmed(_key: PublicKey, cidrs: &[&str], keepalive: Option<u16>) -> ObservedPeer {
    ObservedPeer {
        endpoint: Some("198.18.0.12:51820".parse().unwrap()),
        allowed_ips: cidrs.iter().map(|c| net(c)).collect(),
        keepalive,
    }
}

/// The node once `steps` are applied, as the kernel and the maps would hold it.
fn applied(mut node: Observed, steps: &[Step]) -> Observed {
    for step in steps {
        apply_to_model(&mut node, step);
    }
    node
}

/// One step on the model, with the kernel's semantics: a route replaces any route to the same
/// destination; an allowed IP given to one peer is taken from every other peer of the device.
fn apply_to_model(node: &mut Observed, step: &Step) {
    match step {
        Step::SetGuardMode(mode) => node.guard_mode = *mode,
        Step::GuardCidr(cidr) => {
            node.guarded_cidrs.insert(*cidr);
        }
        Step::RemoveRedirect(cidr) => {
            node.redirects.remove(cidr);
        }
        Step::SetRedirect { cidr, ifindex } => {
            node.redirects.insert(*cidr, *ifindex);
        }
        Step::DeleteHostRoute { ip, .. } => {
            node.host_routes.remove(ip);
        }
        Step::AddHostRoute { ip, route } => {
            node.host_routes.insert(*ip, route.ifindex);
        }
        Step::EnsureMarkRule => node.mark_rule = [true; 2],
        Step::RemoveMarkRule => node.mark_rule = [false; 2],
        Step::AddLocalPod(ip) => {
            node.local_pods.insert(*ip);
        }
        Step::RemoveLocalPod(ip) => {
            node.local_pods.remove(ip);
        }
        Step::AddPodSource(source) => {
            node.pod_sources.insert(*source);
        }
        Step::RemovePodSource(source) => {
            node.pod_sources.remove(source);
        }
        Step::AttachToPod(veth) => {
            node.to_pod_done.insert(veth.clone());
        }
        Step::AttachFromPod(veth) => {
            node.from_pod_done.insert(veth.clone());
        }
        Step::CollectStaleLinks => node.stale_links.clear(),
        Step::AttachGuard(interface) => {
            node.guarded_interfaces.insert(interface.clone());
        }
        Step::AddPlainRoute { cidr, gateway } => {
            node.routes.retain(|(c, _)| c != cidr);
            node.plain_routes.insert(*cidr, *gateway);
        }
        Step::DeletePlainRoute { cidr, gateway } => {
            if node.plain_routes.get(cidr) == Some(gateway) {
                node.plain_routes.remove(cidr);
            }
        }
        Step::SetMtu { ifindex, mtu } => {
            for d in node.devices.iter_mut().filter(|d| d.ifindex == *ifindex) {
                d.mtu = Some(*mtu);
            }
        }
        Step::RemovePeer { slot, key } => {
            node.devices[slot.index()].peers.remove(key);
        }
        Step::UpsertPeer { slot, peer } => upsert_in_model(node, *slot, peer),
        Step::AddRoute { cidr, ifindex, .. } => {
            node.routes.retain(|(c, _)| c != cidr);
            node.plain_routes.remove(cidr);
            node.routes.insert((*cidr, *ifindex));
        }
        Step::DeleteRoute { cidr, ifindex } => {
            node.routes.remove(&(*cidr, *ifindex));
        }
    }
}

fn upsert_in_model(node: &mut Observed, slot: Slot, peer: &netlink::PeerConfig) {
    let key = PublicKey::from_bytes(peer.public_key);
    let device = &mut node.devices[slot.index()];
    for (_, other) in device.peers.iter_mut().filter(|(k, _)| **k != key) {
        other.allowed_ips.retain(|a| !peer.allowed_ips.contains(a));
    }
    let entry = device.peers.entry(key).or_default();
    entry.allowed_ips = AllowedIps::from_slice(&peer.allowed_ips);
    if peer.endpoint.is_some() {
        entry.endpoint = peer.endpoint;
    }
    entry.keepalive = peer.persistent_keepalive;
}

/// Whether device `ifindex` has a peer whose allowed IPs hold `cidr`.
fn covered(node: &Observed, cidr: IpNet, ifindex: u32) -> bool {
    node.devices
        .iter()
        .filter(|d| d.ifindex == ifindex)
        .any(|d| d.peers.values().any(|p| covers(&p.allowed_ips, cidr)))
}

/// What sends traffic towards a device without a peer for it, and redirects of unguarded
/// CIDRs.
fn leaks(node: &Observed) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (cidr, ifindex) in &node.redirects {
        if !covered(node, *cidr, *ifindex) {
            out.insert(format!("redirect {cidr} -> {ifindex} without its peer"));
        }
        if !node.guarded_cidrs.contains(cidr) {
            out.insert(format!("redirect of unguarded {cidr}"));
        }
    }
    for (cidr, ifindex) in &node.routes {
        if !covered(node, *cidr, *ifindex) {
            out.insert(format!("route {cidr} -> {ifindex} without its peer"));
        }
    }
    for (ip, ifindex) in &node.host_routes {
        if !covered(node, IpNet::from(*ip), *ifindex) {
            out.insert(format!("host route {ip} -> {ifindex} without its peer"));
        }
    }
    out
}

/// Routes withdrawn after their peer: a route (main table or host) present before the pass may
/// point at a device whose peer just went, until the plan deletes or moves it.
fn withdrawn_route_leak(before: &Observed, leak: &str) -> bool {
    before
        .routes
        .iter()
        .any(|(c, i)| leak == format!("route {c} -> {i} without its peer"))
        || before
            .host_routes
            .iter()
            .any(|(ip, i)| leak == format!("host route {ip} -> {i} without its peer"))
}

/// Apply `plan(want, before)` step by step, checking the leak-safety after each step, then
/// that the node is the desired one and a second plan is empty.
fn check_pass(want: &Desired, before: &Observed) -> Result<(), TestCaseError> {
    let steps = plan(want, before);
    let known = leaks(before);
    let mut node = before.clone();
    for (i, step) in steps.iter().enumerate() {
        if let Step::AttachFromPod(veth) = step {
            // Without its entries from_pod would drop the pod's traffic.
            let sources = want.pod_sources.get(veth).cloned().unwrap_or_default();
            prop_assert!(
                sources.is_subset(&node.pod_sources),
                "step {i}: from_pod on {veth} before its sources {sources:?}\nsteps: {steps:#?}"
            );
            prop_assert!(
                node.to_pod_done.contains(veth),
                "step {i}: from_pod on {veth} before to_pod\nsteps: {steps:#?}"
            );
        }
        apply_to_model(&mut node, step);
        for leak in leaks(&node) {
            prop_assert!(
                known.contains(&leak) || withdrawn_route_leak(before, &leak),
                "after step {i} {step:?}: {leak}\nsteps: {steps:#?}"
            );
        }
    }
    prop_assert!(leaks(&node).is_empty(), "{:?}", leaks(&node));
    let again = plan(want, &node);
    prop_assert!(
        again.is_empty(),
        "not idempotent: {again:?}\nfirst: {steps:#?}"
    );
    prop_assert_eq!(
        node.routes.iter().copied().collect::<BTreeMap<_, _>>(),
        want.routes.clone()
    );
    prop_assert_eq!(&node.redirects, &want.redirects);
    prop_assert_eq!(&node.plain_routes, &want.plain_routes);
    prop_assert_eq!(node.guard_mode, want.guard_mode);
    prop_assert_eq!(&node.local_pods, &want.local_pods);
    if want.pod_interfaces.is_some() {
        let sources: BTreeSet<PodSource> = want.pod_sources.values().flatten().copied().collect();
        prop_assert_eq!(&node.pod_sources, &sources);
    } else {
        // Without eBPF steering the source map is left as it was.
        prop_assert_eq!(&node.pod_sources, &before.pod_sources);
    }
    for slot in SLOTS {
        let have = &node.devices[slot.index()].peers;
        let wanted = &want.peers[slot.index()].peers;
        prop_assert_eq!(
            have.keys().collect::<Vec<_>>(),
            wanted.keys().collect::<Vec<_>>()
        );
        for (k, p) in wanted {
            let mut got = have[k].allowed_ips.to_vec();
            got.sort();
            let mut exp = p.allowed_ips.clone();
            exp.sort();
            prop_assert_eq!(got, exp);
            prop_assert_eq!(have[k].keepalive, want.keepalive);
        }
    }
    Ok(())
}

// === named cases ===

#[test]
fn converged_state_plans_nothing() {
    let k = key(2);
    let want = wanting(peer_set(&[(
        k,
        "n2",
        &["10.244.2.0/24", "fd00:244:0:2::/64"],
    )]));
    let mut node = bare_node();
    node.devices[0].peers.insert(
        k,
        programmed(k, &["fd00:244:0:2::/64", "10.244.2.0/24"], None),
    );
    node.routes = [(net("10.244.2.0/24"), 7), (net("fd00:244:0:2::/64"), 7)].into();
    node.redirects = want.redirects.clone();
    node.guarded_cidrs = want.redirects.keys().copied().collect();
    let got = plan(&want, &node);
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn new_peer_gets_peer_then_routes_for_both_families() {
    let k = key(2);
    let mut want = wanting(peer_set(&[(
        k,
        "n2",
        &["10.244.2.0/24", "fd00:244:0:2::/64"],
    )]));
    want.keepalive = Some(25);
    let got = plan(&want, &bare_node());
    let upserts: Vec<&netlink::PeerConfig> = got
        .iter()
        .filter_map(|s| match s {
            Step::UpsertPeer { peer, .. } => Some(peer),
            _ => None,
        })
        .collect();
    assert_eq!(upserts.len(), 1);
    assert_eq!(upserts[0].public_key, *k.as_bytes());
    assert_eq!(upserts[0].persistent_keepalive, Some(25));
    let added: Vec<IpNet> = got
        .iter()
        .filter_map(|s| match s {
            Step::AddRoute { cidr, .. } => Some(*cidr),
            _ => None,
        })
        .collect();
    assert_eq!(added, vec![net("10.244.2.0/24"), net("fd00:244:0:2::/64")]);
    assert!(!got
        .iter()
        .any(|s| matches!(s, Step::RemovePeer { .. } | Step::DeleteRoute { .. })));
    // The peer first, then its routes; each CIDR guarded before its redirect.
    let at = |f: &dyn Fn(&Step) -> bool| got.iter().position(f).unwrap();
    let peer = at(&|s| matches!(s, Step::UpsertPeer { .. }));
    assert!(peer < at(&|s| matches!(s, Step::AddRoute { .. })));
    let cidr = net("10.244.2.0/24");
    let guard = at(&|s| *s == Step::GuardCidr(cidr));
    let redirect = at(&|s| matches!(s, Step::SetRedirect { cidr: c, .. } if *c == cidr));
    assert!(peer < guard && guard < redirect, "{got:#?}");
}

#[test]
fn removed_peer_loses_peer_and_routes_and_others_are_untouched() {
    let (keep, gone) = (key(2), key(3));
    let want = wanting(peer_set(&[(keep, "n2", &["10.244.2.0/24"])]));
    let mut node = bare_node();
    node.devices[0]
        .peers
        .insert(keep, programmed(keep, &["10.244.2.0/24"], None));
    node.devices[0]
        .peers
        .insert(gone, programmed(gone, &["10.244.3.0/24"], None));
    node.routes = [(net("10.244.2.0/24"), 7), (net("10.244.3.0/24"), 7)].into();
    node.redirects = [(net("10.244.2.0/24"), 7), (net("10.244.3.0/24"), 7)].into();
    node.guarded_cidrs = node.redirects.keys().copied().collect();
    let got = plan(&want, &node);
    // The redirect first, then the peer, then its route.
    assert_eq!(
        got,
        vec![
            Step::RemoveRedirect(net("10.244.3.0/24")),
            Step::RemovePeer {
                slot: Slot::FIRST,
                key: gone
            },
            Step::DeleteRoute {
                cidr: net("10.244.3.0/24"),
                ifindex: 7
            },
        ]
    );
}

#[test]
fn a_changed_keepalive_updates_the_peer() {
    // The defect: the device kept an old keepalive when an upsert failed after the refresh
    // flag was cleared, and nothing compared it again.
    let k = key(2);
    let mut want = wanting(peer_set(&[(k, "n2", &["10.244.2.0/24"])]));
    want.keepalive = Some(10);
    let mut node = bare_node();
    node.devices[0]
        .peers
        .insert(k, programmed(k, &["10.244.2.0/24"], Some(25)));
    node.routes = [(net("10.244.2.0/24"), 7)].into();
    node.redirects = want.redirects.clone();
    node.guarded_cidrs = want.redirects.keys().copied().collect();
    let got = plan(&want, &node);
    assert_eq!(got.len(), 1, "{got:?}");
    match &got[0] {
        Step::UpsertPeer {
            slot: Slot::FIRST,
            peer,
        } => {
            assert_eq!(peer.public_key, *k.as_bytes());
            assert_eq!(peer.persistent_keepalive, Some(10));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Off is compared too.
    want.keepalive = None;
    assert!(matches!(plan(&want, &node)[..], [Step::UpsertPeer { .. }]));
}

#[test]
fn a_slot_move_moves_route_and_redirect_after_the_peer_exists() {
    let (a0, a1) = (key(2), key(3));
    let mut want = nothing_wanted();
    want.peers[0] = peer_set(&[(a0, "n2", &["10.244.2.0/24"])]);
    want.peers[1] = peer_set(&[(a1, "n2", &["10.244.2.0/24"])]);
    want.routes = [(net("10.244.2.0/24"), 8)].into();
    want.redirects = want.routes.clone();
    let mut node = bare_node();
    node.devices[0]
        .peers
        .insert(a0, programmed(a0, &["10.244.2.0/24"], None));
    node.routes = [(net("10.244.2.0/24"), 7)].into();
    node.redirects = [(net("10.244.2.0/24"), 7)].into();
    node.guarded_cidrs = node.redirects.keys().copied().collect();
    let got = plan(&want, &node);
    assert_eq!(
        got,
        vec![
            Step::UpsertPeer {
                slot: Slot::SECOND,
                peer: netlink::PeerConfig {
                    public_key: *a1.as_bytes(),
                    endpoint: Some("198.18.0.12:51820".parse().unwrap()),
                    allowed_ips: vec![net("10.244.2.0/24")],
                    persistent_keepalive: None,
                }
            },
            Step::AddRoute {
                cidr: net("10.244.2.0/24"),
                ifindex: 8,
                replacing: Some(7)
            },
            Step::SetRedirect {
                cidr: net("10.244.2.0/24"),
                ifindex: 8
            },
        ]
    );
    check_pass(&want, &node).unwrap();
}

#[test]
fn a_replaced_key_on_the_redirected_slot_withdraws_the_redirect_first() {
    let (old, new) = (key(2), key(4));
    let want = wanting(peer_set(&[(new, "n2", &["10.244.2.0/24"])]));
    let mut node = bare_node();
    node.devices[0]
        .peers
        .insert(old, programmed(old, &["10.244.2.0/24"], None));
    node.routes = [(net("10.244.2.0/24"), 7)].into();
    node.redirects = [(net("10.244.2.0/24"), 7)].into();
    node.guarded_cidrs = node.redirects.keys().copied().collect();
    let got = plan(&want, &node);
    assert_eq!(got[0], Step::RemoveRedirect(net("10.244.2.0/24")));
    assert_eq!(
        got.last(),
        Some(&Step::SetRedirect {
            cidr: net("10.244.2.0/24"),
            ifindex: 7
        })
    );
    check_pass(&want, &node).unwrap();
}

#[test]
fn disable_then_enable_swaps_tunnel_and_plain_routes_without_a_gap() {
    let k = key(2);
    let enabled = wanting(peer_set(&[(k, "n2", &["10.244.2.0/24"])]));
    let mut disabled = nothing_wanted();
    disabled.guard_mode = Mode::Permissive;
    let gw: IpAddr = "198.18.0.12".parse().unwrap();
    disabled.plain_routes = [(net("10.244.2.0/24"), gw)].into();
    let on = applied(bare_node(), &plan(&enabled, &bare_node()));
    // Disable: the guard relaxes first, the plain route replaces the tunnel route before the
    // peer goes, and the redirect goes before the peer.
    let off_steps = plan(&disabled, &on);
    assert_eq!(off_steps[0], Step::SetGuardMode(Mode::Permissive));
    let at = |steps: &[Step], f: &dyn Fn(&Step) -> bool| steps.iter().position(f).unwrap();
    let plain = at(&off_steps, &|s| matches!(s, Step::AddPlainRoute { .. }));
    let gone = at(&off_steps, &|s| matches!(s, Step::RemovePeer { .. }));
    let unredirect = at(&off_steps, &|s| matches!(s, Step::RemoveRedirect(_)));
    assert!(unredirect < gone && plain < gone, "{off_steps:#?}");
    check_pass(&disabled, &on).unwrap();
    // Enable: the peer comes, its route replaces the plain route, the guard tightens last.
    let off = applied(on, &off_steps);
    let on_steps = plan(&enabled, &off);
    let peer = at(&on_steps, &|s| matches!(s, Step::UpsertPeer { .. }));
    let route = at(&on_steps, &|s| matches!(s, Step::AddRoute { .. }));
    assert!(peer < route, "{on_steps:#?}");
    assert_eq!(on_steps.last(), Some(&Step::SetGuardMode(Mode::Enforce)));
    check_pass(&enabled, &off).unwrap();
}

#[test]
fn map_diff_removes_stale_sets_new_and_changed() {
    let present: BTreeMap<IpNet, u32> = [
        (net("10.244.1.0/24"), 7),
        (net("10.244.2.0/24"), 7),
        (net("fd00:244:0:2::/64"), 7),
    ]
    .into();
    // Device recreated (ifindex 9), node 1 gone, node 3 joined.
    let want: BTreeMap<IpNet, u32> = [
        (net("10.244.2.0/24"), 9),
        (net("fd00:244:0:2::/64"), 9),
        (net("10.244.3.0/24"), 9),
    ]
    .into();
    let (remove, set) = map_diff(&want, &present);
    assert_eq!(remove, vec![net("10.244.1.0/24")]);
    assert_eq!(
        set,
        vec![
            (net("10.244.2.0/24"), 9),
            (net("10.244.3.0/24"), 9),
            (net("fd00:244:0:2::/64"), 9)
        ]
    );
    let (remove, set) = map_diff(&want, &want);
    assert!(
        remove.is_empty() && set.is_empty(),
        "in step: no operations"
    );
}

// === property tests ===

mod incremental;
mod properties;

/// `node-subnet` IPAM: a peer claiming one more block of the node subnet costs its one peer
/// entry (the new allowed IP), one route, one redirect and one guard entry, whatever the
/// number of other peers; giving the block back undoes exactly that.
#[test]
fn a_node_subnet_block_claim_is_one_peer_update_and_one_entry_of_each_map() {
    let peers: Vec<(PublicKey, String, Vec<String>)> = (2..40u8)
        .map(|i| {
            let blocks = vec![format!("198.18.{i}.0/28"), format!("198.18.{i}.16/28")];
            (key(i), format!("n{i}"), blocks)
        })
        .collect();
    let set = |extra: Option<&str>| {
        let entries: Vec<(PublicKey, &str, Vec<&str>)> = peers
            .iter()
            .map(|(k, n, b)| {
                let mut b: Vec<&str> = b.iter().map(String::as_str).collect();
                if *k == key(7) {
                    b.extend(extra);
                }
                (*k, n.as_str(), b)
            })
            .collect();
        let borrowed: Vec<(PublicKey, &str, &[&str])> =
            entries.iter().map(|(k, n, b)| (*k, *n, &b[..])).collect();
        wanting(peer_set(&borrowed))
    };
    let before = set(None);
    let node = applied(bare_node(), &plan(&before, &bare_node()));
    assert!(plan(&before, &node).is_empty());
    let claimed = set(Some("198.18.200.16/28"));
    let steps = plan(&claimed, &node);
    let block = net("198.18.200.16/28");
    assert_eq!(steps.len(), 4, "{steps:#?}");
    assert!(steps.iter().any(|s| matches!(s, Step::UpsertPeer { .. })));
    assert!(steps.contains(&Step::GuardCidr(block)));
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::AddRoute { cidr, .. } if *cidr == block)));
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::SetRedirect { cidr, .. } if *cidr == block)));
    let grown = applied(node, &steps);
    let released = plan(&before, &grown);
    assert_eq!(released.len(), 3, "{released:#?}");
    assert!(released.contains(&Step::RemoveRedirect(block)));
}
