//! The kernel-module WireGuard path, end to end, inside a qemu VM whose kernel has WireGuard
//! (the host's does not): the lab with `--wireguard-mode auto` on kernel devices (also enforcing
//! a NetworkPolicy between applied Pods on two nodes, issue 18), a mixed kernel/user-space lab,
//! and SIGKILL of meshd on a kernel-mode node.
//!
//! Each test boots its own VM (software emulation unless the host has vmx/svm); inside it
//! everything — namespaces, traffic — belongs to the test, and the VM has no network device.
//! The guest kernel is a Debian package fetched once and cached (`integration::vm::kernel`).
//!
//! Needs meshd's binaries built beforehand (`cargo build --workspace --bins`, which
//! `scripts/test.sh` runs before `cargo test`): by default those of this test's own profile
//! directory, or `MESHD_BIN_DIR` (e.g. `target/release`, several times faster in the guest).
//! `MESHD_VM_STATIC_BIN_DIR` names static builds of meshd, meshctl and meshd-cni, which then
//! replace the dynamic ones (`scripts/test.sh` builds and sets it; CI requires it).
//! Needs qemu, busybox-static, xz and the lab's tools on the host (`scripts/vm-deps.sh`);
//! without them the tests fail (`testkit::require_tool`), they are never skipped.
//! `MESHD_VM_KEEP=1` keeps each VM's console and result logs.
//!
//! Every guest step whose failure matters runs under `vm_must`, `vm_until` or `vm_join`
//! (`integration::vm::guest`): a failure ends the scenario and names the step; the lab is taken
//! down however it ends.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use integration::vm::{self, Harness, VmRun};
use serde_json::Value;

/// What the host needs to build the guest and boot it, besides the tools copied into the guest
/// (`vm::initramfs::REQUIRED_TOOLS`); `scripts/vm-deps.sh` installs them all: qemu, the guest's
/// static busybox, xz and objcopy for its modules, dpkg-deb for the kernel package, ldd.
const HOST_TOOLS: &[&str] = &[
    "qemu-system-x86_64",
    "busybox",
    "xz",
    "objcopy",
    "dpkg-deb",
    "ldd",
];

/// One harness (kernel + base initramfs) per test process, shared by the tests. A missing
/// host tool fails the test (`testkit::require_tool`), on a developer's machine as in CI.
fn harness() -> &'static Harness {
    static H: OnceLock<Result<Harness, String>> = OnceLock::new();
    for tool in HOST_TOOLS.iter().chain(vm::initramfs::REQUIRED_TOOLS) {
        testkit::require_tool(tool);
    }
    let h = H.get_or_init(|| {
        let dir = vm::meshd_bin_dir(&integration::lab::bin_dir());
        Harness::new(&dir).map_err(|e| format!("{e:#}"))
    });
    match h {
        Ok(h) => {
            eprintln!(
                "guest kernel {} ({} {}), initramfs {} MiB, modules {:?}, static {:?}, \
                 prepared in {:.1}s",
                h.kernel.release,
                h.kernel.package,
                h.kernel.version,
                h.base.size >> 20,
                h.base.modules,
                h.base.static_binaries,
                h.prepare.as_secs_f64()
            );
            // CI proves the static binaries, as the issue asks; a developer's run may use the
            // dynamic ones (their libraries are copied).
            assert!(
                std::env::var_os("CI").is_none()
                    || h.base.static_binaries.len() == vm::initramfs::STATIC_BINARIES.len(),
                "under CI the guest runs static {:?} (MESHD_VM_STATIC_BIN_DIR, set by \
                 scripts/test.sh); got {:?}",
                vm::initramfs::STATIC_BINARIES,
                h.base.static_binaries
            );
            h
        }
        Err(e) => panic!("preparing the VM: {e}"),
    }
}

fn json(run: &VmRun, artifact: &str) -> Value {
    parse_json(run, artifact, run.ok_output(artifact).unwrap())
}

fn parse_json(run: &VmRun, artifact: &str, out: &str) -> Value {
    // Anything a command printed before its JSON (progress on stderr) or after it (a summary)
    // is skipped.
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("{artifact}: no JSON in {out}\n---- guest ----\n{run}"));
    serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .unwrap_or_else(|| panic!("{artifact}: no JSON in {out}\n---- guest ----\n{run}"))
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

/// One `meshctl lab probe -o json` round the guest kept: `(from, to) -> allowed` for every
/// result, each checked to be of `protocol`/`port` over IPv`family`.
fn probe_results(
    run: &VmRun,
    artifact: &str,
    protocol: &str,
    port: u16,
    family: u8,
) -> BTreeMap<(String, String), bool> {
    let report = json(run, artifact);
    let results = report["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{artifact}: no results: {report}"));
    results
        .iter()
        .map(|r| {
            assert_eq!(
                (
                    r["protocol"].as_str(),
                    r["port"].as_u64(),
                    r["family"].as_u64()
                ),
                (
                    Some(protocol),
                    Some(u64::from(port)),
                    Some(u64::from(family))
                ),
                "{artifact}: {r}"
            );
            let pod = |k: &str| r[k].as_str().unwrap().to_string();
            ((pod("from"), pod("to")), r["allowed"].as_bool().unwrap())
        })
        .collect()
}

/// What the guest's [`POLICY_STEPS`] showed: every pair open before the policies and after
/// them, and while `vmpol/a` was isolated exactly `vmpol/b` -> `vmpol/a` on UDP 81 blocked,
/// counted by n1 (`a`'s node) as `policy_denied_ingress`.
fn assert_policy_enforced(run: &VmRun) {
    let pairs = |blocked: &[(&str, &str)]| -> BTreeMap<(String, String), bool> {
        let pods = ["vmpol/a", "vmpol/b"];
        pods.iter()
            .flat_map(|f| pods.iter().map(move |t| (*f, *t)))
            .map(|(f, t)| ((f.to_string(), t.to_string()), !blocked.contains(&(f, t))))
            .collect()
    };
    let isolated = [("vmpol/b", "vmpol/a")];
    for (artifact, protocol, port, family, blocked) in [
        ("probe-open-tcp4", "TCP", 80, 4, &[][..]),
        ("probe-open-tcp6", "TCP", 80, 6, &[]),
        ("probe-open-udp4", "UDP", 81, 4, &[]),
        ("probe-isolated-udp4", "UDP", 81, 4, &isolated),
        ("probe-isolated-udp6", "UDP", 81, 6, &isolated),
        ("probe-isolated-tcp4", "TCP", 80, 4, &[]),
        ("probe-isolated-tcp6", "TCP", 80, 6, &[]),
        ("probe-restored-udp4", "UDP", 81, 4, &[]),
    ] {
        assert_eq!(
            probe_results(run, artifact, protocol, port, family),
            pairs(blocked),
            "{artifact}: {protocol}/{port} IPv{family}"
        );
    }
    let denied = |artifact: &str| {
        let status = json(run, artifact);
        let n1 = node(&status, "n1");
        assert_eq!(n1["mode"], "kernel", "{artifact}: {n1}");
        n1["counters"]["policy_denied_ingress"]
            .as_u64()
            .unwrap_or_else(|| panic!("{artifact}: no policy_denied_ingress for n1: {n1}"))
    };
    let (open, isolated) = (
        denied("policy-counters-open"),
        denied("policy-counters-isolated"),
    );
    assert!(
        isolated > open,
        "UDP 81 from vmpol/b to the isolated vmpol/a was blocked, yet n1's \
         policy_denied_ingress stayed {open} -> {isolated}"
    );
    eprintln!(
        "NetworkPolicy on the kernel device: n1's policy_denied_ingress {open} -> {isolated}; \
         policy steps {:.1}s (apply -> first enforced probe {:.1}s)",
        run.between("policy", "policy-done").unwrap_or(f64::NAN),
        run.between("policy-applied", "policy-enforced")
            .unwrap_or(f64::NAN)
    );
}

/// The strict-mode capture ran and means something: tcpdump listened and lost nothing, the
/// file is a pcap holding what tcpdump counted, WireGuard between the live nodes crossed it
/// (the positive control), and not one packet with a pod address did.
fn assert_strict_capture(run: &VmRun) {
    let log = run.ok_output("tcpdump-log").unwrap();
    assert!(log.contains("listening on br0"), "tcpdump: {log}");
    let count = |what: &str| {
        log.lines()
            .find_map(|l| l.strip_suffix(what)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {what:?} in tcpdump's log: {log}"))
    };
    let (captured, dropped) = (
        count("packets captured"),
        count("packets dropped by kernel"),
    );
    assert_eq!(dropped, 0, "tcpdump: {log}");
    let report = json(run, "strict-capture");
    let cap = &report["capture"];
    assert_eq!(cap["packets"].as_u64(), Some(captured), "{cap}\n{log}");
    assert_eq!(cap["truncated"], false, "{cap}");
    assert!(
        cap["wireguard_packets"].as_u64().unwrap() > 0,
        "no WireGuard between the nodes in the capture: {cap}"
    );
    assert_eq!(cap["plaintext_pod_count"], 0, "pod packets in clear: {cap}");
    assert_eq!(cap["marker_hit_count"], 0, "{cap}");
    eprintln!(
        "strict-mode capture: {captured} packets, {} WireGuard {}, {} with a pod address",
        cap["wireguard_packets"], cap["wireguard_by_type"], cap["plaintext_pod_count"]
    );
}

/// The cached guest kernel has what meshd needs: WireGuard, veth, TUN, bridge, network
/// namespaces, and for the tc eBPF datapath the BPF syscall and JIT, BTF, cls_bpf/clsact and
/// TCX (`NET_XGRESS`, kernel ≥ 6.6). Reads the package's config; boots nothing.
#[test]
fn guest_kernel_has_wireguard_and_the_ebpf_datapath_options() {
    let h = harness();
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

/// Guest-side: bring up lab `vm` (taken down however the scenario ends), failing the scenario
/// if that fails.
const LAB_UP: &str = r#"
lab=vm
d=/run/meshd-lab/$lab
vm_cleanup() { vm_artifact down meshctl lab down --name $lab; }
vm_mark lab-up
vm_artifact lab-up meshctl lab up --name $lab --nodes "$NODES" --pods-per-node 1 \
    --wireguard-mode "$MODE" $EXTRA || {
    _vm_rc=$?
    vm_artifact logs sh -c "tail -n 30 $d/n*/meshd.log"
    vm_fail lab-up
}
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

/// Guest-side NetworkPolicy helpers (after [`LAB_UP`], which sets `$lab`).
/// `probe_shows NAME PROTO PORT FAMILY FROM,TO,ALLOWED…`: one round of `meshctl lab probe
/// -o json` (kept in `/tmp/probe-NAME.json`), true when every FROM,TO,ALLOWED is among its
/// results. `probe_until NAME SECONDS …`: `vm_until` for `probe_shows`; the last round is the
/// artifact `probe-NAME` either way, and a timeout fails step `probe-NAME`.
const PROBE_HELPERS: &str = r#"
probe_shows() {
    _out=/tmp/probe-$1.json
    _proto=$2
    _port=$3
    _fam=$4
    meshctl lab probe --name $lab --protocol $_proto --port $_port --family $_fam \
        --timeout-ms 2000 -o json >$_out 2>/tmp/probe-$1.err || return 1
    shift 4
    _flat=$(tr -d ' \n' <$_out)
    for _e in "$@"; do
        _from=${_e%%,*}
        _rest=${_e#*,}
        _to=${_rest%%,*}
        _ok=${_rest#*,}
        case $_flat in
        *"{\"from\":\"$_from\",\"to\":\"$_to\",\"port\":$_port,\"protocol\":\"$_proto\",\"family\":$_fam,\"allowed\":$_ok}"*) ;;
        *) return 1 ;;
        esac
    done
}
probe_until() {
    _name=$1
    _secs=$2
    shift 2
    if vm_wait "$_secs" probe_shows "$_name" "$@"; then
        vm_must "probe-$_name" cat "/tmp/probe-$_name.json"
    else
        vm_artifact "probe-$_name" cat "/tmp/probe-$_name.json" "/tmp/probe-$_name.err"
        _vm_rc=1
        vm_fail "probe-$_name: wait ${_secs}s for $*"
    fi
}
"#;

/// Guest-side: NetworkPolicy enforced on the kernel device (issue 18). Two applied Pods,
/// `vmpol/a` on n1 and `vmpol/b` on n2, serve TCP 80 and UDP 81 and reach each other on both,
/// IPv4 and IPv6. Then `a` is isolated for ingress (deny all) with one exception, `b` on
/// TCP 80: UDP 81 from `b` to `a` is dropped by n1's `to_pod` after crossing the WireGuard
/// device, `a`'s own UDP 81 to `b` still gets its answer, TCP 80 still passes. Deleting the
/// policies restores UDP 81; deleting the Pods leaves the lab as it was. Each probe waits
/// (bounded) for the daemons to apply the change.
const POLICY_STEPS: &str = r#"
vm_mark policy
cat >/tmp/vmpol-pods.yaml <<'EOF'
apiVersion: v1
kind: Namespace
metadata:
  name: vmpol
---
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: vmpol
  labels:
    app: a
spec:
  nodeName: n1
  containers:
    - name: serve
      image: registry.k8s.io/e2e-test-images/agnhost:2.53
      ports:
        - containerPort: 80
        - containerPort: 81
          protocol: UDP
---
apiVersion: v1
kind: Pod
metadata:
  name: b
  namespace: vmpol
  labels:
    app: b
spec:
  nodeName: n2
  containers:
    - name: serve
      image: registry.k8s.io/e2e-test-images/agnhost:2.53
      ports:
        - containerPort: 80
        - containerPort: 81
          protocol: UDP
EOF
cat >/tmp/vmpol-policy.yaml <<'EOF'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress-to-a
  namespace: vmpol
spec:
  podSelector:
    matchLabels:
      app: a
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-b-to-a-tcp-80
  namespace: vmpol
spec:
  podSelector:
    matchLabels:
      app: a
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              app: b
      ports:
        - protocol: TCP
          port: 80
EOF
A=vmpol/a
B=vmpol/b
all="$A,$A,true $A,$B,true $B,$A,true $B,$B,true"
vm_must policy-pods meshctl lab apply --name $lab -f /tmp/vmpol-pods.yaml
probe_until open-tcp4 30 TCP 80 4 $all
probe_until open-tcp6 30 TCP 80 6 $all
probe_until open-udp4 30 UDP 81 4 $all
vm_must policy-counters-open meshctl lab status --name $lab -o json
vm_must policy-apply meshctl lab apply --name $lab -f /tmp/vmpol-policy.yaml
vm_mark policy-applied
probe_until isolated-udp4 30 UDP 81 4 $B,$A,false $A,$B,true $A,$A,true $B,$B,true
vm_mark policy-enforced
probe_until isolated-udp6 30 UDP 81 6 $B,$A,false $A,$B,true $A,$A,true $B,$B,true
probe_until isolated-tcp4 30 TCP 80 4 $all
probe_until isolated-tcp6 30 TCP 80 6 $all
vm_must policy-counters-isolated meshctl lab status --name $lab -o json
vm_must policy-delete meshctl lab delete --name $lab -f /tmp/vmpol-policy.yaml
probe_until restored-udp4 30 UDP 81 4 $all
vm_must policy-pods-delete meshctl lab delete --name $lab -f /tmp/vmpol-pods.yaml
vm_mark policy-done
"#;

#[test]
fn auto_mode_uses_the_kernel_device_on_every_node_and_only_wireguard_crosses_the_underlay() {
    let h = harness();
    let script = format!(
        "NODES=3 MODE=auto EXTRA=\n{LAB_UP}{PROBE_HELPERS}{}{POLICY_STEPS}{}",
        r#"
vm_must status meshctl lab status --name $lab -o json
for n in n1 n2 n3; do
    vm_must link-$n ip -n $lab-$n -d link show meshd0
    vm_must wg-$n meshctl lab exec --name $lab $n -- wg show meshd0
done
vm_mark verify
vm_must verify lab-verify --name $lab --tcp-bytes 1048576 --json
vm_mark verified
vm_must status-after meshctl lab status --name $lab -o json
"#,
        r#"
# A node leaves: the others remove its kernel peer (WGPEER_F_REMOVE_ME) and its routes.
vm_must remove-n3 meshctl lab remove-node --name $lab n3
for n in n1 n2; do
    vm_until 30 peer_count_is $n 1
    vm_must wg-$n-removed ip netns exec $lab-$n wg show meshd0 peers
    vm_must routes-$n-removed ip -n $lab-$n route show dev meshd0
done
# Strict mode with n2's key withheld from n1 while n2 lives: n1's meshd restarts (adopting its
# device) on a view of the registry without n2's record, bind-mounted over the registry in
# n1's own mount namespace; n2 and its meshd stay up on the real registry and keep n1 as a
# peer. n1-p1's echoes to n2-p1 (IPv4, then IPv6) must be dropped by n1's tc program.
view=/tmp/n1-registry
vm_must view sh -c "mkdir -p $view && cp $d/registry/*.json $view/ && rm $view/n2.json && ls $view"
vm_must stop-n1 meshctl lab stop-node --name $lab n1
vm_must withhold nsenter --mount=$d/mnt/n1 mount --bind $view $d/registry
vm_must start-n1 meshctl lab start-node --name $lab n1
vm_until 60 converged n1
vm_until 30 peer_count_is n1 0
vm_must withheld-n1 ip netns exec $lab-n1 wg show meshd0 peers
vm_must withheld-n2 ip netns exec $lab-n2 wg show meshd0 peers
# The whole underlay, captured as lab-verify does (-U --immediate-mode: nothing is left in a
# half-filled buffer when tcpdump stops; -Z root: the guest has no tcpdump user to drop to),
# stopped with SIGTERM (a background job ignores SIGINT), then analysed against the lab's
# policy: a missing or unreadable capture fails, and so does one without WireGuard.
"$(vm_path ip)" netns exec $lab-ul tcpdump -i br0 -w /tmp/strict.pcap -U --immediate-mode -Z root -n -s 0 \
    2>/tmp/tcpdump.err &
dump=$!
vm_wait 10 grep -q 'listening on' /tmp/tcpdump.err || {
    vm_artifact tcpdump-log cat /tmp/tcpdump.err
    vm_fail "tcpdump did not start listening"
}
vm_must counters-before meshctl lab status --name $lab -o json
# ping exits 1 when its echoes went out unanswered (2 on an error: nothing was sent).
vm_artifact ping4 ip netns exec $lab-n1-p1 ping -c 3 -W 1 10.244.2.2
[ $? = 1 ] || vm_fail "ping4: want exit 1 (sent, unanswered)"
vm_must counters-mid meshctl lab status --name $lab -o json
vm_artifact ping6 ip netns exec $lab-n1-p1 ping -6 -c 3 -W 1 fd00:244:0:2::2
[ $? = 1 ] || vm_fail "ping6: want exit 1 (sent, unanswered)"
vm_must counters-after meshctl lab status --name $lab -o json
# The capture's positive control: n2 still has n1's key, so its pod's echoes cross the
# underlay as WireGuard to n1 (which does not know n2 and answers nothing).
vm_artifact ping-from-n2 ip netns exec $lab-n2-p1 ping -c 3 -W 1 10.244.1.2
[ $? = 1 ] || vm_fail "ping-from-n2: want exit 1 (sent, unanswered)"
sleep 1
kill -TERM $dump
vm_join 10 $dump tcpdump || {
    _vm_rc=$?
    vm_artifact tcpdump-log cat /tmp/tcpdump.err
    vm_fail tcpdump
}
vm_must tcpdump-log cat /tmp/tcpdump.err
vm_must strict-capture lab-verify --name $lab --analyse /tmp/strict.pcap
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
    assert_policy_enforced(&run);
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
    // n2's key withheld from n1 only: n1 has no peer, n2 (alive) still has n1.
    let n1_key = node(&status, "n1")["public_key"].as_str().unwrap();
    let withheld = run.ok_output("withheld-n1").unwrap();
    assert_eq!(withheld.trim(), "", "n1 still has a peer: {withheld}");
    let n2_peers = run.ok_output("withheld-n2").unwrap();
    assert!(n2_peers.contains(n1_key), "n2 lost n1: {n2_peers}");
    let counters = |artifact: &str| {
        let s = json(&run, artifact);
        let n2 = node(&s, "n2");
        assert_eq!(n2["running"], true, "n2's meshd is not running: {n2}");
        node(&s, "n1")["counters"]["strict_drops"]
            .as_u64()
            .unwrap_or_else(|| panic!("no strict_drops counter for n1 in {artifact}"))
    };
    let (before, mid, after) = (
        counters("counters-before"),
        counters("counters-mid"),
        counters("counters-after"),
    );
    assert!(
        mid >= before + 3,
        "3 IPv4 echoes to a pod whose node's key is withheld: strict drops {before} -> {mid}"
    );
    assert!(
        after >= mid + 3,
        "3 IPv6 echoes to a pod whose node's key is withheld: strict drops {mid} -> {after}"
    );
    eprintln!(
        "n1's strict drops with n2's key withheld: {before} -> {mid} (IPv4) -> {after} (IPv6)"
    );
    assert_strict_capture(&run);
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
    let h = harness();
    let script = format!(
        "NODES=3 MODE=kernel EXTRA='--node-wireguard-mode n3=userspace'\n{LAB_UP}{}",
        r#"
for n in n1 n2 n3; do vm_until 60 converged $n; done
vm_mark converged
vm_must status meshctl lab status --name $lab -o json
for n in n1 n2 n3; do vm_must link-$n ip -n $lab-$n -d link show meshd0; done
vm_must verify lab-verify --name $lab --tcp-bytes 524288 --json
vm_mark verified
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
    let h = harness();
    let script = format!(
        "NODES=2 MODE=auto EXTRA=\n{LAB_UP}{}",
        r#"
vm_must status-before meshctl lab status --name $lab -o json
vm_must link-before ip -n $lab-n1 -o link show meshd0
"$(vm_path ip)" netns exec $lab-n2-p1 lab-traffic udp-sink --listen 0.0.0.0:6000 --duration-s 20 \
    --idle-exit-s 2 >/tmp/sink.json 2>/tmp/sink.err &
sink=$!
vm_until 10 grep -q 'listening on' /tmp/sink.err
"$(vm_path ip)" netns exec $lab-n1-p1 lab-traffic udp-send --to 10.244.2.2:6000 --interval-ms 10 \
    --duration-s 8 >/tmp/send.json 2>/tmp/send.err &
sender=$!
sleep 2
vm_mark kill
vm_must counters-kill meshctl lab status --name $lab -o json
vm_must kill meshctl lab kill-node --name $lab n1
sleep 2
vm_must link-killed ip -n $lab-n1 -d link show meshd0
vm_must counters-killed meshctl lab status --name $lab -o json
vm_must wg-killed ip netns exec $lab-n1 wg show meshd0
vm_must start meshctl lab start-node --name $lab n1
vm_mark restarted
vm_until 60 converged n1
vm_mark reconverged
vm_join 30 $sender udp-send || { _vm_rc=$?; vm_artifact send-err cat /tmp/send.err; vm_fail udp-send; }
vm_join 30 $sink udp-sink || {
    _vm_rc=$?
    vm_artifact sink-err cat /tmp/sink.err /tmp/sink.json
    vm_fail udp-sink
}
vm_must send cat /tmp/send.json
vm_must sink cat /tmp/sink.json
vm_must status-after meshctl lab status --name $lab -o json
vm_must link-after ip -n $lab-n1 -o link show meshd0
vm_must ping4 ip netns exec $lab-n1-p1 ping -c 2 -W 2 10.244.2.2
vm_must ping6 ip netns exec $lab-n1-p1 ping -c 2 -W 2 fd00:244:0:2::2
vm_must log-n1 cat $d/n1/meshd.log
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
