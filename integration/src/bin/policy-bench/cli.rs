//! The command line.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Parser, Debug)]
#[command(
    name = "policy-bench",
    about = "NetworkPolicy performance targets of issue 18 on a 2-node lab: throughput with \
             N policies against none, and policy apply -> enforced on all nodes"
)]
pub(crate) struct Args {
    /// Rounds of the throughput comparison (without/with, then with/without, …).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub(crate) rounds: u32,
    /// Policies in the set (the fixed ones included).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(3..=20_000))]
    pub(crate) policies: u64,
    /// Policy flips measured for apply -> enforced (alternately opening and closing).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(crate) samples: u64,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub(crate) duration_s: u64,
    /// A new connection attempt this often while waiting for a flip, ms.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) interval_ms: f64,
    /// A connection attempt not answered within this long is blocked, ms.
    #[arg(long, default_value_t = 150.0)]
    pub(crate) attempt_timeout_ms: f64,
    /// Give up on a flip not seen after this long, s.
    #[arg(long, default_value_t = 10)]
    pub(crate) max_wait_s: u64,
    /// Skip the throughput comparison.
    #[arg(long)]
    pub(crate) no_throughput: bool,
    /// Skip the apply -> enforced measurement.
    #[arg(long)]
    pub(crate) no_enforcement: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub(crate) output: Output,
    /// Path to meshctl (default: next to this binary, then $PATH).
    #[arg(long)]
    pub(crate) meshctl: Option<PathBuf>,
}
