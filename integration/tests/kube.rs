//! The Kubernetes registry backend and the API servers' endpoints against the mock API server
//! (`integration::apiserver`; no root, no cluster). Every registry is a real `KubeRegistry`
//! talking HTTP to the server through a kubeconfig, as meshd would out of cluster. What the
//! real kube-apiserver can show runs in kube_real.rs (publish, no-op republish, only meshd's
//! keys written, opt-out, deletes, malformed annotations) and kube_real_watchers.rs (the
//! settings watcher and its last good settings, the Node condition, RecordRefused Events);
//! each test here says why it is still on the mock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/kube_registry.rs"]
mod kube_registry;

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
use meshd::registry::{KubeRegistry, Registry, RegistryEvent};
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
        let node = kube_registry::TestNode::numbered(i);
        server.create_node(&node.name, &node.ips(), &node.cidrs());
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
        kube_registry::registry(&self.client, node)
    }

    /// n`i`'s record with the key `[i; 32]`, endpoints and CIDRs from its Node.
    async fn record(&self, i: u8) -> NodeRecord {
        kube_registry::record(&self.client, i).await
    }
}

async fn next(rx: &mut Receiver<RegistryEvent>) -> RegistryEvent {
    kube_registry::next_event(rx, WAIT).await
}

/// Events up to and including the next `Synced`.
async fn until_synced(rx: &mut Receiver<RegistryEvent>) -> Vec<RegistryEvent> {
    kube_registry::events_until_synced(rx, WAIT).await
}

fn annotations(server: &FakeApiServer, node: &str) -> serde_json::Map<String, serde_json::Value> {
    server.node(node).unwrap()["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

// Mock: a write between meshd's GET and its PATCH, on demand (no hook on the real server).
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

// Mock: changes made while the server is down (the real 410 is kube_real.rs' compaction test).
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

// The mock's own semantics, which the tests that stay here rely on.
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

// Mock: discovery.k8s.io/v1, which v1.20 does not serve (kube_real.rs reads v1beta1), and decoys.
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
