#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshd_policy::Compiler;

use super::*;
use crate::policy::objects::{ObjectCache, ObjectRef};

fn pod(node: &str, name: &str, ip: &str) -> Pod {
    Pod {
        key: PodKey::new("x", name),
        labels: [("app".to_owned(), name.to_owned())].into(),
        addresses: vec![ip.parse().unwrap()],
        node: node.into(),
        named_ports: BTreeMap::new(),
    }
}

fn lookup() -> PodCidrLookup {
    Box::new(|node| match node {
        "n1" => Some(vec!["10.244.1.0/24".parse().unwrap()]),
        "n2" => Some(vec!["10.244.2.0/24".parse().unwrap()]),
        "n3" => Some(vec!["10.244.3.0/24".parse().unwrap()]),
        _ => None,
    })
}

/// The stage of n1 feeding a cache and compiler, as the policy loop does.
struct Node {
    stage: PodIdentity,
    cache: ObjectCache,
    compiler: Compiler,
}

impl Node {
    fn new() -> Self {
        Self {
            stage: PodIdentity::new("n1", lookup()),
            cache: ObjectCache::default(),
            compiler: Compiler::new(),
        }
    }

    fn feed(&mut self, events: impl IntoIterator<Item = SourceEvent>) {
        for event in events {
            for event in self.stage.on_event(event) {
                for change in self.cache.apply(self.compiler.world(), event) {
                    self.compiler.apply(change);
                }
            }
        }
    }

    fn pods(&self) -> Vec<(String, String, Vec<std::net::IpAddr>)> {
        self.compiler
            .world()
            .pods
            .values()
            .map(|p| (p.key.to_string(), p.node.to_string(), p.addresses.clone()))
            .collect()
    }
}

fn own(event: ObjectEvent) -> SourceEvent {
    SourceEvent::Object(event)
}

fn batch(node: &str, pods: &[Pod]) -> SourceEvent {
    SourceEvent::Batch(BatchEvent::Upsert {
        node: node.into(),
        content: endpoint_batch::encode(node, pods).into_bytes(),
    })
}

fn listed(node: &mut Node, own_pods: Vec<Pod>, batches: Vec<SourceEvent>) {
    let mut events = vec![own(ObjectEvent::ListStart(Kind::Pod))];
    events.extend(
        own_pods
            .into_iter()
            .map(|p| own(ObjectEvent::Upsert(Object::Pod(p)))),
    );
    events.push(own(ObjectEvent::ListDone(Kind::Pod)));
    events.push(SourceEvent::Batch(BatchEvent::ListStart));
    events.extend(batches);
    events.push(SourceEvent::Batch(BatchEvent::ListDone));
    node.feed(events);
}

#[test]
fn own_pods_and_batches_make_the_world_and_the_pod_list_waits_for_both() {
    let mut n = Node::new();
    n.feed([
        own(ObjectEvent::ListStart(Kind::Pod)),
        own(ObjectEvent::Upsert(Object::Pod(pod(
            "n1",
            "a",
            "10.244.1.2",
        )))),
        // Another node's pod in the own watch (a source without a field selector): ignored.
        own(ObjectEvent::Upsert(Object::Pod(pod(
            "n2",
            "stray",
            "10.244.2.9",
        )))),
        SourceEvent::Batch(BatchEvent::ListStart),
        batch("n2", &[pod("n2", "b", "10.244.2.2")]),
        SourceEvent::Batch(BatchEvent::ListDone),
    ]);
    for kind in [Kind::Namespace, Kind::NetworkPolicy] {
        n.feed([
            own(ObjectEvent::ListStart(kind)),
            own(ObjectEvent::ListDone(kind)),
        ]);
    }
    assert!(!n.cache.synced(), "the own pods are not listed yet");
    assert_eq!(
        n.stage.due(),
        None,
        "nothing is published before the own list"
    );
    n.feed([own(ObjectEvent::ListDone(Kind::Pod))]);
    assert!(n.cache.synced());
    assert_eq!(
        n.pods(),
        [
            (
                "x/a".into(),
                "n1".into(),
                vec!["10.244.1.2".parse().unwrap()]
            ),
            (
                "x/b".into(),
                "n2".into(),
                vec!["10.244.2.2".parse().unwrap()]
            ),
        ]
    );
    // The own batch is due once, then not again while nothing changes.
    let content = n.stage.due().expect("due after the own list");
    assert!(
        content.contains("\"name\":\"a\"") && !content.contains("stray"),
        "{content}"
    );
    n.stage.written(content);
    assert_eq!(n.stage.due(), None);
    // An own pod changing the same way twice makes one new content.
    n.feed([own(ObjectEvent::Upsert(Object::Pod(pod(
        "n1",
        "c",
        "10.244.1.3",
    ))))]);
    n.feed([own(ObjectEvent::Upsert(Object::Pod(pod(
        "n1",
        "c",
        "10.244.1.3",
    ))))]);
    assert!(n.stage.due().unwrap().contains("\"name\":\"c\""));
}

#[test]
fn a_hostile_batch_claims_neither_foreign_addresses_nor_foreign_pods() {
    let mut n = Node::new();
    listed(
        &mut n,
        vec![pod("n1", "a", "10.244.1.2")],
        vec![batch("n2", &[pod("n2", "b", "10.244.2.2")])],
    );
    // n3 claims n1's address for a pod of its own, and n2's pod b under its own name.
    n.feed([batch(
        "n3",
        &[
            pod("n3", "evil", "10.244.1.2"),
            pod("n3", "b", "10.244.3.7"),
            pod("n3", "fine", "10.244.3.8"),
        ],
    )]);
    let world = n.compiler.world();
    assert!(world.pods[&PodKey::new("x", "evil")].addresses.is_empty());
    assert_eq!(world.pods[&PodKey::new("x", "b")].node, "n2");
    assert_eq!(
        world.pods[&PodKey::new("x", "b")].addresses,
        vec!["10.244.2.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(world.pods[&PodKey::new("x", "fine")].node, "n3");
    let refusals = &n.cache.batch_refusals()["n3"];
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[0].contains("10.244.1.2") && refusals[1].contains("held by node \"n2\""));
    // The address held by a1 stays a1's: nothing else in the world has it.
    assert_eq!(
        n.pods()
            .iter()
            .filter(|(_, _, a)| a.contains(&"10.244.1.2".parse().unwrap()))
            .count(),
        1
    );
    // When n2 lets go of b (the pod moved), n3's claim is taken up.
    n.feed([batch("n2", &[])]);
    assert_eq!(n.compiler.world().pods[&PodKey::new("x", "b")].node, "n3");
    // A batch that cannot be read keeps the last good version.
    n.feed([SourceEvent::Batch(BatchEvent::Upsert {
        node: "n3".into(),
        content: b"garbage".to_vec(),
    })]);
    assert_eq!(
        n.compiler.world().pods[&PodKey::new("x", "fine")].node,
        "n3"
    );
    assert!(n.cache.batch_refusals()["n3"][0].contains("not valid JSON"));
    // A batch removed takes its pods away.
    n.feed([SourceEvent::Batch(BatchEvent::Remove("n3".into()))]);
    assert!(n.pods().iter().all(|(_, node, _)| node != "n3"));
}

#[test]
fn a_batch_of_an_unknown_node_is_held_back_and_taken_up_later() {
    let known = std::sync::Arc::new(std::sync::Mutex::new(false));
    let flag = known.clone();
    let mut n = Node::new();
    n.stage = PodIdentity::new(
        "n1",
        Box::new(move |node| {
            (node == "n9" && *flag.lock().unwrap()).then(|| vec!["10.244.9.0/24".parse().unwrap()])
        }),
    );
    listed(
        &mut n,
        vec![],
        vec![batch("n9", &[pod("n9", "z", "10.244.9.2")])],
    );
    assert!(n.pods().is_empty());
    assert!(n.stage.holding_back());
    // The pod list waits for it (the loop writes nothing meanwhile).
    assert!(n.stage.list_waiting());
    assert!(n.stage.retry_held_back(false).is_empty(), "still unknown");
    *known.lock().unwrap() = true;
    let events = n.stage.retry_held_back(false);
    assert!(
        matches!(events.last(), Some(ObjectEvent::ListDone(Kind::Pod))),
        "{events:?}"
    );
    for event in events {
        for change in n.cache.apply(n.compiler.world(), event) {
            n.compiler.apply(change);
        }
    }
    assert_eq!(n.pods().len(), 1);
    assert!(!n.stage.holding_back());
    assert!(!n.stage.list_waiting());
    // Its record gone (its CIDRs free for another node): its pods are withdrawn, held back.
    *known.lock().unwrap() = false;
    n.feed([batch("n9", &[pod("n9", "z", "10.244.9.2")])]);
    assert!(n.pods().is_empty());
    assert!(n.cache.batch_refusals()["n9"][0].contains("no known record"));
    // A list that cannot wait any longer ends without it.
    n.feed([
        SourceEvent::Batch(BatchEvent::ListStart),
        batch("n9", &[pod("n9", "z", "10.244.9.2")]),
        SourceEvent::Batch(BatchEvent::ListDone),
    ]);
    assert!(n.stage.list_waiting());
    let events = n.stage.retry_held_back(true);
    assert!(
        matches!(events.last(), Some(ObjectEvent::ListDone(Kind::Pod))),
        "{events:?}"
    );
    assert!(n.stage.holding_back());
}

#[test]
fn a_relist_of_the_batches_removes_the_pods_of_vanished_nodes_and_keeps_the_own() {
    let mut n = Node::new();
    listed(
        &mut n,
        vec![pod("n1", "a", "10.244.1.2")],
        vec![
            batch("n2", &[pod("n2", "b", "10.244.2.2")]),
            batch("n3", &[pod("n3", "c", "10.244.3.2")]),
        ],
    );
    assert_eq!(n.pods().len(), 3);
    n.feed([
        SourceEvent::Batch(BatchEvent::ListStart),
        batch("n2", &[pod("n2", "b", "10.244.2.2")]),
        // This node's own batch in the watch is ignored: its own watch is the truth.
        batch("n1", &[]),
        SourceEvent::Batch(BatchEvent::ListDone),
    ]);
    let names: Vec<String> = n.pods().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(names, ["x/a", "x/b"]);
    // An own pod deleted.
    n.feed([own(ObjectEvent::Remove(ObjectRef::namespaced(
        Kind::Pod,
        "x",
        "a",
    )))]);
    let names: Vec<String> = n.pods().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(names, ["x/b"]);
}

#[tokio::test]
async fn a_burst_of_own_pods_costs_one_write() {
    let (raw_tx, raw_rx) = mpsc::channel(64);
    let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = writes.clone();
    let mut out = spawn(
        "n1",
        raw_rx,
        lookup(),
        Box::new(move |content| {
            log.lock().unwrap().push(content);
            Box::pin(async { Ok(()) })
        }),
    );
    raw_tx
        .send(own(ObjectEvent::ListStart(Kind::Pod)))
        .await
        .unwrap();
    raw_tx
        .send(own(ObjectEvent::ListDone(Kind::Pod)))
        .await
        .unwrap();
    for i in 0..30 {
        let ip = format!("10.244.1.{}", i + 2);
        raw_tx
            .send(own(ObjectEvent::Upsert(Object::Pod(pod(
                "n1",
                &format!("p{i}"),
                &ip,
            )))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    while out.try_recv().is_ok() {}
    let writes = writes.lock().unwrap();
    assert!(
        (1..=2).contains(&writes.len()),
        "{} writes for 30 pods",
        writes.len()
    );
    let last = endpoint_batch::decode(writes.last().unwrap().as_bytes(), "n1").unwrap();
    assert_eq!(last.pods.len(), 30);
}
