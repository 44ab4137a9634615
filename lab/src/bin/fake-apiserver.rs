//! `fake-apiserver`: runs the **mock** Kubernetes API server of `meshd_lab::apiserver` (not
//! kube-apiserver: a test double serving Nodes, ConfigMaps, Events and EndpointSlices over
//! plain HTTP; `default/kubernetes`'s EndpointSlice holds its listen address) until
//! SIGINT/SIGTERM, for labs and manual experiments with meshd's Kubernetes backend.
//!
//! ```sh
//! fake-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kubeconfig
//! kubectl --kubeconfig /tmp/kubeconfig get --raw /api/v1/nodes
//! ```
//!
//! Objects are created through the API (`POST /api/v1/nodes`, e.g. with `curl`), or at start-up
//! from `--node NAME=IP[,IP…]+CIDR[,CIDR…]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use meshd_lab::apiserver::{FakeApiServer, Options};

#[derive(Parser)]
#[command(
    about = "A mock Kubernetes API server (Nodes, ConfigMaps, Events, EndpointSlices) for meshd tests"
)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the server to this file.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Changes kept for watches to resume from; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 1000)]
    history: usize,
    /// Interval between watch bookmarks, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    bookmark_interval_ms: u64,
    /// Append the request log (verb, resource, name, client address of every resource
    /// request; see `meshd_lab::apiserver::audit`) to this file.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Create a Node at start: `NAME=IP[,IP…]+CIDR[,CIDR…]` (InternalIPs, then pod CIDRs).
    #[arg(long = "node")]
    nodes: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = FakeApiServer::start_with(Options {
        history: args.history,
        bookmark_interval: Duration::from_millis(args.bookmark_interval_ms),
        listen: args.listen,
        audit_log: args.audit_log.clone(),
    })
    .await
    .with_context(|| format!("listening on {}", args.listen))?;
    // As kube-apiserver does: the `kubernetes` Service's endpoints are the server itself.
    server.put_kubernetes_endpoints(&[server.addr().ip()], server.addr().port());
    for spec in &args.nodes {
        let (name, rest) = spec
            .split_once('=')
            .with_context(|| format!("--node {spec:?}: expected NAME=IPS+CIDRS"))?;
        let (ips, cidrs) = rest.split_once('+').unwrap_or((rest, ""));
        let ips: Vec<&str> = ips.split(',').filter(|s| !s.is_empty()).collect();
        let cidrs: Vec<&str> = cidrs.split(',').filter(|s| !s.is_empty()).collect();
        server.create_node(name, &ips, &cidrs);
    }
    if let Some(path) = &args.kubeconfig {
        server
            .write_kubeconfig(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
