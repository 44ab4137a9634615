//! What the object sources (the directory registry's `objects/` tree, the Kubernetes watches)
//! report, and the pure bookkeeping that turns it into the compiler's [`Change`]s.
//!
//! A source reports each kind as a list (`ListStart`, the objects, `ListDone`) followed by
//! single changes, and starts a new list whenever it may have missed changes (a watch that
//! could not be resumed, an inotify queue overflow). [`ObjectCache`] makes every list a diff:
//! objects that were known but are not listed again are removed, unchanged objects produce no
//! change. It keeps no copy of the objects: the compiler's [`World`] is the record of what is
//! known, so a pod is held once per node.
//!
//! A malformed object (a file that does not parse, an object [`meshd_policy::k8s`] refuses) is
//! refused alone: it is reported, the last good version of that object (if any) stays in
//! force, and its listing counts as a sighting so that a relist does not remove it.
//!
//! Pods arrive per node ([`ObjectEvent::NodePods`]): a node's own pods from its own watch, every
//! other node's from that node's endpoint batch ([`super::endpoint_batch`]). Each replaces what
//! was known of that node. A pod is held by one node: a batch claiming a pod another node
//! already holds is refused for that pod (reported) and taken up only once the holder lets go.
//!
//! A cache made for a node ([`ObjectCache::for_node`], as the policy loop does) keeps only
//! that node's pods as whole pods in the world; every other node's become address → identity
//! entries ([`meshd_policy::ipcache`], [`Change::SetNodeEndpoints`]), the node's whole list at
//! a time, diffed there. Their names are not keys any more: a batch's pod is refused while
//! this node holds a pod of the same name, but two other nodes listing one name (a pod moving
//! between them) both stand until the old node's batch lets go (their addresses differ, each
//! within its node's pod CIDRs).

use std::collections::{BTreeMap, BTreeSet};

use meshd_policy::ipcache::RemotePod;
use meshd_policy::model::{Name, Namespace, Pod, PodKey, Policy};
use meshd_policy::{Change, World};

/// The kinds of object policy depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` `Namespace`.
    Namespace,
    /// `v1` `Pod`.
    Pod,
    /// `networking.k8s.io/v1` `NetworkPolicy`.
    NetworkPolicy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        })
    }
}

/// One object's identity: its kind, namespace (empty for a Namespace) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// The namespace; empty for a Namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectRef {
    /// A Namespace's identity.
    pub fn namespace(name: impl Into<String>) -> Self {
        Self {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.into(),
        }
    }

    /// A namespaced object's identity.
    pub fn namespaced(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn pod_key(&self) -> PodKey {
        PodKey::new(self.namespace.clone(), self.name.clone())
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Kind::Namespace => write!(f, "Namespace {}", self.name),
            kind => write!(f, "{kind} {}/{}", self.namespace, self.name),
        }
    }
}

/// An object as the compiler takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A namespace.
    Namespace(Namespace),
    /// A pod (host-network pods are not objects of policy: their source reports a removal).
    Pod(Pod),
    /// A NetworkPolicy.
    Policy(Policy),
}

impl Object {
    /// The object's identity.
    pub fn reference(&self) -> ObjectRef {
        match self {
            Object::Namespace(ns) => ObjectRef::namespace(ns.name.clone()),
            Object::Pod(pod) => {
                ObjectRef::namespaced(Kind::Pod, pod.key.namespace.clone(), pod.key.name.clone())
            }
            Object::Policy(p) => ObjectRef::namespaced(
                Kind::NetworkPolicy,
                p.key.namespace.clone(),
                p.key.name.clone(),
            ),
        }
    }
}

/// What a source reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectEvent {
    /// A (re)list of `kind` begins: what is not announced before [`ObjectEvent::ListDone`] is
    /// gone.
    ListStart(Kind),
    /// An object exists (listed, added or changed).
    Upsert(Object),
    /// An object is gone (deleted, or no longer an object of policy, e.g. host-network).
    Remove(ObjectRef),
    /// An object exists but is refused: `error` says what is wrong and where.
    Malformed {
        /// The object (from its file's path, or its metadata).
        object: ObjectRef,
        /// What is wrong, naming the file or the field.
        error: String,
    },
    /// The (re)list of `kind` is complete.
    ListDone(Kind),
    /// The pods of `node` are exactly `pods` (each with `node` set): any other pod known on
    /// that node is gone. Counts as a sighting of every pod of that node in a Pod (re)list.
    NodePods {
        /// The node.
        node: String,
        /// Its pods.
        pods: Vec<Pod>,
        /// Entries and addresses of its batch that were refused, one line each.
        refused: Vec<String>,
    },
    /// The endpoint batch of `node` cannot be read (`error` says why): its last good version
    /// stays in force.
    BatchRefused {
        /// The node.
        node: String,
        /// What is wrong.
        error: String,
    },
}

/// The relist bookkeeping and the refused objects. See the module doc.
#[derive(Debug, Default)]
pub struct ObjectCache {
    /// Objects sighted in the list of a kind under way.
    listing: BTreeMap<Kind, BTreeSet<ObjectRef>>,
    /// Kinds whose first list completed.
    synced: BTreeSet<Kind>,
    /// Refused objects and why.
    malformed: BTreeMap<ObjectRef, String>,
    /// Objects refused since start (each refusal of new content counts).
    malformed_total: u64,
    /// Nodes whose pods were sighted in the Pod list under way.
    listing_nodes: BTreeSet<String>,
    /// What each node's endpoint batch had refused, the last time it was read.
    batch_refusals: BTreeMap<String, Vec<String>>,
    /// Pods a node claimed while another node held them: taken up when the holder lets go.
    contested: BTreeMap<PodKey, Pod>,
    /// For each node, at least as many pods as the world holds for it: a node's new pod set
    /// that matches that many known pods removes none, and needs no walk of the world.
    node_counts: BTreeMap<Name, usize>,
    /// The node this cache is for: only its pods are held whole, the others' as entries.
    /// `None`: every node's pods are held whole.
    local_node: Option<String>,
}

impl ObjectCache {
    /// The cache of node `node` (see the module doc).
    pub fn for_node(node: &str) -> Self {
        Self {
            local_node: Some(node.to_owned()),
            ..Self::default()
        }
    }

    /// Whether `node`'s pods are held as entries rather than whole pods.
    fn is_remote(&self, node: &str) -> bool {
        self.local_node
            .as_deref()
            .is_some_and(|local| local != node)
    }

    /// Whether every kind has been listed completely at least once.
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    /// The objects refused now, and why.
    pub fn malformed(&self) -> &BTreeMap<ObjectRef, String> {
        &self.malformed
    }

    /// How many refusals there were since start.
    pub fn malformed_total(&self) -> u64 {
        self.malformed_total
    }

    /// What each node's endpoint batch refuses now (entries, addresses, or the whole batch).
    pub fn batch_refusals(&self) -> &BTreeMap<String, Vec<String>> {
        &self.batch_refusals
    }

    /// Applies one event given the compiler's current `world`; returns the changes to apply,
    /// in order.
    pub fn apply(&mut self, world: &World, event: ObjectEvent) -> Vec<Change> {
        match event {
            ObjectEvent::ListStart(kind) => {
                self.listing.insert(kind, BTreeSet::new());
                if kind == Kind::Pod {
                    self.listing_nodes.clear();
                }
                Vec::new()
            }
            ObjectEvent::NodePods {
                node,
                pods,
                refused,
            } => self.node_pods(world, node, pods, refused),
            ObjectEvent::BatchRefused { node, error } => {
                if self.listing.contains_key(&Kind::Pod) {
                    self.listing_nodes.insert(node.clone());
                }
                self.note_refusals(node, vec![error]);
                Vec::new()
            }
            ObjectEvent::Upsert(object) => {
                if let Object::Pod(pod) = &object {
                    *self.node_counts.entry(pod.node.clone()).or_default() += 1;
                }
                let reference = object.reference();
                self.sighted(&reference);
                self.malformed.remove(&reference);
                upsert(world, object).into_iter().collect()
            }
            ObjectEvent::Remove(reference) => {
                self.malformed.remove(&reference);
                remove(world, &reference).into_iter().collect()
            }
            ObjectEvent::Malformed { object, error } => {
                self.sighted(&object);
                if self.malformed.get(&object) != Some(&error) {
                    self.malformed_total += 1;
                    self.malformed.insert(object, error);
                }
                Vec::new()
            }
            ObjectEvent::ListDone(kind) => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                self.synced.insert(kind);
                // Refused Pods are the own watch's (its list ends apart from the batches'):
                // they go with their own removal or a good version.
                self.malformed
                    .retain(|r, _| r.kind != kind || kind == Kind::Pod || listed.contains(r));
                if kind == Kind::Pod {
                    let nodes = std::mem::take(&mut self.listing_nodes);
                    self.batch_refusals.retain(|n, _| nodes.contains(n));
                    self.contested
                        .retain(|_, p| nodes.contains(p.node.as_str()));
                    let removals: Vec<Change> = world
                        .pods
                        .values()
                        .filter(|p| !nodes.contains(p.node.as_str()))
                        .map(|p| ObjectRef::namespaced(Kind::Pod, &*p.key.namespace, &*p.key.name))
                        .filter(|r| !listed.contains(r))
                        .filter_map(|r| remove(world, &r))
                        .collect();
                    // Counted again from what stays (a list is rare).
                    self.node_counts.clear();
                    for pod in world.pods.values() {
                        if !removals.contains(&Change::RemovePod(pod.key.clone())) {
                            *self.node_counts.entry(pod.node.clone()).or_default() += 1;
                        }
                    }
                    let mut removals = removals;
                    removals.extend(
                        world
                            .remote
                            .nodes()
                            .filter(|n| !nodes.contains(n.as_str()))
                            .map(|n| Change::SetNodeEndpoints {
                                node: n.to_string(),
                                pods: Vec::new(),
                            }),
                    );
                    return removals;
                }
                known(world, kind)
                    .filter(|r| !listed.contains(r))
                    .filter_map(|r| remove(world, &r))
                    .collect()
            }
        }
    }

    /// `node`'s pods are exactly `pods`: the changes that make the world say so.
    fn node_pods(
        &mut self,
        world: &World,
        node: String,
        pods: Vec<Pod>,
        mut refused: Vec<String>,
    ) -> Vec<Change> {
        if self.listing.contains_key(&Kind::Pod) {
            self.listing_nodes.insert(node.clone());
        }
        self.contested.retain(|_, p| p.node != node);
        if self.is_remote(&node) {
            return self.remote_node_pods(world, node, pods, refused);
        }
        let mut changes = Vec::new();
        let mut claimed = BTreeSet::new();
        // Pods of the set the world already holds for this node.
        let mut matched = 0;
        for pod in pods {
            claimed.insert(pod.key.clone());
            match world.pods.get(&pod.key) {
                Some(held) if held.node != node => {
                    refused.push(format!(
                        "pod {} is held by node {:?}; refused until it lets go",
                        pod.key, held.node
                    ));
                    self.contested.insert(pod.key.clone(), pod);
                    claimed.remove(&held.key);
                }
                Some(held) => {
                    matched += 1;
                    if **held != pod {
                        changes.push(Change::UpsertPod(pod));
                    }
                }
                None => changes.push(Change::UpsertPod(pod)),
            }
        }
        // What the node no longer has (only if it had more than it kept): gone, or handed to
        // a node that claimed it meanwhile.
        if matched < self.node_counts.get(node.as_str()).copied().unwrap_or(0) {
            for (key, pod) in world.pods.iter() {
                if pod.node == node && !claimed.contains(key) {
                    match self.contested.remove(key) {
                        Some(next) if self.is_remote(&next.node) => {
                            changes.push(Change::RemovePod(key.clone()));
                            // The claimant's entries as held, and the pod it waited for.
                            let mut pods = world.remote.node_pods(&next.node);
                            let node = next.node.to_string();
                            pods.push(RemotePod::of(next));
                            changes.push(Change::SetNodeEndpoints { node, pods });
                        }
                        Some(next) => {
                            *self.node_counts.entry(next.node.clone()).or_default() += 1;
                            changes.push(Change::UpsertPod(next));
                        }
                        None => changes.push(Change::RemovePod(key.clone())),
                    }
                }
            }
        }
        if claimed.is_empty() {
            self.node_counts.remove(node.as_str());
        } else {
            self.node_counts.insert(node.as_str().into(), claimed.len());
        }
        self.note_refusals(node, refused);
        changes
    }

    /// Another node's pods are exactly `pods`: refused where this node holds the same pod,
    /// the rest that node's entries.
    fn remote_node_pods(
        &mut self,
        world: &World,
        node: String,
        pods: Vec<Pod>,
        mut refused: Vec<String>,
    ) -> Vec<Change> {
        let mut entries = Vec::with_capacity(pods.len());
        for pod in pods {
            match world.pods.get(&pod.key) {
                Some(held) => {
                    refused.push(format!(
                        "pod {} is held by node {:?}; refused until it lets go",
                        pod.key, held.node
                    ));
                    self.contested.insert(pod.key.clone(), pod);
                }
                None => entries.push(RemotePod::of(pod)),
            }
        }
        self.note_refusals(node.clone(), refused);
        vec![Change::SetNodeEndpoints {
            node,
            pods: entries,
        }]
    }

    fn note_refusals(&mut self, node: String, refused: Vec<String>) {
        if refused.is_empty() {
            self.batch_refusals.remove(&node);
            return;
        }
        if self.batch_refusals.get(&node) != Some(&refused) {
            for line in &refused {
                tracing::warn!(%node, refusal = %line, "refusing part of a node's endpoint batch");
            }
            self.malformed_total += refused.len() as u64;
            self.batch_refusals.insert(node, refused);
        }
    }

    fn sighted(&mut self, reference: &ObjectRef) {
        if let Some(listing) = self.listing.get_mut(&reference.kind) {
            listing.insert(reference.clone());
        }
    }
}

/// The change an upsert makes, if the world does not hold exactly this already.
fn upsert(world: &World, object: Object) -> Option<Change> {
    match object {
        Object::Namespace(ns) => {
            (world.namespaces.get(&ns.name) != Some(&ns)).then_some(Change::UpsertNamespace(ns))
        }
        Object::Pod(pod) => (world.pods.get(&pod.key).map(|held| &**held) != Some(&pod))
            .then_some(Change::UpsertPod(pod)),
        Object::Policy(p) => {
            (world.policies.get(&p.key) != Some(&p)).then_some(Change::UpsertPolicy(p))
        }
    }
}

/// The change a removal makes, if the world holds the object.
fn remove(world: &World, reference: &ObjectRef) -> Option<Change> {
    match reference.kind {
        Kind::Namespace => world
            .namespaces
            .contains_key(&reference.name)
            .then(|| Change::RemoveNamespace(reference.name.clone())),
        Kind::Pod => {
            let key = reference.pod_key();
            world
                .pods
                .contains_key(&key)
                .then_some(Change::RemovePod(key))
        }
        Kind::NetworkPolicy => {
            let key = reference.pod_key();
            world
                .policies
                .contains_key(&key)
                .then_some(Change::RemovePolicy(key))
        }
    }
}

/// Every object of `kind` the world holds.
fn known(world: &World, kind: Kind) -> Box<dyn Iterator<Item = ObjectRef> + '_> {
    match kind {
        Kind::Namespace => Box::new(world.namespaces.keys().map(ObjectRef::namespace)),
        Kind::Pod => Box::new(
            world
                .pods
                .keys()
                .map(|k| ObjectRef::namespaced(Kind::Pod, k.namespace.clone(), k.name.clone())),
        ),
        Kind::NetworkPolicy => Box::new(world.policies.keys().map(|k| {
            ObjectRef::namespaced(Kind::NetworkPolicy, k.namespace.clone(), k.name.clone())
        })),
    }
}

#[cfg(test)]
mod tests {
    use meshd_policy::model::LabelSelector;
    use meshd_policy::Compiler;

    use super::*;

    fn pod(ns: &str, name: &str, app: &str) -> Pod {
        Pod {
            key: PodKey::new(ns, name),
            labels: [("app".to_owned(), app.to_owned())].into(),
            addresses: vec!["10.0.0.2".parse().expect("literal")],
            node: "n1".into(),
            named_ports: BTreeMap::new(),
        }
    }

    fn policy(ns: &str, name: &str) -> Policy {
        Policy {
            key: PodKey::new(ns, name),
            pod_selector: LabelSelector::everything(),
            policy_types: None,
            ingress: Vec::new(),
            egress: Vec::new(),
        }
    }

    /// Feeds events through the cache into a compiler; returns the changes.
    fn feed(
        cache: &mut ObjectCache,
        compiler: &mut Compiler,
        events: Vec<ObjectEvent>,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        for event in events {
            for change in cache.apply(compiler.world(), event) {
                compiler.apply(change.clone());
                out.push(change);
            }
        }
        out
    }

    #[test]
    fn a_relist_removes_what_vanished_and_repeats_nothing_unchanged() {
        let mut cache = ObjectCache::default();
        let mut compiler = Compiler::new();
        let list = |objects: Vec<Object>| {
            let mut events = vec![ObjectEvent::ListStart(Kind::Pod)];
            events.extend(objects.into_iter().map(ObjectEvent::Upsert));
            events.push(ObjectEvent::ListDone(Kind::Pod));
            events
        };
        let a = pod("x", "a", "one");
        let b = pod("x", "b", "two");
        let changes = feed(
            &mut cache,
            &mut compiler,
            list(vec![Object::Pod(a.clone()), Object::Pod(b.clone())]),
        );
        assert_eq!(changes.len(), 2);
        assert!(!cache.synced(), "namespaces and policies not listed yet");
        // Relist: a unchanged, b gone, c new (b was deleted while the watch was down).
        let c = pod("x", "c", "three");
        let changes = feed(
            &mut cache,
            &mut compiler,
            list(vec![Object::Pod(a), Object::Pod(c.clone())]),
        );
        assert_eq!(
            changes,
            vec![
                Change::UpsertPod(c),
                Change::RemovePod(PodKey::new("x", "b"))
            ]
        );
        for kind in [Kind::Namespace, Kind::NetworkPolicy] {
            feed(
                &mut cache,
                &mut compiler,
                vec![ObjectEvent::ListStart(kind), ObjectEvent::ListDone(kind)],
            );
        }
        assert!(cache.synced());
    }

    #[test]
    fn a_malformed_object_keeps_its_last_good_version_and_is_refused_alone() {
        let mut cache = ObjectCache::default();
        let mut compiler = Compiler::new();
        let bad = ObjectRef::namespaced(Kind::NetworkPolicy, "x", "p");
        feed(
            &mut cache,
            &mut compiler,
            vec![
                ObjectEvent::Upsert(Object::Policy(policy("x", "p"))),
                ObjectEvent::Upsert(Object::Policy(policy("x", "q"))),
                ObjectEvent::Malformed {
                    object: bad.clone(),
                    error: "spec.ingress[0].ports[0].protocol is \"ICMP\"".into(),
                },
            ],
        );
        assert_eq!(compiler.world().policies.len(), 2);
        assert_eq!(cache.malformed().len(), 1);
        assert_eq!(cache.malformed_total(), 1);
        // A relist sighting only the malformed version keeps the last good one; q is gone.
        let changes = feed(
            &mut cache,
            &mut compiler,
            vec![
                ObjectEvent::ListStart(Kind::NetworkPolicy),
                ObjectEvent::Malformed {
                    object: bad.clone(),
                    error: "spec.ingress[0].ports[0].protocol is \"ICMP\"".into(),
                },
                ObjectEvent::ListDone(Kind::NetworkPolicy),
            ],
        );
        assert_eq!(changes, vec![Change::RemovePolicy(PodKey::new("x", "q"))]);
        assert_eq!(
            cache.malformed_total(),
            1,
            "the same refusal is counted once"
        );
        // Deleting it clears the report.
        feed(&mut cache, &mut compiler, vec![ObjectEvent::Remove(bad)]);
        assert!(cache.malformed().is_empty());
        assert!(compiler.world().policies.is_empty());
    }

    #[test]
    fn other_nodes_pods_become_entries_and_a_claim_on_a_local_pod_waits_for_it() {
        let mut cache = ObjectCache::for_node("n1");
        let mut compiler = Compiler::new();
        let on = |node: &str, mut p: Pod| {
            p.node = node.into();
            p
        };
        let local = on("n1", pod("x", "a", "one"));
        let remote = on("n2", pod("x", "r", "two"));
        let claim = on("n2", pod("x", "a", "one"));
        let node_pods = |node: &str, pods: Vec<Pod>| ObjectEvent::NodePods {
            node: node.into(),
            pods,
            refused: Vec::new(),
        };
        let mut events = vec![ObjectEvent::ListStart(Kind::Pod)];
        events.push(node_pods("n1", vec![local.clone()]));
        events.push(node_pods("n2", vec![remote.clone(), claim.clone()]));
        events.push(ObjectEvent::ListDone(Kind::Pod));
        feed(&mut cache, &mut compiler, events);
        let world = compiler.world();
        assert_eq!(world.pods.len(), 1, "only this node's pods are pods");
        assert_eq!(world.remote.pods(), 1, "n2's claim on n1's pod waits");
        assert!(cache.batch_refusals()["n2"][0].contains("held by node \"n1\""));
        // n1 lets go: n2's claim is taken up as one of n2's entries.
        let changes = feed(&mut cache, &mut compiler, vec![node_pods("n1", Vec::new())]);
        assert!(changes.contains(&Change::RemovePod(local.key.clone())));
        let world = compiler.world();
        assert!(world.pods.is_empty());
        assert_eq!(world.remote.pods(), 2);
        assert!(world.remote.lookup("n2", local.addresses[0]).is_some());
        // A relist without n2's batch forgets n2.
        feed(
            &mut cache,
            &mut compiler,
            vec![
                ObjectEvent::ListStart(Kind::Pod),
                node_pods("n1", Vec::new()),
                ObjectEvent::ListDone(Kind::Pod),
            ],
        );
        assert!(compiler.world().remote.is_empty());
    }
}
