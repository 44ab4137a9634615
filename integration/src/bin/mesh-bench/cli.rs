//! The command line: flags, the scenario names `--only` accepts, and parsing their lists.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use integration::bench::{BORINGTUN, MESHD, MESHD_ROUTES, MESHD_WG, WIREGUARD_GO};

pub(crate) const SCENARIOS: [&str; 7] = [
    "plain",
    WIREGUARD_GO,
    BORINGTUN,
    MESHD_WG,
    MESHD,
    "plain-lab",
    MESHD_ROUTES,
];

#[derive(Parser, Debug)]
#[command(
    name = "mesh-bench",
    about = "meshd's user-space datapath against plain veth, wireguard-go and boringtun-cli: \
             throughput, RTT, peer scale, targets. Run scripts/bench-deps.sh first."
)]
pub(crate) struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_s: u64,
    /// Pings per RTT measurement.
    #[arg(long, default_value_t = 200)]
    pub(crate) pings: u32,
    /// Interval between pings, ms.
    #[arg(long, default_value_t = 10)]
    pub(crate) ping_interval_ms: u64,
    /// Rounds of the data-plane scenarios: each round runs every scenario once, in order, so
    /// that drift of the machine over minutes hits them all alike; the medians are reported,
    /// each round's numbers listed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub(crate) rounds: u32,
    /// Comma-separated data-plane scenarios: plain, wireguard-go, boringtun-cli, meshd-wg,
    /// meshd, plain-lab, meshd-routes; "none" for none.
    #[arg(
        long,
        default_value = "plain,wireguard-go,boringtun-cli,meshd-wg,meshd,plain-lab"
    )]
    pub(crate) only: String,
    /// Comma-separated implementations for the peer-scale runs: wireguard-go, boringtun-cli,
    /// meshd-wg; "none" for none.
    #[arg(long, default_value = "wireguard-go,boringtun-cli,meshd-wg")]
    pub(crate) scale: String,
    /// Peers per peer-scale device.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub(crate) peers: u32,
    /// Add/remove samples per peer-scale device (the median is reported).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub(crate) churn_samples: u32,
    /// Seconds over which idle CPU is measured with all peers configured.
    #[arg(long, default_value_t = 10)]
    pub(crate) idle_s: u64,
    /// Only the cost of flow events: the `meshd` scenario with flow events off and on in each
    /// round (`--rounds`), medians compared; fails when on < 95 % of off.
    #[arg(long)]
    pub(crate) flow_events_pair: bool,
    /// Print machine-readable JSON instead of the tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Path to meshctl (default: next to this binary, then $PATH).
    #[arg(long)]
    pub(crate) meshctl: Option<PathBuf>,
    /// Path to meshd-wg for the peer-scale run (default: next to this binary, then $PATH).
    #[arg(long)]
    pub(crate) meshd_wg: Option<PathBuf>,
    /// Path to boringtun-cli (default: $PATH, then $MESH_BENCH_DEPS/bin, /opt/meshd-bench/bin).
    #[arg(long)]
    pub(crate) boringtun_cli: Option<PathBuf>,
    /// Path to wireguard-go (default: $PATH).
    #[arg(long)]
    pub(crate) wireguard_go: Option<PathBuf>,
}

pub(crate) fn list(arg: &str, allowed: &[&str], what: &str) -> anyhow::Result<Vec<String>> {
    let items: Vec<String> = arg
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty() && s != "none")
        .collect();
    for i in &items {
        if !allowed.contains(&i.as_str()) {
            bail!("unknown {what} {i:?} (want {})", allowed.join(", "));
        }
    }
    Ok(items)
}
