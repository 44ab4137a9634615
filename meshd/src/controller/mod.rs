//! The controller: one node's part of the mesh, kept in step with the registry.
//!
//! It loads the node's keys, guards the underlay, adopts (or creates) the two slot devices,
//! publishes the node's record, and then runs a control loop: every event that can change
//! what the node should look like leads to a reconcile pass that observes the node, computes
//! the desired state, plans the ordered steps between the two and applies them.
//!
//! Start-up order matters for "restart without dropping traffic": the key is loaded (never
//! regenerated over an existing file), the existing WireGuard device is adopted rather than
//! recreated, and only then is anything reconciled — so a restart of meshd is invisible to the
//! datapath. The tc eBPF datapath ([`crate::bpf`]) is loaded first of all: strict mode guards
//! the underlay before this node has a single peer, route or pod, and it stays attached
//! (pinned) while meshd restarts. Pod traffic to a remote node is redirected into the tunnel by
//! `from_pod`; the routes via the device carry the node's own traffic to remote pods. Traffic
//! for a pod CIDR without a peer follows the node's ordinary routing and is dropped (strict)
//! or counted (permissive) by `underlay_egress` before it reaches the wire.
//!
//! The path of one event, a peer's record arriving, file by file:
//! 1. `start.rs` started the registry watch and handed it to the loop;
//! 2. `event_loop.rs` receives the `Upsert` and folds it into the registry cache
//!    (`state.rs`), then runs a pass;
//! 3. `pass.rs`: when only records changed since the last pass, it plans against what that
//!    pass left on the node (`remembered.rs`) and applies just the difference; otherwise
//!    `devices.rs` heals the slot devices and keeps their ports, `observe.rs` reads the node
//!    (and `pods.rs` the IPAM store, `guard.rs` decides the ways out of the node from its
//!    routes and rules). Then `desired.rs` turns the records and settings into the desired
//!    state (the new peer on both slot devices, its routes and redirects), `plan.rs` orders
//!    the steps (peer, then route, guard, redirect), `apply.rs` carries them out;
//! 4. back in `event_loop.rs`: `key_rotation.rs` acknowledges the peer's rotation step, if
//!    any, the CNI configuration follows readiness, and `status.rs` publishes the status
//!    (after a pass from memory, it brings the served status forward by the pass's steps).

mod apply;
mod args;
mod blocks;
/// Map capacity (pure: which accepted peers fit in the per-node maps).
pub mod capacity;
mod claim;
mod context;
mod covering;
/// The desired state (pure: records and settings in, the node as it should be out).
pub mod desired;
mod devices;
mod event_loop;
mod guard;
mod key_rotation;
mod liveness;
mod observe;
mod pass;
/// The reconcile plan (pure: desired and observed state in, ordered typed steps out).
pub mod plan;
mod pods;
mod publisher;
mod remembered;
mod start;
mod state;
mod status;
mod trust;

pub use args::{
    parse_interval, second_port, DaemonArgs, IpamMode, NodeSubnetArgs, PodSteering,
    DEFAULT_MESH_MARK,
};
pub use context::ApiServerFeed;
pub use start::{run, run_with, SettingsFeed};
pub use state::Live;

/// Routing table holding host encryption's routes to peer node addresses.
pub const HOST_TABLE: u32 = 109;
/// Priority of the rule `not fwmark MESH_MARK lookup HOST_TABLE` (before the main table's
/// 32766).
pub const HOST_RULE_PRIORITY: u32 = 32700;

/// Now, in UNIX seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
