//! The meshd daemon, the `meshctl` operator CLI and the local multi-node lab.
//!
//! `meshd` owns one node's part of the mesh: it loads the node's key, adopts or creates the
//! WireGuard device, publishes the node's record and reconciles peers and routes from the
//! registry. The decisions are pure functions (`keyexchange::peers`, [`controller::plan`]); this crate
//! wires them to the registry and to the kernel (`netlink`). `meshctl` talks to a node's meshd
//! over the control socket and drives the lab.
#![forbid(unsafe_code)]

/// The compliance audit (pure checks over what nodes publish and report).
pub mod audit;
/// The cluster source of the audit (Nodes from the API, each node's `/status`).
pub mod audit_cluster;
/// The daemon's side of the tc eBPF datapath (strict mode, redirects, counters).
pub mod bpf;
/// The CNI plugin's spec types and command handling (CNI 1.1.0 and older result formats).
pub mod cni;
/// The CNI configuration list meshd installs when the node is ready.
pub mod cni_conf;
/// The node-local control socket (status).
pub mod control;
/// The controller: start-up, the event loop, the pure desired state and plan, and the steps
/// that apply it.
pub mod controller;
/// The controller under its former name (`meshctl` still calls `meshd::daemon::parse_interval`).
pub use controller as daemon;
/// Liveness and readiness endpoints.
pub mod health;
/// Node-local pod address management on an on-disk store.
pub mod ipam;
/// The local multi-node lab built from network namespaces.
pub mod lab;
/// Prometheus metrics.
pub mod metrics;
/// The `MeshdEncrypted` Node condition (Kubernetes).
pub mod node_condition;
/// The key-rotation driver (pure: which step, when).
pub mod rotation;
/// Reverse-path filtering for the WireGuard devices.
pub mod rpfilter;
/// Operator settings from the `meshd-config` ConfigMap and their live watcher.
pub mod settings;
/// Crash-safe replacement of meshd's small state files.
pub mod statefile;

/// Install the tracing subscriber used by every binary (`RUST_LOG` filters; default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
