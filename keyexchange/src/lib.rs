//! Key material, node records, peer-set computation and registry backends for meshd.
//!
//! This crate owns everything a node needs to *decide* who its WireGuard peers are: its own
//! x25519 key pair (persisted, never silently replaced), the versioned record it publishes, the
//! pure computation from all records to the desired peer set (with conflict detection) and the
//! minimal diff against what is programmed. Registry backends move records between nodes.
//! It never touches the network stack: programming devices is the `netlink` crate's job.
#![forbid(unsafe_code)]
