//! Two NetworkPolicy semantics of issue 18 the conformance suite (`netpol_conformance.rs`) does
//! not reach, checked on a two-node lab through `meshctl lab apply/delete/probe` (root):
//!
//! * `named_ports_resolve_per_serving_pod`: one name mapped to different numbers on two selected
//!   pods. Pods `np/p1` (n1: `web` = 8080/TCP, `alt` = 9090/TCP) and `np/p2` (n2: `web` =
//!   9090/TCP, `alt` = 8080/TCP) both serve both numbers, under swapped names; `np/client` (n1)
//!   connects. An ingress policy on both servers allowing port `web` from the client, then an
//!   egress policy on the client allowing port `web` to both, must each give exactly:
//!   client → p1:8080 allowed, client → p1:9090 blocked, client → p2:9090 allowed,
//!   client → p2:8080 blocked — same-node (p1) and cross-node (p2), IPv4 and IPv6. A union of the
//!   numbers (8080 and 9090 on both) or the numbers of the policy's own node would fail it.
//! * `policy_change_cuts_established_connections`: `docs/policy.md` — an established connection
//!   is judged again on its next packet after a policy change and cut if no longer allowed.
//!   Long-lived TCP connections from `est/client` (n1) to echo listeners this test runs inside
//!   `est/s1` (n1, same-node) and `est/s2` (n2, cross-node) on ports 7000 and 7001, both
//!   families, send a line every 50 ms and read it back. An ingress policy on the servers
//!   allowing only 7000 must cut every 7001 connection (its reads time out) while every 7000
//!   connection keeps echoing; then, on fresh connections, an egress policy on the client
//!   allowing only 7001 must cut the 7000 ones and keep the 7001 ones. A connection opened
//!   while a deny is in force never connects. UDP flows to the lab's echo server (port 7100,
//!   both servers and families) are cut by both policies alike, and a UDP flow opened while
//!   denied never gets an echo. `policy_denied_ingress` (both nodes) and
//!   `policy_denied_egress` (n1) in `meshctl lab status -o json` grow.
//! * `deny_all_egress_but_dns`: the usual "deny all egress but DNS" policy — egress on port 53,
//!   UDP and TCP, to anywhere, nothing else. `dns/client` (n1) reaches `dns/resolver` (n2) on
//!   UDP 53 and TCP 53 and on nothing else (TCP 80, UDP 80 blocked), both families; the
//!   resolver, not isolated, still reaches the client.
//!
//! The echo listeners and clients are sockets of this process opened inside the pods' network
//! namespaces (`<lab>-pod-<namespace>.<name>`, docs/lab.md); the lab's own TCP servers only
//! accept and close. Every lab is unique and torn down on drop, also on a failure.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "netpol/flows.rs"]
mod flows;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use integration::lab::{self, Lab};
use k8s_openapi::api::core::v1 as core;
use meshd_lab::plan::applied_pod_ns;
use serde::Deserialize;
use testkit::netns;

use flows::{EchoServers, Flow, ECHO_TIMEOUT, TICK};

/// How long a policy change may take to show in the probes (enforcement is asynchronous).
const WINDOW: Duration = Duration::from_secs(5);
/// `lab probe`'s per-connection timeout.
const PROBE_TIMEOUT_MS: &str = "500";

// ---------------------------------------------------------------------------------------------
// Lab helpers

/// Applies (`verb` = `apply`) or deletes YAML `text` with `meshctl lab`.
fn lab_file(lab: &Lab, verb: &str, text: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("objects.yaml");
    std::fs::write(&path, text)?;
    lab.meshctl(&["lab", verb, "-f", &path.to_string_lossy()])?;
    Ok(())
}

/// Pod `ns/name`'s address of `family`, from its object in the lab's registry (contract 5).
fn pod_address(lab: &Lab, pod: &str, family: u8) -> anyhow::Result<IpAddr> {
    let status = lab.status_json()?;
    let registry = PathBuf::from(
        status["registry_dir"]
            .as_str()
            .context("lab status has no registry_dir")?,
    );
    let path = registry.join("objects/pods").join(format!("{pod}.json"));
    let object: core::Pod = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    object
        .status
        .and_then(|s| s.pod_ips)
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.ip.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv4() == (family == 4))
        .with_context(|| format!("{} has no IPv{family} status.podIPs", path.display()))
}

/// The network namespace `lab apply` made for pod `ns/name`.
fn pod_netns(lab: &Lab, pod: &str) -> String {
    let (namespace, name) = pod.split_once('/').unwrap();
    applied_pod_ns(lab.name(), namespace, name)
}

/// A node's datapath counter from `meshctl lab status -o json`.
fn counter(lab: &Lab, node: &str, name: &str) -> anyhow::Result<u64> {
    let status = lab.status_json()?;
    let nodes = status["nodes"]
        .as_array()
        .context("lab status has no nodes")?;
    let entry = nodes
        .iter()
        .find(|n| n["name"] == node)
        .with_context(|| format!("lab status has no node {node}"))?;
    entry["counters"][name]
        .as_u64()
        .with_context(|| format!("node {node} has no counter {name}: {}", entry["counters"]))
}

#[derive(Debug, Deserialize)]
struct ProbeResult {
    from: String,
    to: String,
    allowed: bool,
}

#[derive(Debug, Deserialize)]
struct ProbeReport {
    results: Vec<ProbeResult>,
}

/// One `meshctl lab probe` of `protocol` `port` over `family`: (from, to) → allowed.
fn probe(
    lab: &Lab,
    protocol: &str,
    port: u16,
    family: u8,
) -> anyhow::Result<BTreeMap<(String, String), bool>> {
    let (port, family) = (port.to_string(), family.to_string());
    let out = lab.meshctl(&[
        "lab",
        "probe",
        "--port",
        &port,
        "--protocol",
        protocol,
        "--family",
        &family,
        "--timeout-ms",
        PROBE_TIMEOUT_MS,
        "-o",
        "json",
    ])?;
    let report: ProbeReport = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "lab probe output is not the contract's JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok(report
        .results
        .into_iter()
        .map(|r| ((r.from, r.to), r.allowed))
        .collect())
}

/// Probes TCP `port` over `family` until every pair of `expected` (from, to, allowed) shows, or
/// fails after [`WINDOW`] naming the pairs that differ.
fn await_verdicts(
    lab: &Lab,
    what: &str,
    port: u16,
    family: u8,
    expected: &[(&str, &str, bool)],
) -> anyhow::Result<()> {
    await_protocol_verdicts(lab, what, "TCP", port, family, expected)
}

/// [`await_verdicts`] for any protocol `lab probe` takes (`TCP`, `UDP`, `SCTP`).
fn await_protocol_verdicts(
    lab: &Lab,
    what: &str,
    protocol: &str,
    port: u16,
    family: u8,
    expected: &[(&str, &str, bool)],
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let observed = probe(lab, protocol, port, family)?;
        let mut wrong = Vec::new();
        for (from, to, allowed) in expected {
            let got = observed.get(&((*from).to_owned(), (*to).to_owned()));
            if got != Some(allowed) {
                let verdict = |a: bool| if a { "allowed" } else { "blocked" };
                wrong.push(format!(
                    "{from} → {to}:{port}: expected {}, observed {}",
                    verdict(*allowed),
                    got.map_or("nothing", |g| verdict(*g))
                ));
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        if started.elapsed() > WINDOW {
            bail!(
                "{what}, {protocol}/{port} IPv{family}: after {:?} still\n  {}",
                started.elapsed(),
                wrong.join("\n  ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Named ports

const NAMED_PORT_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: np}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: np, labels: {app: srv}}
spec:
  nodeName: n1
  containers:
  - name: web
    ports: [{name: web, containerPort: 8080, protocol: TCP}]
  - name: alt
    ports: [{name: alt, containerPort: 9090, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: np, labels: {app: srv}}
spec:
  nodeName: n2
  containers:
  - name: web
    ports: [{name: web, containerPort: 9090, protocol: TCP}]
  - name: alt
    ports: [{name: alt, containerPort: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: np, labels: {role: client}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{name: http, containerPort: 80, protocol: TCP}]
"#;

/// Ingress of both servers: port `web` from the client only.
const WEB_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: np}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: web}]
"#;

/// Egress of the client: port `web` to both servers only.
const WEB_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: np}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: srv}}}]
    ports: [{port: web}]
"#;

/// The client's verdicts on `port` when `web` is all a policy allows: p1 serves `web` on 8080,
/// p2 on 9090; the other number, which each also serves (as `alt`), is blocked.
fn web_only(port: u16) -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("np/client", "np/p1", port == 8080),
        ("np/client", "np/p2", port == 9090),
    ]
}

#[test]
fn named_ports_resolve_per_serving_pod() {
    testkit::require_tools(lab::TOOLS);
    let started = Instant::now();
    let lab = Lab::up(2, 1).unwrap();
    lab_file(&lab, "apply", NAMED_PORT_PODS).unwrap();
    // Without a policy every number is served and reachable, both ways between the servers:
    // a blocked verdict later is the policy's.
    for family in [4, 6] {
        for port in [8080, 9090] {
            let all = [
                ("np/client", "np/p1", true),
                ("np/client", "np/p2", true),
                ("np/p1", "np/p2", true),
                ("np/p2", "np/p1", true),
            ];
            await_verdicts(&lab, "no policy", port, family, &all).unwrap();
        }
    }

    lab_file(&lab, "apply", WEB_INGRESS).unwrap();
    for family in [4, 6] {
        for port in [8080, 9090] {
            // The servers are isolated for ingress: the other server is no client.
            let mut expected = web_only(port);
            expected.extend([("np/p1", "np/p2", false), ("np/p2", "np/p1", false)]);
            await_verdicts(&lab, "ingress on port web", port, family, &expected).unwrap();
        }
    }

    lab_file(&lab, "apply", WEB_EGRESS).unwrap();
    lab_file(&lab, "delete", WEB_INGRESS).unwrap();
    for family in [4, 6] {
        for port in [8080, 9090] {
            // Only the client is isolated now: the servers reach each other again.
            let mut expected = web_only(port);
            expected.extend([("np/p1", "np/p2", true), ("np/p2", "np/p1", true)]);
            await_verdicts(&lab, "egress on port web", port, family, &expected).unwrap();
        }
    }
    println!("named ports checked in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Established connections

const ECHO_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: est}
---
apiVersion: v1
kind: Pod
metadata: {name: s1, namespace: est, labels: {app: echo}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{containerPort: 80}, {containerPort: 7100, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: s2, namespace: est, labels: {app: echo}}
spec:
  nodeName: n2
  containers:
  - name: c
    ports: [{containerPort: 80}, {containerPort: 7100, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: est, labels: {role: client}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{containerPort: 80}]
"#;

/// Ingress of the echo servers: TCP 7000 from the client only (7001 no longer allowed).
const ECHO_INGRESS_7000: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: echo-ingress, namespace: est}
spec:
  podSelector: {matchLabels: {app: echo}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 7000, protocol: TCP}]
"#;

/// Egress of the client: TCP 7001 to the echo servers only (7000 no longer allowed).
const CLIENT_EGRESS_7001: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: est}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: echo}}}]
    ports: [{port: 7001, protocol: TCP}]
"#;

/// The echo ports on every server.
const ECHO_PORTS: [u16; 2] = [7000, 7001];
/// The UDP port the lab's echo server serves on every server (`ECHO_PODS`).
const UDP_ECHO_PORT: u16 = 7100;
const SERVERS: [&str; 2] = ["est/s1", "est/s2"];

/// Opens one flow from the client to every server, port and family; waits until each echoed a
/// few lines.
fn open_flows(lab: &Lab) -> anyhow::Result<Vec<(u16, Flow)>> {
    let client = pod_netns(lab, "est/client");
    let mut flows = Vec::new();
    for server in SERVERS {
        for port in ECHO_PORTS {
            for family in [4, 6] {
                let to = SocketAddr::new(pod_address(lab, server, family)?, port);
                let name = format!("est/client → {server} TCP {to}");
                flows.push((port, Flow::open(name, &client, to)?));
            }
        }
        for family in [4, 6] {
            let to = SocketAddr::new(pod_address(lab, server, family)?, UDP_ECHO_PORT);
            let name = format!("est/client → {server} UDP {to}");
            flows.push((UDP_ECHO_PORT, Flow::open_udp(name, &client, to)?));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while flows.iter().any(|(_, f)| f.echoes() < 3) {
        for (_, f) in &flows {
            if let Some((_, why)) = f.failed() {
                bail!("{} failed before any policy: {why}", f.name);
            }
        }
        if Instant::now() > deadline {
            bail!("the flows never all echoed before any policy");
        }
        std::thread::sleep(TICK);
    }
    Ok(flows)
}

/// Applies `policy` while `flows` run: waits until every flow to a port of `cut` has failed and
/// checks that every other flow kept echoing throughout (no failure, and lines echoed after the
/// last cut one failed).
fn apply_and_judge(
    lab: &Lab,
    policy: &str,
    flows: &[(u16, Flow)],
    cut: &[u16],
) -> anyhow::Result<()> {
    lab_file(lab, "apply", policy)?;
    let applied = Instant::now();
    let deadline = applied + WINDOW + ECHO_TIMEOUT;
    loop {
        let waiting: Vec<&str> = flows
            .iter()
            .filter(|(port, f)| cut.contains(port) && f.failed().is_none())
            .map(|(_, f)| f.name.as_str())
            .collect();
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{:?} after the apply these connections, no longer allowed, still echo:\n  {}",
                applied.elapsed(),
                waiting.join("\n  ")
            );
        }
        std::thread::sleep(TICK);
    }
    for (_, f) in flows.iter().filter(|(port, _)| cut.contains(port)) {
        if let (Some((at, why)), Some(last)) = (f.failed(), f.last_echo()) {
            // Negative: the last echo came before the apply returned.
            let last_ms = last.duration_since(applied).as_secs_f64() * 1000.0
                - applied.duration_since(last).as_secs_f64() * 1000.0;
            println!(
                "  {}: last echo {last_ms:+.0} ms from the apply, failed after {:?} ({why})",
                f.name,
                at.duration_since(applied)
            );
        }
    }
    let kept_before: Vec<u64> = flows.iter().map(|(_, f)| f.echoes()).collect();
    // Long enough for a kept flow that a re-judgement had wrongly cut to hit its timeout.
    std::thread::sleep(ECHO_TIMEOUT + Duration::from_millis(300));
    for ((port, f), before) in flows.iter().zip(kept_before) {
        if cut.contains(port) {
            continue;
        }
        if let Some((at, why)) = f.failed() {
            bail!(
                "{} is still allowed but was cut {:?} after the apply: {why}",
                f.name,
                at.duration_since(applied)
            );
        }
        let since = f.echoes() - before;
        if since < 5 {
            bail!(
                "{} is still allowed but echoed only {since} lines in the last {:?}",
                f.name,
                ECHO_TIMEOUT
            );
        }
    }
    Ok(())
}

/// With the policy allowing only TCP `allowed` in force, new connections to `denied` on every
/// server and family never connect and new UDP flows to the echo port never get an echo, while
/// new connections to `allowed` connect.
fn new_connections_follow_policy(lab: &Lab, allowed: u16, denied: u16) -> anyhow::Result<()> {
    let client = pod_netns(lab, "est/client");
    let mut attempts = Vec::new();
    let mut datagrams = Vec::new();
    for server in SERVERS {
        for family in [4, 6] {
            let address = pod_address(lab, server, family)?;
            let to = SocketAddr::new(address, UDP_ECHO_PORT);
            let name = format!("est/client → {server} UDP {to}");
            datagrams.push(Flow::open_udp(name, &client, to)?);
            for port in [allowed, denied] {
                let to = SocketAddr::new(address, port);
                let ns = client.clone();
                // Long enough for a retransmitted SYN: no later packet may open it either.
                attempts.push((
                    port,
                    to,
                    std::thread::spawn(move || {
                        netns::within(&ns, || {
                            TcpStream::connect_timeout(&to, Duration::from_millis(1500))
                        })
                    }),
                ));
            }
        }
    }
    for (port, to, attempt) in attempts {
        let result = attempt.join().unwrap()?;
        match (port == allowed, result) {
            (true, Ok(_)) | (false, Err(_)) => {}
            (true, Err(e)) => bail!("a new connection to {to}, allowed, failed: {e}"),
            (false, Ok(_)) => bail!("a new connection to {to} connected while denied"),
        }
    }
    // The denied TCP attempts took 1.5 s, so every UDP flow has sent datagrams for its whole
    // ECHO_TIMEOUT and given up.
    for flow in datagrams {
        if flow.echoes() > 0 {
            bail!(
                "{}, opened while denied, got {} echoes",
                flow.name,
                flow.echoes()
            );
        }
    }
    Ok(())
}

#[test]
fn policy_change_cuts_established_connections() {
    testkit::require_tools(lab::TOOLS);
    let started = Instant::now();
    let lab = Lab::up(2, 1).unwrap();
    lab_file(&lab, "apply", ECHO_PODS).unwrap();
    let mut listen = Vec::new();
    for server in SERVERS {
        for family in [4, 6] {
            let address = pod_address(&lab, server, family).unwrap();
            for port in ECHO_PORTS {
                listen.push((pod_netns(&lab, server), SocketAddr::new(address, port)));
            }
        }
    }
    let _servers = EchoServers::start(&listen).unwrap();

    // Ingress: the servers now allow 7000 only. Decided on each server's node: n1 for s1
    // (same-node with the client), n2 for s2 (cross-node).
    let ingress_before = [
        counter(&lab, "n1", "policy_denied_ingress").unwrap(),
        counter(&lab, "n2", "policy_denied_ingress").unwrap(),
    ];
    let flows = open_flows(&lab).unwrap();
    apply_and_judge(&lab, ECHO_INGRESS_7000, &flows, &[7001, UDP_ECHO_PORT]).unwrap();
    drop(flows);
    new_connections_follow_policy(&lab, 7000, 7001).unwrap();
    let ingress_after = [
        counter(&lab, "n1", "policy_denied_ingress").unwrap(),
        counter(&lab, "n2", "policy_denied_ingress").unwrap(),
    ];
    assert!(
        ingress_after[0] > ingress_before[0] && ingress_after[1] > ingress_before[1],
        "policy_denied_ingress of n1, n2 went from {ingress_before:?} to {ingress_after:?}"
    );
    lab_file(&lab, "delete", ECHO_INGRESS_7000).unwrap();

    // Egress: the client now reaches 7001 only. Decided on the client's node n1.
    let egress_before = counter(&lab, "n1", "policy_denied_egress").unwrap();
    // The deleted ingress policy may take a moment to leave the datapath.
    let deadline = Instant::now() + WINDOW;
    let flows = loop {
        match open_flows(&lab) {
            Ok(flows) => break flows,
            Err(e) if Instant::now() > deadline => {
                panic!("fresh flows after deleting the ingress policy: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    apply_and_judge(&lab, CLIENT_EGRESS_7001, &flows, &[7000, UDP_ECHO_PORT]).unwrap();
    drop(flows);
    new_connections_follow_policy(&lab, 7001, 7000).unwrap();
    let egress_after = counter(&lab, "n1", "policy_denied_egress").unwrap();
    assert!(
        egress_after > egress_before,
        "policy_denied_egress of n1 went from {egress_before} to {egress_after}"
    );
    println!("established connections checked in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Deny all egress but DNS

const DNS_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: dns}
---
apiVersion: v1
kind: Pod
metadata: {name: resolver, namespace: dns, labels: {app: dns}}
spec:
  nodeName: n2
  containers:
  - name: dns
    ports:
    - {name: dns, containerPort: 53, protocol: UDP}
    - {name: dns-tcp, containerPort: 53, protocol: TCP}
    - {name: http, containerPort: 80, protocol: TCP}
    - {name: other, containerPort: 80, protocol: UDP}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: dns, labels: {role: client}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{containerPort: 80, protocol: TCP}]
"#;

/// The client may send only DNS, to anyone.
const EGRESS_DNS_ONLY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress-but-dns, namespace: dns}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#;

#[test]
fn deny_all_egress_but_dns() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    lab_file(&lab, "apply", DNS_PODS).unwrap();
    let to_resolver = |allowed: bool| [("dns/client", "dns/resolver", allowed)];
    // Without a policy every served port is reachable: a blocked verdict later is the policy's.
    for family in [4, 6] {
        for (protocol, port) in [("UDP", 53), ("TCP", 53), ("TCP", 80), ("UDP", 80)] {
            let what = "no policy";
            await_protocol_verdicts(&lab, what, protocol, port, family, &to_resolver(true))
                .unwrap();
        }
    }
    lab_file(&lab, "apply", EGRESS_DNS_ONLY).unwrap();
    for family in [4, 6] {
        for (protocol, port, allowed) in [
            ("UDP", 53, true),
            ("TCP", 53, true),
            ("TCP", 80, false),
            ("UDP", 80, false),
        ] {
            let what = "egress DNS only";
            await_protocol_verdicts(&lab, what, protocol, port, family, &to_resolver(allowed))
                .unwrap();
        }
        // The resolver is not isolated: it still reaches the client (whose ingress is open).
        let back = [("dns/resolver", "dns/client", true)];
        await_verdicts(&lab, "egress DNS only, reverse", 80, family, &back).unwrap();
    }
}
