//! `lab-verify`: prove a running lab's mesh works and that nothing crossed the underlay in clear.
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use clap::Parser;
use integration::lab::bin;
use integration::labjson::LabStatus;
use integration::verify::{print_report, verify, VerifyOptions};

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
