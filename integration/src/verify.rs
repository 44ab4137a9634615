//! Prove the mesh works and encrypts: every pod reaches every pod on the other nodes over both
//! families, a TCP stream carrying a marker arrives intact, and a capture of the underlay taken
//! meanwhile holds no pod address in any IP header and no trace of the marker.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::capture::{analyse, Capture, CapturePolicy, CaptureReport};
use crate::lab::{bin, ping, pod_addrs, sockaddr};
use crate::labjson::{LabPod, LabStatus};
use testkit::netns::{self, ChildGuard};

/// The string sent inside every verification stream; it must never appear on the underlay.
pub const MARKER: &str = "MESHD-PLAINTEXT-CANARY";

/// What to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Bytes per TCP stream.
    pub tcp_bytes: u64,
    /// Echoes per ping.
    pub ping_count: u32,
    /// Where to write the capture.
    pub pcap: std::path::PathBuf,
}

/// One reachability check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `ping n1-p1 -> n2-p1 (10.244.2.2)`.
    pub what: String,
    /// Whether it passed.
    pub ok: bool,
}

/// The outcome.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Every check.
    pub checks: Vec<Check>,
    /// The capture analysis.
    pub capture: CaptureReport,
}

impl VerifyReport {
    /// All checks passed, the capture is clean and it did see WireGuard.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
            && self.capture.is_clean()
            && self.capture.wireguard_packets > 0
    }

    /// The failed checks.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.ok).collect()
    }
}

/// Start a `lab-traffic` sink inside `ns` and wait until it is listening.
pub fn start_sink(ns: &str, args: &[&str]) -> anyhow::Result<ChildGuard> {
    let tool = bin("lab-traffic");
    let tool = tool.to_string_lossy();
    let mut full = vec![tool.as_ref()];
    full.extend_from_slice(args);
    let mut child = netns::spawn_in(ns, &full)?;
    let stderr = child.stderr.take().context("sink stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("listening on") => break,
            Some(Ok(_)) => continue,
            _ => {
                let _ = child.kill();
                bail!(
                    "lab-traffic {} in {ns} did not start listening",
                    args.join(" ")
                );
            }
        }
    }
    // Keep draining stderr so the sink never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(ChildGuard::new(child))
}

/// A 200 datagram/s UDP sequence stream for 6 s from pod `from` to `dst` (an address of pod
/// `to`, port 6000): the sink (which waits 8 s at most and stops 1.5 s after the stream) and the
/// sender. Finish with [`finish`] on the sink after waiting for the sender.
pub fn udp_stream(
    from: &LabPod,
    to: &LabPod,
    dst: IpAddr,
) -> anyhow::Result<(ChildGuard, std::process::Child)> {
    let sink = start_sink(
        &to.namespace,
        &[
            "udp-sink",
            "--listen",
            if dst.is_ipv4() {
                "0.0.0.0:6000"
            } else {
                "[::]:6000"
            },
            "--duration-s",
            "8",
            "--idle-exit-s",
            "1.5",
        ],
    )?;
    let tool = bin("lab-traffic");
    let sender = netns::spawn_in(
        &from.namespace,
        &[
            &tool.to_string_lossy(),
            "udp-send",
            "--to",
            &sockaddr(dst, 6000),
            "--interval-ms",
            "5",
            "--duration-s",
            "6",
        ],
    )?;
    Ok((sink, sender))
}

/// Wait for a sink and return its JSON line.
pub fn finish(mut sink: ChildGuard) -> anyhow::Result<(bool, serde_json::Value)> {
    let child: Child = sink.take().context("sink already taken")?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((out.status.success(), json))
}

/// Send `bytes` over TCP from pod `from` to `to:port`, checked end to end.
pub fn tcp_transfer(
    from: &LabPod,
    to_ns: &str,
    to: IpAddr,
    port: u16,
    bytes: u64,
) -> anyhow::Result<bool> {
    let listen = sockaddr(
        if to.is_ipv4() {
            "0.0.0.0".parse()?
        } else {
            "::".parse()?
        },
        port,
    );
    let sink = start_sink(
        to_ns,
        &[
            "tcp-sink",
            "--listen",
            &listen,
            "--count",
            "1",
            "--timeout-s",
            "60",
        ],
    )?;
    let tool = bin("lab-traffic");
    let out = netns::run_in_unchecked(
        &from.namespace,
        &[
            &tool.to_string_lossy(),
            "tcp-send",
            "--to",
            &sockaddr(to, port),
            "--bytes",
            &bytes.to_string(),
            "--marker",
            MARKER,
        ],
    )?;
    let (sink_ok, _) = finish(sink)?;
    Ok(out.status.success() && sink_ok)
}

/// Run every check against the lab described by `status`.
pub fn verify(status: &LabStatus, opts: &VerifyOptions) -> anyhow::Result<VerifyReport> {
    let policy = CapturePolicy {
        pod_cidrs: status.pod_cidrs(),
        node_addrs: status.node_addrs(),
        wireguard_port: status.listen_port,
        markers: vec![MARKER.as_bytes().to_vec()],
    };
    let capture = Capture::start(
        &status.capture.namespace,
        &status.capture.interface,
        &opts.pcap,
    )?;
    let mut checks = Vec::new();
    for a in &status.pods {
        for b in status.pods.iter().filter(|b| b.node != a.node) {
            let (v4, v6) = pod_addrs(b)?;
            for dst in [v4, v6] {
                checks.push(Check {
                    what: format!("ping {} -> {} ({dst})", a.name, b.name),
                    ok: ping(a, &dst.to_string(), opts.ping_count),
                });
            }
        }
    }
    // One TCP stream per ordered pair of nodes, first pods, alternating families.
    let firsts: Vec<&LabPod> = status
        .nodes
        .iter()
        .filter_map(|n| status.pods_on(&n.name).next())
        .collect();
    let mut port = 7000;
    for a in &firsts {
        for b in firsts.iter().filter(|b| b.node != a.node) {
            let (v4, v6) = pod_addrs(b)?;
            let dst = if port % 2 == 0 { v4 } else { v6 };
            let ok = tcp_transfer(a, &b.namespace, dst, port, opts.tcp_bytes).unwrap_or(false);
            checks.push(Check {
                what: format!(
                    "tcp {} -> {} ({dst}), {} bytes, sha256 checked",
                    a.name, b.name, opts.tcp_bytes
                ),
                ok,
            });
            port += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let path = capture.stop()?;
    let report = analyse(&path, &policy)?;
    Ok(VerifyReport {
        checks,
        capture: report,
    })
}

/// [`verify`] as a test's assertion: every pod reaches every other node's pods (one echo per
/// ping, `tcp_bytes` per TCP stream) and the capture, written into `dir` as `pcap_name`, holds
/// no pod packet and no marker in clear. Prints the report; panics naming the failed checks or
/// the leak.
pub fn assert_reachable_only_encrypted(
    status: &LabStatus,
    dir: &Path,
    pcap_name: &str,
    tcp_bytes: u64,
) -> VerifyReport {
    let pcap = dir.join(pcap_name);
    let opts = VerifyOptions {
        tcp_bytes,
        ping_count: 1,
        pcap: pcap.clone(),
    };
    let report = verify(status, &opts).unwrap_or_else(|e| panic!("verifying the lab: {e:#}"));
    print_report(&report, &pcap);
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    assert!(report.capture.is_clean(), "{}", report.capture.summary());
    report
}

/// Write a human summary of a report.
pub fn print_report(report: &VerifyReport, pcap: &Path) {
    let total = report.checks.len();
    let failed = report.failures();
    println!("reachability: {}/{} checks passed (ping v4+v6 between all pods on different nodes; TCP per node pair)", total - failed.len(), total);
    for c in &failed {
        println!("  FAILED: {}", c.what);
    }
    let c = &report.capture;
    println!(
        "underlay capture ({}): {} frames, {} IP packets, {} WireGuard messages {:?} between node addresses",
        pcap.display(),
        c.packets,
        c.ip_packets,
        c.wireguard_packets,
        c.wireguard_by_type
    );
    println!(
        "  packets with a pod address in clear: {}   frames containing the canary {:?}: {}   other IP (ND/ARP-like): {}",
        c.plaintext_pod_count, MARKER, c.marker_hit_count, c.non_wireguard_ip_count
    );
    for d in c
        .plaintext_pod_packets
        .iter()
        .chain(c.marker_hits.iter())
        .take(10)
    {
        println!("  LEAK: {d}");
    }
    println!(
        "verdict: {}",
        if report.passed() {
            "PASS: every pod reached every other node's pods, and only WireGuard crossed the underlay"
        } else {
            "FAIL"
        }
    );
}
