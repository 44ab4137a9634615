//! meshd on the Kubernetes backend in the lab: every node's meshd publishes its key as Node
//! annotations on the lab's API server, takes its pod CIDRs from its Node's spec.podCIDRs and
//! reads its peers from the Nodes; the encryption
//! toggle in the `meshd-config` ConfigMap is applied live under an established TCP connection;
//! and every request meshd made is granted by `deploy/`'s RBAC, every grant there used.
//!
//! The API server is the real kube-apiserver (v1.20.2 with etcd, `lab up --apiserver
//! kube-apiserver`: the test fails naming `scripts/kube-apiserver.sh` when it is not built).
//! meshd authenticates as its service account, bound by exactly the RBAC `kubectl kustomize
//! deploy/` renders, so the real authorizer judges every request, and the server's audit log
//! says which were made. Everything else is real too: namespaces, meshd processes, WireGuard,
//! tc programs, captures. Needs root; each lab is uniquely named and torn down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::time::Duration;

use integration::apiserver::audit::ApiRequest;
use integration::capture::{analyse, Capture};
use integration::kube_apiserver::{
    audit, service_account_user, MESHD_NAMESPACE, MESHD_SERVICE_ACCOUNT,
};
use integration::lab::{self, bin, ping, pod_addrs, sockaddr, Lab};
use integration::rbac::Grants;
use integration::verify::{finish, start_sink};
use testkit::netns;

/// Ping until one echo comes back or `limit` passes.
fn ping_within(from: &integration::LabPod, dst: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if ping(from, dst, 1) {
            return true;
        }
    }
    false
}

/// Wall-clock milliseconds (shared with the senders in the pods' namespaces).
fn unix_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Wait until every node runs with `encryption` and has converged.
fn wait_mode(lab: &Lab, encryption: &str, peers: usize) {
    lab.wait_for(
        &format!("every node to run with encryption {encryption}"),
        Duration::from_secs(20),
        |s| {
            s["nodes"].as_array().unwrap().iter().all(|n| {
                n["status"]["encryption"] == encryption
                    && n["status"]["converged"] == true
                    && n["peers"].as_array().is_some_and(|p| p.len() == peers)
            })
        },
    )
    .unwrap();
}

#[test]
fn the_mesh_runs_on_node_annotations_and_the_encryption_toggle_keeps_tcp_connections() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    integration::kube_apiserver::require();
    let lab = Lab::up_with(
        3,
        1,
        &["--registry", "kubernetes", "--apiserver", "kube-apiserver"],
    )
    .unwrap();
    let st = lab.status().unwrap();
    let js = lab.status_json().unwrap();
    assert_eq!(js["registry"], "kubernetes");
    wait_mode(&lab, "enabled", 2);
    // Pod CIDRs come from each Node's spec.podCIDRs (which the lab's API server holds, as a
    // node IPAM controller would set them), not from flags.
    let js = lab.status_json().unwrap();
    for n in js["nodes"].as_array().unwrap() {
        let pid = n["meshd_pid"].as_u64().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            args.iter().any(|a| a.ends_with("meshd")) && !args.iter().any(|a| a == "--pod-cidr"),
            "{args:?}"
        );
        assert_eq!(n["status"]["pod_cidrs"], n["pod_cidrs"], "{n:#}");
        assert_eq!(n["pod_cidrs"].as_array().unwrap().len(), 2, "{n:#}");
    }
    let from = st.pods_on("n1").next().unwrap().clone();
    let to = st.pods_on("n2").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(&to).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Encrypted: only WireGuard crosses.
    let cap = Capture::start(
        &st.capture.namespace,
        &st.capture.interface,
        &dir.path().join("enabled.pcap"),
    )
    .unwrap();
    assert!(ping(&from, &dst4.to_string(), 2) && ping(&from, &dst6.to_string(), 2));
    let report = analyse(&cap.stop().unwrap(), &st.capture_policy()).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    assert!(report.wireguard_packets >= 8, "{}", report.summary());

    // Two TCP connections, one each way (n1 → n2 over IPv4, n2 → n1 over IPv6), paced and
    // running until the test says stop — after the last switch — across enabled → disabled →
    // permissive → enabled.
    let (_, src6) = pod_addrs(&from).unwrap();
    let stop = dir.path().join("stop-streams");
    let tool = bin("lab-traffic");
    let stream = |sink_pod: &integration::LabPod,
                  listen: &str,
                  sender_pod: &integration::LabPod,
                  to: String| {
        let sink = start_sink(
            &sink_pod.namespace,
            &[
                "tcp-sink",
                "--listen",
                listen,
                "--count",
                "1",
                "--timeout-s",
                "180",
            ],
        )
        .unwrap();
        // Killed if the test fails before it ends.
        let sender = netns::ChildGuard::new(
            netns::spawn_in(
                &sender_pod.namespace,
                &[
                    &tool.to_string_lossy(),
                    "tcp-send",
                    "--to",
                    &to,
                    // 100 s at this rate, far more than the toggles take: the stop file ends it
                    // (and the cap bounds it should the test fail first).
                    "--bytes",
                    "30000000",
                    "--rate-kbyte-s",
                    "300",
                    "--until-file",
                    &stop.to_string_lossy(),
                ],
            )
            .unwrap(),
        );
        (sink, sender)
    };
    let forward = stream(&to, "0.0.0.0:5500", &from, sockaddr(dst4, 5500));
    let backward = stream(&from, "[::]:5501", &to, sockaddr(src6, 5501));
    std::thread::sleep(Duration::from_secs(2));
    lab.meshctl(&["lab", "set", "encryption=disabled"]).unwrap();
    wait_mode(&lab, "disabled", 0);
    let js = lab.status_json().unwrap();
    assert!(js["nodes"][0]["peers"].as_array().unwrap().is_empty());
    // The cluster audit sees it: every node's encryption check fails.
    let (code, report) = lab.audit_cluster().unwrap();
    assert_eq!(code, 1, "{report:#}");
    let failed: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false && f["check"] == "encryption")
        .collect();
    assert_eq!(failed.len(), 3, "{report:#}");
    // The plain routed path carries pod traffic now, in clear, as the setting says.
    let cap = Capture::start(
        &st.capture.namespace,
        &st.capture.interface,
        &dir.path().join("disabled.pcap"),
    )
    .unwrap();
    assert!(ping(&from, &dst6.to_string(), 2));
    std::thread::sleep(Duration::from_secs(2));
    let report = analyse(&cap.stop().unwrap(), &st.capture_policy()).unwrap();
    assert!(
        report.plaintext_pod_count > 0,
        "disabled: pod traffic should take the plain path: {}",
        report.summary()
    );
    // An invalid value is rejected; the last good settings stay in force.
    lab.meshctl(&["lab", "set", "encryption=sometimes"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    wait_mode(&lab, "disabled", 0);

    // Permissive: the tunnel is back and carries everything (every peer is present).
    lab.meshctl(&["lab", "set", "encryption=permissive"])
        .unwrap();
    wait_mode(&lab, "permissive", 2);
    let cap = Capture::start(
        &st.capture.namespace,
        &st.capture.interface,
        &dir.path().join("permissive.pcap"),
    )
    .unwrap();
    // Peers were just re-programmed: a handshake that raced the other side's reconcile is
    // retried by WireGuard after 5 s, so give the first echo that long.
    assert!(ping_within(
        &from,
        &dst6.to_string(),
        Duration::from_secs(12)
    ));
    std::thread::sleep(Duration::from_secs(1));
    let report = analyse(&cap.stop().unwrap(), &st.capture_policy()).unwrap();
    assert!(
        report.is_clean(),
        "permissive with every peer: only WireGuard: {}",
        report.summary()
    );
    let js = lab.status_json().unwrap();
    assert_eq!(
        js["nodes"][0]["status"]["datapath"]["underlay_mode"],
        "permissive"
    );

    lab.meshctl(&["lab", "set", "encryption=enabled"]).unwrap();
    wait_mode(&lab, "enabled", 2);
    let last_switch = unix_ms();
    // Enabled again: the same peers, untouched, so traffic never stalls. Both streams carry
    // data under the final mode for a while before they are stopped.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&stop, b"").unwrap();
    for (name, (sink, mut sender)) in [("n1 → n2, IPv4", forward), ("n2 → n1, IPv6", backward)]
    {
        let out = sender.take().unwrap().wait_with_output().unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tcp-send {name}: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let (ok, received) = finish(sink).unwrap();
        eprintln!("tcp {name} across the toggles: sender {sent} / sink {received}");
        assert_eq!(
            sent["ok"], true,
            "{name}: the connection broke or corrupted: {sent}"
        );
        assert!(ok, "{name}: sink: {received}");
        assert_eq!(
            sent["stopped_by_file"], true,
            "{name}: the stream must last until it is told to stop: {sent}"
        );
        let ended = sent["ended_unix_ms"].as_u64().unwrap();
        assert!(
            ended > last_switch + 2000,
            "{name}: the stream must carry data after the last switch ({last_switch}): {sent}"
        );
    }

    // Encrypted again: only WireGuard crosses, strict mode is back.
    let cap = Capture::start(
        &st.capture.namespace,
        &st.capture.interface,
        &dir.path().join("re-enabled.pcap"),
    )
    .unwrap();
    assert!(ping(&from, &dst4.to_string(), 2) && ping(&from, &dst6.to_string(), 2));
    let report = analyse(&cap.stop().unwrap(), &st.capture_policy()).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    let js = lab.status_json().unwrap();
    for n in js["nodes"].as_array().unwrap() {
        assert_eq!(n["status"]["datapath"]["underlay_mode"], "enforce", "{n:#}");
    }
    // And the cluster audit (keys from the Node annotations, status from every node) passes
    // every check but one: the cleartext the disabled period sent is still on the counters,
    // and the audit asks for it to be explained.
    let (code, report) = lab.audit_cluster().unwrap();
    assert_eq!(report["nodes"], 3);
    let failed: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false)
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert!(
        !failed.is_empty() && failed.iter().all(|c| *c == "plaintext"),
        "{report:#}"
    );
    assert_eq!(code, 1);
    let peers_ok = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "peer" && f["ok"] == true)
        .count();
    assert_eq!(peers_ok, 6, "every ordered pair programmed: {report:#}");

    check_mtu_is_live(&lab);
    check_last_good_settings_survive_a_restart(&lab);
    check_rbac(&lab);
}

/// A meshd restarted while the ConfigMap holds an invalid value starts from the last good
/// settings it saved, not from its flags (`--encryption enabled` in the lab).
fn check_last_good_settings_survive_a_restart(lab: &Lab) {
    lab.meshctl(&["lab", "set", "encryption=permissive"])
        .unwrap();
    wait_mode(lab, "permissive", 2);
    lab.meshctl(&["lab", "set", "encryption=sometimes"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    lab.meshctl(&["lab", "stop-node", "n1"]).unwrap();
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    lab.wait_for(
        "n1's restarted meshd to run with its last good settings",
        Duration::from_secs(30),
        |s| {
            let n1 = &s["nodes"][0];
            n1["running"] == true
                && n1["status"]["encryption"] == "permissive"
                && n1["status"]["converged"] == true
        },
    )
    .unwrap();
    lab.meshctl(&["lab", "set", "encryption=enabled"]).unwrap();
    wait_mode(lab, "enabled", 2);
}

/// Every node's meshd runs with `mtu` (its status) and installs it in the CNI configuration
/// that new pods are created with.
fn wait_mtu(lab: &Lab, mtu: u64) {
    lab.wait_for(
        &format!("every node to run with MTU {mtu}"),
        Duration::from_secs(20),
        |s| {
            s["nodes"].as_array().unwrap().iter().all(|n| {
                let state_dir = std::path::Path::new(n["state_dir"].as_str().unwrap());
                let conflist = state_dir.with_file_name("cni").join("10-meshd.conflist");
                let conf: Option<serde_json::Value> = std::fs::read_to_string(&conflist)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
                n["status"]["mtu"] == mtu && conf.is_some_and(|c| c["plugins"][0]["mtu"] == mtu)
            })
        },
    )
    .unwrap();
}

/// The MTU is live: an override reaches the devices and the CNI configuration (so pods created
/// after the change get it), and `auto` goes back to the derived MTU.
fn check_mtu_is_live(lab: &Lab) {
    let js = lab.status_json().unwrap();
    let auto = js["nodes"][0]["status"]["mtu"].as_u64().unwrap();
    wait_mtu(lab, auto);
    lab.meshctl(&["lab", "set", "mtu=1300"]).unwrap();
    wait_mtu(lab, 1300);
    lab.meshctl(&["lab", "set", "mtu=auto"]).unwrap();
    wait_mtu(lab, auto);
}

/// Every request the nodes' meshd made to the real API server over the whole run (its audit
/// log, as `system:serviceaccount:meshd-system:meshd`, from the nodes' addresses) was allowed
/// by the real authorizer under `deploy/`'s RBAC, and every grant there was used: the
/// ClusterRole and Role are exactly what meshd needs.
fn check_rbac(lab: &Lab) {
    let js = lab.status_json().unwrap();
    let kubeconfig = std::path::PathBuf::from(js["kubeconfig"].as_str().unwrap());
    let log = kubeconfig.with_file_name(meshd_lab::kube_apiserver::lab::LAB_AUDIT_LOG);
    let meshd_addresses: Vec<std::net::IpAddr> = js["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["underlay_addresses"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    let user = service_account_user(MESHD_NAMESPACE, MESHD_SERVICE_ACCOUNT);
    let audited: Vec<audit::AuditedRequest> = audit::read_file(&log)
        .unwrap()
        .into_iter()
        .filter(|r| r.user == user)
        .collect();
    assert!(
        !audited.is_empty(),
        "no request by {user} in {}",
        log.display()
    );
    // meshd on the nodes, nobody else, used the service account's token (the lab's own
    // tooling is the admin).
    let elsewhere: BTreeSet<String> = audited
        .iter()
        .filter(|r| !meshd_addresses.contains(&r.request.client))
        .map(|r| format!("{} {} from {}", r.request.verb, r.uri, r.request.client))
        .collect();
    assert!(elsewhere.is_empty(), "{elsewhere:#?}");
    // The real authorizer refused nothing meshd asked for.
    let forbidden: BTreeSet<String> = audited
        .iter()
        .filter(|r| r.code == 403)
        .map(|r| {
            format!(
                "{} {} ({})",
                r.request.verb,
                r.request.rbac_resource(),
                r.uri
            )
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "the API server refused meshd: {forbidden:#?}"
    );
    let requests: Vec<ApiRequest> = audited.into_iter().map(|r| r.request).collect();
    let rbac = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/rbac.yaml"),
    )
    .unwrap();
    let grants = Grants::from_yaml(&rbac, "meshd-system", "meshd").unwrap();
    // The rule matching that finds unused grants agrees with the authorizer on every request.
    let denied: BTreeSet<String> = requests
        .iter()
        .filter(|r| !grants.allows(r))
        .map(|r| format!("{r:?}"))
        .collect();
    assert!(
        denied.is_empty(),
        "allowed by the API server but not by integration::rbac's reading of deploy/: {denied:#?}"
    );
    // RecordRefused Events are written only when a record is refused, and this lab has no
    // hostile Node: kube_real.rs shows those two grants used, and allowed by the real
    // authorizer, by a refusal.
    let refusal_events = [
        "create core/events in default",
        "patch core/events in default",
    ];
    let unused: Vec<String> = grants
        .unused(&requests)
        .iter()
        .map(ToString::to_string)
        .filter(|g| !refusal_events.contains(&g.as_str()))
        .collect();
    assert!(
        unused.is_empty(),
        "RBAC grants meshd never used: {unused:?}"
    );
    let used: BTreeSet<String> = requests
        .iter()
        .map(|r| format!("{} {}/{}", r.verb, r.api_group, r.rbac_resource()))
        .collect();
    eprintln!("meshd's API requests ({} in all): {used:?}", requests.len());
}
