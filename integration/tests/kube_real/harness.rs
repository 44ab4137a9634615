//! The real kube-apiserver tests' harness (kube_real.rs, kube_real_watchers.rs): a server per
//! test with nodes n1..=nN as a kubelet and the node IPAM controller leave them, the admin's and
//! meshd's (its service account's) clients, meshd's registry, and waiting helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/kube_registry.rs"]
mod kube_registry;

use std::time::Duration;

use integration::kube_apiserver::{self, TestCluster};
use k8s_openapi::api::core::v1::Node;
use keyexchange::NodeRecord;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use meshd::registry::kube::client::client;
use meshd::registry::{KubeRegistry, RegistryEvent};
use serde_json::json;
use tokio::sync::mpsc::Receiver;

pub const WAIT: Duration = Duration::from_secs(30);

/// A real API server, an admin client and meshd's client.
pub struct Cluster {
    pub k8s: TestCluster,
    pub admin: Client,
    pub meshd: Client,
}

pub async fn cluster(nodes: u8) -> Cluster {
    cluster_with(nodes, |_| {}).await
}

pub async fn cluster_with(
    nodes: u8,
    adjust: impl FnOnce(&mut kube_apiserver::ServerConfig),
) -> Cluster {
    let k8s = TestCluster::start_with(adjust);
    let admin = client(Some(&k8s.admin_kubeconfig())).await.unwrap();
    let meshd = client(Some(&k8s.meshd_kubeconfig())).await.unwrap();
    let c = Cluster { k8s, admin, meshd };
    for i in 1..=nodes {
        let node = kube_registry::TestNode::numbered(i);
        c.create_node(&node.name, &node.ips(), &node.cidrs()).await;
    }
    c
}

impl Cluster {
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.admin.clone())
    }

    /// A Node as a kubelet and a node IPAM controller leave it: InternalIPs and podCIDRs.
    pub async fn create_node(&self, name: &str, ips: &[&str], cidrs: &[&str]) {
        let mut node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDRs": cidrs},
        }))
        .unwrap();
        if let Some(first) = cidrs.first() {
            node.spec.as_mut().unwrap().pod_cidr = Some(first.to_string());
        }
        self.nodes()
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
        let addresses: Vec<_> = ips
            .iter()
            .map(|a| json!({"type": "InternalIP", "address": a}))
            .collect();
        self.nodes()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"addresses": addresses}})),
            )
            .await
            .unwrap();
    }

    pub async fn patch_node(&self, name: &str, patch: serde_json::Value) {
        self.nodes()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    pub async fn annotations(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        self.nodes()
            .get(name)
            .await
            .unwrap()
            .metadata
            .annotations
            .unwrap_or_default()
    }

    /// meshd's registry for `node`, as meshd's service account.
    pub fn registry(&self, node: &str) -> KubeRegistry {
        kube_registry::registry(&self.meshd, node)
    }

    /// n`i`'s record with the key `[i; 32]`, endpoints and CIDRs from its Node.
    pub async fn record(&self, i: u8) -> NodeRecord {
        kube_registry::record(&self.meshd, i).await
    }

    /// meshd's writes (patches) to Node `name` so far, from the audit log.
    pub fn node_writes(&self, name: &str) -> usize {
        self.k8s
            .meshd_requests()
            .iter()
            .filter(|r| {
                r.request.resource == "nodes"
                    && r.request.subresource.is_none()
                    && r.request.name.as_deref() == Some(name)
                    && !matches!(r.request.verb.as_str(), "get" | "list" | "watch")
            })
            .count()
    }

    pub fn assert_nothing_forbidden(&self) {
        let forbidden = self.k8s.meshd_forbidden();
        assert!(
            forbidden.is_empty(),
            "the API server refused meshd: {forbidden:#?}"
        );
    }
}

pub async fn next(rx: &mut Receiver<RegistryEvent>) -> RegistryEvent {
    kube_registry::next_event(rx, WAIT).await
}

/// Events up to and including the next `Synced`.
pub async fn until_synced(rx: &mut Receiver<RegistryEvent>) -> Vec<RegistryEvent> {
    kube_registry::events_until_synced(rx, WAIT).await
}

/// Skips events until one `wanted` holds for (watchers see every node's changes).
pub async fn until_event(
    rx: &mut Receiver<RegistryEvent>,
    what: &str,
    wanted: impl Fn(&RegistryEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("registry watch closed");
        if wanted(&e) {
            return;
        }
    }
}

pub async fn assert_quiet(rx: &mut Receiver<RegistryEvent>) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await {
        panic!("unexpected registry event {e:?}");
    }
}

/// A status report as meshd's control socket gives it, for the Node condition.
pub fn status_report() -> meshd::control::StatusReport {
    serde_json::from_value(json!({
        "node": "n1", "public_key": "k", "mode": "userspace", "interface": "meshd0",
        "ifindex": 3, "adopted_device": false, "listen_port": 51820, "mtu": 1420,
        "endpoints": [], "pod_cidrs": [], "known_nodes": [], "peers": [], "conflicts": [],
        "malformed": [], "counters": {"malformed_records": 0, "reconciles": 1,
        "reconcile_errors": 0, "peer_ops": 0, "route_ops": 0}, "converged": true,
        "encryption": "enabled", "strict_mode": true,
        "datapath": {"pin_dir": "/sys/fs/bpf/meshd", "underlay_mode": "enforce",
            "underlay_interface": "eth0", "underlay_attached": true, "attach": "tcx",
            "remote_cidrs": [], "cluster_cidrs": [], "local_pods": 0, "pod_interfaces": 0,
            "counters": {"redirected": 0, "local": 0, "passed": 0, "strict_drops": 0,
                "would_drops": 0}}
    }))
    .unwrap()
}

/// Polls `probe` every 100 ms until it returns `Some`, up to [`WAIT`].
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
