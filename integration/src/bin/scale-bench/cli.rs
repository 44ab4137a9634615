//! The command line.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "scale-bench",
    about = "meshd's control plane at scale: a lab of real meshd agents plus N simulated node \
             records in the directory registry; convergence, latency, memory, CPU, registry \
             writes, targets. Run `cargo build --workspace --bins` first."
)]
pub(crate) struct Args {
    /// Simulated nodes published through the registry.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=30_000))]
    pub(crate) nodes: u32,
    /// Real lab nodes, each running meshd.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=5))]
    pub(crate) real_nodes: u32,
    /// New node records added one at a time for the latency (and again, without watching,
    /// for the CPU time per event).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub(crate) additions: u32,
    /// Seconds of the steady-state write count.
    #[arg(long, default_value_t = 30)]
    pub(crate) steady_s: u64,
    /// Seconds an agent may take to converge cold before it is reported as not converged.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout_s: u64,
    /// Seconds one added record may take to reach every agent.
    #[arg(long, default_value_t = 30)]
    pub(crate) addition_timeout_s: u64,
    /// Milliseconds between two status reads while waiting for a record to be programmed.
    #[arg(long, default_value_t = 5)]
    pub(crate) poll_ms: u64,
    /// Leave out the rotation phase.
    #[arg(long)]
    pub(crate) no_rotation: bool,
    /// Pods per simulated node for the pod identity phase (0 leaves it out).
    #[arg(long, default_value_t = 30)]
    pub(crate) pods_per_node: u32,
    /// Print machine-readable JSON instead of the text report.
    #[arg(long)]
    pub(crate) json: bool,
}
