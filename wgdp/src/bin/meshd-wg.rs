//! `meshd-wg`: meshd's user-space WireGuard datapath.
//!
//! Creates the TUN `--interface` and serves it with `wgdp` (boringtun's noise state machine
//! with offloaded, batched I/O) until SIGTERM/SIGINT, until its UAPI socket
//! `/var/run/wireguard/NAME.sock` is removed, or until its TUN fails. SIGHUP is ignored;
//! SIGUSR1 logs the drop counters. It is configured by meshd (or `wg`) over that socket.
//! meshd spawns it detached so traffic keeps flowing while meshd restarts.

use clap::Parser;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// meshd's user-space WireGuard datapath.
#[derive(Debug, Parser)]
#[command(name = "meshd-wg", version)]
struct Args {
    /// Name of the TUN interface to create.
    #[arg(long)]
    interface: String,
    /// TUN queues. One: a single thread seals and opens. More: a thread per queue seals, one more opens.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Plain per-packet I/O: no TUN offloads, no UDP GSO/GRO (for troubleshooting).
    #[arg(long)]
    no_offloads: bool,
    /// After sending, poll for a reply for up to this many microseconds before sleeping
    /// (0: never). Saves a thread wake-up per round trip; never more than a tenth of a core.
    #[arg(long, default_value_t = wgdp::DEFAULT_BUSY_POLL_US, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    busy_poll_us: u64,
    /// Bytes of packets held device-wide while their peers have no session (on top of 256
    /// packets per peer); over it a peer's oldest held packets are dropped. Default: an
    /// eighth of the 128Mi container limit.
    #[arg(long, default_value_t = wgdp::budget::DEFAULT_HELD_BYTES as u64, value_parser = clap::value_parser!(u64).range(64 * 1024..=(1 << 40)))]
    held_bytes: u64,
    /// Handshake initiations per second one source address may have processed while the
    /// device is under load (after the cookie check); bursts of 5.
    #[arg(long, default_value_t = wgdp::budget::DEFAULT_HANDSHAKES_PER_SOURCE, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    handshakes_per_source: u32,
}

fn main() -> std::process::ExitCode {
    // Before any other thread exists.
    wgdp::memory::tune_malloc();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .finish()
        .with(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .init();
    // Before any key arrives over the UAPI: no core dump ever holds one.
    if let Err(err) = wgdp::forbid_core_dumps() {
        tracing::error!(%err, "making meshd-wg non-dumpable failed");
        return std::process::ExitCode::FAILURE;
    }
    let config = wgdp::Config {
        interface: args.interface,
        threads: args.threads.max(1),
        offloads: !args.no_offloads,
        busy_poll: std::time::Duration::from_micros(args.busy_poll_us),
        budgets: wgdp::budget::Budgets {
            handshakes_per_source: args.handshakes_per_source,
            held_bytes: usize::try_from(args.held_bytes).unwrap_or(usize::MAX),
        },
    };
    tracing::info!(
        interface = %config.interface,
        threads = config.threads,
        offloads = config.offloads,
        busy_poll_us = args.busy_poll_us,
        held_bytes = args.held_bytes,
        handshakes_per_source = args.handshakes_per_source,
        "starting"
    );
    // `run` blocks SIGHUP (with SIGTERM, SIGINT, SIGUSR1) before it starts any thread, so
    // a hang-up of the terminal or session meshd was started from never stops the datapath.
    match wgdp::run(&config) {
        Ok(()) => {
            tracing::info!(interface = %config.interface, "stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(interface = %config.interface, err = %DisplayChain(&err), "running the device failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The log filter from `RUST_LOG` (which meshd's environment passes on): `target=level`
/// directives and a bare default level, as meshd reads them; `info` when it is unset, empty or
/// not understood. A [`Targets`] filter rather than an `EnvFilter`: meshd-wg needs no span or
/// field matching, and `EnvFilter` links a regex engine, a fifth of meshd-wg's machine code
/// (docs/image.md).
fn log_filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
}

/// An error with its sources, `: `-separated.
struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;
    use tracing::Level;

    use super::log_filter;

    #[test]
    fn log_filter_reads_directives_and_falls_back_to_info() {
        let unset = log_filter(None);
        assert_eq!(unset.default_level(), Some(LevelFilter::INFO));
        assert!(unset.would_enable("wgdp", &Level::INFO));
        assert!(!unset.would_enable("wgdp", &Level::DEBUG));
        assert_eq!(
            log_filter(Some(" ")).default_level(),
            Some(LevelFilter::INFO)
        );

        let debug = log_filter(Some("debug"));
        assert!(debug.would_enable("wgdp::threads", &Level::DEBUG));

        let per_target = log_filter(Some("warn,wgdp::control=trace"));
        assert!(per_target.would_enable("wgdp::control", &Level::TRACE));
        assert!(!per_target.would_enable("wgdp::threads", &Level::INFO));
        assert!(per_target.would_enable("wgdp::threads", &Level::WARN));

        // Span and field filters are EnvFilter syntax: not understood, so the default.
        let spans = log_filter(Some("wgdp[peer{key=x}]=debug"));
        assert_eq!(spans.default_level(), Some(LevelFilter::INFO));
    }
}
