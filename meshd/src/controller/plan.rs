//! The reconcile plan: from the desired state and the observed one, the ordered list of typed
//! steps that takes the node from one to the other. Pure: no I/O, no logging, no state writes;
//! [`super::apply`] walks the steps in order and nothing else decides the order.
//!
//! The order keeps established connections and never opens a cleartext window the settings
//! do not allow:
//! 1. the underlay guard relaxes first when the new mode is less strict;
//! 2. redirects stop for CIDRs that leave the tunnel, and for CIDRs whose peer on the
//!    redirect's device is about to go or to give the CIDR up (the redirect comes back at
//!    step 8 once the new peer is in place); host routes of departing hosts go;
//! 3. pods: the local-pod map; the source map (stale entries go, missing ones come), then
//!    `to_pod` and `from_pod` on host veths (so `from_pod` never runs on a veth before its
//!    pod's source entries are in: it would drop the pod's traffic); the guard on every way
//!    out;
//! 4. plain routes (encryption disabled) replace tunnel routes atomically; the MTU follows;
//! 5. departing peers go, then their tunnel routes;
//! 6. new and changed peers come, then their tunnel routes (replacing plain routes, or a
//!    route on the other slot's device, atomically);
//! 7. leftover plain routes go;
//! 8. each CIDR is guarded before its first redirect; redirects into the tunnel are set; the
//!    mark rule and host routes follow their peers;
//! 9. the guard tightens last, when everything it protects is in place.
//!
//! So a peer exists before any route, redirect or host route sends traffic to it, and a
//! redirect never outlives the peer it sends to. A route is withdrawn only after its peer
//! (WireGuard drops what no peer holds; a route withdrawn first would hand the traffic to
//! ordinary routing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ebpf_redirect::{Mode, PodSource};
use ipnet::IpNet;
use keyexchange::peers::{diff_peers_by_key, PeerOp, Programmed};
use keyexchange::slots::{Slot, SLOTS};
use keyexchange::PublicKey;
use netlink::PeerConfig;

use super::covering::Covering;
use super::desired::{Desired, HostRoute};

/// One slot device as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedDevice {
    /// Its ifindex.
    pub ifindex: u32,
    /// Its MTU (`None`: unreadable).
    pub mtu: Option<u32>,
    /// Its peers, by public key.
    pub peers: BTreeMap<PublicKey, ObservedPeer>,
}

/// A peer as programmed on a slot device, kept by its public key (the key is the map's, not
/// repeated here). The last pass's observation keeps one per peer per device (at 5,000 peers,
/// 10,000), so its allowed IPs are held in place up to four (a dual-stack node's pod CIDRs and,
/// with host encryption, its two addresses) rather than in an allocation of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPeer {
    /// The current endpoint (possibly learned by roaming).
    pub endpoint: Option<SocketAddr>,
    /// The current allowed IPs, in any order.
    pub allowed_ips: AllowedIps,
    /// The persistent keepalive interval in seconds; `None` when off.
    pub keepalive: Option<u16>,
}

/// A peer's allowed IPs: four in place, more on the heap.
pub type AllowedIps = smallvec::SmallVec<[IpNet; 4]>;

impl Programmed for ObservedPeer {
    fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }
    fn allowed_ips(&self) -> &[IpNet] {
        &self.allowed_ips
    }
    fn keepalive(&self) -> Option<u16> {
        self.keepalive
    }
}

/// What the node holds now, as far as a pass changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The slot devices.
    pub devices: [ObservedDevice; 2],
    /// meshd's main-table routes on the slot devices: (CIDR, ifindex).
    pub routes: BTreeSet<(IpNet, u32)>,
    /// meshd's plain routes via the underlay: CIDR → gateway.
    pub plain_routes: BTreeMap<IpNet, IpAddr>,
    /// Host encryption's routes: peer node address → ifindex.
    pub host_routes: BTreeMap<IpAddr, u32>,
    /// Whether the mark rule is in place: `[IPv4, IPv6]`.
    pub mark_rule: [bool; 2],
    /// The eBPF redirects: CIDR → ifindex.
    pub redirects: BTreeMap<IpNet, u32>,
    /// The CIDRs in the guard's cluster map.
    pub guarded_cidrs: BTreeSet<IpNet>,
    /// The underlay guard's mode.
    pub guard_mode: Mode,
    /// The local-pod map.
    pub local_pods: BTreeSet<IpAddr>,
    /// Host veths that need no `from_pod` attachment: attached by this meshd, or gone.
    pub from_pod_done: BTreeSet<String>,
    /// Host veths that need no `to_pod` attachment: attached by this meshd, or gone.
    pub to_pod_done: BTreeSet<String>,
    /// The source map: (host veth ifindex, address) pairs pods may send from.
    pub pod_sources: BTreeSet<PodSource>,
    /// Pinned links whose interface is gone.
    pub stale_links: BTreeSet<String>,
    /// Interfaces that need no guard attachment: guarded, or not to be touched.
    pub guarded_interfaces: BTreeSet<String>,
}

/// One change to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set the underlay guard's mode.
    SetGuardMode(Mode),
    /// Put a CIDR in the guard's cluster map for good (learned).
    GuardCidr(IpNet),
    /// Stop redirecting a CIDR.
    RemoveRedirect(IpNet),
    /// Redirect a CIDR into a slot device.
    SetRedirect {
        /// The peer's pod CIDR.
        cidr: IpNet,
        /// The slot device.
        ifindex: u32,
    },
    /// Remove a host route of host encryption.
    DeleteHostRoute {
        /// The peer node's address.
        ip: IpAddr,
        /// The device it routes into.
        ifindex: u32,
    },
    /// Add (or replace) a host route of host encryption.
    AddHostRoute {
        /// The peer node's address.
        ip: IpAddr,
        /// The route.
        route: HostRoute,
    },
    /// Put the rule `not fwmark MESH_MARK lookup HOST_TABLE` in place.
    EnsureMarkRule,
    /// Remove that rule.
    RemoveMarkRule,
    /// Add a local pod's address to the local-pod map.
    AddLocalPod(IpAddr),
    /// Remove an address from the local-pod map.
    RemoveLocalPod(IpAddr),
    /// Let a pod send from an address on its host veth (a source-map entry).
    AddPodSource(PodSource),
    /// Remove a source-map entry no pod's veth holds.
    RemovePodSource(PodSource),
    /// Attach `to_pod` to a pod's host veth.
    AttachToPod(String),
    /// Attach `from_pod` to a pod's host veth.
    AttachFromPod(String),
    /// Remove the pinned links of interfaces that are gone.
    CollectStaleLinks,
    /// Attach the underlay guard to an interface.
    AttachGuard(String),
    /// Add (or replace) a plain route via a peer's underlay address.
    AddPlainRoute {
        /// The peer's pod CIDR.
        cidr: IpNet,
        /// The peer node's underlay address.
        gateway: IpAddr,
    },
    /// Delete a plain route.
    DeletePlainRoute {
        /// The pod CIDR.
        cidr: IpNet,
        /// The gateway it went via.
        gateway: IpAddr,
    },
    /// Set a slot device's MTU.
    SetMtu {
        /// The device.
        ifindex: u32,
        /// The MTU.
        mtu: u32,
    },
    /// Remove a peer from a slot device.
    RemovePeer {
        /// The slot.
        slot: Slot,
        /// The peer's public key.
        key: PublicKey,
    },
    /// Add or update a peer on a slot device.
    UpsertPeer {
        /// The slot.
        slot: Slot,
        /// The peer as it must be.
        peer: PeerConfig,
    },
    /// Add (or replace) a main-table route into a slot device.
    AddRoute {
        /// The peer's pod CIDR.
        cidr: IpNet,
        /// The slot device.
        ifindex: u32,
        /// The device of the route it replaces (removed if the kernel kept it).
        replacing: Option<u32>,
    },
    /// Delete a main-table route.
    DeleteRoute {
        /// The pod CIDR.
        cidr: IpNet,
        /// The device it went into.
        ifindex: u32,
    },
}

/// The steps from `observed` to `desired`, in the order they must be applied.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut mode = observed.guard_mode;
    if desired.guard_mode == Mode::Permissive && mode != Mode::Permissive {
        steps.push(Step::SetGuardMode(Mode::Permissive));
        mode = Mode::Permissive;
    }
    let ops: Vec<Vec<PeerOp>> = SLOTS
        .iter()
        .map(|&slot| peer_ops(desired, observed, slot))
        .collect();
    let withdrawn = withdraw_redirects(desired, observed, &ops, &mut steps);
    let (departing_hosts, _) = map_diff(&desired_host_ifindex(desired), &observed.host_routes);
    for ip in departing_hosts {
        steps.push(Step::DeleteHostRoute {
            ip,
            ifindex: observed.host_routes[&ip],
        });
    }
    pods(desired, observed, &mut steps);
    for (cidr, gateway) in &desired.plain_routes {
        if observed.plain_routes.get(cidr) != Some(gateway) {
            steps.push(Step::AddPlainRoute {
                cidr: *cidr,
                gateway: *gateway,
            });
        }
    }
    for device in &observed.devices {
        if device.mtu != Some(desired.mtu) {
            steps.push(Step::SetMtu {
                ifindex: device.ifindex,
                mtu: desired.mtu,
            });
        }
    }
    for (slot, ops) in SLOTS.iter().zip(&ops) {
        for op in ops {
            if let PeerOp::Remove(key) = op {
                steps.push(Step::RemovePeer {
                    slot: *slot,
                    key: *key,
                });
            }
        }
    }
    tunnel_routes(desired, observed, &ops, &mut steps);
    for (cidr, gateway) in &observed.plain_routes {
        if desired.plain_routes.get(cidr) != Some(gateway) {
            steps.push(Step::DeletePlainRoute {
                cidr: *cidr,
                gateway: *gateway,
            });
        }
    }
    set_redirects(desired, observed, &withdrawn, &mut steps);
    host_routes(desired, observed, &mut steps);
    if desired.guard_mode != mode {
        steps.push(Step::SetGuardMode(desired.guard_mode));
    }
    steps
}

/// The peer operations on `slot`'s device.
fn peer_ops(desired: &Desired, observed: &Observed, slot: Slot) -> Vec<PeerOp> {
    diff_peers_by_key(
        &observed.devices[slot.index()].peers,
        &desired.peers[slot.index()],
        desired.keepalive,
    )
}

/// Step 2: stop redirecting CIDRs that are no longer wanted, and CIDRs whose covering peer on
/// the redirect's device goes or gives the CIDR up in this pass. Returns the latter (their
/// redirect comes back once their new peer is in place). Every redirect kept is guarded.
/// `ops` are each device's peer operations.
fn withdraw_redirects(
    desired: &Desired,
    observed: &Observed,
    ops: &[Vec<PeerOp>],
    steps: &mut Vec<Step>,
) -> BTreeSet<IpNet> {
    let (departing, _) = map_diff(&desired.redirects, &observed.redirects);
    let programmed = programmed_cover(observed, ops);
    let withdrawn: BTreeSet<IpNet> = observed
        .redirects
        .iter()
        .filter(|(cidr, _)| desired.redirects.contains_key(*cidr))
        .filter(|(cidr, ifindex)| loses_cover(desired, observed, &programmed, **cidr, **ifindex))
        .map(|(cidr, _)| *cidr)
        .collect();
    for cidr in observed.redirects.keys() {
        let kept = desired.redirects.contains_key(cidr) && !withdrawn.contains(cidr);
        if kept && !observed.guarded_cidrs.contains(cidr) {
            steps.push(Step::GuardCidr(*cidr));
        }
    }
    let removals = observed
        .redirects
        .keys()
        .filter(|c| departing.contains(c) || withdrawn.contains(c));
    steps.extend(removals.copied().map(Step::RemoveRedirect));
    withdrawn
}

/// Each device's programmed peers that go or change in this pass (`ops`), by the allowed IPs
/// they hold (a lookup per redirect, not a scan of every peer: that made a pass quadratic in
/// the number of nodes). A peer without an operation keeps the allowed IPs it has, so it
/// cannot take a CIDR's cover away: leaving it out keeps the index to what changes.
fn programmed_cover<'a>(
    observed: &'a Observed,
    ops: &[Vec<PeerOp>],
) -> Vec<Covering<&'a PublicKey>> {
    observed
        .devices
        .iter()
        .zip(ops)
        .map(|(d, ops)| {
            ops.iter()
                .filter_map(|op| match op {
                    PeerOp::Remove(key) => d.peers.get_key_value(key),
                    PeerOp::Update(peer) => d.peers.get_key_value(&peer.public_key),
                    PeerOp::Add(_) => None,
                })
                .flat_map(|(k, p)| p.allowed_ips.iter().map(move |a| (*a, k)))
                .collect()
        })
        .collect()
}

/// Whether a peer on device `ifindex` that holds `cidr` now goes, or gives it up, in this pass.
/// `programmed` is [`programmed_cover`] of `observed`.
fn loses_cover(
    desired: &Desired,
    observed: &Observed,
    programmed: &[Covering<&PublicKey>],
    cidr: IpNet,
    ifindex: u32,
) -> bool {
    let Some(slot) = observed.devices.iter().position(|d| d.ifindex == ifindex) else {
        return false;
    };
    let want = &desired.peers[slot].peers;
    programmed[slot]
        .covering(cidr)
        .any(|key| want.get(*key).is_none_or(|w| !covers(&w.allowed_ips, cidr)))
}

/// The changes that take a map from `present` to `want`: entries to remove, entries to set.
pub fn map_diff<K: Ord + Clone, V: PartialEq + Clone>(
    want: &BTreeMap<K, V>,
    present: &BTreeMap<K, V>,
) -> (Vec<K>, Vec<(K, V)>) {
    let remove = present
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    let set = want
        .iter()
        .filter(|(k, v)| present.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (remove, set)
}

/// Whether allowed IPs `allowed` hold `cidr`.
pub(super) fn covers(allowed: &[IpNet], cidr: IpNet) -> bool {
    allowed.iter().any(|a| a.contains(&cidr))
}

/// Step 3: the local-pod map, the source map, `to_pod` and `from_pod` on host veths, the
/// guard on every way out.
fn pods(desired: &Desired, observed: &Observed, steps: &mut Vec<Step>) {
    for ip in observed.local_pods.difference(&desired.local_pods) {
        steps.push(Step::RemoveLocalPod(*ip));
    }
    for ip in desired.local_pods.difference(&observed.local_pods) {
        steps.push(Step::AddLocalPod(*ip));
    }
    if let Some(veths) = &desired.pod_interfaces {
        // Only with eBPF steering: without it nothing of this meshd runs `from_pod`, and
        // entries a `from_pod` left attached still relies on are kept.
        let sources: BTreeSet<PodSource> =
            desired.pod_sources.values().flatten().copied().collect();
        for source in observed.pod_sources.difference(&sources) {
            steps.push(Step::RemovePodSource(*source));
        }
        for source in sources.difference(&observed.pod_sources) {
            steps.push(Step::AddPodSource(*source));
        }
        for veth in veths.difference(&observed.to_pod_done) {
            steps.push(Step::AttachToPod(veth.clone()));
        }
        for veth in veths.difference(&observed.from_pod_done) {
            steps.push(Step::AttachFromPod(veth.clone()));
        }
        if !observed.stale_links.is_empty() {
            steps.push(Step::CollectStaleLinks);
        }
    }
    // The underlay first: it is the one whose guard is required.
    let ways_out = std::iter::once(&desired.underlay).chain(
        desired
            .guard_interfaces
            .iter()
            .filter(|i| **i != desired.underlay),
    );
    for interface in ways_out {
        if !observed.guarded_interfaces.contains(interface) {
            steps.push(Step::AttachGuard(interface.clone()));
        }
    }
}

/// Steps 5 and 6: routes of departing peers after the peers, then new and changed peers, then
/// their routes.
fn tunnel_routes(
    desired: &Desired,
    observed: &Observed,
    ops: &[Vec<PeerOp>],
    steps: &mut Vec<Step>,
) {
    // The route each new one replaces (one per CIDR: a replace takes it over).
    let mut replacing: BTreeMap<IpNet, u32> = BTreeMap::new();
    for (cidr, ifindex) in &observed.routes {
        match desired.routes.get(cidr) {
            Some(want) if want != ifindex && !observed.routes.contains(&(*cidr, *want)) => {
                replacing.entry(*cidr).or_insert(*ifindex);
            }
            _ => {}
        }
    }
    for (cidr, ifindex) in &observed.routes {
        if desired.routes.get(cidr) != Some(ifindex) && replacing.get(cidr) != Some(ifindex) {
            steps.push(Step::DeleteRoute {
                cidr: *cidr,
                ifindex: *ifindex,
            });
        }
    }
    for (slot, ops) in SLOTS.iter().zip(ops) {
        for op in ops {
            if let PeerOp::Add(peer) | PeerOp::Update(peer) = op {
                steps.push(Step::UpsertPeer {
                    slot: *slot,
                    peer: PeerConfig {
                        public_key: *peer.public_key.as_bytes(),
                        endpoint: peer.endpoint,
                        allowed_ips: peer.allowed_ips.clone(),
                        persistent_keepalive: desired.keepalive,
                    },
                });
            }
        }
    }
    for (cidr, ifindex) in &desired.routes {
        if !observed.routes.contains(&(*cidr, *ifindex)) {
            steps.push(Step::AddRoute {
                cidr: *cidr,
                ifindex: *ifindex,
                replacing: replacing.get(cidr).copied(),
            });
        }
    }
}

/// Step 8, redirects: each CIDR guarded before its first redirect.
fn set_redirects(
    desired: &Desired,
    observed: &Observed,
    withdrawn: &BTreeSet<IpNet>,
    steps: &mut Vec<Step>,
) {
    let (_, mut set) = map_diff(&desired.redirects, &observed.redirects);
    set.extend(
        withdrawn
            .iter()
            .filter(|c| observed.redirects.get(*c) == desired.redirects.get(*c))
            .filter_map(|c| desired.redirects.get(c).map(|i| (*c, *i))),
    );
    set.sort();
    for (cidr, _) in &set {
        let kept = observed.redirects.contains_key(cidr) && !withdrawn.contains(cidr);
        if !kept && !observed.guarded_cidrs.contains(cidr) {
            steps.push(Step::GuardCidr(*cidr));
        }
    }
    for (cidr, ifindex) in set {
        steps.push(Step::SetRedirect { cidr, ifindex });
    }
}

/// Step 8, host encryption: the mark rule follows whether any host route is wanted; host
/// routes follow their peers.
fn host_routes(desired: &Desired, observed: &Observed, steps: &mut Vec<Step>) {
    if desired.host_routes.is_empty() {
        if observed.mark_rule.iter().any(|r| *r) {
            steps.push(Step::RemoveMarkRule);
        }
    } else if !observed.mark_rule.iter().all(|r| *r) {
        steps.push(Step::EnsureMarkRule);
    }
    let (_, add) = map_diff(&desired_host_ifindex(desired), &observed.host_routes);
    for (ip, _) in add {
        steps.push(Step::AddHostRoute {
            ip,
            route: desired.host_routes[&ip],
        });
    }
}

/// The host routes' devices: peer node address → ifindex.
fn desired_host_ifindex(desired: &Desired) -> BTreeMap<IpAddr, u32> {
    desired
        .host_routes
        .iter()
        .map(|(ip, r)| (*ip, r.ifindex))
        .collect()
}

mod scope;
pub use scope::{plan_within, Scope};

#[cfg(test)]
mod tests;
