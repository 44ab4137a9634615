//! The Kubernetes registry backend and the settings watcher against the mock API server
//! (`integration::apiserver`; no root, no cluster). Every registry is a real `KubeRegistry`
//! talking HTTP to the server through a kubeconfig, as meshd would out of cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use integration::apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Node;
use keyexchange::{NodeRecord, PublicKey};
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use kube::Client;
use meshd::registry::kube::annotations as kreg;
use meshd::registry::kube::client::client;
use meshd::registry::kube::endpoints::watch_api_server_endpoints;
use meshd::registry::kube::settings::{
    pod_reference, spawn_watcher, WatcherConfig, INVALID_REASON,
};
use meshd::registry::{KubeRegistry, Registry, RegistryEvent};
use meshd::settings::{self, Encryption, Settings};
use serde_json::json;
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    server: FakeApiServer,
    client: Client,
    _dir: tempfile::TempDir,
}

/// A server with nodes n1..=n`count` (dual-stack InternalIPs, pod CIDRs) and a client built
/// from a kubeconfig file pointing at it.
async fn cluster(count: u8) -> Cluster {
    let server = FakeApiServer::start().await.unwrap();
    for i in 1..=count {
        server.create_node(
            &format!("n{i}"),
            &[
                &format!("198.18.0.{}", 10 + i),
                &format!("fd00:198::{}", 10 + i),
            ],
            &[&format!("10.244.{i}.0/24"), &format!("fd00:244:0:{i}::/64")],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let client = client(Some(&path)).await.unwrap();
    Cluster {
        server,
        client,
        _dir: dir,
    }
}

impl Cluster {
    fn registry(&self, node: &str) -> KubeRegistry {
        KubeRegistry::new(self.client.clone(), node)
            .with_watch_backoff(Duration::from_millis(50), Duration::from_millis(500))
    }

    /// n`i`'s record with the key `[i; 32]`, endpoints and CIDRs from its Node.
    async fn record(&self, i: u8) -> NodeRecord {
        let name = format!("n{i}");
        let addressing = self.registry(&name).node_addressing().await.unwrap();
        NodeRecord {
            name,
            public_key: PublicKey::from_bytes([i; 32]),
            listen_port: 51820,
            endpoints: addressing.endpoints,
            pod_cidrs: addressing.pod_cidrs,
            rotation: Default::default(),
        }
    }
}

async fn next(rx: &mut Receiver<RegistryEvent>) -> RegistryEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a registry event")
        .expect("registry watch closed")
}

/// Events up to and including the next `Synced`.
async fn until_synced(rx: &mut Receiver<RegistryEvent>) -> Vec<RegistryEvent> {
    let mut events = Vec::new();
    loop {
        let e = next(rx).await;
        let done = matches!(e, RegistryEvent::Synced);
        events.push(e);
        if done {
            return events;
        }
    }
}

/// Asserts nothing arrives within a short window (absence cannot be awaited).
async fn assert_quiet(rx: &mut Receiver<RegistryEvent>) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(700), rx.recv()).await {
        panic!("unexpected registry event {e:?}");
    }
}

fn annotations(server: &FakeApiServer, node: &str) -> serde_json::Map<String, serde_json::Value> {
    server.node(node).unwrap()["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn publish_reaches_every_watcher_with_node_addressing() {
    let c = cluster(3).await;
    let mut watchers = Vec::new();
    for i in 1..=3 {
        let mut rx = c.registry(&format!("n{i}")).watch().unwrap();
        // No node carries meshd's annotations yet: nobody is a peer.
        assert!(matches!(
            &until_synced(&mut rx).await[..],
            [RegistryEvent::Synced]
        ));
        watchers.push(rx);
    }
    let record = c.record(1).await;
    assert_eq!(
        record.endpoints,
        vec![
            "198.18.0.11".parse::<std::net::IpAddr>().unwrap(),
            "fd00:198::11".parse().unwrap()
        ]
    );
    assert_eq!(
        record.pod_cidrs,
        vec![
            "10.244.1.0/24".parse::<ipnet::IpNet>().unwrap(),
            "fd00:244:0:1::/64".parse().unwrap()
        ]
    );
    c.registry("n1").publish(&record).await.unwrap();
    for rx in &mut watchers {
        match next(rx).await {
            RegistryEvent::Upsert(r) => assert_eq!(r, record),
            other => panic!("expected Upsert of n1, got {other:?}"),
        }
    }
    let ann = annotations(&c.server, "n1");
    assert_eq!(
        ann[kreg::PUBLIC_KEY_ANNOTATION],
        json!(record.public_key.to_string())
    );
    assert_eq!(ann[kreg::LISTEN_PORT_ANNOTATION], json!("51820"));
    assert_eq!(ann[kreg::RECORD_VERSION_ANNOTATION], json!("1"));

    // A watcher started later gets the current state, then Synced.
    let mut late = c.registry("n2").watch().unwrap();
    let events = until_synced(&mut late).await;
    assert!(
        matches!(&events[..], [RegistryEvent::Upsert(r), RegistryEvent::Synced] if *r == record),
        "{events:?}"
    );
}

#[tokio::test]
async fn republishing_the_same_record_writes_nothing() {
    let c = cluster(1).await;
    let reg = c.registry("n1");
    let mut rx = reg.watch().unwrap();
    until_synced(&mut rx).await;
    let record = c.record(1).await;
    reg.publish(&record).await.unwrap();
    assert!(matches!(next(&mut rx).await, RegistryEvent::Upsert(_)));
    assert_eq!(c.server.write_requests("n1"), 1);
    let rv = c.server.resource_version();
    for _ in 0..5 {
        reg.publish(&record).await.unwrap();
    }
    assert_eq!(
        c.server.write_requests("n1"),
        1,
        "steady state must not write"
    );
    assert_eq!(c.server.resource_version(), rv);
    // A new meshd on the same node (restart) with the same key does not write either.
    c.registry("n1").publish(&record).await.unwrap();
    assert_eq!(c.server.write_requests("n1"), 1);
    assert_quiet(&mut rx).await;

    // A real change is one write and one Upsert.
    let mut changed = record.clone();
    changed.listen_port = 51821;
    reg.publish(&changed).await.unwrap();
    assert_eq!(c.server.write_requests("n1"), 2);
    match next(&mut rx).await {
        RegistryEvent::Upsert(r) => assert_eq!(r, changed),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn writes_touch_only_meshds_annotation_keys() {
    let c = cluster(1).await;
    c.server.modify_node("n1", |n| {
        n["metadata"]["annotations"] = json!({
            "node.alpha.kubernetes.io/ttl": "0",
            "meshd.io/unrelated-future-key": "kept",
        });
        n["metadata"]["labels"]["team"] = json!("blue");
    });
    let reg = c.registry("n1");
    let mut rx = reg.watch().unwrap();
    until_synced(&mut rx).await;
    let record = c.record(1).await;
    reg.publish(&record).await.unwrap();
    assert!(matches!(next(&mut rx).await, RegistryEvent::Upsert(_)));
    let ann = annotations(&c.server, "n1");
    assert_eq!(ann["node.alpha.kubernetes.io/ttl"], json!("0"));
    assert_eq!(ann["meshd.io/unrelated-future-key"], json!("kept"));
    assert_eq!(
        ann.len(),
        2 + 4,
        "two foreign keys and meshd's four: {ann:?}"
    );

    reg.withdraw("n1").await.unwrap();
    assert!(matches!(next(&mut rx).await, RegistryEvent::Delete(n) if n == "n1"));
    let ann = annotations(&c.server, "n1");
    assert_eq!(
        ann.keys().collect::<Vec<_>>(),
        vec![
            "meshd.io/unrelated-future-key",
            "node.alpha.kubernetes.io/ttl"
        ]
    );
    let node = c.server.node("n1").unwrap();
    assert_eq!(node["metadata"]["labels"]["team"], json!("blue"));
    assert_eq!(
        node["spec"]["podCIDRs"],
        json!(["10.244.1.0/24", "fd00:244:0:1::/64"])
    );
    // Withdrawing again writes nothing; withdrawing a node that does not exist is Ok.
    let writes = c.server.write_requests("n1");
    reg.withdraw("n1").await.unwrap();
    reg.withdraw("gone").await.unwrap();
    assert_eq!(c.server.write_requests("n1"), writes);
}

#[tokio::test]
async fn conflicting_concurrent_writer_is_retried() {
    let c = cluster(1).await;
    // Another writer (say the kubelet) updates the Node right after meshd read it.
    c.server.interfere_after_get("n1", |n| {
        n["metadata"]["labels"]["written-concurrently"] = json!("yes");
    });
    let record = c.record(1).await; // this GET consumes the interference…
    c.server.interfere_after_get("n1", |n| {
        n["metadata"]["labels"]["written-concurrently"] = json!("again");
    }); // …so queue one for publish's own read.
    c.registry("n1").publish(&record).await.unwrap();
    assert_eq!(
        c.server.conflicts(),
        1,
        "the first patch carried a stale resourceVersion"
    );
    assert_eq!(
        c.server.write_requests("n1"),
        2,
        "one conflicting patch, one retry"
    );
    let node = c.server.node("n1").unwrap();
    assert_eq!(
        node["metadata"]["labels"]["written-concurrently"],
        json!("again")
    );
    assert_eq!(
        node["metadata"]["annotations"][kreg::PUBLIC_KEY_ANNOTATION],
        json!(record.public_key.to_string())
    );
}

#[tokio::test]
async fn deleted_node_is_deleted_and_non_peers_are_absent() {
    let c = cluster(3).await;
    for i in [1, 2] {
        let r = c.record(i).await;
        c.registry(&r.name).publish(&r).await.unwrap();
    }
    // n2 is opted out by label; n3 never got meshd.
    c.server.modify_node("n2", |n| {
        n["metadata"]["labels"][kreg::EXCLUDE_LABEL] = json!("true");
    });
    let mut rx = c.registry("n1").watch().unwrap();
    let events = until_synced(&mut rx).await;
    assert!(
        matches!(&events[..], [RegistryEvent::Upsert(r), RegistryEvent::Synced] if r.name == "n1"),
        "{events:?}"
    );
    // Unrelated annotation on n3: still not a peer.
    c.server.modify_node("n3", |n| {
        n["metadata"]["annotations"] = json!({"example.com/x": "1"});
    });
    assert_quiet(&mut rx).await;
    // Opting n2 back in makes it a peer; opting out again removes it.
    c.server.modify_node("n2", |n| {
        n["metadata"]["labels"][kreg::EXCLUDE_LABEL] = json!("false");
    });
    assert!(matches!(next(&mut rx).await, RegistryEvent::Upsert(r) if r.name == "n2"));
    c.server.modify_node("n2", |n| {
        n["metadata"]["labels"][kreg::EXCLUDE_LABEL] = json!("true");
    });
    assert!(matches!(next(&mut rx).await, RegistryEvent::Delete(n) if n == "n2"));
    // The Node object goes away.
    assert!(c.server.delete_node("n1"));
    assert!(matches!(next(&mut rx).await, RegistryEvent::Delete(n) if n == "n1"));
}

#[tokio::test]
async fn malformed_annotation_names_the_field() {
    let c = cluster(1).await;
    let record = c.record(1).await;
    c.registry("n1").publish(&record).await.unwrap();
    let mut rx = c.registry("n1").watch().unwrap();
    until_synced(&mut rx).await;
    c.server.modify_node("n1", |n| {
        n["metadata"]["annotations"][kreg::LISTEN_PORT_ANNOTATION] = json!("not-a-port");
    });
    match next(&mut rx).await {
        RegistryEvent::Malformed { node, error } => {
            assert_eq!(node, "n1");
            assert_eq!(error.field, kreg::LISTEN_PORT_ANNOTATION);
            assert!(error.to_string().contains("not-a-port"), "{error}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    // meshd's next publish repairs it.
    c.registry("n1").publish(&record).await.unwrap();
    assert!(matches!(next(&mut rx).await, RegistryEvent::Upsert(r) if r == record));
}

#[tokio::test]
async fn api_server_restart_relists_without_duplicates() {
    let mut c = cluster(3).await;
    let mut records = Vec::new();
    for i in 1..=3 {
        let r = c.record(i).await;
        c.registry(&r.name).publish(&r).await.unwrap();
        records.push(r);
    }
    let mut rx = c.registry("n1").watch().unwrap();
    let events = until_synced(&mut rx).await;
    assert_eq!(events.len(), 4, "{events:?}");

    c.server.stop().await;
    // During the outage: n3 is deleted, n2 gets an unrelated change, n4 appears with meshd.
    assert!(c.server.delete_node("n3"));
    c.server.modify_node("n2", |n| {
        n["metadata"]["labels"]["touched"] = json!("during-outage");
    });
    c.server
        .create_node("n4", &["198.18.0.14"], &["10.244.4.0/24"]);
    let key4 = PublicKey::from_bytes([4; 32]).to_string();
    c.server.modify_node("n4", |n| {
        n["metadata"]["annotations"] = json!({
            kreg::PUBLIC_KEY_ANNOTATION: key4,
            kreg::LISTEN_PORT_ANNOTATION: "51820",
            kreg::RECORD_VERSION_ANNOTATION: "1",
        });
    });
    c.server.start_again().await.unwrap();

    // The watch cannot resume (410: history lost), so the watcher re-lists: the change is a
    // Delete of n3 and an Upsert of n4, nothing for the unchanged n1 and n2, then Synced.
    let mut events = until_synced(&mut rx).await;
    let synced = events.pop();
    assert!(matches!(synced, Some(RegistryEvent::Synced)));
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for e in events {
        match e {
            RegistryEvent::Upsert(r) => upserts.push(r.name),
            RegistryEvent::Delete(n) => deletes.push(n),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(upserts, vec!["n4"]);
    assert_eq!(deletes, vec!["n3"]);

    // Watching goes on after the re-list.
    assert!(c.server.delete_node("n2"));
    assert!(matches!(next(&mut rx).await, RegistryEvent::Delete(n) if n == "n2"));
}

#[tokio::test]
async fn mock_server_follows_api_semantics() {
    let mut c = cluster(1).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node = nodes.get("n1").await.unwrap();
    let stale = node.metadata.resource_version.clone().unwrap();
    let params = PatchParams::default();

    // A merge patch without resourceVersion applies; one carrying a stale one is a 409.
    nodes
        .patch(
            "n1",
            &params,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "1"}}})),
        )
        .await
        .unwrap();
    let err = nodes
        .patch(
            "n1",
            &params,
            &Patch::Merge(json!({"metadata": {"resourceVersion": stale, "labels": {"a": "2"}}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.is_conflict()),
        "{err:?}"
    );

    // A no-op patch does not bump the resourceVersion.
    let rv = c.server.resource_version();
    nodes
        .patch(
            "n1",
            &params,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(c.server.resource_version(), rv);

    // Strategic merge patch of annotations.
    nodes
        .patch(
            "n1",
            &params,
            &Patch::Strategic(json!({"metadata": {"annotations": {"s": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(annotations(&c.server, "n1")["s"], json!("1"));

    // podCIDRs are immutable once set.
    let err = nodes
        .patch(
            "n1",
            &params,
            &Patch::Merge(json!({"spec": {"podCIDRs": ["10.9.0.0/24"]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );

    // A watch from a resourceVersion older than the history (after a restart) gets a 410
    // ERROR event; a current one gets the changes, and bookmarks when asked.
    let old = c.server.resource_version();
    c.server
        .modify_node("n1", |n| n["metadata"]["labels"]["b"] = json!("1"));
    c.server.restart().await.unwrap();
    let mut stream = nodes
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    let current = c.server.resource_version();
    let mut stream = nodes
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            },
            &current.to_string(),
        )
        .await
        .unwrap()
        .boxed();
    c.server
        .modify_node("n1", |n| n["metadata"]["labels"]["c"] = json!("1"));
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Modified(n))) => {
            assert_eq!(n.metadata.labels.unwrap()["c"], "1");
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_eq!(
                b.metadata.resource_version,
                c.server.resource_version().to_string()
            );
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
}

#[tokio::test]
async fn settings_follow_the_configmap_and_reject_invalid_values() {
    let c = cluster(1).await;
    let pod = pod_reference("meshd-system", "meshd-abcde", None);
    let config = WatcherConfig {
        max_backoff: Duration::from_millis(500),
        ..WatcherConfig::new("meshd-system", pod, "n1")
    };
    let mut rx = spawn_watcher(c.client.clone(), config);
    // No ConfigMap: the defaults, once listed.
    let first = tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(first, Some(Settings::default()));

    c.server.put_configmap(
        "meshd-system",
        settings::CONFIG_MAP_NAME,
        &[("encryption", "permissive"), ("mtu", "1400")],
    );
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
    c.server
        .put_configmap("meshd-system", "other", &[("encryption", "disabled")]);

    // An invalid value: rejected, an Event names key and value, the last good value stays.
    c.server.put_configmap(
        "meshd-system",
        settings::CONFIG_MAP_NAME,
        &[("encryption", "disabled"), ("mtu", "jumbo")],
    );
    let event = wait_for_event(&c.server).await;
    assert_eq!(event["reason"], json!(INVALID_REASON));
    assert_eq!(event["type"], json!("Warning"));
    assert_eq!(event["metadata"]["namespace"], json!("meshd-system"));
    assert_eq!(event["regarding"]["kind"], json!("Pod"));
    assert_eq!(event["regarding"]["name"], json!("meshd-abcde"));
    assert_eq!(event["reportingInstance"], json!("n1"));
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("\"mtu\"") && note.contains("\"jumbo\""),
        "{note}"
    );
    assert_eq!(
        rx.borrow().as_ref().unwrap().encryption,
        Encryption::Permissive
    );

    // Fixed: applied live.
    c.server.put_configmap(
        "meshd-system",
        settings::CONFIG_MAP_NAME,
        &[("encryption", "disabled"), ("mtu", "auto")],
    );
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
        c.server.events().len(),
        1,
        "one Event per rejected configuration"
    );
}

/// Polls the server's Event store (Events are written by the watcher task asynchronously and
/// the store offers no notification).
async fn wait_for_event(server: &FakeApiServer) -> serde_json::Value {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(e) = server.events().into_iter().next() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no Event recorded")
}

#[tokio::test]
async fn the_node_condition_follows_meshds_status_and_keeps_the_kubelets_conditions() {
    let c = cluster(1).await;
    c.server.modify_node("n1", |n| {
        n["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    });
    let (tx, rx) = tokio::sync::watch::channel(None);
    let task = meshd::registry::kube::node_condition::spawn(c.client.clone(), "n1".into(), rx);
    let conditions = |server: &FakeApiServer| {
        server.node("n1").unwrap()["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let wait_for = |reason: &'static str| {
        let server = &c.server;
        async move {
            for _ in 0..200 {
                let all = conditions(server);
                if all
                    .iter()
                    .any(|x| x["type"] == "MeshdEncrypted" && x["reason"] == reason)
                {
                    return all;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!(
                "no MeshdEncrypted condition with reason {reason}: {:?}",
                conditions(server)
            );
        }
    };
    let mut s: meshd::control::StatusReport = serde_json::from_value(json!({
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
    .unwrap();
    tx.send(Some(s.clone())).unwrap();
    let all = wait_for("Encrypted").await;
    let mine = all.iter().find(|x| x["type"] == "MeshdEncrypted").unwrap();
    assert_eq!(mine["status"], "True");
    assert!(
        all.iter().any(|x| x["type"] == "Ready"),
        "kubelet's condition kept: {all:?}"
    );
    s.encryption = Encryption::Permissive;
    tx.send(Some(s)).unwrap();
    let all = wait_for("EncryptionPermissive").await;
    assert_eq!(
        all.iter().filter(|x| x["type"] == "MeshdEncrypted").count(),
        1,
        "merged by type, not appended: {all:?}"
    );
    assert!(all.iter().any(|x| x["type"] == "Ready"));
    task.abort();
}

#[tokio::test]
async fn the_api_servers_endpoints_follow_the_kubernetes_endpointslice() {
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use integration::apiserver::{ObjectKey, Resource};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::PostParams;

    let c = cluster(1).await;
    let ips = |v: &[&str]| -> BTreeSet<IpAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
    // Decoys: another Service's slice in `default`, and a `kubernetes` slice elsewhere.
    for (ns, name, service, address) in [
        ("default", "web-abcde", "web", "10.244.1.7"),
        ("kube-system", "kubernetes", "kubernetes", "10.244.1.8"),
    ] {
        c.server.lock().harness_write(
            &ObjectKey::namespaced(Resource::EndpointSlices, ns, name),
            |_| {
                Some(json!({
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [address]}],
                }))
            },
        );
    }
    c.server
        .put_kubernetes_endpoints(&["198.18.0.11".parse().unwrap()], 6443);

    let mut rx = watch_api_server_endpoints(c.client.clone());
    let first = tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(first, Some(ips(&["198.18.0.11"])));

    // The control plane moves: the watch follows.
    c.server.put_kubernetes_endpoints(
        &[
            "198.18.0.12".parse().unwrap(),
            "198.18.0.13".parse().unwrap(),
        ],
        6443,
    );
    let want = Some(ips(&["198.18.0.12", "198.18.0.13"]));
    tokio::time::timeout(WAIT, rx.wait_for(|v| *v == want))
        .await
        .unwrap()
        .unwrap();
    // The slice vanishes (it should not): the last addresses stay excluded.
    c.server.lock().harness_write(
        &ObjectKey::namespaced(Resource::EndpointSlices, "default", "kubernetes"),
        |_| None,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*rx.borrow(), want);

    // Only list and watch of that one slice: what RBAC's resourceNames can grant.
    let asked: BTreeSet<(String, Option<String>, Option<String>)> = c
        .server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "endpointslices")
        .map(|r| (r.verb, r.namespace, r.name))
        .collect();
    let named = |verb: &str| {
        (
            verb.to_string(),
            Some("default".to_string()),
            Some("kubernetes".to_string()),
        )
    };
    assert_eq!(asked, BTreeSet::from([named("list"), named("watch")]));

    // The server validates EndpointSlices as the API does.
    let api: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let bad: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["fd00::1"]}],
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );
    let good: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "good"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}],
    }))
    .unwrap();
    api.create(&PostParams::default(), &good).await.unwrap();
    let err = api
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"addressType": "IPv6"})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "addressType is immutable: {err}"
    );
}

#[tokio::test]
async fn the_last_good_settings_outlive_a_restart_into_an_invalid_configmap() {
    let c = cluster(1).await;
    let state = tempfile::tempdir().unwrap();
    let flags = Settings::default();
    let watcher = |fallback: Settings| {
        let pod = pod_reference("meshd-system", "meshd-abcde", None);
        WatcherConfig {
            max_backoff: Duration::from_millis(500),
            fallback,
            state_dir: Some(state.path().to_path_buf()),
            ..WatcherConfig::new("meshd-system", pod, "n1")
        }
    };
    let first = |rx: &tokio::sync::watch::Receiver<Option<Settings>>| rx.borrow().clone();

    // A valid ConfigMap: applied, and saved as the last good settings.
    c.server.put_configmap(
        "meshd-system",
        settings::CONFIG_MAP_NAME,
        &[("encryption", "permissive"), ("mtu", "1400")],
    );
    let good = Settings {
        encryption: Encryption::Permissive,
        mtu: Some(1400),
        ..Settings::default()
    };
    let start = settings::fallback(settings::load_last_good(state.path()), flags.clone());
    assert_eq!(start, flags, "no file yet: the flags");
    let mut rx = spawn_watcher(c.client.clone(), watcher(start));
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
    c.server.put_configmap(
        "meshd-system",
        settings::CONFIG_MAP_NAME,
        &[("encryption", "sometimes")],
    );
    let start = settings::fallback(settings::load_last_good(state.path()), flags.clone());
    let mut rx = spawn_watcher(c.client.clone(), watcher(start));
    tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();
    wait_for_event(&c.server).await;
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
    let rx = spawn_watcher(c.client.clone(), watcher(start));
    let mut rx2 = rx.clone();
    tokio::time::timeout(WAIT, rx2.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first(&rx), Some(flags));
}

/// A hostile Node (its `spec.podCIDRs` the whole IPv4 space), read through the Kubernetes
/// registry and refused by record trust, yields one `RecordRefused` Event regarding it, however
/// many reconcile passes report the refusal; a refusal still in force after the window bumps
/// that Event's count (a patch, no second Event); every request is one RBAC grants.
#[tokio::test]
async fn a_hostile_node_yields_one_record_refused_event() {
    use keyexchange::trust::{admit, Established, TrustPolicy};
    use meshd::control::{RefusalReport, StatusReport};
    use meshd::registry::kube::refusal_events::{self, Limits};
    use std::collections::BTreeMap;

    let c = cluster(2).await;
    c.registry("n2").publish(&c.record(2).await).await.unwrap();
    c.server
        .create_node("evil", &["198.18.0.66"], &["0.0.0.0/0"]);
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

    let mut status: StatusReport = serde_json::from_value(json!({
        "node": "n1", "public_key": "k", "mode": "kernel", "interface": "meshd0",
        "ifindex": 3, "adopted_device": false, "listen_port": 51820, "mtu": 1420,
        "endpoints": [], "pod_cidrs": [], "known_nodes": [], "peers": [], "conflicts": [],
        "malformed": [], "counters": {"malformed_records": 0, "reconciles": 1,
        "reconcile_errors": 0, "peer_ops": 0, "route_ops": 0}, "converged": true,
        "encryption": "enabled", "strict_mode": true
    }))
    .unwrap();
    status.refused = refused;
    let (tx, status_rx) = tokio::sync::watch::channel(Some(status.clone()));
    let window = Duration::from_millis(1500);
    let task = refusal_events::spawn_with(
        c.client.clone(),
        "n1".into(),
        status_rx,
        Limits {
            repeat_after: window,
            burst: 10,
            refill: Duration::from_millis(100),
        },
    );
    let event = wait_for_event(&c.server).await;
    // Many passes within the window, each publishing the status with the refusal.
    for pass in 2..20 {
        status.counters.reconciles = pass;
        tx.send(Some(status.clone())).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = c.server.events();
    assert_eq!(events.len(), 1, "one Event, not one per pass: {events:#?}");
    assert_eq!(event["apiVersion"], "v1");
    assert_eq!(event["metadata"]["namespace"], "default");
    assert_eq!(event["involvedObject"]["kind"], "Node");
    assert_eq!(event["involvedObject"]["name"], "evil");
    assert_eq!(event["reason"], "RecordRefused");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["count"], 1);
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("field podCIDRs") && message.contains("0.0.0.0/0"),
        "{message}"
    );

    // Still refused after the window: the same Event, counted again.
    tokio::time::timeout(WAIT, async {
        loop {
            let events = c.server.events();
            assert_eq!(events.len(), 1, "{events:#?}");
            if events[0]["count"] == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the Event's count grows after the window");
    task.abort();

    let rbac = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/rbac.yaml"),
    )
    .unwrap();
    let grants = integration::rbac::Grants::from_yaml(&rbac, "meshd-system", "meshd").unwrap();
    let writes: Vec<_> = c
        .server
        .requests()
        .into_iter()
        .filter(|r| r.resource == "events")
        .collect();
    let verbs: std::collections::BTreeSet<&str> = writes.iter().map(|r| r.verb.as_str()).collect();
    assert_eq!(verbs, ["create", "patch"].into_iter().collect());
    for r in &writes {
        assert!(grants.allows(r), "RBAC denies {r:?}");
    }
}
