//! The lab's Kubernetes interface end to end (`meshctl lab apply`, `probe`, `label`, `delete`,
//! `down`): a 2-node lab, a multi-document file of Namespaces, Pods across both nodes with TCP,
//! UDP and SCTP ports and a NetworkPolicy; the object files it writes to the registry; probes of
//! every protocol on both families from every pod to every pod; relabelling; and that delete and
//! down leave nothing behind. Needs root (namespaces); the lab is unique and torn down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::lab::{self, Lab};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels: {team: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: serve-80-tcp, containerPort: 80}
    - {name: serve-81-udp, containerPort: 81, protocol: UDP}
    - {name: serve-82-sctp, containerPort: 82, protocol: SCTP}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec:
  containers:
  - name: c
    ports:
    - {containerPort: 80}
    - {containerPort: 81, protocol: UDP}
    - {containerPort: 82, protocol: SCTP}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
spec:
  nodeName: n2
  containers:
  - name: c
    ports:
    - {containerPort: 80, protocol: TCP}
    - {containerPort: 81, protocol: UDP}
    - {containerPort: 82, protocol: SCTP}
---
# Selects every pod of x and admits everything: no verdict below depends on enforcement.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress:
  - {}
"#;

const PODS: [&str; 3] = ["x/a", "x/b", "y/c"];

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Port servers of this lab still running (their command line names a pod namespace of it).
fn servers_running(lab: &str) -> usize {
    let needle = format!("/run/netns/{lab}-pod-");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .count()
}

fn pod_namespaces(lab: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{lab}-pod-")))
        .map(str::to_string)
        .collect()
}

fn probe(lab: &Lab, protocol: &str, port: u16, family: u8) -> Vec<serde_json::Value> {
    let out = lab
        .meshctl(&[
            "lab",
            "probe",
            "--protocol",
            protocol,
            "--port",
            &port.to_string(),
            "--family",
            &family.to_string(),
            "--timeout-ms",
            "500",
            "-o",
            "json",
        ])
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = doc["results"].as_array().unwrap().clone();
    let pairs: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            assert_eq!(r["port"], port);
            assert_eq!(r["protocol"], protocol);
            assert_eq!(r["family"], family);
            (
                r["from"].as_str().unwrap().to_string(),
                r["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = PODS
        .iter()
        .flat_map(|a| PODS.iter().map(move |b| (a.to_string(), b.to_string())))
        .collect();
    assert_eq!(
        pairs, want,
        "every pod to every pod, sorted by from then to"
    );
    results
}

fn meshctl_stdin(lab: &Lab, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(lab::bin("meshctl"))
        .args(args)
        .args(["--name", lab.name(), "-f", "-"])
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
    child.wait_with_output().unwrap()
}

#[test]
fn apply_probe_label_delete_and_down_on_two_nodes() {
    testkit::require_tools(lab::TOOLS);
    let started = Instant::now();
    let lab = Lab::up(2, 1).unwrap();
    let name = lab.name().to_string();
    let registry = PathBuf::from(lab.status_json().unwrap()["registry_dir"].as_str().unwrap());
    let objects = registry.join("objects");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, OBJECTS).unwrap();
    let file = file.to_str().unwrap();

    // A file with an error applies nothing, and the error names the document and field.
    let bad = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: z}}\n---\n{}",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: z}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: ICMP}]}]}\n"
    );
    let out = meshctl_stdin(&lab, &["lab", "apply"], &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2 (Pod z/p): spec.containers[0].ports[0].protocol"),
        "{err}"
    );
    assert!(!objects.join("namespaces/z.json").exists());

    let out = lab.meshctl(&["lab", "apply", "-f", file]).unwrap();
    let applied = String::from_utf8_lossy(&out.stdout);
    assert!(
        applied.contains("pod/a (namespace x) created on n1"),
        "{applied}"
    );
    assert!(
        applied.contains("pod/c (namespace y) created on n2"),
        "{applied}"
    );

    // The object files (contract 5).
    let x = read_json(&objects.join("namespaces/x.json"));
    assert_eq!(x["kind"], "Namespace");
    assert_eq!(x["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
    assert_eq!(x["metadata"]["labels"]["team"], "a");
    let y = read_json(&objects.join("namespaces/y.json"));
    assert_eq!(y["metadata"]["labels"]["kubernetes.io/metadata.name"], "y");
    let policy = read_json(&objects.join("networkpolicies/x/allow-all.json"));
    assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
    let mut nodes = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for pod in PODS {
        let value = read_json(&objects.join(format!("pods/{pod}.json")));
        assert_eq!(value["kind"], "Pod");
        nodes.insert(value["spec"]["nodeName"].as_str().unwrap().to_string());
        let ips: Vec<&str> = value["status"]["podIPs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["ip"].as_str().unwrap())
            .collect();
        assert_eq!(ips.len(), 2, "{pod}: {ips:?}");
        assert!(
            ips[0].contains('.') && ips[1].contains(':'),
            "{pod}: {ips:?}"
        );
        assert_eq!(value["status"]["podIP"], ips[0]);
        addresses.extend(ips.iter().map(|s| s.to_string()));
        assert_eq!(
            value["spec"]["containers"][0]["ports"][0]["protocol"], "TCP",
            "{pod}: the protocol is defaulted"
        );
    }
    assert_eq!(nodes.len(), 2, "pods on both nodes: {nodes:?}");
    assert_eq!(addresses.len(), 6, "distinct addresses");
    assert_eq!(servers_running(&name), 9, "one server per declared port");

    // Re-applying the same file changes nothing.
    let out = lab.meshctl(&["lab", "apply", "-f", file]).unwrap();
    let again = String::from_utf8_lossy(&out.stdout);
    assert!(again.lines().all(|l| l.ends_with("unchanged")), "{again}");

    // No policy restricts anything: every pair is allowed, self and same node included.
    for (protocol, port) in [("TCP", 80), ("UDP", 81), ("SCTP", 82)] {
        for family in [4, 6] {
            let round = Instant::now();
            let results = probe(&lab, protocol, port, family);
            let blocked: Vec<_> = results.iter().filter(|r| r["allowed"] != true).collect();
            assert!(
                blocked.is_empty(),
                "{protocol}/{port} IPv{family}: {blocked:?}"
            );
            assert!(
                round.elapsed() < Duration::from_secs(3),
                "{protocol} IPv{family}: a round takes about one timeout, not one per pair: {:?}",
                round.elapsed()
            );
        }
    }
    // Ports nobody serves (TCP 81 is served as UDP only, SCTP 80 as TCP only) show blocked.
    for (protocol, port) in [("TCP", 81), ("UDP", 80), ("SCTP", 80)] {
        for family in [4, 6] {
            let results = probe(&lab, protocol, port, family);
            assert!(
                results.iter().all(|r| r["allowed"] == false),
                "{protocol}/{port} IPv{family}: {results:?}"
            );
        }
    }
    // The table: a header naming what was probed, a row per source, a column per destination.
    let out = lab.meshctl(&["lab", "probe", "--port", "80"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TCP/80 IPv4"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    for (line, pod) in lines[2..].iter().zip(PODS) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells, [pod, ".", ".", "."], "{table}");
    }

    // Labels, with kubectl's semantics.
    let err = lab
        .meshctl(&["lab", "label", "pod", "x/a", "pod=z"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"pod\"") && err.contains("--overwrite"),
        "{err}"
    );
    lab.meshctl(&[
        "lab",
        "label",
        "--overwrite",
        "pod",
        "x/a",
        "pod=z",
        "tier=web",
    ])
    .unwrap();
    let a = read_json(&objects.join("pods/x/a.json"));
    assert_eq!(a["metadata"]["labels"]["pod"], "z");
    assert_eq!(a["metadata"]["labels"]["tier"], "web");
    assert!(
        a["status"]["podIPs"].is_array(),
        "relabelling keeps the status"
    );
    lab.meshctl(&["lab", "label", "namespace", "x", "team-", "env=dev"])
        .unwrap();
    let x = read_json(&objects.join("namespaces/x.json"));
    assert!(x["metadata"]["labels"].get("team").is_none(), "{x}");
    assert_eq!(x["metadata"]["labels"]["env"], "dev");
    assert!(lab
        .meshctl(&[
            "lab",
            "label",
            "namespace",
            "x",
            "kubernetes.io/metadata.name-"
        ])
        .is_err());

    // Delete (from stdin): everything apply made is gone, the lab's own pods stay.
    let out = meshctl_stdin(&lab, &["lab", "delete"], OBJECTS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in [
        "namespaces/x.json",
        "namespaces/y.json",
        "pods/x/a.json",
        "pods/x/b.json",
        "pods/y/c.json",
        "networkpolicies/x/allow-all.json",
    ] {
        assert!(!objects.join(path).exists(), "{path} left behind");
    }
    assert_eq!(servers_running(&name), 0);
    assert!(
        pod_namespaces(&name).is_empty(),
        "{:?}",
        pod_namespaces(&name)
    );
    let status = lab.status().unwrap();
    assert_eq!(
        status.pods.len(),
        2,
        "lab up's pods are not Kubernetes objects"
    );
    let out = lab.meshctl(&["lab", "probe", "-o", "json"]).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"], serde_json::json!([]));

    // `lab down` stops what a later apply made.
    lab.meshctl(&["lab", "apply", "-f", file]).unwrap();
    assert_eq!(servers_running(&name), 9);
    lab.meshctl(&["lab", "down"]).unwrap();
    assert_eq!(servers_running(&name), 0);
    assert!(
        pod_namespaces(&name).is_empty(),
        "{:?}",
        pod_namespaces(&name)
    );
    eprintln!(
        "lab_policy_cli took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
