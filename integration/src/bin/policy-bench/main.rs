//! `policy-bench`: issue 18's NetworkPolicy performance targets, measured on a 2-node meshd
//! lab in one run.
//!
//! ```sh
//! scripts/bench-deps.sh            # iperf3 (and what mesh-bench needs)
//! cargo build --release --bins     # policy-bench, meshctl, meshd, meshd-cni side by side
//! target/release/policy-bench      # --rounds 3 --policies 1000 --samples 100 [-o json]
//! ```
//!
//! 1. **Throughput with N policies** (`--policies`, 1,000): pods applied with `meshctl lab
//!    apply` (clients on both nodes, servers on both nodes, a denied intruder; see
//!    [`manifests`]), iperf3 one stream from a client to a server across the nodes and on one
//!    node, without any policy and with the set (a default-deny and an allow for the servers,
//!    the clients' egress, and generated policies with varied pod, namespace and CIDR peers and
//!    ports, many selecting the servers), alternated over `--rounds`; medians compared.
//!    Before each condition is measured `meshctl lab probe` proves it is in force (with the
//!    set the intruder is blocked and the clients are allowed). Target: with ≥ 95 % of without.
//! 2. **Apply → enforced on all nodes** (`--samples`, 100): with the set in force, the flip
//!    policy is applied alternately opening and closing a port on both servers while a prober
//!    per node sends a new connection every 2 ms from a client's namespace ([`enforce`]).
//!    Target: p99 ≤ 100 ms from invoking `meshctl lab apply` to the new verdict on both nodes.
//!
//! Prints a table (or JSON with `-o json`) with PASS/FAIL per target. Exit status: 0 when
//! every target is met, 1 when one is missed (named on stderr), 2 on an error, 130 when
//! interrupted. The lab is removed however the run ends (also on SIGINT/SIGTERM). Needs root.
//!
//! Modules: `cli` (flags), `manifests` (the objects, pure), `stats` (arithmetic and targets,
//! pure), `report` (results and their printing), `lab` (meshctl and the lab), `throughput`
//! (target 1), `enforce` and `prober` (target 2), `stop` (signals).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Parser;

use crate::cli::{Args, Output};
use crate::lab::Lab;
use crate::manifests::{policy_set, setup_objects, yaml_stream};
use crate::prober::ProbeTiming;
use crate::report::Report;
use crate::stop::{check_stop, handle_signals, stopping};

mod cli;
mod enforce;
mod lab;
mod manifests;
mod prober;
mod report;
mod stats;
use integration::bench::stop;
mod throughput;

fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// `explicit`, else `meshctl` next to this binary, else on `$PATH`.
fn find_meshctl(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut dirs: Vec<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.iter()
        .map(|d| d.join("meshctl"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("meshctl not found next to policy-bench or on $PATH"))
}

/// Each node's policy loop as its status shows it with the set in force (the policies it
/// knows, its map entries, refusals); a node that knows fewer policies than applied or
/// refused any is named on stderr, since the numbers then do not measure the whole set.
fn policy_status(lab: &Lab, applied: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for node in ["n1", "n2"] {
        match lab.node_policy(node) {
            Ok(p) => {
                let known = p["policies"].as_u64().unwrap_or(0);
                let refused = p["compile_errors"].as_array().map_or(0, Vec::len)
                    + p["malformed"].as_array().map_or(0, Vec::len);
                if known < applied as u64 || refused > 0 {
                    eprintln!(
                        "policy-bench: warning: {node} knows {known} policies of {applied}, \
                         {refused} refused"
                    );
                }
                let mut summary = serde_json::json!({"node": node});
                for key in [
                    "synced",
                    "policies",
                    "pods_known",
                    "local_endpoints",
                    "map_entries",
                    "applies",
                    "last_apply_micros",
                    "last_apply_ops",
                    "write_errors",
                ] {
                    summary[key] = p[key].clone();
                }
                summary["refused"] = refused.into();
                out.push(summary);
            }
            Err(e) => eprintln!("policy-bench: {node}'s policy status: {e:#}"),
        }
    }
    out
}

fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let meshctl = find_meshctl(args.meshctl.as_deref())?;
    let policies = usize::try_from(args.policies)?;
    report.policies = policies;
    report.rounds = args.rounds;
    report.iperf_seconds = args.duration_s;
    report.probe_interval_ms = args.interval_ms;
    report.probe_timeout_ms = args.attempt_timeout_ms;
    let name = format!("pb{}", std::process::id() % 10_000);
    report.lab = name.clone();
    eprintln!("policy-bench: lab up ({name}, 2 nodes)");
    let lab = Lab::up(&meshctl, &name)?;
    check_stop()?;
    eprintln!("policy-bench: applying namespaces and pods");
    lab.apply(&yaml_stream(&setup_objects()))
        .context("apply the bench's namespaces and pods")?;
    let set_yaml = yaml_stream(&policy_set(policies));
    if !args.no_throughput {
        report.throughput = Some(throughput::measure(
            &lab,
            &set_yaml,
            args.rounds,
            args.duration_s,
            !args.no_enforcement,
        )?);
    } else if !args.no_enforcement {
        let _ = throughput::switch(&lab, true, &set_yaml)?;
    }
    report.policy_status = policy_status(&lab, policies);
    if !args.no_enforcement {
        let timing = ProbeTiming {
            interval: Duration::from_secs_f64(args.interval_ms.max(0.2) / 1e3),
            timeout: Duration::from_secs_f64(args.attempt_timeout_ms.max(1.0) / 1e3),
            settle: 5,
            max_wait: Duration::from_secs(args.max_wait_s.max(1)),
        };
        eprintln!(
            "policy-bench: {} flips of the flip policy with {policies} policies in force",
            args.samples
        );
        report.enforcement = Some(enforce::measure(
            &lab,
            usize::try_from(args.samples)?,
            timing,
        )?);
    }
    drop(lab);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !testkit::require::is_root() {
        eprintln!("policy-bench needs root (network namespaces)");
        return ExitCode::from(2);
    }
    handle_signals("policy-bench");
    let mut report = Report {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average_start: load_average(),
        ..Default::default()
    };
    if let Err(e) = run(&args, &mut report) {
        eprintln!("policy-bench: {e:#}");
        return ExitCode::from(if stopping() { 130 } else { 2 });
    }
    report.load_average_end = load_average();
    report.finish();
    match args.output {
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("policy-bench: {e}");
                return ExitCode::from(2);
            }
        },
        Output::Table => print!("{}", report.render()),
    }
    let missed = report.missed();
    if missed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("policy-bench: {} target(s) missed:", missed.len());
        for m in missed {
            eprintln!("  {m}");
        }
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod prober_tests;
#[cfg(test)]
mod tests;
