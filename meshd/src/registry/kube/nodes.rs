//! The Kubernetes registry: [`KubeRegistry`] keeps each node's record on its own `Node`
//! object, as the annotations [`annotations`](super::annotations) encodes.
//!
//! # Writes
//!
//! [`Registry::publish`] reads the `Node` and, only if meshd's annotations differ from the
//! record, sends a JSON merge patch that sets exactly those keys and carries the `Node`'s
//! `metadata.resourceVersion` as an optimistic-concurrency precondition. A `409 Conflict` (some
//! other writer changed the `Node` in between) re-reads and retries with exponential backoff.
//! In steady state a node is written once, when meshd first starts or its key or port change:
//! there is no heartbeat. [`Registry::withdraw`] removes exactly meshd's keys the same way
//! (merge patch with `null` values); other annotations and labels are never touched. meshd
//! never writes a node's endpoints or `spec.podCIDRs` (the kubelet and the node IPAM / cloud
//! controller own them): [`KubeRegistry::node_addressing`] reads what the node's own record
//! must carry.
//!
//! # Watching
//!
//! [`Registry::watch`] runs [`kube::runtime::watcher()`] on all Nodes (a list, then a watch from
//! the list's `resourceVersion`, with bookmarks), metadata only: the pod CIDRs and addresses
//! are read per node by [`super::nodes_watch`]. The watcher re-lists on its own when the watch
//! cannot be resumed (`410 Gone`, an API server restart that lost its watch cache);
//! [`WatchState`] (pure) turns every (re-)list into the registry contract: records that changed
//! are announced, nodes that vanished across the re-list get a [`RegistryEvent::Delete`], and
//! [`RegistryEvent::Synced`] follows. A record is only announced when what it derives to
//! changes, so a re-list of an unchanged cluster produces nothing but `Synced`. A node that
//! stops being a peer ([`NodeState::Absent`]) gets a [`RegistryEvent::Delete`] if it was one.
//! Transient errors (API server unreachable) are retried with backoff and never drop known
//! peers.
//!
//! # Permissions
//!
//! The service account needs `get`, `list`, `watch` and `patch` on `nodes` (core group) and
//! nothing else for this backend.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use keyexchange::record::{is_dns1123_subdomain, RecordError};
use keyexchange::NodeRecord;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::annotations::{
    addressing, node_state_from, record_annotations, NodeAddressing, NodeState, PodCidrSource,
    ANNOTATIONS, POD_CIDRS_ANNOTATION,
};
use super::endpoint_batches::PodCidrCache;
use super::nodes_watch::MetadataWatch;
use super::WatchBackoff;
use crate::registry::{Registry, RegistryError, RegistryEvent};

/// The field manager meshd's writes are recorded under (`metadata.managedFields`).
pub const FIELD_MANAGER: &str = "meshd";

/// meshd's namespace unless told otherwise: where the endpoint batches live.
pub const DEFAULT_BATCH_NAMESPACE: &str = "meshd-system";

/// Capacity of the event channel returned by [`KubeRegistry::watch`].
const CHANNEL_CAPACITY: usize = 1024;
/// How many times a conflicting write is retried before giving up.
const MAX_WRITE_ATTEMPTS: u32 = 8;
/// First delay before retrying a conflicting write; doubles up to [`WRITE_BACKOFF_MAX`].
const WRITE_BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest delay between two attempts of a conflicting write.
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A [`Registry`] that keeps each node's record on its `Node` object (see the module docs).
#[derive(Clone)]
pub struct KubeRegistry {
    client: Client,
    node_name: String,
    watch_backoff: (Duration, Duration),
    pod_cidr_source: PodCidrSource,
    /// meshd's namespace, where the endpoint batches live.
    batch_namespace: String,
    /// Every node's pod CIDRs, filled by [`Registry::watch`], read to vet endpoint batches.
    pod_cidrs: PodCidrCache,
}

impl std::fmt::Debug for KubeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRegistry")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl KubeRegistry {
    /// A registry using `client`, run by the meshd of node `node_name` (its own `Node`).
    pub fn new(client: Client, node_name: impl Into<String>) -> Self {
        Self {
            client,
            node_name: node_name.into(),
            watch_backoff: (Duration::from_millis(800), Duration::from_secs(30)),
            pod_cidr_source: PodCidrSource::Spec,
            batch_namespace: DEFAULT_BATCH_NAMESPACE.to_owned(),
            pod_cidrs: PodCidrCache::default(),
        }
    }

    /// Sets meshd's namespace, where the endpoint batches are written and watched (default
    /// [`DEFAULT_BATCH_NAMESPACE`]).
    #[must_use]
    pub fn with_batch_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.batch_namespace = namespace.into();
        self
    }

    /// Where peers' pod CIDRs come from: by default `spec.podCIDRs` only; a Node's own
    /// `meshd.io/pod-cidrs` claim too only with `cluster-pool` IPAM ([`PodCidrSource`]).
    #[must_use]
    pub fn with_pod_cidr_source(mut self, source: PodCidrSource) -> Self {
        self.pod_cidr_source = source;
        self
    }

    /// Sets the backoff between attempts to re-establish a failed watch (first delay, doubled
    /// up to `max`). The default, 0.8 s to 30 s, follows client-go; tests shorten it.
    #[must_use]
    pub fn with_watch_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.watch_backoff = (first, max);
        self
    }

    /// The node this registry's meshd runs on.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// The endpoints (`InternalIP`s) and pod CIDRs the cluster assigned to this node: what its
    /// own [`NodeRecord`] must carry, since peers derive them from the `Node` and not from what
    /// meshd publishes.
    pub async fn node_addressing(&self) -> Result<NodeAddressing, RegistryError> {
        let node = self.nodes().get(&self.node_name).await.map_err(|source| {
            RegistryError::Kubernetes {
                action: "reading",
                node: self.node_name.clone(),
                source,
            }
        })?;
        addressing(&node).map_err(|(field, reason)| {
            RegistryError::Validate(RecordError {
                node: self.node_name.clone(),
                field,
                reason,
            })
        })
    }

    /// Reads node `name` and, unless `wanted` already holds, patches `patch(&node)` with the
    /// node's resourceVersion as precondition, retrying on conflict.
    async fn write_annotations(
        &self,
        name: &str,
        action: &'static str,
        wanted: impl Fn(&BTreeMap<String, String>) -> bool + Send + Sync,
        annotations: Value,
    ) -> Result<bool, RegistryError> {
        let nodes = self.nodes();
        let err = |source| RegistryError::Kubernetes {
            action,
            node: name.to_string(),
            source,
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let mut delay = WRITE_BACKOFF_START;
        let mut attempt = 1;
        loop {
            let node = match nodes.get_opt(name).await.map_err(err)? {
                Some(node) => node,
                None if action == "withdrawing" => return Ok(false),
                None => {
                    return Err(err(kube::Error::Api(
                        kube::core::Status::failure(
                            &format!("nodes {name:?} not found"),
                            "NotFound",
                        )
                        .with_code(404)
                        .boxed(),
                    )))
                }
            };
            let empty = BTreeMap::new();
            if wanted(node.metadata.annotations.as_ref().unwrap_or(&empty)) {
                return Ok(false);
            }
            let patch = json!({
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "annotations": annotations,
                }
            });
            match nodes.patch(name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(status))
                    if status.is_conflict() && attempt < MAX_WRITE_ATTEMPTS =>
                {
                    tracing::debug!(
                        node = name,
                        attempt,
                        "Node changed concurrently; retrying {action} after {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(WRITE_BACKOFF_MAX);
                    attempt += 1;
                }
                Err(e) => return Err(err(e)),
            }
        }
    }
}

impl Registry for KubeRegistry {
    fn publish(
        &self,
        record: &NodeRecord,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send {
        let record = record.clone();
        async move {
            record.validate().map_err(RegistryError::Validate)?;
            let desired = record_annotations(&record);
            // Every meshd annotation not wanted (an idle rotation's) is removed.
            let absent: Vec<&str> = ANNOTATIONS
                .iter()
                .copied()
                .filter(|k| !desired.contains_key(k) && *k != POD_CIDRS_ANNOTATION)
                .collect();
            let patch: serde_json::Map<String, Value> = desired
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
                .chain(absent.iter().map(|k| (k.to_string(), Value::Null)))
                .collect();
            let wanted = |current: &BTreeMap<String, String>| {
                desired
                    .iter()
                    .all(|(k, v)| current.get(*k).map(String::as_str) == Some(v.as_str()))
                    && absent.iter().all(|k| !current.contains_key(*k))
            };
            let wrote = self
                .write_annotations(&record.name, "publishing", wanted, Value::Object(patch))
                .await?;
            if wrote {
                tracing::info!(node = %record.name, public_key = %record.public_key, listen_port = record.listen_port, "published node record as Node annotations");
            } else {
                tracing::debug!(node = %record.name, "Node annotations already current; not writing");
            }
            Ok(())
        }
    }

    fn withdraw(&self, name: &str) -> impl Future<Output = Result<(), RegistryError>> + Send {
        let name = name.to_string();
        async move {
            if !is_dns1123_subdomain(&name) {
                return Err(RegistryError::InvalidName { name });
            }
            let patch: serde_json::Map<String, Value> = ANNOTATIONS
                .iter()
                .map(|k| (k.to_string(), Value::Null))
                .collect();
            let wanted = |current: &BTreeMap<String, String>| {
                !ANNOTATIONS.iter().any(|k| current.contains_key(*k))
            };
            if self
                .write_annotations(&name, "withdrawing", wanted, Value::Object(patch))
                .await?
            {
                tracing::info!(node = %name, "withdrew node record (removed meshd's Node annotations)");
            }
            Ok(())
        }
    }

    fn watch(&self) -> Result<mpsc::Receiver<RegistryEvent>, RegistryError> {
        let handle = tokio::runtime::Handle::try_current().map_err(RegistryError::NoRuntime)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (first, max) = self.watch_backoff;
        let pod_cidr_source = self.pod_cidr_source;
        // Metadata only; spec.podCIDRs and the addresses are read per node (nodes_watch).
        let metadata: Api<PartialObjectMeta<Node>> = Api::all(self.client.clone());
        let stream = watcher::watcher(metadata, watcher::Config::default())
            .backoff(WatchBackoff::new(first, max));
        let nodes = self.nodes();
        let pod_cidrs = self.pod_cidrs.clone();
        handle.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut state = WatchState::new(pod_cidr_source);
            let mut full = MetadataWatch::default();
            loop {
                let item = tokio::select! {
                    () = tx.closed() => break,
                    item = stream.next() => item,
                };
                let events = match item {
                    Some(Ok(event)) => state.apply(full.resolve(&nodes, event).await),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Node watch failed; retrying with backoff (known peers are kept)");
                        continue;
                    }
                    None => {
                        tracing::error!("Node watch stream ended; stopping registry watch");
                        break;
                    }
                };
                for event in events {
                    match &event {
                        RegistryEvent::Upsert(record) => {
                            pod_cidrs.set(&record.name, Some(record.pod_cidrs.clone()));
                        }
                        RegistryEvent::Delete(node) => pod_cidrs.set(node, None),
                        RegistryEvent::Malformed { node, .. } => pod_cidrs.set(node, None),
                        RegistryEvent::Synced => {}
                    }
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            tracing::debug!("registry watch receiver dropped; stopping Node watch");
        });
        Ok(rx)
    }

    fn watch_policy_objects(
        &self,
        node: &str,
    ) -> Result<mpsc::Receiver<crate::policy::objects::ObjectEvent>, RegistryError> {
        use crate::policy::pod_identity;
        tokio::runtime::Handle::try_current().map_err(RegistryError::NoRuntime)?;
        let objects = super::policy_objects::watch_policy_objects(
            self.client.clone(),
            node,
            self.watch_backoff,
        );
        let batches = super::endpoint_batches::watch_batches(
            self.client.clone(),
            &self.batch_namespace,
            self.watch_backoff,
        );
        let cidrs = self.pod_cidrs.clone();
        let (client, namespace, writer) = (
            self.client.clone(),
            self.batch_namespace.clone(),
            node.to_owned(),
        );
        // The own Node's uid, read once, makes the batch the Node's (deleted with it).
        let node_uid = std::sync::Arc::new(tokio::sync::Mutex::new(None::<String>));
        Ok(pod_identity::spawn(
            node,
            pod_identity::merge_sources(objects, batches),
            Box::new(move |n| cidrs.get(n)),
            Box::new(move |content| {
                let (client, namespace, node) = (client.clone(), namespace.clone(), writer.clone());
                let node_uid = node_uid.clone();
                Box::pin(async move {
                    let mut uid = node_uid.lock().await;
                    if uid.is_none() {
                        let nodes: Api<Node> = Api::all(client.clone());
                        match nodes.get(&node).await {
                            Ok(n) => uid.clone_from(&n.metadata.uid),
                            Err(error) => {
                                tracing::debug!(%error, "reading the own Node's uid failed; the endpoint batch is written without an owner");
                            }
                        }
                    }
                    super::endpoint_batches::write_batch(
                        client,
                        &namespace,
                        &node,
                        uid.as_deref(),
                        content,
                    )
                    .await
                    .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
                })
            }),
        ))
    }

    fn policy_source(&self) -> &'static str {
        "kubernetes"
    }
}

/// The watcher's view of the mesh, turning [`watcher::Event`]s into [`RegistryEvent`]s.
#[derive(Debug, Default)]
pub struct WatchState {
    /// What each node currently derives to (only nodes that are peers or malformed).
    known: HashMap<String, NodeState>,
    /// Nodes seen in the (re-)list in progress, `None` outside a list.
    listing: Option<HashSet<String>>,
    /// Where pod CIDRs come from.
    pod_cidr_source: PodCidrSource,
}

impl WatchState {
    /// A watch taking pod CIDRs from `source`.
    pub fn new(pod_cidr_source: PodCidrSource) -> Self {
        Self {
            pod_cidr_source,
            ..Self::default()
        }
    }

    /// Applies one watcher event; returns the registry events it implies, in order.
    pub fn apply(&mut self, event: Event<Node>) -> Vec<RegistryEvent> {
        match event {
            Event::Init => {
                tracing::debug!("listing Nodes");
                self.listing = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(node) => {
                if let (Some(listing), Some(name)) = (&mut self.listing, &node.metadata.name) {
                    listing.insert(name.clone());
                }
                self.update(&node).into_iter().collect()
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let mut gone: Vec<String> = self
                    .known
                    .keys()
                    .filter(|n| !listed.contains(*n))
                    .cloned()
                    .collect();
                gone.sort();
                let mut events: Vec<RegistryEvent> =
                    gone.into_iter().filter_map(|n| self.forget(&n)).collect();
                tracing::debug!(peers = self.known.len(), "Node list complete");
                events.push(RegistryEvent::Synced);
                events
            }
            Event::Apply(node) => self.update(&node).into_iter().collect(),
            Event::Delete(node) => node
                .metadata
                .name
                .as_deref()
                .and_then(|n| self.forget(n))
                .into_iter()
                .collect(),
        }
    }

    fn forget(&mut self, name: &str) -> Option<RegistryEvent> {
        self.known.remove(name).map(|_| {
            tracing::debug!(node = name, "node left the mesh");
            RegistryEvent::Delete(name.to_string())
        })
    }

    fn update(&mut self, node: &Node) -> Option<RegistryEvent> {
        let name = node.metadata.name.clone()?;
        let state = node_state_from(node, self.pod_cidr_source);
        if self.known.get(&name) == Some(&state) {
            return None;
        }
        match state {
            NodeState::Absent => self.forget(&name),
            NodeState::Peer(record) => {
                self.known.insert(name, NodeState::Peer(record.clone()));
                Some(RegistryEvent::Upsert(record))
            }
            NodeState::Malformed(error) => {
                tracing::warn!(%error, "Node carries a malformed meshd record");
                self.known
                    .insert(name.clone(), NodeState::Malformed(error.clone()));
                Some(RegistryEvent::Malformed { node: name, error })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use keyexchange::PublicKey;

    use super::super::annotations::tests::good_node;
    use super::super::annotations::PUBLIC_KEY_ANNOTATION;
    use super::*;

    #[test]
    fn watch_state_relist_semantics() {
        let mut s = WatchState::default();
        let n1 = good_node();
        let mut n2 = good_node();
        n2.metadata.name = Some("n2".into());
        n2.metadata.annotations.as_mut().unwrap().insert(
            PUBLIC_KEY_ANNOTATION.into(),
            PublicKey::from_bytes([8; 32]).to_string(),
        );

        assert!(s.apply(Event::Init).is_empty());
        assert!(
            matches!(&s.apply(Event::InitApply(n1.clone()))[..], [RegistryEvent::Upsert(r)] if r.name == "n1")
        );
        assert!(
            matches!(&s.apply(Event::InitApply(n2.clone()))[..], [RegistryEvent::Upsert(r)] if r.name == "n2")
        );
        assert!(matches!(
            &s.apply(Event::InitDone)[..],
            [RegistryEvent::Synced]
        ));

        // Unrelated change (a label): nothing to announce.
        let mut n1b = n1.clone();
        n1b.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
        assert!(s.apply(Event::Apply(n1b.clone())).is_empty());

        // Re-list where n2 vanished and n1 is unchanged: only a Delete, then Synced.
        assert!(s.apply(Event::Init).is_empty());
        assert!(s.apply(Event::InitApply(n1b)).is_empty());
        let events = s.apply(Event::InitDone);
        assert!(
            matches!(&events[..], [RegistryEvent::Delete(n), RegistryEvent::Synced] if n == "n2"),
            "{events:?}"
        );

        // Annotations removed: Delete; removed again: nothing.
        let mut bare = n1.clone();
        bare.metadata.annotations = None;
        assert!(
            matches!(&s.apply(Event::Apply(bare.clone()))[..], [RegistryEvent::Delete(n)] if n == "n1")
        );
        assert!(s.apply(Event::Apply(bare.clone())).is_empty());
        assert!(s.apply(Event::Delete(bare)).is_empty());
    }
}
