//! Key material, node records, peer-set computation and registry backends for meshd.
//!
//! This crate owns everything a node needs to *decide* who its WireGuard peers are: its own
//! x25519 key pair (persisted, never silently replaced), the versioned record it publishes, the
//! pure computation from all records to the desired peer set (with conflict detection) and the
//! minimal diff against what is programmed. Registry backends move records between nodes.
//! It never touches the network stack: programming devices is the `netlink` crate's job.
#![forbid(unsafe_code)]
//!
//! Modules:
//! * [`key`]: [`PublicKey`]/[`PrivateKey`] and crash-safe persistence of the node's key
//!   ([`key::load_or_generate`]).
//! * [`record`]: the versioned JSON [`NodeRecord`] each node publishes (its wire format is a
//!   contract, documented there) and its validation.
//! * [`peers`]: pure functions from records to the desired peer set
//!   ([`peers::compute_peers`], with conflict detection) and to the minimal operations
//!   ([`peers::diff_peers`]) against what a device has programmed.
//! * [`slots`]: the two key slots every node runs for loss-free key rotation, and which one
//!   a pair of nodes uses ([`slots::pair_slot`]).
//! * [`registry`]: the [`Registry`] trait through which records are exchanged, and the
//!   directory-backed [`DirRegistry`] (inotify-watched) and the Kubernetes-backed
//!   [`KubeRegistry`] (records as `Node` annotations).

pub mod key;
pub mod peers;
pub mod record;
pub mod registry;
pub mod slots;

/// The Kubernetes API types matching [`kube`] (`Node`, `ConfigMap`…), re-exported likewise.
pub use ::k8s_openapi;
/// The `kube` crate [`KubeRegistry`] is built on, re-exported so that callers use the same
/// version (a [`kube::Client`] is part of this crate's API).
pub use ::kube;
pub use key::{KeyError, PrivateKey, PublicKey};
pub use record::{NodeRecord, RecordError};
pub use registry::dir::DirRegistry;
pub use registry::kube::KubeRegistry;
pub use registry::{Registry, RegistryError, RegistryEvent};
