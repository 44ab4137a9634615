//! meshd's settings watcher (with its last good settings), Node condition and RecordRefused
//! Events against a real kube-apiserver (v1.20.2, `integration::kube_apiserver`), meshd
//! authenticated as its service account under exactly `deploy/`'s RBAC: moved here from the
//! mock (kube.rs), since the real server produces all of it. The admin changes the ConfigMap,
//! the kubelet's conditions and the Nodes.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_settings_outlive_a_restart_into_an_invalid_configmap() {
    use meshd::settings;

    let c = cluster(1).await;
    let state = tempfile::tempdir().unwrap();
    let flags = Settings::default();
    let watcher = |fallback: Settings| {
        let pod = pod_reference(MESHD_NAMESPACE, "meshd-abcde", None);
        WatcherConfig {
            max_backoff: Duration::from_millis(500),
            fallback,
            state_dir: Some(state.path().to_path_buf()),
            ..WatcherConfig::new(MESHD_NAMESPACE, pod, "n1")
        }
    };
    let first = |rx: &tokio::sync::watch::Receiver<Option<Settings>>| rx.borrow().clone();

    // A valid ConfigMap: applied, and saved as the last good settings.
    c.put_configmap(
        CONFIG_MAP_NAME,
        &[("encryption", "permissive"), ("mtu", "1400")],
    )
    .await;
    let good = Settings {
        encryption: Encryption::Permissive,
        mtu: Some(1400),
        ..Settings::default()
    };
    let start = settings::fallback(settings::load_last_good(state.path()), flags.clone());
    assert_eq!(start, flags, "no file yet: the flags");
    let mut rx = spawn_watcher(c.meshd.clone(), watcher(start));
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.as_ref() == Some(&good)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        settings::load_last_good(state.path()).unwrap(),
        Some(good.clone())
    );
    drop(rx);

    // meshd restarts while the ConfigMap holds an invalid value: it starts from the last good
    // settings, not from the defaults.
    c.put_configmap(CONFIG_MAP_NAME, &[("encryption", "sometimes")])
        .await;
    let start = settings::fallback(settings::load_last_good(state.path()), flags.clone());
    let mut rx = spawn_watcher(c.meshd.clone(), watcher(start));
    tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();
    eventually("the InvalidConfiguration Event", || async {
        c.events().await.into_iter().next()
    })
    .await;
    assert_eq!(first(&rx), Some(good.clone()));
    assert_eq!(
        settings::load_last_good(state.path()).unwrap(),
        Some(good),
        "an invalid value is never saved"
    );
    drop(rx);

    // A corrupt file: a logged error, and the flags.
    std::fs::write(state.path().join(settings::LAST_GOOD_FILE), "{garbage").unwrap();
    let start = settings::fallback(settings::load_last_good(state.path()), flags.clone());
    let rx = spawn_watcher(c.meshd.clone(), watcher(start));
    let mut rx2 = rx.clone();
    tokio::time::timeout(WAIT, rx2.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first(&rx), Some(flags));
    c.assert_nothing_forbidden();
}

/// A hostile Node (its `spec.podCIDRs` the whole IPv4 space), read through the Kubernetes
/// registry and refused by record trust, yields one `RecordRefused` Event regarding it, however
/// many reconcile passes report the refusal; a refusal still in force after the window bumps
/// that Event's count (a patch, no second Event); the real authorizer allows every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_node_yields_one_record_refused_event() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use keyexchange::trust::{admit, Established, TrustPolicy};
    use keyexchange::{NodeRecord, PublicKey};
    use meshd::control::RefusalReport;
    use meshd::registry::kube::refusal_events::{self, Limits};
    use meshd::registry::{Registry, RegistryEvent};
    use std::collections::BTreeMap;

    let c = cluster(2).await;
    c.registry("n2").publish(&c.record(2).await).await.unwrap();
    c.create_node("evil", &["198.18.0.66"], &["0.0.0.0/0"])
        .await;
    let evil = NodeRecord {
        name: "evil".into(),
        public_key: PublicKey::from_bytes([66; 32]),
        listen_port: 51820,
        endpoints: vec!["198.18.0.66".parse().unwrap()],
        pod_cidrs: vec!["0.0.0.0/0".parse().unwrap()],
        rotation: Default::default(),
    };
    c.registry("evil").publish(&evil).await.unwrap();

    // What n1's meshd reads and decides.
    let mut rx = c.registry("n1").watch().unwrap();
    let records: BTreeMap<String, NodeRecord> = until_synced(&mut rx)
        .await
        .into_iter()
        .filter_map(|e| match e {
            RegistryEvent::Upsert(r) => Some((r.name.clone(), r)),
            _ => None,
        })
        .collect();
    assert_eq!(
        records.keys().map(String::as_str).collect::<Vec<_>>(),
        ["evil", "n2"]
    );
    let policy = TrustPolicy {
        cluster_pools: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/48".parse().unwrap(),
        ],
        service_ranges: vec![],
        node_subnets: vec![],
    };
    let me = c.record(1).await;
    let admission = admit(&records, &me, &policy, &Established::default());
    let refused: Vec<RefusalReport> = admission
        .refused
        .iter()
        .map(|r| RefusalReport {
            node: r.node.clone(),
            field: r.field.to_string(),
            reason: r.reason.clone(),
            holder: r.holder.clone(),
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(admission.accepted.contains_key("n2"));

    let mut status = status_report();
    status.refused = refused;
    let (tx, status_rx) = tokio::sync::watch::channel(Some(status.clone()));
    let window = Duration::from_millis(1500);
    let task = refusal_events::spawn_with(
        c.meshd.clone(),
        "n1".into(),
        status_rx,
        Limits {
            repeat_after: window,
            burst: 10,
            refill: Duration::from_millis(100),
        },
    );
    let default_events: Api<CoreEvent> = Api::namespaced(c.admin.clone(), "default");
    let refused_events = || async {
        default_events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("RecordRefused"))
            .collect::<Vec<_>>()
    };
    let event = eventually("the RecordRefused Event", || async {
        refused_events().await.into_iter().next()
    })
    .await;
    // Many passes within the window, each publishing the status with the refusal.
    for pass in 2..20 {
        status.counters.reconciles = pass;
        tx.send(Some(status.clone())).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = refused_events().await;
    assert_eq!(events.len(), 1, "one Event, not one per pass: {events:#?}");
    assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(event.involved_object.kind.as_deref(), Some("Node"));
    assert_eq!(event.involved_object.name.as_deref(), Some("evil"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.count, Some(1));
    let message = event.message.clone().unwrap();
    assert!(
        message.contains("field podCIDRs") && message.contains("0.0.0.0/0"),
        "{message}"
    );

    // Still refused after the window: the same Event, counted again.
    eventually("the Event's count grows after the window", || async {
        let events = refused_events().await;
        assert_eq!(events.len(), 1, "{events:#?}");
        (events[0].count == Some(2)).then_some(())
    })
    .await;
    task.abort();

    // meshd's Event requests: create and patch, each allowed by the real authorizer.
    let verbs: std::collections::BTreeSet<String> = c
        .k8s
        .meshd_requests()
        .into_iter()
        .filter(|r| r.request.resource == "events")
        .map(|r| r.request.verb)
        .collect();
    assert_eq!(
        verbs,
        ["create", "patch"].into_iter().map(String::from).collect()
    );
    c.assert_nothing_forbidden();
}
