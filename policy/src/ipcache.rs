//! The remote pods as the compiler needs them: an address → identity table, without pod objects.
//!
//! A pod on another node matters to this node's policy only as a peer: which addresses it holds
//! and what a selector or a named port reads of it, its namespace, labels and named ports. That
//! triple is its [`Identity`], interned once and shared by every pod of the same workload (a
//! small [`IdentityId`]); a remote pod is then one entry per address, `(address, identity)`,
//! with IPv4 and IPv6 addresses as fixed-size keys (address, identity id, and the pod's
//! position in its node's list of names), each list keeping the address bytes all its entries
//! share once ([`packed`]: 7 bytes an entry in the scale harness, where 10 and 22 were held).
//!
//! Each node's entries are kept as that node's endpoint batch said them, as two sorted packed
//! lists (exactly their size, no slack), so a node's new batch is diffed against its old one
//! entry by entry, and a change reports only the identities whose addresses changed
//! ([`RemoteEndpoints::set_node`]): the compiler recompiles the endpoints whose policies select
//! one of those, one identity lookup per change instead of one per pod. The pods' names, which
//! only the flow records show, are one front-coded byte string per node (each name stored as
//! what it does not share with the one before), not a string each. An identity is one shared
//! slice of names ([`identity`]); one no entry uses any more is forgotten and its id reused
//! ([`identities`]), so the table shrinks with its content. A node's lists are shared (`Arc`), so a reader such as the flow
//! collector's table holds the same lists rather than a copy.
//!
//! Pure: no I/O. The world holds one ([`crate::World::remote`]); local pods stay full pods in
//! [`crate::World::pods`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use self::identities::Identities;
pub use self::identities::IdentitySlots;
pub use self::identity::Identity;
use self::packed::{Entry, PackedEntries};
use crate::intern::Name;
use crate::model::Pod;

/// An interned identity's number, valid in the table that handed it out while an entry uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityId(pub u32);

/// Another node's pod as its batch lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePod {
    /// The pod's name (shown in flow records only; policy never reads it).
    pub name: Name,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its identity.
    pub identity: Identity,
}

impl RemotePod {
    /// The remote view of `pod` (its name, addresses and identity).
    pub fn of(pod: Pod) -> Self {
        Self {
            name: pod.key.name,
            addresses: pod.addresses,
            identity: Identity::new(pod.key.namespace, pod.labels.view(), &pod.named_ports),
        }
    }
}

/// One node's entries, each list sorted by address, and its pods' names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeEntries {
    /// How many pods the batch listed (a dual-stack pod has two entries).
    pods: u32,
    /// The pods' names in the batch's order, front-coded ([`NameCoder`]).
    names: Box<[u8]>,
    v4: PackedEntries<4>,
    v6: PackedEntries<16>,
}

impl NodeEntries {
    /// The identity id and pod name of `address`, if this node holds it.
    pub fn get(&self, address: IpAddr) -> Option<(IdentityId, String)> {
        let (identity, pod) = match address {
            IpAddr::V4(a) => self
                .v4
                .find(&a.octets())
                .map(|e| (e.identity(), e.position()))?,
            IpAddr::V6(a) => self
                .v6
                .find(&a.octets())
                .map(|e| (e.identity(), e.position()))?,
        };
        let name = self.names().nth(usize::from(pod))?;
        Some((identity, name))
    }

    /// The pods' names, in the batch's order.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        NameDecoder {
            rest: &self.names,
            current: Vec::new(),
        }
    }

    /// The entries: address and identity id, IPv4 first, each family in address order.
    pub fn entries(&self) -> impl Iterator<Item = (IpAddr, IdentityId)> + '_ {
        node_entries(self)
    }

    /// How many pods the batch listed.
    pub fn pods(&self) -> usize {
        self.pods as usize
    }
}

/// The remote pods by node, as address → identity entries (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct RemoteEndpoints {
    identities: Identities,
    nodes: BTreeMap<Name, Arc<NodeEntries>>,
}

impl RemoteEndpoints {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Node `node`'s pods are exactly `pods`, replacing what was held for it; an empty list
    /// forgets the node. Returns the identities whose addresses changed (entries added,
    /// removed or given another identity), old and new, each once. Positions past 65,535 (more
    /// pods than a batch may list) share the last name.
    pub fn set_node(
        &mut self,
        node: &str,
        pods: impl IntoIterator<Item = RemotePod>,
    ) -> Vec<Identity> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut names = NameCoder::default();
        let mut count = 0u32;
        let mut created = Vec::new();
        for pod in pods {
            let position = u16::try_from(count).unwrap_or(u16::MAX).to_ne_bytes();
            count += 1;
            names.push(&pod.name);
            let identity = self
                .identities
                .intern(pod.identity, &mut created)
                .0
                .to_ne_bytes();
            for address in pod.addresses {
                match address {
                    IpAddr::V4(a) => v4.push(Entry {
                        address: a.octets(),
                        identity,
                        pod: position,
                    }),
                    IpAddr::V6(a) => v6.push(Entry {
                        address: a.octets(),
                        identity,
                        pod: position,
                    }),
                }
            }
        }
        v4.sort_unstable();
        v4.dedup_by_key(|e| e.key());
        v6.sort_unstable();
        v6.dedup_by_key(|e| e.key());
        let new = Arc::new(NodeEntries {
            pods: count,
            names: names.finish(),
            v4: PackedEntries::pack(&v4),
            v6: PackedEntries::pack(&v6),
        });
        self.adjust(&new, true);
        let old = if new.pods == 0 {
            self.nodes.remove(node)
        } else {
            match self.nodes.get_mut(node) {
                Some(held) => Some(std::mem::replace(held, new.clone())),
                None => {
                    self.nodes.insert(Name::from(node), new.clone());
                    None
                }
            }
        }
        .unwrap_or_default();
        let mut changed = BTreeSet::new();
        diff(&old.v4, &new.v4, &mut changed);
        diff(&old.v6, &new.v6, &mut changed);
        let changed: Vec<Identity> = changed
            .into_iter()
            .filter_map(|id| self.get(id).cloned())
            .collect();
        self.adjust(&old, false);
        // Identities interned for pods without addresses hold no entry.
        for id in created {
            self.identities.free_if_unused(id);
        }
        self.identities.shrink();
        changed
    }

    /// Forgets node `node`; returns the identities whose addresses that removed.
    pub fn remove_node(&mut self, node: &str) -> Vec<Identity> {
        self.set_node(node, std::iter::empty())
    }

    /// The identity `id`, if held.
    pub fn get(&self, id: IdentityId) -> Option<&Identity> {
        self.identities.slots().get(id)
    }

    /// The identities held, with their ids.
    pub fn identities(&self) -> impl Iterator<Item = (IdentityId, &Identity)> + '_ {
        self.identities.slots().iter()
    }

    /// One past the largest id held (a vector this long indexes every identity).
    pub fn id_bound(&self) -> usize {
        self.identities.slots().bound()
    }

    /// The identities by id, for a reader to keep a copy of: cloning it shares the slots
    /// (a pointer per 256 ids), and this table copies a part it changes while shared.
    pub fn identity_slots(&self) -> &IdentitySlots {
        self.identities.slots()
    }

    /// Every entry: address and identity id, node by node.
    pub fn entries(&self) -> impl Iterator<Item = (IpAddr, IdentityId)> + '_ {
        self.nodes.values().flat_map(|n| node_entries(n))
    }

    /// Node `node`'s entries.
    pub fn node_entries(&self, node: &str) -> impl Iterator<Item = (IpAddr, IdentityId)> + '_ {
        self.nodes
            .get(node)
            .into_iter()
            .flat_map(|n| node_entries(n))
    }

    /// The nodes held.
    pub fn nodes(&self) -> impl Iterator<Item = &Name> + '_ {
        self.nodes.keys()
    }

    /// The identity node `node` gives `address`, if any.
    pub fn lookup(&self, node: &str, address: IpAddr) -> Option<IdentityId> {
        self.nodes.get(node)?.get(address).map(|(id, _)| id)
    }

    /// Node `node`'s pods as held: each name with its addresses and identity, in the batch's
    /// order (a pod without addresses has no identity held: it gets the empty one, which
    /// selects and serves nothing since it has no address).
    pub fn node_pods(&self, node: &str) -> Vec<RemotePod> {
        let Some(entries) = self.nodes.get(node) else {
            return Vec::new();
        };
        let mut pods: Vec<RemotePod> = entries
            .names()
            .map(|name| RemotePod {
                name: name.into(),
                addresses: Vec::new(),
                identity: Identity::default(),
            })
            .collect();
        let positions = entries
            .v4
            .iter()
            .map(|e| {
                (
                    IpAddr::V4(Ipv4Addr::from(e.address)),
                    e.identity(),
                    e.position(),
                )
            })
            .chain(entries.v6.iter().map(|e| {
                (
                    IpAddr::V6(Ipv6Addr::from(e.address)),
                    e.identity(),
                    e.position(),
                )
            }));
        for (address, id, position) in positions {
            if let Some(pod) = pods.get_mut(usize::from(position)) {
                pod.addresses.push(address);
                if let Some(identity) = self.get(id) {
                    pod.identity = identity.clone();
                }
            }
        }
        pods
    }

    /// Node `node`'s entries and names, shared.
    pub fn node(&self, node: &str) -> Option<&Arc<NodeEntries>> {
        self.nodes.get(node)
    }

    /// How many pods the nodes' batches listed.
    pub fn pods(&self) -> usize {
        self.nodes.values().map(|n| n.pods as usize).sum()
    }

    /// How many entries (addresses).
    pub fn len(&self) -> usize {
        self.nodes.values().map(|n| n.v4.len() + n.v6.len()).sum()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Counts one use per entry of `entries` (`acquire`), or lets go of one (forgetting the
    /// identities no entry uses any more).
    fn adjust(&mut self, entries: &NodeEntries, acquire: bool) {
        let ids = entries
            .v4
            .iter()
            .map(|e| e.identity())
            .chain(entries.v6.iter().map(|e| e.identity()));
        for id in ids {
            if acquire {
                self.identities.acquire(id);
            } else {
                self.identities.release(id);
            }
        }
    }
}

/// Writes a node's pod names front-coded: each name is the length of the prefix it shares with
/// the name before it (one byte, at most 255), the rest of it, then a newline (a pod name
/// never holds one). A node's pods share most of their names (`web-7d9f8b6c4-x2x9k`,
/// `web-7d9f8b6c4-q8z2m`; the harness's `sim-00042-p17`), so a name costs a few bytes.
#[derive(Default)]
struct NameCoder {
    coded: Vec<u8>,
    previous: Vec<u8>,
}

impl NameCoder {
    fn push(&mut self, name: &str) {
        let name = name.as_bytes();
        let shared = self
            .previous
            .iter()
            .zip(name)
            .take(usize::from(u8::MAX))
            .take_while(|(a, b)| a == b)
            .count();
        self.coded.push(shared as u8);
        self.coded.extend_from_slice(&name[shared..]);
        self.coded.push(b'\n');
        self.previous.clear();
        self.previous.extend_from_slice(name);
    }

    fn finish(self) -> Box<[u8]> {
        self.coded.into_boxed_slice()
    }
}

/// Reads what [`NameCoder`] wrote, name by name.
struct NameDecoder<'a> {
    rest: &'a [u8],
    current: Vec<u8>,
}

impl Iterator for NameDecoder<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let (&shared, rest) = self.rest.split_first()?;
        let end = rest.iter().position(|b| *b == b'\n')?;
        self.current.truncate(usize::from(shared));
        self.current.extend_from_slice(&rest[..end]);
        self.rest = &rest[end + 1..];
        // The bytes are a whole name as it was pushed, so valid UTF-8.
        Some(String::from_utf8_lossy(&self.current).into_owned())
    }
}

fn node_entries(entries: &NodeEntries) -> impl Iterator<Item = (IpAddr, IdentityId)> + '_ {
    entries
        .v4
        .iter()
        .map(|e| (IpAddr::V4(Ipv4Addr::from(e.address)), e.identity()))
        .chain(
            entries
                .v6
                .iter()
                .map(|e| (IpAddr::V6(Ipv6Addr::from(e.address)), e.identity())),
        )
}

/// Adds to `changed` the identities of the entries (address and identity) in one sorted list
/// and not the other.
fn diff<const N: usize>(
    old: &PackedEntries<N>,
    new: &PackedEntries<N>,
    changed: &mut BTreeSet<IdentityId>,
) {
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let taken = match (old.peek().map(Entry::key), new.peek().map(Entry::key)) {
            (Some(a), Some(b)) if a == b => {
                old.next();
                new.next();
                continue;
            }
            (Some(a), Some(b)) if a < b => old.next(),
            (Some(_), Some(_)) | (None, Some(_)) => new.next(),
            (Some(_), None) => old.next(),
            (None, None) => break,
        };
        if let Some(entry) = taken {
            changed.insert(entry.identity());
        }
    }
}

impl PartialEq for RemoteEndpoints {
    /// Equal when every node holds the same addresses with equal identities (ids may differ).
    fn eq(&self, other: &Self) -> bool {
        type Resolved = Vec<(Name, u32, Box<[u8]>, Vec<(IpAddr, Identity)>)>;
        let resolved = |table: &Self| -> Resolved {
            table
                .nodes
                .iter()
                .map(|(node, entries)| {
                    let list = node_entries(entries)
                        .filter_map(|(a, id)| table.get(id).map(|i| (a, i.clone())))
                        .collect();
                    (node.clone(), entries.pods, entries.names.clone(), list)
                })
                .collect()
        };
        resolved(self) == resolved(other)
    }
}

impl Eq for RemoteEndpoints {}

mod identities;
mod identity;
mod packed;
#[cfg(test)]
mod tests;
