//! The `meshd-cni` binary driven exactly as a container runtime drives it (`CNI_*` environment,
//! network configuration on stdin, JSON on stdout), on real network namespaces.
//!
//! Every test builds its own uniquely named namespaces (`cnit-<pid>-<n>`): a "node" namespace
//! the plugin runs in (so the host's own network is never touched) and pod namespaces, all
//! removed by a drop guard, also when the test fails. Traffic stays inside them. They need root
//! and `ip` (iproute2, for building and inspecting the namespaces; the plugin itself uses neither
//! `ip` nor any other tool): without them they fail ([`testkit::require_tools`]), never skip.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meshd-cni");

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn succeeds(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Namespaces created by one test; deleted on drop.
struct Lab {
    namespaces: Vec<String>,
    node: String,
    ipam: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn unique_name() -> String {
    format!(
        "cnit-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Lab {
    /// A node namespace with an address of each family on a stand-in uplink (one end of a veth
    /// pair; the `dummy` module may be missing) that also carries the default routes (so proxy ARP on the pods' host veths has somewhere to point).
    fn new() -> Lab {
        let node = unique_name();
        let mut lab = Lab {
            namespaces: Vec::new(),
            node: node.clone(),
            ipam: tempfile::tempdir().unwrap(),
        };
        run("ip", &["netns", "add", &node]);
        lab.namespaces.push(node.clone());
        for args in [
            &["link", "set", "lo", "up"][..],
            &[
                "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1",
            ],
            &["link", "set", "dummy1", "up"],
            &["addr", "add", "10.250.0.1/32", "dev", "dummy0"],
            &[
                "-6",
                "addr",
                "add",
                "fd00:250::1/128",
                "dev",
                "dummy0",
                "nodad",
            ],
            &["link", "set", "dummy0", "up"],
            &["route", "add", "default", "dev", "dummy0"],
            &["-6", "route", "add", "default", "dev", "dummy0"],
        ] {
            let mut full = vec!["-n", node.as_str()];
            full.extend_from_slice(args);
            run("ip", &full);
        }
        lab
    }

    fn pod(&mut self) -> (String, PathBuf) {
        let name = unique_name();
        run("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        let path = Path::new("/run/netns").join(&name);
        (name, path)
    }

    fn conf(&self, version: &str, cidrs: &[&str]) -> Value {
        json!({
            "cniVersion": version,
            "name": "meshd",
            "type": "meshd-cni",
            "podCIDRs": cidrs,
            "ipamDir": self.ipam.path(),
            "mtu": 1420,
        })
    }

    fn default_conf(&self) -> Value {
        self.conf("1.1.0", &["10.244.7.0/24", "fd00:244:0:7::/64"])
    }

    /// Run the plugin in the node namespace. Returns (exit code, stdout JSON or Null).
    fn plugin(&self, env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node, BIN]);
        for k in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("CNI_PATH", "/opt/cni/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout {text:?}: {e}"))
        };
        (out.status.code().unwrap_or(-1), value)
    }

    fn cmd(&self, command: &str, id: &str, netns: &Path, conf: &Value) -> (i32, Value) {
        self.cmd_raw(command, id, netns, &conf.to_string())
    }

    fn cmd_raw(&self, command: &str, id: &str, netns: &Path, stdin: &str) -> (i32, Value) {
        self.plugin(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns.to_str().unwrap()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
            ],
            stdin,
        )
    }

    fn ipam_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    fn in_node(&self, args: &[&str]) -> bool {
        let mut full = vec!["netns", "exec", self.node.as_str()];
        full.extend_from_slice(args);
        succeeds("ip", &full)
    }

    fn host_links(&self) -> String {
        run("ip", &["-n", &self.node, "-o", "link", "show"])
    }
}

fn ping(ns: &str, dst: &str) -> bool {
    succeeds(
        "ip",
        &["netns", "exec", ns, "ping", "-c", "1", "-W", "2", dst],
    )
}

fn ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn version_lists_every_supported_version() {
    testkit::require_tools(&["ip"]);
    let lab = Lab::new();
    let (code, out) = lab.plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["cniVersion"], "1.0.0");
    assert_eq!(
        out["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn add_check_del_end_to_end() {
    testkit::require_tools(&["ip", "ping"]);
    let mut lab = Lab::new();
    let (pod, netns) = lab.pod();
    let conf = lab.default_conf();
    let (code, result) = lab.cmd("ADD", "ctr-e2e", &netns, &conf);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(ips(&result), ["10.244.7.2/32", "fd00:244:0:7::2/128"]);
    assert_eq!(result["ips"][0]["interface"], 1);
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result["ips"][1]["gateway"], "fe80::ecee:eeff:feee:eeee");
    assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    let host = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(host.starts_with("mshd") && host.len() == 12, "{host}");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], netns.to_str().unwrap());
    assert_eq!(lab.ipam_files(), ["10.244.7.2", "fd00:244:0:7::2"]);

    // The pod's side as the README's packet path describes it.
    let routes4 = run("ip", &["-n", &pod, "-4", "route"]);
    assert!(
        routes4.contains("default via 169.254.1.1 dev eth0"),
        "{routes4}"
    );
    assert!(
        routes4.contains("169.254.1.1 dev eth0 scope link"),
        "{routes4}"
    );
    let routes6 = run("ip", &["-n", &pod, "-6", "route"]);
    assert!(
        routes6.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{routes6}"
    );
    let mtu = run("ip", &["-n", &pod, "link", "show", "eth0"]);
    assert!(mtu.contains("mtu 1420"), "{mtu}");
    let host_routes = run("ip", &["-n", &lab.node, "route"]);
    assert!(
        host_routes.contains(&format!("10.244.7.2 dev {host}")),
        "{host_routes}"
    );

    // Proxy ARP answers at once: with the kernel's default proxy_delay (up to 0.8 s, random)
    // every new pod's first IPv4 packet waited for its gateway's MAC that long.
    let delay = run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.node,
            "cat",
            &format!("/proc/sys/net/ipv4/neigh/{host}/proxy_delay"),
        ],
    );
    assert_eq!(delay.trim(), "0", "proxy_delay on {host}");

    // No ARP or neighbour solicitation either way: both MACs are known at ADD.
    let pod_mac = result["interfaces"][1]["mac"].as_str().unwrap();
    for (fam, gw, addr) in [
        ("-4", "169.254.1.1", "10.244.7.2"),
        ("-6", "fe80::ecee:eeff:feee:eeee", "fd00:244:0:7::2"),
    ] {
        let neigh = run("ip", &["-n", &pod, fam, "neigh", "show", "dev", "eth0"]);
        assert!(
            neigh.contains(&format!("{gw} lladdr ee:ee:ee:ee:ee:ee PERMANENT")),
            "{neigh}"
        );
        let neigh = run("ip", &["-n", &lab.node, fam, "neigh", "show", "dev", &host]);
        assert!(
            neigh.contains(&format!("{addr} lladdr {pod_mac} PERMANENT")),
            "{neigh}"
        );
    }

    // Traffic both ways, both families.
    assert!(ping(&pod, "10.250.0.1"), "pod -> node v4");
    assert!(ping(&pod, "fd00:250::1"), "pod -> node v6");
    assert!(
        ping(&pod, "fe80::ecee:eeff:feee:eeee%eth0"),
        "pod -> v6 gateway"
    );
    assert!(ping(&lab.node, "10.244.7.2"), "node -> pod v4");
    assert!(ping(&lab.node, "fd00:244:0:7::2"), "node -> pod v6");

    // CHECK, with the result as prevResult as a runtime passes it.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let (code, out) = lab.cmd("CHECK", "ctr-e2e", &netns, &check_conf);
    assert_eq!((code, &out), (0, &Value::Null));

    // CHECK notices a missing route.
    run("ip", &["-n", &pod, "-6", "route", "del", "default"]);
    let (code, out) = lab.cmd("CHECK", "ctr-e2e", &netns, &check_conf);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 5, "{out}");

    // A repeated ADD (a runtime retry) keeps the addresses and repairs the attachment.
    let (code, again) = lab.cmd("ADD", "ctr-e2e", &netns, &conf);
    assert_eq!(code, 0, "{again}");
    assert_eq!(ips(&again), ips(&result));
    // The repaired attachment answers once the kernel has resolved the pod again (a loaded
    // machine once needed more than one 2 s ping for that): a few tries, then it must.
    assert!(
        (0..3).any(|_| ping(&lab.node, "fd00:244:0:7::2")),
        "node -> pod v6 after the repeated ADD"
    );
    let (code, _) = lab.cmd("CHECK", "ctr-e2e", &netns, &check_conf);
    assert_eq!(code, 0);

    // DEL, twice.
    for _ in 0..2 {
        let (code, out) = lab.cmd("DEL", "ctr-e2e", &netns, &conf);
        assert_eq!((code, &out), (0, &Value::Null));
    }
    assert!(!lab.host_links().contains(&host));
    assert!(!run("ip", &["-n", &lab.node, "route"]).contains("10.244.7.2"));
    assert!(!run("ip", &["-n", &pod, "link"]).contains("eth0"));
    assert!(lab.ipam_files().is_empty());
    assert!(!lab.in_node(&["ping", "-c", "1", "-W", "1", "10.244.7.2"]));

    // The addresses are free again.
    let (_, netns2) = lab.pod();
    let (code, next) = lab.cmd("ADD", "ctr-e2e-2", &netns2, &conf);
    assert_eq!(code, 0, "{next}");
    assert_eq!(ips(&next), ["10.244.7.2/32", "fd00:244:0:7::2/128"]);
}

#[test]
fn two_pods_get_distinct_addresses_and_reach_each_other_through_the_node() {
    testkit::require_tools(&["ip", "ping"]);
    let mut lab = Lab::new();
    assert!(lab.in_node(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    assert!(lab.in_node(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]));
    let (pod_a, ns_a) = lab.pod();
    let (_, ns_b) = lab.pod();
    let conf = lab.default_conf();
    let (code, a) = lab.cmd("ADD", "ctr-a", &ns_a, &conf);
    assert_eq!(code, 0, "{a}");
    let (code, b) = lab.cmd("ADD", "ctr-b", &ns_b, &conf);
    assert_eq!(code, 0, "{b}");
    assert_eq!(ips(&b), ["10.244.7.3/32", "fd00:244:0:7::3/128"]);
    assert!(ping(&pod_a, "10.244.7.3"));
    assert!(ping(&pod_a, "fd00:244:0:7::3"));
}

#[test]
fn errors_carry_the_spec_codes() {
    testkit::require_tools(&["ip"]);
    let mut lab = Lab::new();
    let (_, netns) = lab.pod();

    let (code, out) = lab.cmd_raw("ADD", "ctr-err", &netns, "{not json");
    assert_eq!((code, out["code"].as_u64()), (1, Some(6)), "{out}");
    assert_eq!(out["msg"], "failed to decode content");

    let mut conf = lab.default_conf();
    conf["cniVersion"] = json!("9.9.9");
    let (code, out) = lab.cmd("ADD", "ctr-err", &netns, &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(1)), "{out}");

    let missing = Path::new("/run/netns/cnit-does-not-exist");
    let (code, out) = lab.cmd("ADD", "ctr-err", missing, &lab.default_conf());
    assert_eq!((code, out["code"].as_u64()), (1, Some(3)), "{out}");
    assert!(
        out["details"]
            .as_str()
            .unwrap()
            .contains(missing.to_str().unwrap()),
        "{out}"
    );
    assert!(
        lab.ipam_files().is_empty(),
        "no address taken for a missing netns"
    );

    let (code, out) = lab.plugin(&[("CNI_COMMAND", "ADD")], &lab.default_conf().to_string());
    assert_eq!((code, out["code"].as_u64()), (1, Some(4)), "{out}");

    let mut bad = lab.default_conf();
    bad["podCIDRs"] = json!(["10.244.7.0/99"]);
    let (code, out) = lab.cmd("ADD", "ctr-err", &netns, &bad);
    assert_eq!((code, out["code"].as_u64()), (1, Some(7)), "{out}");

    // DEL of a container nobody knows, with and without a netns.
    let (code, out) = lab.cmd("DEL", "ctr-unknown", missing, &lab.default_conf());
    assert_eq!((code, &out), (0, &Value::Null));
    let (code, out) = lab.plugin(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "ctr-unknown"),
            ("CNI_IFNAME", "eth0"),
        ],
        &lab.default_conf().to_string(),
    );
    assert_eq!((code, &out), (0, &Value::Null));
}

#[test]
fn exhausted_pod_cidr_is_reported_and_rolls_back() {
    testkit::require_tools(&["ip"]);
    let mut lab = Lab::new();
    let (_, ns_a) = lab.pod();
    let (_, ns_b) = lab.pod();
    let conf = lab.conf("1.0.0", &["10.244.8.0/30", "fd00:244:0:8::/64"]);
    let (code, out) = lab.cmd("ADD", "ctr-x1", &ns_a, &conf);
    assert_eq!(code, 0, "{out}");
    let (code, out) = lab.cmd("ADD", "ctr-x2", &ns_b, &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(100)), "{out}");
    assert!(out["details"].as_str().unwrap().contains("10.244.8.0/30"));
    assert_eq!(lab.ipam_files().len(), 2, "the second ADD took nothing");
    let (code, _) = lab.plugin(&[("CNI_COMMAND", "STATUS")], &conf.to_string());
    assert_eq!(code, 1, "STATUS needs 1.1.0");
    let mut conf11 = conf.clone();
    conf11["cniVersion"] = json!("1.1.0");
    let (code, out) = lab.plugin(&[("CNI_COMMAND", "STATUS")], &conf11.to_string());
    assert_eq!((code, out["code"].as_u64()), (1, Some(50)), "{out}");
    assert!(
        out["details"].as_str().unwrap().contains("10.244.8.0/30"),
        "STATUS names the full CIDR: {out}"
    );
    // With room again, STATUS is fine; with a datapath meshd has not loaded, it is not.
    let (code, out) = lab.cmd("DEL", "ctr-x1", &ns_a, &conf);
    assert_eq!(code, 0, "{out}");
    let (code, out) = lab.plugin(&[("CNI_COMMAND", "STATUS")], &conf11.to_string());
    assert_eq!((code, &out), (0, &Value::Null));
    let empty = tempfile::tempdir().unwrap();
    conf11["bpfPinDir"] = json!(empty.path());
    let (code, out) = lab.plugin(&[("CNI_COMMAND", "STATUS")], &conf11.to_string());
    assert_eq!((code, out["code"].as_u64()), (1, Some(50)), "{out}");
    assert!(
        out["details"].as_str().unwrap().contains("meshd"),
        "STATUS says meshd's datapath is missing: {out}"
    );
}

#[test]
fn chained_add_appends_to_the_previous_result() {
    testkit::require_tools(&["ip"]);
    let mut lab = Lab::new();
    let (_, netns) = lab.pod();
    let mut conf = lab.conf("0.4.0", &["10.244.9.0/24", "fd00:244:0:9::/64"]);
    conf["prevResult"] = json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "net0", "sandbox": netns}],
        "ips": [{"version": "4", "address": "192.168.50.5/24", "interface": 0}],
        "routes": [{"dst": "192.168.0.0/16"}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let (code, out) = lab.cmd("ADD", "ctr-chain", &netns, &conf);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["cniVersion"], "0.4.0");
    assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(out["interfaces"][0]["name"], "net0");
    assert_eq!(
        ips(&out),
        ["192.168.50.5/24", "10.244.9.2/32", "fd00:244:0:9::2/128"]
    );
    assert_eq!(out["ips"][0]["interface"], 0);
    assert_eq!(out["ips"][1]["interface"], 2);
    assert_eq!(out["ips"][1]["version"], "4");
    assert_eq!(out["ips"][2]["version"], "6");
    assert_eq!(out["routes"].as_array().unwrap().len(), 3);
    assert_eq!(out["dns"]["nameservers"][0], "10.96.0.10");
}

#[test]
fn gc_removes_everything_but_the_valid_attachments() {
    testkit::require_tools(&["ip", "ping"]);
    let mut lab = Lab::new();
    let (_, ns_a) = lab.pod();
    let (_, ns_b) = lab.pod();
    let conf = lab.default_conf();
    let (code, a) = lab.cmd("ADD", "ctr-keep", &ns_a, &conf);
    assert_eq!(code, 0, "{a}");
    let (code, b) = lab.cmd("ADD", "ctr-gone", &ns_b, &conf);
    assert_eq!(code, 0, "{b}");
    let gone_host = b["interfaces"][0]["name"].as_str().unwrap().to_string();
    // A GC that does not list the valid attachments is refused, and takes nothing.
    let (code, out) = lab.plugin(&[("CNI_COMMAND", "GC")], &conf.to_string());
    assert_eq!((code, out["code"].as_u64()), (1, Some(7)), "{out}");
    assert_eq!(lab.ipam_files().len(), 4, "a refused GC removed addresses");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-keep", "ifname": "eth0"}]);
    let (code, out) = lab.plugin(&[("CNI_COMMAND", "GC")], &gc.to_string());
    assert_eq!((code, &out), (0, &Value::Null));
    assert_eq!(lab.ipam_files(), ["10.244.7.2", "fd00:244:0:7::2"]);
    assert!(!lab.host_links().contains(&gone_host));
    assert!(ping(&lab.node, "10.244.7.2"));
}

#[test]
fn concurrent_adds_from_many_processes_get_distinct_addresses() {
    testkit::require_tools(&["ip", "ping"]);
    let mut lab = Lab::new();
    let pods: Vec<PathBuf> = (0..16).map(|_| lab.pod().1).collect();
    let conf = lab.default_conf();
    let lab = &lab;
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, netns)| {
                let conf = &conf;
                s.spawn(move || {
                    let (code, out) = lab.cmd("ADD", &format!("ctr-par-{i}"), netns, conf);
                    assert_eq!(code, 0, "{out}");
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<String> = results.iter().flat_map(ips).collect();
    assert_eq!(all.len(), 32);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 32, "duplicate addresses");
    assert_eq!(lab.ipam_files().len(), 32);
    for r in &results {
        let v4 = r["ips"][0]["address"].as_str().unwrap();
        let v4 = v4.trim_end_matches("/32");
        assert!(ping(&lab.node, v4), "node -> {v4}");
    }
}

#[test]
fn del_leaves_a_colliding_foreign_host_veth_alone() {
    testkit::require_tools(&["ip"]);
    let mut lab = Lab::new();
    let (_, netns) = lab.pod();
    let conf = lab.default_conf();
    let (code, out) = lab.cmd("ADD", "ctr-own", &netns, &conf);
    assert_eq!(code, 0, "{out}");
    let host = out["interfaces"][0]["name"].as_str().unwrap().to_string();
    // Pretend another pod interface owns the name: DEL must not delete it, ADD must refuse.
    run(
        "ip",
        &[
            "-n",
            &lab.node,
            "link",
            "set",
            &host,
            "alias",
            "meshd-cni other eth0",
        ],
    );
    let (code, out) = lab.cmd("DEL", "ctr-own", &netns, &conf);
    assert_eq!((code, &out), (0, &Value::Null));
    assert!(lab.host_links().contains(&host));
    let (code, out) = lab.cmd("ADD", "ctr-own", &netns, &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(5)), "{out}");
    assert!(out["details"].as_str().unwrap().contains("taken"), "{out}");
}

#[test]
fn sigkilled_adds_leave_no_duplicate_and_gc_leaves_no_leak() {
    testkit::require_tools(&["ip"]);
    let mut lab = Lab::new();
    let conf = lab.default_conf().to_string();
    // One ADD at a time, each killed after a different delay: before, during and after its work.
    for i in 0..24u64 {
        let (_, netns) = lab.pod();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.node, BIN])
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("ctr-kill-{i}"))
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(i * 500));
        let _ = child.kill();
        let _ = child.wait();
    }
    // Every published address file is complete and names one owner (no duplicates by
    // construction: one file per address).
    for name in lab.ipam_files() {
        let text = std::fs::read_to_string(lab.ipam.path().join(&name)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{name}: {text:?}");
        assert!(lines[0].starts_with("ctr-kill-"), "{name}: {text:?}");
    }
    println!(
        "after the kills: {} address files, {} host veths",
        lab.ipam_files().len(),
        lab.host_links().matches("mshd").count()
    );
    // GC with no valid attachment frees everything: addresses, temporary files, veths.
    let mut gc: Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = json!([]);
    let (code, out) = lab.plugin(&[("CNI_COMMAND", "GC")], &gc.to_string());
    assert_eq!((code, &out), (0, &Value::Null));
    let left: Vec<String> = std::fs::read_dir(lab.ipam.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!lab.host_links().contains("mshd"), "{}", lab.host_links());
}

#[test]
fn with_meshds_datapath_add_fills_the_maps_and_attaches_both_programs_and_del_undoes_it() {
    testkit::require_tools(&["ip"]);
    let mut lab = Lab::new();
    let (_, netns) = lab.pod();
    // meshd's part: the programs and maps pinned where the configuration says. On a bpffs of
    // the test's own (`ip netns exec`, which runs the plugin here, mounts a fresh /sys).
    let bpffs = tempfile::tempdir().unwrap();
    run(
        "mount",
        &["-t", "bpf", "bpf", bpffs.path().to_str().unwrap()],
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(bpffs.path().to_path_buf());
    let pins = bpffs.path().join("meshd");
    let dp = ebpf_redirect::Datapath::load(&pins).unwrap();
    let mut conf = lab.default_conf();
    conf["bpfPinDir"] = json!(pins);

    let (code, result) = lab.cmd("ADD", "ctr-bpf", &netns, &conf);
    assert_eq!(code, 0, "{result}");
    let host = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut locals = dp.locals().unwrap();
    locals.sort();
    assert_eq!(
        locals,
        [
            "10.244.7.2".parse::<std::net::IpAddr>().unwrap(),
            "fd00:244:0:7::2".parse().unwrap()
        ],
        "both of the pod's addresses are local"
    );
    // The plugin's from_pod filter on the host veth, and its record pinned beside meshd's
    // maps (CHECK below asks the kernel too).
    let link = pins.join(format!("link_ingress_{host}"));
    assert!(link.exists(), "no pinned from_pod link for {host}");
    let attached = |dp: &mut ebpf_redirect::Datapath| {
        testkit::netns::within(&lab.node, || dp.from_pod_attached(&host).unwrap()).unwrap()
    };
    let mut dp = dp;
    assert_eq!(
        attached(&mut dp),
        Some(true),
        "from_pod's filter is not on {host}"
    );
    // The pod may send from its addresses on its host veth (written before from_pod went
    // on), and to_pod's filter is on the veth's egress, recorded beside from_pod's.
    let ifindex = testkit::netns::within(&lab.node, || {
        nix::net::if_::if_nametoindex(host.as_str()).unwrap()
    })
    .unwrap();
    let sources: Vec<(u32, String)> = dp
        .sources()
        .unwrap()
        .into_iter()
        .map(|s| (s.ifindex, s.addr.to_string()))
        .collect();
    assert_eq!(
        sources,
        [
            (ifindex, "10.244.7.2".to_string()),
            (ifindex, "fd00:244:0:7::2".to_string())
        ]
    );
    assert!(pins.join(format!("link_egress_{host}")).exists());
    assert!(
        testkit::netns::within(&lab.node, || dp.to_pod_attached(&host).unwrap()).unwrap(),
        "to_pod's filter is not on {host}"
    );
    let mut check = conf.clone();
    check["prevResult"] = result.clone();
    let (code, out) = lab.cmd("CHECK", "ctr-bpf", &netns, &check);
    assert_eq!((code, &out), (0, &Value::Null));

    // CHECK notices a local-map entry gone, and from_pod detached.
    let v6: std::net::IpAddr = "fd00:244:0:7::2".parse().unwrap();
    dp.remove_local(v6).unwrap();
    let (code, out) = lab.cmd("CHECK", "ctr-bpf", &netns, &check);
    assert_eq!(code, 1, "CHECK passed without the map entry: {out}");
    dp.add_local(v6).unwrap();
    let (code, out) = lab.cmd("CHECK", "ctr-bpf", &netns, &check);
    assert_eq!((code, &out), (0, &Value::Null));
    testkit::netns::within(&lab.node, || dp.detach_from_pod(&host).unwrap()).unwrap();
    assert_eq!(
        attached(&mut dp),
        Some(false),
        "from_pod is still on {host}"
    );
    let (code, out) = lab.cmd("CHECK", "ctr-bpf", &netns, &check);
    assert_eq!(code, 1, "CHECK passed with from_pod detached: {out}");
    testkit::netns::within(&lab.node, || dp.detach_to_pod(&host).unwrap()).unwrap();
    let v4 = ebpf_redirect::PodSource {
        ifindex,
        addr: "10.244.7.2".parse().unwrap(),
    };
    dp.remove_source(v4).unwrap();
    // ADD again (the runtime's retry) repairs it.
    let (code, again) = lab.cmd("ADD", "ctr-bpf", &netns, &conf);
    assert_eq!(code, 0, "{again}");
    let (code, out) = lab.cmd("CHECK", "ctr-bpf", &netns, &check);
    assert_eq!((code, &out), (0, &Value::Null));
    assert_eq!(
        attached(&mut dp),
        Some(true),
        "ADD did not re-attach from_pod"
    );
    // ... on a new host veth, with the sources and to_pod there.
    let (code, out) = lab.cmd("CHECK", "ctr-bpf", &netns, &check);
    assert_eq!((code, &out), (0, &Value::Null));

    let (code, out) = lab.cmd("DEL", "ctr-bpf", &netns, &conf);
    assert_eq!(code, 0, "{out}");
    assert!(dp.locals().unwrap().is_empty(), "DEL left map entries");
    assert!(dp.sources().unwrap().is_empty(), "DEL left source entries");
    assert!(!link.exists(), "DEL left the pinned from_pod link");
    assert!(
        !pins.join(format!("link_egress_{host}")).exists(),
        "DEL left the to_pod record"
    );
    assert!(!lab.host_links().contains(&host), "DEL left the host veth");
    let (code, out) = lab.cmd("DEL", "ctr-bpf", &netns, &conf);
    assert_eq!(code, 0, "DEL again: {out}");

    // A pod whose host veth went before its DEL (the namespace died): DEL still finds its
    // entries, by address.
    let (code, result) = lab.cmd("ADD", "ctr-gone", &netns, &conf);
    assert_eq!(code, 0, "{result}");
    let host = result["interfaces"][0]["name"].as_str().unwrap();
    assert_eq!(dp.sources().unwrap().len(), 2);
    assert!(lab.in_node(&["ip", "link", "del", host]));
    let (code, out) = lab.cmd("DEL", "ctr-gone", &netns, &conf);
    assert_eq!(code, 0, "{out}");
    assert!(
        dp.sources().unwrap().is_empty(),
        "DEL left the gone veth's entries"
    );
}
