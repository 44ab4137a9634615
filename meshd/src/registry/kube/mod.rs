//! Everything meshd does through the Kubernetes API, in one place.
//!
//! * [`client`]: building a client (a kubeconfig, else `$KUBECONFIG`, `~/.kube/config`, then
//!   the in-cluster service account).
//! * [`annotations`]: the pure codec between a [`NodeRecord`](keyexchange::NodeRecord) and the
//!   eight `meshd.io/` annotations on a `Node`, and who is a peer.
//! * [`nodes`]: [`KubeRegistry`](nodes::KubeRegistry), the [`Registry`](super::Registry) that
//!   publishes a node's record on its own `Node` and watches every `Node`;
//! * [`nodes_watch`]: that watch at metadata cost (`PartialObjectMetadata`), with each peer
//!   Node's `spec.podCIDRs` and addresses read once.
//! * [`endpoints`]: the watcher of the `default/kubernetes` EndpointSlice (the API servers'
//!   real addresses, which host encryption keeps out of the tunnel).
//! * [`settings`]: the watcher of the `meshd-config` ConfigMap and its `InvalidConfiguration`
//!   Events (parsing the settings is [`crate::settings`], pure).
//! * [`node_condition`]: the `MeshdEncrypted` condition on the node's own `Node`.
//! * [`refusal_events`]: a `RecordRefused` Event regarding each Node whose record this node
//!   refuses (deduplicated and rate-limited).
//! * [`audit_source`]: the cluster source of `meshctl audit` (every `Node`, every meshd's
//!   `/status`).
//! * [`policy_objects`]: the watches of the node's own Pods and every Namespace and
//!   NetworkPolicy that NetworkPolicy enforcement needs; [`endpoint_batches`]: each node's
//!   endpoint batch ConfigMap, written by that node and watched by all.
//!
//! Together, meshd's service account needs `get`, `list`, `watch` and `patch` on `nodes`,
//! `patch` on `nodes/status`, `list` and `watch` on `configmaps` (meshd's namespace: the
//! settings and the endpoint batches) and `endpointslices` (by field selector), `create` and
//! `patch` on `configmaps` in meshd's namespace (its own batch: the admission policy holds it
//! to its own name), `list` and `watch` on `pods` (own node, by field selector), `namespaces`
//! and `networkpolicies` (cluster-wide), `create` on `events.k8s.io` `events` (meshd's
//! namespace) and `create` and `patch` on core `events` in `default`.

use std::time::Duration;

use kube::runtime::utils::Backoff;

pub mod annotations;
pub mod audit_source;
pub mod client;
pub mod endpoint_batches;
pub mod endpoints;
pub mod node_condition;
pub mod nodes;
pub mod nodes_watch;
pub mod policy_objects;
pub mod refusal_events;
pub mod settings;

/// Exponential backoff for re-establishing a watch, reset by every successful event.
struct WatchBackoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl WatchBackoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = self.first;
    }
}
