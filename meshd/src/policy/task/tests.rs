#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::sync::{Arc, Mutex};

use meshd_cni::host_veth_name;
use meshd_policy::maps::{IsolationKey, IsolationValue, PolicyMaps};
use meshd_policy::model::{Namespace, Pod, PodKey};
use meshd_policy::{compile, EndpointId};

use super::*;
use crate::policy::objects::{Kind, Object, ObjectRef};
use crate::policy::report::PolicyReport;

type Live = Arc<Mutex<PolicyMaps>>;

fn live_maps(live: &Live) -> PolicyMaps {
    live.lock().unwrap().clone()
}

fn namespace(name: &str) -> Object {
    Object::Namespace(Namespace {
        name: name.into(),
        labels: [("kubernetes.io/metadata.name".to_owned(), name.to_owned())].into(),
    })
}

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Object {
    Object::Pod(Pod {
        key: PodKey::new(ns, name),
        labels: [("pod".to_owned(), name.to_owned())].into(),
        addresses: vec![ip.parse().unwrap()],
        node: node.into(),
        named_ports: BTreeMap::new(),
    })
}

/// Ingress to every pod of `ns` only from pods labelled `pod=b`, on TCP 80.
fn allow_b(ns: &str, name: &str) -> Object {
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {}, "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                "ports": [{"port": 80}]}]}
        }))
        .unwrap();
    Object::Policy(meshd_policy::k8s::policy_from_k8s(&policy).unwrap())
}

fn list(kind: Kind, objects: Vec<Object>) -> Vec<ObjectEvent> {
    let mut events = vec![ObjectEvent::ListStart(kind)];
    events.extend(objects.into_iter().map(ObjectEvent::Upsert));
    events.push(ObjectEvent::ListDone(kind));
    events
}

/// x/a (10.0.1.2) and x/c (10.0.1.4) on n1, x/b (10.0.2.2) on n2; this node is n1, whose
/// store owns a's and c's addresses; a's veth is ifindex 11, c's 13.
fn world_lists(policies: Vec<Object>) -> Vec<ObjectEvent> {
    let mut events = list(Kind::Namespace, vec![namespace("x")]);
    events.extend(list(
        Kind::Pod,
        vec![
            pod("x", "a", "n1", "10.0.1.2"),
            pod("x", "b", "n2", "10.0.2.2"),
            pod("x", "c", "n1", "10.0.1.4"),
        ],
    ));
    events.extend(list(Kind::NetworkPolicy, policies));
    events
}

fn store() -> StoreVeths {
    [
        ("10.0.1.2".parse().unwrap(), host_veth_name("ctr-a", "eth0")),
        ("10.0.1.4".parse().unwrap(), host_veth_name("ctr-c", "eth0")),
    ]
    .into()
}

fn lookup() -> IfindexLookup {
    let (a, c) = (
        host_veth_name("ctr-a", "eth0"),
        host_veth_name("ctr-c", "eth0"),
    );
    Box::new(move |name| {
        if name == a {
            Some(11)
        } else if name == c {
            Some(13)
        } else {
            None
        }
    })
}

fn new_loop(live: &Live) -> (PolicyLoop<Live>, SharedPolicyReport) {
    let report = SharedPolicyReport::default();
    (
        PolicyLoop::new("n1", live.clone(), lookup(), report.clone()),
        report,
    )
}

/// What a full compile of the loop's world and endpoints gives.
fn expected<W: PolicyMapWriter>(l: &PolicyLoop<W>) -> PolicyMaps {
    compile(l.compiler().world(), l.compiler().endpoints()).maps
}

fn report(report: &SharedPolicyReport) -> PolicyReport {
    report.lock().unwrap().clone()
}

#[test]
fn a_policy_applied_and_deleted_reaches_the_maps_as_the_full_compile_says() {
    let live = Live::default();
    let (mut l, shared) = new_loop(&live);
    assert!(!l.apply_batch(world_lists(Vec::new()), Some(store())));
    assert_eq!(
        l.compiler().endpoints(),
        &BTreeMap::from([
            (PodKey::new("x", "a"), EndpointId(11)),
            (PodKey::new("x", "c"), EndpointId(13)),
        ])
    );
    assert!(live_maps(&live).is_empty(), "no policy: every pod open");

    l.apply_batch(vec![ObjectEvent::Upsert(allow_b("x", "allow-b"))], None);
    let maps = live_maps(&live);
    assert!(!maps.is_empty());
    assert_eq!(maps, expected(&l));
    assert_eq!(maps.endpoints(), [EndpointId(11), EndpointId(13)].into());
    let r = report(&shared);
    assert!(r.synced);
    assert_eq!((r.policies, r.pods_known, r.local_endpoints), (1, 3, 2));
    assert_eq!(r.applies, 1);
    assert!(r.last_apply_ops > 0 && r.last_apply_micros.is_some());

    // b moves to another address: the peer entries follow.
    l.apply_batch(
        vec![ObjectEvent::Upsert(pod("x", "b", "n2", "10.0.2.9"))],
        None,
    );
    assert_eq!(live_maps(&live), expected(&l));

    l.apply_batch(
        vec![ObjectEvent::Remove(ObjectRef::namespaced(
            Kind::NetworkPolicy,
            "x",
            "allow-b",
        ))],
        None,
    );
    assert!(live_maps(&live).is_empty());
}

#[test]
fn nothing_is_written_before_every_kind_is_listed_and_stale_entries_go_at_sync() {
    // What a previous meshd left pinned: a's old entries, and entries of a veth long gone.
    let stale = IsolationKey {
        endpoint: 99,
        direction: 0,
        reserved: [0; 3],
    };
    let live = Live::default();
    live.lock()
        .unwrap()
        .isolation
        .insert(stale, IsolationValue { rules: 0 });
    let (mut l, shared) = new_loop(&live);
    let mut events = world_lists(vec![allow_b("x", "allow-b")]);
    let policies = events.split_off(events.len() - 3);
    l.apply_batch(events, Some(store()));
    assert!(!report(&shared).synced);
    assert_eq!(
        live_maps(&live)
            .isolation
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![stale],
        "the pinned maps stay as they were until the world is complete"
    );
    l.apply_batch(policies, None);
    assert!(report(&shared).synced);
    assert_eq!(live_maps(&live), expected(&l));
    assert!(!live_maps(&live).isolation.contains_key(&stale));
}

#[test]
fn a_malformed_policy_is_refused_alone_and_the_others_apply() {
    let live = Live::default();
    let (mut l, shared) = new_loop(&live);
    l.apply_batch(world_lists(Vec::new()), Some(store()));
    l.apply_batch(
        vec![
            ObjectEvent::Malformed {
                object: ObjectRef::namespaced(Kind::NetworkPolicy, "x", "bad"),
                error: "objects/networkpolicies/x/bad.json: not a valid NetworkPolicy object"
                    .into(),
            },
            ObjectEvent::Upsert(allow_b("x", "good")),
        ],
        None,
    );
    assert_eq!(live_maps(&live), expected(&l));
    assert!(!live_maps(&live).is_empty());
    let r = report(&shared);
    assert_eq!(r.policies, 1);
    assert_eq!(r.malformed_total, 1);
    assert_eq!(r.malformed.len(), 1);
    assert_eq!(r.malformed[0].object, "NetworkPolicy x/bad");
    assert!(r.malformed[0].error.contains("bad.json"));
}

#[test]
fn a_relist_after_a_disconnect_removes_what_was_deleted_meanwhile() {
    let live = Live::default();
    let (mut l, _) = new_loop(&live);
    l.apply_batch(
        world_lists(vec![allow_b("x", "one"), allow_b("x", "two")]),
        Some(store()),
    );
    assert_eq!(l.compiler().world().policies.len(), 2);
    // Both deleted while the watch was down; the pod c too.
    let mut events = list(Kind::NetworkPolicy, Vec::new());
    events.extend(list(
        Kind::Pod,
        vec![
            pod("x", "a", "n1", "10.0.1.2"),
            pod("x", "b", "n2", "10.0.2.2"),
        ],
    ));
    l.apply_batch(events, None);
    assert!(live_maps(&live).is_empty());
    assert_eq!(
        l.compiler().endpoints().keys().cloned().collect::<Vec<_>>(),
        vec![PodKey::new("x", "a")]
    );
}

/// A writer whose writes fail until told otherwise.
#[derive(Default)]
struct Flaky {
    maps: PolicyMaps,
    failing: bool,
}

impl PolicyMapWriter for Flaky {
    fn write(&mut self, op: &meshd_policy::update::MapOp) -> Result<(), WriterError> {
        if self.failing {
            return Err(WriterError::Write {
                op: *op,
                source: "injected failure".into(),
            });
        }
        op.apply(&mut self.maps);
        Ok(())
    }
    fn policy_changed(&mut self) -> Result<(), WriterError> {
        Ok(())
    }
    fn dump(&mut self) -> Result<PolicyMaps, WriterError> {
        Ok(self.maps.clone())
    }
}

#[test]
fn a_failed_write_is_reported_and_the_next_batch_reconciles() {
    let writer = Arc::new(Mutex::new(Flaky::default()));
    let report = SharedPolicyReport::default();
    let mut l = PolicyLoop::new("n1", writer.clone(), lookup(), report.clone());
    l.apply_batch(world_lists(Vec::new()), Some(store()));
    writer.lock().unwrap().failing = true;
    assert!(
        l.apply_batch(vec![ObjectEvent::Upsert(allow_b("x", "p"))], None),
        "come back after a failed write"
    );
    let r = report.lock().unwrap().clone();
    assert_eq!(r.write_errors, 1);
    assert!(r.write_error.is_some());
    writer.lock().unwrap().failing = false;
    assert!(!l.apply_batch(Vec::new(), None));
    assert_eq!(writer.lock().unwrap().maps, expected(&l));
    assert!(report.lock().unwrap().write_error.is_none());
}

#[test]
fn composed_deltas_end_where_the_steps_end() {
    let key = |e| IsolationKey {
        endpoint: e,
        direction: 0,
        reserved: [0; 3],
    };
    let v = |r| IsolationValue { rules: r };
    let start: PolicyMaps = PolicyMaps {
        isolation: [(key(1), v(1)), (key(2), v(2))].into(),
        ..Default::default()
    };
    let mid = PolicyMaps {
        isolation: [(key(2), v(3)), (key(3), v(3))].into(),
        ..Default::default()
    };
    let end = PolicyMaps {
        isolation: [(key(1), v(5)), (key(2), v(3))].into(),
        ..Default::default()
    };
    let mut delta = MapDelta::between(&start, &mid);
    compose(&mut delta, MapDelta::between(&mid, &end));
    let mut live = start.clone();
    for op in ordered_ops(&delta) {
        op.apply(&mut live);
    }
    assert_eq!(live, end);
}

/// The whole path in the directory registry: real files and a real IPAM store, followed with
/// inotify by the running loop.
#[tokio::test]
async fn files_in_the_registry_reach_the_maps_of_the_running_loop() {
    use crate::registry::objects::tests::{
        deny_all_json, file, namespace_json, pod_json, write_atomically,
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("registry");
    let store_dir = tmp.path().join("ipam");
    let ipam = meshd_cni::ipam::Ipam::open(&store_dir, &["10.0.1.0/24".parse().unwrap()]).unwrap();
    let a_ip = ipam.allocate("ctr-a", "eth0").unwrap()[0].to_string();
    write_atomically(
        &file(&root, Kind::Namespace, None, "x"),
        &namespace_json("x"),
    );
    write_atomically(
        &file(&root, Kind::Pod, Some("x"), "a"),
        &pod_json("x", "a", "n1", &a_ip),
    );
    let live = Live::default();
    let report = SharedPolicyReport::default();
    let l = PolicyLoop::new("n1", live.clone(), lookup(), report.clone());
    let objects = crate::registry::objects::watch_objects(&root).unwrap();
    let task = tokio::spawn(l.run(objects, Some(store_dir.clone())));
    let wait = |what: &'static str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let r = report.clone();
    tokio::task::spawn_blocking(move || {
        wait("the first sync", &|| {
            let r = r.lock().unwrap();
            r.synced && r.local_endpoints == 1
        });
    })
    .await
    .unwrap();
    assert!(live_maps(&live).is_empty());
    let started = Instant::now();
    write_atomically(
        &file(&root, Kind::NetworkPolicy, Some("x"), "deny"),
        &deny_all_json("x", "deny"),
    );
    let l2 = live.clone();
    tokio::task::spawn_blocking(move || {
        wait("the policy's entries", &|| !live_maps(&l2).is_empty())
    })
    .await
    .unwrap();
    let latency = started.elapsed();
    let isolated: Vec<u32> = live_maps(&live)
        .isolation
        .keys()
        .map(|k| k.endpoint)
        .collect();
    assert_eq!(isolated, vec![11]);
    eprintln!("policy file written → entries in the maps: {latency:?}");
    assert!(latency < Duration::from_millis(500), "{latency:?}");
    // A new pod on this node: its CNI entry, then its Pod object; its veth (ctr-c's) is known.
    let c_ip = ipam.allocate("ctr-c", "eth0").unwrap()[0].to_string();
    write_atomically(
        &file(&root, Kind::Pod, Some("x"), "c"),
        &pod_json("x", "c", "n1", &c_ip),
    );
    let l2 = live.clone();
    tokio::task::spawn_blocking(move || {
        wait("c's entries", &|| live_maps(&l2).isolation.len() == 2)
    })
    .await
    .unwrap();
    // Deleting the policy file removes every entry.
    fs::remove_file(file(&root, Kind::NetworkPolicy, Some("x"), "deny")).unwrap();
    let l2 = live.clone();
    tokio::task::spawn_blocking(move || wait("no entries", &|| live_maps(&l2).is_empty()))
        .await
        .unwrap();
    task.abort();
}
