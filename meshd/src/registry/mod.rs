//! Registries: where nodes publish their [`NodeRecord`] and learn everyone else's.
//!
//! The record itself, its validation and everything computed from records are pure and live in
//! `keyexchange`; this module moves records between nodes. A backend implements [`Registry`].
//! [`dir::DirRegistry`] keeps one JSON file per node in a shared directory (tests, labs, a
//! hostPath shared by all nodes); [`kube::nodes::KubeRegistry`] stores the record as
//! annotations on each node's `Node` object ([`kube::annotations`]): `publish` patches meshd's
//! annotations, `withdraw` removes them, `watch` lists the nodes and then follows a watch,
//! translating into [`RegistryEvent`]s exactly like the directory backend does. [`kube`] also
//! holds the rest of meshd's Kubernetes client code. Each backend also carries the objects
//! NetworkPolicy depends on ([`Registry::watch_policy_objects`]): [`objects`] files under the
//! directory, [`kube::policy_objects`] watches on the API server.
//!
//! Contract of [`Registry::watch`]: the receiver first yields the current state (one
//! [`RegistryEvent::Upsert`] or [`RegistryEvent::Malformed`] per existing record), then every
//! change. Unchanged content is not re-announced. A malformed entry is reported, never fatal.
//! The watcher stops when the receiver is dropped; the channel closes if the backend fails
//! irrecoverably (the consumer should then restart the watch, which replays the full state).

use std::future::Future;
use std::io;
use std::path::PathBuf;

use keyexchange::{NodeRecord, RecordError};

pub mod dir;
pub mod kube;
pub mod objects;

pub use self::dir::DirRegistry;
pub use self::kube::nodes::KubeRegistry;

/// A change in the set of published records.
#[derive(Debug, Clone)]
pub enum RegistryEvent {
    /// A node's record was published or changed.
    Upsert(NodeRecord),
    /// A node's record was withdrawn.
    Delete(String),
    /// A node's entry exists but is not a valid record. Treat the node as unknown.
    Malformed {
        /// The node the entry belongs to (its registry key, e.g. the file stem).
        node: String,
        /// Why it is invalid.
        error: RecordError,
    },
    /// Everything the registry held when the watch started (or after a re-list) has been
    /// delivered. Consumers must not act on an absence (remove a peer) before the first
    /// `Synced`: a partial initial state would tear down peers that still exist.
    Synced,
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A node name that cannot be used as a registry key.
    #[error("invalid node name {name:?}: must be a DNS-1123 subdomain")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The record did not validate; nothing was published.
    #[error("refusing to publish an invalid record")]
    Validate(#[source] RecordError),
    /// Creating the registry directory failed.
    #[error("creating registry directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading registry state failed.
    #[error("reading {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing (or syncing, renaming, removing) registry state failed.
    #[error("writing {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Setting up the change watch failed.
    #[error("watching {path}")]
    Watch {
        /// The watched location.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// `watch` was called outside a Tokio runtime.
    #[error("watching requires a running Tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    /// A blocking helper task failed (panicked or was cancelled).
    #[error("registry I/O task failed")]
    Task(#[source] tokio::task::JoinError),
    /// A Kubernetes API request failed (after retries, for conflicts).
    #[error("{action} the record of node {node:?} on the Kubernetes API")]
    Kubernetes {
        /// What was being done (`publishing`, `withdrawing`, `reading`).
        action: &'static str,
        /// The node whose `Node` object was involved.
        node: String,
        /// The API or transport error.
        #[source]
        source: ::kube::Error,
    },
}

/// A place where nodes publish their records and watch everyone's.
pub trait Registry: Send + Sync + 'static {
    /// Validates `record` and publishes it under its name, replacing any previous version.
    fn publish(
        &self,
        record: &NodeRecord,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Removes the record of node `name`. Idempotent: a missing record is `Ok`.
    fn withdraw(&self, name: &str) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Streams the current state, then every change (see the module docs for the contract).
    /// Must be called within a Tokio runtime.
    fn watch(&self) -> Result<tokio::sync::mpsc::Receiver<RegistryEvent>, RegistryError>;

    /// Streams the Pods, Namespaces and NetworkPolicies that NetworkPolicy depends on, as
    /// node `node` sees them: each kind listed, then every change
    /// ([`crate::policy::objects::ObjectEvent`]). Pods come per node: `node`'s own from a watch
    /// of its own pods, every other node's from that node's endpoint batch
    /// ([`crate::policy::pod_identity`]); `node`'s batch is published meanwhile. Must be called
    /// within a Tokio runtime.
    fn watch_policy_objects(
        &self,
        node: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<crate::policy::objects::ObjectEvent>, RegistryError>;

    /// Where [`Registry::watch_policy_objects`] reads (`directory`, `kubernetes`), for the status.
    fn policy_source(&self) -> &'static str;
}
