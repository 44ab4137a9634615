//! What the last pass left on the node, kept between passes so that a pass for registry record
//! changes alone plans against it instead of reading the whole node again (two device dumps,
//! every route, the eBPF maps entry by entry: at 5,000 peers that cost a second per record).
//!
//! [`after`] is pure: the observed state a plan's steps leave behind, with the kernel's
//! semantics (a route replaces any route to the same destination; an allowed IP given to one
//! peer is taken from the device's other peers). The loop keeps the result only after a pass
//! that applied every step exactly; anything else (an apply error, a full map, new settings, a
//! tunnel or a way out that changed, the periodic resync) brings a full observe-and-reconcile
//! pass, which also repairs whatever drifted meanwhile. Its tests are the plan's
//! (`plan/tests/incremental.rs`): they share the plan's model of the kernel.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use keyexchange::slots::Slot;
use keyexchange::PublicKey;

use super::desired::incremental::Standing;
use super::observe::Observation;
use super::plan::{AllowedIps, Observed, ObservedPeer, Step};

/// The node as the last pass left it, and the facts of its observation the desired state
/// depends on.
pub(super) struct Remembered {
    /// The observation, brought forward by every pass's steps since.
    pub observation: Observation,
    /// Whether both devices carried the mesh mark when last read.
    pub mesh_marked: bool,
    /// The peer keys that had handshaken recently when the devices were last read.
    pub handshook: BTreeSet<PublicKey>,
    /// The last pass's trusted records and desired state, brought forward by the records
    /// that change ([`super::desired::incremental`]); `None` until a pass computed them.
    pub standing: Option<Standing>,
}

/// Bring `observed` forward by `steps`, as if they had all been applied in order.
pub(super) fn after(observed: &mut Observed, steps: &[Step]) {
    // Per device, who holds each allowed IP that an upsert gives (one scan of the device's
    // peers, not one per upsert; only those IPs can be taken from another peer).
    let mut given: [BTreeSet<IpNet>; 2] = Default::default();
    for step in steps {
        if let Step::UpsertPeer { slot, peer } = step {
            given[slot.index()].extend(peer.allowed_ips.iter().copied());
        }
    }
    let mut holders: [Option<Holders>; 2] = [None, None];
    for step in steps {
        match step {
            Step::RemovePeer { slot, key } => {
                let device = &mut observed.devices[slot.index()];
                if let Some(old) = device.peers.remove(key) {
                    if let Some(h) = holders[slot.index()].as_mut() {
                        h.release(key, &old.allowed_ips);
                    }
                }
            }
            Step::UpsertPeer { slot, peer } => {
                let h = holders[slot.index()].get_or_insert_with(|| {
                    Holders::of(&observed.devices[slot.index()].peers, &given[slot.index()])
                });
                upsert(observed, h, *slot, peer);
            }
            other => after_one(observed, other),
        }
    }
    if steps.len() >= REBUILD_AFTER {
        rebuild(observed);
    }
}

/// How many steps make a plan large enough to rebuild the observation's B-trees after it.
const REBUILD_AFTER: usize = 256;

/// The observation's large B-trees built again from their sorted entries. A B-tree grown by
/// inserts in key order (a pass that programs thousands of peers, routes and redirects) keeps
/// its nodes about half full; one built from a sorted sequence fills them. Contents unchanged.
fn rebuild(node: &mut Observed) {
    fn set<T: Ord>(s: &mut BTreeSet<T>) {
        *s = std::mem::take(s).into_iter().collect();
    }
    fn map<K: Ord, V>(m: &mut BTreeMap<K, V>) {
        *m = std::mem::take(m).into_iter().collect();
    }
    for device in &mut node.devices {
        map(&mut device.peers);
    }
    set(&mut node.routes);
    map(&mut node.plain_routes);
    map(&mut node.host_routes);
    map(&mut node.redirects);
    set(&mut node.guarded_cidrs);
    set(&mut node.local_pods);
    set(&mut node.pod_sources);
}

/// A step that concerns no peer.
fn after_one(node: &mut Observed, step: &Step) {
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
            remove_routes_to(&mut node.routes, *cidr);
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
        Step::AddRoute { cidr, ifindex, .. } => {
            remove_routes_to(&mut node.routes, *cidr);
            node.plain_routes.remove(cidr);
            node.routes.insert((*cidr, *ifindex));
        }
        Step::DeleteRoute { cidr, ifindex } => {
            node.routes.remove(&(*cidr, *ifindex));
        }
        // Peers are brought forward by `after` itself.
        Step::RemovePeer { .. } | Step::UpsertPeer { .. } => {}
    }
}

/// Every route to `cidr`, whatever its device (a route replaces them).
fn remove_routes_to(routes: &mut BTreeSet<(IpNet, u32)>, cidr: IpNet) {
    let on: Vec<(IpNet, u32)> = routes
        .range((cidr, 0)..=(cidr, u32::MAX))
        .copied()
        .collect();
    for r in on {
        routes.remove(&r);
    }
}

/// One device's allowed IPs among those the steps give, and the peers holding each.
struct Holders(BTreeMap<IpNet, BTreeSet<PublicKey>>);

impl Holders {
    fn of(peers: &BTreeMap<PublicKey, ObservedPeer>, given: &BTreeSet<IpNet>) -> Self {
        let mut map: BTreeMap<IpNet, BTreeSet<PublicKey>> = BTreeMap::new();
        for (key, p) in peers {
            for a in p.allowed_ips.iter().filter(|a| given.contains(*a)) {
                map.entry(*a).or_default().insert(*key);
            }
        }
        Holders(map)
    }

    /// `key` no longer holds `ips`.
    fn release(&mut self, key: &PublicKey, ips: &[IpNet]) {
        for a in ips {
            if let Some(keys) = self.0.get_mut(a) {
                keys.remove(key);
                if keys.is_empty() {
                    self.0.remove(a);
                }
            }
        }
    }
}

/// A peer set as the kernel sets it: its allowed IPs replace its old ones and are taken from
/// every other peer of the device; an endpoint left out keeps the one it had.
fn upsert(node: &mut Observed, holders: &mut Holders, slot: Slot, peer: &netlink::PeerConfig) {
    let key = PublicKey::from_bytes(peer.public_key);
    let device = &mut node.devices[slot.index()];
    for a in &peer.allowed_ips {
        let others: Vec<PublicKey> = holders
            .0
            .get(a)
            .map(|keys| keys.iter().filter(|k| **k != key).copied().collect())
            .unwrap_or_default();
        for other in others {
            if let Some(p) = device.peers.get_mut(&other) {
                p.allowed_ips.retain(|x| x != a);
            }
            holders.release(&other, std::slice::from_ref(a));
        }
    }
    let entry = device.peers.entry(key).or_default();
    holders.release(&key, &entry.allowed_ips);
    entry.allowed_ips = AllowedIps::from_slice(&peer.allowed_ips);
    for a in &entry.allowed_ips {
        holders.0.entry(*a).or_default().insert(key);
    }
    if peer.endpoint.is_some() {
        entry.endpoint = peer.endpoint;
    }
    entry.keepalive = peer.persistent_keepalive;
}
