//! The Kubernetes registry backend, the settings watcher and the NetworkPolicy object watches
//! against a real kube-apiserver (v1.20.2 with etcd, `integration::kube_apiserver`), with
//! meshd authenticated as its own service account and bound by exactly `deploy/`'s RBAC: the
//! real authorizer judges every request, and the audit log shows each one and its answer.
//! The test harness changes the cluster as the admin (`system:masters`).
//!
//! Needs the binary (`scripts/kube-apiserver.sh build`), etcd, openssl and kubectl; fails
//! without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "kube_real/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::time::Duration;

use harness::*;
use integration::apiserver::audit::ApiRequest;
use integration::kube_apiserver::{self, MESHD_NAMESPACE};
use integration::rbac::Grants;
use keyexchange::{NodeRecord, PublicKey};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use meshd::registry::kube::annotations as kreg;
use meshd::registry::kube::client::client;
use meshd::registry::kube::endpoint_batches;
use meshd::registry::{KubeRegistry, Registry, RegistryEvent};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_publishes_watches_and_withdraws_as_meshds_service_account() {
    let c = cluster(3).await;
    let mut watchers = Vec::new();
    for i in 1..=3 {
        let mut rx = c.registry(&format!("n{i}")).watch().unwrap();
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
    // Someone else's annotations and labels on the Node stay as they are.
    c.patch_node(
        "n1",
        json!({"metadata": {
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "meshd.io/unrelated-future-key": "kept"},
            "labels": {"team": "blue"}}}),
    )
    .await;
    c.registry("n1").publish(&record).await.unwrap();
    for rx in &mut watchers {
        match next(rx).await {
            RegistryEvent::Upsert(r) => assert_eq!(r, record),
            other => panic!("expected Upsert of n1, got {other:?}"),
        }
    }
    let ann = c.annotations("n1").await;
    assert_eq!(
        ann[kreg::PUBLIC_KEY_ANNOTATION],
        record.public_key.to_string()
    );
    assert_eq!(ann[kreg::LISTEN_PORT_ANNOTATION], "51820");
    assert_eq!(ann[kreg::RECORD_VERSION_ANNOTATION], "1");
    assert_eq!(ann["meshd.io/unrelated-future-key"], "kept");
    assert_eq!(
        ann.len(),
        2 + 4,
        "two foreign keys and meshd's four: {ann:?}"
    );
    assert_eq!(c.node_writes("n1"), 1);

    // Republishing the same record (also from a new registry: a restart) writes nothing.
    let rv = c.nodes().get("n1").await.unwrap().metadata.resource_version;
    for _ in 0..3 {
        c.registry("n1").publish(&record).await.unwrap();
    }
    assert_eq!(c.node_writes("n1"), 1, "steady state must not write");
    assert_eq!(
        c.nodes().get("n1").await.unwrap().metadata.resource_version,
        rv
    );
    assert_quiet(&mut watchers[1]).await;

    // A real change is one write and one Upsert everywhere; so is changing it back.
    let mut changed = record.clone();
    changed.listen_port = 51821;
    for (r, writes) in [(&changed, 2), (&record, 3)] {
        c.registry("n1").publish(r).await.unwrap();
        assert_eq!(c.node_writes("n1"), writes);
        for rx in &mut watchers {
            let e = next(rx).await;
            assert!(matches!(&e, RegistryEvent::Upsert(u) if u == r), "{e:?}");
        }
    }

    // A late watcher gets the current state, then Synced.
    let mut late = c.registry("n2").watch().unwrap();
    let events = until_synced(&mut late).await;
    assert!(
        matches!(&events[..], [RegistryEvent::Upsert(r), RegistryEvent::Synced] if *r == record),
        "{events:?}"
    );

    // A malformed annotation is reported naming the field; meshd's next publish repairs it.
    c.patch_node(
        "n1",
        json!({"metadata": {"annotations": {kreg::LISTEN_PORT_ANNOTATION: "not-a-port"}}}),
    )
    .await;
    match next(&mut watchers[1]).await {
        RegistryEvent::Malformed { node, error } => {
            assert_eq!(node, "n1");
            assert_eq!(error.field, kreg::LISTEN_PORT_ANNOTATION);
            assert!(error.to_string().contains("not-a-port"), "{error}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    c.registry("n1").publish(&record).await.unwrap();
    assert!(matches!(next(&mut watchers[1]).await, RegistryEvent::Upsert(r) if r == record));

    // n2 publishes, opts out by label (Delete), opts back in (Upsert).
    let r2 = c.record(2).await;
    c.registry("n2").publish(&r2).await.unwrap();
    let upsert_n2 = |e: &RegistryEvent| matches!(e, RegistryEvent::Upsert(r) if r.name == "n2");
    until_event(&mut watchers[0], "Upsert n2", upsert_n2).await;
    c.patch_node(
        "n2",
        json!({"metadata": {"labels": {kreg::EXCLUDE_LABEL: "true"}}}),
    )
    .await;
    assert!(matches!(next(&mut watchers[0]).await, RegistryEvent::Delete(n) if n == "n2"));
    // A new watcher does not list the opted-out n2 either, nor n3 (no meshd), and an unrelated
    // annotation does not make n3 a peer.
    let events = until_synced(&mut c.registry("n3").watch().unwrap()).await;
    assert!(
        matches!(&events[..], [RegistryEvent::Upsert(r), RegistryEvent::Synced] if r.name == "n1"),
        "{events:?}"
    );
    c.patch_node(
        "n3",
        json!({"metadata": {"annotations": {"example.com/x": "1"}}}),
    )
    .await;
    assert_quiet(&mut watchers[0]).await;
    c.patch_node(
        "n2",
        json!({"metadata": {"labels": {kreg::EXCLUDE_LABEL: "false"}}}),
    )
    .await;
    assert!(upsert_n2(&next(&mut watchers[0]).await));

    // Withdraw removes meshd's keys only; again, or for a missing node, writes nothing.
    c.registry("n1").withdraw("n1").await.unwrap();
    until_event(
        &mut watchers[2],
        "Delete n1",
        |e| matches!(e, RegistryEvent::Delete(n) if n == "n1"),
    )
    .await;
    let ann = c.annotations("n1").await;
    assert_eq!(
        ann.keys().collect::<Vec<_>>(),
        vec![
            "meshd.io/unrelated-future-key",
            "node.alpha.kubernetes.io/ttl"
        ]
    );
    let writes = c.node_writes("n1");
    c.registry("n1").withdraw("n1").await.unwrap();
    c.registry("n1").withdraw("gone").await.unwrap();
    assert_eq!(c.node_writes("n1"), writes);
    let node = c.nodes().get("n1").await.unwrap();
    assert_eq!(
        node.spec.as_ref().and_then(|s| s.pod_cidrs.clone()),
        Some(vec!["10.244.1.0/24".into(), "fd00:244:0:1::/64".into()]),
        "meshd never writes spec"
    );
    assert_eq!(node.metadata.labels.unwrap()["team"], "blue");

    // The Node object goes away.
    c.nodes()
        .delete("n2", &DeleteParams::default())
        .await
        .unwrap();
    until_event(
        &mut watchers[0],
        "Delete n2",
        |e| matches!(e, RegistryEvent::Delete(n) if n == "n2"),
    )
    .await;
    c.assert_nothing_forbidden();
}

/// The real authorizer's answer for `user` (a service account of meshd's namespace) making
/// `request`.
async fn subject_access(admin: &Client, account: &str, request: &ApiRequest) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(kube_apiserver::service_account_user(
                MESHD_NAMESPACE,
                account,
            )),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{MESHD_NAMESPACE}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(request.verb.clone()),
                group: Some(request.api_group.clone()),
                resource: Some(request.resource.clone()),
                subresource: request.subresource.clone(),
                namespace: request.namespace.clone(),
                name: request.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let answer = api.create(&PostParams::default(), &review).await.unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

/// Everything meshd asks of the API server, as its service account, against `deploy/`'s RBAC:
/// the registry (Nodes), the Node condition (`nodes/status`), the settings watcher and its
/// Event, the NetworkPolicy objects, the API servers' EndpointSlice (served only as `v1beta1`
/// by v1.20: read through that). The real authorizer refuses none of it, every grant is used,
/// and without any one rule of `deploy/` (each removed in turn, bound to an account of its own)
/// the authorizer refuses at least one of the requests meshd made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshd_needs_exactly_deploys_rbac() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::events::v1::Event as KubeEvent;
    use meshd::policy::objects::ObjectCache;
    use meshd::registry::kube::endpoints::watch_api_server_endpoints;
    use meshd::registry::kube::settings::{pod_reference, spawn_watcher, WatcherConfig};

    let c = cluster(2).await;
    // The registry (one instance: its Node watch gives the policy objects' pod CIDRs).
    let n1 = c.registry("n1");
    let mut rx = n1.watch().unwrap();
    until_synced(&mut rx).await;
    let record = c.record(1).await;
    n1.publish(&record).await.unwrap();
    assert!(matches!(next(&mut rx).await, RegistryEvent::Upsert(r) if r == record));

    // The Node condition.
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    let condition =
        meshd::registry::kube::node_condition::spawn(c.meshd.clone(), "n1".into(), status_rx);
    status_tx.send(Some(status_report())).unwrap();
    eventually("the MeshdEncrypted condition", || async {
        let node = c.nodes().get("n1").await.unwrap();
        let conditions = node.status?.conditions?;
        conditions
            .iter()
            .find(|x| x.type_ == "MeshdEncrypted")
            .map(|_| ())
    })
    .await;
    condition.abort();

    // A refused record: a RecordRefused Event in `default`, created, then patched (counted
    // again) once the repeat window has passed with the refusal still there.
    let mut refusing = status_report();
    refusing.refused = vec![meshd::control::RefusalReport {
        node: "n2".into(),
        field: "podCIDRs".into(),
        reason: "0.0.0.0/0 lies outside the cluster's pod range".into(),
        holder: None,
    }];
    let (_refusals_tx, refusals_rx) = tokio::sync::watch::channel(Some(refusing));
    let refusals = meshd::registry::kube::refusal_events::spawn_with(
        c.meshd.clone(),
        "n1".into(),
        refusals_rx,
        meshd::registry::kube::refusal_events::Limits {
            repeat_after: Duration::from_millis(1500),
            burst: 10,
            refill: Duration::from_millis(100),
        },
    );
    let default_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(c.admin.clone(), "default");
    eventually("the RecordRefused Event counted twice", || async {
        default_events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RecordRefused") && e.count == Some(2))
            .map(|_| ())
    })
    .await;
    refusals.abort();

    // The settings watcher, with an invalid value: an Event.
    let configmaps: Api<ConfigMap> = Api::namespaced(c.admin.clone(), MESHD_NAMESPACE);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": meshd::settings::CONFIG_MAP_NAME},
        "data": {"encryption": "sometimes"},
    }))
    .unwrap();
    configmaps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let pod = pod_reference(MESHD_NAMESPACE, "meshd-abcde", None);
    let mut settings = spawn_watcher(
        c.meshd.clone(),
        WatcherConfig::new(MESHD_NAMESPACE, pod, "n1"),
    );
    tokio::time::timeout(WAIT, settings.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();
    let events: Api<KubeEvent> = Api::namespaced(c.admin.clone(), MESHD_NAMESPACE);
    let event = eventually("the InvalidConfiguration Event", || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    assert!(
        event.note.unwrap_or_default().contains("sometimes"),
        "the Event names the value"
    );

    // The NetworkPolicy objects.
    c.k8s.apply(&[
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "x"}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x",
                   "ports": [{"name": "http", "containerPort": 80}]}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "allow-http", "namespace": "x"},
               "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}}),
    ]);
    // Node n2's endpoint batch, written twice (created, then patched) as meshd's account: pod
    // x/b with an address of its own pod CIDR and one of n1's, which n1 must refuse.
    let record2 = c.record(2).await;
    c.registry("n2").publish(&record2).await.unwrap();
    let own_v4 = |r: &NodeRecord| match r.pod_cidrs[0] {
        ipnet::IpNet::V4(net) => {
            std::net::IpAddr::from((u32::from(net.network()) + 5).to_be_bytes())
        }
        other => panic!("{other}"),
    };
    let (b_address, stolen) = (own_v4(&record2), own_v4(&record));
    let b = meshd_policy::model::Pod {
        key: meshd_policy::model::PodKey::new("x", "b"),
        labels: [("app".to_owned(), "b".to_owned())].into(),
        addresses: vec![b_address],
        node: "n2".into(),
        named_ports: Default::default(),
    };
    let mut hostile = b.clone();
    hostile.addresses.push(stolen);
    for pod in [&b, &hostile] {
        let content = meshd::policy::endpoint_batch::encode("n2", [pod]);
        endpoint_batches::write_batch(c.meshd.clone(), MESHD_NAMESPACE, "n2", None, content)
            .await
            .unwrap();
    }
    let mut objects = n1.watch_policy_objects("n1").unwrap();
    let mut cache = ObjectCache::default();
    let mut compiler = meshd_policy::Compiler::new();
    tokio::time::timeout(WAIT, async {
        while !(cache.synced()
            && compiler.world().policies.len() == 1
            && compiler.world().pods.len() == 2)
        {
            let event = objects.recv().await.expect("object watch closed");
            for change in cache.apply(compiler.world(), event) {
                compiler.apply(change);
            }
        }
    })
    .await
    .expect("the policy objects were not listed");
    assert!(compiler.world().namespaces.contains_key("x"));
    // n1's own pod from its own watch; n2's from its batch, without the stolen address.
    let pods = &compiler.world().pods;
    assert_eq!(pods[&meshd_policy::model::PodKey::new("x", "a")].node, "n1");
    assert_eq!(*pods[&b.key], b);
    let refusals = &cache.batch_refusals()["n2"];
    assert!(
        refusals.len() == 1 && refusals[0].contains(&stolen.to_string()),
        "{refusals:?}"
    );
    // n1 published its own batch, holding x/a.
    let own_batch = eventually("n1's endpoint batch", || async {
        configmaps
            .get_opt(&endpoint_batches::config_map_name("n1"))
            .await
            .unwrap()
    })
    .await;
    // Owned by its Node: the garbage collector deletes it with the Node.
    let owner = &own_batch.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "n1"));
    assert_eq!(
        Some(&owner.uid),
        c.nodes().get("n1").await.unwrap().metadata.uid.as_ref()
    );
    let content = &own_batch.data.unwrap()[endpoint_batches::DATA_KEY];
    let decoded = meshd::policy::endpoint_batch::decode(content.as_bytes(), "n1").unwrap();
    assert_eq!(decoded.pods.len(), 1);
    assert_eq!(decoded.pods[0].key.name, "a");

    // The API servers' endpoints: v1.20 serves EndpointSlices only as v1beta1 (and its own
    // endpoint reconciler keeps only the `kubernetes` Endpoints: the slice is written here as
    // the EndpointSlice mirroring controller would).
    c.k8s.apply(&[json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                       "topology": {"kubernetes.io/hostname": "n1"}}],
        "ports": [{"name": "https", "port": c.k8s.server.port(), "protocol": "TCP"}],
    })]);
    let mut endpoints = watch_api_server_endpoints(c.meshd.clone());
    let addresses = tokio::time::timeout(WAIT, endpoints.wait_for(Option::is_some))
        .await
        .expect("the API servers' endpoints were never read")
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(
        addresses,
        BTreeSet::from(["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]),
        "the kubernetes EndpointSlice holds the advertise address"
    );
    let slice_answers: BTreeSet<(String, u16)> = c
        .k8s
        .meshd_requests()
        .into_iter()
        .filter(|r| r.request.resource == "endpointslices")
        .map(|r| {
            (
                r.uri.split('?').next().unwrap_or_default().to_string(),
                r.code,
            )
        })
        .collect();
    assert!(
        slice_answers.iter().all(|(_, code)| *code == 200),
        "EndpointSlice requests all answered (no 404 for v1): {slice_answers:?}"
    );
    drop((rx, settings, objects, endpoints));

    // Nothing refused; every grant used.
    c.assert_nothing_forbidden();
    let requests: Vec<ApiRequest> = c
        .k8s
        .meshd_requests()
        .into_iter()
        .map(|r| r.request)
        .collect();
    let rbac = kube_apiserver::deploy_rbac();
    let yaml = |objects: &[serde_json::Value]| {
        objects
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let grants = Grants::from_yaml(&yaml(&rbac), MESHD_NAMESPACE, "meshd").unwrap();
    let unused: Vec<String> = grants
        .unused(&requests)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        unused.is_empty(),
        "RBAC grants meshd never used: {unused:?}"
    );

    // Without any one rule, the real authorizer refuses something meshd did.
    let distinct: BTreeSet<ApiRequest> = requests
        .iter()
        .map(|r| ApiRequest {
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            ..r.clone()
        })
        .collect();
    let variants = kube_apiserver::rbac_without_each_rule(&rbac, |k| format!("meshd-minus-{k}"));
    assert!(variants.len() >= 5, "{} rules", variants.len());
    c.k8s.apply(
        &variants
            .iter()
            .flat_map(|(_, o)| o.clone())
            .collect::<Vec<_>>(),
    );
    for (k, (removed, objects)) in variants.iter().enumerate() {
        let account = format!("meshd-minus-{k}");
        let model = Grants::from_yaml(&yaml(objects), MESHD_NAMESPACE, &account).unwrap();
        // The authorizer follows RBAC objects through informers: wait until it agrees with
        // the rule-matching model on every request, then look at what it refuses.
        let refused = eventually(&format!("the authorizer to know {account}"), || async {
            let mut refused = Vec::new();
            for r in &distinct {
                let allowed = subject_access(&c.admin, &account, r).await;
                if allowed != model.allows(r) {
                    return None;
                }
                if !allowed {
                    refused.push(format!("{} {} {:?}", r.verb, r.rbac_resource(), r.name));
                }
            }
            Some(refused)
        })
        .await;
        assert!(
            !refused.is_empty(),
            "without {removed} meshd's requests are all still allowed: the rule is not needed"
        );
        eprintln!("without {removed}: refused {refused:?}");
    }
    // And meshd's own account, with every rule: everything allowed.
    for r in &distinct {
        assert!(subject_access(&c.admin, "meshd", r).await, "{r:?}");
    }
}

/// A TCP relay between meshd and the API server that can be cut: meshd loses the server
/// while the cluster goes on changing through the admin's direct connection.
struct Relay {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, conns) = (open.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused, as by a dead server
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        Self {
            port,
            open,
            connections,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A watch whose history is gone (meshd cut off while Nodes changed, then etcd compacted: the
/// real `410 Gone`, with the watch cache off so that watches resume from etcd) relists: the
/// difference arrives as one Delete and one Upsert, nothing for the unchanged nodes, then
/// Synced; watching goes on after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_history_was_compacted_relists_without_duplicates() {
    let c = cluster_with(3, |config| {
        config.extra_args.push("--watch-cache=false".into());
    })
    .await;
    for i in 1..=3 {
        let r = c.record(i).await;
        c.registry(&r.name).publish(&r).await.unwrap();
    }
    let relay = Relay::start(c.k8s.server.port()).await;
    let kubeconfig = std::fs::read_to_string(c.k8s.meshd_kubeconfig())
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", c.k8s.server.port()),
            &format!("127.0.0.1:{}", relay.port),
        );
    let relayed = c.k8s.meshd_kubeconfig().with_extension("relayed");
    std::fs::write(&relayed, kubeconfig).unwrap();
    let through_relay = client(Some(&relayed)).await.unwrap();
    let registry = KubeRegistry::new(through_relay, "n1")
        .with_watch_backoff(Duration::from_millis(200), Duration::from_millis(500));
    let mut rx = registry.watch().unwrap();
    assert_eq!(until_synced(&mut rx).await.len(), 4);

    relay.cut();
    c.nodes()
        .delete("n3", &DeleteParams::default())
        .await
        .unwrap();
    c.patch_node(
        "n2",
        json!({"metadata": {"labels": {"touched": "during-outage"}}}),
    )
    .await;
    c.create_node("n4", &["198.18.0.14"], &["10.244.4.0/24"])
        .await;
    c.patch_node(
        "n4",
        json!({"metadata": {"annotations": {
            kreg::PUBLIC_KEY_ANNOTATION: PublicKey::from_bytes([4; 32]).to_string(),
            kreg::LISTEN_PORT_ANNOTATION: "51820",
            kreg::RECORD_VERSION_ANNOTATION: "1"}}}),
    )
    .await;
    let compacted = c.k8s.server.compact_etcd().unwrap();
    assert!(compacted > 0);
    relay.restore();

    let mut events = until_synced(&mut rx).await;
    assert!(matches!(events.pop(), Some(RegistryEvent::Synced)));
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
    // The server did answer 410 to the resumed watch (no other way to need a relist).
    let gone = c
        .k8s
        .meshd_requests()
        .iter()
        .filter(|r| r.request.verb == "list" && r.request.resource == "nodes")
        .count();
    assert!(gone >= 2, "one list at start and one after the 410: {gone}");

    c.nodes()
        .delete("n2", &DeleteParams::default())
        .await
        .unwrap();
    assert!(matches!(next(&mut rx).await, RegistryEvent::Delete(n) if n == "n2"));
    c.assert_nothing_forbidden();
}
