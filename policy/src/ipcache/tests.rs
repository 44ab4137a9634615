#![allow(clippy::unwrap_used)]

use super::*;
use crate::model::{LabelSet, Labels};

fn identity(namespace: &str, app: &str) -> Identity {
    let labels: Labels = [("app".to_owned(), app.to_owned())].into();
    let labels = LabelSet::from(labels);
    Identity::new(namespace.into(), labels.view(), &Default::default())
}

fn pod(name: &str, addresses: Vec<IpAddr>, identity: Identity) -> RemotePod {
    RemotePod {
        name: name.into(),
        addresses,
        identity,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_node_batch_is_diffed_and_identities_are_shared_and_forgotten() {
    let mut table = RemoteEndpoints::new();
    let web = identity("x", "web");
    let db = identity("x", "db");
    let changed = table.set_node(
        "n2",
        [
            pod("p1", vec![ip("10.0.2.1"), ip("fd00::2:1")], web.clone()),
            pod("p2", vec![ip("10.0.2.2")], web.clone()),
            pod("p3", vec![ip("10.0.2.3")], db.clone()),
        ],
    );
    assert_eq!(changed.len(), 2);
    assert_eq!(table.pods(), 3);
    assert_eq!(table.len(), 4);
    assert_eq!(table.identities().count(), 2, "one identity per label set");
    let web_id = table.lookup("n2", ip("fd00::2:1")).unwrap();
    assert_eq!(*table.get(web_id).unwrap(), web);
    assert_eq!(table.lookup("n2", ip("10.0.2.9")), None);
    assert_eq!(table.lookup("n3", ip("10.0.2.1")), None);

    // The same batch again changes nothing.
    let again = table.set_node(
        "n2",
        [
            pod("p4", vec![ip("10.0.2.2")], web.clone()),
            pod("p5", vec![ip("10.0.2.1"), ip("fd00::2:1")], web.clone()),
            pod("p6", vec![ip("10.0.2.3")], db.clone()),
        ],
    );
    assert!(again.is_empty());

    // The db pod goes: only its identity changed, and nobody uses it any more.
    let changed = table.set_node(
        "n2",
        [
            pod("p7", vec![ip("10.0.2.1"), ip("fd00::2:1")], web.clone()),
            pod("p8", vec![ip("10.0.2.2")], web.clone()),
        ],
    );
    assert_eq!(changed, std::slice::from_ref(&db));
    assert_eq!(table.identities().count(), 1);

    // A relabelled pod changes both identities.
    let changed = table.set_node(
        "n2",
        [
            pod("p9", vec![ip("10.0.2.1"), ip("fd00::2:1")], web.clone()),
            pod("p10", vec![ip("10.0.2.2")], db.clone()),
        ],
    );
    assert_eq!(changed.len(), 2);

    let removed = table.remove_node("n2");
    assert_eq!(removed.len(), 2);
    assert!(table.is_empty());
    assert_eq!(table.identities().count(), 0);
    assert_eq!(table.id_bound(), 0, "the table shrinks with its content");
}

#[test]
fn equal_tables_compare_equal_whatever_their_ids() {
    let mut a = RemoteEndpoints::new();
    let mut b = RemoteEndpoints::new();
    a.set_node(
        "n2",
        [pod("web-1", vec![ip("10.0.2.1")], identity("x", "web"))],
    );
    a.set_node(
        "n3",
        [pod("db-1", vec![ip("10.0.3.1")], identity("x", "db"))],
    );
    b.set_node(
        "n3",
        [pod("db-1", vec![ip("10.0.3.1")], identity("x", "db"))],
    );
    b.set_node(
        "n2",
        [pod("web-1", vec![ip("10.0.2.1")], identity("x", "web"))],
    );
    assert_eq!(a, b);
    b.set_node(
        "n2",
        [pod("web-1", vec![ip("10.0.2.1")], identity("x", "other"))],
    );
    assert_ne!(a, b);
}

#[test]
fn a_pod_without_addresses_holds_no_identity() {
    let mut table = RemoteEndpoints::new();
    let changed = table.set_node("n2", [pod("p0", Vec::new(), identity("x", "web"))]);
    assert!(changed.is_empty());
    assert_eq!(table.identities().count(), 0);
    assert_eq!(table.pods(), 1);
}

#[test]
fn a_node_names_its_pods_by_address() {
    let mut table = RemoteEndpoints::new();
    table.set_node(
        "n2",
        [
            pod(
                "web-1",
                vec![ip("10.0.2.9"), ip("fd00::2:9")],
                identity("x", "web"),
            ),
            pod("web-2", vec![ip("10.0.2.1")], identity("x", "web")),
        ],
    );
    let node = table.node("n2").unwrap();
    let (id, name) = node.get(ip("fd00::2:9")).unwrap();
    assert_eq!(name, "web-1");
    assert_eq!(table.get(id).unwrap().labels().get("app").unwrap(), "web");
    assert_eq!(node.get(ip("10.0.2.1")).unwrap().1, "web-2");
    assert!(node.get(ip("10.0.2.2")).is_none());
}

#[test]
fn a_node_pods_are_given_back_as_held() {
    let mut table = RemoteEndpoints::new();
    let pods = vec![
        pod(
            "web-1",
            vec![ip("10.0.2.9"), ip("fd00::2:9")],
            identity("x", "web"),
        ),
        pod("db-1", vec![ip("10.0.2.1")], identity("x", "db")),
        pod("pending", Vec::new(), Identity::default()),
    ];
    table.set_node("n2", pods.clone());
    assert_eq!(table.node_pods("n2"), pods);
    assert!(table.node_pods("n3").is_empty());
}

#[test]
fn names_are_front_coded_and_read_back_whole() {
    let long = "a".repeat(300);
    let names = [
        "web-7d9f8b6c4-x2x9k",
        "web-7d9f8b6c4-q8z2m",
        "db-0",
        "db-0",
        "",
        "zürich-1",
        "zürich-2",
        &format!("{long}-1"),
        &format!("{long}-2"),
    ];
    let mut coder = NameCoder::default();
    for name in names {
        coder.push(name);
    }
    let coded = coder.finish();
    // The second name is its first's 14 shared bytes and "q8z2m": a byte, 5, a newline.
    assert_eq!(coded[21..28], *b"\x0eq8z2m\n");
    let entries = NodeEntries {
        pods: names.len() as u32,
        names: coded,
        ..NodeEntries::default()
    };
    assert_eq!(entries.names().collect::<Vec<_>>(), names);
}
