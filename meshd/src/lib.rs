//! The meshd daemon: the library behind the `meshd` binary, and the control socket and audit
//! types that `meshctl` (crate `meshctl`) and the lab (crate `meshd-lab`) use.
//!
//! `meshd` owns one node's part of the mesh: it loads the node's key, adopts or creates the
//! WireGuard device, publishes the node's record and reconciles peers and routes from the
//! registry. The decisions are pure functions (`keyexchange::peers`, [`controller::plan`]); this crate
//! wires them to the registry and to the kernel (`netlink`). `meshctl` talks to a node's meshd
//! over the control socket.
#![forbid(unsafe_code)]

/// The compliance audit (pure checks over what nodes publish and report).
pub mod audit;
/// The daemon's side of the tc eBPF datapath (strict mode, redirects, counters).
pub mod bpf;
/// The CNI configuration list meshd installs when the node is ready.
pub mod cni_conf;
/// The node-local control socket (status).
pub mod control;
/// The controller: start-up, the event loop, the pure desired state and plan, and the steps
/// that apply it.
pub mod controller;
/// Flow events from the datapath: the flow record, history and control-socket stream.
pub mod flows;
/// Entry points of the cargo-fuzz targets in `fuzz/` (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
/// Liveness and readiness endpoints.
pub mod health;
/// Prometheus metrics.
pub mod metrics;
/// The closed sets of modes settings, datapath and status share (encryption, ...).
pub mod mode;
/// `node-subnet` IPAM: pods addressed from blocks of the nodes' own subnet, claimed as a node
/// fills and given back when empty (pure).
pub mod node_subnet;
/// `cluster-pool` IPAM: this node's pod CIDRs carved out of a cluster-wide pool (pure).
pub mod pod_cidr_pool;
/// NetworkPolicy: the policy loop feeding the compiler from the object watches and the IPAM
/// store, and writing the BPF policy maps.
pub mod policy;
/// Where records are exchanged (the directory and Kubernetes registries) and all of meshd's
/// Kubernetes client code (settings watcher, Node condition, audit source).
pub mod registry;
/// The key-rotation driver (pure: which step, when).
pub mod rotation;
/// Reverse-path filtering for the WireGuard devices.
pub mod rpfilter;
/// Operator settings from the `meshd-config` ConfigMap (pure parsing, the last good settings).
pub mod settings;
/// Crash-safe replacement of meshd's small state files.
pub mod statefile;

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core dump of it is
/// written, and no process without `CAP_SYS_PTRACE` may attach to it or read its memory, so
/// its private keys never land in a core file. Every meshd binary calls it first.
pub fn forbid_core_dumps() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

/// Install the tracing subscriber used by every binary (`RUST_LOG` filters; default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_is_not_dumpable_after_forbidding_core_dumps() {
        super::forbid_core_dumps().expect("prctl");
        assert_eq!(nix::sys::prctl::get_dumpable(), Ok(false));
    }
}
