#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meshd_policy::model::PodKey;
use serde_json::{json, Value};

use super::*;

/// Writes `value` to `path` as the contract says: a dotfile in the same directory, renamed.
pub(crate) fn write_atomically(path: &Path, value: &Value) {
    let dir = path.parent().unwrap();
    fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    fs::write(&tmp, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    fs::rename(&tmp, path).unwrap();
}

pub(crate) fn namespace_json(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

pub(crate) fn pod_json(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
            "ports": [{"name": "serve-80", "containerPort": 80, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

pub(crate) fn deny_all_json(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
}

pub(crate) fn file(root: &Path, kind: Kind, ns: Option<&str>, name: &str) -> PathBuf {
    let dir = root.join(OBJECTS_DIR).join(kind_dir(kind));
    let dir = match ns {
        Some(ns) => dir.join(ns),
        None => dir,
    };
    dir.join(format!("{name}.json"))
}

async fn next(rx: &mut mpsc::Receiver<ObjectEvent>) -> ObjectEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("timed out waiting for an object event")
        .expect("object watch closed")
}

async fn assert_quiet(rx: &mut mpsc::Receiver<ObjectEvent>) {
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected object event {event:?}");
    }
}

/// The events of the initial listing, up to the last kind's `ListDone`.
async fn initial(rx: &mut mpsc::Receiver<ObjectEvent>) -> Vec<ObjectEvent> {
    let mut events = Vec::new();
    loop {
        let event = next(rx).await;
        let done = event == ObjectEvent::ListDone(Kind::NetworkPolicy);
        events.push(event);
        if done {
            return events;
        }
    }
}

fn upserted_ref(event: &ObjectEvent) -> Option<ObjectRef> {
    match event {
        ObjectEvent::Upsert(object) => Some(object.reference()),
        _ => None,
    }
}

#[tokio::test]
async fn the_initial_listing_holds_every_object_and_ignores_dotfiles_and_other_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_atomically(
        &file(root, Kind::Namespace, None, "x"),
        &namespace_json("x"),
    );
    write_atomically(
        &file(root, Kind::Pod, Some("x"), "a"),
        &pod_json("x", "a", "n1", "10.0.1.2"),
    );
    write_atomically(
        &file(root, Kind::NetworkPolicy, Some("x"), "deny"),
        &deny_all_json("x", "deny"),
    );
    let pods = root.join(OBJECTS_DIR).join("pods").join("x");
    fs::write(pods.join(".b.json.tmp"), "{half").unwrap();
    fs::write(pods.join("notes.txt"), "hello").unwrap();
    let mut rx = watch_objects(root).unwrap();
    let events = initial(&mut rx).await;
    let refs: Vec<ObjectRef> = events.iter().filter_map(upserted_ref).collect();
    assert_eq!(
        refs,
        vec![
            ObjectRef::namespace("x"),
            ObjectRef::namespaced(Kind::Pod, "x", "a"),
            ObjectRef::namespaced(Kind::NetworkPolicy, "x", "deny"),
        ]
    );
    assert_eq!(events[0], ObjectEvent::ListStart(Kind::Namespace));
    assert_eq!(events.len(), 9, "{events:#?}");
    match &events[4] {
        ObjectEvent::Upsert(Object::Pod(pod)) => {
            assert_eq!(pod.key, PodKey::new("x", "a"));
            assert_eq!(pod.node, "n1");
            assert_eq!(
                pod.addresses,
                vec!["10.0.1.2".parse::<std::net::IpAddr>().unwrap()]
            );
            assert_eq!(pod.named_ports["serve-80"].number, 80);
        }
        other => panic!("expected the pod, got {other:?}"),
    }
    assert_quiet(&mut rx).await;
}

#[tokio::test]
async fn changes_in_new_namespace_directories_are_followed_and_a_malformed_file_is_refused_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut rx = watch_objects(root).unwrap();
    initial(&mut rx).await;

    // A namespace directory that did not exist when the watch started.
    let a = file(root, Kind::Pod, Some("y"), "a");
    write_atomically(&a, &pod_json("y", "a", "n2", "10.0.2.2"));
    assert_eq!(
        upserted_ref(&next(&mut rx).await),
        Some(ObjectRef::namespaced(Kind::Pod, "y", "a"))
    );
    // A policy with a protocol the API does not have: refused, naming the file and the field.
    let mut bad = deny_all_json("y", "bad");
    bad["spec"]["ingress"] = json!([{"ports": [{"protocol": "ICMP", "port": 1}]}]);
    let bad_path = file(root, Kind::NetworkPolicy, Some("y"), "bad");
    write_atomically(&bad_path, &bad);
    match next(&mut rx).await {
        ObjectEvent::Malformed { object, error } => {
            assert_eq!(
                object,
                ObjectRef::namespaced(Kind::NetworkPolicy, "y", "bad")
            );
            assert!(error.contains(&bad_path.display().to_string()), "{error}");
            assert!(
                error.contains("spec.ingress[0].ports[0].protocol"),
                "{error}"
            );
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    // An empty file (a writer that is not atomic, mid-write) is no event; then not JSON at
    // all, and a name that is not the file's.
    let junk = file(root, Kind::Namespace, None, "junk");
    fs::write(&junk, "").unwrap();
    fs::write(&junk, "{not json").unwrap();
    assert!(
        matches!(next(&mut rx).await, ObjectEvent::Malformed { error, .. } if error.contains("not a valid Namespace"))
    );
    write_atomically(
        &file(root, Kind::Namespace, None, "z"),
        &namespace_json("other"),
    );
    assert!(
        matches!(next(&mut rx).await, ObjectEvent::Malformed { error, .. } if error.contains("metadata.name"))
    );
    // The watch goes on: a good policy next to the bad one.
    write_atomically(
        &file(root, Kind::NetworkPolicy, Some("y"), "deny"),
        &deny_all_json("y", "deny"),
    );
    assert_eq!(
        upserted_ref(&next(&mut rx).await),
        Some(ObjectRef::namespaced(Kind::NetworkPolicy, "y", "deny"))
    );
    // Deleting a file removes the object.
    fs::remove_file(&a).unwrap();
    assert_eq!(
        next(&mut rx).await,
        ObjectEvent::Remove(ObjectRef::namespaced(Kind::Pod, "y", "a"))
    );
    // A host-network pod is no object of policy.
    let mut host = pod_json("y", "h", "n2", "192.0.2.1");
    host["spec"]["hostNetwork"] = json!(true);
    write_atomically(&file(root, Kind::Pod, Some("y"), "h"), &host);
    assert_eq!(
        next(&mut rx).await,
        ObjectEvent::Remove(ObjectRef::namespaced(Kind::Pod, "y", "h"))
    );
}

#[tokio::test]
async fn a_namespace_directory_moved_away_relists_its_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_atomically(
        &file(root, Kind::Pod, Some("x"), "a"),
        &pod_json("x", "a", "n1", "10.0.1.2"),
    );
    write_atomically(
        &file(root, Kind::Pod, Some("y"), "b"),
        &pod_json("y", "b", "n1", "10.0.1.3"),
    );
    let mut rx = watch_objects(root).unwrap();
    initial(&mut rx).await;
    let pods = root.join(OBJECTS_DIR).join("pods");
    fs::rename(pods.join("x"), tmp.path().join("x-away")).unwrap();
    let mut events = Vec::new();
    loop {
        let event = next(&mut rx).await;
        let done = event == ObjectEvent::ListDone(Kind::Pod);
        events.push(event);
        if done {
            break;
        }
    }
    // The relist holds y/b only: the consumer removes x/a.
    let refs: Vec<ObjectRef> = events.iter().filter_map(upserted_ref).collect();
    assert_eq!(refs, vec![ObjectRef::namespaced(Kind::Pod, "y", "b")]);
    assert_eq!(events[0], ObjectEvent::ListStart(Kind::Pod));
}
