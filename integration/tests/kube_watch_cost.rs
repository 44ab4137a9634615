//! What watching Nodes costs an agent (issue 20, "watch cost"), against the mock API server:
//! the registry watches Nodes as `PartialObjectMetadata` and reads a peer Node in full only when
//! it first appears (or has no pod CIDRs yet), and a kubelet's status update of a realistic
//! Node costs a metadata watch a fraction of what it costs a full watch (measured on the wire).
//! No root, no cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use integration::apiserver::FakeApiServer;
use keyexchange::{NodeRecord, PrivateKey};
use meshd::registry::kube::client::client;
use meshd::registry::{KubeRegistry, Registry, RegistryEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(20);
const METADATA: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

async fn next(rx: &mut Receiver<RegistryEvent>) -> RegistryEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("registry event in time")
        .expect("watch open")
}

/// A Node as a kubelet keeps it on a busy cluster: labels, conditions, 40 images, capacity,
/// node info (about 10 KB of JSON), dual-stack, with meshd's annotations when `key` is given.
fn realistic_node(name: &str, i: u8, key: Option<&PrivateKey>) -> Value {
    let images: Vec<Value> = (0..40)
        .map(|k| {
            json!({"names": [
                format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", k * 7919 + 1),
                format!("registry.example.com/team-{k}/service-{k}:v1.{k}.0"),
            ], "sizeBytes": 50_000_000 + k * 1_000_003})
        })
        .collect();
    let conditions: Vec<Value> = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        .iter()
        .map(|t| {
            json!({"type": t, "status": if *t == "Ready" { "True" } else { "False" },
                "lastHeartbeatTime": "2026-12-06T07:00:00Z",
                "lastTransitionTime": "2026-12-01T00:00:00Z",
                "reason": format!("Kubelet{t}"), "message": format!("kubelet reports {t}")})
        })
        .collect();
    let mut annotations = json!({
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    });
    if let Some(key) = key {
        annotations["meshd.io/public-key"] = json!(key.public_key().to_string());
        annotations["meshd.io/listen-port"] = json!("51820");
        annotations["meshd.io/record-version"] = json!("1");
    }
    json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "annotations": annotations,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m5.xlarge",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": "eu-west-1a"}},
        "spec": {"podCIDR": format!("10.244.{i}.0/24"),
            "podCIDRs": [format!("10.244.{i}.0/24"), format!("fd00:244:0:{i}::/64")],
            "providerID": format!("aws:///eu-west-1a/i-{i:017x}")},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": format!("198.18.0.{i}")},
                {"type": "InternalIP", "address": format!("fd00:198::{i}")},
                {"type": "Hostname", "address": name}],
            "conditions": conditions,
            "images": images,
            "capacity": {"cpu": "4", "memory": "16077000Ki", "pods": "110",
                "ephemeral-storage": "101430960Ki", "hugepages-2Mi": "0"},
            "allocatable": {"cpu": "3920m", "memory": "15155000Ki", "pods": "110",
                "ephemeral-storage": "93478772582", "hugepages-2Mi": "0"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "bootID": "b", "containerRuntimeVersion":
                "containerd://1.7.0", "kernelVersion": "6.1.0", "kubeProxyVersion": "v1.31.0",
                "kubeletVersion": "v1.31.0", "machineID": "m", "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "systemUUID": "s"},
        },
    })
}

/// The kubelet's periodic status update: a new heartbeat time on every condition.
fn heartbeat(node: &mut Value, at: &str) {
    for c in node["status"]["conditions"].as_array_mut().unwrap() {
        c["lastHeartbeatTime"] = json!(at);
    }
}

/// Every byte a watch of all Nodes from `rv` receives over HTTP/1.1 in `seconds` (headers,
/// chunk framing and all), with `accept` as its `Accept` header.
fn watch_bytes(
    addr: SocketAddr,
    rv: u64,
    accept: &str,
    seconds: u32,
) -> tokio::task::JoinHandle<usize> {
    let accept = accept.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /api/v1/nodes?watch=1&resourceVersion={rv}&timeoutSeconds={seconds} HTTP/1.1\r\n\
             Host: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all.len()
    })
}

#[tokio::test]
async fn a_node_status_update_costs_a_metadata_watch_a_fraction_of_a_full_one() {
    let server = FakeApiServer::start().await.unwrap();
    let node = realistic_node("n7", 7, Some(&PrivateKey::generate()));
    let full_size = serde_json::to_vec(&node).unwrap().len();
    server.write_node("n7", |_| Some(node));
    let rv = server.resource_version();
    let addr = server.addr();
    // Empty watches first: what a watch costs with no change at all.
    let idle_full = watch_bytes(addr, rv, "application/json", 1);
    let idle_meta = watch_bytes(addr, rv, METADATA, 1);
    let (idle_full, idle_meta) = (idle_full.await.unwrap(), idle_meta.await.unwrap());
    let rv = server.resource_version();
    let full = watch_bytes(addr, rv, "application/json", 2);
    let meta = watch_bytes(addr, rv, METADATA, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.modify_node("n7", |n| heartbeat(n, "2026-12-06T07:00:10Z"));
    let full = full.await.unwrap() - idle_full;
    let meta = meta.await.unwrap() - idle_meta;
    println!(
        "one kubelet status update of a {full_size}-byte Node: full watch {full} bytes, \
         metadata watch {meta} bytes ({:.1} %)",
        meta as f64 * 100.0 / full as f64
    );
    assert!(
        full > full_size,
        "the full watch carries the whole Node: {full}"
    );
    assert!(meta * 5 < full, "metadata {meta} bytes against full {full}");
}

#[tokio::test]
async fn peers_are_read_in_full_once_and_status_updates_read_nothing() {
    let server = FakeApiServer::start().await.unwrap();
    let keys: Vec<PrivateKey> = (0..3).map(|_| PrivateKey::generate()).collect();
    for (i, key) in keys.iter().enumerate() {
        let i = i as u8 + 1;
        server.write_node(&format!("n{i}"), |_| {
            Some(realistic_node(&format!("n{i}"), i, Some(key)))
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let registry = KubeRegistry::new(client(Some(&path)).await.unwrap(), "n1");
    let mut rx = registry.watch().unwrap();
    let mut records: Vec<NodeRecord> = Vec::new();
    loop {
        match next(&mut rx).await {
            RegistryEvent::Upsert(r) => records.push(r),
            RegistryEvent::Synced => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[1].pod_cidrs,
        vec![
            "10.244.2.0/24".parse().unwrap(),
            "fd00:244:0:2::/64".parse().unwrap()
        ]
    );
    assert_eq!(
        records[1].endpoints,
        vec![
            "198.18.0.2".parse::<std::net::IpAddr>().unwrap(),
            "fd00:198::2".parse().unwrap()
        ]
    );
    let gets = |server: &FakeApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.resource == "nodes" && r.verb == "get")
            .count()
    };
    // The start read every Node with one list, not a get each.
    assert_eq!(gets(&server), 0, "{:?}", server.requests());

    // Kubelet heartbeats: nothing to announce, nothing read.
    for i in 1..=3 {
        server.modify_node(&format!("n{i}"), |n| heartbeat(n, "2026-12-06T07:00:10Z"));
    }
    // A node that joins later, before the node IPAM controller gave it pod CIDRs.
    let key4 = PrivateKey::generate();
    let mut n4 = realistic_node("n4", 4, Some(&key4));
    n4["spec"] = json!({});
    server.write_node("n4", |_| Some(n4));
    match next(&mut rx).await {
        RegistryEvent::Upsert(r) if r.name == "n4" => assert!(r.pod_cidrs.is_empty(), "{r:?}"),
        RegistryEvent::Malformed { node, .. } if node == "n4" => {}
        other => panic!("expected n4 without pod CIDRs, got {other:?}"),
    }
    server.modify_node("n4", |n| {
        n["spec"] = json!({"podCIDR": "10.244.4.0/24",
            "podCIDRs": ["10.244.4.0/24", "fd00:244:0:4::/64"]});
    });
    match next(&mut rx).await {
        RegistryEvent::Upsert(r) if r.name == "n4" => assert_eq!(r.pod_cidrs.len(), 2, "{r:?}"),
        other => panic!("expected n4 with its pod CIDRs, got {other:?}"),
    }
    // n4 was read when it appeared and once more for its pod CIDRs; heartbeats read nothing.
    assert_eq!(gets(&server), 2, "{:?}", server.requests());
    server.modify_node("n4", |n| heartbeat(n, "2026-12-06T07:00:20Z"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gets(&server), 2);
    assert!(rx.try_recv().is_err(), "a heartbeat announced something");
}
