//! The plan of a pass whose desired state changed only in the shares of a few records
//! ([`super::super::desired::incremental`]): the same steps as [`plan`], from the desired and
//! observed entries those records touch. Pure.
//!
//! It holds when the node was left converged on the previous desired state (a pass from
//! memory follows one that applied every step exactly) and the desired state was brought
//! forward record by record, so that outside the [`Scope`] desired and observed agree and no
//! entry inside it interacts with one outside (no contested claim: a peer's allowed IPs and
//! CIDRs are its own). Everything that does not come from the records (pods, the guard, the
//! MTU, host encryption's routes and mark rule) is planned in full, as [`plan`] does.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use keyexchange::PublicKey;

use super::{plan, Observed, ObservedDevice, Step};
use crate::controller::desired::Desired;

/// The entries a pass's record changes touch: before and after the change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Peer keys, per slot device.
    pub keys: [BTreeSet<PublicKey>; 2],
    /// Pod CIDRs: routes, redirects, their guard entries, plain routes.
    pub cidrs: BTreeSet<IpNet>,
    /// Host encryption's peer addresses (planned in full regardless).
    pub hosts: BTreeSet<IpAddr>,
}

impl Scope {
    /// Adds the entries of `share` (a record's part of a desired state).
    pub fn extend_with(&mut self, share: &Desired) {
        for (keys, set) in self.keys.iter_mut().zip(&share.peers) {
            keys.extend(set.peers.keys().copied());
        }
        self.cidrs.extend(share.routes.keys());
        self.cidrs.extend(share.redirects.keys());
        self.cidrs.extend(share.plain_routes.keys());
        self.hosts.extend(share.host_routes.keys());
    }
}

/// [`plan`] of `desired` against `observed`, looking only at the entries in `scope` (see
/// the module docs for when that is the same plan).
pub fn plan_within(desired: &Desired, observed: &Observed, scope: &Scope) -> Vec<Step> {
    let pick_peers = |set: &keyexchange::peers::PeerSet, keys: &BTreeSet<PublicKey>| {
        keyexchange::peers::PeerSet {
            peers: keys
                .iter()
                .filter_map(|k| set.peers.get(k).map(|p| (*k, p.clone())))
                .collect(),
            conflicts: Vec::new(),
        }
    };
    let want = Desired {
        peers: [
            pick_peers(&desired.peers[0], &scope.keys[0]),
            pick_peers(&desired.peers[1], &scope.keys[1]),
        ],
        keepalive: desired.keepalive,
        routes: scoped(&desired.routes, &scope.cidrs),
        redirects: scoped(&desired.redirects, &scope.cidrs),
        plain_routes: scoped(&desired.plain_routes, &scope.cidrs),
        host_routes: desired.host_routes.clone(),
        guard_mode: desired.guard_mode,
        mtu: desired.mtu,
        local_pods: desired.local_pods.clone(),
        pod_interfaces: desired.pod_interfaces.clone(),
        pod_sources: desired.pod_sources.clone(),
        guard_interfaces: desired.guard_interfaces.clone(),
        underlay: desired.underlay.clone(),
        peer_slots: Default::default(),
        conflicts: Default::default(),
    };
    let device = |d: &ObservedDevice, keys: &BTreeSet<PublicKey>| ObservedDevice {
        ifindex: d.ifindex,
        mtu: d.mtu,
        peers: keys
            .iter()
            .filter_map(|k| d.peers.get(k).map(|p| (*k, p.clone())))
            .collect(),
    };
    let have = Observed {
        devices: [
            device(&observed.devices[0], &scope.keys[0]),
            device(&observed.devices[1], &scope.keys[1]),
        ],
        routes: scope
            .cidrs
            .iter()
            .flat_map(|c| observed.routes.range((*c, 0)..=(*c, u32::MAX)))
            .copied()
            .collect(),
        plain_routes: scoped(&observed.plain_routes, &scope.cidrs),
        host_routes: observed.host_routes.clone(),
        mark_rule: observed.mark_rule,
        redirects: scoped(&observed.redirects, &scope.cidrs),
        guarded_cidrs: scope
            .cidrs
            .iter()
            .filter(|c| observed.guarded_cidrs.contains(*c))
            .copied()
            .collect(),
        guard_mode: observed.guard_mode,
        local_pods: observed.local_pods.clone(),
        from_pod_done: observed.from_pod_done.clone(),
        to_pod_done: observed.to_pod_done.clone(),
        pod_sources: observed.pod_sources.clone(),
        stale_links: observed.stale_links.clone(),
        guarded_interfaces: observed.guarded_interfaces.clone(),
    };
    plan(&want, &have)
}

/// The entries of `map` whose key is in `keys`.
fn scoped<V: Clone>(
    map: &std::collections::BTreeMap<IpNet, V>,
    keys: &BTreeSet<IpNet>,
) -> std::collections::BTreeMap<IpNet, V> {
    keys.iter()
        .filter_map(|k| map.get(k).map(|v| (*k, v.clone())))
        .collect()
}
