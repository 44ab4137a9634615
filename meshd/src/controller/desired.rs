//! The desired state of one node, computed from what the registry says and the settings in
//! force. Pure: no I/O, no logging, no state writes (the caller reports conflicts).
//!
//! Everything a pass can change is here: each slot device's peers, the main-table routes and
//! the eBPF redirects of peers' pod CIDRs (the same map: `CIDR → device`), the plain routes of
//! `encryption: disabled`, host encryption's routes, the underlay guard's mode, the MTU, the
//! local pods, their source entries and their `to_pod`/`from_pod` attachments, and the
//! interfaces the guard must sit on.
//!
//! Records are trusted first ([`trusted`], with [`keyexchange::trust::admit`]): a refused
//! record contributes nothing at all (no peer, route, redirect or host route), so a hostile
//! record changes nothing for the honest nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ebpf_redirect::{Mode, PodSource};
use ipnet::IpNet;
use keyexchange::peers::{compute_peers, PeerSet};
use keyexchange::slots::{self, pair_slot, Slot, SLOTS};
use keyexchange::trust::{admit, Admission, Established, TrustPolicy};
use keyexchange::{NodeRecord, PublicKey};

use super::capacity::{refuse_beyond, Capacity};
use super::covering::Covering;
use super::state::Live;
use crate::bpf::{self, Encryption};

/// What the desired state is computed from: the registry's records and the settings, plus
/// the few facts observed on the node that it depends on.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Every known record (this node's own included; it is never peered).
    pub records: &'a BTreeMap<String, NodeRecord>,
    /// This node's record as published.
    pub me: &'a NodeRecord,
    /// The settings in force.
    pub live: &'a Live,
    /// Each slot device's ifindex.
    pub ifindex: [u32; 2],
    /// Both devices carry the mesh mark (host encryption needs it to keep the tunnel's own
    /// packets out of its routes).
    pub mesh_marked: bool,
    /// Peers (by public key) whose tunnel is up: host traffic may go through them.
    pub tunnels_up: &'a BTreeSet<PublicKey>,
    /// Addresses host encryption never tunnels.
    pub host_exclude: &'a [IpAddr],
    /// This node's pods' addresses (the IPAM store's owned entries).
    pub local_pods: BTreeSet<IpAddr>,
    /// Their host veths, when `from_pod` steers pod traffic (eBPF steering); `None` otherwise.
    pub pod_interfaces: Option<BTreeSet<String>>,
    /// The source entries of each existing host veth: its ifindex with its pod's addresses.
    pub pod_sources: BTreeMap<String, BTreeSet<PodSource>>,
    /// The interfaces the underlay guard must sit on besides the underlay.
    pub guard_interfaces: BTreeSet<String>,
    /// The underlay interface.
    pub underlay: &'a str,
}

/// A host route of host encryption: a peer node's address into a slot device, from this
/// node's own address of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRoute {
    /// The slot device's ifindex.
    pub ifindex: u32,
    /// The preferred source address.
    pub src: Option<IpAddr>,
}

/// What the node should look like once a pass has run.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Each slot device's peers (empty with encryption disabled).
    pub peers: [PeerSet; 2],
    /// The persistent keepalive on every peer (`None`: off).
    pub keepalive: Option<u16>,
    /// Main-table routes of peers' pod CIDRs: CIDR → slot device ifindex.
    pub routes: BTreeMap<IpNet, u32>,
    /// eBPF redirects of peers' pod CIDRs: CIDR → slot device ifindex.
    pub redirects: BTreeMap<IpNet, u32>,
    /// Plain routes (encryption disabled): CIDR → the peer node's underlay address.
    pub plain_routes: BTreeMap<IpNet, IpAddr>,
    /// Host encryption's routes in [`super::HOST_TABLE`]: peer node address → route.
    pub host_routes: BTreeMap<IpAddr, HostRoute>,
    /// The underlay guard's mode.
    pub guard_mode: Mode,
    /// The slot devices' MTU.
    pub mtu: u32,
    /// The local-pod map.
    pub local_pods: BTreeSet<IpAddr>,
    /// Host veths carrying `from_pod` and `to_pod` (`None`: pod steering by routes, nothing
    /// attached).
    pub pod_interfaces: Option<BTreeSet<String>>,
    /// The source map, per host veth (only with `pod_interfaces`).
    pub pod_sources: BTreeMap<String, BTreeSet<PodSource>>,
    /// Interfaces the underlay guard sits on (the underlay first among them).
    pub guard_interfaces: BTreeSet<String>,
    /// The underlay interface (its guard is required).
    pub underlay: String,
    /// The slot each peer node's traffic uses.
    pub peer_slots: BTreeMap<String, Slot>,
    /// Conflicting records (neither side is programmed), for the caller to report.
    pub conflicts: BTreeSet<String>,
}

/// The desired state for `inputs`.
pub fn desired(inputs: &Inputs<'_>) -> Desired {
    let live = inputs.live;
    let views: [Vec<NodeRecord>; 2] = SLOTS.map(|slot| slot_views(inputs.records, slot));
    let mut wants: [PeerSet; 2] = SLOTS.map(|slot| slot_peers(inputs.me, &views, slot));
    // Conflicts are reported from slot 0 (the second slot's mirror them).
    let conflicts = wants[0].conflicts.iter().map(ToString::to_string).collect();
    let plain_routes = if live.encryption == Encryption::Disabled {
        let plain = plain_routes(inputs.records.values(), &wants[0]);
        wants = Default::default();
        plain
    } else {
        BTreeMap::new()
    };
    // Every peer accepts its node's own addresses from the tunnel, whatever this node's
    // host-encryption setting: a peer that already encrypts is never refused.
    let mut host_prefixes = BTreeSet::new();
    for (want, views) in wants.iter_mut().zip(&views) {
        host_prefixes.extend(add_host_addresses(want, views));
    }
    let pairs = peer_slots(inputs.records.values(), inputs.me, &wants);
    let routes = steering(&wants, &pairs, inputs.ifindex, &host_prefixes);
    let host_routes =
        if live.host_encryption && live.encryption != Encryption::Disabled && inputs.mesh_marked {
            host_routes(inputs, &wants, &pairs)
        } else {
            BTreeMap::new()
        };
    let mut guard_interfaces = inputs.guard_interfaces.clone();
    guard_interfaces.insert(inputs.underlay.to_string());
    Desired {
        peers: wants,
        keepalive: live.effective_keepalive(),
        redirects: routes.clone(),
        routes,
        plain_routes,
        host_routes,
        guard_mode: bpf::program_mode(live.encryption, live.strict_mode),
        mtu: live.mtu,
        local_pods: inputs.local_pods.clone(),
        pod_interfaces: inputs.pod_interfaces.clone(),
        pod_sources: inputs.pod_sources.clone(),
        guard_interfaces,
        underlay: inputs.underlay.to_string(),
        peer_slots: pairs.iter().map(|(n, (s, _))| (n.clone(), *s)).collect(),
        conflicts,
    }
}

/// The records `policy` and the memory `established` accept, then the desired state from them
/// alone. The refusals are added to the desired state's conflicts (as text) and returned in
/// the admission, with the memory for the next pass.
pub fn trusted(
    inputs: &Inputs<'_>,
    policy: &TrustPolicy,
    established: &Established,
) -> (Desired, Admission) {
    trusted_within(inputs, policy, established, &Capacity::unlimited())
}

/// Like [`trusted`], then the accepted peers that do not fit `capacity` (the per-node maps'
/// room) are refused too, with field `capacity` ([`super::capacity`]): they are left out of
/// the desired state and of the memory, and the rest is programmed.
pub fn trusted_within(
    inputs: &Inputs<'_>,
    policy: &TrustPolicy,
    established: &Established,
    capacity: &Capacity,
) -> (Desired, Admission) {
    let mut admission = admit(inputs.records, inputs.me, policy, established);
    let full = refuse_beyond(
        &mut admission.accepted,
        &inputs.me.name,
        established,
        capacity,
    );
    if !full.is_empty() {
        for r in &full {
            admission.established.nodes.remove(&r.node);
        }
        admission.refused.extend(full);
        admission
            .refused
            .sort_by(|a, b| (&a.node, a.field).cmp(&(&b.node, b.field)));
    }
    let mut want = desired(&Inputs {
        records: &admission.accepted,
        ..inputs.clone()
    });
    want.conflicts
        .extend(admission.refused.iter().map(ToString::to_string));
    (want, admission)
}

/// Host encryption's routes: the tunnelled peer addresses, each from this node's own
/// address of its family.
fn host_routes(
    inputs: &Inputs<'_>,
    wants: &[PeerSet; 2],
    pairs: &BTreeMap<String, (Slot, PublicKey)>,
) -> BTreeMap<IpAddr, HostRoute> {
    encrypted_hosts(
        inputs.records.values(),
        inputs.me,
        wants,
        pairs,
        inputs.tunnels_up,
        inputs.host_exclude,
        inputs.ifindex,
    )
    .into_iter()
    .map(|(ip, ifindex)| {
        let src = inputs
            .me
            .endpoints
            .iter()
            .find(|e| e.is_ipv4() == ip.is_ipv4())
            .copied();
        (ip, HostRoute { ifindex, src })
    })
    .collect()
}

/// Every known record as slot `slot`'s device presents it.
fn slot_views(records: &BTreeMap<String, NodeRecord>, slot: Slot) -> Vec<NodeRecord> {
    records
        .values()
        .filter_map(|r| slots::slot_view(r, slot))
        .collect()
}

/// The peers slot `slot`'s device should have, from the records as that slot presents them.
fn slot_peers(me: &NodeRecord, views: &[Vec<NodeRecord>; 2], slot: Slot) -> PeerSet {
    match slots::slot_view(me, slot) {
        Some(me) => compute_peers(&views[slot.index()], &me),
        None => PeerSet::default(),
    }
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
        for slot in [chosen, Slot::FIRST] {
            let Some(key) = r.slot(slot).map(|k| k.public_key) else {
                continue;
            };
            if wants[slot.index()].peers.contains_key(&key) {
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
        let Some(peer) = wants[slot.index()].peers.get(key) else {
            continue;
        };
        for c in peer.allowed_ips.iter().map(IpNet::trunc) {
            if !hosts.contains(&c) {
                out.insert(c, ifindex[slot.index()]);
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
    let pod: Covering<()> = desired
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter().map(|c| (*c, ())))
        .collect();
    let mut hosts = BTreeSet::new();
    for r in records {
        let Some(peer) = desired.peers.get_mut(&r.public_key) else {
            continue;
        };
        for ip in &r.endpoints {
            if pod.contains_addr(*ip) {
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
    exclude: &[IpAddr],
    ifindex: [u32; 2],
) -> BTreeMap<IpAddr, u32> {
    let mut out = BTreeMap::new();
    for r in records {
        let Some((preferred, key)) = slots.get(&r.name) else {
            continue;
        };
        let other = preferred.other();
        let usable_other = r.slot(other).map(|k| k.public_key).filter(|k| {
            me.draining() != Some(other)
                && r.draining() != Some(other)
                && wants[other.index()].peers.contains_key(k)
        });
        let rotating = me.rotation.step.is_some() || r.rotation.step.is_some();
        let node_up = SLOTS
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
            out.insert(*ip, ifindex[slot.index()]);
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
) -> BTreeMap<IpNet, IpAddr> {
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

/// The addresses host encryption never tunnels: the configured ones
/// (`--host-encryption-exclude`, plus the kubeconfig's server address) and the API servers'
/// real endpoints as last learnt from the cluster (in a pod the configured server is the
/// `kubernetes` Service's ClusterIP, which is no node's address).
pub fn host_exclusions(
    configured: &[IpAddr],
    api_servers: Option<&BTreeSet<IpAddr>>,
) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = configured.to_vec();
    out.extend(
        api_servers
            .into_iter()
            .flatten()
            .filter(|a| !configured.contains(a)),
    );
    out
}

pub mod incremental;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
