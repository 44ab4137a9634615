//! The control socket's unit tests: the status report's JSON (rotation phase names, typed fields
//! as the strings were, an older document still read), serving the current status, and the
//! connect error; [`sample`] is the crate's test status report (`tests_support`).

use super::*;

pub(crate) fn sample<P>() -> StatusReport<P> {
    StatusReport {
        node: "n1".into(),
        public_key: "k".into(),
        mode: ActiveMode::Userspace,
        interface: "meshd0".into(),
        ifindex: 7,
        adopted_device: false,
        listen_port: 51820,
        mtu: 1420,
        endpoints: vec!["198.18.0.11".into()],
        pod_cidrs: vec!["10.244.1.0/24".into()],
        known_nodes: vec!["n1".into()],
        peers: vec![],
        conflicts: vec![],
        malformed: vec![],
        counters: Counters::default(),
        converged: true,
        encryption: Encryption::Enabled,
        strict_mode: true,
        host_encryption: false,
        encrypted_hosts: Vec::new(),
        datapath: Some(crate::bpf::DatapathReport {
            pin_dir: "/sys/fs/bpf/meshd".into(),
            underlay_mode: ebpf_redirect::Mode::Enforce,
            underlay_interface: "eth0".into(),
            underlay_attached: Some(true),
            guarded_interfaces: vec!["eth0".into()],
            attach: crate::mode::Attachment::Tcx,
            remote_cidrs: ["10.244.2.0/24"].into_iter().collect(),
            cluster_cidrs: ["10.244.0.0/16"].into_iter().collect(),
            local_pods: 2,
            pod_interfaces: 1,
            pod_sources: 0,
            counters: crate::bpf::VerdictCounters {
                redirected: 5,
                ..Default::default()
            },
        }),
        key_created_unix: None,
        second: None,
        rotation: RotationReport::default(),
        cleartext: CleartextReport::default(),
        refused: Vec::new(),
        policy: None,
    }
}

#[test]
fn rotation_phase_names_are_the_status_strings() {
    for (p, name) in [
        (RotationPhase::Idle, "idle"),
        (RotationPhase::Waiting, "waiting"),
        (RotationPhase::Draining, "draining"),
        (RotationPhase::Replaced, "replaced"),
    ] {
        assert_eq!(
            serde_json::to_string(&p).expect("serializes"),
            format!("\"{name}\"")
        );
        assert_eq!(p.to_string(), name);
        let back: RotationPhase = serde_json::from_str(&format!("\"{name}\"")).expect("reads back");
        assert_eq!(back, p);
    }
}

/// The status document as meshd wrote it when these fields were strings.
fn string_era_document() -> serde_json::Value {
    serde_json::json!({
        "node": "n1", "public_key": "k", "mode": "kernel", "interface": "meshd0",
        "ifindex": 7, "adopted_device": false, "listen_port": 51820, "mtu": 1420,
        "endpoints": ["198.18.0.11"], "pod_cidrs": ["10.244.1.0/24"], "known_nodes": ["n1"],
        "peers": [], "conflicts": [], "malformed": [],
        "counters": {"malformed_records": 0, "reconciles": 0, "reconcile_errors": 0,
            "peer_ops": 0, "route_ops": 0, "device_restores": 0, "map_ops": 0},
        "converged": true, "encryption": "permissive", "strict_mode": true,
        "host_encryption": false, "encrypted_hosts": [],
        "datapath": {"pin_dir": "/sys/fs/bpf/meshd", "underlay_mode": "permissive",
            "underlay_interface": "eth0", "underlay_attached": true,
            "guarded_interfaces": ["eth0"], "attach": "netlink",
            "remote_cidrs": ["10.244.2.0/24"], "cluster_cidrs": ["10.244.0.0/16"],
            "local_pods": 2, "pod_interfaces": 1,
            "counters": {"redirected": 5, "local": 0, "passed": 0, "strict_drops": 0,
                "would_drops": 0}},
        "key_created_unix": null, "second": null,
        "rotation": {"phase": "draining", "slot": 1, "serial": null, "pending": [],
            "excused": [], "rotations": 0, "failures": 0, "last_unix": null,
            "last_error": null, "peer_slots": {}, "interval_secs": null},
        "cleartext": {"watched_since_unix": null, "last_unix": null}
    })
}

#[test]
fn typed_fields_write_and_read_the_same_json_as_the_strings_did() {
    let mut typed = sample();
    typed.mode = ActiveMode::Kernel;
    typed.encryption = Encryption::Permissive;
    let datapath = typed.datapath.as_mut().expect("sample has a datapath");
    datapath.underlay_mode = ebpf_redirect::Mode::Permissive;
    datapath.attach = crate::mode::Attachment::Netlink;
    typed.rotation.phase = RotationPhase::Draining;
    typed.rotation.slot = Some(1);
    let mut written = serde_json::to_value(&typed).expect("serialize");
    // Fields added since (source validation, policy): written besides the old ones.
    let datapath = &mut written["datapath"];
    let added = datapath
        .as_object_mut()
        .and_then(|d| d.remove("pod_sources"));
    assert_eq!(added, Some(serde_json::json!(0)));
    let counters = datapath["counters"].as_object_mut().expect("counters");
    for name in ["spoofed", "policy_denied_egress", "policy_denied_ingress"] {
        assert_eq!(counters.remove(name), Some(serde_json::json!(0)), "{name}");
    }
    assert_eq!(written, string_era_document());
    let read: StatusReport = serde_json::from_value(string_era_document()).expect("deserialize");
    assert_eq!(read, typed);
}

#[test]
fn an_old_status_document_without_the_newer_fields_still_reads() {
    // As an older meshd served it: no encryption, rotation, datapath, ... fields.
    let old: StatusReport = serde_json::from_value(serde_json::json!({
        "node": "n1", "public_key": "k", "mode": "userspace", "interface": "meshd0",
        "ifindex": 3, "adopted_device": false, "listen_port": 51820, "mtu": 1420,
        "endpoints": [], "pod_cidrs": [], "known_nodes": [], "peers": [], "conflicts": [],
        "malformed": [], "counters": {"malformed_records": 0, "reconciles": 1,
        "reconcile_errors": 0, "peer_ops": 0, "route_ops": 0}, "converged": true
    }))
    .expect("an old document reads");
    assert_eq!(old.mode, ActiveMode::Userspace);
    assert_eq!(old.encryption, Encryption::Enabled);
    assert_eq!(old.rotation.phase, RotationPhase::Idle);
    assert!(old.datapath.is_none());
    // A value outside the closed set is an error, not a silent default.
    let mut bad = string_era_document();
    bad["encryption"] = "sometimes".into();
    assert!(serde_json::from_value::<StatusReport>(bad).is_err());
}

#[tokio::test]
async fn serves_the_current_status_and_reports_starting_before_first_reconcile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/meshd.sock");
    let status: SharedStatus = Arc::new(RwLock::new(None));
    let (commands, mut rx) = tokio::sync::mpsc::channel(1);
    let server = tokio::spawn(serve(path.clone(), status.clone(), commands));
    // Wait for the socket to appear.
    for _ in 0..100 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let err = query(&path).await.expect_err("no status yet");
    assert!(matches!(err, ControlError::Decode { .. }), "{err}");
    *status.write().await = Some(sample());
    let got = query(&path).await.expect("status");
    assert_eq!(got, sample());
    // rotate-key is handed to the daemon's loop and answered with its outcome.
    let daemon = tokio::spawn(async move {
        let Some(Command::RotateKey(reply)) = rx.recv().await else {
            panic!("expected a rotate-key command")
        };
        reply
            .send(Err("peer n2 did not move".into()))
            .expect("reply");
    });
    let outcome = rotate_key(&path).await.expect("outcome");
    assert!(!outcome.ok);
    assert_eq!(outcome.message, "peer n2 did not move");
    assert_eq!(outcome.public_keys, ["k"]);
    daemon.await.expect("daemon task");
    server.abort();
}

#[tokio::test]
async fn connect_error_names_the_socket() {
    let err = query(Path::new("/nonexistent/meshd.sock"))
        .await
        .expect_err("no daemon");
    assert!(err.to_string().contains("/nonexistent/meshd.sock"));
    // The cause is the source, printed once by `{:#}`, not repeated in the message.
    let printed = format!("{:#}", anyhow::Error::new(err));
    assert_eq!(printed.matches("No such file").count(), 1, "{printed}");
}
