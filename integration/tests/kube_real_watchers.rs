//! meshd's settings watcher and Node condition against a real kube-apiserver (v1.20.2,
//! `integration::kube_apiserver`), meshd authenticated as its service account under exactly
//! `deploy/`'s RBAC: moved here from the mock (kube.rs), since the real server produces all of
//! it. The admin changes the ConfigMap and the kubelet's conditions.
//!
//! Needs the binary (`scripts/kube-apiserver.sh build`), etcd, openssl and kubectl; fails
//! without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "kube_real/harness.rs"]
mod harness;

use harness::*;
use integration::kube_apiserver::MESHD_NAMESPACE;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, Patch, PatchParams};
use meshd::registry::kube::settings::{
    pod_reference, spawn_watcher, WatcherConfig, INVALID_REASON,
};
use meshd::settings::{Encryption, Settings, CONFIG_MAP_NAME};
use serde_json::json;
use std::time::Duration;

impl Cluster {
    /// The admin sets ConfigMap `name` in meshd's namespace to exactly `data` (server-side
    /// apply: keys left out are removed).
    async fn put_configmap(&self, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, serde_json::Value> =
            data.iter().map(|(k, v)| ((*k).into(), json!(v))).collect();
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": MESHD_NAMESPACE},
            "data": data,
        });
        Api::<ConfigMap>::namespaced(self.admin.clone(), MESHD_NAMESPACE)
            .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(cm))
            .await
            .unwrap();
    }

    /// The events.k8s.io Events in meshd's namespace.
    async fn events(&self) -> Vec<KubeEvent> {
        Api::<KubeEvent>::namespaced(self.admin.clone(), MESHD_NAMESPACE)
            .list(&Default::default())
            .await
            .unwrap()
            .items
    }

    /// n1's conditions, as the admin reads them.
    async fn conditions(&self) -> Vec<k8s_openapi::api::core::v1::NodeCondition> {
        self.nodes()
            .get("n1")
            .await
            .unwrap()
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_configmap_and_reject_invalid_values() {
    let c = cluster(1).await;
    let pod = pod_reference(MESHD_NAMESPACE, "meshd-abcde", None);
    let config = WatcherConfig {
        max_backoff: Duration::from_millis(500),
        ..WatcherConfig::new(MESHD_NAMESPACE, pod, "n1")
    };
    let mut rx = spawn_watcher(c.meshd.clone(), config);
    // No ConfigMap: the defaults, once listed.
    let first = tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(first, Some(Settings::default()));

    c.put_configmap(
        CONFIG_MAP_NAME,
        &[("encryption", "permissive"), ("mtu", "1400")],
    )
    .await;
    let s = tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.encryption == Encryption::Permissive)
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(s.mtu, Some(1400));

    // Another ConfigMap in the namespace is not ours.
    c.put_configmap("other", &[("encryption", "disabled")])
        .await;

    // An invalid value: rejected, an Event names key and value, the last good value stays.
    c.put_configmap(
        CONFIG_MAP_NAME,
        &[("encryption", "disabled"), ("mtu", "jumbo")],
    )
    .await;
    let event = eventually("the InvalidConfiguration Event", || async {
        c.events().await.into_iter().next()
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some(INVALID_REASON));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.metadata.namespace.as_deref(), Some(MESHD_NAMESPACE));
    let regarding = event.regarding.clone().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.name.as_deref(), Some("meshd-abcde"));
    assert_eq!(event.reporting_instance.as_deref(), Some("n1"));
    let note = event.note.clone().unwrap();
    assert!(
        note.contains("\"mtu\"") && note.contains("\"jumbo\""),
        "{note}"
    );
    assert_eq!(
        rx.borrow().as_ref().unwrap().encryption,
        Encryption::Permissive
    );

    // Fixed: applied live.
    c.put_configmap(
        CONFIG_MAP_NAME,
        &[("encryption", "disabled"), ("mtu", "auto")],
    )
    .await;
    let s = tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.encryption == Encryption::Disabled)
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(s.mtu, None);
    assert_eq!(
        c.events().await.len(),
        1,
        "one Event per rejected configuration"
    );
    c.assert_nothing_forbidden();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_condition_follows_meshds_status_and_keeps_the_kubelets_conditions() {
    let c = cluster(1).await;
    // The kubelet's condition, as it writes it.
    c.nodes()
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})),
        )
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(None);
    let task = meshd::registry::kube::node_condition::spawn(c.meshd.clone(), "n1".into(), rx);
    let wait_for = |reason: &'static str| {
        let c = &c;
        async move {
            eventually(&format!("MeshdEncrypted with reason {reason}"), || async {
                let all = c.conditions().await;
                all.iter()
                    .any(|x| x.type_ == "MeshdEncrypted" && x.reason.as_deref() == Some(reason))
                    .then_some(all)
            })
            .await
        }
    };
    let mut s = status_report();
    tx.send(Some(s.clone())).unwrap();
    let all = wait_for("Encrypted").await;
    let mine = all.iter().find(|x| x.type_ == "MeshdEncrypted").unwrap();
    assert_eq!(mine.status, "True");
    assert!(
        all.iter().any(|x| x.type_ == "Ready"),
        "kubelet's condition kept: {all:?}"
    );
    s.encryption = Encryption::Permissive;
    tx.send(Some(s)).unwrap();
    let all = wait_for("EncryptionPermissive").await;
    assert_eq!(
        all.iter().filter(|x| x.type_ == "MeshdEncrypted").count(),
        1,
        "merged by type, not appended: {all:?}"
    );
    assert!(all.iter().any(|x| x.type_ == "Ready"));
    task.abort();
    c.assert_nothing_forbidden();
}
