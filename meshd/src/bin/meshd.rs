//! `meshd`: the per-node daemon.
use clap::Parser;
use keyexchange::DirRegistry;
use meshd::daemon::{self, DaemonArgs};

/// meshd: transparent WireGuard encryption for pod traffic between nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    meshd::init_tracing();
    let cli = Cli::parse();
    let registry = DirRegistry::new(cli.daemon.registry_dir.clone())?;
    daemon::run(cli.daemon, registry).await.inspect_err(|err| {
        tracing::error!(error = %format!("{err:#}"), "meshd stopped");
    })
}
