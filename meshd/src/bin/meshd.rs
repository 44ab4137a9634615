//! `meshd`: the per-node daemon.
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use meshd::controller::{self, DaemonArgs, IpamMode};
use meshd::registry::kube::annotations::PodCidrSource;
use meshd::registry::kube::client::{api_server_addresses, client};
use meshd::registry::kube::endpoints::watch_api_server_endpoints;
use meshd::registry::kube::settings::{
    node_reference, pod_reference, spawn_watcher, WatcherConfig,
};
use meshd::registry::kube::{node_condition, refusal_events};
use meshd::registry::{DirRegistry, KubeRegistry};
use meshd::settings;

#[path = "meshd/allocator.rs"]
mod allocator;

/// The runtime's worker threads at most, unless `--worker-threads` says otherwise.
const MAX_DEFAULT_WORKERS: usize = 2;

/// How often the heap trimmer looks at the free memory malloc holds.
const HEAP_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Free bytes held in malloc's arenas above which the heap trimmer returns them.
const HEAP_TRIM_FREE_BYTES: usize = 2 * 1024 * 1024;

/// How long start-up waits for the first read of the API servers' endpoints.
const API_SERVER_ENDPOINTS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where nodes publish their records and watch each other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RegistryKind {
    /// A shared directory (`--registry-dir`): the lab and bare metal.
    Dir,
    /// Annotations on the Kubernetes Node objects.
    Kubernetes,
}

/// meshd: transparent WireGuard encryption for pod traffic between nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// The registry backend.
    #[arg(long, value_enum, default_value = "dir")]
    registry: RegistryKind,
    /// Kubeconfig for `--registry kubernetes` (default: `$KUBECONFIG`, `~/.kube/config`, then
    /// the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// `NAMESPACE/NAME` of the ConfigMap with live settings (`--registry kubernetes` only).
    #[arg(long)]
    config_map: Option<String>,
    /// This meshd's Pod name (Events about invalid settings are recorded on it).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Worker threads of the async runtime (default: one per core, at most 2).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    worker_threads: Option<u16>,
}

fn main() -> anyhow::Result<()> {
    // glibc's malloc only where chosen (`allocator`): tuned before the runtime starts its
    // threads (they share the capped arenas), and trimmed.
    let glibc = allocator::glibc();
    if glibc {
        tune_malloc();
    }
    let cli = Cli::parse();
    let workers = cli
        .worker_threads
        .map_or_else(default_worker_threads, usize::from);
    if glibc {
        spawn_heap_trimmer();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon(cli))
}

/// The runtime's worker threads unless `--worker-threads` says otherwise: one per core, at
/// most [`MAX_DEFAULT_WORKERS`]. meshd's work is one reconcile loop and a few watchers; more
/// workers only add threads (each with its stack and its share of the malloc arenas) on a
/// node with many cores.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, MAX_DEFAULT_WORKERS)
}

/// glibc's malloc (`MESHD_ALLOCATOR=glibc`, see [`allocator`]), tuned for a daemon whose passes and status reads at thousands of peers
/// allocate and free megabytes at a time (`scale-bench --nodes 5000`, one build, tuned through
/// glibc's environment variables: meshd's RSS 86 MiB untuned, 75 MiB with one arena, 66 MiB
/// with two arenas and these thresholds). By default every thread that allocates under contention
/// gets an arena of its own (up to 8 per core) that keeps its own high-water mark, and the
/// threshold above which a block is mapped on its own grows to 32 MiB, so a freed 4 MiB status
/// document stays in a heap. Tuned: at most two arenas; blocks of 1 MiB and more mapped on
/// their own (returned to the kernel when freed); a heap's free top returned above 1 MiB.
/// Other C libraries: nothing to do. `GLIBC_TUNABLES` naming any `glibc.malloc.` tunable
/// replaces all of this (for measuring other settings without a rebuild).
#[allow(unsafe_code)]
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !malloc_tuned_by_environment() {
        const MIB: libc::c_int = 1024 * 1024;
        for (param, value) in [
            (libc::M_ARENA_MAX, 2),
            (libc::M_MMAP_THRESHOLD, MIB),
            (libc::M_TRIM_THRESHOLD, MIB),
        ] {
            // SAFETY: mallopt only sets one of glibc's malloc parameters; no pointer is
            // involved, and no other thread exists yet.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// Whether `GLIBC_TUNABLES` sets any of glibc's malloc tunables.
fn malloc_tuned_by_environment() -> bool {
    std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|v| v.to_string_lossy().contains("glibc.malloc."))
}

/// Starts a thread that, every [`HEAP_TRIM_INTERVAL`], returns the free memory malloc holds to
/// the kernel when there is more than [`HEAP_TRIM_FREE_BYTES`] of it (`malloc_trim`, which
/// also releases free pages inside a heap, not only its top). A cold pass at thousands of
/// peers (the BPF object's load with the kernel's BTF, every record decoded, the first status
/// documents) frees megabytes between blocks that stay: `scale-bench --nodes 5000`, release,
/// meshd's RssAnon 46.7 MiB before a `malloc_trim(0)` and 39.9 MiB after. Other C libraries:
/// nothing to do.
fn spawn_heap_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("meshd-heap-trim".into())
            .stack_size(64 * 1024)
            .spawn(|| loop {
                std::thread::sleep(HEAP_TRIM_INTERVAL);
                trim_heap();
            });
        if let Err(err) = spawned {
            // Not fatal: meshd works the same, with more memory.
            eprintln!("meshd: no heap trimmer thread: {err}");
        }
    }
}

/// Returns malloc's free memory to the kernel if it holds more than [`HEAP_TRIM_FREE_BYTES`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: mallinfo2 only reads glibc's arena statistics under its locks; no pointer is
    // passed.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free < HEAP_TRIM_FREE_BYTES {
        return;
    }
    let started = std::time::Instant::now();
    // SAFETY: malloc_trim takes no pointer; it only releases free memory glibc holds, under
    // its own arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(free_bytes = free, elapsed = ?started.elapsed(), "returned free heap memory to the kernel");
}

async fn daemon(cli: Cli) -> anyhow::Result<()> {
    meshd::init_tracing();
    // Before any key is loaded: no core dump ever holds one.
    meshd::forbid_core_dumps().context("making meshd non-dumpable")?;
    let result = match cli.registry {
        RegistryKind::Dir => {
            let Some(dir) = cli.daemon.registry_dir.clone() else {
                bail!("--registry dir needs --registry-dir");
            };
            if cli.config_map.is_some() {
                bail!("--config-map needs --registry kubernetes");
            }
            let registry = DirRegistry::new(dir)?;
            controller::run(cli.daemon, registry, None).await
        }
        RegistryKind::Kubernetes => kubernetes(cli).await,
    };
    result.inspect_err(|err| {
        tracing::error!(error = %format!("{err:#}"), "meshd stopped");
    })
}

async fn kubernetes(cli: Cli) -> anyhow::Result<()> {
    let mut args = cli.daemon;
    let client = client(cli.kubeconfig.as_deref())
        .await
        .context("connecting to the Kubernetes API")?;
    // A Node's self-declared pod CIDRs count only where meshd claims them (cluster-pool IPAM,
    // or the blocks of node-subnet IPAM, which replace spec.podCIDRs).
    let pod_cidr_source = if args.node_subnet.ipam == IpamMode::NodeSubnet {
        PodCidrSource::Claim
    } else if args.pool.pod_cidr_pools.is_empty() {
        PodCidrSource::Spec
    } else {
        PodCidrSource::SpecOrClaim
    };
    let mut registry = KubeRegistry::new(client.clone(), args.node_name.clone())
        .with_pod_cidr_source(pod_cidr_source);
    // The endpoint batches live beside the settings, in meshd's namespace.
    if let Some((namespace, _)) = cli.config_map.as_deref().and_then(|s| s.split_once('/')) {
        registry = registry.with_batch_namespace(namespace);
    }
    // Host encryption never routes the API server's traffic through the tunnel: a node
    // must always be able to learn a changed key (see the README).
    match api_server_addresses(cli.kubeconfig.as_deref()).await {
        Ok(addrs) => args.host_encryption_exclude.extend(addrs),
        Err(err) => tracing::warn!(%err, "could not resolve the API server's address"),
    }
    // The cluster assigns this node's addresses and pod CIDRs: take what flags leave open.
    let addressing = registry
        .node_addressing()
        .await
        .with_context(|| format!("reading Node {}", args.node_name))?;
    if args.endpoints.is_empty() {
        args.endpoints = addressing.endpoints;
    }
    if args.pod_cidrs.is_empty() {
        args.pod_cidrs = addressing.pod_cidrs;
    }
    let feed = match &cli.config_map {
        Some(spec) => {
            let (namespace, name) = spec
                .split_once('/')
                .with_context(|| format!("--config-map {spec:?}: expected NAMESPACE/NAME"))?;
            if name != settings::CONFIG_MAP_NAME {
                bail!(
                    "--config-map {spec:?}: the ConfigMap must be named {}",
                    settings::CONFIG_MAP_NAME
                );
            }
            let regarding = match &cli.pod_name {
                Some(pod) => pod_reference(namespace, pod, None),
                None => node_reference(&args.node_name),
            };
            // Until the ConfigMap says otherwise, and when it is invalid or missing at start:
            // the last good settings from the state directory, else the flags.
            let flags = settings::Settings {
                encryption: args.encryption,
                strict_mode: args.strict_mode,
                host_encryption: args.host_encryption,
                mtu: args.mtu,
                listen_port: args.listen_port,
                keepalive: args.keepalive,
            };
            let config = WatcherConfig {
                fallback: settings::fallback(settings::load_last_good(&args.state_dir), flags),
                state_dir: Some(args.state_dir.clone()),
                ..WatcherConfig::new(namespace, regarding, &args.node_name)
            };
            let mut rx = spawn_watcher(client.clone(), config);
            tracing::info!(configmap = %spec, "waiting for the settings");
            rx.wait_for(Option::is_some)
                .await
                .context("the settings watcher stopped before the first read")?;
            Some(rx)
        }
        None => None,
    };
    // The kubeconfig's server is, in a pod, the `kubernetes` Service's ClusterIP, which no node
    // owns: host encryption also excludes the Service's endpoints, the API servers' real
    // addresses. Waited for briefly, so the first reconcile already knows them.
    let mut api_servers = watch_api_server_endpoints(client.clone());
    match tokio::time::timeout(API_SERVER_ENDPOINTS_WAIT, api_servers.wait_for(Option::is_some))
        .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => tracing::warn!("the API server endpoint watcher stopped"),
        Err(_) => tracing::warn!(
            "the API server's endpoints (EndpointSlice default/kubernetes) not read within {API_SERVER_ENDPOINTS_WAIT:?}; going on without them for now"
        ),
    }
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    let refusals = refusal_events::spawn(client.clone(), args.node_name.clone(), status_rx.clone());
    let condition = node_condition::spawn(client, args.node_name.clone(), status_rx);
    let result =
        controller::run_with(args, registry, feed, Some(status_tx), Some(api_servers)).await;
    condition.abort();
    refusals.abort();
    result
}
