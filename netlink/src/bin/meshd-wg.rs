//! `meshd-wg`: meshd's user-space WireGuard datapath.
//!
//! Creates the TUN `--interface` and serves it with boringtun until SIGTERM/SIGINT or
//! until its UAPI socket `/var/run/wireguard/NAME.sock` is removed. It is configured by
//! meshd (or `wg`) over that socket. meshd spawns it detached so traffic keeps flowing
//! while meshd restarts.

use clap::Parser;
use defguard_boringtun::device::{DeviceConfig, DeviceHandle};
use nix::sys::signal::{SigSet, Signal};

/// meshd's user-space WireGuard datapath.
#[derive(Debug, Parser)]
#[command(name = "meshd-wg", version)]
struct Args {
    /// Name of the TUN interface to create.
    #[arg(long)]
    interface: String,
    /// Datapath worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // A hang-up of the terminal or session meshd was started from must not stop the
    // datapath. Blocked before any thread starts, so every thread inherits it.
    let mut hup = SigSet::empty();
    hup.add(Signal::SIGHUP);
    if let Err(err) = hup.thread_block() {
        tracing::warn!(%err, "blocking SIGHUP failed");
    }
    let config = DeviceConfig {
        n_threads: args.threads.max(1),
        ..DeviceConfig::default()
    };
    tracing::info!(interface = %args.interface, threads = config.n_threads, "starting");
    let mut device = match DeviceHandle::new(&args.interface, config) {
        Ok(d) => d,
        Err(err) => {
            tracing::error!(interface = %args.interface, %err, "creating the device failed");
            return std::process::ExitCode::FAILURE;
        }
    };
    device.wait();
    tracing::info!(interface = %args.interface, "stopped");
    std::process::ExitCode::SUCCESS
}
