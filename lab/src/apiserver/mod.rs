//! A small **mock** Kubernetes API server for tests. It is not kube-apiserver (no
//! kube-apiserver binary or etcd can be installed on these machines): it implements, over plain
//! HTTP on loopback, the part of the API meshd uses, following the API's documented behaviour
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/>), so that meshd's real
//! Kubernetes code (kube-rs) runs against it unmodified. meshd knows nothing about it.
//!
//! What it serves:
//! * `nodes` (cluster-scoped; `status` subresource), `configmaps`, `events` in both the core
//!   group and `events.k8s.io/v1`, and `discovery.k8s.io/v1` `endpointslices` (validated as the
//!   API does: `addressType` required and immutable, 1–100 addresses of that type per
//!   endpoint); `namespaces` (cluster-scoped, labelled `kubernetes.io/metadata.name` as the API
//!   server does), `pods` and `networking.k8s.io/v1` `networkpolicies`, also listed and watched
//!   across all namespaces (stored as given: no validation of their specs; a Pod's status is
//!   written like the rest of it); plus `/version` and `/api`. [`FakeApiServer::put_kubernetes_endpoints`] plays
//!   kube-apiserver's own endpoint reconciler (the `default/kubernetes` EndpointSlice).
//! * **list** with `metadata.resourceVersion`, `limit`/`continue` paging, `fieldSelector`
//!   (`metadata.name`, `metadata.namespace`, Pods' `spec.nodeName`) and equality-based `labelSelector`.
//! * **metadata only** (`Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`):
//!   lists and watches answer every object reduced to its `metadata` (module `metadata`).
//! * **watch** (`?watch=1`): newline-delimited JSON events `ADDED`/`MODIFIED`/`DELETED`; from a
//!   `resourceVersion`, every change after it that is still in the retained history window,
//!   then live changes; without one (or `"0"`), synthetic `ADDED` events for the current
//!   state first. `BOOKMARK` events (periodic, carrying the newest resourceVersion the watch
//!   has accounted for) when `allowWatchBookmarks=true`; `sendInitialEvents=true` ends the
//!   initial state with the `k8s.io/initial-events-end` bookmark. A resourceVersion older than
//!   the history window gets HTTP 200 with an `ERROR` event holding a `410 Expired` Status,
//!   as the real watch cache answers. `timeoutSeconds` ends the watch.
//! * **get, create (POST), update (PUT), patch, delete**. Patches: JSON merge patch, JSON patch
//!   and strategic merge patch (maps; `status.addresses`/`status.conditions` merged by `type`;
//!   other directives rejected). Server-side apply is not implemented (`415`). A
//!   `metadata.resourceVersion` in an update, in a patch, or in delete preconditions that is not
//!   the current one gets `409 Conflict`. A write that changes nothing is not stored and does
//!   not bump the resourceVersion. Node status is only written through `/status`; once set,
//!   `spec.podCIDRs` is immutable (as the API validates). Errors are `metav1.Status` objects.
//! * A single global, monotonically increasing resourceVersion, like etcd's revision.
//!
//! * A request log ([`audit`]): every resource request's verb, group, resource, subresource,
//!   namespace, name and client address, as kube-apiserver's authorizer sees them
//!   ([`FakeApiServer::requests`], or a file with [`Options::audit_log`]).
//!
//! Not implemented: authentication and authorisation (every request is allowed), namespace
//! existence (a namespaced object needs no Namespace object), admission, field managers and `managedFields`,
//! finalizers and graceful deletion, protobuf, aggregated discovery.
//!
//! The harness ([`FakeApiServer`]) starts it on a random loopback port, stops it (dropping
//! every connection, so watches break) and restarts it on the same port with the watch history
//! lost (clients resuming an older watch get `410` and must re-list) while the objects survive
//! (they are "in etcd"). Tests play kubelet and cloud controller through
//! [`FakeApiServer::write_node`] and friends (not counted as API writes), count the API writes
//! each object received ([`FakeApiServer::write_requests`]), inject a concurrent writer
//! ([`FakeApiServer::interfere_after_get`]) and inspect the recorded Events.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub mod audit;
mod http;
mod metadata;
pub mod patch;
pub mod store;

pub use store::{ObjectKey, Resource, Store};

/// Options for [`FakeApiServer::start_with`].
#[derive(Clone, Debug)]
pub struct Options {
    /// How many changes the watch history retains (older resourceVersions get `410`).
    pub history: usize,
    /// Interval between `BOOKMARK` events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Also append the request log ([`audit`]) to this file, one JSON object a line.
    pub audit_log: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history: 1000,
            bookmark_interval: Duration::from_secs(1),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            audit_log: None,
        }
    }
}

/// A running (or stopped) mock API server and its store. Dropping it stops serving.
pub struct FakeApiServer {
    store: Arc<Mutex<Store>>,
    audit: Arc<Mutex<audit::AuditLog>>,
    options: Options,
    addr: SocketAddr,
    serving: Option<JoinSet<()>>,
}

impl FakeApiServer {
    /// Starts a server with default options on a random loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Starts a server with `options`.
    pub async fn start_with(options: Options) -> std::io::Result<Self> {
        let store = Arc::new(Mutex::new(Store::new(options.history)));
        let audit = Arc::new(Mutex::new(match &options.audit_log {
            Some(path) => audit::AuditLog::to_file(path)?,
            None => audit::AuditLog::default(),
        }));
        let listener = TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let mut server = Self {
            store,
            audit,
            options,
            addr,
            serving: None,
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&mut self, listener: TcpListener) {
        let app = http::App {
            store: self.store.clone(),
            audit: self.audit.clone(),
            bookmark_interval: self.options.bookmark_interval,
        };
        let router = http::router(app);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            // Connections live in this inner set: aborting the accept task drops them all.
            let mut connections = JoinSet::new();
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "test API server: accept failed");
                        continue;
                    }
                };
                // The client's address, for the request log.
                let router = router.clone().layer(axum::Extension(http::Peer(peer.ip())));
                let service = hyper_util::service::TowerToHyperService::new(router);
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        self.serving = Some(tasks);
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.serving.is_some()
    }

    /// Stops serving: closes the listener and drops every connection (watches break). The
    /// objects are kept.
    pub async fn stop(&mut self) {
        if let Some(mut tasks) = self.serving.take() {
            tasks.shutdown().await;
        }
    }

    /// Starts serving again on the same port after [`FakeApiServer::stop`], with the watch
    /// history lost (as a restarted API server loses its watch cache).
    pub async fn start_again(&mut self) -> std::io::Result<()> {
        if self.serving.is_some() {
            return Ok(());
        }
        self.lock().forget_history();
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        self.start_again().await
    }

    /// A kubeconfig (YAML) whose current context points at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: meshd-test\n  cluster:\n    server: {}\ncontexts:\n- name: meshd-test\n  context:\n    cluster: meshd-test\n    user: meshd-test\n    namespace: default\ncurrent-context: meshd-test\nusers:\n- name: meshd-test\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// The store (for assertions or direct manipulation).
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version()
    }

    /// Creates or replaces a Node as the kubelet/cloud controller would (bypassing the API, not
    /// counted as a write): `name`, `InternalIP` addresses and `spec.podCIDRs`.
    pub fn create_node(&self, name: &str, internal_ips: &[&str], pod_cidrs: &[&str]) -> Value {
        let addresses: Vec<Value> = internal_ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .chain(std::iter::once(
                json!({"type": "Hostname", "address": name}),
            ))
            .collect();
        let mut node = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDRs": pod_cidrs},
            "status": {"addresses": addresses},
        });
        if let Some(first) = pod_cidrs.first() {
            node["spec"]["podCIDR"] = Value::from(*first);
        }
        self.write_node(name, |_| Some(node)).unwrap_or(Value::Null)
    }

    /// A harness write to Node `name`: `f` gets the current object (or `None`) and returns the
    /// new one (or `None` to delete it).
    pub fn write_node(
        &self,
        name: &str,
        f: impl FnOnce(Option<Value>) -> Option<Value>,
    ) -> Option<Value> {
        self.lock().harness_write(&ObjectKey::node(name), f)
    }

    /// A harness edit of an existing Node.
    pub fn modify_node(&self, name: &str, f: impl FnOnce(&mut Value)) -> Option<Value> {
        self.write_node(name, |node| {
            let mut node = node?;
            f(&mut node);
            Some(node)
        })
    }

    /// Deletes Node `name` (harness write). Returns whether it existed.
    pub fn delete_node(&self, name: &str) -> bool {
        let existed = self.node(name).is_some();
        self.write_node(name, |_| None);
        existed
    }

    /// Node `name` as stored.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.lock().get(&ObjectKey::node(name)).cloned()
    }

    /// Creates or replaces (`Some`) or deletes (`None`) the object `key`, as a harness write
    /// (a controller or the kubelet writing it; not counted as an API write). Returns the
    /// stored object.
    pub fn put_object(&self, key: &ObjectKey, object: Option<Value>) -> Option<Value> {
        self.lock().harness_write(key, |_| object)
    }

    /// Creates or replaces ConfigMap `namespace/name` with `data` (harness write).
    pub fn put_configmap(
        &self,
        namespace: &str,
        name: &str,
        data: &[(&str, &str)],
    ) -> Option<Value> {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let key = ObjectKey::namespaced(Resource::ConfigMaps, namespace, name);
        self.lock().harness_write(&key, |current| {
            let mut cm = current
                .unwrap_or_else(|| json!({"metadata": {"name": name, "namespace": namespace}}));
            cm["data"] = Value::Object(data);
            Some(cm)
        })
    }

    /// Creates or replaces the EndpointSlice `default/kubernetes` the way kube-apiserver's
    /// endpoint reconciler maintains it (harness write): named after the Service, labelled
    /// `kubernetes.io/service-name: kubernetes`, one ready endpoint per API server address (of
    /// one family: the reconciler serves the primary one), port `https`.
    pub fn put_kubernetes_endpoints(
        &self,
        addresses: &[std::net::IpAddr],
        port: u16,
    ) -> Option<Value> {
        let address_type = match addresses.first() {
            Some(std::net::IpAddr::V6(_)) => "IPv6",
            _ => "IPv4",
        };
        let endpoints: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
            .collect();
        let key = ObjectKey::namespaced(Resource::EndpointSlices, "default", "kubernetes");
        self.lock().harness_write(&key, |_| {
            Some(json!({
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "kubernetes"},
                },
                "addressType": address_type,
                "endpoints": endpoints,
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }))
        })
    }

    /// API write requests (any outcome) Node `name` received.
    pub fn write_requests(&self, name: &str) -> u64 {
        self.lock().write_requests(&ObjectKey::node(name))
    }

    /// Writes rejected with `409 Conflict` so far.
    pub fn conflicts(&self) -> u64 {
        self.lock().conflicts()
    }

    /// Applies `f` to Node `name` (as another writer) right after the next API `GET` of it, so
    /// a client's following write carrying the resourceVersion it read conflicts.
    pub fn interfere_after_get(&self, name: &str, f: impl FnOnce(&mut Value) + Send + 'static) {
        self.lock()
            .interfere_after_get(ObjectKey::node(name), Box::new(f));
    }

    /// Every resource request served so far, with its authorisation attributes ([`audit`]).
    pub fn requests(&self) -> Vec<audit::ApiRequest> {
        self.audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries()
            .to_vec()
    }

    /// Every Event recorded (core and `events.k8s.io/v1`), in creation order of their keys.
    pub fn events(&self) -> Vec<Value> {
        let store = self.lock();
        let all = |_: &ObjectKey, _: &Value| true;
        let mut events: Vec<Value> = store
            .list(Resource::Events, None, &all)
            .chain(store.list(Resource::CoreEvents, None, &all))
            .map(|(_, v)| v.clone())
            .collect();
        events.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|rv| rv.parse::<u64>().ok())
                .unwrap_or(0)
        });
        events
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(mut tasks) = self.serving.take() {
            tasks.abort_all();
        }
    }
}
