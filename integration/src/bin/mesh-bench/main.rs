//! `mesh-bench`: meshd's user-space datapath against plain veth and the user-space
//! WireGuard references, in one run on one machine.
//!
//! Install what it compares against first (root; idempotent):
//!
//! ```sh
//! scripts/bench-deps.sh          # iperf3, wireguard-go, wireguard-tools; boringtun-cli into /opt/meshd-bench
//! cargo build --release --bins   # mesh-bench, meshctl, meshd, meshd-wg side by side
//! target/release/mesh-bench      # --duration-s 10 --only … --scale … --json
//! ```
//!
//! Data plane, TCP throughput (iperf3, 1 and 4 streams) and RTT (ping) for
//!
//! - `plain`: two fresh namespaces joined by a veth pair (MTU 1500);
//! - `wireguard-go`: the same plus a wireguard-go tunnel (MTU 1420), configured with `wg`;
//! - `boringtun-cli`: the same with `boringtun-cli -f --disable-drop-privileges --threads 1`;
//! - `meshd`: pod to pod across two nodes of a meshd lab (`meshctl lab up`), pod traffic
//!   steered into the tunnel by the tc eBPF redirect (the default), through whatever
//!   `meshd-wg` sits next to meshd;
//! - `meshd-routes`: the same with `--pod-steering routes` (not run by default);
//! - `meshd-wg`: meshd's datapath alone, set up exactly like wireguard-go and boringtun-cli
//!   (two namespaces over a veth, configured with `wg`): the like-for-like comparison;
//! - `plain-lab`: the meshd lab with encryption disabled, pod to pod across two nodes: the
//!   lab's own hops (pod veths, bridge), the baseline the `meshd` scenario adds to,
//!
//! then peer scale for each user-space implementation (wireguard-go, boringtun-cli,
//! meshd-wg): one device in a namespace of its own, `--peers` peers configured over its raw
//! UAPI socket, the time to add and to remove one more peer, its RSS and its idle CPU.
//! It prints both tables, meshd's ratios to the references and the targets with PASS/FAIL
//! (or JSON with `--json`). The parsing, ratios, targets and the table live in
//! `integration::bench`; this binary builds namespaces and runs processes. Everything it
//! creates is removed on exit, also on error and on SIGINT/SIGTERM.
//!
//! Exit status: 0 when every measured target is met; 1 when a target is missed (each named
//! on stderr with its measurement and bar) or the run failed; 130 when interrupted. A target
//! that was not measured (`n/a`: its scenario left out with `--only` or unable to run) does
//! not fail the run.
//!
//! One module per part: `cli` (the flags), `dataplane` (plain veth and the user-space tunnels,
//! and running a scenario by name), `lab` (the scenarios on meshd's lab), `scale` (peer
//! scale), `process` (finding binaries, running commands, the daemons under test), `stop`
//! (SIGINT/SIGTERM), `verdict` (which targets were missed, for the exit status) and
//! `flow_pair` (`--flow-events-pair`: throughput with flow events on against off).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use integration::bench::{
    self, Report, ScenarioResult, Targets, Userspace, BORINGTUN, WIREGUARD_GO,
};

use crate::cli::{list, Args, SCENARIOS};
use crate::dataplane::scenario;
use crate::process::run_ok;
use crate::scale::scale;
use crate::stop::{check_stop, handle_signals, stopping};
use crate::verdict::{run_verdict, RunVerdict};

mod cli;
mod dataplane;
mod flow_pair;
mod lab;
mod process;
mod scale;
use integration::bench::stop;
mod verdict;

/// Settings shared by every measurement.
struct Cfg {
    secs: u64,
    pings: u32,
    ping_interval_ms: u64,
    peers: u32,
    churn_samples: u32,
    idle: Duration,
    clk_tck: u64,
}

struct Measured {
    gbit_1: f64,
    gbit_4: f64,
    retr_1: Option<u64>,
    retr_4: Option<u64>,
    rtt_ms: f64,
}

/// `getconf CLK_TCK`, else Linux's USER_HZ of 100.
fn clock_ticks() -> u64 {
    run_ok("getconf", &["CLK_TCK"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

fn run(args: &Args) -> anyhow::Result<Report> {
    let wanted = list(&args.only, &SCENARIOS, "scenario")?;
    let impls = list(
        &args.scale,
        &[WIREGUARD_GO, BORINGTUN, bench::MESHD_WG],
        "implementation",
    )?;
    if args.peers + args.churn_samples > bench::MAX_SYNTHETIC_PEERS {
        bail!(
            "--peers + --churn-samples must stay within {}",
            bench::MAX_SYNTHETIC_PEERS
        );
    }
    let cfg = Cfg {
        secs: args.duration_s.max(1),
        pings: args.pings.max(1),
        ping_interval_ms: args.ping_interval_ms.max(2),
        peers: args.peers,
        churn_samples: args.churn_samples,
        idle: Duration::from_secs(args.idle_s.max(1)),
        clk_tck: clock_ticks(),
    };
    let mut report = Report {
        duration_s: cfg.secs,
        pings: cfg.pings,
        ping_interval_ms: cfg.ping_interval_ms,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        scale_peers: cfg.peers,
        rounds: args.rounds,
        ..Default::default()
    };
    // In a fixed order, whatever the order on the command line.
    let names: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| wanted.iter().any(|w| w == s))
        .collect();
    let mut runs: Vec<Vec<ScenarioResult>> = vec![Vec::new(); names.len()];
    for round in 1..=report.rounds {
        for (name, runs) in names.iter().zip(runs.iter_mut()) {
            check_stop()?;
            if report.rounds > 1 {
                eprintln!(
                    "mesh-bench: data plane, {name} (round {round} of {})",
                    report.rounds
                );
            } else {
                eprintln!("mesh-bench: data plane, {name}");
            }
            runs.push(scenario(name, args, &cfg));
        }
    }
    report.results = runs.into_iter().map(bench::merge_rounds).collect();
    for u in [
        Userspace::WireguardGo,
        Userspace::Boringtun,
        Userspace::MeshdWg,
    ] {
        if impls.iter().any(|i| i == u.name()) {
            check_stop()?;
            eprintln!("mesh-bench: peer scale, {} ({} peers)", u.name(), cfg.peers);
            report.peer_scale.push(scale(u, args, &cfg));
        }
    }
    check_stop()?;
    report.finish(&Targets::default());
    Ok(report)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !testkit::require::is_root() {
        eprintln!("mesh-bench needs root (network namespaces)");
        return ExitCode::FAILURE;
    }
    handle_signals("mesh-bench");
    if args.flow_events_pair {
        return run_flow_pair(&args);
    }
    match run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("mesh-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.render());
            }
            match run_verdict(&report.targets) {
                RunVerdict::Met => ExitCode::SUCCESS,
                RunVerdict::Missed(missed) => {
                    eprintln!("mesh-bench: {} target(s) missed:", missed.len());
                    for m in missed {
                        eprintln!("  {m}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("mesh-bench: {e:#}");
            if stopping() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `--flow-events-pair`: the pair, its text or JSON, and the exit status of its target.
fn run_flow_pair(args: &Args) -> ExitCode {
    let cfg = Cfg {
        secs: args.duration_s.max(1),
        pings: args.pings.max(1),
        ping_interval_ms: args.ping_interval_ms.max(2),
        peers: args.peers,
        churn_samples: args.churn_samples,
        idle: Duration::from_secs(args.idle_s.max(1)),
        clk_tck: clock_ticks(),
    };
    match flow_pair::run(args, &cfg) {
        Ok(pair) => {
            if args.json {
                match serde_json::to_string_pretty(&pair) {
                    Ok(j) => println!("{j}"),
                    Err(e) => eprintln!("mesh-bench: {e}"),
                }
            } else {
                print!("{}", flow_pair::render(&pair));
            }
            if pair.passed {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "mesh-bench: flow events on below {:.0} % of off (1 stream {:.3}, 4 streams {:.3})",
                    flow_pair::MIN_RATIO * 100.0,
                    pair.ratio_1,
                    pair.ratio_4
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("mesh-bench: {e:#}");
            if stopping() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests;
