//! The pods by address, for flow enrichment: what the flow collector needs to name the two
//! ends of a flow (namespace, name, node, labels) and the NetworkPolicies that isolate them.
//!
//! The policy loop keeps it up to date as it applies each change, so the collector never
//! needs a copy of the world: an entry is the world's own pod (the world holds each pod behind
//! an `Arc`), which makes it a pointer per address.
//!
//! The index stores the pointer alone, not the address beside it: a slot is the pod's `Arc`
//! (8 bytes). Table `i` files each pod under the hash of its `i`-th address (the first table
//! holds every pod's first address, the second the dual-stack pods' second), so a slot's
//! address is always found again from the pod itself when the table grows. Keyed maps
//! (`HashMap<Ipv4Addr, Arc<Pod>>`, `HashMap<Ipv6Addr, _>`) took 16 and 24 bytes a slot, 74
//! bytes a dual-stack pod at 150,000 pods; this takes 32. The tables are sized to their
//! content and shrink when most of it goes.
//!
//! Other nodes' pods are not pods in the world but address → identity entries
//! ([`meshd_policy::ipcache`]): the table holds the same per-node lists (shared `Arc`s, so a
//! node's list costs a pointer here) and the identities they name, and finds a remote address
//! in the list of the node owning it (the caller says which node's pod CIDR holds it), or by
//! trying every node's list when it cannot say.
//! Pure: no I/O; the loop and the collector share it behind a lock ([`SharedPodTable`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use meshd_policy::ipcache::{IdentitySlots, NodeEntries};
use meshd_policy::model::{Direction, LabelsView, Name, Pod, PodKey, Policy, PolicyKey};
use meshd_policy::{Change, World};

/// What a change will do to the table, taken from the world before it is applied
/// ([`PodTable::before`]) and completed from the world after it ([`PodTable::after`]).
#[derive(Debug)]
pub struct PendingChange {
    /// The pod changed, and its version before.
    pod: Option<(PodKey, Option<Arc<Pod>>)>,
    /// The policy changed.
    policy: Option<PolicyKey>,
    /// Another node's entries changed.
    remote_node: Option<String>,
}

/// A pod found by address: a local pod, or another node's by its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's name (another node's pod's is decoded from its node's names).
    pub name: Cow<'a, str>,
    /// The node it runs on (empty while unscheduled).
    pub node: &'a str,
    /// Its labels.
    pub labels: LabelsView<'a>,
}

impl<'a> From<&'a Pod> for PodView<'a> {
    fn from(pod: &'a Pod) -> Self {
        Self {
            namespace: &pod.key.namespace,
            name: Cow::Borrowed(&pod.key.name),
            node: &pod.node,
            labels: pod.labels.view(),
        }
    }
}

/// Pods by address and the policies (see the module doc).
#[derive(Debug, Default)]
pub struct PodTable {
    /// Table `i`: the pods by their `i`-th address (see the module doc).
    by_position: Vec<HashTable<Arc<Pod>>>,
    hasher: RandomState,
    policies: BTreeMap<PolicyKey, Policy>,
    /// Other nodes' entries, the world's own lists.
    remote: BTreeMap<Name, Arc<NodeEntries>>,
    /// The identities those entries name, by id (the world's, shared).
    identities: IdentitySlots,
}

/// The table shared by the policy loop (writer) and the flow collector (reader). Two handles
/// are equal when they are the same table.
#[derive(Clone, Debug, Default)]
pub struct SharedPodTable(Arc<RwLock<PodTable>>);

impl PartialEq for SharedPodTable {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedPodTable {}

impl SharedPodTable {
    /// The table, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, PodTable> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table, for writing.
    pub fn write(&self) -> RwLockWriteGuard<'_, PodTable> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PodTable {
    /// The table of `world`.
    pub fn from_world(world: &World) -> Self {
        let mut table = Self::default();
        table.rebuild(world);
        table
    }

    /// Makes the table that of `world`.
    pub fn rebuild(&mut self, world: &World) {
        self.by_position = Vec::new();
        for pod in world.pods.values() {
            self.insert(pod);
        }
        let hasher = &self.hasher;
        for (i, table) in self.by_position.iter_mut().enumerate() {
            table.shrink_to_fit(|slot| slot_hash(hasher, slot, i));
        }
        self.policies.clone_from(&world.policies);
        self.remote.clear();
        for node in world.remote.nodes() {
            self.take_node(world, node);
        }
    }

    /// Holds node `node`'s entries as `world` has them (none: forgets the node), and the
    /// identities they name.
    fn take_node(&mut self, world: &World, node: &str) {
        self.identities.clone_from(world.remote.identity_slots());
        match world.remote.node(node) {
            Some(entries) => self.remote.insert(node.into(), entries.clone()),
            None => self.remote.remove(node),
        };
    }

    /// What `change` will do, from `world` before it is applied.
    pub fn before(world: &World, change: &Change) -> PendingChange {
        let (pod, policy) = match change {
            Change::UpsertPod(pod) => (Some(pod.key.clone()), None),
            Change::RemovePod(key) => (Some(key.clone()), None),
            Change::UpsertPolicy(policy) => (None, Some(policy.key.clone())),
            Change::RemovePolicy(key) => (None, Some(key.clone())),
            Change::SetNodeEndpoints { node, .. } => {
                return PendingChange {
                    pod: None,
                    policy: None,
                    remote_node: Some(node.clone()),
                }
            }
            Change::UpsertNamespace(_)
            | Change::RemoveNamespace(_)
            | Change::AttachEndpoint { .. }
            | Change::DetachEndpoint(_) => (None, None),
        };
        PendingChange {
            pod: pod.map(|key| {
                let old = world.pods.get(&key).cloned();
                (key, old)
            }),
            policy,
            remote_node: None,
        }
    }

    /// Takes the change `pending` describes, now applied to `world`.
    pub fn after(&mut self, world: &World, pending: PendingChange) {
        if let Some(node) = pending.remote_node {
            self.take_node(world, &node);
        }
        if let Some((key, old)) = pending.pod {
            if let Some(old) = old {
                self.remove(&old);
            }
            if let Some(new) = world.pods.get(&key) {
                self.insert(new);
            }
        }
        if let Some(key) = pending.policy {
            match world.policies.get(&key) {
                Some(policy) => {
                    self.policies.insert(key, policy.clone());
                }
                None => {
                    self.policies.remove(&key);
                }
            }
        }
    }

    /// The pod holding `address`.
    pub fn pod(&self, address: &IpAddr) -> Option<&Pod> {
        self.entry(address).map(|pod| &**pod)
    }

    /// The pod holding `address`: a local pod, else another node's: looked up in the list of
    /// `node` if given (the node whose pod CIDR holds the address), else in every node's.
    pub fn find(&self, address: &IpAddr, node: Option<&str>) -> Option<PodView<'_>> {
        if let Some(pod) = self.pod(address) {
            return Some(pod.into());
        }
        match node {
            Some(node) => self
                .remote
                .get_key_value(node)
                .and_then(|(node, entries)| self.remote_view(node, entries, address)),
            None => self
                .remote
                .iter()
                .find_map(|(node, entries)| self.remote_view(node, entries, address)),
        }
    }

    /// Another node's pod holding `address`, from that node's entries.
    fn remote_view<'a>(
        &'a self,
        node: &'a Name,
        entries: &'a NodeEntries,
        address: &IpAddr,
    ) -> Option<PodView<'a>> {
        let (id, name) = entries.get(*address)?;
        let identity = self.identities.get(id)?;
        Some(PodView {
            namespace: identity.namespace(),
            name: Cow::Owned(name),
            node,
            labels: identity.labels(),
        })
    }

    /// Pods known (by address: a dual-stack pod counts twice).
    pub fn addresses(&self) -> usize {
        self.by_position.iter().map(HashTable::len).sum::<usize>()
            + self
                .remote
                .values()
                .map(|n| n.entries().count())
                .sum::<usize>()
    }

    /// The policies isolating `pod` in `direction`.
    pub fn isolating<'a>(
        &'a self,
        pod: PodView<'a>,
        direction: Direction,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.values().filter(move |p| {
            p.key.namespace == pod.namespace
                && p.applies_to(direction)
                && p.pod_selector.matches(&pod.labels)
        })
    }

    fn entry(&self, address: &IpAddr) -> Option<&Arc<Pod>> {
        let hash = self.hasher.hash_one(address);
        self.by_position
            .iter()
            .enumerate()
            .find_map(|(i, table)| table.find(hash, |pod| pod.addresses.get(i) == Some(address)))
    }

    /// Files `pod` under each of its addresses, taking them from any pod holding them.
    fn insert(&mut self, pod: &Arc<Pod>) {
        for (i, address) in pod.addresses.iter().enumerate() {
            let hash = self.hasher.hash_one(address);
            for (j, table) in self.by_position.iter_mut().enumerate() {
                if let Ok(held) = table.find_entry(hash, |p| p.addresses.get(j) == Some(address)) {
                    held.remove();
                }
            }
            if self.by_position.len() <= i {
                self.by_position.resize_with(i + 1, HashTable::new);
            }
            let hasher = &self.hasher;
            self.by_position[i].insert_unique(hash, pod.clone(), |slot| slot_hash(hasher, slot, i));
        }
    }

    /// Removes `pod`'s addresses, unless another pod holds them now.
    fn remove(&mut self, pod: &Pod) {
        for (i, address) in pod.addresses.iter().enumerate() {
            let hash = self.hasher.hash_one(address);
            let Some(table) = self.by_position.get_mut(i) else {
                continue;
            };
            if let Ok(held) = table.find_entry(hash, |held| {
                held.key == pod.key && held.addresses.get(i) == Some(address)
            }) {
                held.remove();
            }
            // Shrinks once three quarters are free (the next growth is then far away).
            if table.capacity() > 64 && table.len() < table.capacity() / 4 {
                let hasher = &self.hasher;
                table.shrink_to_fit(|slot| slot_hash(hasher, slot, i));
            }
        }
    }
}

/// The hash a slot of table `position` is filed under: its pod's address at that position.
fn slot_hash(hasher: &RandomState, slot: &Arc<Pod>, position: usize) -> u64 {
    slot.addresses
        .get(position)
        .map_or(0, |address| hasher.hash_one(address))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use meshd_policy::model::LabelSelector;

    use super::*;

    fn pod(name: &str, ip: &str, app: &str) -> Pod {
        Pod {
            key: PodKey::new("shop", name),
            labels: [("app".to_owned(), app.to_owned())].into(),
            addresses: vec![ip.parse().unwrap()],
            node: "n1".into(),
            named_ports: BTreeMap::new(),
        }
    }

    /// Applies `changes` to both the table and a world.
    fn apply(table: &mut PodTable, world: &mut World, changes: Vec<Change>) {
        for change in changes {
            let pending = PodTable::before(world, &change);
            match change {
                Change::UpsertPod(p) => {
                    world.pods.insert(p.key.clone(), p.into());
                }
                Change::RemovePod(k) => {
                    world.pods.remove(&k);
                }
                Change::UpsertPolicy(p) => {
                    world.policies.insert(p.key.clone(), p);
                }
                Change::RemovePolicy(k) => {
                    world.policies.remove(&k);
                }
                Change::SetNodeEndpoints { node, pods } => {
                    world.remote.set_node(&node, pods);
                }
                _ => {}
            }
            table.after(world, pending);
        }
    }

    #[test]
    fn kept_up_to_date_it_equals_the_table_built_from_the_world() {
        let (mut table, mut world) = (PodTable::default(), World::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        apply(
            &mut table,
            &mut world,
            vec![
                Change::UpsertPod(pod("a", "10.0.0.1", "web")),
                Change::UpsertPod(pod("b", "10.0.0.2", "db")),
                // a moves to another address; c takes a's old one before a lets go of it.
                Change::UpsertPod(pod("c", "10.0.0.1", "web")),
                Change::UpsertPod(pod("a", "10.0.0.3", "web")),
                Change::RemovePod(PodKey::new("shop", "b")),
                Change::UpsertPolicy(Policy {
                    key: PodKey::new("shop", "web-deny"),
                    pod_selector: LabelSelector::labels([("app", "web")]),
                    policy_types: None,
                    ingress: vec![],
                    egress: vec![],
                }),
            ],
        );
        assert_eq!(table.pod(&ip("10.0.0.1")).unwrap().key.name, "c");
        assert_eq!(table.pod(&ip("10.0.0.3")).unwrap().key.name, "a");
        assert!(table.pod(&ip("10.0.0.2")).is_none());
        let rebuilt = PodTable::from_world(&world);
        assert_eq!(table.entries(), rebuilt.entries());
        assert_eq!(table.entries().len(), 2);
        assert_eq!(table.policies, rebuilt.policies);
        let c = table.pod(&ip("10.0.0.1")).unwrap();
        let names: Vec<_> = table
            .isolating(c.into(), Direction::Ingress)
            .map(|p| p.key.name.to_string())
            .collect();
        assert_eq!(names, ["web-deny"]);
        assert_eq!(table.isolating(c.into(), Direction::Egress).count(), 0);
    }

    #[test]
    fn other_nodes_pods_are_found_in_their_node_entries() {
        let (mut table, mut world) = (PodTable::default(), World::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let remote = |name: &str, address: &str, app: &str| {
            meshd_policy::ipcache::RemotePod::of(pod(name, address, app))
        };
        apply(
            &mut table,
            &mut world,
            vec![
                Change::UpsertPod(pod("local", "10.0.1.1", "web")),
                Change::SetNodeEndpoints {
                    node: "n2".into(),
                    pods: vec![
                        remote("w2", "10.0.2.1", "web"),
                        remote("d2", "10.0.2.2", "db"),
                    ],
                },
                Change::SetNodeEndpoints {
                    node: "n3".into(),
                    pods: vec![remote("w3", "10.0.3.1", "web")],
                },
            ],
        );
        let found = table.find(&ip("10.0.2.2"), Some("n2")).unwrap();
        assert_eq!(
            (found.namespace, found.name.as_ref(), found.node),
            ("shop", "d2", "n2")
        );
        assert_eq!(found.labels.get("app").unwrap(), "db");
        assert_eq!(table.find(&ip("10.0.3.1"), None).unwrap().name, "w3");
        assert!(
            table.find(&ip("10.0.3.1"), Some("n2")).is_none(),
            "not n2's"
        );
        assert_eq!(table.find(&ip("10.0.1.1"), None).unwrap().name, "local");
        assert_eq!(table.addresses(), 4);
        // A rebuilt table finds the same; a node's new list replaces its old one.
        let rebuilt = PodTable::from_world(&world);
        assert_eq!(rebuilt.find(&ip("10.0.2.1"), None).unwrap().name, "w2");
        apply(
            &mut table,
            &mut world,
            vec![Change::SetNodeEndpoints {
                node: "n2".into(),
                pods: vec![remote("w2", "10.0.2.1", "api")],
            }],
        );
        assert!(table.find(&ip("10.0.2.2"), None).is_none());
        let w2 = table.find(&ip("10.0.2.1"), Some("n2")).unwrap();
        assert_eq!(w2.labels.get("app").unwrap(), "api");
    }

    impl PodTable {
        /// Every (address, pod) filed, sorted.
        fn entries(&self) -> Vec<(IpAddr, PodKey)> {
            let mut out: Vec<_> = self
                .by_position
                .iter()
                .enumerate()
                .flat_map(|(i, table)| {
                    table
                        .iter()
                        .map(move |pod| (pod.addresses[i], pod.key.clone()))
                })
                .collect();
            out.sort();
            out
        }
    }

    #[test]
    fn dual_stack_pods_are_found_by_either_address_through_growth_and_shrinking() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (mut table, mut world) = (PodTable::default(), World::default());
        let dual = |i: u32| {
            let mut p = pod(
                &format!("p{i}"),
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                "web",
            );
            p.addresses.push(ip(&format!("fd00::{:x}", i + 1)));
            p
        };
        apply(
            &mut table,
            &mut world,
            (0..2000).map(|i| Change::UpsertPod(dual(i))).collect(),
        );
        assert_eq!(table.addresses(), 4000);
        for i in [0, 999, 1999] {
            let p = dual(i);
            assert_eq!(table.pod(&p.addresses[0]).unwrap().key, p.key);
            assert_eq!(table.pod(&p.addresses[1]).unwrap().key, p.key);
        }
        let grown = table.by_position[1].capacity();
        apply(
            &mut table,
            &mut world,
            (10..2000).map(|i| Change::RemovePod(dual(i).key)).collect(),
        );
        assert_eq!(table.addresses(), 20);
        assert!(table.by_position[1].capacity() < grown / 4, "it shrank");
        assert_eq!(table.pod(&ip("fd00::a")).unwrap().key.name, "p9");
        assert!(table.pod(&ip("fd00::b")).is_none());
        assert_eq!(table.entries(), PodTable::from_world(&world).entries());
    }

    #[test]
    fn an_entry_is_the_worlds_pod() {
        let p = Arc::new(pod("a", "10.0.0.1", "web"));
        let world = World {
            pods: [(p.key.clone(), p.clone())].into(),
            ..Default::default()
        };
        let table = PodTable::from_world(&world);
        let entry = table.entry(&"10.0.0.1".parse().unwrap()).unwrap();
        assert!(Arc::ptr_eq(entry, &p));
    }
}
