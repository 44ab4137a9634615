//! Key rotation without loss, in a real lab: continuous pod-to-pod traffic (UDP sequence
//! streams in both families and a TCP stream) crosses the mesh while every node rotates both
//! of its keys several times, all nodes at once. Not one datagram may be lost, the TCP stream
//! must complete intact (no reset), the underlay capture must hold nothing in clear, every key
//! must be new afterwards, and `meshctl audit` must pass with fresh key ages. Host encryption
//! is on, and node-to-node pings run through the rotations too: never in clear, none lost.
//! A rotation costs the registry at most four writes of the rotating node's record and none
//! of any other (counted with inotify on the lab's directory registry). Needs root.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration::capture::{analyse, Capture, CapturePolicy};
use integration::lab::{self, bin, pod_addrs, sockaddr, Lab};
use integration::LabPod;
use testkit::netns;

/// Marker carried by every datagram and TCP byte: it must never appear on the underlay.
const MARKER: &str = "MESHD-ROTATION-CANARY";
/// Full rotations (both keys of every node) during the traffic.
const ROUNDS: usize = 3;
/// Payload pattern of the node-to-node pings (host encryption is on): "MESHDNODE!".
const HOST_PATTERN_HEX: &str = "4d455348444e4f444521";
const HOST_PATTERN: &[u8] = b"MESHDNODE!";

fn traffic(netns_name: &str, args: &[&str]) -> Child {
    let tool = bin("lab-traffic");
    let mut all = vec![tool.to_str().unwrap()];
    all.extend_from_slice(args);
    netns::spawn_in(netns_name, &all).unwrap()
}

/// A UDP sequence sink listening on `listen` in `pod`, with extra checks (`--max-lost`…).
fn udp_sink(pod: &LabPod, listen: &str, checks: &[&str]) -> Child {
    let mut args = vec![
        "udp-sink",
        "--listen",
        listen,
        "--duration-s",
        "90",
        "--idle-exit-s",
        "3",
    ];
    args.extend_from_slice(checks);
    traffic(&pod.namespace, &args)
}

/// One datagram per millisecond from `pod` to `to` for `seconds`, with extra options.
fn udp_send(pod: &LabPod, to: &str, seconds: &str, extra: &[&str]) -> Child {
    let mut args = vec![
        "udp-send",
        "--to",
        to,
        "--interval-ms",
        "1",
        "--duration-s",
        seconds,
    ];
    args.extend_from_slice(extra);
    traffic(&pod.namespace, &args)
}

fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

/// Waits for a UDP sink and checks that every one of `sent` datagrams arrived (a loss report
/// names its runs of sequence numbers and when each began).
fn expect_no_loss(sink: Child, sent: u64, what: &str) {
    let out = sink.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("{what}: no report: {text}"));
    let v: serde_json::Value = serde_json::from_str(text[start..].trim()).unwrap();
    eprintln!("{what}: {v}");
    assert_eq!(v["lost"], 0, "{what} lost datagrams: {v}");
    assert_eq!(v["received"], sent, "{what}: {v}");
}

/// Every node's keys (slot 0 and slot 1) from the lab status.
fn keys(lab: &Lab) -> BTreeSet<String> {
    let st = lab.status_json().unwrap();
    let mut out = BTreeSet::new();
    for n in st["nodes"].as_array().unwrap() {
        let s = &n["status"];
        out.insert(s["public_key"].as_str().unwrap().to_string());
        out.insert(s["second"]["public_key"].as_str().unwrap().to_string());
    }
    out
}

/// Node n1's two public keys (slot 0, slot 1), from the lab status.
fn n1_keys(lab: &Lab) -> (String, String) {
    let js = lab.status_json().unwrap();
    let s = &js["nodes"][0]["status"];
    (
        s["public_key"].as_str().unwrap().to_string(),
        s["second"]["public_key"].as_str().unwrap().to_string(),
    )
}

#[test]
fn every_node_rotates_both_keys_repeatedly_under_traffic_without_losing_a_packet() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lab = Lab::up_with(3, 1, &["--host-encryption", "true"]).unwrap();
    // Host traffic goes through the tunnel once each tunnel is proven up.
    let js = lab
        .wait_for(
            "every node to encrypt host traffic to every other node",
            Duration::from_secs(30),
            |s| {
                s["nodes"].as_array().unwrap().iter().all(|n| {
                    n["status"]["encrypted_hosts"]
                        .as_array()
                        .is_some_and(|h| h.len() == 4)
                })
            },
        )
        .unwrap();
    let st = lab.status().unwrap();
    let pods = &st.pods;
    let before = keys(&lab);
    assert_eq!(before.len(), 6, "two distinct keys per node: {before:?}");

    let pcap = std::env::temp_dir().join(format!("{}-rotation.pcap", lab.name()));
    let capture = Capture::start(&st.capture.namespace, &st.capture.interface, &pcap).unwrap();

    // A ring of UDP streams (n1→n2 IPv4, n2→n3 IPv6, n3→n1 IPv4), 1 datagram per ms, and a
    // paced TCP stream n1→n3.
    let seconds = "25";
    let (p1, p2, p3) = (&pods[0], &pods[1], &pods[2]);
    let (a1, _) = pod_addrs(p1).unwrap();
    let (a2, _) = pod_addrs(p2).unwrap();
    let (a3, a3v6) = pod_addrs(p3).unwrap();
    let mut sinks = Vec::new();
    for (pod, listen) in [
        (p2, "0.0.0.0:6100"),
        (p3, "[::]:6101"),
        (p1, "0.0.0.0:6102"),
    ] {
        sinks.push(udp_sink(pod, listen, &["--min-received", "20000"]));
    }
    let tcp_sink = traffic(
        &p3.namespace,
        &[
            "tcp-sink",
            "--listen",
            &sockaddr(a3, 6200),
            "--count",
            "1",
            "--timeout-s",
            "90",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut senders = Vec::new();
    for (pod, to) in [
        (p1, sockaddr(a2, 6100)),
        (p2, sockaddr(a3v6, 6101)),
        (p3, sockaddr(a1, 6102)),
    ] {
        senders.push(udp_send(
            pod,
            &to,
            seconds,
            &["--size", "200", "--marker", MARKER],
        ));
    }
    let tcp_send = traffic(
        &p1.namespace,
        &[
            "tcp-send",
            "--to",
            &sockaddr(a3, 6200),
            "--bytes",
            "12000000",
            "--rate-kbyte-s",
            "600",
            "--marker",
            MARKER,
        ],
    );
    // n1 pings n2's and n3's node addresses (IPv4 and IPv6) with the host pattern.
    let n1_ns = js["nodes"][0]["namespace"].as_str().unwrap().to_string();
    let mut host_pings = Vec::new();
    for n in 1..3 {
        for a in js["nodes"][n]["underlay_addresses"].as_array().unwrap() {
            let a = a.as_str().unwrap().to_string();
            host_pings.push(
                netns::spawn_in(
                    &n1_ns,
                    &[
                        "ping",
                        "-n",
                        "-q",
                        "-c",
                        "800",
                        "-i",
                        "0.02",
                        "-W",
                        "2",
                        "-p",
                        HOST_PATTERN_HEX,
                        &a,
                    ],
                )
                .unwrap(),
            );
        }
    }
    std::thread::sleep(Duration::from_secs(2));

    // Every node rotates at once, ROUNDS times.
    let mut seen = before.clone();
    for round in 1..=ROUNDS {
        let out = lab.meshctl(&["lab", "rotate-key", "-o", "json"]).unwrap();
        let outcomes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (node, o) in outcomes.as_object().unwrap() {
            assert_eq!(o["ok"], true, "round {round}: {node}: {o}");
        }
        let now = keys(&lab);
        assert!(
            now.is_disjoint(&seen),
            "round {round}: every key must be new: {now:?} vs {seen:?}"
        );
        seen.extend(now);
    }

    for (i, s) in senders.into_iter().enumerate() {
        finish(s, &format!("udp sender {i}"));
    }
    let tcp = finish(
        tcp_send,
        "tcp sender (a reset or a corrupted stream fails it)",
    );
    finish(tcp_sink, "tcp sink");
    // Not one datagram lost.
    for (i, s) in sinks.into_iter().enumerate() {
        expect_no_loss(s, 25_000, &format!("udp stream {i} during the rotations"));
    }
    eprintln!("tcp: {tcp}");
    for p in host_pings {
        let out = finish(p, "node-to-node ping");
        assert!(
            out.contains("800 received") && out.contains(" 0% packet loss"),
            "host pings lost: {out}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = analyse(
        &capture.stop().unwrap(),
        &CapturePolicy {
            markers: vec![MARKER.as_bytes().to_vec(), HOST_PATTERN.to_vec()],
            ..st.capture_policy()
        },
    )
    .unwrap();
    let _ = std::fs::remove_file(&pcap);
    assert!(
        report.is_clean(),
        "cleartext on the underlay: {}",
        report.summary()
    );
    let data = report.wireguard_by_type.get(&4).copied().unwrap_or(0);
    assert!(data > 1000, "{}", report.summary());

    let js = lab.status_json().unwrap();
    for n in js["nodes"].as_array().unwrap() {
        let s = &n["status"];
        let r = &s["rotation"];
        assert_eq!(r["rotations"], ROUNDS as u64, "{}: {r}", n["name"]);
        assert_eq!(r["failures"], 0, "{}: {r}", n["name"]);
        assert_eq!(r["phase"], "idle");
        // The traffic really moved between the slots: the second devices carried some.
        let second_tx: u64 = s["second"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["tx_bytes"].as_u64().unwrap())
            .sum();
        assert!(second_tx > 0, "{}: nothing went through slot 1", n["name"]);
        assert_eq!(s["datapath"]["counters"]["strict_drops"], 0, "{s}");
        assert!(s["key_created_unix"].as_u64().unwrap() >= started_unix);
    }

    // The audit passes with the new keys and their fresh ages.
    let out = lab
        .meshctl(&["audit", "--lab", lab.name(), "-o", "json"])
        .unwrap();
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&serde_json::Value> = audit["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false)
        .collect();
    assert!(failed.is_empty(), "audit findings: {failed:?}");
}

#[test]
fn scheduled_rotation_replaces_every_key_on_its_own() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up_with(2, 1, &["--key-rotation-interval", "6s"]).unwrap();
    let before = keys(&lab);
    let js = lab
        .wait_for(
            "every node to finish two scheduled rotations",
            Duration::from_secs(90),
            |s| {
                s["nodes"].as_array().unwrap().iter().all(|n| {
                    n["status"]["rotation"]["rotations"]
                        .as_u64()
                        .is_some_and(|r| r >= 2)
                })
            },
        )
        .unwrap();
    for n in js["nodes"].as_array().unwrap() {
        let r = &n["status"]["rotation"];
        assert_eq!(r["interval_secs"], 6, "{r}");
        assert_eq!(r["failures"], 0, "{r}");
    }
    assert!(keys(&lab).is_disjoint(&before), "every key replaced");
    let st = lab.status().unwrap();
    let dst = pod_addrs(&st.pods[1]).unwrap().0.to_string();
    assert!(integration::lab::ping(&st.pods[0], &dst, 3));
}

#[test]
fn a_rotation_cut_short_by_sigkill_resumes_after_restart() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    let st = lab.status().unwrap();
    let (p1, p2) = (&st.pods[0], &st.pods[1]);
    let (a1, _) = pod_addrs(p1).unwrap();
    let (a2, _) = pod_addrs(p2).unwrap();
    let before = n1_keys(&lab);
    let mut sinks = Vec::new();
    for (pod, listen) in [(p1, "0.0.0.0:6300"), (p2, "0.0.0.0:6301")] {
        sinks.push(udp_sink(pod, listen, &[]));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut senders = Vec::new();
    for (pod, to) in [(p2, sockaddr(a1, 6300)), (p1, sockaddr(a2, 6301))] {
        senders.push(udp_send(pod, &to, "15", &[]));
    }
    std::thread::sleep(Duration::from_secs(1));
    // Start n1's rotation, and kill its meshd as soon as slot 0 is drained.
    let meshctl = bin("meshctl");
    let rotate = std::process::Command::new(&meshctl)
        .args(["lab", "rotate-key", "--name", lab.name(), "n1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    lab.wait_for("n1 to drain a key slot", Duration::from_secs(10), |s| {
        s["nodes"][0]["status"]["rotation"]["phase"] != "idle"
    })
    .unwrap();
    lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
    let _ = rotate.wait_with_output();
    std::thread::sleep(Duration::from_secs(1));
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    // The restarted meshd finishes the rotation it found in its state directory.
    let js = lab
        .wait_for(
            "n1 to finish the resumed rotation",
            Duration::from_secs(30),
            |s| {
                let r = &s["nodes"][0]["status"]["rotation"];
                r["phase"] == "idle" && r["rotations"] == 1
            },
        )
        .unwrap();
    let after = n1_keys(&lab);
    assert!(
        after.0 != before.0 && after.1 != before.1,
        "both keys replaced: {before:?} -> {after:?}"
    );
    let log = std::fs::read_to_string(js["nodes"][0]["log_file"].as_str().unwrap()).unwrap();
    assert!(log.contains("resuming the key rotation under way"), "{log}");
    for s in senders {
        finish(s, "udp sender");
    }
    // The kill and restart cost nothing either: the devices and their sessions live on, and
    // the resumed rotation keeps every pair on a slot both ends hold.
    for s in sinks {
        expect_no_loss(s, 15_000, "udp stream across the kill");
    }
}

#[test]
fn a_dead_node_does_not_stop_the_others_rotating() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("kill");
    // Three nodes; a peer counts as silent after 3 s without a handshake (180 s by default).
    let lab = Lab::up_with(3, 1, &["--rotation-silence", "3s"]).unwrap();
    let st = lab.status().unwrap();
    let addr = |i: usize| pod_addrs(&st.pods[i]).unwrap().0.to_string();
    for (from, to) in [(0, 1), (0, 2), (1, 2)] {
        assert!(
            integration::lab::ping(&st.pods[from], &addr(to), 2),
            "pod {from} -> pod {to} before the node died"
        );
    }
    // n3 dies: every process in its network namespace (its meshd and its datapath) is killed,
    // so it neither acknowledges nor handshakes any more.
    let n3 = format!("{}-n3", lab.name());
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", &n3])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&pids.stdout).into_owned();
    assert!(!pids.trim().is_empty(), "n3 runs meshd and its datapath");
    for pid in pids.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
    std::thread::sleep(Duration::from_secs(4));
    let before = n1_keys(&lab);
    // n1 rotates: it waits 10 s for n3, then goes on without it (instead of aborting).
    let out = lab.meshctl(&["lab", "rotate-key", "n1"]);
    assert!(out.is_ok(), "n1's rotation completes without n3: {out:?}");
    let after = n1_keys(&lab);
    assert!(
        after.0 != before.0 && after.1 != before.1,
        "both keys replaced: {before:?} -> {after:?}"
    );
    let js = lab.status_json().unwrap();
    let r = &js["nodes"][0]["status"]["rotation"];
    assert_eq!(
        (r["rotations"].as_u64(), r["failures"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    let log = std::fs::read_to_string(js["nodes"][0]["log_file"].as_str().unwrap()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("goes on without a silent peer") && l.contains("n3")),
        "n1 logs the excused peer"
    );
    assert!(
        integration::lab::ping(&st.pods[0], &addr(1), 3),
        "n1 and n2 mesh on n1's new keys"
    );
    // n3 comes back: it programs the keys n1 publishes now and meshes again.
    lab.meshctl(&["lab", "start-node", "n3"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !integration::lab::ping(&st.pods[2], &addr(0), 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "pod on n3 reaches the pod on n1 after n3's restart"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(integration::lab::ping(&st.pods[0], &addr(2), 3));
}

/// `IPReversePathFilter` of a node's network namespace (`/proc/net/netstat`).
fn rp_filter_drops(lab: &Lab, node: &str) -> u64 {
    let text = lab.exec(node, &["cat", "/proc/net/netstat"]).unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "IPReversePathFilter")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[test]
fn a_strict_rp_filter_on_the_node_costs_no_packet_during_a_rotation() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    // The nodes filter strictly (as RHEL-like hosts do): meshd finds that when it starts.
    for node in ["n1", "n2"] {
        lab.exec(node, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"])
            .unwrap();
        lab.meshctl(&["lab", "kill-node", node]).unwrap();
        lab.meshctl(&["lab", "start-node", node]).unwrap();
    }
    let get = |node: &str, key: &str| {
        lab.exec(
            node,
            &["sysctl", "-n", &format!("net.ipv4.conf.{key}.rp_filter")],
        )
        .unwrap()
        .trim()
        .to_string()
    };
    for node in ["n1", "n2"] {
        // The devices are unfiltered; every other interface, and those made later, filter
        // exactly as strictly as before.
        let keys = ["all", "default", "eth0", "lo", "meshd0", "meshd0b"];
        let read = || -> Vec<String> { keys.iter().map(|k| get(node, k)).collect() };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut got = read();
        while got[0] != "0" && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            got = read();
        }
        assert_eq!(
            got,
            ["0", "1", "1", "1", "0", "0"],
            "{node}: all default eth0 lo meshd0 meshd0b"
        );
    }
    let st = lab.status().unwrap();
    let dst = pod_addrs(&st.pods[1]).unwrap().0.to_string();
    let drops = [rp_filter_drops(&lab, "n1"), rp_filter_drops(&lab, "n2")];
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &st.pods[0].namespace,
            "ping",
            "-n",
            "-q",
            "-i",
            "0.002",
        ])
        .args(["-c", "2500", &dst])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.meshctl(&["lab", "rotate-key"]).unwrap();
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "{text}");
    assert_eq!(
        [rp_filter_drops(&lab, "n1"), rp_filter_drops(&lab, "n2")],
        drops,
        "no packet dropped by the reverse-path filter"
    );
}

/// Counts the writes of each node's record file in a directory registry: a record is
/// published by an atomic rename onto `NODE.json` (one `IN_MOVED_TO`), or written in place
/// (one `IN_CLOSE_WRITE`).
struct RecordWrites {
    inotify: inotify::Inotify,
    counts: BTreeMap<String, u32>,
}

impl RecordWrites {
    fn watch(dir: &Path) -> RecordWrites {
        let inotify = inotify::Inotify::init().unwrap();
        inotify
            .watches()
            .add(
                dir,
                inotify::WatchMask::MOVED_TO | inotify::WatchMask::CLOSE_WRITE,
            )
            .unwrap();
        RecordWrites {
            inotify,
            counts: BTreeMap::new(),
        }
    }

    /// The writes per node since the last call.
    fn take(&mut self) -> BTreeMap<String, u32> {
        let mut buffer = [0u8; 4096];
        loop {
            let events = match self.inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading inotify events: {e}"),
            };
            let mut any = false;
            for ev in events {
                any = true;
                let Some(name) = ev.name.and_then(|n| n.to_str()) else {
                    continue;
                };
                if let Some(node) = name
                    .strip_suffix(".json")
                    .filter(|_| !name.starts_with('.'))
                {
                    *self.counts.entry(node.to_string()).or_default() += 1;
                }
            }
            if !any {
                break;
            }
        }
        std::mem::take(&mut self.counts)
    }
}

#[test]
fn a_rotation_writes_only_the_rotating_nodes_record_at_most_four_times() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(3, 1).unwrap();
    let dir = lab.record_path("n1").unwrap();
    let dir = dir.parent().unwrap();
    let mut writes = RecordWrites::watch(dir);
    // Steady state: nobody writes.
    std::thread::sleep(Duration::from_secs(3));
    let steady = writes.take();
    assert!(
        steady.is_empty(),
        "registry writes in steady state: {steady:?}"
    );

    let before = n1_keys(&lab);
    let out = lab.meshctl(&["lab", "rotate-key", "n1"]);
    assert!(out.is_ok(), "n1's rotation completes: {out:?}");
    // Anything a peer would still write about the rotation has had time to land.
    std::thread::sleep(Duration::from_secs(2));
    let during = writes.take();
    let after = n1_keys(&lab);
    assert!(
        after.0 != before.0 && after.1 != before.1,
        "both keys replaced: {before:?} -> {after:?}"
    );
    let n1 = during.get("n1").copied().unwrap_or(0);
    assert!(
        (1..=4).contains(&n1),
        "n1 wrote its record {n1} times for one rotation (at most 4): {during:?}"
    );
    for peer in ["n2", "n3"] {
        assert_eq!(
            during.get(peer),
            None,
            "{peer} wrote into the registry for n1's rotation: {during:?}"
        );
    }
    let record = std::fs::read_to_string(lab.record_path("n1").unwrap()).unwrap();
    assert!(
        !record.contains("acks") && !record.contains("rotation"),
        "{record}"
    );
    // Both peers mesh with n1 on its new keys.
    let st = lab.status().unwrap();
    let n1_pod = pod_addrs(&st.pods[0]).unwrap().0.to_string();
    for i in [1, 2] {
        assert!(
            integration::lab::ping(&st.pods[i], &n1_pod, 2),
            "pod {i} reaches n1's pod after the rotation"
        );
    }
}
