//! Flow events on a real lab (issue 22), read from each node's control socket (`flows`,
//! `flows follow`; reached through `/proc/<meshd pid>/root`, the node's mount namespace): a
//! NetworkPolicy drop appears within 1 s naming both pods and the policy; a forwarded flow
//! has a first-packet event naming the peer node and aggregates that add up to the packets
//! sent; a spoofed packet is a `spoofed-source` drop; after a node's record is removed, pod
//! traffic towards it is a `strict-mode` drop on the way out; with a one-page ring buffer and
//! a flood of drops, every event is delivered or counted as lost. Needs root; labs are
//! uniquely named and torn down on drop. Run with `--test-threads=1` (the lab's meshd takes
//! its flow settings from this process's environment).
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration::lab::{self, Lab};
use meshd_lab::plan::applied_pod_ns;
use serde_json::Value;
use testkit::netns;

const PORT: u16 = 7811;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: fl, labels: {role: client}}
spec: {nodeName: n1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: fl, labels: {app: srv}}
spec: {nodeName: n2, containers: [{name: c}]}
"#;

const DENY_SERVER: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-srv, namespace: fl}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
"#;

fn apply(lab: &Lab, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.yaml");
    std::fs::write(&path, text).unwrap();
    lab.meshctl(&["lab", "apply", "-f", &path.to_string_lossy()])
        .unwrap();
}

/// Node `node`'s control socket, seen from this process.
fn socket(lab: &Lab, node: &str) -> PathBuf {
    let st = lab.status().unwrap();
    let pid = st.node(node).unwrap().meshd_pid.unwrap();
    PathBuf::from(format!("/proc/{pid}/root/run/meshd/meshd.sock"))
}

/// `flows` on `node`: the history, one JSON object per line.
fn history(lab: &Lab, node: &str) -> Vec<Value> {
    let mut stream = UnixStream::connect(socket(lab, node)).unwrap();
    stream.write_all(b"flows\n").unwrap();
    BufReader::new(stream)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// `flows follow` on `node`: every line as it arrives, with when it arrived.
fn follow(lab: &Lab, node: &str) -> mpsc::Receiver<(Instant, Value)> {
    let mut stream = UnixStream::connect(socket(lab, node)).unwrap();
    stream.write_all(b"flows follow\n").unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx
                .send((Instant::now(), serde_json::from_str(&line).unwrap()))
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The lab's registry directory.
fn registry_dir(lab: &Lab) -> PathBuf {
    let st = lab.status_json().unwrap();
    PathBuf::from(st["registry_dir"].as_str().unwrap())
}

/// Pod `ns/name`'s address of the family of `v4`, from its object in the registry.
fn pod_ip(lab: &Lab, pod: &str, v4: bool) -> IpAddr {
    let path = registry_dir(lab)
        .join("objects/pods")
        .join(format!("{pod}.json"));
    let object: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    object["status"]["podIPs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["ip"].as_str()?.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv4() == v4)
        .unwrap()
}

/// A UDP socket in pod `ns/name`'s network namespace, bound to `addr`.
fn udp_in(lab: &Lab, pod: &str, addr: SocketAddr) -> UdpSocket {
    let (namespace, name) = pod.split_once('/').unwrap();
    netns::within(&applied_pod_ns(lab.name(), namespace, name), || {
        UdpSocket::bind(addr).unwrap()
    })
    .unwrap()
}

fn is_flow(v: &Value, reason: &str, event: &str) -> bool {
    v["flow"]["reason"] == reason && v["flow"]["event"] == event
}

fn ports(v: &Value) -> (u64, u64) {
    let udp = &v["flow"]["l4"]["UDP"];
    (
        udp["source_port"].as_u64().unwrap_or(0),
        udp["destination_port"].as_u64().unwrap_or(0),
    )
}

#[test]
fn policy_drops_forwarded_flows_and_spoofed_sources_are_reported() {
    testkit::require_tools(lab::TOOLS);
    std::env::set_var("MESHD_FLOW_REPORT_SECS", "1");
    let lab = Lab::up(2, 1).unwrap();
    std::env::remove_var("MESHD_FLOW_REPORT_SECS");
    apply(&lab, OBJECTS);
    // Pod identity travels in each node's endpoint batch: traffic starts once every node
    // knows every pod, so the first packet is named at both ends.
    let pods = std::fs::read_dir(registry_dir(&lab).join("objects/pods"))
        .unwrap()
        .flat_map(|ns| std::fs::read_dir(ns.unwrap().path()).unwrap())
        .count();
    lab.wait_for(
        "every node to know every pod",
        Duration::from_secs(20),
        |s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["status"]["policy"]["pods_known"] == pods)
        },
    )
    .unwrap();
    let server = pod_ip(&lab, "fl/server", true);
    let client = pod_ip(&lab, "fl/client", true);
    let listener = udp_in(&lab, "fl/server", SocketAddr::new(server, PORT));
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let sender = udp_in(&lab, "fl/client", SocketAddr::new(client, 0));
    let sport = u64::from(sender.local_addr().unwrap().port());

    // Allowed: five datagrams of one flow. n1 reports the first packet into the tunnel
    // (peer n2, both pods named), then aggregates adding up to the other four.
    let mut got = 0;
    for _ in 0..20 {
        sender
            .send_to(b"flow", SocketAddr::new(server, PORT))
            .unwrap();
        if listener.recv_from(&mut [0u8; 16]).is_ok() {
            got += 1;
            if got == 5 {
                break;
            }
        }
    }
    assert_eq!(got, 5, "the allowed flow did not get through");
    let sent_before_check = {
        // Every datagram sent so far (some may have been lost before the path was warm).
        let mut counted = 0u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = Vec::new();
        while Instant::now() < deadline {
            lines = history(&lab, "n1");
            let flow: Vec<&Value> = lines
                .iter()
                .filter(|v| {
                    v["flow"]["reason"] == "to-tunnel" && ports(v) == (sport, u64::from(PORT))
                })
                .collect();
            counted = flow
                .iter()
                .map(|v| v["flow"]["packets"].as_u64().unwrap())
                .sum();
            if counted >= 5 && flow.iter().any(|v| v["flow"]["event"] == "aggregate") {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let first = lines
            .iter()
            .find(|v| {
                is_flow(v, "to-tunnel", "first-packet") && ports(v) == (sport, u64::from(PORT))
            })
            .unwrap_or_else(|| panic!("no first packet on n1: {lines:#?}"));
        assert_eq!(first["flow"]["verdict"], "FORWARDED");
        assert_eq!(first["flow"]["peer_node"], "n2", "{first:#}");
        assert_eq!(first["flow"]["source"]["pod_name"], "client", "{first:#}");
        assert_eq!(
            first["flow"]["destination"]["pod_name"], "server",
            "{first:#}"
        );
        assert_eq!(first["flow"]["destination"]["namespace"], "fl");
        assert_eq!(first["flow"]["trace_observation_point"], "FROM_ENDPOINT");
        assert_eq!(first["node_name"], "n1");
        counted
    };
    // Datagrams that got through = datagrams sent after warm-up: the counts are those sent
    // on the flow (first + aggregates), never fewer than were delivered.
    assert!(
        sent_before_check >= 5,
        "first + aggregates count {sent_before_check} < 5"
    );

    // The policy: the server's ingress is closed. Followed on n2 while we send.
    let follower = follow(&lab, "n2");
    apply(&lab, DENY_SERVER);
    let started = Instant::now();
    let mut denied = None;
    while denied.is_none() && started.elapsed() < Duration::from_secs(20) {
        let sent_at = Instant::now();
        sender
            .send_to(b"deny?", SocketAddr::new(server, PORT))
            .unwrap();
        while let Ok((at, line)) = follower.recv_timeout(Duration::from_millis(300)) {
            if is_flow(&line, "policy-denied", "drop") {
                denied = Some((at.duration_since(sent_at), line));
                break;
            }
        }
    }
    let (latency, line) = denied.expect("no policy drop reported on n2 within 20 s");
    assert!(
        latency < Duration::from_secs(1),
        "policy drop reported after {latency:?}"
    );
    let flow = &line["flow"];
    assert_eq!(flow["verdict"], "DROPPED");
    assert_eq!(flow["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(flow["traffic_direction"], "INGRESS");
    assert_eq!(flow["source"]["pod_name"], "client", "{line:#}");
    assert_eq!(flow["destination"]["pod_name"], "server", "{line:#}");
    assert_eq!(flow["ingress_denied_by"][0]["name"], "deny-srv", "{line:#}");
    assert_eq!(flow["ingress_denied_by"][0]["namespace"], "fl");

    // The operator's view of the same drop: `meshctl lab observe` merges the nodes' histories
    // and filters them; its JSON lines are the stream lines, its table names the policy.
    let observed = lab
        .meshctl(&[
            "lab",
            "observe",
            "--from",
            "fl/client",
            "--to",
            "fl/server",
            "--verdict",
            "dropped",
            "--reason",
            "policy-denied",
            "-o",
            "json",
        ])
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(observed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let drops: Vec<&Value> = lines.iter().filter(|l| l.get("flow").is_some()).collect();
    assert!(
        !drops.is_empty(),
        "lab observe showed no policy drop: {lines:#?}"
    );
    for drop in &drops {
        assert_eq!(drop["flow"]["verdict"], "DROPPED", "{drop:#}");
        assert_eq!(
            drop["flow"]["destination"]["pod_name"], "server",
            "{drop:#}"
        );
    }
    assert!(
        drops
            .iter()
            .any(|d| d["flow"]["ingress_denied_by"][0]["name"] == "deny-srv"),
        "{drops:#?}"
    );
    let table = lab
        .meshctl(&[
            "lab",
            "observe",
            "--to",
            "fl/server",
            "--verdict",
            "dropped",
            "--last",
            "1",
        ])
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("fl/server") && table.contains("deny-srv"),
        "the table names the pod and the policy: {table}"
    );

    // Spoofing: a default pod of n1 takes its neighbour's address and sends from it.
    let st = lab.status().unwrap();
    let mut on_n1 = st.pods_on("n1").filter(|p| !p.name.contains('/'));
    let spoofer = on_n1.next().unwrap().clone();
    let stolen: IpAddr = "10.244.1.200".parse().unwrap();
    netns::run_in(
        &spoofer.namespace,
        &[
            "ip",
            "addr",
            "add",
            "10.244.1.200/32",
            "dev",
            &spoofer.interface,
        ],
    )
    .unwrap();
    let follower = follow(&lab, "n1");
    netns::within(&spoofer.namespace, || {
        let tx = UdpSocket::bind(SocketAddr::new(stolen, 0)).unwrap();
        tx.send_to(b"spoof", SocketAddr::new(server, PORT)).unwrap();
    })
    .unwrap();
    let spoofed = std::iter::from_fn(|| follower.recv_timeout(Duration::from_secs(3)).ok())
        .map(|(_, v)| v)
        .find(|v| is_flow(v, "spoofed-source", "drop"))
        .expect("no spoofed-source drop on n1");
    assert_eq!(spoofed["flow"]["IP"]["source"], stolen.to_string());
    assert_eq!(spoofed["flow"]["drop_reason_desc"], "INVALID_SOURCE_IP");
    assert_eq!(spoofed["flow"]["trace_observation_point"], "FROM_ENDPOINT");
}

#[test]
fn a_full_ring_buffer_counts_every_event_it_cannot_deliver() {
    testkit::require_tools(lab::TOOLS);
    std::env::set_var("MESHD_FLOW_RING_BYTES", "4096");
    std::env::set_var("MESHD_FLOW_REPORT_SECS", "1");
    let lab = Lab::up(2, 2).unwrap();
    std::env::remove_var("MESHD_FLOW_RING_BYTES");
    std::env::remove_var("MESHD_FLOW_REPORT_SECS");
    let st = lab.status().unwrap();
    let spoofer = st.pods_on("n1").next().unwrap().clone();
    let stolen: IpAddr = "10.244.1.201".parse().unwrap();
    netns::run_in(
        &spoofer.namespace,
        &[
            "ip",
            "addr",
            "add",
            "10.244.1.201/32",
            "dev",
            &spoofer.interface,
        ],
    )
    .unwrap();
    let to: IpAddr = "10.244.2.2".parse().unwrap();
    const SENT: u64 = 5_000;
    netns::within(&spoofer.namespace, || {
        let tx = UdpSocket::bind(SocketAddr::new(stolen, 0)).unwrap();
        for _ in 0..SENT {
            tx.send_to(b"flood", SocketAddr::new(to, PORT)).unwrap();
        }
    })
    .unwrap();
    // The collector reports losses every second.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut delivered, mut lost) = (0, 0);
    while Instant::now() < deadline {
        let lines = history(&lab, "n1");
        delivered = lines
            .iter()
            .filter(|v| {
                is_flow(v, "spoofed-source", "drop")
                    && v["flow"]["IP"]["source"] == stolen.to_string()
            })
            .count() as u64;
        lost = lines
            .iter()
            .filter(|v| v["lost_events"]["source"] == "RING_BUFFER")
            .map(|v| v["lost_events"]["num_events_lost"].as_u64().unwrap())
            .sum();
        if delivered + lost >= SENT {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("sent {SENT}, delivered {delivered}, lost {lost}");
    assert!(lost > 0, "a one-page ring lost nothing of {SENT}");
    // Lost may also count other traffic's events; never fewer than what did not arrive.
    assert!(
        delivered + lost >= SENT,
        "silently missing: sent {SENT}, delivered {delivered}, lost {lost}"
    );
}

#[test]
fn after_a_node_record_is_removed_its_pods_traffic_is_a_strict_mode_drop() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    let st = lab.status().unwrap();
    let pod = st.pods_on("n1").next().unwrap().clone();
    let target: IpAddr = lab::pod_addrs(st.pods_on("n2").next().unwrap()).unwrap().0;
    // n2 goes away without its record's pod CIDRs leaving n1's guard.
    lab.meshctl(&["lab", "kill-node", "n2"]).unwrap();
    let raw = lab.status_json().unwrap();
    let registry = raw["registry_dir"].as_str().unwrap();
    std::fs::remove_file(format!("{registry}/n2.json")).unwrap();
    lab.wait_for("n1 to drop n2", Duration::from_secs(20), |s| {
        s["nodes"][0]["peers"].as_array().is_some_and(Vec::is_empty)
    })
    .unwrap();
    let follower = follow(&lab, "n1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = None;
    while found.is_none() && Instant::now() < deadline {
        netns::within(&pod.namespace, || {
            let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
            // Unreachable is fine: the packet may not even leave; only what the guard saw counts.
            let _ = tx.send_to(b"clear?", SocketAddr::new(target, PORT));
        })
        .unwrap();
        while let Ok((_, line)) = follower.recv_timeout(Duration::from_millis(300)) {
            if is_flow(&line, "strict-mode", "drop") {
                found = Some(line);
                break;
            }
        }
    }
    let line = found.expect("no strict-mode drop on n1 after n2's record went");
    let flow = &line["flow"];
    assert_eq!(flow["verdict"], "DROPPED");
    assert_eq!(flow["drop_reason_desc"], "UNENCRYPTED_TRAFFIC");
    assert_eq!(flow["trace_observation_point"], "TO_NETWORK");
    assert_eq!(flow["IP"]["destination"], target.to_string(), "{line:#}");
    assert!(flow.get("peer_node").is_none(), "{line:#}");
}
