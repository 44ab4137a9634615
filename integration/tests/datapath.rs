//! The tc eBPF datapath in the lab: real BPF programs loaded by real meshd processes, attached
//! to real pod veths and underlay interfaces, real WireGuard, real captures of the underlay.
//! Needs root; each test builds its own uniquely named lab and tears it down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use integration::capture::{analyse, Capture, CaptureReport};
use integration::lab::{self, ping, pod_addrs, Lab};
use integration::labjson::LabStatus;
use integration::verify::{finish, udp_stream};
use testkit::netns;

/// A node's verdict counter from `meshctl lab status -o json` (read from the pinned maps).
fn counter(st: &serde_json::Value, node: &str, name: &str) -> u64 {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["counters"][name].as_u64())
        .unwrap_or_else(|| panic!("no counter {name} for {node} in {st:#}"))
}

fn capture(st: &LabStatus, dir: &tempfile::TempDir, name: &str) -> Capture {
    Capture::start(
        &st.capture.namespace,
        &st.capture.interface,
        &dir.path().join(name),
    )
    .unwrap()
}

fn stop(c: Capture, st: &LabStatus) -> CaptureReport {
    analyse(&c.stop().unwrap(), &st.capture_policy()).unwrap()
}

#[test]
fn cross_node_pod_traffic_is_redirected_by_the_tc_program_and_only_wireguard_crosses() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up(2, 1).unwrap();
    let st = lab.status().unwrap();
    let from = st.pods_on("n1").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(st.pods_on("n2").next().unwrap()).unwrap();

    // meshd reports the datapath: strict mode attached, the peer's CIDRs redirected.
    let n1: serde_json::Value = serde_json::from_str(
        &lab.exec("n1", &["meshctl", "status", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let dp = &n1["datapath"];
    // Strict mode came first: meshd guarded the underlay before it made a device, programmed
    // a peer or a route, or let the runtime attach a pod.
    let log = std::fs::read_to_string(
        lab.status_json().unwrap()["nodes"][0]["log_file"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let first = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("n1's log has no {what:?}"))
    };
    let guarded = first("underlay guarded");
    for later in [
        "device ready",
        "applying changes",
        "CNI configuration installed",
    ] {
        assert!(
            guarded < first(later),
            "{later:?} logged before the underlay was guarded"
        );
    }
    assert_eq!(dp["underlay_mode"], "enforce", "{n1:#}");
    assert_eq!(dp["underlay_attached"], true, "{n1:#}");
    let remotes: Vec<&str> = dp["remote_cidrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(remotes, ["10.244.2.0/24", "fd00:244:0:2::/64"], "{n1:#}");
    assert_eq!(dp["local_pods"], 2, "one pod, two families: {n1:#}");
    assert_eq!(dp["pod_interfaces"], 1, "{n1:#}");

    let dir = tempfile::tempdir().unwrap();
    let cap = capture(&st, &dir, "redirect.pcap");
    for (family, dst) in [("IPv4", dst4), ("IPv6", dst6)] {
        let before = counter(&lab.status_json().unwrap(), "n1", "redirected");
        assert!(ping(&from, &dst.to_string(), 5), "{family} ping failed");
        let after = counter(&lab.status_json().unwrap(), "n1", "redirected");
        assert!(
            after >= before + 5,
            "{family}: 5 echo requests, redirect counter {before} -> {after}"
        );
    }
    let report = stop(cap, &st);
    assert!(report.is_clean(), "{}", report.summary());
    assert!(report.wireguard_packets >= 20, "{}", report.summary());
    let st = lab.status_json().unwrap();
    assert_eq!(counter(&st, "n1", "strict_drops"), 0);
    assert_eq!(counter(&st, "n2", "strict_drops"), 0);
}

/// Kill `node`'s meshd (so it cannot restore its record) and delete its record: every other
/// node removes the peer, its routes and its redirects.
fn withdraw_node(lab: &Lab, node: &str) {
    lab.meshctl(&["lab", "kill-node", node]).unwrap();
    std::fs::remove_file(lab.record_path(node).unwrap()).unwrap();
    lab.wait_for(
        &format!("the others to drop {node}"),
        Duration::from_secs(20),
        |s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["name"] != node)
                .all(|n| {
                    n["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().all(|p| p["name"] != node))
                        && n["status"]["datapath"]["remote_cidrs"]
                            .as_array()
                            .is_some_and(|c| c.len() == 2)
                })
        },
    )
    .unwrap();
}

#[test]
fn strict_mode_drops_traffic_to_a_node_whose_record_is_gone_and_nothing_leaks() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up(3, 1).unwrap();
    let st = lab.status().unwrap();
    let from = st.pods_on("n1").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(st.pods_on("n3").next().unwrap()).unwrap();
    assert!(ping(&from, &dst4.to_string(), 1) && ping(&from, &dst6.to_string(), 1));
    withdraw_node(&lab, "n3");

    let dir = tempfile::tempdir().unwrap();
    let cap = capture(&st, &dir, "strict.pcap");
    let before = counter(&lab.status_json().unwrap(), "n1", "strict_drops");
    // Pods on n1 keep sending to n3's pods: with no peer, the kernel routes them towards the
    // underlay, where strict mode drops them.
    assert!(
        !ping(&from, &dst4.to_string(), 3),
        "IPv4 reached n3 without a peer"
    );
    assert!(
        !ping(&from, &dst6.to_string(), 3),
        "IPv6 reached n3 without a peer"
    );
    let after = counter(&lab.status_json().unwrap(), "n1", "strict_drops");
    let report = stop(cap, &st);
    assert_eq!(report.plaintext_pod_count, 0, "{}", report.summary());
    assert!(report.is_clean(), "{}", report.summary());
    assert!(
        after >= before + 6,
        "6 echo requests (v4+v6) dropped at the underlay, strict drops {before} -> {after}"
    );
    // The rest of the mesh is untouched.
    let (dst4, _) = pod_addrs(st.pods_on("n2").next().unwrap()).unwrap();
    assert!(ping(&from, &dst4.to_string(), 2));
}

/// Starts `lab-traffic udp-send` in `netns` to `to`, every 5 ms for `secs` seconds.
fn udp_sender(netns: &str, to: std::net::SocketAddr, secs: u32) -> netns::ChildGuard {
    let tool = integration::lab::bin("lab-traffic");
    netns::ChildGuard(Some(
        netns::spawn_in(
            netns,
            &[
                &tool.to_string_lossy(),
                "udp-send",
                "--to",
                &to.to_string(),
                "--interval-ms",
                "5",
                "--duration-s",
                &secs.to_string(),
            ],
        )
        .unwrap(),
    ))
}

/// How much `n1`'s strict-drop counter grows over `d` (from the pinned maps, so this works
/// while its meshd is down).
fn drops_over(lab: &Lab, d: Duration) -> (u64, u64) {
    let before = counter(&lab.status_json().unwrap(), "n1", "strict_drops");
    std::thread::sleep(d);
    let after = counter(&lab.status_json().unwrap(), "n1", "strict_drops");
    (before, after)
}

/// Strict mode holds through everything that leaves a pod CIDR without a tunnel, while
/// traffic to it never stops: the peer's record removed, the record back without a usable
/// key, and the sending node's meshd SIGKILLed and restarted. The lab gives meshd no
/// `--cluster-cidr`, so n3's CIDRs are guarded only because n1 learned them from n3's record:
/// the node's own traffic to n3's pods (not from a pod address) is caught as well.
#[test]
fn strict_mode_holds_under_traffic_through_peer_removal_a_keyless_record_and_a_meshd_restart() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up_with(3, 1, &["--guard-cluster-cidrs", "false"]).unwrap();
    let st = lab.status().unwrap();
    let from = st.pods_on("n1").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(st.pods_on("n3").next().unwrap()).unwrap();
    assert!(ping(&from, &dst4.to_string(), 1) && ping(&from, &dst6.to_string(), 1));
    let n3_cidrs = &st.node("n3").unwrap().pod_cidrs;
    let guarded =
        lab.status_json().unwrap()["nodes"][0]["status"]["datapath"]["cluster_cidrs"].clone();
    for c in n3_cidrs {
        assert!(
            guarded.as_array().unwrap().iter().any(|g| g == c.as_str()),
            "n1 guards n3's pod CIDR {c} it learned: {guarded}"
        );
    }
    assert!(
        !guarded
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "10.244.0.0/16"),
        "the lab passed no --cluster-cidr: {guarded}"
    );
    let n1_ns = st.node("n1").unwrap().namespace.clone();
    let n1_underlay = st.node("n1").unwrap().underlay_interface.clone();

    let dir = tempfile::tempdir().unwrap();
    let cap = capture(&st, &dir, "strict-under-traffic.pcap");
    // 200 datagrams/s each: from n1's pod over IPv4 and IPv6, and from n1 itself.
    let secs = 40;
    let senders = [
        udp_sender(&from.namespace, (dst4, 7000).into(), secs),
        udp_sender(&from.namespace, (dst6, 7000).into(), secs),
        udp_sender(&n1_ns, (dst4, 7001).into(), secs),
    ];
    std::thread::sleep(Duration::from_millis(1000));

    // 1. n3's record goes while the streams run.
    let record = lab.record_path("n3").unwrap();
    let saved = std::fs::read_to_string(&record).unwrap();
    withdraw_node(&lab, "n3");
    let route = netns::run_in(&n1_ns, &["ip", "route", "get", &dst4.to_string()]).unwrap();
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(
        route.contains(&format!("dev {n1_underlay}")),
        "without a peer, n1's own traffic to n3's pods heads for the underlay: {route}"
    );
    let (b, a) = drops_over(&lab, Duration::from_secs(2));
    assert!(a >= b + 600, "record gone: strict drops {b} -> {a} in 2 s");

    // 2. The record comes back with a key that is no key: still no peer, still dropped.
    let mut keyless: serde_json::Value = serde_json::from_str(&saved).unwrap();
    keyless["publicKey"] = "not a key".into();
    std::fs::write(&record, keyless.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (b, a) = drops_over(&lab, Duration::from_secs(2));
    assert!(
        a >= b + 600,
        "keyless record: strict drops {b} -> {a} in 2 s"
    );
    assert!(
        lab.status()
            .unwrap()
            .node("n1")
            .unwrap()
            .peers
            .iter()
            .all(|p| p["name"] != "n3"),
        "a record without a valid key made a peer"
    );

    // 3. n1's meshd is SIGKILLed and restarted: the guard stays and keeps counting.
    lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
    let (b, a) = drops_over(&lab, Duration::from_secs(2));
    assert!(a >= b + 600, "meshd dead: strict drops {b} -> {a} in 2 s");
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    lab.wait_for(
        "n1's restarted meshd to converge",
        Duration::from_secs(20),
        |s| s["nodes"][0]["status"]["converged"] == true,
    )
    .unwrap();
    let (b, a) = drops_over(&lab, Duration::from_secs(2));
    assert!(
        a >= b + 600,
        "meshd restarted: strict drops {b} -> {a} in 2 s"
    );

    for mut s in senders {
        if let Some(mut c) = s.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let report = stop(cap, &st);
    assert_eq!(report.plaintext_pod_count, 0, "{}", report.summary());
    assert!(report.is_clean(), "{}", report.summary());
    assert!(
        report.wireguard_packets >= 200,
        "the capture saw the streams while n3 was a peer: {}",
        report.summary()
    );
}

/// A node with a second way out (an uplink holding a default route, added while meshd runs):
/// meshd guards it too, and cluster traffic routed out through it is dropped, not sent.
#[test]
fn strict_mode_guards_every_way_out_of_the_node_not_only_the_underlay() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up(2, 1).unwrap();
    let st = lab.status().unwrap();
    let n1 = st.node("n1").unwrap().namespace.clone();
    let from = st.pods_on("n1").next().unwrap().clone();
    // The uplink's far end is a namespace of this test.
    let far = netns::NetnsGuard::new(&format!("{}-up", lab.name())).unwrap();
    netns::run(
        "ip",
        &[
            "link",
            "add",
            "up1",
            "netns",
            &n1,
            "type",
            "veth",
            "peer",
            "name",
            "up1p",
            "netns",
            far.name(),
        ],
    )
    .unwrap();
    for (ns, dev, v4, v6) in [
        (n1.as_str(), "up1", "192.0.2.1/24", "fd00:2::1/64"),
        (far.name(), "up1p", "192.0.2.2/24", "fd00:2::2/64"),
    ] {
        netns::run_in(ns, &["ip", "addr", "add", v4, "dev", dev]).unwrap();
        netns::run_in(ns, &["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"]).unwrap();
        netns::run_in(ns, &["ip", "link", "set", dev, "up"]).unwrap();
    }
    // A second default route (a worse metric) makes it a way out; a cluster CIDR no node
    // owns is routed through it.
    for args in [
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "192.0.2.2",
            "metric",
            "500",
        ][..],
        &["ip", "route", "add", "10.244.99.0/24", "via", "192.0.2.2"],
        &[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:244:0:99::/64",
            "via",
            "fd00:2::2",
        ],
    ] {
        netns::run_in(&n1, args).unwrap();
    }
    // meshd looks for new ways out every second.
    lab.wait_for("n1 to guard up1", Duration::from_secs(5), |s| {
        s["nodes"][0]["status"]["datapath"]["guarded_interfaces"]
            .as_array()
            .is_some_and(|g| g.iter().any(|i| i == "up1"))
            && s["nodes"][0]["status"]["datapath"]["underlay_attached"] == true
    })
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cap = Capture::start(far.name(), "up1p", &dir.path().join("uplink.pcap")).unwrap();
    let before = counter(&lab.status_json().unwrap(), "n1", "strict_drops");
    assert!(
        !ping(&from, "10.244.99.5", 3),
        "IPv4 left through the uplink"
    );
    assert!(
        !ping(&from, "fd00:244:0:99::5", 3),
        "IPv6 left through the uplink"
    );
    let after = counter(&lab.status_json().unwrap(), "n1", "strict_drops");
    let report = stop(cap, &st);
    assert_eq!(report.plaintext_pod_count, 0, "{}", report.summary());
    assert!(
        after >= before + 6,
        "6 echo requests (v4+v6) dropped on the uplink, strict drops {before} -> {after}"
    );
    // The node's own traffic out of the uplink is no cluster traffic: it passes.
    assert!(
        netns::run_in(&n1, &["ping", "-c", "1", "-W", "2", "192.0.2.2"]).is_ok(),
        "the uplink itself works"
    );
}

#[test]
fn permissive_mode_counts_would_drops_and_lets_them_through() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up_with(3, 1, &["--encryption", "permissive"]).unwrap();
    let st = lab.status().unwrap();
    let from = st.pods_on("n1").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(st.pods_on("n3").next().unwrap()).unwrap();
    let js = lab.status_json().unwrap();
    assert_eq!(js["nodes"][0]["encryption"], "permissive");
    assert_eq!(
        js["nodes"][0]["status"]["datapath"]["underlay_mode"],
        "permissive"
    );
    // With every peer present, permissive mode still encrypts everything.
    let dir = tempfile::tempdir().unwrap();
    let cap = capture(&st, &dir, "permissive-mesh.pcap");
    assert!(ping(&from, &dst4.to_string(), 2) && ping(&from, &dst6.to_string(), 2));
    let report = stop(cap, &st);
    assert!(report.is_clean(), "{}", report.summary());

    withdraw_node(&lab, "n3");
    let cap = capture(&st, &dir, "permissive.pcap");
    let before = lab.status_json().unwrap();
    // No peer for n3: the packets leave in clear (the lab's router forwards nothing, so no
    // reply) and are counted as would-drop.
    let _ = ping(&from, &dst4.to_string(), 3);
    let _ = ping(&from, &dst6.to_string(), 3);
    let after = lab.status_json().unwrap();
    let report = stop(cap, &st);
    let would = (
        counter(&before, "n1", "would_drops"),
        counter(&after, "n1", "would_drops"),
    );
    assert!(
        would.1 >= would.0 + 6,
        "would-drops {} -> {}",
        would.0,
        would.1
    );
    assert_eq!(
        counter(&after, "n1", "strict_drops"),
        counter(&before, "n1", "strict_drops"),
        "permissive mode never drops"
    );
    assert!(
        report.plaintext_pod_count >= 6,
        "what permissive mode lets through is what the capture sees: {}",
        report.summary()
    );
}

#[test]
fn sigkill_of_meshd_keeps_the_programs_attached_and_counting_and_restart_keeps_the_counts() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up(2, 1).unwrap();
    let st = lab.status().unwrap();
    let from = st.pods_on("n1").next().unwrap().clone();
    let to = st.pods_on("n2").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(&to).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cap = capture(&st, &dir, "sigkill.pcap");

    // 200 datagrams/s for 6 s from a pod on n1 to a pod on n2; n1's meshd dies meanwhile.
    let (sink, sender) = udp_stream(&from, &to, dst4).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
    let dead = Instant::now();
    let at_kill = counter(&lab.status_json().unwrap(), "n1", "redirected");
    std::thread::sleep(Duration::from_millis(1500));
    let while_dead = lab.status_json().unwrap();
    assert_eq!(while_dead["nodes"][0]["running"], false);
    let during = counter(&while_dead, "n1", "redirected");
    assert!(
        during >= at_kill + 100,
        "the program kept redirecting without meshd: {at_kill} -> {during} in {:?}",
        dead.elapsed()
    );
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    let sent = sender.wait_with_output().unwrap();
    let (_, result) = finish(sink).unwrap();
    eprintln!(
        "udp stream across SIGKILL + restart: sender {} / sink {result}",
        String::from_utf8_lossy(&sent.stdout).trim()
    );
    assert_eq!(result["lost"].as_u64(), Some(0), "lost datagrams: {result}");
    let after = lab
        .wait_for(
            "n1's restarted meshd to converge",
            Duration::from_secs(20),
            |s| s["nodes"][0]["status"]["converged"] == true,
        )
        .unwrap();
    // The restarted meshd reloaded the programs over the pinned maps: counts carried on.
    let restarted = counter(&after, "n1", "redirected");
    assert!(
        restarted >= during,
        "counters reset by the restart: {during} -> {restarted}"
    );
    assert_eq!(
        after["nodes"][0]["status"]["datapath"]["underlay_attached"],
        true
    );
    // ...and keep counting: both families, through the reloaded program.
    assert!(ping(&from, &dst4.to_string(), 2) && ping(&from, &dst6.to_string(), 2));
    let counted = counter(&lab.status_json().unwrap(), "n1", "redirected");
    assert!(
        counted >= restarted + 4,
        "4 echo requests after the restart, redirected {restarted} -> {counted}"
    );
    let report = stop(cap, &st);
    assert!(report.is_clean(), "{}", report.summary());
    assert!(report.wireguard_packets > 1000, "{}", report.summary());
}

#[test]
fn cleanup_on_exit_removes_the_device_routes_and_every_tc_program_and_pin() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
    lab.meshctl(&["lab", "start-node", "n1", "--cleanup"])
        .unwrap();
    let st = lab
        .wait_for("n1 to converge again", Duration::from_secs(20), |s| {
            s["nodes"][0]["status"]["converged"] == true
        })
        .unwrap();
    let pin_dir = std::path::PathBuf::from(st["nodes"][0]["bpf_pin_dir"].as_str().unwrap());
    let ns = st["nodes"][0]["namespace"].as_str().unwrap().to_string();
    assert!(
        pin_dir.join("prog_from_pod").exists(),
        "{}",
        pin_dir.display()
    );
    let links = std::fs::read_dir(&pin_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("link_")
        })
        .count();
    assert!(links >= 2, "underlay and pod links pinned: {links}");

    lab.meshctl(&["lab", "stop-node", "n1"]).unwrap();
    assert!(
        !pin_dir.exists(),
        "--cleanup left pins in {}",
        pin_dir.display()
    );
    let link = netns::run_in_unchecked(&ns, &["ip", "link", "show", "meshd0"]).unwrap();
    assert!(!link.status.success(), "meshd0 survived --cleanup");
    let text = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let routes = text(netns::run_in(&ns, &["ip", "route", "show", "proto", "109"]).unwrap());
    let routes6 = text(netns::run_in(&ns, &["ip", "-6", "route", "show", "proto", "109"]).unwrap());
    assert!(
        routes.trim().is_empty() && routes6.trim().is_empty(),
        "routes left: {routes}{routes6}"
    );
    let after = lab.status_json().unwrap();
    assert!(
        after["nodes"][0]["counters"].is_null(),
        "{:#}",
        after["nodes"][0]
    );
}
