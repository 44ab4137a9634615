//! The objects NetworkPolicy depends on (Pods, Namespaces, NetworkPolicies), watched from the
//! mock API server (`integration::apiserver`; no root, no cluster) by the Kubernetes
//! registry's `watch_policy_objects`, exactly as meshd watches them: listed, followed, and
//! listed again after an API server restart that lost its watch history, with what was deleted
//! meanwhile removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use integration::apiserver::{FakeApiServer, ObjectKey, Resource};
use meshd::policy::objects::{ObjectCache, ObjectEvent};
use meshd::registry::kube::client::client;
use meshd::registry::{KubeRegistry, Registry};
use meshd_policy::model::PodKey;
use meshd_policy::Compiler;
use serde_json::{json, Value};
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(20);

fn namespace(name: &str) -> (ObjectKey, Value) {
    (
        ObjectKey {
            resource: Resource::Namespaces,
            namespace: None,
            name: name.into(),
        },
        json!({"metadata": {"name": name, "labels": {"team": name}}}),
    )
}

fn pod(ns: &str, name: &str, ip: &str) -> (ObjectKey, Value) {
    (
        ObjectKey::namespaced(Resource::Pods, ns, name),
        json!({"metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x",
                "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
    )
}

fn policy(ns: &str, name: &str) -> (ObjectKey, Value) {
    (
        ObjectKey::namespaced(Resource::NetworkPolicies, ns, name),
        json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}],
                "ports": [{"port": "http"}]}]}}),
    )
}

/// The watched world: events folded through the same bookkeeping the policy loop uses.
struct Watched {
    rx: Receiver<ObjectEvent>,
    cache: ObjectCache,
    compiler: Compiler,
}

impl Watched {
    /// Folds events until `done` holds for the world.
    async fn until(&mut self, what: &str, done: impl Fn(&Watched) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            let event = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("object watch closed");
            for change in self.cache.apply(self.compiler.world(), event) {
                self.compiler.apply(change);
            }
        }
    }

    fn pods(&self) -> Vec<String> {
        self.compiler
            .world()
            .pods
            .keys()
            .map(ToString::to_string)
            .collect()
    }
}

#[tokio::test]
async fn pods_namespaces_and_policies_are_listed_followed_and_relisted_after_a_restart() {
    let mut server = FakeApiServer::start().await.unwrap();
    for (key, object) in [
        namespace("x"),
        namespace("y"),
        pod("x", "a", "10.244.1.2"),
        pod("y", "b", "10.244.1.3"),
        policy("x", "allow-http"),
    ] {
        server.put_object(&key, Some(object)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let registry = KubeRegistry::new(client(Some(&path)).await.unwrap(), "n1")
        .with_watch_backoff(Duration::from_millis(50), Duration::from_millis(500));
    assert_eq!(registry.policy_source(), "kubernetes");
    let mut w = Watched {
        rx: registry.watch_policy_objects("n1").unwrap(),
        cache: ObjectCache::default(),
        compiler: Compiler::new(),
    };
    w.until("every kind listed", |w| w.cache.synced()).await;
    let world = w.compiler.world();
    assert_eq!(w.pods(), ["x/a", "y/b"]);
    assert_eq!(world.namespaces["x"].labels["team"], "x");
    assert_eq!(
        world.namespaces["y"].labels["kubernetes.io/metadata.name"],
        "y"
    );
    assert_eq!(
        world.pods[&PodKey::new("x", "a")].named_ports["http"].number,
        80
    );
    assert_eq!(world.policies.len(), 1);

    // Followed: a relabel, a new pod, a deleted policy.
    let (key, mut a) = pod("x", "a", "10.244.1.2");
    a["metadata"]["labels"]["tier"] = json!("web");
    server.put_object(&key, Some(a));
    let (key, c) = pod("x", "c", "10.244.1.4");
    server.put_object(&key, Some(c));
    server.put_object(&policy("x", "allow-http").0, None);
    w.until("the changes", |w| {
        let world = w.compiler.world();
        world.policies.is_empty()
            && world.pods.len() == 3
            && world.pods[&PodKey::new("x", "a")]
                .labels
                .contains_key("tier")
    })
    .await;

    // A malformed object is refused alone, naming the object and field.
    let (key, mut bad) = pod("y", "bad", "10.244.1.9");
    bad["status"]["podIPs"] = json!([{"ip": "not-an-address"}]);
    server.put_object(&key, Some(bad));
    w.until("the refusal", |w| !w.cache.malformed().is_empty())
        .await;
    let (object, error) = w.cache.malformed().iter().next().unwrap();
    assert_eq!(object.to_string(), "Pod y/bad");
    assert!(error.contains("status.podIPs[0].ip"), "{error}");

    // Deleted while the API server is down (and its watch history lost on restart): the
    // relist removes them.
    server.stop().await;
    server.put_object(&pod("y", "b", "").0, None);
    server.put_object(&namespace("y").0, None);
    server.put_object(&policy("x", "new").0, Some(policy("x", "new").1));
    server.start_again().await.unwrap();
    w.until("the relist", |w| {
        let world = w.compiler.world();
        !world.pods.contains_key(&PodKey::new("y", "b"))
            && !world.namespaces.contains_key("y")
            && world.policies.len() == 1
    })
    .await;
    assert_eq!(w.pods(), ["x/a", "x/c"]);
}
