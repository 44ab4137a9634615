//! Record passes at the cost of the records that changed, not of every record. Pure: no I/O,
//! no logging.
//!
//! [`trusted_within`](super::trusted_within) admits every record and computes the whole
//! desired state from the accepted ones: at 5,000 nodes that cost most of a pass for one new
//! record. [`Standing`] keeps what the last pass computed (its desired state, the refusals,
//! the accepted pod CIDRs per family and an index of every record's claims) and
//! [`trusted_changed`] brings it forward by the changed records alone, when it can be sure
//! that the result is the one the full computation would give:
//!
//! - nothing the desired state depends on besides the records changed (this node's record,
//!   the settings, the devices, the tunnels that are up, the exclusions, the trust policy);
//! - **no two claims are contested** among the records that pass their own checks (the index
//!   finds a changed record's contests in `O(log N)` each). Without a contest, admission
//!   refuses a record only for what is wrong with it alone (its own checks, its key
//!   continuity against the remembered claims), so only the changed records and those refused
//!   before need a verdict; and each accepted record's share of the desired state (its peers,
//!   routes, redirects, host and plain routes, its slot) is its own, keyed by claims nobody
//!   else holds, so it is taken out and put back record by record;
//! - the maps have room for every accepted peer (then no peer is refused for capacity).
//!
//! Anything else (a contest, a full map, new settings, no standing yet) runs the full
//! computation, which stays the oracle: the tests check, over random sequences of record
//! changes with conflicts and refusals, that both give the same desired state, refusals and
//! memory. The index is kept up to date either way (a full computation does not rebuild it
//! unless this node's record or the policy changed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use keyexchange::slots::SLOTS;
use keyexchange::trust::{check_key_continuity, check_record, Established, Refusal, TrustPolicy};
use keyexchange::{NodeRecord, PublicKey};

use super::{desired, trusted_within, Desired, Inputs};
use crate::controller::capacity::Capacity;
use crate::controller::plan::Scope;
use crate::controller::state::Live;

/// What the last pass's desired state was computed from besides the records.
#[derive(Clone, Debug, PartialEq)]
struct Settled {
    me: NodeRecord,
    live: Live,
    ifindex: [u32; 2],
    mesh_marked: bool,
    tunnels_up: BTreeSet<PublicKey>,
    host_exclude: Vec<IpAddr>,
    policy: TrustPolicy,
}

impl Settled {
    fn of(inputs: &Inputs<'_>, policy: &TrustPolicy) -> Self {
        Settled {
            me: inputs.me.clone(),
            live: inputs.live.clone(),
            ifindex: inputs.ifindex,
            mesh_marked: inputs.mesh_marked,
            tunnels_up: inputs.tunnels_up.clone(),
            host_exclude: inputs.host_exclude.to_vec(),
            policy: policy.clone(),
        }
    }

    fn same(&self, inputs: &Inputs<'_>, policy: &TrustPolicy) -> bool {
        self.me == *inputs.me
            && self.live == *inputs.live
            && self.ifindex == inputs.ifindex
            && self.mesh_marked == inputs.mesh_marked
            && self.host_exclude == inputs.host_exclude
            && self.policy == *policy
            && self.tunnels_up == *inputs.tunnels_up
    }
}

/// Every claim of the records that pass their own checks (this node's own included), and
/// which nodes contest one another's: equal keys (either slot), overlapping prefixes (pod
/// CIDRs, endpoints as host prefixes). The same contests as [`keyexchange::trust::admit`]'s.
///
/// One B-tree of (claim, node) pairs per kind rather than a set per claim: almost every
/// claim has one holder, and a set of one costs a whole node. A record's name is allocated
/// once ([`Name`]) and shared by all its pairs (at 5,000 nodes, 30,000 pairs).
#[derive(Debug, Default)]
struct ClaimIndex {
    keys: BTreeSet<(PublicKey, Name)>,
    nets: BTreeSet<(IpNet, Name)>,
    /// How many prefixes of each (family, length) `nets` holds: the lengths a prefix
    /// containing a given one can have are looked up, not all 33 or 129.
    lengths: BTreeMap<(bool, u8), usize>,
    /// Node → the nodes it contests a claim with (both ways).
    contested: BTreeMap<String, BTreeSet<String>>,
}

/// A node's name in the index, shared by all its claims.
type Name = Arc<str>;

/// The least name: the lower bound of a claim's pairs.
fn least() -> Name {
    Name::from("")
}

/// A record's contestable claims: its keys, and its pod CIDRs and endpoints as prefixes.
fn claims(r: &NodeRecord) -> (BTreeSet<PublicKey>, BTreeSet<IpNet>) {
    let keys = SLOTS
        .iter()
        .filter_map(|s| r.slot(*s))
        .map(|k| k.public_key)
        .collect();
    let nets = r
        .pod_cidrs
        .iter()
        .map(IpNet::trunc)
        .chain(r.endpoints.iter().map(|ip| IpNet::from(ip.to_canonical())))
        .collect();
    (keys, nets)
}

/// A prefix's family (IPv6: true) and length.
fn length_of(net: IpNet) -> (bool, u8) {
    (matches!(net, IpNet::V6(_)), net.prefix_len())
}

impl ClaimIndex {
    /// The index of `records` (those failing their own checks left out) and `me`.
    fn of(records: &BTreeMap<String, NodeRecord>, me: &NodeRecord, policy: &TrustPolicy) -> Self {
        let mut index = ClaimIndex::default();
        index.insert(me);
        for r in records.values().filter(|r| r.name != me.name) {
            if check_record(r, policy).is_ok() {
                index.insert(r);
            }
        }
        index
    }

    /// Whether any two nodes contest a claim.
    fn any_contest(&self) -> bool {
        !self.contested.is_empty()
    }

    /// The nodes holding exactly `net`.
    fn holders(&self, net: IpNet) -> impl Iterator<Item = &str> {
        self.nets
            .range((net, least())..)
            .take_while(move |(n, _)| *n == net)
            .map(|(_, name)| &**name)
    }

    /// The nodes holding a prefix that overlaps `net` (contains it or lies in it).
    fn overlapping(&self, net: IpNet) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        let v6 = matches!(net, IpNet::V6(_));
        for &(_, len) in self
            .lengths
            .range((v6, 0)..=(v6, net.prefix_len()))
            .map(|(k, _)| k)
        {
            if let Ok(outer) = IpNet::new(net.network(), len) {
                out.extend(self.holders(outer.trunc()));
            }
        }
        let last = IpNet::new(net.broadcast(), net.max_prefix_len()).unwrap_or(net);
        for (inner, name) in self.nets.range((net, least())..) {
            if *inner > last {
                break;
            }
            if net.contains(inner) {
                out.insert(name);
            }
        }
        out
    }

    fn insert(&mut self, r: &NodeRecord) {
        let (keys, nets) = claims(r);
        let name: Name = Name::from(r.name.as_str());
        let mut rivals: BTreeSet<String> = BTreeSet::new();
        for key in keys {
            rivals.extend(
                self.keys
                    .range((key, least())..)
                    .take_while(|(k, _)| *k == key)
                    .filter(|(_, n)| **n != *r.name)
                    .map(|(_, n)| n.to_string()),
            );
            self.keys.insert((key, Arc::clone(&name)));
        }
        for net in &nets {
            rivals.extend(
                self.overlapping(*net)
                    .into_iter()
                    .filter(|n| *n != r.name)
                    .map(str::to_string),
            );
        }
        for net in nets {
            if self.holders(net).next().is_none() {
                *self.lengths.entry(length_of(net)).or_default() += 1;
            }
            self.nets.insert((net, Arc::clone(&name)));
        }
        for rival in rivals {
            self.contested
                .entry(rival.clone())
                .or_default()
                .insert(r.name.clone());
            self.contested
                .entry(r.name.clone())
                .or_default()
                .insert(rival);
        }
    }

    /// Takes `r`'s claims out (nothing happens for a record that is not in).
    fn remove(&mut self, r: &NodeRecord) {
        let (keys, nets) = claims(r);
        let name: Name = Name::from(r.name.as_str());
        for key in keys {
            self.keys.remove(&(key, Arc::clone(&name)));
        }
        for net in nets {
            if self.nets.remove(&(net, Arc::clone(&name))) && self.holders(net).next().is_none() {
                let length = length_of(net);
                if let Some(count) = self.lengths.get_mut(&length) {
                    *count -= 1;
                    if *count == 0 {
                        self.lengths.remove(&length);
                    }
                }
            }
        }
        for rival in self.contested.remove(&r.name).into_iter().flatten() {
            if let Some(theirs) = self.contested.get_mut(&rival) {
                theirs.remove(&r.name);
                if theirs.is_empty() {
                    self.contested.remove(&rival);
                }
            }
        }
    }
}

/// What the last pass computed, to bring forward by the records that changed since.
#[derive(Debug)]
pub struct Standing {
    settled: Settled,
    index: ClaimIndex,
    /// The refused records, by node.
    refused: BTreeMap<String, Refusal>,
    /// The accepted peers' pod CIDRs, per family (`[IPv4, IPv6]`).
    demand: [usize; 2],
    /// The desired state.
    desired: Desired,
}

impl Standing {
    /// The desired state.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The refusals, sorted by node then field.
    pub fn refused(&self) -> Vec<Refusal> {
        let mut out: Vec<Refusal> = self.refused.values().cloned().collect();
        out.sort_by(|a, b| (&a.node, a.field).cmp(&(&b.node, b.field)));
        out
    }
}

/// How [`trusted_changed`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Computed {
    /// Brought forward by the changed records.
    Changed,
    /// Computed in full.
    Full,
}

/// What [`trusted_changed`] did besides the standing it returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// How the standing was computed.
    pub computed: Computed,
    /// Whether the memory of accepted claims changed (the daemon persists it then).
    pub memory_changed: bool,
    /// When brought forward: the desired entries the changed records held before and hold
    /// now (nothing else of the records' part changed), for [`plan_within`](crate::controller::plan::plan_within).
    pub scope: Option<Scope>,
}

fn demand(r: &NodeRecord) -> [usize; 2] {
    let mut d = [0; 2];
    for c in &r.pod_cidrs {
        d[usize::from(matches!(c, IpNet::V6(_)))] += 1;
    }
    d
}

/// The records changed since the last pass (added, changed or removed), each with the record
/// that pass took in (`None`: it had none). Every other record is as that pass took it, so the
/// standing keeps no copy of the records.
pub type Changed = BTreeMap<String, Option<NodeRecord>>;

/// The trusted records' desired state, like [`trusted_within`], from `standing` (the last
/// pass's, if any) and the records changed since ([`Changed`]).
/// `established` is the memory the last pass left; it becomes the next one. See the module
/// docs for when the result is brought forward rather than computed in full.
pub fn trusted_changed(
    standing: Option<Standing>,
    changed: &Changed,
    inputs: &Inputs<'_>,
    policy: &TrustPolicy,
    established: &mut Established,
    capacity: &Capacity,
) -> (Standing, Outcome) {
    let me = inputs.me;
    let Some(mut standing) =
        standing.filter(|s| s.settled.me == *me && s.settled.policy == *policy)
    else {
        let index = ClaimIndex::of(inputs.records, me, policy);
        return full(index, inputs, policy, established, capacity);
    };
    // A record as the last pass took it in (this node's own left out).
    let was = |name: &String| -> Option<&NodeRecord> {
        match changed.get(name) {
            Some(old) => old.as_ref(),
            None => inputs.records.get(name),
        }
    };
    let changed: Vec<&String> = changed.keys().filter(|n| **n != me.name).collect();
    for name in &changed {
        if let Some(old) = was(name) {
            standing.index.remove(old);
        }
        if let Some(new) = inputs.records.get(*name) {
            if check_record(new, policy).is_ok() {
                standing.index.insert(new);
            }
        }
    }
    if !standing.settled.same(inputs, policy) || standing.index.any_contest() {
        return full(standing.index, inputs, policy, established, capacity);
    }
    // The verdicts of the records that changed or were refused; nobody else's can change.
    let mut dirty: BTreeSet<&String> = changed.into_iter().collect();
    dirty.extend(standing.refused.keys());
    let verdicts: Vec<(String, Option<Result<(), Refusal>>)> = dirty
        .into_iter()
        .map(|name| {
            let verdict = inputs.records.get(name).map(|r| {
                check_record(r, policy)?;
                match established.nodes.get(name) {
                    Some(claims) if established.from_this_run => check_key_continuity(r, claims),
                    _ => Ok(()),
                }
            });
            (name.clone(), verdict)
        })
        .collect();
    let mut demand_now = standing.demand;
    for (name, verdict) in &verdicts {
        if let Some(old) = was(name).filter(|_| !standing.refused.contains_key(name)) {
            let was = demand(old);
            demand_now = [demand_now[0] - was[0], demand_now[1] - was[1]];
        }
        if let Some(Ok(())) = verdict {
            let now = demand(&inputs.records[name]);
            demand_now = [demand_now[0] + now[0], demand_now[1] + now[1]];
        }
    }
    if demand_now[0] > capacity.per_family[0] || demand_now[1] > capacity.per_family[1] {
        return full(standing.index, inputs, policy, established, capacity);
    }
    let bare = Inputs {
        records: inputs.records,
        local_pods: BTreeSet::new(),
        pod_interfaces: None,
        pod_sources: BTreeMap::new(),
        guard_interfaces: BTreeSet::new(),
        ..inputs.clone()
    };
    // Every old share out before any new one goes in: a claim may pass from one to another.
    let mut scope = Scope::default();
    for (name, _) in &verdicts {
        if let Some(old) = was(name).filter(|_| !standing.refused.contains_key(name)) {
            let share = share_of(&bare, old);
            take_out(&mut standing.desired, &share);
            scope.extend_with(&share);
        }
    }
    let mut memory_changed = false;
    for (name, verdict) in verdicts {
        match verdict {
            None => {
                standing.refused.remove(&name);
                memory_changed |= established.nodes.remove(&name).is_some();
            }
            Some(Ok(())) => {
                let r = &inputs.records[&name];
                let share = share_of(&bare, r);
                put_in(&mut standing.desired, &share);
                scope.extend_with(&share);
                standing.refused.remove(&name);
                for (node, claims) in Established::of(std::iter::once(r)).nodes {
                    memory_changed |= established.nodes.get(&node) != Some(&claims);
                    established.nodes.insert(node, claims);
                }
            }
            Some(Err(refusal)) => {
                // A refused node keeps the claims it had established (its record is there).
                standing.refused.insert(name, refusal);
            }
        }
    }
    established.from_this_run = true;
    standing.demand = demand_now;
    // What does not come from the records: the settings, the pods, the guard's interfaces.
    let alone = desired(&Inputs {
        records: &BTreeMap::from([(me.name.clone(), me.clone())]),
        ..inputs.clone()
    });
    let want = &mut standing.desired;
    want.keepalive = alone.keepalive;
    want.guard_mode = alone.guard_mode;
    want.mtu = alone.mtu;
    want.local_pods = alone.local_pods;
    want.pod_interfaces = alone.pod_interfaces;
    want.pod_sources = alone.pod_sources;
    want.guard_interfaces = alone.guard_interfaces;
    want.underlay = alone.underlay;
    want.conflicts = standing.refused.values().map(ToString::to_string).collect();
    let outcome = Outcome {
        computed: Computed::Changed,
        memory_changed,
        scope: Some(scope),
    };
    (standing, outcome)
}

/// The full computation, and a standing from it.
fn full(
    index: ClaimIndex,
    inputs: &Inputs<'_>,
    policy: &TrustPolicy,
    established: &mut Established,
    capacity: &Capacity,
) -> (Standing, Outcome) {
    let (desired, admission) = trusted_within(inputs, policy, established, capacity);
    let memory_changed = admission.established != *established;
    let me = &inputs.me.name;
    let demand = admission
        .accepted
        .values()
        .filter(|r| r.name != *me)
        .map(demand)
        .fold([0, 0], |a, d| [a[0] + d[0], a[1] + d[1]]);
    *established = admission.established;
    let standing = Standing {
        settled: Settled::of(inputs, policy),
        index,
        refused: admission
            .refused
            .into_iter()
            .map(|r| (r.node.clone(), r))
            .collect(),
        demand,
        desired,
    };
    let outcome = Outcome {
        computed: Computed::Full,
        memory_changed,
        scope: None,
    };
    (standing, outcome)
}

/// One accepted record's share of the desired state: the desired state of this node and it
/// alone (without the pods and the rest that come from the node, not the records).
fn share_of(bare: &Inputs<'_>, r: &NodeRecord) -> Desired {
    let records = BTreeMap::from([
        (bare.me.name.clone(), bare.me.clone()),
        (r.name.clone(), r.clone()),
    ]);
    desired(&Inputs {
        records: &records,
        ..bare.clone()
    })
}

fn put_in(want: &mut Desired, share: &Desired) {
    for (all, part) in want.peers.iter_mut().zip(&share.peers) {
        all.peers
            .extend(part.peers.iter().map(|(k, p)| (*k, p.clone())));
    }
    want.routes.extend(&share.routes);
    want.redirects.extend(&share.redirects);
    want.plain_routes.extend(&share.plain_routes);
    want.host_routes.extend(&share.host_routes);
    want.peer_slots
        .extend(share.peer_slots.iter().map(|(n, s)| (n.clone(), *s)));
}

fn take_out(want: &mut Desired, share: &Desired) {
    for (all, part) in want.peers.iter_mut().zip(&share.peers) {
        for key in part.peers.keys() {
            all.peers.remove(key);
        }
    }
    for cidr in share.routes.keys() {
        want.routes.remove(cidr);
    }
    for cidr in share.redirects.keys() {
        want.redirects.remove(cidr);
    }
    for cidr in share.plain_routes.keys() {
        want.plain_routes.remove(cidr);
    }
    for ip in share.host_routes.keys() {
        want.host_routes.remove(ip);
    }
    for name in share.peer_slots.keys() {
        want.peer_slots.remove(name);
    }
}

#[path = "incremental_compact.rs"]
mod compact;

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
