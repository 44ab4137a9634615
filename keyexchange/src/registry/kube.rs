//! A registry backed by the Kubernetes API: each node's record lives on its own `Node` object.
//!
//! # Where the record lives
//!
//! A node's [`NodeRecord`] is assembled from its `Node` object:
//!
//! | record field  | source on the `Node`                                             |
//! |---------------|------------------------------------------------------------------|
//! | `name`        | `metadata.name`                                                  |
//! | `publicKey`   | annotation `meshd.io/public-key` (standard base64, 32 bytes)     |
//! | `listenPort`  | annotation `meshd.io/listen-port` (decimal, 1–65535)             |
//! | (format)      | annotation `meshd.io/record-version` (decimal, 1..=[`RECORD_VERSION`]) |
//! | `endpoints`   | every `status.addresses` entry of type `InternalIP`, both families |
//! | `podCIDRs`    | `spec.podCIDRs` (or the legacy single `spec.podCIDR`)            |
//! | `secondKey`, `secondPort` | annotation `meshd.io/second-key` (base64), `meshd.io/second-port` (decimal) |
//! | `rotation`    | annotation `meshd.io/rotation` (JSON `{"serial":N,"draining":S,"replaced":true}`) |
//! | `acks`        | annotation `meshd.io/rotation-acks` (JSON object, node → serial) |
//!
//! The key-rotation annotations are optional and removed when empty (see
//! [`crate::record`] for what they mean).
//!
//! All of meshd's annotations share the prefix [`ANNOTATION_PREFIX`] (`meshd.io/`). meshd only
//! ever writes the three keys above; endpoints and pod CIDRs are owned by the kubelet and the
//! node IPAM / cloud controller and are never written by meshd. Use
//! [`KubeRegistry::node_addressing`] to learn the node's own endpoints and pod CIDRs.
//!
//! # Who is a peer
//!
//! * A node carrying none of meshd's three annotations is **not a peer** (meshd is not rolled
//!   out there yet): it produces no event, or a [`RegistryEvent::Delete`] if it was a peer.
//! * A node labelled `meshd.io/exclude=true` ([`EXCLUDE_LABEL`]) is not a peer either, whatever
//!   its annotations say: the operator opted it out.
//! * A node with meshd's annotations that do not form a valid record (bad key, bad port, a
//!   future record version, no `InternalIP`, a malformed pod CIDR…) produces
//!   [`RegistryEvent::Malformed`] whose [`RecordError::field`] names the annotation or the
//!   `Node` field at fault.
//!
//! How pod traffic to a node that is not a peer is treated (dropped in strict mode, sent in
//! clear otherwise) is the daemon's policy, not the registry's.
//!
//! # Writes
//!
//! [`Registry::publish`] reads the `Node` and, only if meshd's annotations differ from the
//! record, sends a JSON merge patch that sets exactly those keys and carries the `Node`'s
//! `metadata.resourceVersion` as an optimistic-concurrency precondition. A `409 Conflict` (some
//! other writer changed the `Node` in between) re-reads and retries with exponential backoff.
//! In steady state a node is written once, when meshd first starts or its key or port change:
//! there is no heartbeat. [`Registry::withdraw`] removes exactly meshd's keys the same way
//! (merge patch with `null` values); other annotations and labels are never touched.
//!
//! # Watching
//!
//! [`Registry::watch`] runs [`kube::runtime::watcher`] on all Nodes (a list, then a watch from
//! the list's `resourceVersion`, with bookmarks). The watcher re-lists on its own when the watch
//! cannot be resumed (`410 Gone`, an API server restart that lost its watch cache); this backend
//! turns every (re-)list into the registry contract: records that changed are announced, nodes
//! that vanished across the re-list get a [`RegistryEvent::Delete`], and
//! [`RegistryEvent::Synced`] follows. A record is only announced when what it derives to
//! changes, so a re-list of an unchanged cluster produces nothing but `Synced`. Transient errors
//! (API server unreachable) are retried with backoff and never drop known peers.
//!
//! # Permissions
//!
//! The service account needs `get`, `list`, `watch` and `patch` on `nodes` (core group) and
//! nothing else for this backend. [`watch_api_server_endpoints`] needs `list` and `watch` on
//! the `kubernetes` EndpointSlice (`discovery.k8s.io`) in `default`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::{Registry, RegistryError, RegistryEvent};
use crate::key::PublicKey;
use crate::record::{is_dns1123_subdomain, NodeRecord, RecordError, RECORD_VERSION};

/// The prefix shared by every annotation and label meshd reads or writes on a `Node`.
pub const ANNOTATION_PREFIX: &str = "meshd.io/";
/// Annotation holding the node's WireGuard public key (standard base64).
pub const PUBLIC_KEY_ANNOTATION: &str = "meshd.io/public-key";
/// Annotation holding the node's WireGuard listen port (decimal).
pub const LISTEN_PORT_ANNOTATION: &str = "meshd.io/listen-port";
/// Annotation holding the record format version the publishing meshd wrote.
pub const RECORD_VERSION_ANNOTATION: &str = "meshd.io/record-version";
/// Annotation holding the pod CIDRs meshd claimed itself (`cluster-pool` IPAM, comma-separated);
/// only read when the Node has no `spec.podCIDRs`.
pub const POD_CIDRS_ANNOTATION: &str = "meshd.io/pod-cidrs";
/// Annotation holding the public key of the node's second key slot (standard base64).
pub const SECOND_KEY_ANNOTATION: &str = "meshd.io/second-key";
/// Annotation holding the listen port of the node's second key slot (decimal).
pub const SECOND_PORT_ANNOTATION: &str = "meshd.io/second-port";
/// Annotation holding the step of a key rotation in progress (JSON).
pub const ROTATION_ANNOTATION: &str = "meshd.io/rotation";
/// Annotation holding the rotation steps of other nodes this node applied (JSON object).
pub const ROTATION_ACKS_ANNOTATION: &str = "meshd.io/rotation-acks";
/// Every annotation meshd writes; a node with none of them is not a peer.
pub const ANNOTATIONS: [&str; 8] = [
    PUBLIC_KEY_ANNOTATION,
    LISTEN_PORT_ANNOTATION,
    RECORD_VERSION_ANNOTATION,
    POD_CIDRS_ANNOTATION,
    SECOND_KEY_ANNOTATION,
    SECOND_PORT_ANNOTATION,
    ROTATION_ANNOTATION,
    ROTATION_ACKS_ANNOTATION,
];
/// Label that opts a node out of the mesh when set to `"true"`.
pub const EXCLUDE_LABEL: &str = "meshd.io/exclude";
/// `RecordError::field` when a node has no usable `InternalIP` address.
pub const ADDRESSES_FIELD: &str = "status.addresses";
/// `RecordError::field` when a node's pod CIDRs are malformed.
pub const POD_CIDRS_FIELD: &str = "spec.podCIDRs";
/// The field manager meshd's writes are recorded under (`metadata.managedFields`).
pub const FIELD_MANAGER: &str = "meshd";

/// Capacity of the event channel returned by [`KubeRegistry::watch`].
const CHANNEL_CAPACITY: usize = 1024;
/// How many times a conflicting write is retried before giving up.
const MAX_WRITE_ATTEMPTS: u32 = 8;
/// First delay before retrying a conflicting write; doubles up to [`WRITE_BACKOFF_MAX`].
const WRITE_BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest delay between two attempts of a conflicting write.
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Errors building a Kubernetes client.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    /// Reading or parsing the kubeconfig file failed.
    #[error("reading kubeconfig {path}")]
    ReadKubeconfig {
        /// The kubeconfig file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Inferring the configuration (`KUBECONFIG`, `~/.kube/config`, in-cluster) failed.
    #[error("no usable Kubernetes configuration (tried KUBECONFIG, ~/.kube/config and the in-cluster service account)")]
    Infer(#[source] kube::config::InferConfigError),
    /// The configuration was read but a client could not be built from it.
    #[error("building the Kubernetes client")]
    Build(#[source] kube::Error),
}

/// Builds a Kubernetes client the way kube-rs users expect.
///
/// With `kubeconfig`, that file's current context is used (out of cluster). Without it the
/// configuration is inferred: `$KUBECONFIG`, then `~/.kube/config`, then the in-cluster service
/// account (`KUBERNETES_SERVICE_HOST` and the mounted token), which is what a DaemonSet gets.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeClientError> {
    Client::try_from(config(kubeconfig).await?).map_err(KubeClientError::Build)
}

/// The API server's addresses as this node reaches them: the server URL's host, resolved.
/// Host encryption never sends traffic to them through the tunnel.
pub async fn api_server_addresses(
    kubeconfig: Option<&Path>,
) -> Result<Vec<IpAddr>, KubeClientError> {
    let config = config(kubeconfig).await?;
    let url = &config.cluster_url;
    let Some(host) = url.host() else {
        return Ok(Vec::new());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let port = url.port_u16().unwrap_or(443);
    Ok(tokio::net::lookup_host((host, port))
        .await
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default())
}

async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, KubeClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let read_err = |source| KubeClientError::ReadKubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(read_err)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(read_err)?
        }
        None => kube::Config::infer()
            .await
            .map_err(KubeClientError::Infer)?,
    };
    Ok(config)
}

/// The addressing the cluster assigned to a node: what its own record must carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddressing {
    /// `InternalIP` addresses from `status.addresses`, in the order listed.
    pub endpoints: Vec<IpAddr>,
    /// `spec.podCIDRs` (or the legacy `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
}

/// What a `Node` object means for the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Not a peer: no meshd annotations, or opted out by [`EXCLUDE_LABEL`].
    Absent,
    /// A valid peer record.
    Peer(NodeRecord),
    /// meshd's annotations are present but do not form a valid record.
    Malformed(RecordError),
}

/// Translates a `Node` into what it means for the mesh (pure; see the module docs).
pub fn node_state(node: &Node) -> NodeState {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(EXCLUDE_LABEL))
        .is_some_and(|v| v == "true");
    let empty = BTreeMap::new();
    let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
    if excluded || !ANNOTATIONS.iter().any(|k| annotations.contains_key(*k)) {
        return NodeState::Absent;
    }
    match record_from_node(name, annotations, node) {
        Ok(record) => NodeState::Peer(record),
        Err(error) => NodeState::Malformed(error),
    }
}

fn record_from_node(
    name: &str,
    annotations: &BTreeMap<String, String>,
    node: &Node,
) -> Result<NodeRecord, RecordError> {
    let fail = |field: &'static str, reason: String| RecordError {
        node: name.to_string(),
        field,
        reason,
    };
    if !is_dns1123_subdomain(name) {
        return Err(fail(
            "metadata.name",
            format!("{name:?} is not a valid DNS-1123 subdomain"),
        ));
    }
    let annotation = |key: &'static str| {
        annotations
            .get(key)
            .map(|v| v.trim())
            .ok_or_else(|| fail(key, "missing".into()))
    };

    let version = annotation(RECORD_VERSION_ANNOTATION)?;
    match version.parse::<u32>() {
        Ok(0) => {
            return Err(fail(
                RECORD_VERSION_ANNOTATION,
                "version 0 is invalid".into(),
            ))
        }
        Ok(v) if v > RECORD_VERSION => {
            return Err(fail(
                RECORD_VERSION_ANNOTATION,
                format!("unsupported future version {v} (this meshd understands {RECORD_VERSION})"),
            ))
        }
        Ok(_) => {}
        Err(_) => {
            return Err(fail(
                RECORD_VERSION_ANNOTATION,
                format!("{version:?} is not a non-negative integer"),
            ))
        }
    }

    let key = annotation(PUBLIC_KEY_ANNOTATION)?;
    let public_key = key
        .parse::<PublicKey>()
        .map_err(|e| fail(PUBLIC_KEY_ANNOTATION, format!("{key:?}: {e}")))?;
    if public_key.is_zero() {
        return Err(fail(PUBLIC_KEY_ANNOTATION, "all-zero key".into()));
    }

    let port = annotation(LISTEN_PORT_ANNOTATION)?;
    let listen_port = match port.parse::<u16>() {
        Ok(0) | Err(_) => {
            return Err(fail(
                LISTEN_PORT_ANNOTATION,
                format!("must be a port 1-65535, got {port:?}"),
            ))
        }
        Ok(p) => p,
    };

    let mut addressing = addressing(node).map_err(|(field, reason)| fail(field, reason))?;
    if addressing.pod_cidrs.is_empty() {
        // No controller-assigned CIDRs: meshd's own cluster-pool claim, if it published one.
        if let Some(v) = annotations.get(POD_CIDRS_ANNOTATION) {
            addressing.pod_cidrs = v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<IpNet>()
                        .map_err(|_| fail(POD_CIDRS_ANNOTATION, format!("{c:?} is not a CIDR")))
                })
                .collect::<Result<Vec<_>, _>>()?;
        }
    }
    let rotation = rotation_from(annotations).map_err(|(field, reason)| fail(field, reason))?;
    let record = NodeRecord {
        name: name.to_string(),
        public_key,
        listen_port,
        endpoints: addressing.endpoints,
        pod_cidrs: addressing.pod_cidrs,
        rotation,
    };
    // Same rules as every other backend (unspecified/multicast endpoints, host bits in CIDRs).
    record.validate().map_err(|e| {
        let field = match e.field {
            "endpoints" => ADDRESSES_FIELD,
            "podCIDRs" => POD_CIDRS_FIELD,
            other => other,
        };
        fail(field, e.reason)
    })?;
    Ok(record)
}

/// The key-rotation fields from their (optional) annotations, or the offending one and why.
fn rotation_from(
    annotations: &BTreeMap<String, String>,
) -> Result<crate::record::Rotation, (&'static str, String)> {
    use crate::record::{parse_acks, parse_step, Rotation, SlotKey};
    let get = |k: &str| annotations.get(k).map(|v| v.trim());
    let second = match (get(SECOND_KEY_ANNOTATION), get(SECOND_PORT_ANNOTATION)) {
        (None, None) => None,
        (key, port) => {
            let key = key.ok_or((SECOND_KEY_ANNOTATION, "missing".to_string()))?;
            let public_key = key
                .parse::<PublicKey>()
                .map_err(|e| (SECOND_KEY_ANNOTATION, format!("{key:?}: {e}")))?;
            let port = port.ok_or((SECOND_PORT_ANNOTATION, "missing".to_string()))?;
            let listen_port = match port.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    return Err((
                        SECOND_PORT_ANNOTATION,
                        format!("must be a port 1-65535, got {port:?}"),
                    ))
                }
            };
            Some(SlotKey {
                public_key,
                listen_port,
            })
        }
    };
    let json = |k: &'static str, text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| (k, format!("not valid JSON: {e}")))
    };
    let step = match get(ROTATION_ANNOTATION) {
        None => None,
        Some(t) => {
            Some(parse_step(&json(ROTATION_ANNOTATION, t)?).map_err(|r| (ROTATION_ANNOTATION, r))?)
        }
    };
    let acks = match get(ROTATION_ACKS_ANNOTATION) {
        None => BTreeMap::new(),
        Some(t) => parse_acks(&json(ROTATION_ACKS_ANNOTATION, t)?)
            .map_err(|r| (ROTATION_ACKS_ANNOTATION, r))?,
    };
    Ok(Rotation { second, step, acks })
}

/// A node's InternalIP addresses and pod CIDRs, or the offending field and why.
fn addressing(node: &Node) -> Result<NodeAddressing, (&'static str, String)> {
    let mut endpoints = Vec::new();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    for address in addresses.iter().filter(|a| a.type_ == "InternalIP") {
        let ip = address.address.parse::<IpAddr>().map_err(|_| {
            (
                ADDRESSES_FIELD,
                format!("InternalIP {:?} is not an IP address", address.address),
            )
        })?;
        if !endpoints.contains(&ip) {
            endpoints.push(ip);
        }
    }
    if endpoints.is_empty() {
        return Err((ADDRESSES_FIELD, "no InternalIP address".into()));
    }

    let spec = node.spec.as_ref();
    let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let cidrs = if listed.is_empty() {
        spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect()
    } else {
        listed
    };
    let pod_cidrs = cidrs
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .map_err(|_| (POD_CIDRS_FIELD, format!("{c:?} is not a CIDR")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NodeAddressing {
        endpoints,
        pod_cidrs,
    })
}

/// meshd's annotations for `record`, exactly as published (the optional key-rotation ones only
/// when set; [`Registry::publish`] removes those absent here).
pub fn record_annotations(record: &NodeRecord) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::from([
        (PUBLIC_KEY_ANNOTATION, record.public_key.to_string()),
        (LISTEN_PORT_ANNOTATION, record.listen_port.to_string()),
        (RECORD_VERSION_ANNOTATION, RECORD_VERSION.to_string()),
        (
            POD_CIDRS_ANNOTATION,
            record
                .pod_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]);
    let r = &record.rotation;
    if let Some(second) = r.second {
        out.insert(SECOND_KEY_ANNOTATION, second.public_key.to_string());
        out.insert(SECOND_PORT_ANNOTATION, second.listen_port.to_string());
    }
    if let Some(step) = r.step {
        out.insert(
            ROTATION_ANNOTATION,
            serde_json::to_string(&step).unwrap_or_default(),
        );
    }
    if !r.acks.is_empty() {
        out.insert(
            ROTATION_ACKS_ANNOTATION,
            serde_json::to_string(&r.acks).unwrap_or_default(),
        );
    }
    out
}

/// A [`Registry`] that keeps each node's record on its `Node` object (see the module docs).
#[derive(Clone)]
pub struct KubeRegistry {
    client: Client,
    node_name: String,
    watch_backoff: (Duration, Duration),
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
        }
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
        let stream = watcher::watcher(self.nodes(), watcher::Config::default())
            .backoff(WatchBackoff::new(first, max));
        handle.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut state = WatchState::default();
            loop {
                let item = tokio::select! {
                    () = tx.closed() => break,
                    item = stream.next() => item,
                };
                let events = match item {
                    Some(Ok(event)) => state.apply(event),
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
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            tracing::debug!("registry watch receiver dropped; stopping Node watch");
        });
        Ok(rx)
    }
}

/// The watcher's view of the mesh, turning [`watcher::Event`]s into [`RegistryEvent`]s.
#[derive(Debug, Default)]
pub struct WatchState {
    /// What each node currently derives to (only nodes that are peers or malformed).
    known: HashMap<String, NodeState>,
    /// Nodes seen in the (re-)list in progress, `None` outside a list.
    listing: Option<HashSet<String>>,
}

impl WatchState {
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
        let state = node_state(node);
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

/// Namespace of the `kubernetes` Service, whose endpoints are the API servers.
pub const API_SERVER_SERVICE_NAMESPACE: &str = "default";
/// Name of that Service and of the EndpointSlice kube-apiserver's endpoint reconciler keeps
/// for it.
pub const API_SERVER_SERVICE_NAME: &str = "kubernetes";
/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every address of every endpoint in `slices` (ready or not: an API server that is starting
/// or shutting down must not be cut off either). FQDN slices carry no address.
pub fn endpoint_slice_addresses<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeSet<IpAddr> {
    slices
        .into_iter()
        .filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6")
        .flat_map(|s| s.endpoints.iter().flatten())
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect()
}

/// Follows the API servers' real addresses: the endpoints of the `default/kubernetes` Service
/// (its EndpointSlice, `discovery.k8s.io/v1`, named `kubernetes` and labelled
/// `kubernetes.io/service-name=kubernetes`, as kube-apiserver maintains it). In a pod the
/// client reaches the API server through that Service's ClusterIP (`KUBERNETES_SERVICE_HOST`),
/// which no node owns; these are the node addresses the traffic really goes to.
///
/// The channel holds `None` until the first list completed, then the addresses; it changes
/// only when they do. A list that finds no address keeps the last ones (excluding an address
/// that is gone is harmless; forgetting one that is not is what must never happen). Watch
/// errors (e.g. `403` without the RBAC for it) are logged and retried with backoff. The task
/// stops when every receiver is dropped. Needs `list` and `watch` on `endpointslices` in
/// `default` (the field selector lets RBAC limit them to `resourceNames: [kubernetes]`).
pub fn watch_api_server_endpoints(client: Client) -> watch::Receiver<Option<BTreeSet<IpAddr>>> {
    let (tx, rx) = watch::channel(None);
    let api: Api<EndpointSlice> = Api::namespaced(client, API_SERVER_SERVICE_NAMESPACE);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={API_SERVER_SERVICE_NAME}"))
        .labels(&format!("{SERVICE_NAME_LABEL}={API_SERVER_SERVICE_NAME}"));
    let stream = watcher::watcher(api, config).backoff(WatchBackoff::new(
        Duration::from_millis(800),
        Duration::from_secs(30),
    ));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, EndpointSlice>> = None;
        loop {
            let event = tokio::select! {
                () = tx.closed() => break,
                event = stream.next() => event,
            };
            let settled = match event {
                Some(Ok(Event::Init)) => {
                    listing = Some(BTreeMap::new());
                    false
                }
                Some(Ok(Event::InitApply(slice))) => {
                    listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(slice.metadata.name.clone().unwrap_or_default(), slice);
                    false
                }
                Some(Ok(Event::InitDone)) => {
                    slices = listing.take().unwrap_or_default();
                    true
                }
                Some(Ok(Event::Apply(slice))) => {
                    slices.insert(slice.metadata.name.clone().unwrap_or_default(), slice);
                    true
                }
                Some(Ok(Event::Delete(slice))) => {
                    slices.remove(&slice.metadata.name.clone().unwrap_or_default());
                    true
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the API server's EndpointSlice failed; retrying with backoff");
                    false
                }
                None => break,
            };
            if !settled {
                continue;
            }
            let addresses = endpoint_slice_addresses(slices.values());
            tx.send_if_modified(|current| match current {
                Some(known) if *known == addresses || addresses.is_empty() => false,
                _ => {
                    tracing::info!(?addresses, "the API server's endpoints");
                    *current = Some(addresses);
                    true
                }
            });
        }
    });
    rx
}

/// Exponential backoff for re-establishing the watch, reset by every successful event.
struct WatchBackoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl WatchBackoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn key() -> PublicKey {
        PublicKey::from_bytes([7; 32])
    }

    #[test]
    fn api_server_addresses_are_every_endpoint_of_ip_slices() {
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
        let slice = |ty: &str, endpoints: &[(&[&str], Option<bool>)]| EndpointSlice {
            address_type: ty.into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(addresses, ready)| Endpoint {
                        addresses: addresses.iter().map(|a| a.to_string()).collect(),
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        let got = endpoint_slice_addresses(&[
            slice(
                "IPv4",
                &[
                    (&["192.0.2.10"], Some(true)),
                    (&["192.0.2.11"], Some(false)),
                ],
            ),
            slice("IPv6", &[(&["2001:db8::10"], None)]),
            slice("FQDN", &[(&["api.example.com"], Some(true))]),
        ]);
        let want: BTreeSet<IpAddr> = ["192.0.2.10", "192.0.2.11", "2001:db8::10"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(endpoint_slice_addresses(&[]).is_empty());
    }

    fn node(name: &str, annotations: &[(&str, &str)], addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00:244:0:1::/64".into()]),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
        }
    }

    fn good_annotations() -> Vec<(&'static str, String)> {
        vec![
            (PUBLIC_KEY_ANNOTATION, key().to_string()),
            (LISTEN_PORT_ANNOTATION, "51820".into()),
            (RECORD_VERSION_ANNOTATION, "1".into()),
            ("other.example.com/keep", "x".into()),
        ]
    }

    fn good_node() -> Node {
        let ann = good_annotations();
        let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (*k, v.as_str())).collect();
        node(
            "n1",
            &ann,
            &[
                ("Hostname", "n1"),
                ("InternalIP", "198.18.0.11"),
                ("ExternalIP", "203.0.113.7"),
                ("InternalIP", "fd00:198::11"),
            ],
        )
    }

    fn with_annotation(key: &str, value: Option<&str>) -> Node {
        let mut n = good_node();
        let ann = n.metadata.annotations.as_mut().unwrap();
        match value {
            Some(v) => ann.insert(key.into(), v.into()),
            None => ann.remove(key),
        };
        n
    }

    fn malformed_field(n: &Node) -> &'static str {
        match node_state(n) {
            NodeState::Malformed(e) => {
                assert_eq!(e.node, "n1");
                e.field
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn good_dual_stack_node() {
        let NodeState::Peer(record) = node_state(&good_node()) else {
            panic!("expected a peer");
        };
        assert_eq!(
            record,
            NodeRecord {
                name: "n1".into(),
                public_key: key(),
                listen_port: 51820,
                // InternalIP only, both families, ExternalIP and Hostname ignored.
                endpoints: vec![
                    "198.18.0.11".parse().unwrap(),
                    "fd00:198::11".parse().unwrap()
                ],
                pod_cidrs: vec![
                    "10.244.1.0/24".parse().unwrap(),
                    "fd00:244:0:1::/64".parse().unwrap()
                ],
                rotation: Default::default(),
            }
        );
        // Published annotations round-trip to the same record.
        let published = record_annotations(&record);
        for (k, v) in good_annotations().iter().take(3) {
            assert_eq!(published.get(k), Some(v));
        }
    }

    #[test]
    fn rotation_fields_round_trip_through_annotations() {
        use crate::record::{Rotation, RotationStep, SlotKey};
        let mut n = good_node();
        let NodeState::Peer(mut record) = node_state(&n) else {
            panic!("expected a peer");
        };
        record.rotation = Rotation {
            second: Some(SlotKey {
                public_key: PublicKey::from_bytes([5; 32]),
                listen_port: 51821,
            }),
            step: Some(RotationStep {
                serial: 9,
                draining: Some(0),
                replaced: true,
            }),
            acks: BTreeMap::from([("n2".to_string(), 4)]),
        };
        let published = record_annotations(&record);
        assert!(
            published[ROTATION_ANNOTATION].contains(r#""replaced":true"#),
            "{published:?}"
        );
        let annotations = n.metadata.annotations.get_or_insert_with(Default::default);
        for (k, v) in published {
            annotations.insert(k.to_string(), v);
        }
        let NodeState::Peer(back) = node_state(&n) else {
            panic!("expected a peer");
        };
        assert_eq!(back, record);
    }

    #[test]
    fn legacy_single_pod_cidr() {
        let mut n = good_node();
        n.spec.as_mut().unwrap().pod_cidrs = None;
        let NodeState::Peer(record) = node_state(&n) else {
            panic!("expected a peer");
        };
        assert_eq!(
            record.pod_cidrs,
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
        // No pod CIDR assigned yet is still a peer (it just routes nothing).
        n.spec = None;
        let NodeState::Peer(record) = node_state(&n) else {
            panic!("expected a peer");
        };
        assert!(record.pod_cidrs.is_empty());
    }

    #[test]
    fn no_meshd_annotations_is_absent() {
        let n = node(
            "n1",
            &[("other.example.com/x", "1")],
            &[("InternalIP", "198.18.0.11")],
        );
        assert_eq!(node_state(&n), NodeState::Absent);
        let mut n = good_node();
        n.metadata.annotations = None;
        assert_eq!(node_state(&n), NodeState::Absent);
        // An unrelated meshd.io/ annotation alone does not make a peer either.
        let n = node(
            "n1",
            &[("meshd.io/something-else", "1")],
            &[("InternalIP", "198.18.0.11")],
        );
        assert_eq!(node_state(&n), NodeState::Absent);
    }

    #[test]
    fn exclude_label_opts_out() {
        let mut n = good_node();
        n.metadata.labels = Some(BTreeMap::from([(EXCLUDE_LABEL.into(), "true".into())]));
        assert_eq!(node_state(&n), NodeState::Absent);
        n.metadata.labels = Some(BTreeMap::from([(EXCLUDE_LABEL.into(), "false".into())]));
        assert!(matches!(node_state(&n), NodeState::Peer(_)));
    }

    #[test]
    fn malformed_annotations_name_the_field() {
        for (key, value) in [
            (PUBLIC_KEY_ANNOTATION, Some("!!!")),
            (PUBLIC_KEY_ANNOTATION, Some("AAAA")),
            (
                PUBLIC_KEY_ANNOTATION,
                Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            ),
            (PUBLIC_KEY_ANNOTATION, None),
            (LISTEN_PORT_ANNOTATION, Some("0")),
            (LISTEN_PORT_ANNOTATION, Some("65536")),
            (LISTEN_PORT_ANNOTATION, Some("http")),
            (LISTEN_PORT_ANNOTATION, None),
            (RECORD_VERSION_ANNOTATION, Some("2")),
            (RECORD_VERSION_ANNOTATION, Some("0")),
            (RECORD_VERSION_ANNOTATION, Some("one")),
            (RECORD_VERSION_ANNOTATION, None),
        ] {
            assert_eq!(
                malformed_field(&with_annotation(key, value)),
                key,
                "{key}={value:?}"
            );
        }
        let NodeState::Malformed(e) =
            node_state(&with_annotation(RECORD_VERSION_ANNOTATION, Some("2")))
        else {
            panic!()
        };
        assert!(e.reason.contains("future version 2"), "{}", e.reason);
    }

    #[test]
    fn malformed_node_fields() {
        let mut n = good_node();
        n.status = None;
        assert_eq!(malformed_field(&n), ADDRESSES_FIELD);

        let mut n = good_node();
        n.status.as_mut().unwrap().addresses = Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: "not-an-ip".into(),
        }]);
        assert_eq!(malformed_field(&n), ADDRESSES_FIELD);

        let mut n = good_node();
        n.status.as_mut().unwrap().addresses = Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: "0.0.0.0".into(),
        }]);
        assert_eq!(malformed_field(&n), ADDRESSES_FIELD);

        for bad in ["garbage", "10.244.1.1/24"] {
            let mut n = good_node();
            n.spec.as_mut().unwrap().pod_cidrs = Some(vec![bad.into()]);
            assert_eq!(malformed_field(&n), POD_CIDRS_FIELD, "{bad}");
        }
    }

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
