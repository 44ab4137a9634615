//! Harness for meshd's multi-node tests: drives the lab, generates traffic, analyses captures.
//!
//! Namespaces, background processes and the root/tool requirement come from the `testkit`
//! crate (`testkit::NetnsGuard`, `testkit::require_tools`): a test that cannot run fails.
//!
//! Modules:
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
//! - [`kube_apiserver`]: a real kube-apiserver (v1.20.2) and etcd, with meshd's service
//!   account bound by `deploy/`'s RBAC and an audit log of every request.
//! - [`oci`]: an OCI image layout (meshd's image, `scripts/build-image.sh`) verified and
//!   unpacked as a container runtime does.
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
pub mod kube_apiserver;
pub mod lab;
pub mod labjson;
pub mod oci;
pub mod rbac;
pub mod traffic;
pub mod verify;
pub mod vm;

pub use labjson::{CaptureSpot, LabNode, LabPod, LabStatus};
