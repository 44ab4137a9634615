//! The encrypted mesh end to end: real namespaces, real meshd processes, real WireGuard
//! handshakes, real captures of the underlay. Needs root (namespaces); each test builds its own
//! uniquely named lab and tears it down on drop, also when it fails.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use integration::lab::{self, bin, peer_names, ping, pod_addrs, Lab};
use integration::verify::{finish, print_report, udp_stream, verify, VerifyOptions};
use testkit::netns;

#[test]
fn three_nodes_all_pods_reach_all_pods_and_only_wireguard_crosses_the_underlay() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up(3, 2).unwrap();
    let status = lab.status().unwrap();
    assert_eq!(status.nodes.len(), 3);
    assert_eq!(status.pods.len(), 6);
    for n in &status.nodes {
        assert!(n.running, "{} not running", n.name);
        assert_eq!(n.mode, "userspace", "this kernel has no WireGuard module");
        assert_eq!(n.peers.len(), 2, "{} peers: {:?}", n.name, n.peers);
        // wg(8) works against the device inside the node.
        let wg = lab
            .exec(&n.name, &["wg", "show", "meshd0", "peers"])
            .unwrap();
        assert_eq!(wg.lines().count(), 2, "wg show on {}: {wg}", n.name);
    }
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("underlay.pcap");
    let report = verify(
        &status,
        &VerifyOptions {
            tcp_bytes: 3 << 20,
            ping_count: 2,
            pcap: pcap.clone(),
        },
    )
    .unwrap();
    print_report(&report, &pcap);
    assert!(
        report.failures().is_empty(),
        "failed: {:?}",
        report.failures()
    );
    assert!(report.capture.is_clean(), "{}", report.capture.summary());
    assert!(
        report.capture.wireguard_packets > 0,
        "{}",
        report.capture.summary()
    );
    // WireGuard data messages carried the traffic.
    assert!(
        report
            .capture
            .wireguard_by_type
            .get(&4)
            .copied()
            .unwrap_or(0)
            > 100
    );
    // Every node saw a handshake with every peer.
    let st = lab.status_json().unwrap();
    for n in st["nodes"].as_array().unwrap() {
        for p in n["peers"].as_array().unwrap() {
            assert!(
                p["last_handshake_unix"].as_u64().is_some(),
                "{} peer {} never handshook",
                n["name"],
                p["name"]
            );
        }
    }
}

#[test]
fn sigkill_of_meshd_under_traffic_keeps_traffic_flowing_and_restart_adopts() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    let st = lab.status().unwrap();
    let n1 = st.node("n1").unwrap().clone();
    let from = st.pods_on("n1").next().unwrap().clone();
    let to = st.pods_on("n2").next().unwrap().clone();
    let (dst4, _) = pod_addrs(&to).unwrap();
    let before = lab.status_json().unwrap();
    let ifindex_before = before["nodes"][0]["status"]["ifindex"].as_u64().unwrap();

    // 200 datagrams/s for 6 s from a pod on n1 (the node whose meshd dies) to a pod on n2.
    let (sink, sender) = udp_stream(&from, &to, dst4).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
    let killed_pid: u32 = String::from_utf8_lossy(&killed.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(Some(killed_pid), n1.meshd_pid);
    std::thread::sleep(Duration::from_millis(1500));
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    let sent = sender.wait_with_output().unwrap();
    let (_, result) = finish(sink).unwrap();
    eprintln!(
        "udp stream across SIGKILL + restart of meshd: sender {} / sink {result}",
        String::from_utf8_lossy(&sent.stdout).trim()
    );
    let received = result["received"].as_u64().unwrap();
    let lost = result["lost"].as_u64().unwrap();
    let gap = result["max_gap_ms"].as_f64().unwrap();
    assert!(received > 1000, "too little traffic: {result}");
    assert_eq!(lost, 0, "datagrams lost across the meshd restart: {result}");
    assert!(gap < 250.0, "longest gap {gap} ms: {result}");

    // The restarted meshd reused its key and adopted the same device; peers are converged.
    let after = lab
        .wait_for(
            "n1's restarted meshd to converge",
            Duration::from_secs(20),
            |s| {
                s["nodes"][0]["status"]["converged"] == true
                    && s["nodes"][0]["peers"]
                        .as_array()
                        .is_some_and(|p| p.len() == 1)
            },
        )
        .unwrap();
    let n1_after = &after["nodes"][0];
    assert_ne!(n1_after["meshd_pid"].as_u64(), Some(u64::from(killed_pid)));
    assert_eq!(n1_after["public_key"], before["nodes"][0]["public_key"]);
    assert_eq!(n1_after["status"]["adopted_device"], true);
    assert_eq!(
        n1_after["status"]["ifindex"].as_u64().unwrap(),
        ifindex_before
    );
    assert!(ping(&from, &dst4.to_string(), 2));
}

#[test]
fn a_fourth_node_joins_without_restarts_and_leaves_cleanly() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(3, 1).unwrap();
    let pids: Vec<Option<u32>> = lab
        .status()
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.meshd_pid)
        .collect();
    // `up` on a running lab is handled cleanly: it reports, and changes nothing.
    let again = lab
        .meshctl(&["lab", "up", "--nodes", "3", "--pods-per-node", "1"])
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));
    let pids_again: Vec<Option<u32>> = lab
        .status()
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.meshd_pid)
        .collect();
    assert_eq!(pids_again, pids);
    // `down` of a lab that does not exist is a clean no-op.
    let other = Lab::unique_name();
    let down = std::process::Command::new(bin("meshctl"))
        .args(["lab", "down", "--name", &other])
        .output()
        .unwrap();
    assert!(down.status.success() && String::from_utf8_lossy(&down.stderr).contains("not up"));
    let added = lab.meshctl(&["lab", "add-node", "--pods", "1"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&added.stdout).trim(), "n4");
    let st = lab.status().unwrap();
    assert_eq!(
        st.nodes
            .iter()
            .take(3)
            .map(|n| n.meshd_pid)
            .collect::<Vec<_>>(),
        pids,
        "existing meshd processes must not restart"
    );
    let raw = lab.status_json().unwrap();
    for n in ["n1", "n2", "n3"] {
        assert!(
            peer_names(&raw, n).contains(&"n4".to_string()),
            "{n} lacks n4"
        );
    }
    let p1 = st.pods_on("n1").next().unwrap();
    let p4 = st.pods_on("n4").next().unwrap();
    let (a4, a6) = pod_addrs(p4).unwrap();
    assert!(ping(p1, &a4.to_string(), 2), "n1 -> n4 v4");
    assert!(ping(p1, &a6.to_string(), 2), "n1 -> n4 v6");
    let (b4, b6) = pod_addrs(p1).unwrap();
    assert!(
        ping(p4, &b4.to_string(), 2) && ping(p4, &b6.to_string(), 2),
        "n4 -> n1"
    );

    lab.meshctl(&["lab", "remove-node", "n4"]).unwrap();
    lab.wait_for("every node to drop n4", Duration::from_secs(20), |s| {
        ["n1", "n2", "n3"].iter().all(|n| {
            let peers = peer_names(s, n);
            peers.len() == 2 && !peers.contains(&"n4".to_string())
        })
    })
    .unwrap();
    for n in ["n1", "n2", "n3"] {
        let routes = lab
            .exec(n, &["ip", "route", "show", "proto", "109"])
            .unwrap();
        assert!(
            !routes.contains("10.244.4."),
            "{n} still routes to n4: {routes}"
        );
        assert!(
            routes.contains("10.244."),
            "{n} lost its other routes: {routes}"
        );
        let routes6 = lab
            .exec(n, &["ip", "-6", "route", "show", "proto", "109"])
            .unwrap();
        assert!(
            !routes6.contains("fd00:244:0:4:"),
            "{n} still routes v6 to n4: {routes6}"
        );
    }
    let p2 = st.pods_on("n2").next().unwrap();
    let (c4, _) = pod_addrs(p2).unwrap();
    assert!(ping(p1, &c4.to_string(), 2), "n1 -> n2 after n4 left");
}

#[test]
fn malformed_and_conflicting_records_are_skipped_and_the_rest_of_the_mesh_is_unaffected() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(3, 1).unwrap();
    let raw = lab.status_json().unwrap();
    let registry = std::path::PathBuf::from(raw["registry_dir"].as_str().unwrap());
    // Garbage, a bad key, and a record from a future version.
    std::fs::write(registry.join("junk.json"), b"{ this is not json").unwrap();
    std::fs::write(
        registry.join("badkey.json"),
        br#"{"version":1,"name":"badkey","publicKey":"not-base64!","listenPort":51820,"endpoints":["198.18.0.99"],"podCIDRs":["10.244.99.0/24"]}"#,
    )
    .unwrap();
    std::fs::write(
        registry.join("future.json"),
        br#"{"version":7,"name":"future","publicKey":"AAAA","listenPort":51820,"endpoints":[],"podCIDRs":[]}"#,
    )
    .unwrap();
    let st = lab
        .wait_for(
            "malformed records to be counted",
            Duration::from_secs(10),
            |s| {
                s["nodes"].as_array().unwrap().iter().all(|n| {
                    n["status"]["counters"]["malformed_records"]
                        .as_u64()
                        .unwrap_or(0)
                        >= 3
                })
            },
        )
        .unwrap();
    let malformed = &st["nodes"][0]["status"]["malformed"];
    let text = malformed.to_string();
    assert!(
        text.contains("junk") && text.contains("badkey") && text.contains("future"),
        "{text}"
    );
    assert!(
        text.contains("publicKey") && text.contains("version"),
        "errors must name the field: {text}"
    );
    for n in ["n1", "n2", "n3"] {
        assert_eq!(peer_names(&st, n).len(), 2, "{n}: {:?}", peer_names(&st, n));
    }
    let typed = lab.status().unwrap();
    let p1 = typed.pods_on("n1").next().unwrap();
    let p2 = typed.pods_on("n2").next().unwrap();
    let (a4, a6) = pod_addrs(p2).unwrap();
    assert!(ping(p1, &a4.to_string(), 2) && ping(p1, &a6.to_string(), 2));

    // A node's own record clobbered in the registry: the node restores it.
    let own = registry.join("n3.json");
    let original = std::fs::read_to_string(&own).unwrap();
    std::fs::write(&own, b"clobbered").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&own).unwrap_or_default() != original {
        assert!(Instant::now() < deadline, "n3 did not restore its record");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A node claiming n2's key: n2's key is established, so only the impostor is refused
    // (issue 19, record trust: a newcomer never removes an established node's peering); the
    // conflict is reported.
    let n2_key = raw["nodes"][1]["public_key"].as_str().unwrap().to_string();
    let impostor = format!(
        r#"{{"version":1,"name":"impostor","publicKey":"{n2_key}","listenPort":51820,"endpoints":["198.18.0.99"],"podCIDRs":["10.244.77.0/24"]}}"#
    );
    std::fs::write(registry.join("impostor.json"), impostor).unwrap();
    let st = lab
        .wait_for(
            "n1 to refuse the impostor over the duplicate key",
            Duration::from_secs(10),
            |s| {
                s["nodes"][0]["status"]["conflicts"]
                    .to_string()
                    .contains("impostor")
            },
        )
        .unwrap();
    let conflicts = st["nodes"][0]["status"]["conflicts"].to_string();
    assert!(
        conflicts.contains("impostor") && conflicts.contains("n2"),
        "{conflicts}"
    );
    let mut n1_peers = peer_names(&st, "n1");
    n1_peers.sort();
    assert_eq!(n1_peers, vec!["n2".to_string(), "n3".to_string()]);
    let p3 = typed.pods_on("n3").next().unwrap();
    let (c4, _) = pod_addrs(p3).unwrap();
    assert!(
        ping(p1, &c4.to_string(), 2),
        "n1 -> n3 unaffected by the impostor"
    );
    assert!(
        ping(p1, &a4.to_string(), 2),
        "n2 keeps its peering: the impostor is the newcomer"
    );
    // The conflict resolves when the impostor goes away.
    std::fs::remove_file(registry.join("impostor.json")).unwrap();
    lab.wait_for("n1 to program n2 again", Duration::from_secs(10), |s| {
        peer_names(s, "n1").len() == 2
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ping(p1, &a4.to_string(), 1) {
        assert!(Instant::now() < deadline, "n1 -> n2 did not recover");
    }
}

#[test]
fn a_corrupt_key_file_stops_meshd_with_a_clear_error_and_never_takes_down_the_datapath() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    let raw = lab.status_json().unwrap();
    let key_file =
        std::path::Path::new(raw["nodes"][0]["state_dir"].as_str().unwrap()).join("private.key");
    let log_file = std::path::PathBuf::from(raw["nodes"][0]["log_file"].as_str().unwrap());
    let st = lab.status().unwrap();
    let from = st.pods_on("n1").next().unwrap();
    let (dst4, dst6) = pod_addrs(st.pods_on("n2").next().unwrap()).unwrap();

    lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
    std::fs::write(&key_file, b"this is not a key\n").unwrap();
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    // meshd refuses to start: it must not replace a key that peers may be using.
    lab.wait_for("meshd on n1 to exit", Duration::from_secs(10), |s| {
        s["nodes"][0]["running"] == false
    })
    .unwrap();
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains(&key_file.display().to_string()),
        "the error must name the file: {log}"
    );
    assert!(log.to_lowercase().contains("corrupt"), "{log}");
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        b"this is not a key\n",
        "key file must be left as it was"
    );
    // The datapath (device, peers, routes) is untouched: pods still talk across nodes.
    assert!(ping(from, &dst4.to_string(), 2) && ping(from, &dst6.to_string(), 2));
}

#[test]
fn a_killed_datapath_process_is_brought_back_and_nothing_leaks_while_it_is_gone() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    testkit::require_tool("kill");
    let lab = Lab::up(2, 1).unwrap();
    let st = lab.status().unwrap();
    let from = st.pods_on("n1").next().unwrap();
    let (dst4, dst6) = pod_addrs(st.pods_on("n2").next().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("outage.pcap");
    let capture =
        integration::capture::Capture::start(&st.capture.namespace, &st.capture.interface, &pcap)
            .unwrap();

    let n1_ns = &st.node("n1").unwrap().namespace;
    let helper = netns::pids(n1_ns)
        .unwrap()
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "meshd-wg")
        })
        .expect("meshd-wg runs in n1");
    netns::run("kill", &["-KILL", &helper.to_string()]).unwrap();
    // While the device is gone, redirects into it drop and strict mode drops whatever the
    // kernel routes elsewhere: never the underlay in clear.
    let _ = ping(from, &dst4.to_string(), 3);
    let _ = ping(from, &dst6.to_string(), 3);
    lab.wait_for(
        "n1 to bring its device back",
        Duration::from_secs(20),
        |s| {
            let n1 = &s["nodes"][0]["status"];
            n1["counters"]["device_restores"].as_u64().unwrap_or(0) >= 1
                && n1["converged"] == true
                && s["nodes"][0]["peers"]
                    .as_array()
                    .is_some_and(|p| p.len() == 1)
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(ping(from, &dst4.to_string(), 1) && ping(from, &dst6.to_string(), 1)) {
        assert!(
            Instant::now() < deadline,
            "traffic did not resume after the device came back"
        );
    }
    let report =
        integration::capture::analyse(&capture.stop().unwrap(), &st.capture_policy()).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    assert!(report.wireguard_packets > 0, "{}", report.summary());
}

/// n1's programmed state, read from the kernel and the device (meshd need not be running):
/// (WireGuard peers on slot 0, meshd's routes of both families).
fn programmed(lab: &Lab, ns: &str) -> (usize, std::collections::BTreeSet<String>) {
    let peers = lab
        .exec("n1", &["wg", "show", "meshd0", "peers"])
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let mut routes = std::collections::BTreeSet::new();
    for fam in ["-4", "-6"] {
        let out = netns::run_in(ns, &["ip", fam, "route", "show", "proto", "109"]).unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(dst) = line.split_whitespace().next() {
                routes.insert(dst.to_string());
            }
        }
    }
    (peers, routes)
}

/// meshd SIGKILLed in the middle of applying a change (a node's record arriving or going, the
/// kill a random few milliseconds after the registry changed), again and again: every restart
/// adopts whatever half-applied state it finds and converges to exactly what the registry
/// says — peers, routes and eBPF redirects — with nothing left over.
#[test]
fn sigkill_of_meshd_mid_change_leaves_nothing_half_done_after_restart() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(3, 1).unwrap();
    let st = lab.status().unwrap();
    let ns = st.node("n1").unwrap().namespace.clone();
    let cidrs = |n: &str| st.node(n).unwrap().pod_cidrs.clone();
    let record = lab.record_path("n3").unwrap();
    let saved = std::fs::read_to_string(&record).unwrap();
    // n3's meshd stays dead, so only the test moves its record.
    lab.meshctl(&["lab", "kill-node", "n3"]).unwrap();
    // The kill delay closes in on meshd's reaction time by bisection: a kill that came before
    // the change raises it, one that came after lowers it, so the later rounds land midway.
    let (mut lo, mut hi) = (0u64, 30_000u64);
    let mut outcomes = [0usize; 3]; // before, midway, after
    for round in 0..10 {
        let delay = (lo + hi) / 2;
        let with_n3 = round % 2 == 1;
        let pid = nix::unistd::Pid::from_raw(
            lab.status().unwrap().node("n1").unwrap().meshd_pid.unwrap() as i32,
        );
        if with_n3 {
            std::fs::write(&record, &saved).unwrap();
        } else {
            std::fs::remove_file(&record).unwrap();
        }
        std::thread::sleep(Duration::from_micros(delay));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        lab.wait_for("n1's meshd to be gone", Duration::from_secs(5), |s| {
            s["nodes"][0]["running"] == false
        })
        .unwrap();
        let (peers, routes) = programmed(&lab, &ns);
        let old: std::collections::BTreeSet<String> = cidrs("n2").into_iter().collect();
        let mut want = old.clone();
        if with_n3 {
            want.extend(cidrs("n3"));
        }
        let mut all = old.clone();
        all.extend(cidrs("n3"));
        // What n1 held before this round's change, and what it must hold after it.
        let (before_set, new_set) = if with_n3 { (&old, &all) } else { (&all, &old) };
        let state = if peers == before_set.len() / 2 && routes == *before_set {
            0
        } else if peers == new_set.len() / 2 && routes == *new_set {
            2
        } else {
            1
        };
        outcomes[state] += 1;
        match state {
            0 => lo = delay,
            2 => hi = delay,
            _ => {}
        }
        eprintln!(
            "round {round} (n3 {with_n3}, kill after {delay} µs): {} — {peers} peers, routes {routes:?}",
            ["not started", "midway", "done"][state]
        );
        lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
        let after = lab
            .wait_for("n1 to converge", Duration::from_secs(20), |s| {
                s["nodes"][0]["status"]["converged"] == true
            })
            .unwrap();
        let (peers, routes) = programmed(&lab, &ns);
        assert_eq!(peers, want.len() / 2, "round {round}: peers");
        assert_eq!(routes, want, "round {round}: routes");
        let mut remotes: Vec<String> = after["nodes"][0]["status"]["datapath"]["remote_cidrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        remotes.sort();
        assert_eq!(
            remotes,
            want.iter().cloned().collect::<Vec<_>>(),
            "round {round}: redirects"
        );
    }
    eprintln!(
        "kills: {} before the change, {} midway, {} after it",
        outcomes[0], outcomes[1], outcomes[2]
    );
    // The mesh works after all that.
    let from = st.pods_on("n1").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(st.pods_on("n2").next().unwrap()).unwrap();
    assert!(ping(&from, &dst4.to_string(), 2) && ping(&from, &dst6.to_string(), 2));
}
