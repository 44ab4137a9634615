//! `scale-bench`: meshd's control plane at N nodes, measured on one machine.
//!
//! ```sh
//! cargo build --workspace --bins
//! target/debug/scale-bench --nodes 5000          # --real-nodes 2 --additions 50 --json …
//! ```
//!
//! A lab of a few real meshd agents (`--real-nodes`, default 2) plus `--nodes` simulated
//! nodes whose records the harness writes into the lab's directory registry: valid records
//! with real x25519 keys, both families, endpoints in non-routed ranges and pod CIDRs inside
//! the lab's pools (see `sim`). It measures, in order:
//!
//! 1. **cold convergence**: every agent's meshd stopped, the N records written, every meshd
//!    started again; the time until each agent's status lists all N peers and its last pass
//!    converged (an agent that does not within `--timeout-s` is reported with its status and
//!    the last warnings of its log);
//! 2. **a new node**: one record more, the time until every agent's status lists it (p50, p99
//!    over `--additions`), then as many again without reading any status, for the CPU time
//!    (utime+stime of meshd and of its `meshd-wg` processes) per added record; RSS after;
//! 3. **steady state**: registry writes over `--steady-s` with nothing changing (an inotify
//!    count of the registry directory; every write is one watch event to every agent);
//! 4. **every node rotating once**: the real agents via `meshctl lab rotate-key`, the
//!    simulated nodes step by step in their own records (nobody writes for another node: the
//!    agents prove their peers' readiness from their own devices); the writes per node per
//!    rotation and how long the agents' rotation took;
//! 5. **pod identity distribution**: `--pods-per-node` Pods per simulated node written as
//!    `objects/pods/` files; writes and watch events per pod creation, agent memory after.
//!
//! Then the issue's targets (cold convergence ≤ 2 s, new node p99 ≤ 200 ms, RSS ≤ 64 MiB, no
//! steady-state writes, ≤ 4 writes per node per rotation) with PASS/FAIL. Exit status: 0 when
//! every measured target is met, 1 when one is missed or the run failed, 130 when interrupted.
//! The lab is removed on exit, also on error and on SIGINT/SIGTERM.
//!
//! Modules: `cli` (flags), `sim` (the simulated records, pure, and writing them), `agents`
//! (the real agents' status, memory and CPU), `writes` (counting registry writes), `phases`
//! (convergence, additions, steady state), `rotation`, `pods`, `report` (results, targets,
//! rendering).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use integration::bench::stop::{check_stop, handle_signals, stopping};
use integration::lab::Lab;

use crate::agents::{wait_status, with_signals_unblocked, Agent};
use crate::cli::Args;
use crate::phases::Run;
use crate::report::Report;
use crate::writes::WriteCounter;

mod agents;
mod cli;
mod phases;
mod pods;
mod report;
mod rotation;
mod sim;
mod writes;

/// `getconf CLK_TCK`, else Linux's USER_HZ of 100.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

fn run(args: &Args, r: &mut Report) -> anyhow::Result<()> {
    let capacity = args.nodes + 2 * args.additions;
    if capacity > sim::MAX_SIMULATED {
        bail!(
            "--nodes + 2 × --additions must stay within {}",
            sim::MAX_SIMULATED
        );
    }
    eprintln!("scale-bench: lab of {} nodes", args.real_nodes);
    let lab = with_signals_unblocked(|| Lab::up(args.real_nodes, 1))?;
    let agents = Agent::all(&lab)?;
    for a in &agents {
        let others = agents.len() - 1;
        wait_status(
            a,
            std::time::Instant::now(),
            Duration::from_secs(60),
            Duration::from_millis(200),
            |st| st.converged && st.peers.len() == others,
        )
        .map_err(|_| anyhow::anyhow!("{}: the lab did not mesh", a.name))?;
    }
    let registry = PathBuf::from(
        lab.status_json()?["registry_dir"]
            .as_str()
            .context("lab status has no registry_dir")?,
    );
    let counter = WriteCounter::start(std::slice::from_ref(&registry))?;
    let mut run = Run {
        lab: &lab,
        agents,
        registry: &registry,
        sims: Vec::new(),
        capacity,
        counter,
        clk_tck: clock_ticks(),
    };
    eprintln!("scale-bench: cold convergence at {} nodes", args.nodes);
    phases::cold(&mut run, args.nodes, Duration::from_secs(args.timeout_s), r)?;
    check_stop()?;
    eprintln!("scale-bench: {} additions", args.additions);
    let poll = Duration::from_millis(args.poll_ms.max(1));
    if let Err(e) = phases::additions(
        &mut run,
        args.additions,
        poll,
        Duration::from_secs(args.addition_timeout_s.max(1)),
        r,
    ) {
        r.errors.push(format!("additions: {e:#}"));
    }
    check_stop()?;
    eprintln!("scale-bench: steady state, {} s", args.steady_s);
    phases::steady(&run, Duration::from_secs(args.steady_s.max(1)), r)?;
    if !args.no_rotation {
        check_stop()?;
        eprintln!("scale-bench: every node rotates once");
        match rotation::rotation(&mut run) {
            Ok(rot) => r.rotation = Some(rot),
            Err(e) => r.errors.push(format!("rotation: {e:#}")),
        }
    }
    if args.pods_per_node > 0 {
        check_stop()?;
        eprintln!("scale-bench: {} pods per node", args.pods_per_node);
        match pods::pods(&run, args.pods_per_node) {
            Ok(p) => r.pods = Some(p),
            Err(e) => r.errors.push(format!("pods: {e:#}")),
        }
    }
    eprintln!("scale-bench: removing the lab");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !testkit::require::is_root() {
        eprintln!("scale-bench needs root (network namespaces)");
        return ExitCode::FAILURE;
    }
    handle_signals("scale-bench");
    let mut report = Report {
        nodes: args.nodes,
        real_nodes: args.real_nodes,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        ..Default::default()
    };
    let outcome = run(&args, &mut report);
    if stopping() {
        eprintln!("scale-bench: interrupted");
        return ExitCode::from(130);
    }
    if let Err(e) = &outcome {
        report.errors.push(format!("{e:#}"));
    }
    report.judge();
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("scale-bench: {e}"),
        }
    } else {
        print!("{}", report.render());
    }
    let missed = report.missed();
    if outcome.is_err() || !missed.is_empty() {
        if !missed.is_empty() {
            eprintln!("scale-bench: {} target(s) missed:", missed.len());
            for m in missed {
                eprintln!("  {m}");
            }
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
