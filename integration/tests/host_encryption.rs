//! Node-to-node (host) encryption in real labs: a node's own traffic to a peer node goes
//! through the tunnel once the tunnel is proven up, the underlay capture holds no cleartext of
//! it, a broken tunnel fails open (the node is never cut off its peers) and heals, the API
//! servers' addresses (the `kubernetes` Service's endpoints) are never tunnelled, and the
//! listen port changes live from the ConfigMap. Needs root.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use integration::capture::{analyse, Capture, CapturePolicy};
use integration::lab::{self, ping, Lab};
use testkit::netns;

/// The ICMP payload pattern used as the cleartext canary ("MESHDHOST" + "!!").
const CANARY_HEX: &str = "4d455348444844534f535421";
const CANARY: &[u8] = b"MESHDHDSOST!";

fn addr(st: &serde_json::Value, node: usize, v6: bool) -> String {
    st["nodes"][node]["underlay_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .map(|a| a.split('/').next().unwrap().to_string())
        .find(|a| a.contains(':') == v6)
        .unwrap()
}

fn encrypted_hosts(st: &serde_json::Value, node: usize) -> Vec<String> {
    st["nodes"][node]["status"]["encrypted_hosts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes the device of node `node` sent to its peer `peer_node`.
fn tx_to(st: &serde_json::Value, node: usize, peer_node: &str) -> u64 {
    st["nodes"][node]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer_node)
        .and_then(|p| p["tx_bytes"].as_u64())
        .unwrap_or(0)
}

/// Ping `dst` from node namespace `ns` with the canary as payload; true when all came back.
fn host_ping(ns: &str, dst: &str, count: u32) -> bool {
    netns::run_in_unchecked(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-s",
            "200",
            "-p",
            CANARY_HEX,
            dst,
        ],
    )
    .is_ok_and(|o| o.status.success())
}

/// Run `traffic` while the lab's underlay is captured to `pcap`; the capture's analysis, with
/// the canary as marker.
fn captured(
    lab: &integration::LabStatus,
    pcap: &std::path::Path,
    traffic: impl FnOnce(),
) -> integration::capture::CaptureReport {
    let capture = Capture::start(&lab.capture.namespace, &lab.capture.interface, pcap).unwrap();
    traffic();
    std::thread::sleep(Duration::from_millis(300));
    analyse(
        &capture.stop().unwrap(),
        &CapturePolicy {
            markers: vec![CANARY.to_vec()],
            ..lab.capture_policy()
        },
    )
    .unwrap()
}

/// Resumes a stopped process when dropped (so a failing test never leaves meshd frozen).
struct Thaw(String);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = netns::run("kill", &["-CONT", &self.0]);
    }
}

/// The lab API server's address (its kubeconfig's server host).
fn api_server_endpoint(st: &serde_json::Value) -> String {
    let kubeconfig = std::fs::read_to_string(st["kubeconfig"].as_str().unwrap()).unwrap();
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap();
    let url = server.trim().trim_start_matches("http://");
    url.rsplit_once(':').unwrap().0.to_string()
}

/// Rewrites the lab API server's `default/kubernetes` EndpointSlice (as kube-apiserver's
/// endpoint reconciler would when the API servers move) to one IPv4 `address`, through the
/// API from the underlay namespace where the server listens.
fn set_api_server_endpoint(st: &serde_json::Value, address: &str) {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, Patch, PatchParams};
    let kubeconfig = std::path::PathBuf::from(st["kubeconfig"].as_str().unwrap());
    let underlay = st["capture"]["namespace"].as_str().unwrap();
    testkit::netns::within(underlay, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let client = meshd::registry::kube::client::client(Some(&kubeconfig))
                    .await
                    .unwrap();
                let api: Api<EndpointSlice> = Api::namespaced(client, "default");
                let patch = serde_json::json!({
                    "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
                });
                api.patch("kubernetes", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .unwrap();
            });
    })
    .unwrap();
}

fn wait_both_encrypted(lab: &Lab, timeout: Duration) -> serde_json::Value {
    lab.wait_for(
        "both nodes to encrypt host traffic to each other",
        timeout,
        |s| {
            let (a1, a2) = (addr(s, 0, false), addr(s, 1, false));
            encrypted_hosts(s, 0).contains(&a2) && encrypted_hosts(s, 1).contains(&a1)
        },
    )
    .unwrap()
}

#[test]
fn host_traffic_is_encrypted_fails_open_when_the_tunnel_breaks_and_heals() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    testkit::require_tool("kill");
    let lab = Lab::up_with(2, 1, &["--host-encryption", "true", "--keepalive", "2"]).unwrap();
    let st = wait_both_encrypted(&lab, Duration::from_secs(30));
    let (n1_ns, n2_ns) = (
        st["nodes"][0]["namespace"].as_str().unwrap().to_string(),
        st["nodes"][1]["namespace"].as_str().unwrap().to_string(),
    );
    let (n2_v4, n2_v6) = (addr(&st, 1, false), addr(&st, 1, true));
    assert!(
        encrypted_hosts(&st, 0).contains(&n2_v6),
        "both families: {:?}",
        encrypted_hosts(&st, 0)
    );
    let before = tx_to(&st, 0, "n2");

    // Node-to-node traffic, both families, while the underlay is captured.
    let dir = tempfile::tempdir().unwrap();
    let typed = lab.status().unwrap();
    let report = captured(&typed, &dir.path().join("host.pcap"), || {
        assert!(
            host_ping(&n1_ns, &n2_v4, 10),
            "host ping v4 through the tunnel"
        );
        assert!(
            host_ping(&n1_ns, &n2_v6, 10),
            "host ping v6 through the tunnel"
        );
        // Bulk TCP between the nodes, both families: the routes through the tunnel give TCP the
        // tunnel's MTU, so full-size segments fit.
        for (port, dst) in [(7100, &n2_v4), (7101, &n2_v6)] {
            let from = integration::LabPod {
                name: "n1-host".into(),
                node: "n1".into(),
                namespace: n1_ns.clone(),
                ..Default::default()
            };
            let ok = integration::verify::tcp_transfer(
                &from,
                &n2_ns,
                dst.parse().unwrap(),
                port,
                4 << 20,
            )
            .unwrap();
            assert!(
                ok,
                "4 MiB over TCP from n1 to n2 ({dst}) through the tunnel"
            );
        }
    });
    assert_eq!(report.marker_hit_count, 0, "{}", report.summary());
    assert!(report.wireguard_packets >= 40, "{}", report.summary());
    // The peers' byte counts in the status are read at each reconcile pass: give the next
    // passes a few seconds to catch up with the transfer that just ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = tx_to(&lab.status_json().unwrap(), 0, "n2");
    while after < before + (8 << 20) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        after = tx_to(&lab.status_json().unwrap(), 0, "n2");
    }
    assert!(
        after >= before + (8 << 20),
        "n1's host traffic went through its tunnel to n2: {before} -> {after} bytes"
    );

    // Break the tunnel the way a stale registry does (Calico's lockout: a node that cannot
    // reach the API server never learns a peer's new key): n2's meshd is frozen and n1 is
    // told a wrong key for n2. n1 stops hearing n2 and fails open within three keepalive
    // intervals: its host traffic to n2 leaves in clear instead of vanishing into a dead
    // tunnel, so it can reach the API server and learn the right key.
    let n2_pid = st["nodes"][1]["meshd_pid"].as_u64().unwrap().to_string();
    let registry = st["registry_dir"].as_str().unwrap().to_string();
    netns::run("kill", &["-STOP", &n2_pid]).unwrap();
    let _thaw = Thaw(n2_pid.clone());
    let path = format!("{registry}/n2.json");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // Both key slots: with one slot still up, host traffic would (rightly) take that one.
    for field in ["publicKey", "secondKey"] {
        record[field] = keyexchange::PrivateKey::generate()
            .public_key()
            .to_string()
            .into();
    }
    std::fs::write(&path, record.to_string()).unwrap();
    lab.wait_for(
        "n1 to stop encrypting to n2",
        Duration::from_secs(20),
        |s| !encrypted_hosts(s, 0).contains(&n2_v4),
    )
    .unwrap();
    let report = captured(&typed, &dir.path().join("open.pcap"), || {
        host_ping(&n1_ns, &n2_v4, 3);
    });
    assert!(
        report.marker_hit_count >= 3,
        "n1 failed open: its pings cross in clear: {}",
        report.summary()
    );
    // n2's meshd comes back, restores its record; both sides hear each other again and host
    // traffic is encrypted again without anyone stepping in.
    netns::run("kill", &["-CONT", &n2_pid]).unwrap();
    wait_both_encrypted(&lab, Duration::from_secs(60));
    assert!(host_ping(&n2_ns, &addr(&st, 0, false), 5));
    assert!(host_ping(&n1_ns, &n2_v4, 5));

    // Pods are unaffected throughout.
    let typed = lab.status().unwrap();
    let dst = typed.pods_on("n2").next().unwrap().ipv4.clone().unwrap();
    assert!(ping(typed.pods_on("n1").next().unwrap(), &dst, 3));
}

#[test]
fn host_encryption_and_listen_port_change_live_from_the_configmap() {
    testkit::require_tools(lab::TOOLS);
    // The mock: the test rewrites the `kubernetes` EndpointSlice as discovery.k8s.io/v1,
    // which v1.20 does not serve (and its endpoint reconciler would overwrite).
    let lab = Lab::up_with(2, 1, &["--registry", "kubernetes", "--apiserver", "mock"]).unwrap();
    let st = lab.status_json().unwrap();
    assert!(encrypted_hosts(&st, 0).is_empty(), "off by default");
    lab.meshctl(&["lab", "set", "host-encryption=true", "keepalive=2"])
        .unwrap();
    let st = wait_both_encrypted(&lab, Duration::from_secs(30));

    // The `kubernetes` Service's endpoints say an API server runs on n2 (as on a control-plane
    // node): n1 stops tunnelling host traffic to that address, live, and keeps tunnelling
    // n2's other one.
    let lab_api_server = api_server_endpoint(&st);
    set_api_server_endpoint(&st, &addr(&st, 1, false));
    lab.wait_for(
        "n1 to stop tunnelling the API server's address on n2",
        Duration::from_secs(20),
        |s| {
            let hosts = encrypted_hosts(s, 0);
            !hosts.contains(&addr(s, 1, false)) && hosts.contains(&addr(s, 1, true))
        },
    )
    .unwrap();
    set_api_server_endpoint(&st, &lab_api_server);
    wait_both_encrypted(&lab, Duration::from_secs(20));

    lab.meshctl(&[
        "lab",
        "set",
        "host-encryption=true",
        "keepalive=2",
        "listen-port=51830",
    ])
    .unwrap();
    let st = lab
        .wait_for("both nodes on the new port", Duration::from_secs(30), |s| {
            (0..2).all(|i| s["nodes"][i]["status"]["listen_port"] == 51830)
                && (0..2).all(|i| {
                    s["nodes"][i]["peers"].as_array().is_some_and(|p| {
                        p.iter().all(|p| {
                            p["endpoint"]
                                .as_str()
                                .is_some_and(|e| e.ends_with(":51830"))
                        })
                    })
                })
        })
        .unwrap();
    let typed = lab.status().unwrap();
    let (a, b) = (
        typed.pods_on("n1").next().unwrap(),
        typed.pods_on("n2").next().unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (b4, b6) = (b.ipv4.clone().unwrap(), b.ipv6.clone().unwrap());
    while !(ping(a, &b4, 2) && ping(a, &b6, 2)) {
        assert!(
            std::time::Instant::now() < deadline,
            "pods unreachable after the port change"
        );
    }
    let n1_ns = st["nodes"][0]["namespace"].as_str().unwrap();
    assert!(host_ping(n1_ns, &addr(&st, 1, false), 3));
    // The cluster audit agrees: every node on the new port, peers programmed with it.
    let (code, report) = lab.audit_cluster().unwrap();
    assert_eq!(code, 0, "{report:#}");
}
