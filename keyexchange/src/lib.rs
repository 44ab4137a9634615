//! Key material, node records, peer-set computation and key slots for meshd.
//!
//! This crate owns everything a node needs to *decide* who its WireGuard peers are: its own
//! x25519 key pair (persisted, never silently replaced), the versioned record it publishes, the
//! pure computation from all records to the desired peer set (with conflict detection) and the
//! minimal diff against what is programmed. It never touches the network stack (programming
//! devices is the `netlink` crate's job) and never talks to other nodes: the registries that
//! move records between nodes, and all Kubernetes client code, live in the daemon
//! (`meshd::registry`). No async runtime, no Kubernetes types.
//!
//! Modules:
//! * [`key`]: [`PublicKey`]/[`PrivateKey`] and crash-safe persistence of the node's key
//!   ([`key::load_or_generate`]).
//! * [`record`]: the versioned JSON [`NodeRecord`] each node publishes (its wire format is a
//!   contract, documented there) and its validation.
//! * [`peers`]: pure functions from records to the desired peer set
//!   ([`peers::compute_peers`], with conflict detection) and to the minimal operations
//!   ([`peers::diff_peers`]) against what a device has programmed.
//! * [`trust`]: which records this node accepts at all ([`trust::admit`]): pod CIDRs inside
//!   the cluster pools, sane endpoints, and on a conflict the established holder keeps its
//!   claim while only the newcomer is refused.
//! * [`slots`]: the two key slots every node runs for loss-free key rotation, and which one
//!   a pair of nodes uses ([`slots::pair_slot`]).
#![forbid(unsafe_code)]

/// Entry point of the `record_json` fuzz target (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod key;
pub mod peers;
pub mod record;
pub mod slots;
pub mod trust;

pub use key::{KeyError, PrivateKey, PublicKey};
pub use record::{NodeRecord, RecordError};
