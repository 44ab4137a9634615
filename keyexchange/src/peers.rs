//! Pure peer computation: from all node records to the desired WireGuard peer set, and from
//! the programmed peers to the minimal list of operations reaching it. No I/O here.
//!
//! Conflicts are never "resolved" by picking a winner: when two nodes claim the same public key
//! or overlapping pod CIDRs, routing to either would be ambiguous, so every node involved is
//! left out (the rest of the mesh is unaffected) and the conflict is reported for logging.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::key::PublicKey;
use crate::record::NodeRecord;

/// A peer the device should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPeer {
    /// Node name (for logs).
    pub name: String,
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Where to send to; `None` when no address family is shared.
    pub endpoint: Option<SocketAddr>,
    /// The peer's pod networks, normalised, sorted and deduplicated.
    pub allowed_ips: Vec<IpNet>,
}

/// Two or more records that cannot all be programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Several nodes publish the same public key.
    DuplicateKey {
        /// The shared key.
        key: PublicKey,
        /// All nodes publishing it, sorted.
        nodes: Vec<String>,
    },
    /// Two nodes' pod CIDRs overlap (one contains the other).
    OverlappingCidr {
        /// The two nodes, sorted by name.
        nodes: (String, String),
        /// The overlapping CIDRs, in the same order as `nodes`.
        cidrs: (IpNet, IpNet),
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::DuplicateKey { key, nodes } => write!(
                f,
                "nodes {} share public key {key}; none of them is peered",
                nodes.join(", ")
            ),
            Conflict::OverlappingCidr { nodes, cidrs } => write!(
                f,
                "pod CIDR {} of node {} overlaps {} of node {}; neither is peered",
                cidrs.0, nodes.0, cidrs.1, nodes.1
            ),
        }
    }
}

/// The desired peers plus the conflicts found while computing them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerSet {
    /// Peers to program, by public key.
    pub peers: BTreeMap<PublicKey, DesiredPeer>,
    /// Conflicts, in deterministic order (duplicate keys by key, then overlaps by node pair).
    pub conflicts: Vec<Conflict>,
}

/// Truncates, sorts and deduplicates CIDRs.
fn normalise(cidrs: &[IpNet]) -> Vec<IpNet> {
    let set: BTreeSet<IpNet> = cidrs.iter().map(IpNet::trunc).collect();
    set.into_iter().collect()
}

/// Computes the peers `me` should have from all known records.
///
/// `records` may or may not include `me`; a record with `me`'s name is always replaced by `me`.
/// If several records share a name, the last one wins.
pub fn compute_peers<'a>(
    records: impl IntoIterator<Item = &'a NodeRecord>,
    me: &NodeRecord,
) -> PeerSet {
    let mut nodes: BTreeMap<&str, &NodeRecord> =
        records.into_iter().map(|r| (r.name.as_str(), r)).collect();
    nodes.insert(me.name.as_str(), me);

    let mut excluded: BTreeSet<&str> = BTreeSet::new();
    let mut conflicts = Vec::new();

    // Duplicate keys.
    let mut by_key: BTreeMap<PublicKey, Vec<&str>> = BTreeMap::new();
    for (name, r) in &nodes {
        by_key.entry(r.public_key).or_default().push(name);
    }
    for (key, names) in by_key {
        if names.len() > 1 {
            excluded.extend(names.iter().copied());
            conflicts.push(Conflict::DuplicateKey {
                key,
                nodes: names.into_iter().map(str::to_string).collect(),
            });
        }
    }

    // Overlapping CIDRs. Sorted by (network address, prefix length) a containing prefix comes
    // before everything it contains, so a stack of the currently "open" prefixes finds every
    // containment pair in one sweep.
    let mut all: Vec<(IpNet, &str)> = Vec::new();
    for (name, r) in &nodes {
        all.extend(normalise(&r.pod_cidrs).into_iter().map(|c| (c, *name)));
    }
    all.sort_by(|a, b| {
        (a.0.network(), a.0.prefix_len(), a.1).cmp(&(b.0.network(), b.0.prefix_len(), b.1))
    });
    let mut overlaps: BTreeMap<(&str, &str), (IpNet, IpNet)> = BTreeMap::new();
    let mut open: Vec<(IpNet, &str)> = Vec::new();
    for (cidr, name) in all {
        while open.last().is_some_and(|(top, _)| !top.contains(&cidr)) {
            open.pop();
        }
        for (outer, other) in &open {
            if *other == name {
                continue;
            }
            let entry = if *other < name {
                ((*other, name), (*outer, cidr))
            } else {
                ((name, *other), (cidr, *outer))
            };
            overlaps.entry(entry.0).or_insert(entry.1);
        }
        open.push((cidr, name));
    }
    for ((a, b), cidrs) in overlaps {
        excluded.insert(a);
        excluded.insert(b);
        conflicts.push(Conflict::OverlappingCidr {
            nodes: (a.to_string(), b.to_string()),
            cidrs,
        });
    }

    let my_v4 = me.endpoints.iter().any(IpAddr::is_ipv4);
    let my_v6 = me.endpoints.iter().any(IpAddr::is_ipv6);
    let mut peers = BTreeMap::new();
    for (name, r) in nodes {
        if name == me.name || excluded.contains(name) {
            continue;
        }
        let pick = |want_v4: bool| {
            r.endpoints
                .iter()
                .find(|ip| ip.is_ipv4() == want_v4)
                .copied()
        };
        let ip = my_v4
            .then(|| pick(true))
            .flatten()
            .or_else(|| my_v6.then(|| pick(false)).flatten());
        peers.insert(
            r.public_key,
            DesiredPeer {
                name: r.name.clone(),
                public_key: r.public_key,
                endpoint: ip.map(|ip| SocketAddr::new(ip, r.listen_port)),
                allowed_ips: normalise(&r.pod_cidrs),
            },
        );
    }
    PeerSet { peers, conflicts }
}

/// A peer as currently programmed on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedPeer {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// The current endpoint (possibly learned by roaming).
    pub endpoint: Option<SocketAddr>,
    /// The current allowed IPs, in any order.
    pub allowed_ips: Vec<IpNet>,
    /// The persistent keepalive interval in seconds; `None` when off.
    pub keepalive: Option<u16>,
}

/// What [`diff_peers_by_key`] reads of a programmed peer, however the caller keeps it (a
/// caller keeping peers by key need not repeat the key in each value).
pub trait Programmed {
    /// The current endpoint.
    fn endpoint(&self) -> Option<SocketAddr>;
    /// The current allowed IPs, in any order.
    fn allowed_ips(&self) -> &[IpNet];
    /// The persistent keepalive interval in seconds; `None` when off.
    fn keepalive(&self) -> Option<u16>;
}

impl Programmed for ProgrammedPeer {
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

impl<T: Programmed + ?Sized> Programmed for &T {
    fn endpoint(&self) -> Option<SocketAddr> {
        (**self).endpoint()
    }
    fn allowed_ips(&self) -> &[IpNet] {
        (**self).allowed_ips()
    }
    fn keepalive(&self) -> Option<u16> {
        (**self).keepalive()
    }
}

/// One change to the device's peer list.
///
/// Applying: `Add` creates the peer with exactly the given endpoint and allowed IPs. `Update`
/// *replaces* the allowed IPs, and sets the endpoint only when it is `Some` (a `None` endpoint
/// leaves whatever the device has, e.g. a roamed address). `Remove` deletes the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerOp {
    /// Create a peer.
    Add(DesiredPeer),
    /// Change an existing peer's endpoint and/or allowed IPs.
    Update(DesiredPeer),
    /// Delete a peer.
    Remove(PublicKey),
}

/// Minimal operations turning `programmed` into `desired`, every peer with the persistent
/// keepalive `keepalive` (`None` or `Some(0)`: off).
///
/// Order: all removes, then updates, then adds, each sorted by key (removing first frees CIDRs
/// that another peer may take over). An existing peer is updated only if its allowed-IP set
/// differs (order-insensitive, normalised), the desired endpoint is `Some` and differs, or its
/// keepalive differs.
pub fn diff_peers(
    programmed: &[ProgrammedPeer],
    desired: &PeerSet,
    keepalive: Option<u16>,
) -> Vec<PeerOp> {
    let current: BTreeMap<PublicKey, &ProgrammedPeer> =
        programmed.iter().map(|p| (p.public_key, p)).collect();
    diff_peers_by_key(&current, desired, keepalive)
}

/// [`diff_peers`] of the programmed peers by key, as a device's peers are kept: nothing is
/// copied, and a peer whose allowed IPs are listed as wanted costs no normalising.
pub fn diff_peers_by_key<P: Programmed>(
    current: &BTreeMap<PublicKey, P>,
    desired: &PeerSet,
    keepalive: Option<u16>,
) -> Vec<PeerOp> {
    let keepalive = keepalive.filter(|k| *k > 0);
    let mut removes = Vec::new();
    let mut updates = Vec::new();
    let mut adds = Vec::new();
    for key in current.keys() {
        if !desired.peers.contains_key(key) {
            removes.push(PeerOp::Remove(*key));
        }
    }
    for (key, want) in &desired.peers {
        match current.get(key) {
            None => adds.push(PeerOp::Add(want.clone())),
            Some(have) => {
                let have_ips = have.allowed_ips();
                let ips_differ = have_ips != want.allowed_ips.as_slice()
                    && normalise(have_ips) != normalise(&want.allowed_ips);
                let endpoint_differs = want.endpoint.is_some() && want.endpoint != have.endpoint();
                let keepalive_differs = have.keepalive().filter(|k| *k > 0) != keepalive;
                if ips_differ || endpoint_differs || keepalive_differs {
                    updates.push(PeerOp::Update(want.clone()));
                }
            }
        }
    }
    removes.extend(updates);
    removes.extend(adds);
    removes
}

#[cfg(test)]
mod tests;
