//! Record trust: which node records this node accepts before any peer is computed from them.
//! Pure: no I/O (the daemon loads and persists the [`Established`] memory).
//!
//! A record comes from outside (any holder of patch rights on Nodes, or of write access to the
//! registry directory, can write one), so it is checked twice:
//!
//! 1. **On its own** ([`check_record`]): every pod CIDR lies inside a configured cluster pool
//!    (when any is configured), outside the service ranges and the special-purpose ranges
//!    (loopback, link-local, multicast, "this network"), with a prefix length in
//!    [`IPV4_PREFIX`] / [`IPV6_PREFIX`] and at most [`MAX_POD_CIDRS_PER_FAMILY`] per family
//!    ([`MAX_NODE_SUBNET_BLOCKS_PER_FAMILY`] with `node-subnet` IPAM, whose blocks must lie in
//!    its pod ranges, [`TrustPolicy::node_subnets`]);
//!    at most [`MAX_ENDPOINTS_PER_FAMILY`] endpoints per family (each is an allowed IP of
//!    the peer and a host route: no single record may fill those), every one a unicast
//!    address that is not loopback, unspecified, link-local, multicast, broadcast, nor inside
//!    a cluster pool or service range.
//! 2. **Against the others** ([`admit`]): two nodes conflict when their pod CIDRs overlap,
//!    they publish the same public key (either slot), they publish the same endpoint, or one's
//!    endpoint lies inside the other's pod CIDR. A conflict is never resolved against the
//!    holder that was there first: every claim (a key, a CIDR, an endpoint) has a strength —
//!    this node's own claims are strongest, then *established* claims (the same node made the
//!    same claim when this node last accepted it: [`Established`]), then new claims — and the
//!    node with the weaker claim is refused alone. When both claims are equally strong (two
//!    newcomers at once) both nodes are refused: nobody receives traffic for an ambiguous
//!    claim. So a newcomer's record can never remove an established node's peering.
//! 3. **Key continuity** ([`check_key_continuity`]): an established node's keys change only
//!    through its own rotation protocol. A slot's key that is not one of the node's
//!    established keys is accepted only in the rotation step that replaced that slot
//!    (`draining: s, replaced: true`), or as the second slot's first key. Any other record
//!    naming an established node with a different key (written by whoever can write its
//!    Node or its registry file) is refused, and the node keeps its established claims (they
//!    still win contests) until a record with its keys is back. The memory read back after a
//!    restart does not hold keys to continuity ([`Established::from_this_run`]): a node that
//!    was down while others rotated takes the keys published meanwhile.
//!
//! The rule in full, with the restart case, is in `docs/registry.md` ("Record trust").

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::key::PublicKey;
use crate::record::NodeRecord;
use crate::slots::SLOTS;

mod claim_set;
pub use claim_set::ClaimSet;

/// Prefix lengths a node's IPv4 pod CIDR may have.
pub const IPV4_PREFIX: RangeInclusive<u8> = 8..=32;
/// Prefix lengths a node's IPv6 pod CIDR may have.
pub const IPV6_PREFIX: RangeInclusive<u8> = 32..=128;
/// At most this many pod CIDRs of each family per record (Kubernetes gives one). The datapath's
/// per-node maps are sized with it (`meshd --max-nodes` times this).
pub const MAX_POD_CIDRS_PER_FAMILY: usize = 4;
/// At most this many pod CIDRs of each family per record when the cluster runs `node-subnet`
/// IPAM ([`TrustPolicy::node_subnets`]): its nodes hold small blocks of the node subnet, as
/// many as their pods need (110 pods in `/28` blocks of 13 usable addresses take 9, one more
/// is claimed ahead of need).
pub const MAX_NODE_SUBNET_BLOCKS_PER_FAMILY: usize = 16;
/// At most this many endpoints of each family per record.
pub const MAX_ENDPOINTS_PER_FAMILY: usize = 4;

/// What records are checked against: the cluster's address plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// The cluster pools every pod CIDR must lie in (`--cluster-cidr`, `--pod-cidr-pool`).
    /// Empty: none configured, pod CIDRs are only held to the other rules.
    pub cluster_pools: Vec<IpNet>,
    /// The service ranges (`--service-cidr`): no pod CIDR overlaps one, no endpoint is in one.
    pub service_ranges: Vec<IpNet>,
    /// The pod ranges of `node-subnet` IPAM (`--pod-range-v4`, `--pod-range-v6`), inside the
    /// nodes' own subnet. When set, every pod CIDR (a node's block) must lie in one of them or
    /// in a cluster pool, a record may carry [`MAX_NODE_SUBNET_BLOCKS_PER_FAMILY`] pod CIDRs
    /// per family, and an endpoint may lie in them (the nodes share the subnet with the pods;
    /// an endpoint inside another node's block is still a conflict, see [`admit`]).
    pub node_subnets: Vec<IpNet>,
}

impl TrustPolicy {
    /// The most pod CIDRs of one family a record may carry under this policy.
    pub fn max_pod_cidrs_per_family(&self) -> usize {
        if self.node_subnets.is_empty() {
            MAX_POD_CIDRS_PER_FAMILY
        } else {
            MAX_NODE_SUBNET_BLOCKS_PER_FAMILY
        }
    }
}

/// A record this node refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record of node \"{node}\" refused: field {field}: {reason}")]
pub struct Refusal {
    /// The refused node.
    pub node: String,
    /// The record field at fault (`podCIDRs`, `endpoints`, `publicKey`, `secondKey`).
    pub field: &'static str,
    /// What is wrong, naming the value and, for a conflict, the other node.
    pub reason: String,
    /// For a conflict: the node holding the contested claim.
    pub holder: Option<String>,
}

/// The claims of one accepted node, as remembered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// Its public keys (both slots).
    pub keys: ClaimSet<PublicKey>,
    /// Its pod CIDRs.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: ClaimSet<IpNet>,
    /// Its endpoints.
    pub endpoints: ClaimSet<IpAddr>,
    /// The slot its rotation was draining when last accepted: that slot's key may change in
    /// the next record (the last step of a rotation publishes it with the drain lifted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<u8>,
}

/// What this node accepted last: per node, the claims that are established (they win any
/// conflict against a new claim). The daemon keeps it across restarts.
///
/// Two memories are equal when they remember the same claims, wherever they come from.
#[derive(Clone, Debug, Default, Eq, Serialize, Deserialize)]
pub struct Established {
    /// Accepted nodes and their claims, by name (a refused node that was accepted before keeps
    /// the claims it had then, while its record is still there).
    pub nodes: BTreeMap<String, Claims>,
    /// Whether [`admit`] of this run produced it (not read back from disk, not empty): only
    /// then are keys held to continuity. Never persisted.
    #[serde(skip)]
    pub from_this_run: bool,
}

impl PartialEq for Established {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
    }
}

impl Established {
    /// The claims of every accepted record (this node's own left out: it is always strongest).
    pub fn of<'a>(accepted: impl IntoIterator<Item = &'a NodeRecord>) -> Established {
        Established {
            nodes: accepted
                .into_iter()
                .map(|r| (r.name.clone(), claims_of(r)))
                .collect(),
            from_this_run: false,
        }
    }
}

/// The outcome of [`admit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The records peers may be computed from (this node's own included when given).
    pub accepted: BTreeMap<String, NodeRecord>,
    /// The refused records, sorted by node then field; one refusal per node (the first
    /// reason found).
    pub refused: Vec<Refusal>,
    /// The memory for the next admission: the accepted nodes' claims.
    pub established: Established,
}

fn claims_of(r: &NodeRecord) -> Claims {
    Claims {
        keys: SLOTS
            .iter()
            .filter_map(|s| r.slot(*s))
            .map(|k| k.public_key)
            .collect(),
        pod_cidrs: r.pod_cidrs.iter().map(IpNet::trunc).collect(),
        endpoints: r.endpoints.iter().map(IpAddr::to_canonical).collect(),
        draining: r.rotation.step.and_then(|step| step.draining),
    }
}

/// IPv4 ranges no pod CIDR may touch and no endpoint may be in: "this network", loopback,
/// link-local, multicast and reserved (with the limited broadcast).
const SPECIAL_V4: [&str; 5] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// The same for IPv6: unspecified, loopback, IPv4-mapped, link-local and multicast.
const SPECIAL_V6: [&str; 5] = [
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "fe80::/10",
    "ff00::/8",
];

/// The special-purpose ranges, parsed once (every record's every CIDR and endpoint is
/// checked against them).
fn special_ranges() -> impl Iterator<Item = (IpNet, &'static str)> {
    static PARSED: std::sync::LazyLock<Vec<(IpNet, &'static str)>> =
        std::sync::LazyLock::new(|| parse_special_ranges().collect());
    PARSED.iter().copied()
}

fn parse_special_ranges() -> impl Iterator<Item = (IpNet, &'static str)> {
    let name = |s: &str| match s {
        "0.0.0.0/8" | "::/128" => "unspecified (\"this network\")",
        "127.0.0.0/8" | "::1/128" => "loopback",
        "169.254.0.0/16" | "fe80::/10" => "link-local",
        "224.0.0.0/4" | "ff00::/8" => "multicast",
        "::ffff:0:0/96" => "IPv4-mapped",
        _ => "reserved",
    };
    SPECIAL_V4.iter().chain(SPECIAL_V6.iter()).map(move |s| {
        (
            s.parse().unwrap_or_else(|e| unreachable!("{s}: {e}")),
            name(s),
        )
    })
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn list(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one record on its own (see the module docs).
pub fn check_record(r: &NodeRecord, policy: &TrustPolicy) -> Result<(), Refusal> {
    let refuse = |field: &'static str, reason: String| Refusal {
        node: r.name.clone(),
        field,
        reason,
        holder: None,
    };
    let cap = policy.max_pod_cidrs_per_family();
    let mut per_family = [0usize; 2];
    for cidr in &r.pod_cidrs {
        let (family, range) = match cidr {
            IpNet::V4(_) => (0, IPV4_PREFIX),
            IpNet::V6(_) => (1, IPV6_PREFIX),
        };
        per_family[family] += 1;
        if per_family[family] > cap {
            return Err(refuse(
                "podCIDRs",
                format!("more than {cap} pod CIDRs of the family of {cidr}"),
            ));
        }
        if !range.contains(&cidr.prefix_len()) {
            return Err(refuse(
                "podCIDRs",
                format!(
                    "{cidr}: prefix length /{} is outside /{}../{}",
                    cidr.prefix_len(),
                    range.start(),
                    range.end()
                ),
            ));
        }
        if let Some((special, what)) = special_ranges().find(|(s, _)| overlaps(s, cidr)) {
            return Err(refuse(
                "podCIDRs",
                format!("{cidr} overlaps the {what} range {special}"),
            ));
        }
        let pools: Vec<IpNet> = policy
            .cluster_pools
            .iter()
            .chain(&policy.node_subnets)
            .copied()
            .collect();
        if !pools.is_empty() && !pools.iter().any(|p| p.contains(cidr)) {
            let what = if policy.node_subnets.is_empty() {
                "the cluster pools"
            } else {
                "the node-subnet pod ranges and cluster pools"
            };
            return Err(refuse(
                "podCIDRs",
                format!("{cidr} lies outside {what} ({})", list(&pools)),
            ));
        }
        if let Some(svc) = policy.service_ranges.iter().find(|s| overlaps(s, cidr)) {
            return Err(refuse(
                "podCIDRs",
                format!("{cidr} overlaps the service range {svc}"),
            ));
        }
    }
    let mut per_family = [0usize; 2];
    for ip in &r.endpoints {
        let family = usize::from(ip.to_canonical().is_ipv6());
        per_family[family] += 1;
        if per_family[family] > MAX_ENDPOINTS_PER_FAMILY {
            return Err(refuse(
                "endpoints",
                format!("more than {MAX_ENDPOINTS_PER_FAMILY} endpoints of the family of {ip}"),
            ));
        }
        check_endpoint(ip, policy).map_err(|reason| refuse("endpoints", reason))?;
    }
    Ok(())
}

fn check_endpoint(ip: &IpAddr, policy: &TrustPolicy) -> Result<(), String> {
    let canonical = ip.to_canonical();
    if canonical == IpAddr::from([255, 255, 255, 255]) {
        return Err(format!("{ip} is the broadcast address"));
    }
    if let Some((_, what)) = special_ranges().find(|(s, _)| s.contains(&canonical)) {
        return Err(format!("{ip} is a {what} address"));
    }
    if let Some(pool) = policy.cluster_pools.iter().find(|p| p.contains(&canonical)) {
        return Err(format!("{ip} lies inside the cluster pool {pool}"));
    }
    if let Some(svc) = policy
        .service_ranges
        .iter()
        .find(|s| s.contains(&canonical))
    {
        return Err(format!("{ip} lies inside the service range {svc}"));
    }
    Ok(())
}

/// Checks that an established node's keys (`claims`) change only through its rotation
/// protocol (see the module docs).
pub fn check_key_continuity(r: &NodeRecord, claims: &Claims) -> Result<(), Refusal> {
    if claims.keys.is_empty() {
        return Ok(());
    }
    let replaced = r
        .rotation
        .step
        .filter(|step| step.replaced)
        .and_then(|step| step.draining);
    for slot in SLOTS {
        let Some(key) = r.slot(slot).map(|k| k.public_key) else {
            continue;
        };
        let was_draining = claims.draining.map(usize::from) == Some(slot.index());
        if claims.keys.contains(&key)
            || replaced.map(usize::from) == Some(slot.index())
            || was_draining
        {
            continue;
        }
        // A meshd that had one slot adds its second: a first key, not a changed one.
        let first_second_key =
            slot.index() == 1 && claims.keys.len() == 1 && claims.keys.contains(&r.public_key);
        if first_second_key {
            continue;
        }
        let known = claims
            .keys
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Refusal {
            node: r.name.clone(),
            field: if slot.index() == 1 {
                "secondKey"
            } else {
                "publicKey"
            },
            reason: format!(
                "public key {key} replaces the established key(s) {known} outside the node's \
                 key rotation (a new key is accepted only in the rotation step that replaced \
                 its slot, or right after a step draining it)"
            ),
            holder: None,
        });
    }
    Ok(())
}

/// How strong a claim is: this node's own, established, or new.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Strength {
    New,
    Established,
    Own,
}

impl Strength {
    fn word(self) -> &'static str {
        match self {
            Strength::New => "new",
            Strength::Established => "established",
            Strength::Own => "this node's own",
        }
    }
}

/// One claim of a node that another node's claim can contest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Key { key: PublicKey, second: bool },
    Cidr(IpNet),
    Endpoint(IpAddr),
}

impl Item {
    fn field(self) -> &'static str {
        match self {
            Item::Key { second: false, .. } => "publicKey",
            Item::Key { second: true, .. } => "secondKey",
            Item::Cidr(_) => "podCIDRs",
            Item::Endpoint(_) => "endpoints",
        }
    }

    fn describe(self) -> String {
        match self {
            Item::Key { key, .. } => format!("public key {key}"),
            Item::Cidr(c) => format!("pod CIDR {c}"),
            Item::Endpoint(ip) => format!("endpoint {ip}"),
        }
    }

    /// The claim as a prefix, for the overlap sweep (keys have none).
    fn net(self) -> Option<IpNet> {
        match self {
            Item::Key { .. } => None,
            Item::Cidr(c) => Some(c),
            Item::Endpoint(ip) => Some(IpNet::from(ip)),
        }
    }
}

/// One node's claim: the node, the claimed item, and the claim's strength.
type Claim<'a> = (&'a str, Item, Strength);

/// A contested pair of claims of two different nodes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Contest<'a> {
    a: Claim<'a>,
    b: Claim<'a>,
}

fn items(r: &NodeRecord) -> Vec<Item> {
    let mut out: Vec<Item> = SLOTS
        .iter()
        .filter_map(|s| r.slot(*s).map(|k| (*s, k)))
        .map(|(s, k)| Item::Key {
            key: k.public_key,
            second: s.index() == 1,
        })
        .collect();
    out.extend(r.pod_cidrs.iter().map(|c| Item::Cidr(c.trunc())));
    out.extend(
        r.endpoints
            .iter()
            .map(|ip| Item::Endpoint(ip.to_canonical())),
    );
    out.sort();
    out.dedup();
    out
}

fn strength(name: &str, item: Item, me: &str, established: &Established) -> Strength {
    if name == me {
        return Strength::Own;
    }
    let Some(claims) = established.nodes.get(name) else {
        return Strength::New;
    };
    let known = match item {
        Item::Key { key, .. } => claims.keys.contains(&key),
        Item::Cidr(c) => claims.pod_cidrs.contains(&c),
        Item::Endpoint(ip) => claims.endpoints.contains(&ip),
    };
    if known {
        Strength::Established
    } else {
        Strength::New
    }
}

/// Every pair of contested claims among `nodes`: equal keys, and overlapping prefixes (pod
/// CIDRs and endpoints as host prefixes), found in one sorted sweep.
fn contests<'a>(
    nodes: &BTreeMap<&'a str, &'a NodeRecord>,
    me: &str,
    established: &Established,
) -> Vec<Contest<'a>> {
    let mut keyed: BTreeMap<PublicKey, Vec<(&str, Item)>> = BTreeMap::new();
    let mut nets: Vec<(IpNet, &str, Item)> = Vec::new();
    for (name, r) in nodes {
        for item in items(r) {
            match (item, item.net()) {
                (Item::Key { key, .. }, _) => keyed.entry(key).or_default().push((name, item)),
                (_, Some(net)) => nets.push((net, name, item)),
                (_, None) => {}
            }
        }
    }
    let claim = |name: &'a str, item: Item| (name, item, strength(name, item, me, established));
    let mut out = Vec::new();
    for holders in keyed.values() {
        for (i, (an, ai)) in holders.iter().enumerate() {
            for (bn, bi) in &holders[i + 1..] {
                if an != bn {
                    out.push(Contest {
                        a: claim(an, *ai),
                        b: claim(bn, *bi),
                    });
                }
            }
        }
    }
    nets.sort_by(|a, b| {
        (a.0.network(), a.0.prefix_len(), a.1, a.2).cmp(&(
            b.0.network(),
            b.0.prefix_len(),
            b.1,
            b.2,
        ))
    });
    let mut open: Vec<(IpNet, &str, Item)> = Vec::new();
    for (net, name, item) in nets {
        while open.last().is_some_and(|(top, _, _)| !top.contains(&net)) {
            open.pop();
        }
        for (_, other, other_item) in &open {
            if *other != name {
                out.push(Contest {
                    a: claim(other, *other_item),
                    b: claim(name, item),
                });
            }
        }
        open.push((net, name, item));
    }
    out.sort();
    out.dedup();
    out
}

fn conflict_refusal(loser: Claim<'_>, winner: Claim<'_>) -> Refusal {
    let outcome = if loser.2 == winner.2 {
        "both are refused"
    } else {
        "the newer claim is refused"
    };
    Refusal {
        node: loser.0.to_string(),
        field: loser.1.field(),
        reason: format!(
            "{} ({}) conflicts with {} ({}) of node {}; {outcome}",
            loser.1.describe(),
            loser.2.word(),
            winner.1.describe(),
            winner.2.word(),
            winner.0,
        ),
        holder: Some(winner.0.to_string()),
    }
}

/// Decides which records this node accepts (see the module docs).
///
/// `records` may include `me` under its name; `me` is always accepted and its claims are the
/// strongest. `established` is what the previous admission returned (empty on a node's first
/// start); the result carries the memory for the next one.
pub fn admit(
    records: &BTreeMap<String, NodeRecord>,
    me: &NodeRecord,
    policy: &TrustPolicy,
    established: &Established,
) -> Admission {
    let mut refused: BTreeMap<String, Refusal> = BTreeMap::new();
    let mut nodes: BTreeMap<&str, &NodeRecord> = BTreeMap::new();
    for (name, r) in records {
        if *name == me.name {
            continue;
        }
        match check_record(r, policy) {
            Ok(()) => {
                // A key that changed outside the rotation refuses the record, but the node
                // still holds its established claims against newcomers.
                let continuity = match established.nodes.get(name) {
                    Some(claims) if established.from_this_run => check_key_continuity(r, claims),
                    _ => Ok(()),
                };
                if let Err(refusal) = continuity {
                    refused.insert(name.clone(), refusal);
                }
                nodes.insert(name, r);
            }
            Err(refusal) => {
                refused.insert(name.clone(), refusal);
            }
        }
    }
    nodes.insert(&me.name, me);
    let all = contests(&nodes, &me.name, established);

    // Unequal strengths: the weaker node loses, but only to a node that itself stands (it
    // loses no contest among the nodes still in). Repeated until nothing changes; nodes that
    // still lose (cycles of mutual weaker claims) are all refused.
    let mut out: BTreeSet<&str> = BTreeSet::new();
    // Each unequal contest as (weaker claim, stronger claim).
    let unequal: Vec<(Claim<'_>, Claim<'_>)> = all
        .iter()
        .filter(|c| c.a.2 != c.b.2)
        .map(|c| {
            if c.a.2 < c.b.2 {
                (c.a, c.b)
            } else {
                (c.b, c.a)
            }
        })
        .collect();
    loop {
        let live: Vec<(Claim<'_>, Claim<'_>)> = unequal
            .iter()
            .filter(|(l, w)| !out.contains(l.0) && !out.contains(w.0))
            .copied()
            .collect();
        let losers: BTreeSet<&str> = live.iter().map(|(l, _)| l.0).collect();
        let standing: Vec<_> = live
            .iter()
            .filter(|(_, w)| !losers.contains(w.0))
            .copied()
            .collect();
        let decided = if standing.is_empty() { live } else { standing };
        if decided.is_empty() {
            break;
        }
        for (loser, winner) in decided {
            refused
                .entry(loser.0.to_string())
                .or_insert_with(|| conflict_refusal(loser, winner));
            out.insert(loser.0);
        }
    }
    // Equal strengths among the nodes still in: both are refused (never this node: its own
    // claims are the only ones that strong).
    let mut tied = Vec::new();
    for c in all.iter().filter(|c| c.a.2 == c.b.2) {
        if !out.contains(c.a.0) && !out.contains(c.b.0) {
            tied.push(c);
        }
    }
    for c in tied {
        for (loser, winner) in [(c.a, c.b), (c.b, c.a)] {
            if loser.0 != me.name {
                refused
                    .entry(loser.0.to_string())
                    .or_insert_with(|| conflict_refusal(loser, winner));
                out.insert(loser.0);
            }
        }
    }

    let accepted: BTreeMap<String, NodeRecord> = records
        .iter()
        .filter(|(name, _)| !refused.contains_key(*name))
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect();
    let mut next = Established::of(accepted.values().filter(|r| r.name != me.name));
    // A refused node that was established stays so (its record is still there): a hostile
    // version of its record can neither make it forget its keys nor hand its claims away.
    for (name, claims) in &established.nodes {
        if refused.contains_key(name) && records.contains_key(name) {
            next.nodes
                .entry(name.clone())
                .or_insert_with(|| claims.clone());
        }
    }
    next.from_this_run = true;
    Admission {
        accepted,
        refused: refused.into_values().collect(),
        established: next,
    }
}

#[cfg(test)]
mod tests;
