//! NetworkPolicy in the daemon: feeds the pure compiler (`meshd-policy`) from the registry's
//! object watches and the IPAM store, and writes the BPF policy maps.
//!
//! It is a module of its own, beside the controller rather than inside it: it runs as its own
//! task with its own inputs (Pods, Namespaces, NetworkPolicies, the IPAM store) and its own
//! handle on the pinned maps, and never waits for, or holds up, the controller's reconcile
//! pass. The controller only starts it and shows its report in the status.
//!
//! * [`objects`]: what the sources report ([`objects::ObjectEvent`]) and the relist
//!   bookkeeping that turns it into compiler changes (the sources themselves are in
//!   [`crate::registry`]: `objects` for the directory, `kube::policy_objects` for Kubernetes).
//! * [`endpoint_batch`]: the per-node endpoint batch (encode, decode, vet against the
//!   publishing node's pod CIDRs), pure; [`pod_identity`]: the stage between a registry's raw
//!   watches (own pods, every node's batch) and the loop, which also publishes this node's
//!   batch.
//! * [`pod_table`]: pods by address for flow enrichment, kept by the loop, sharing the
//!   world's names and label sets.
//! * [`endpoints`]: local pods → endpoint ids (host veth ifindex), following the IPAM store.
//! * [`task`]: the loop ([`task::PolicyLoop`]): batches, the incremental compiler, writes in
//!   the safe order, reconciliation against the live maps at start.
//! * [`writer`]: the [`writer::PolicyMapWriter`] trait and its in-memory implementation;
//!   [`datapath`]: its implementation on the pinned BPF maps.
//! * [`report`]: the `policy` object of the status.

pub mod datapath;
pub mod endpoint_batch;
pub mod endpoints;
pub mod objects;
pub mod pod_identity;
pub mod pod_table;
pub mod report;
pub mod task;
pub mod writer;

use std::path::PathBuf;

pub use report::{PolicyReport, SharedPolicyReport};

use objects::ObjectEvent;
use tokio::sync::mpsc;
use writer::PolicyMapWriter;

/// Starts the policy loop for node `node`: objects from `objects` (labelled `source` in the
/// status), local endpoints from the IPAM store in `store_dir`, maps written through `writer`.
/// Returns the report it keeps up to date and the task.
pub fn spawn<W: PolicyMapWriter>(
    node: &str,
    source: &str,
    objects: mpsc::Receiver<ObjectEvent>,
    store_dir: Option<PathBuf>,
    writer: W,
) -> (SharedPolicyReport, tokio::task::JoinHandle<()>) {
    let report = SharedPolicyReport::default();
    report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .source = source.to_owned();
    let policy_loop = task::PolicyLoop::new(
        node,
        writer,
        Box::new(endpoints::ifindex_of),
        report.clone(),
    );
    let handle = tokio::spawn(policy_loop.run(objects, store_dir));
    (report, handle)
}
