//! The local lab: a multi-node meshd cluster built from network namespaces on one machine.
//!
//! Layout: an underlay namespace holds a bridge (the switch) with a router address that is every
//! node's default gateway but forwards nothing. Each node is a network namespace plus a
//! persistent mount namespace (private `/run/wireguard`, `/run/meshd`, `/sys` and a bpffs of its
//! own at `/sys/fs/bpf`, which is the host's `/sys/fs/bpf/meshd-lab/<lab>-nK`), so every node
//! runs an unmodified `meshd` with production paths: the device is `meshd0` on every node, and
//! `wg show` or `meshctl status` inside a node just work. Pods are namespaces behind veth pairs,
//! addressed from their node's pod CIDRs and routed the way a CNI does it (host routes to the
//! pod, a link-local next hop in the pod).
//!
//! State lives in `/run/meshd-lab/<name>/`; `lab.json` there records what was built so that
//! `down` removes exactly that. Lab traffic never leaves lab namespaces.
//!
//! This crate owns the lab and nothing of meshd itself: it builds namespaces with the host's
//! tools (`ip`, `nsenter`, `mount`; test infrastructure, not production netlink code), starts
//! the workspace's binaries found next to `meshctl` (`meshd`, `meshd-cni`, `meshd-wg`, and its
//! own `fake-apiserver`) or, with `MESHD_LAB_NODE_ROOT`, those of an unpacked container
//! image (`node_root`), and reads meshd only through its control socket and pinned maps.
//! `meshctl lab …` and `meshctl audit --lab` are its commands.
//!
//! Kubernetes objects (`lab apply`, `delete`, `label`, `probe`): Namespaces, Pods and
//! NetworkPolicies go to the lab's directory registry as the API server would hold them; an
//! applied Pod is a namespace made through `meshd-cni` with a server per declared port, and
//! `probe` tries every pair of them.
#![forbid(unsafe_code)]

/// The mock Kubernetes API server kubernetes labs run (binary `fake-apiserver`); tests use it too.
pub mod apiserver;
/// `lab apply`, `lab delete` and `lab label`: Kubernetes objects in the lab, Pods made for real.
mod apply;
/// The lab's side of `meshctl audit` and its `--evidence` canaries.
pub mod evidence;
/// `lab exec`: a command inside a node.
mod exec;
/// The host tools the lab drives and the processes it watches.
mod host;
/// A real kube-apiserver and etcd (built by `scripts/kube-apiserver.sh`), for tests and labs.
pub mod kube_apiserver;
/// Kubernetes labs: the mock API server and `lab set`.
mod kubernetes;
/// Label syntax and `kubectl label` semantics (pure).
pub mod labels;
/// `lab up` and `lab down`: the underlay, the nodes' namespaces and mounts.
mod layout;
/// Nodes running their binaries from a container image's root filesystem.
pub mod node_root;
/// A node's life: add, start, stop, kill, remove.
mod nodes;
/// The lab's Kubernetes object files in its directory registry.
mod object_store;
/// Kubernetes objects from multi-document YAML, checked and defaulted (pure).
pub mod objects;
/// `lab observe`: every node's flows, read inside the node and merged by time.
mod observe;
/// Pure naming and addressing of nodes and pods.
pub mod plan;
/// Pods, made through `meshd-cni` as a container runtime makes them.
mod pods;
/// `lab probe`: connection attempts between applied Pods, the truth table and JSON.
mod probe;
/// `lab rotate-key`: several nodes' key rotations at once.
mod rotate;
/// SCTP probe packets over raw IP protocol 132 (pure).
pub mod sctp;
/// A Pod's port server (`meshctl lab serve`, hidden).
mod serve;
/// What `lab up` built (`lab.json`) and where the lab keeps its files.
mod state;
/// The `lab status` document and table.
mod status;

pub use apply::{apply, delete, label, LabelTarget};
pub use exec::exec;
pub use kubernetes::{set, APISERVER_AUDIT_LOG, CONFIG_NAMESPACE};
pub use layout::{down, up};
pub use nodes::{add_node, kill_node, remove_node, start_node, stop_node};
pub use observe::{merge_by_time, node_observers, NodeObserver};
pub use probe::{probe, render_table, ProbeOptions, ProbeReport, ProbeResult};
pub use rotate::rotate_keys;
pub use serve::serve;
pub use state::{LabState, NodeState, UpOptions};
pub use status::{
    print_status_table, print_status_table_listing, print_table, print_table_listing,
    render_status_table, status, CaptureSpot, LabNode, LabPod, LabStatus,
};

/// Where every lab keeps its state.
pub const LAB_ROOT: &str = "/run/meshd-lab";
/// Version of the `lab status -o json` document.
pub const STATUS_VERSION: u32 = 1;
/// The host's bpffs mount point.
const HOST_BPFFS: &str = "/sys/fs/bpf";
/// The WireGuard port every lab node listens on.
pub const LISTEN_PORT: u16 = 51820;
