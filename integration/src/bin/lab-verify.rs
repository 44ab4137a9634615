//! `lab-verify`: prove a running lab's mesh works and that nothing crossed the underlay in clear.
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use clap::Parser;
use integration::lab::bin;
use integration::labjson::{LabStatus, CLUSTER_CIDRS};
use integration::verify::{print_report, verify, VerifyOptions, MARKER};

/// Check all-pairs reachability (IPv4, IPv6, TCP with content check) and capture the underlay.
#[derive(Debug, Parser)]
struct Cli {
    /// Lab name.
    #[arg(long, default_value = "mlab")]
    name: String,
    /// Bytes per TCP stream.
    #[arg(long, default_value_t = 4 << 20)]
    tcp_bytes: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Check nothing live: analyse this capture of the lab's underlay (taken by the caller)
    /// against the lab's policy — no address of the cluster's pod CIDRs, WireGuard only between
    /// the current nodes — and print `{"policy": …, "capture": …}` as JSON. Exit 0 when clean,
    /// 1 when a pod packet or marker was in clear, 2 when the file is missing or not a pcap.
    #[arg(long, value_name = "PCAP")]
    analyse: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("lab-verify: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let out = Command::new(bin("meshctl"))
        .args(["lab", "status", "--name", &cli.name, "-o", "json"])
        .output()
        .context("running meshctl")?;
    if !out.status.success() {
        anyhow::bail!(
            "meshctl lab status: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let status = LabStatus::from_json(&String::from_utf8_lossy(&out.stdout))?;
    if let Some(pcap) = &cli.analyse {
        return analyse_capture(&status, pcap);
    }
    let pcap = std::path::Path::new("/run/meshd-lab")
        .join(&cli.name)
        .join("verify.pcap");
    eprintln!(
        "› capturing {}:{} while every pod talks to every other node's pods",
        status.capture.namespace, status.capture.interface
    );
    let report = verify(
        &status,
        &VerifyOptions {
            tcp_bytes: cli.tcp_bytes,
            ping_count: 2,
            pcap: pcap.clone(),
        },
    )?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &pcap);
    }
    Ok(report.passed())
}

/// `--analyse`: the lab's capture policy, widened to the whole cluster pod CIDRs (a removed
/// node's pods are pods too), applied to a capture someone else took.
fn analyse_capture(status: &LabStatus, pcap: &std::path::Path) -> anyhow::Result<bool> {
    let mut policy = status.capture_policy();
    for cidr in CLUSTER_CIDRS {
        policy.pod_cidrs.push(cidr.parse().context("cluster CIDR")?);
    }
    policy.markers = vec![MARKER.as_bytes().to_vec()];
    let report = integration::capture::analyse(pcap, &policy)
        .with_context(|| format!("analysing {}", pcap.display()))?;
    let markers: Vec<String> = policy
        .markers
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "policy": {
                "pod_cidrs": policy.pod_cidrs,
                "node_addrs": policy.node_addrs,
                "wireguard_port": policy.wireguard_port,
                "markers": markers,
            },
            "capture": report,
        }))?
    );
    // Last, where a log's tail shows it.
    eprintln!("{}: {}", pcap.display(), report.summary());
    Ok(report.is_clean())
}
