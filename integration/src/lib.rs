//! Harness for meshd's multi-node tests: drives the lab, generates traffic, analyses captures.
//!
//! Modules:
//! - [`netns`]: run commands inside network namespaces, own namespaces and
//!   background processes with drop guards (`ip netns …`).
//! - [`capture`]: run `tcpdump` on the lab underlay and analyse the pcap: no pod
//!   packet and no marker string may cross in clear; WireGuard between nodes is counted.
//! - [`traffic`]: TCP/UDP traffic generators and sinks (the logic behind the
//!   `lab-traffic` binary), with end-to-end integrity (SHA-256) and loss/reorder/gap stats.
//! - [`labjson`]: serde types for `meshctl lab status -o json`.
//! - [`apiserver`] (re-exported from `meshd-lab`, whose `fake-apiserver` the lab runs): a
//!   mock Kubernetes API server (list/watch/patch of Nodes, ConfigMaps,
//!   Events) that the Kubernetes registry backend and the settings watcher are tested against,
//!   with a log of every request's authorisation attributes.
//! - [`rbac`]: RBAC rule matching, to check that log against the roles in `deploy/`.
//!
//! Binaries: `lab-traffic` (traffic generator run inside pod namespaces) and
//! `mesh-bench` (plain veth vs wireguard-go vs meshd throughput/RTT benchmark).
//!
//! Network rule: everything here only sends traffic to addresses inside network
//! namespaces the caller created (or to loopback in unit tests).

#![forbid(unsafe_code)]

/// The mock Kubernetes API server, which lives with the lab that runs it (`fake-apiserver`).
pub use meshd_lab::apiserver;
pub mod bench;
pub mod capture;
pub mod lab;
pub mod labjson;
/// The test kit's namespace helpers, and the root check the tests here have not yet moved off.
pub mod netns {
    pub use testkit::netns::*;
    pub use testkit::require::is_root;

    /// For tests that need root: true when running as root, else prints why it is skipped.
    /// (Being replaced by [`testkit::require_root`], which fails instead.)
    pub fn root_or_skip() -> bool {
        if is_root() {
            true
        } else {
            eprintln!("skipping: needs root for network namespaces");
            false
        }
    }
}
pub mod rbac;
pub mod traffic;
pub mod verify;
pub mod vm;

pub use labjson::{CaptureSpot, LabNode, LabPod, LabStatus};
