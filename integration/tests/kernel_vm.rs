//! The kernel-module WireGuard path, end to end, inside a qemu VM whose kernel has WireGuard
//! (the host's does not): the lab with `--wireguard-mode auto` on kernel devices, a mixed
//! kernel/user-space lab, and SIGKILL of meshd on a kernel-mode node.
//!
//! Each test boots its own VM (software emulation unless the host has vmx/svm); inside it
//! everything — namespaces, traffic — belongs to the test, and the VM has no network device.
//! The guest kernel is a Debian package fetched once and cached (`integration::vm::kernel`).
//!
//! Needs meshd's binaries built beforehand (`cargo build --workspace --bins`, which
//! `scripts/test.sh` runs before `cargo test`): by default those of this test's own profile
//! directory, or `MESHD_BIN_DIR` (e.g. `target/release`, several times faster in the guest).
//! Needs qemu, busybox-static, xz and the lab's tools on the host (`scripts/vm-deps.sh`).
//! Without qemu the tests skip, except under CI (`CI` set), where they fail.
//! `MESHD_VM_KEEP=1` keeps each VM's console and result logs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::OnceLock;
use std::time::Duration;

use integration::vm::{self, Harness, VmRun};
use serde_json::Value;

/// One harness (kernel + base initramfs) per test process, shared by the tests.
fn harness() -> Option<&'static Harness> {
    static H: OnceLock<Result<Harness, String>> = OnceLock::new();
    let missing = vm::initramfs::which("qemu-system-x86_64").is_none();
    if missing {
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu-system-x86_64 missing under CI: scripts/vm-deps.sh installs it"
        );
        eprintln!("skipping: qemu-system-x86_64 missing (scripts/vm-deps.sh installs it)");
        return None;
    }
    let h = H.get_or_init(|| {
        let dir = vm::meshd_bin_dir(&integration::lab::bin_dir());
        Harness::new(&dir).map_err(|e| format!("{e:#}"))
    });
    match h {
        Ok(h) => {
            eprintln!(
                "guest kernel {} ({} {}), initramfs {} MiB, modules {:?}, prepared in {:.1}s",
                h.kernel.release,
                h.kernel.package,
                h.kernel.version,
                h.base.size >> 20,
                h.base.modules,
                h.prepare.as_secs_f64()
            );
            Some(h)
        }
        Err(e) => panic!("preparing the VM: {e}"),
    }
}

fn json(run: &VmRun, artifact: &str) -> Value {
    parse_json(run, artifact, run.ok_output(artifact).unwrap())
}

fn parse_json(run: &VmRun, artifact: &str, out: &str) -> Value {
    // Anything a command printed before its JSON (progress on stderr) is skipped.
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("{artifact}: no JSON in {out}\n---- guest ----\n{run}"));
    serde_json::from_str(&out[start..])
        .unwrap_or_else(|e| panic!("{artifact}: {e}: {out}\n---- guest ----\n{run}"))
}

fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {status}"))
}

/// lab-verify's JSON report: every check passed (IPv4 and IPv6 among them), the underlay
/// capture is clean and carried WireGuard data messages.
fn assert_verified(run: &VmRun, artifact: &str) {
    let a = run.artifact(artifact).unwrap();
    let report = parse_json(run, artifact, &a.output);
    let checks = report["checks"].as_array().unwrap();
    let failed: Vec<&Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}\n{run}");
    let what: Vec<&str> = checks.iter().filter_map(|c| c["what"].as_str()).collect();
    assert!(
        what.iter().any(|w| w.contains("fd00:244:")),
        "no IPv6 check: {what:?}"
    );
    assert!(
        what.iter().any(|w| w.contains("10.244.")),
        "no IPv4 check: {what:?}"
    );
    let cap = &report["capture"];
    assert_eq!(cap["plaintext_pod_count"], 0, "pod packets in clear: {cap}");
    assert_eq!(cap["marker_hit_count"], 0, "marker in clear: {cap}");
    assert!(cap["wireguard_packets"].as_u64().unwrap() > 0, "{cap}");
    assert!(a.ok(), "lab-verify exited {:?}:\n{}", a.status, a.output);
}

/// The cached guest kernel has what meshd needs: WireGuard, veth, TUN, bridge, network
/// namespaces, and for the tc eBPF datapath the BPF syscall and JIT, BTF, cls_bpf/clsact and
/// TCX (`NET_XGRESS`, kernel ≥ 6.6). Reads the package's config; boots nothing.
#[test]
fn guest_kernel_has_wireguard_and_the_ebpf_datapath_options() {
    let Some(h) = harness() else { return };
    let k = &h.kernel;
    for (opt, ok) in [
        ("CONFIG_WIREGUARD", &["y", "m"][..]),
        ("CONFIG_VETH", &["y", "m"]),
        ("CONFIG_TUN", &["y", "m"]),
        ("CONFIG_BRIDGE", &["y", "m"]),
        ("CONFIG_NET_NS", &["y"]),
        ("CONFIG_IPV6", &["y"]),
        ("CONFIG_BPF_SYSCALL", &["y"]),
        ("CONFIG_BPF_JIT", &["y"]),
        ("CONFIG_DEBUG_INFO_BTF", &["y"]),
        ("CONFIG_NET_CLS_BPF", &["y", "m"]),
        ("CONFIG_NET_SCH_INGRESS", &["y", "m"]),
        ("CONFIG_NET_XGRESS", &["y"]),
    ] {
        let v = k.config_value(opt).unwrap();
        assert!(
            v.as_deref().is_some_and(|v| ok.contains(&v)),
            "{} ({}): {opt}={v:?}, want one of {ok:?}",
            k.release,
            k.package
        );
    }
    // What is built as a module is loaded at boot.
    for (m, opt) in [
        ("wireguard", "CONFIG_WIREGUARD"),
        ("veth", "CONFIG_VETH"),
        ("tun", "CONFIG_TUN"),
        ("bridge", "CONFIG_BRIDGE"),
        ("sch_ingress", "CONFIG_NET_SCH_INGRESS"),
        ("cls_bpf", "CONFIG_NET_CLS_BPF"),
    ] {
        if k.config_value(opt).unwrap().as_deref() == Some("m") {
            assert!(
                h.base.modules.iter().any(|x| x == m),
                "{m} not loaded: {:?}",
                h.base.modules
            );
        }
    }
}

/// Guest-side: bring up lab `vm`, exiting the scenario if that fails.
const LAB_UP: &str = r#"
lab=vm
d=/run/meshd-lab/$lab
vm_mark lab-up
vm_artifact lab-up meshctl lab up --name $lab --nodes "$NODES" --pods-per-node 1 \
    --wireguard-mode "$MODE" $EXTRA || { vm_artifact logs sh -c "tail -n 30 $d/n*/meshd.log"; exit 1; }
vm_mark lab-ready
converged() {
    meshctl lab exec --name $lab "$1" -- meshctl status -o json | grep -q '"converged": *true'
}
# peer_count_is NODE N: the node's device has N peers.
peer_count_is() {
    [ "$(ip netns exec $lab-$1 wg show meshd0 peers | wc -l)" = "$2" ]
}
# handshaken NODE N: the node's device completed a handshake with N peers.
handshaken() {
    meshctl lab exec --name $lab "$1" -- wg show meshd0 latest-handshakes |
        awk -v n="$2" '$2 != 0 { ok++ } END { exit ok < n }'
}
"#;

#[test]
fn auto_mode_uses_the_kernel_device_on_every_node_and_only_wireguard_crosses_the_underlay() {
    let Some(h) = harness() else { return };
    let script = format!(
        "NODES=3 MODE=auto EXTRA=\n{LAB_UP}{}",
        r#"
vm_artifact status meshctl lab status --name $lab -o json
for n in n1 n2 n3; do
    vm_artifact link-$n ip -n $lab-$n -d link show meshd0
    vm_artifact wg-$n meshctl lab exec --name $lab $n -- wg show meshd0
done
vm_mark verify
vm_artifact verify lab-verify --name $lab --tcp-bytes 1048576 --json
vm_mark verified
vm_artifact status-after meshctl lab status --name $lab -o json
# A node leaves: the others remove its kernel peer (WGPEER_F_REMOVE_ME) and its routes.
vm_artifact remove-n3 meshctl lab remove-node --name $lab n3
for n in n1 n2; do
    vm_wait 30 peer_count_is $n 1
    vm_artifact wg-$n-removed ip netns exec $lab-$n wg show meshd0 peers
    vm_artifact routes-$n-removed ip -n $lab-$n route show dev meshd0
done
# Strict mode with a key withheld: n2's meshd is stopped and its record removed, so n1 has no
# peer for n2's pods; n1-p1 keeps pinging n2-p1 and the tc program drops every echo at n1's
# underlay. A capture on the switch shows no packet with a pod address in it.
vm_artifact kill-n2 meshctl lab kill-node --name $lab n2 || exit 1
rm $d/registry/n2.json
vm_wait 30 peer_count_is n1 0
vm_artifact counters-before meshctl lab status --name $lab -o json
ip netns exec $lab-ul tcpdump -ni br0 -w /tmp/strict.pcap 'net 10.244.0.0/16 or net fd00:244::/48'     2>/tmp/tcpdump.err &
dump=$!
vm_wait 10 grep -q 'listening on' /tmp/tcpdump.err
ip netns exec $lab-n1-p1 ping -c 3 -W 1 10.244.2.2
ip netns exec $lab-n1-p1 ping -6 -c 3 -W 1 fd00:244:0:2::2
sleep 1
kill -INT $dump; wait $dump
vm_artifact strict-capture sh -c "tcpdump -nr /tmp/strict.pcap 2>/dev/null | wc -l"
vm_artifact counters-after meshctl lab status --name $lab -o json
vm_artifact down meshctl lab down --name $lab
"#
    );
    let run = h.run("auto", &script, Duration::from_secs(600)).unwrap();
    eprintln!("{}", run.timings());
    run.expect_success().unwrap();
    let status = json(&run, "status");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    for n in status["nodes"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap();
        assert_eq!(
            n["mode"], "kernel",
            "{name} is not on the kernel device: {n}"
        );
        assert_eq!(n["running"], true, "{name}: {n}");
        assert_eq!(n["peers"].as_array().unwrap().len(), 2, "{name}: {n}");
        let link = run.ok_output(&format!("link-{name}")).unwrap();
        assert!(
            link.contains("wireguard"),
            "{name}: meshd0 is not a kernel wireguard link: {link}"
        );
        let wg = run.ok_output(&format!("wg-{name}")).unwrap();
        assert_eq!(wg.matches("peer: ").count(), 2, "{name}: {wg}");
    }
    assert_verified(&run, "verify");
    let after = json(&run, "status-after");
    for n in after["nodes"].as_array().unwrap() {
        for p in n["peers"].as_array().unwrap() {
            assert!(
                p["last_handshake_unix"].as_u64().is_some(),
                "{} peer {} never handshook",
                n["name"],
                p["name"]
            );
            assert!(p["rx_bytes"].as_u64().unwrap() > 0, "{p}");
        }
    }
    let n3_key = node(&status, "n3")["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    for n in ["n1", "n2"] {
        let peers = run.ok_output(&format!("wg-{n}-removed")).unwrap();
        assert_eq!(peers.lines().count(), 1, "{n} peers after n3 left: {peers}");
        assert!(!peers.contains(&n3_key), "{n} still has n3: {peers}");
        let routes = run.ok_output(&format!("routes-{n}-removed")).unwrap();
        assert!(
            !routes.contains("10.244.3.") && !routes.contains("fd00:244:0:3:"),
            "{n} still routes n3's pods: {routes}"
        );
    }
    let counter = |artifact: &str, node_name: &str, key: &str| {
        node(&json(&run, artifact), node_name)["counters"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} counter for {node_name} in {artifact}"))
    };
    let (before, after) = (
        counter("counters-before", "n1", "strict_drops"),
        counter("counters-after", "n1", "strict_drops"),
    );
    assert!(
        after >= before + 6,
        "6 echo requests to a node without a peer: strict drops {before} -> {after}"
    );
    let leaked = run.ok_output("strict-capture").unwrap();
    assert_eq!(leaked.trim(), "0", "pod packets in clear on the underlay");
    eprintln!(
        "lab up {:.1}s, lab-verify {:.1}s",
        run.between("lab-up", "lab-ready").unwrap_or(f64::NAN),
        run.between("verify", "verified").unwrap_or(f64::NAN)
    );
}

/// The rolling-upgrade case: kernel and user-space nodes in one mesh (`--node-wireguard-mode
/// n3=userspace`), every pair passing traffic.
#[test]
fn mixed_kernel_and_userspace_nodes_all_pass_traffic() {
    let Some(h) = harness() else { return };
    let script = format!(
        "NODES=3 MODE=kernel EXTRA='--node-wireguard-mode n3=userspace'\n{LAB_UP}{}",
        r#"
for n in n1 n2 n3; do vm_wait 60 converged $n; done
vm_mark converged
vm_artifact status meshctl lab status --name $lab -o json
for n in n1 n2 n3; do vm_artifact link-$n ip -n $lab-$n -d link show meshd0; done
vm_artifact verify lab-verify --name $lab --tcp-bytes 524288 --json
vm_mark verified
vm_artifact down meshctl lab down --name $lab
"#
    );
    let run = h.run("mixed", &script, Duration::from_secs(600)).unwrap();
    eprintln!("{}", run.timings());
    run.expect_success().unwrap();
    let status = json(&run, "status");
    for (name, mode, kind) in [
        ("n1", "kernel", "wireguard"),
        ("n2", "kernel", "wireguard"),
        ("n3", "userspace", "tun"),
    ] {
        let n = node(&status, name);
        assert_eq!(n["mode"], mode, "{name}: {n}");
        assert_eq!(n["peers"].as_array().unwrap().len(), 2, "{name}: {n}");
        let link = run.ok_output(&format!("link-{name}")).unwrap();
        assert!(link.contains(kind), "{name}: meshd0 is not {kind}: {link}");
    }
    assert_verified(&run, "verify");
}

#[test]
fn sigkill_of_meshd_on_a_kernel_node_keeps_device_and_traffic_and_restart_adopts() {
    let Some(h) = harness() else { return };
    let script = format!(
        "NODES=2 MODE=auto EXTRA=\n{LAB_UP}{}",
        r#"
vm_artifact status-before meshctl lab status --name $lab -o json
vm_artifact link-before ip -n $lab-n1 -o link show meshd0
ip netns exec $lab-n2-p1 lab-traffic udp-sink --listen 0.0.0.0:6000 --duration-s 20 \
    --idle-exit-s 2 >/tmp/sink.json 2>/tmp/sink.err &
sink=$!
vm_wait 10 grep -q 'listening on' /tmp/sink.err
ip netns exec $lab-n1-p1 lab-traffic udp-send --to 10.244.2.2:6000 --interval-ms 10 \
    --duration-s 8 >/tmp/send.json 2>&1 &
sender=$!
sleep 2
vm_mark kill
vm_artifact counters-kill meshctl lab status --name $lab -o json
vm_artifact kill meshctl lab kill-node --name $lab n1 || exit 1
sleep 2
vm_artifact link-killed ip -n $lab-n1 -d link show meshd0
vm_artifact counters-killed meshctl lab status --name $lab -o json
vm_artifact wg-killed ip netns exec $lab-n1 wg show meshd0
vm_artifact start meshctl lab start-node --name $lab n1 || exit 1
vm_mark restarted
vm_wait 60 converged n1
vm_mark reconverged
wait $sender
wait $sink
vm_artifact send cat /tmp/send.json
vm_artifact sink cat /tmp/sink.json
vm_artifact status-after meshctl lab status --name $lab -o json
vm_artifact link-after ip -n $lab-n1 -o link show meshd0
vm_artifact ping4 ip netns exec $lab-n1-p1 ping -c 2 -W 2 10.244.2.2
vm_artifact ping6 ip netns exec $lab-n1-p1 ping -c 2 -W 2 fd00:244:0:2::2
vm_artifact log-n1 cat $d/n1/meshd.log
vm_artifact down meshctl lab down --name $lab
"#
    );
    let run = h.run("sigkill", &script, Duration::from_secs(600)).unwrap();
    eprintln!("{}", run.timings());
    run.expect_success().unwrap();

    let before = json(&run, "status-before");
    let n1 = node(&before, "n1");
    assert_eq!(n1["mode"], "kernel", "{n1}");
    let ifindex = n1["status"]["ifindex"].as_u64().unwrap();
    let killed_pid = n1["meshd_pid"].as_u64().unwrap();

    // Killed: the kernel device and its peer stay.
    let link = run.ok_output("link-killed").unwrap();
    assert!(link.contains("wireguard"), "{link}");
    assert!(
        link.starts_with(&format!("{ifindex}:")),
        "ifindex changed: {link}"
    );
    let wg = run.ok_output("wg-killed").unwrap();
    assert_eq!(wg.matches("peer: ").count(), 1, "{wg}");
    // ... and so do the tc programs: the redirect kept counting while meshd was dead.
    let redirected = |artifact: &str| {
        node(&json(&run, artifact), "n1")["counters"]["redirected"]
            .as_u64()
            .unwrap_or_else(|| panic!("no redirect counter in {artifact}"))
    };
    let (at_kill, while_dead) = (redirected("counters-kill"), redirected("counters-killed"));
    assert!(
        while_dead >= at_kill + 100,
        "from_pod stopped redirecting without meshd: {at_kill} -> {while_dead}"
    );

    // Traffic continued across the kill and the restart, to its very end: the sink got every
    // datagram the sender handed to the kernel (a gap counts in `lost`; a stream that stopped
    // for good shows as `highest_seq` short of what was sent).
    let (send, sink) = (json(&run, "send"), json(&run, "sink"));
    let sent = send["sent"].as_u64().unwrap();
    assert!(sent > 300, "too little traffic: {send}");
    assert_eq!(send["send_errors"], 0, "the sender could not send: {send}");
    let unique = sink["received"].as_u64().unwrap() - sink["duplicates"].as_u64().unwrap();
    assert_eq!(
        sink["lost"], 0,
        "datagrams lost across SIGKILL + restart: {sink}"
    );
    assert_eq!(
        sink["highest_seq"].as_u64().map(|h| h + 1),
        Some(sent),
        "the stream's end never arrived: sent {send}, received {sink}"
    );
    assert_eq!(
        unique, sent,
        "sent {sent}, received {unique} distinct: {send} {sink}"
    );
    eprintln!("udp stream across SIGKILL + restart: sent {send}, received {sink}");

    // Restarted: the same device adopted (same ifindex), same key, converged.
    let after = json(&run, "status-after");
    let n1a = node(&after, "n1");
    assert_eq!(n1a["mode"], "kernel", "{n1a}");
    assert_ne!(n1a["meshd_pid"].as_u64(), Some(killed_pid), "{n1a}");
    assert_eq!(n1a["public_key"], n1["public_key"]);
    assert_eq!(n1a["status"]["adopted_device"], true, "{n1a}");
    assert_eq!(n1a["status"]["ifindex"].as_u64(), Some(ifindex), "{n1a}");
    assert!(
        n1a["counters"]["redirected"].as_u64().unwrap() >= while_dead,
        "the restart reset the counters: {n1a}"
    );
    assert_eq!(n1a["status"]["datapath"]["attach"], "tcx", "{n1a}");
    assert!(run
        .ok_output("link-after")
        .unwrap()
        .starts_with(&format!("{ifindex}:")));
    let log = run.ok_output("log-n1").unwrap();
    let (_, adopted) = log
        .split_once("adopting kernel WireGuard device")
        .unwrap_or_else(|| panic!("no adoption in n1's log:\n{log}"));
    // Adoption rewrites nothing: rewriting the (same) private key makes the kernel expire
    // every peer's session, and re-adding peers or routes would be churn.
    assert!(
        !adopted.contains("key_changed=true") && !adopted.contains("applying changes"),
        "the restarted meshd reconfigured the adopted device:\n{adopted}"
    );
    run.ok_output("ping4").unwrap();
    run.ok_output("ping6").unwrap();
}
