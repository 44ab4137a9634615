//! The Node watch at metadata cost: every `Node` is watched as `PartialObjectMetadata` (its
//! `metadata` only, where meshd's annotations and the exclude label live), and what a record
//! needs from the rest of the object — `spec.podCIDRs` and the `InternalIP`s of
//! `status.addresses` — is read with one full read per node and kept ([`AddressingCache`]).
//!
//! A real Node's update is mostly its status (conditions, images, capacity: 10–20 KB), and
//! every agent used to receive the whole object for every update of every Node. Now an update
//! costs an agent the Node's metadata; the full object is read only
//!
//! * once, by a paged list, when the first list of the watch finds nodes it knows nothing of
//!   (a start), so a start costs what the full watch's list cost;
//! * with a `get`, when a node that carries meshd's annotations appears later, or changes
//!   `metadata.uid` (deleted and created again under the same name), or is known without pod
//!   CIDRs or without an `InternalIP` (the node IPAM controller sets `spec.podCIDRs` shortly
//!   after the kubelet registers the node; once set it is immutable).
//!
//! Nodes without meshd's annotations (or excluded) are never read in full. What this does not
//! follow: a node whose `InternalIP` changes while its `Node` keeps its name and uid (cloud
//! providers give a replaced machine a new `Node`); such a change is picked up when this meshd
//! next reads that Node in full (after its own restart, by the start's full list).
//!
//! Permissions: `get`, `list`, `watch` on `nodes`, as before.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;

use super::annotations::{ANNOTATIONS, EXCLUDE_LABEL};

/// Nodes per page of the full list that fills the cache at a start.
const LIST_PAGE: u32 = 500;
/// Attempts at reading one Node in full before its event goes on without it.
const GET_ATTEMPTS: u32 = 3;
/// Delay before the second attempt; doubles.
const GET_RETRY: Duration = Duration::from_millis(200);

/// What a record needs from a Node beyond its metadata.
#[derive(Clone, Debug, Default)]
struct Addressing {
    uid: Option<String>,
    pod_cidr: Option<String>,
    pod_cidrs: Option<Vec<String>>,
    addresses: Option<Vec<NodeAddress>>,
}

impl Addressing {
    fn of(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        Self {
            uid: node.metadata.uid.clone(),
            pod_cidr: spec.and_then(|s| s.pod_cidr.clone()),
            pod_cidrs: spec.and_then(|s| s.pod_cidrs.clone()),
            addresses: node.status.as_ref().and_then(|s| s.addresses.clone()),
        }
    }

    /// Whether it lacks what a record needs (no pod CIDR or no `InternalIP` yet).
    fn incomplete(&self) -> bool {
        let no_cidrs = self.pod_cidrs.as_ref().is_none_or(Vec::is_empty)
            && self.pod_cidr.as_ref().is_none_or(String::is_empty);
        let no_ip = !self
            .addresses
            .iter()
            .flatten()
            .any(|a| a.type_ == "InternalIP");
        no_cidrs || no_ip
    }
}

/// The full-object parts of every peer Node, by name (pure: decides when a Node must be
/// read in full, and rebuilds the `Node` the record codec reads).
#[derive(Debug, Default)]
pub struct AddressingCache {
    by_node: HashMap<String, Addressing>,
}

/// Whether a Node's metadata makes it a candidate peer: meshd's annotations, not excluded.
fn candidate(meta: &PartialObjectMeta<Node>) -> bool {
    let m = &meta.metadata;
    let excluded = m
        .labels
        .as_ref()
        .and_then(|l| l.get(EXCLUDE_LABEL))
        .is_some_and(|v| v == "true");
    let annotated = m
        .annotations
        .as_ref()
        .is_some_and(|a| ANNOTATIONS.iter().any(|k| a.contains_key(*k)));
    annotated && !excluded
}

impl AddressingCache {
    /// Whether nothing is known yet (a start).
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Whether the Node must be read in full before its metadata event is applied.
    pub fn needs_read(&self, meta: &PartialObjectMeta<Node>) -> bool {
        let Some(name) = meta.metadata.name.as_deref() else {
            return false;
        };
        if !candidate(meta) {
            return false;
        }
        match self.by_node.get(name) {
            None => true,
            Some(a) => a.uid != meta.metadata.uid || a.incomplete(),
        }
    }

    /// Keeps what `node` (read in full) says.
    pub fn learn(&mut self, node: &Node) {
        if let Some(name) = &node.metadata.name {
            self.by_node.insert(name.clone(), Addressing::of(node));
        }
    }

    /// Forgets a deleted node.
    pub fn forget(&mut self, name: &str) {
        self.by_node.remove(name);
    }

    /// Forgets every node not in `names` (a re-list without them).
    pub fn retain(&mut self, names: &HashSet<String>) {
        self.by_node.retain(|n, _| names.contains(n));
    }

    /// The `Node` the record codec reads: `meta`'s metadata with the kept spec and status.
    pub fn node(&self, meta: PartialObjectMeta<Node>) -> Node {
        let kept = meta
            .metadata
            .name
            .as_deref()
            .and_then(|n| self.by_node.get(n))
            .cloned()
            .unwrap_or_default();
        Node {
            metadata: meta.metadata,
            spec: Some(NodeSpec {
                pod_cidr: kept.pod_cidr,
                pod_cidrs: kept.pod_cidrs,
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: kept.addresses,
                ..NodeStatus::default()
            }),
        }
    }
}

/// Reads every Node in full, page by page, into `cache`.
async fn fill(api: &Api<Node>, cache: &mut AddressingCache) -> Result<(), kube::Error> {
    let mut params = ListParams::default().limit(LIST_PAGE);
    loop {
        let page = api.list(&params).await?;
        for node in &page.items {
            cache.learn(node);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// Reads one Node in full into `cache`, retrying a little; a failure is logged and the event
/// goes on with what is known (the record is then reported malformed until the node's next
/// change reads it again).
async fn read(api: &Api<Node>, name: &str, cache: &mut AddressingCache) {
    let mut delay = GET_RETRY;
    for attempt in 1..=GET_ATTEMPTS {
        match api.get(name).await {
            Ok(node) => {
                cache.learn(&node);
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(e) if attempt == GET_ATTEMPTS => {
                tracing::warn!(node = name, error = %e, "reading a Node's pod CIDRs and addresses failed");
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// The metadata watch's state beyond the record codec: the cache and the (re-)list under way.
#[derive(Debug, Default)]
pub struct MetadataWatch {
    cache: AddressingCache,
    listing: Option<HashSet<String>>,
}

impl MetadataWatch {
    /// Turns one metadata event into the full-Node event [`super::nodes::WatchState`] takes,
    /// reading Nodes in full where [`AddressingCache::needs_read`] says so.
    pub async fn resolve(
        &mut self,
        api: &Api<Node>,
        event: Event<PartialObjectMeta<Node>>,
    ) -> Event<Node> {
        match event {
            Event::Init => {
                self.listing = Some(HashSet::new());
                if self.cache.is_empty() {
                    if let Err(e) = fill(api, &mut self.cache).await {
                        tracing::warn!(error = %e, "listing Nodes in full failed; reading each peer Node on its own");
                    }
                }
                Event::Init
            }
            Event::InitApply(meta) => {
                if let (Some(l), Some(n)) = (&mut self.listing, &meta.metadata.name) {
                    l.insert(n.clone());
                }
                Event::InitApply(self.complete(api, meta).await)
            }
            Event::InitDone => {
                if let Some(listed) = self.listing.take() {
                    self.cache.retain(&listed);
                }
                Event::InitDone
            }
            Event::Apply(meta) => Event::Apply(self.complete(api, meta).await),
            Event::Delete(meta) => {
                if let Some(n) = &meta.metadata.name {
                    self.cache.forget(n);
                }
                Event::Delete(self.cache.node(meta))
            }
        }
    }

    async fn complete(&mut self, api: &Api<Node>, meta: PartialObjectMeta<Node>) -> Node {
        if self.cache.needs_read(&meta) {
            if let Some(name) = meta.metadata.name.clone() {
                read(api, &name, &mut self.cache).await;
            }
        }
        self.cache.node(meta)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use super::super::annotations::tests::good_node;
    use super::*;

    fn meta_of(node: &Node) -> PartialObjectMeta<Node> {
        PartialObjectMeta {
            types: None,
            metadata: node.metadata.clone(),
            _phantom: std::marker::PhantomData,
        }
    }

    #[test]
    fn a_peer_is_read_once_and_rebuilt_from_its_metadata() {
        let mut node = good_node();
        node.metadata.uid = Some("u1".into());
        let mut cache = AddressingCache::default();
        assert!(cache.needs_read(&meta_of(&node)));
        cache.learn(&node);
        assert!(!cache.needs_read(&meta_of(&node)));
        // A status or annotation change arrives as metadata: the record is whole again.
        let rebuilt = cache.node(meta_of(&node));
        assert_eq!(
            super::super::annotations::node_state(&rebuilt),
            super::super::annotations::node_state(&node)
        );
        // The same name with a new uid is a new Node: read again.
        node.metadata.uid = Some("u2".into());
        assert!(cache.needs_read(&meta_of(&node)));
    }

    #[test]
    fn nodes_without_meshd_or_excluded_are_never_read() {
        let cache = AddressingCache::default();
        let bare = Node {
            metadata: ObjectMeta {
                name: Some("plain".into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        assert!(!cache.needs_read(&meta_of(&bare)));
        let mut excluded = good_node();
        excluded.metadata.labels = Some(BTreeMap::from([(EXCLUDE_LABEL.into(), "true".into())]));
        assert!(!cache.needs_read(&meta_of(&excluded)));
    }

    #[test]
    fn a_node_without_pod_cidrs_yet_is_read_again() {
        let mut node = good_node();
        node.spec = Some(NodeSpec::default());
        let mut cache = AddressingCache::default();
        cache.learn(&node);
        assert!(cache.needs_read(&meta_of(&node)));
        node.spec = good_node().spec;
        cache.learn(&node);
        assert!(!cache.needs_read(&meta_of(&node)));
    }

    #[test]
    fn a_relist_forgets_the_nodes_it_no_longer_has() {
        let node = good_node();
        let mut cache = AddressingCache::default();
        cache.learn(&node);
        cache.retain(&HashSet::new());
        assert!(cache.is_empty());
    }
}
