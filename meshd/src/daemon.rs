//! The meshd daemon: key, device, record, and the reconcile loop driven by registry events.
//!
//! Start-up order matters for "restart without dropping traffic": the key is loaded (never
//! regenerated over an existing file), the existing WireGuard device is adopted rather than
//! recreated, and only then is anything reconciled — so a restart of meshd is invisible to the
//! datapath. Every pass compares the *live* device and routing table against the desired state,
//! which makes reconciliation idempotent and self-healing after drift.
//!
//! The tc eBPF datapath ([`crate::bpf`]) is loaded first of all: strict mode guards the underlay
//! before this node has a single peer, route or pod, and it stays attached (pinned) while meshd
//! restarts. Pod traffic to a remote node is redirected into the tunnel by `from_pod`; the routes
//! via the device carry the node's own traffic to remote pods. Traffic for a pod CIDR without a
//! peer follows the node's ordinary routing and is dropped (strict) or counted (permissive) by
//! `underlay_egress` before it reaches the wire.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Args;
use ipnet::IpNet;
use keyexchange::peers::{compute_peers, PeerSet};
use keyexchange::{NodeRecord, PrivateKey, PublicKey, Registry, RegistryEvent};
use netlink::{Links, Routes, UserspaceOptions, WgDevice, WireguardMode};
use tokio::sync::{mpsc, RwLock};

use crate::bpf::{self, Bpf, Encryption};
use crate::control::{self, Counters, MalformedReport, PeerReport, SharedStatus, StatusReport};
use crate::ipam::Ipam;
use crate::reconcile;

/// How often the live state is re-read and reconciled even without registry events.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// How often the served status (handshakes, counters) is refreshed from the device.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Delay before retrying a failed reconcile pass.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Command-line settings of the daemon.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// This node's name (the Kubernetes node name).
    #[arg(long, env = "MESHD_NODE_NAME")]
    pub node_name: String,
    /// Directory holding the private key and other node state.
    #[arg(long, default_value = "/var/lib/meshd")]
    pub state_dir: PathBuf,
    /// Directory registry shared by all nodes (lab, bare metal; `--registry dir`).
    #[arg(long)]
    pub registry_dir: Option<PathBuf>,
    /// WireGuard interface name.
    #[arg(long, default_value = "meshd0")]
    pub interface: String,
    /// WireGuard UDP listen port.
    #[arg(long, default_value_t = 51820)]
    pub listen_port: u16,
    /// `auto` (kernel module when available, else user space), `kernel` or `userspace`.
    #[arg(long, default_value = "auto")]
    pub wireguard_mode: WireguardMode,
    /// Underlay addresses peers should send to (repeatable); default: the underlay interface's.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<IpAddr>,
    /// Underlay interface; default: the one carrying the default route.
    #[arg(long)]
    pub underlay_interface: Option<String>,
    /// This node's pod CIDRs (repeatable, both families).
    #[arg(long = "pod-cidr")]
    pub pod_cidrs: Vec<IpNet>,
    /// `cluster-pool` IPAM: without `--pod-cidr` (and without `spec.podCIDRs`), meshd claims this
    /// node's pod CIDR, one per family, out of these pools (repeatable), conflict-free through
    /// the registry, and keeps the claim in the state directory across restarts.
    #[arg(long = "pod-cidr-pool")]
    pub pod_cidr_pools: Vec<IpNet>,
    /// Prefix length of the blocks carved out of an IPv4 pool.
    #[arg(long, default_value_t = 24)]
    pub pod_cidr_block_v4: u8,
    /// Prefix length of the blocks carved out of an IPv6 pool.
    #[arg(long, default_value_t = 64)]
    pub pod_cidr_block_v6: u8,
    /// Cluster-wide pod CIDRs (repeatable): strict mode drops any packet from or to them that
    /// would leave through the underlay outside WireGuard. Default: this node's pod CIDRs.
    #[arg(long = "cluster-cidr")]
    pub cluster_cidrs: Vec<IpNet>,
    /// `enabled` (pod traffic between nodes is encrypted; with strict mode, cleartext is dropped
    /// at the underlay), `permissive` (cleartext is counted as would-drop, not dropped: the
    /// rollout mode) or `disabled` (plain routed path, no tunnel). With a ConfigMap
    /// (`--config-map`) the ConfigMap's value overrides this one, live.
    #[arg(long, default_value = "enabled")]
    pub encryption: Encryption,
    /// Strict mode (with `--encryption enabled`): drop cluster traffic that would leave outside
    /// WireGuard. `--strict-mode false` only counts it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_mode: bool,
    /// bpffs directory for the pinned programs, maps and links.
    #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// How pod traffic reaches the tunnel: `ebpf` (the tc program redirects it into the device)
    /// or `routes` (the kernel routes it there; for comparison and debugging).
    #[arg(long, default_value = "ebpf")]
    pub pod_steering: PodSteering,
    /// WireGuard MTU; default: underlay MTU minus the WireGuard overhead.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Persistent keepalive interval in seconds for every peer.
    #[arg(long)]
    pub keepalive: Option<u16>,
    /// Control socket for `meshctl status`.
    #[arg(long, default_value = control::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// On shutdown, withdraw this node's record and remove the device and routes.
    #[arg(long)]
    pub cleanup: bool,
    /// CNI configuration directory: meshd writes its conflist there once the node's mesh has
    /// converged and removes it when meshd stops, so no pod is scheduled onto a node whose
    /// mesh is down.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The user-space WireGuard helper binary; default: `meshd-wg` next to this executable.
    #[arg(long)]
    pub helper_binary: Option<PathBuf>,
    /// Serve `/healthz` and `/readyz` on this address (e.g. `0.0.0.0:9108`).
    #[arg(long)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// TUN queues of the user-space datapath, each with its own sealing thread; 0 = one per
    /// CPU, at most 4. More than one only pays off with many flows: received packets are
    /// written on queue 0, so the kernel sends each flow's replies through queue 0 too.
    #[arg(long, default_value_t = 1)]
    pub wg_threads: usize,
    /// Node-to-node (host) encryption: this node's own traffic to peer nodes goes through
    /// the tunnel too, for each peer once its tunnel is proven up (see the README: it fails
    /// open, so that a broken tunnel never cuts a node off its API server). With a ConfigMap
    /// its `host-encryption` value overrides this one, live.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub host_encryption: bool,
    /// Addresses whose traffic never goes through the tunnel with host encryption (e.g. the
    /// API server's; the kubeconfig's server address is added on its own). Repeatable.
    #[arg(long = "host-encryption-exclude")]
    pub host_encryption_exclude: Vec<IpAddr>,
    /// Firewall mark the WireGuard devices put on their own UDP packets; the underlay guard
    /// lets packets carrying it pass unexamined. Must not collide with other marks on the
    /// node (kube-proxy uses 0x4000 and 0x8000).
    #[arg(long, default_value_t = DEFAULT_MESH_MARK)]
    pub mesh_mark: u32,
}

/// Default of `--mesh-mark` (109, like meshd's route protocol number).
pub const DEFAULT_MESH_MARK: u32 = 109;
/// Routing table holding host encryption's routes to peer node addresses.
pub const HOST_TABLE: u32 = 109;
/// Priority of the rule `not fwmark MESH_MARK lookup HOST_TABLE` (before the main table's
/// 32766).
pub const HOST_RULE_PRIORITY: u32 = 32700;
/// Keepalive used with host encryption when none is configured: a live tunnel then shows
/// received bytes at least this often, which is how a tunnel is judged up.
const HOST_KEEPALIVE: u16 = 10;
/// A peer's tunnel counts as up while bytes arrived from it within this many keepalive
/// intervals.
const LIVENESS_INTERVALS: u32 = 3;

/// How pod traffic to other nodes is steered into the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodSteering {
    /// `from_pod` on each pod's host veth redirects it into the WireGuard device.
    Ebpf,
    /// The kernel's routes via the WireGuard device.
    Routes,
}

/// Everything the reconcile loop needs.
struct Context {
    args: DaemonArgs,
    /// This node's record as published (its listen port can change live).
    me: std::sync::RwLock<NodeRecord>,
    private_key: PrivateKey,
    /// The device; replaced only when it vanished (its user-space process died).
    device: RwLock<WgDevice>,
    adopted: bool,
    mtu: u32,
    links: Links,
    routes: Routes,
    opts: UserspaceOptions,
    status: SharedStatus,
    bpf: tokio::sync::Mutex<Bpf>,
    underlay_ifindex: u32,
    /// The settings in force (flags, then the ConfigMap's live values).
    live: RwLock<Live>,
    heartbeat: crate::health::Heartbeat,
    metrics: crate::metrics::Metrics,
    key_created_unix: Option<u64>,
    status_feed: Option<tokio::sync::watch::Sender<Option<StatusReport>>>,
}

impl Context {
    /// This node's current record.
    fn me(&self) -> NodeRecord {
        self.me
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// When the key file was last written (UNIX seconds).
fn key_mtime(state_dir: &std::path::Path) -> Option<u64> {
    std::fs::metadata(state_dir.join(keyexchange::key::KEY_FILE))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// Settings that can change while meshd runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Live {
    encryption: Encryption,
    strict_mode: bool,
    keepalive: Option<u16>,
    mtu: u32,
    listen_port: u16,
    host_encryption: bool,
    /// Re-program every peer once (the keepalive changed).
    refresh_peers: bool,
}

/// What the loop knows from the registry.
#[derive(Default)]
struct Known {
    /// Whether the registry delivered its complete initial state.
    synced: bool,
    records: BTreeMap<String, NodeRecord>,
    malformed: BTreeMap<String, String>,
    counters: Counters,
    last_conflicts: BTreeSet<String>,
    /// Per peer: the last received-bytes count and when it last grew (tunnel liveness).
    rx_seen: BTreeMap<PublicKey, (u64, std::time::Instant)>,
    /// Peers whose tunnel is up by that measure.
    live_peers: BTreeSet<PublicKey>,
    /// Peer node addresses routed through the tunnel now (host encryption).
    encrypted_hosts: BTreeSet<IpAddr>,
    /// This node's record changed (listen port): publish it.
    republish: bool,
}

impl Live {
    /// The keepalive programmed on peers: host encryption needs one to judge tunnels up.
    fn effective_keepalive(&self) -> Option<u16> {
        match (self.keepalive, self.host_encryption) {
            (Some(k), _) if k > 0 => Some(k),
            (_, true) => Some(HOST_KEEPALIVE),
            (k, false) => k,
        }
    }
}

/// Live operator settings (the `meshd-config` ConfigMap): `None` until first read.
pub type SettingsFeed = tokio::sync::watch::Receiver<Option<crate::settings::Settings>>;

/// Run the daemon until SIGTERM/SIGINT. With `settings`, the ConfigMap's values override the
/// flags and are applied live whenever they change.
pub async fn run<R: Registry>(
    args: DaemonArgs,
    registry: R,
    settings: Option<SettingsFeed>,
) -> anyhow::Result<()> {
    run_with(args, registry, settings, None).await
}

/// [`run`], also sending every status meshd serves to `status_feed` (e.g. for the Node
/// condition).
pub async fn run_with<R: Registry>(
    args: DaemonArgs,
    registry: R,
    settings: Option<SettingsFeed>,
    status_feed: Option<tokio::sync::watch::Sender<Option<StatusReport>>>,
) -> anyhow::Result<()> {
    let mut args = args;
    if let Some(feed) = &settings {
        if let Some(s) = feed.borrow().clone() {
            args.encryption = s.encryption.into();
            args.strict_mode = s.strict_mode;
            args.keepalive = s.keepalive;
            args.host_encryption = s.host_encryption;
            args.mtu = s.mtu.or(args.mtu);
            if s.listen_port != args.listen_port {
                tracing::info!(port = s.listen_port, "listen port from the ConfigMap");
                args.listen_port = s.listen_port;
            }
        }
    }
    let (private_key, origin) = keyexchange::key::load_or_generate(&args.state_dir)
        .context("loading this node's WireGuard key")?;
    let public_key = private_key.public_key();
    tracing::info!(node = %args.node_name, %public_key, ?origin, "key ready");

    let links = Links::connect().await.context("connecting to rtnetlink")?;
    let routes = Routes::connect().await.context("connecting to rtnetlink")?;
    let (underlay_if, endpoints, underlay_mtu) = underlay(&args, &links).await?;
    if args.pod_cidrs.is_empty() {
        tracing::warn!("no --pod-cidr given: this node hosts no pods and attracts no traffic");
    }
    // Strict mode first: before any peer, route or pod exists on this node.
    let clusters = if !args.cluster_cidrs.is_empty() {
        args.cluster_cidrs.clone()
    } else if args.pod_cidrs.is_empty() && !args.pod_cidr_pools.is_empty() {
        args.pod_cidr_pools.clone()
    } else {
        args.pod_cidrs.clone()
    };
    let mode = bpf::program_mode(args.encryption, args.strict_mode);
    let bpf = Bpf::start(
        &args.bpf_pin_dir,
        &underlay_if,
        args.listen_port,
        mode,
        &clusters,
    )
    .context("starting the tc eBPF datapath")?;
    let mut bpf = bpf;
    bpf.set_mesh_mark(args.mesh_mark)
        .context("setting the mesh mark in the tc datapath")?;
    tracing::info!(encryption = %args.encryption, strict = args.strict_mode, "underlay guarded");

    let helper = match &args.helper_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating the meshd executable")?
            .with_file_name("meshd-wg"),
    };
    let opts = UserspaceOptions {
        helper_binary: helper,
        threads: match args.wg_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            n => n,
        },
        log_file: Some(args.state_dir.join("meshd-wg.log")),
    };
    let mtu = args.mtu.unwrap_or_else(|| {
        netlink::wireguard_mtu(underlay_mtu, endpoints.iter().any(IpAddr::is_ipv6))
    });
    let (device, adopted) = bring_up_device(&args, &opts, &links, &private_key, mtu).await?;

    let mut events = registry.watch().context("watching the registry")?;
    let mut initial = Vec::new();
    let mut me = NodeRecord {
        name: args.node_name.clone(),
        public_key,
        listen_port: args.listen_port,
        endpoints,
        pod_cidrs: args.pod_cidrs.iter().map(IpNet::trunc).collect(),
    };
    if me.pod_cidrs.is_empty() && !args.pod_cidr_pools.is_empty() {
        me.pod_cidrs = claim_pod_cidrs(&args, &registry, &mut events, &mut initial, &me).await?;
    }
    me.validate().context("this node's own record is invalid")?;

    let status: SharedStatus = Arc::new(RwLock::new(None));
    let control = tokio::spawn(control::serve(args.control_socket.clone(), status.clone()));
    let heartbeat: crate::health::Heartbeat = Arc::new(RwLock::new(None));
    let metrics = crate::metrics::Metrics::new();
    let health = args.health_listen.map(|addr| {
        let (status, heartbeat, metrics) = (status.clone(), heartbeat.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(err) = crate::health::serve(addr, status, heartbeat, metrics).await {
                tracing::error!(%addr, %err, "health endpoints failed");
            }
        })
    });

    registry
        .publish(&me)
        .await
        .context("publishing this node's record")?;
    tracing::info!("record published");

    let live = Live {
        encryption: args.encryption,
        strict_mode: args.strict_mode,
        keepalive: args.keepalive,
        mtu,
        listen_port: args.listen_port,
        host_encryption: args.host_encryption,
        refresh_peers: false,
    };
    let args_state_dir = args.state_dir.clone();
    let ctx = Context {
        args,
        me: std::sync::RwLock::new(me),
        private_key,
        device: RwLock::new(device),
        adopted,
        mtu,
        links: links.clone(),
        routes,
        opts,
        status,
        bpf: tokio::sync::Mutex::new(bpf),
        underlay_ifindex: links
            .index_of(&underlay_if)
            .await?
            .with_context(|| format!("underlay interface {underlay_if} vanished"))?,
        live: RwLock::new(live),
        heartbeat,
        metrics,
        key_created_unix: key_mtime(&args_state_dir),
        status_feed,
    };
    let result = event_loop(&ctx, &registry, initial, events, settings).await;
    control.abort();
    if let Some(h) = health {
        h.abort();
    }
    crate::cni_conf::remove(&ctx.args.cni_conf_dir);
    if ctx.args.cleanup {
        cleanup(ctx, &registry).await;
    } else {
        tracing::info!("exiting; device, peers and routes stay in place for the next meshd");
    }
    result
}

/// Where a cluster-pool claim is kept across restarts.
const CLAIM_FILE: &str = "pod-cidrs.json";
/// How long a fresh claim is watched for a competing one before it is used.
const CLAIM_SETTLE: Duration = Duration::from_millis(1500);

fn read_claim(state_dir: &std::path::Path) -> Vec<IpNet> {
    std::fs::read_to_string(state_dir.join(CLAIM_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["podCIDRs"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str()?.parse().ok()).collect())
        })
        .unwrap_or_default()
}

fn write_claim(state_dir: &std::path::Path, cidrs: &[IpNet]) -> anyhow::Result<()> {
    let path = state_dir.join(CLAIM_FILE);
    let tmp = state_dir.join(format!(".{CLAIM_FILE}.tmp"));
    let body = serde_json::json!({ "podCIDRs": cidrs.iter().map(ToString::to_string).collect::<Vec<_>>() });
    std::fs::create_dir_all(state_dir)?;
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Fold registry events into `records` (other nodes only), keeping them for the event loop.
fn absorb(
    me: &str,
    ev: RegistryEvent,
    records: &mut BTreeMap<String, NodeRecord>,
    initial: &mut Vec<RegistryEvent>,
) -> bool {
    let synced = matches!(ev, RegistryEvent::Synced);
    match &ev {
        RegistryEvent::Upsert(r) if r.name != me => {
            records.insert(r.name.clone(), r.clone());
        }
        RegistryEvent::Delete(n) => {
            records.remove(n);
        }
        _ => {}
    }
    initial.push(ev);
    synced
}

/// `cluster-pool`: claim one block per pool that no other node's record overlaps. The claim
/// is published, then watched for [`CLAIM_SETTLE`]; if another node claimed an overlapping
/// block meanwhile, the greater node name chooses again. A claim persisted in the state
/// directory is kept across restarts while it stays free.
async fn claim_pod_cidrs<R: Registry>(
    args: &DaemonArgs,
    registry: &R,
    events: &mut mpsc::Receiver<RegistryEvent>,
    initial: &mut Vec<RegistryEvent>,
    me: &NodeRecord,
) -> anyhow::Result<Vec<IpNet>> {
    use crate::ipam::pool;
    let mut records = BTreeMap::new();
    // The registry's complete state first: never choose against a partial view.
    loop {
        let ev = events.recv().await.context("registry watch ended")?;
        if absorb(&me.name, ev, &mut records, initial) {
            break;
        }
    }
    let mut keep = read_claim(&args.state_dir);
    for attempt in 1..=20 {
        let taken: Vec<IpNet> = records.values().flat_map(|r| r.pod_cidrs.clone()).collect();
        let mut claim = Vec::new();
        for p in &args.pod_cidr_pools {
            let block = match p {
                IpNet::V4(_) => args.pod_cidr_block_v4,
                IpNet::V6(_) => args.pod_cidr_block_v6,
            };
            let prev = keep.iter().copied().find(|k| p.contains(&k.network()));
            claim.push(
                pool::choose_block(*p, block, &taken, prev, &me.name)
                    .with_context(|| format!("claiming a pod CIDR from pool {p}"))?,
            );
        }
        let mut record = me.clone();
        record.pod_cidrs = claim.clone();
        registry
            .publish(&record)
            .await
            .context("publishing this node's pod CIDR claim")?;
        write_claim(&args.state_dir, &claim)?;
        let settle = tokio::time::sleep(CLAIM_SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let ev = ev.context("registry watch ended")?;
                    absorb(&me.name, ev, &mut records, initial);
                }
                _ = &mut settle => break,
            }
        }
        let lost: Vec<&NodeRecord> = records
            .values()
            .filter(|r| {
                r.pod_cidrs.iter().any(|c| {
                    claim
                        .iter()
                        .any(|m| m.contains(&c.network()) || c.contains(&m.network()))
                })
            })
            .filter(|r| pool::loser(&me.name, &r.name) == me.name)
            .collect();
        if lost.is_empty() {
            tracing::info!(?claim, attempt, "pod CIDRs claimed from the cluster pool");
            return Ok(claim);
        }
        tracing::warn!(
            other = %lost[0].name,
            "another node claimed an overlapping pod CIDR; choosing again"
        );
        keep.clear();
    }
    bail!("could not claim a pod CIDR without conflict after 20 attempts")
}

/// Adopt (or create) the device and make sure key, port, MTU and link state are right.
async fn bring_up_device(
    args: &DaemonArgs,
    opts: &UserspaceOptions,
    links: &Links,
    private_key: &PrivateKey,
    mtu: u32,
) -> anyhow::Result<(WgDevice, bool)> {
    let (device, adopted) = WgDevice::ensure(&args.interface, args.wireguard_mode, opts)
        .await
        .with_context(|| format!("setting up WireGuard device {}", args.interface))?;
    tracing::info!(interface = %args.interface, mode = %device.mode(), adopted, "device ready");
    device
        .configure(
            &private_key.to_bytes(),
            args.listen_port,
            Some(args.mesh_mark),
        )
        .await
        .context("configuring key, listen port and fwmark")?;
    links.set_mtu(device.ifindex(), mtu).await?;
    links.set_up(device.ifindex()).await?;
    Ok((device, adopted))
}

/// The device stopped answering: bring it back (adopting it if it is in fact alive). Its peers,
/// routes and redirects are restored by the reconcile pass that follows; meanwhile redirects to
/// the vanished device drop, and strict mode drops whatever the kernel routes elsewhere.
async fn heal_device(ctx: &Context) -> anyhow::Result<()> {
    let mut device = ctx.device.write().await;
    if device.status().await.is_ok() {
        return Ok(());
    }
    tracing::warn!(interface = %ctx.args.interface, "WireGuard device is gone or not answering; bringing it back");
    let (fresh, adopted) =
        bring_up_device(&ctx.args, &ctx.opts, &ctx.links, &ctx.private_key, ctx.mtu).await?;
    tracing::info!(
        ifindex = fresh.ifindex(),
        adopted,
        "WireGuard device restored"
    );
    *device = fresh;
    Ok(())
}

async fn underlay(args: &DaemonArgs, links: &Links) -> anyhow::Result<(String, Vec<IpAddr>, u32)> {
    let (ifname, mtu) = match &args.underlay_interface {
        Some(name) => {
            let idx = links
                .index_of(name)
                .await?
                .with_context(|| format!("underlay interface {name} does not exist"))?;
            (name.clone(), links.mtu(idx).await?)
        }
        None => match links.underlay().await? {
            Some((_, name, mtu)) => (name, mtu),
            None => bail!("no underlay interface found; pass --underlay-interface"),
        },
    };
    let endpoints = if args.endpoints.is_empty() {
        let found = links.addresses(&ifname).await?;
        if found.is_empty() {
            bail!("underlay interface {ifname} has no global address; pass --endpoint");
        }
        found
    } else {
        args.endpoints.clone()
    };
    tracing::info!(underlay = %ifname, mtu, ?endpoints, "underlay");
    Ok((ifname, endpoints, mtu))
}

async fn event_loop<R: Registry>(
    ctx: &Context,
    registry: &R,
    initial: Vec<RegistryEvent>,
    mut events: mpsc::Receiver<RegistryEvent>,
    mut settings: Option<SettingsFeed>,
) -> anyhow::Result<()> {
    let mut known = Known::default();
    known.records.insert(ctx.me().name.clone(), ctx.me());
    // Events read while claiming pod CIDRs (cluster-pool).
    let mut republish_initial = false;
    for ev in initial {
        republish_initial |= apply_event(ctx, &mut known, ev);
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut converged = false;
    let mut republish = republish_initial;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { bail!("registry watch ended") };
                republish |= apply_event(ctx, &mut known, ev);
                while let Ok(ev) = events.try_recv() {
                    republish |= apply_event(ctx, &mut known, ev);
                }
            }
            _ = resync.tick() => {}
            _ = retry => {}
            changed = async {
                match settings.as_mut() {
                    Some(feed) => feed.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    tracing::warn!("the settings watcher stopped; the last settings stay in force");
                    settings = None;
                } else if let Some(feed) = &settings {
                    let new = feed.borrow().clone();
                    if let Some(new) = new {
                        apply_settings(ctx, &new).await;
                    }
                }
            }
            _ = status_tick.tick() => {
                match publish_status(ctx, &known, converged).await {
                    Ok(peers) => {
                        if track_liveness(ctx, &mut known, &peers).await {
                            // A tunnel came up or went down: host encryption follows it now.
                            retry_at = Some(tokio::time::Instant::now());
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), "reading device status failed");
                        // Reconcile now: it brings a vanished device back.
                        retry_at = Some(tokio::time::Instant::now());
                    }
                }
                continue;
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM"); return Ok(()); }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT"); return Ok(()); }
        }
        retry_at = None;
        if republish {
            // Our record was overwritten or removed by someone else: restore it, so peers
            // keep (or regain) the key this node actually uses.
            tracing::info!("publishing this node's record");
            match registry.publish(&ctx.me()).await {
                Ok(()) => republish = false,
                Err(err) => {
                    tracing::warn!(%err, "republishing this node's record failed; retrying");
                    retry_at = Some(tokio::time::Instant::now() + RETRY_DELAY);
                }
            }
        }
        if !known.synced {
            // Never act on a partial view: a restart would remove peers whose records
            // have simply not been read yet.
            continue;
        }
        let started = std::time::Instant::now();
        known.counters.reconciles += 1;
        let outcome = reconcile_once(ctx, &mut known).await;
        converged = outcome.is_ok();
        if std::mem::take(&mut known.republish) {
            republish = true;
            retry_at = Some(tokio::time::Instant::now());
        }
        if converged {
            let conf = crate::cni_conf::conflist(
                &ctx.me(),
                &ctx.args.state_dir.join("ipam"),
                ctx.mtu,
                &ctx.args.bpf_pin_dir,
                ctx.args.pod_steering == PodSteering::Ebpf,
            );
            if let Err(err) = crate::cni_conf::write(&ctx.args.cni_conf_dir, &conf) {
                tracing::warn!(error = %format!("{err:#}"), "writing the CNI configuration failed");
            }
        }
        if let Err(err) = outcome {
            known.counters.reconcile_errors += 1;
            tracing::warn!(error = %format!("{err:#}"), "reconcile failed; retrying");
            retry_at = Some(tokio::time::Instant::now() + RETRY_DELAY);
        }
        ctx.metrics.observe_reconcile(started.elapsed());
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconciled"
        );
        if let Err(err) = publish_status(ctx, &known, converged).await {
            tracing::warn!(error = %format!("{err:#}"), "reading device status failed");
        }
    }
}

/// Fold one registry event into what the loop knows; true when this node's own record must be
/// published again.
fn apply_event(ctx: &Context, known: &mut Known, ev: RegistryEvent) -> bool {
    match ev {
        RegistryEvent::Upsert(record) => {
            known.malformed.remove(&record.name);
            if record.name == ctx.me().name && record != ctx.me() {
                tracing::warn!(
                    "the registry holds a different record under this node's name; keeping ours"
                );
                return true;
            }
            tracing::info!(node = %record.name, key = %record.public_key, "record");
            known.records.insert(record.name.clone(), record);
        }
        RegistryEvent::Delete(name) => {
            known.malformed.remove(&name);
            if name == ctx.me().name {
                tracing::warn!("this node's record was removed from the registry");
                return true;
            }
            tracing::info!(node = %name, "record removed");
            known.records.remove(&name);
        }
        RegistryEvent::Synced => {
            if !known.synced {
                tracing::info!(nodes = known.records.len(), "registry state complete");
            }
            known.synced = true;
        }
        RegistryEvent::Malformed { node, error } => {
            known.counters.malformed_records += 1;
            tracing::warn!(%node, %error, "skipping malformed record (last good record, if any, stays in force)");
            let mine = node == ctx.me().name;
            known.malformed.insert(node, error.to_string());
            return mine;
        }
    }
    false
}

fn desired(ctx: &Context, known: &mut Known) -> PeerSet {
    let set = compute_peers(known.records.values(), &ctx.me());
    let conflicts: BTreeSet<String> = set.conflicts.iter().map(ToString::to_string).collect();
    for c in conflicts.difference(&known.last_conflicts) {
        tracing::error!(conflict = %c, "conflicting records: neither side is programmed");
    }
    known.last_conflicts = conflicts;
    set
}

/// Fold new operator settings into the live ones; the reconcile pass that follows moves the
/// datapath (see [`reconcile_once`] for the order that keeps connections and encryption).
async fn apply_settings(ctx: &Context, new: &crate::settings::Settings) {
    let mut live = ctx.live.write().await;
    let before = live.clone();
    live.encryption = new.encryption.into();
    live.strict_mode = new.strict_mode;
    if live.keepalive != new.keepalive {
        live.keepalive = new.keepalive;
        live.refresh_peers = true;
    }
    if let Some(mtu) = new.mtu {
        live.mtu = mtu;
    }
    live.listen_port = new.listen_port;
    if live.host_encryption != new.host_encryption {
        live.host_encryption = new.host_encryption;
        // The effective keepalive may change with it.
        live.refresh_peers = true;
    }
    if *live != before {
        tracing::info!(
            encryption = %live.encryption,
            strict = live.strict_mode,
            keepalive = ?live.keepalive,
            mtu = live.mtu,
            listen_port = live.listen_port,
            host_encryption = live.host_encryption,
            "settings changed; applying live"
        );
    }
}

/// One pass towards the desired state. The order keeps established connections and never
/// opens a cleartext window the settings do not allow:
/// 1. relax the underlay guard first when the new mode is less strict;
/// 2. stop redirecting CIDRs that leave the tunnel;
/// 3. plain routes (encryption disabled) replace tunnel routes atomically;
/// 4. departing peers go, then their tunnel routes;
/// 5. new peers come, then their tunnel routes (replacing plain routes atomically);
/// 6. leftover plain routes go; redirects into the tunnel are set;
/// 7. the guard tightens last, when everything it protects is in place.
async fn reconcile_once(ctx: &Context, known: &mut Known) -> anyhow::Result<()> {
    let live = ctx.live.read().await.clone();
    let mut want = desired(ctx, known);
    let plain = if live.encryption == Encryption::Disabled {
        let plain = reconcile::plain_routes(known.records.values(), &want);
        want.peers.clear();
        plain
    } else {
        BTreeMap::new()
    };
    // Every peer accepts its node's own addresses from the tunnel, whatever this node's
    // host-encryption setting: a peer that already encrypts is never refused.
    let host_prefixes = reconcile::add_host_addresses(&mut want, known.records.values());
    if ctx.device.read().await.status().await.is_err() {
        known.counters.device_restores += 1;
        heal_device(ctx).await?;
    }
    let device = ctx.device.read().await;
    let mut dev = device.status().await.context("reading device")?;
    if dev.listen_port != live.listen_port || dev.fwmark != ctx.args.mesh_mark {
        device
            .configure(
                &ctx.private_key.to_bytes(),
                live.listen_port,
                Some(ctx.args.mesh_mark),
            )
            .await
            .context("setting the listen port and fwmark")?;
        if dev.listen_port != live.listen_port {
            tracing::info!(
                from = dev.listen_port,
                to = live.listen_port,
                "listen port changed live"
            );
        }
        dev = device.status().await.context("reading device")?;
    }
    let mut bpf = ctx.bpf.lock().await;
    if ctx.me().listen_port != dev.listen_port {
        // Peers learn the new port from the record, and at once from this node's next
        // authenticated packet (WireGuard roaming).
        bpf.set_port(dev.listen_port)?;
        ctx.me
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .listen_port = dev.listen_port;
        known.republish = true;
    }
    let present = ctx
        .routes
        .list(device.ifindex())
        .await
        .context("listing routes")?;
    let keepalive = live.effective_keepalive();
    let mut plan = reconcile::plan(&want, &dev.peers, &present, keepalive, &host_prefixes);
    if live.refresh_peers {
        plan.upsert_peers =
            reconcile::plan(&want, &[], &present, keepalive, &host_prefixes).upsert_peers;
        ctx.live.write().await.refresh_peers = false;
    }
    let redirects = reconcile::redirects(&want, device.ifindex(), &host_prefixes);
    let hosts = if live.host_encryption
        && live.encryption != Encryption::Disabled
        && dev.fwmark == ctx.args.mesh_mark
    {
        reconcile::encrypted_hosts(
            known.records.values(),
            &want,
            &known.live_peers,
            &ctx.args.host_encryption_exclude,
            device.ifindex(),
        )
    } else {
        BTreeMap::new()
    };
    let mode = bpf::program_mode(live.encryption, live.strict_mode);
    if mode == ebpf_redirect::Mode::Permissive && bpf.mode() != mode {
        bpf.set_mode(mode)?;
        tracing::info!("underlay guard relaxed to permissive");
    }
    // Stop redirecting departing CIDRs and hosts before their peers go.
    let stale = reconcile::redirects_kept(&redirects, &bpf.remotes().context("reading redirects")?);
    known.counters.map_ops += bpf.sync_remotes(&stale)? as u64;
    sync_host_routes(ctx, known, &hosts, true).await?;
    sync_pods(ctx, &mut bpf, known)?;
    let plain_present: BTreeMap<IpNet, IpAddr> = ctx
        .routes
        .list_via(ctx.underlay_ifindex)
        .await
        .context("listing plain routes")?
        .into_iter()
        .collect();
    for (dst, gw) in &plain {
        if plain_present.get(dst) != Some(gw) {
            ctx.routes.add_via(*dst, *gw, ctx.underlay_ifindex).await?;
            known.counters.route_ops += 1;
        }
    }
    if ctx.links.mtu(device.ifindex()).await.ok() != Some(live.mtu) {
        ctx.links.set_mtu(device.ifindex(), live.mtu).await?;
        tracing::info!(mtu = live.mtu, "WireGuard MTU changed");
    }
    if plan.is_empty() {
        finish_pass(
            ctx,
            known,
            &mut bpf,
            &plain,
            &plain_present,
            (&redirects, &hosts),
            mode,
        )
        .await?;
        return Ok(());
    }
    tracing::info!(
        remove_peers = plan.remove_peers.len(),
        del_routes = plan.del_routes.len(),
        upsert_peers = plan.upsert_peers.len(),
        add_routes = plan.add_routes.len(),
        "applying changes"
    );
    if !plan.remove_peers.is_empty() {
        device.apply(&plan.remove_peers).await?;
        known.counters.peer_ops += plan.remove_peers.len() as u64;
    }
    for dst in &plan.del_routes {
        ctx.routes.del(*dst, device.ifindex()).await?;
        known.counters.route_ops += 1;
    }
    if !plan.upsert_peers.is_empty() {
        device.apply(&plan.upsert_peers).await?;
        known.counters.peer_ops += plan.upsert_peers.len() as u64;
    }
    for dst in &plan.add_routes {
        ctx.routes.add(*dst, device.ifindex()).await?;
        known.counters.route_ops += 1;
    }
    finish_pass(
        ctx,
        known,
        &mut bpf,
        &plain,
        &plain_present,
        (&redirects, &hosts),
        mode,
    )
    .await
}

/// Steps 6 and 7 of [`reconcile_once`].
async fn finish_pass(
    ctx: &Context,
    known: &mut Known,
    bpf: &mut Bpf,
    plain: &BTreeMap<IpNet, IpAddr>,
    plain_present: &BTreeMap<IpNet, IpAddr>,
    (redirects, hosts): (&BTreeMap<IpNet, u32>, &BTreeMap<IpAddr, u32>),
    mode: ebpf_redirect::Mode,
) -> anyhow::Result<()> {
    for (dst, gw) in plain_present {
        if plain.get(dst) != Some(gw) {
            ctx.routes.del_via(*dst, *gw, ctx.underlay_ifindex).await?;
            known.counters.route_ops += 1;
        }
    }
    // Redirect new CIDRs and route hosts only once their peers exist.
    known.counters.map_ops += bpf.sync_remotes(redirects)? as u64;
    sync_host_routes(ctx, known, hosts, false).await?;
    if bpf.mode() != mode {
        bpf.set_mode(mode)?;
        tracing::info!(?mode, "underlay guard mode set");
    }
    Ok(())
}

/// Host encryption's routing: `want` (peer node address → tunnel ifindex) as host routes in
/// [`HOST_TABLE`], which the rule `not fwmark MESH_MARK lookup HOST_TABLE` puts before the
/// main table for everything but the tunnel's own packets. Routing (rather than redirecting)
/// gives the node's TCP the tunnel's MTU. `removals_only` applies just the removals (before
/// peers go); otherwise routes are added (after peers exist) and the rule follows whether any
/// route is wanted.
async fn sync_host_routes(
    ctx: &Context,
    known: &mut Known,
    want: &BTreeMap<IpAddr, u32>,
    removals_only: bool,
) -> anyhow::Result<()> {
    let present: BTreeMap<IpAddr, u32> = ctx
        .routes
        .list_hosts_in(HOST_TABLE)
        .await
        .context("listing host-encryption routes")?
        .into_iter()
        .collect();
    let (remove, add) = bpf::map_diff(want, &present);
    for ip in remove {
        ctx.routes.del_host_in(ip, present[&ip], HOST_TABLE).await?;
        known.counters.route_ops += 1;
    }
    if removals_only {
        known.encrypted_hosts.retain(|ip| want.contains_key(ip));
        return Ok(());
    }
    if want.is_empty() {
        ctx.routes
            .remove_mark_rule(ctx.args.mesh_mark, HOST_TABLE, HOST_RULE_PRIORITY)
            .await?;
    } else {
        ctx.routes
            .ensure_mark_rule(ctx.args.mesh_mark, HOST_TABLE, HOST_RULE_PRIORITY)
            .await?;
    }
    let me = ctx.me();
    for (ip, ifindex) in add {
        let src = me
            .endpoints
            .iter()
            .find(|e| e.is_ipv4() == ip.is_ipv4())
            .copied();
        ctx.routes.add_host_in(ip, ifindex, src, HOST_TABLE).await?;
        known.counters.route_ops += 1;
    }
    known.encrypted_hosts = want.keys().copied().collect();
    Ok(())
}

/// The backstop for the CNI plugin, which updates the maps and attaches `from_pod` itself on
/// ADD: every local pod in the IPAM store is in the local map and, with eBPF steering, has
/// `from_pod` on its host veth; the underlay guard is still attached.
fn sync_pods(ctx: &Context, bpf: &mut Bpf, known: &mut Known) -> anyhow::Result<()> {
    let ipam_dir = ctx.args.state_dir.join("ipam");
    // The local-pod map mirrors the store under the store's lock: an ADD that allocates
    // meanwhile waits, so its own map entries are never removed as unknown.
    let mirror = |entries: &[crate::ipam::Entry], bpf: &mut Bpf| {
        let locals: BTreeSet<IpAddr> = entries
            .iter()
            .filter(|e| e.owner.is_some())
            .map(|e| e.address)
            .collect();
        bpf.sync_locals(&locals).map(|ops| (ops, entries.to_vec()))
    };
    let (ops, entries) = if ipam_dir.exists() {
        Ipam::open(&ipam_dir, &[])
            .and_then(|i| i.with_locked_list(|e| mirror(e, bpf)))
            .with_context(|| format!("reading the IPAM store {}", ipam_dir.display()))??
    } else {
        mirror(&[], bpf)?
    };
    known.counters.map_ops += ops as u64;
    if ctx.args.pod_steering == PodSteering::Ebpf {
        let veths: BTreeSet<String> = entries
            .iter()
            .filter_map(|e| e.owner.as_ref())
            .map(|o| crate::cni::host_veth_name(&o.container_id, &o.ifname))
            .collect();
        known.counters.map_ops += bpf.sync_pods(&veths)? as u64;
    }
    if bpf.ensure_underlay()? {
        tracing::warn!("underlay_egress had been detached; re-attached");
    }
    Ok(())
}

/// Follow each peer's received bytes: a tunnel is up while bytes arrived within
/// [`LIVENESS_INTERVALS`] keepalive intervals. True when the set of live peers changed.
async fn track_liveness(ctx: &Context, known: &mut Known, peers: &[netlink::PeerStatus]) -> bool {
    let live = ctx.live.read().await.clone();
    if !live.host_encryption {
        let changed = !known.live_peers.is_empty();
        known.live_peers.clear();
        known.rx_seen.clear();
        return changed;
    }
    let window = Duration::from_secs(
        u64::from(live.effective_keepalive().unwrap_or(HOST_KEEPALIVE))
            * u64::from(LIVENESS_INTERVALS),
    );
    let now = std::time::Instant::now();
    let mut seen = BTreeMap::new();
    for p in peers {
        let key = PublicKey::from_bytes(p.public_key);
        let at = match known.rx_seen.get(&key) {
            Some((rx, at)) if *rx == p.rx_bytes => *at,
            Some(_) => now,
            // First sight (e.g. after a restart): up if it handshook recently.
            None => {
                let recent = p.last_handshake.is_some_and(|t| {
                    SystemTime::now()
                        .duration_since(t)
                        .is_ok_and(|age| age < window)
                });
                if recent {
                    now
                } else {
                    now.checked_sub(window).unwrap_or(now)
                }
            }
        };
        seen.insert(key, (p.rx_bytes, at));
    }
    let up: BTreeSet<PublicKey> = seen
        .iter()
        .filter(|(_, (rx, at))| *rx > 0 && now.duration_since(*at) < window)
        .map(|(k, _)| *k)
        .collect();
    known.rx_seen = seen;
    if up == known.live_peers {
        return false;
    }
    for k in up.difference(&known.live_peers) {
        tracing::info!(peer = %k, "tunnel up: host traffic to the peer is encrypted");
    }
    for k in known.live_peers.difference(&up) {
        tracing::warn!(peer = %k, window_s = window.as_secs(), "nothing received from the peer: host traffic to it leaves the tunnel (fails open)");
    }
    known.live_peers = up;
    true
}

/// Serve a fresh status; returns the device's peers as read for it.
async fn publish_status(
    ctx: &Context,
    known: &Known,
    converged: bool,
) -> anyhow::Result<Vec<netlink::PeerStatus>> {
    let device = ctx.device.read().await;
    let live = device.status().await?;
    let names: BTreeMap<PublicKey, &str> = known
        .records
        .values()
        .map(|r| (r.public_key, r.name.as_str()))
        .collect();
    let now = SystemTime::now();
    let peers = live
        .peers
        .iter()
        .map(|p| {
            let key = PublicKey::from_bytes(p.public_key);
            let unix = p
                .last_handshake
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            let ago = p
                .last_handshake
                .map(|t| now.duration_since(t).unwrap_or_default().as_secs());
            PeerReport {
                name: names.get(&key).map(|n| (*n).to_string()),
                public_key: key.to_string(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                last_handshake_unix: unix,
                last_handshake_secs_ago: ago,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            }
        })
        .collect();
    let report = StatusReport {
        node: ctx.me().name.clone(),
        public_key: ctx.private_key.public_key().to_string(),
        mode: device.mode().to_string(),
        interface: device.name().to_string(),
        ifindex: device.ifindex(),
        adopted_device: ctx.adopted,
        listen_port: live.listen_port,
        mtu: ctx.mtu,
        endpoints: ctx.me().endpoints.iter().map(ToString::to_string).collect(),
        pod_cidrs: ctx.me().pod_cidrs.iter().map(ToString::to_string).collect(),
        known_nodes: known.records.keys().cloned().collect(),
        peers,
        conflicts: known.last_conflicts.iter().cloned().collect(),
        malformed: known
            .malformed
            .iter()
            .map(|(node, error)| MalformedReport {
                node: node.clone(),
                error: error.clone(),
            })
            .collect(),
        counters: known.counters.clone(),
        converged,
        encryption: ctx.live.read().await.encryption.to_string(),
        strict_mode: ctx.live.read().await.strict_mode,
        host_encryption: ctx.live.read().await.host_encryption,
        encrypted_hosts: known
            .encrypted_hosts
            .iter()
            .map(ToString::to_string)
            .collect(),
        key_created_unix: ctx.key_created_unix,
        datapath: match ctx.bpf.lock().await.report() {
            Ok(r) => Some(r),
            Err(err) => {
                tracing::warn!(error = %err, "reading the eBPF datapath failed");
                None
            }
        },
    };
    if let Some(feed) = &ctx.status_feed {
        // Receivers decide what changed (the Node condition writes only when it does).
        feed.send_replace(Some(report.clone()));
    }
    *ctx.status.write().await = Some(report);
    *ctx.heartbeat.write().await = Some(std::time::Instant::now());
    Ok(live.peers)
}

async fn cleanup<R: Registry>(ctx: Context, registry: &R) {
    tracing::info!("--cleanup: withdrawing record, removing routes, device and tc programs");
    if let Err(err) = registry.withdraw(&ctx.me().name).await {
        tracing::warn!(%err, "withdrawing record failed");
    }
    let device = ctx.device.into_inner();
    if let Ok(present) = ctx.routes.list(device.ifindex()).await {
        for dst in present {
            if let Err(err) = ctx.routes.del(dst, device.ifindex()).await {
                tracing::warn!(%err, %dst, "removing route failed");
            }
        }
    }
    if let Ok(hosts) = ctx.routes.list_hosts_in(HOST_TABLE).await {
        for (ip, oif) in hosts {
            if let Err(err) = ctx.routes.del_host_in(ip, oif, HOST_TABLE).await {
                tracing::warn!(%err, %ip, "removing host route failed");
            }
        }
    }
    if let Err(err) = ctx
        .routes
        .remove_mark_rule(ctx.args.mesh_mark, HOST_TABLE, HOST_RULE_PRIORITY)
        .await
    {
        tracing::warn!(%err, "removing the host-encryption rule failed");
    }
    if let Err(err) = device.destroy().await {
        tracing::warn!(%err, "removing device failed");
    }
    // Last: the underlay guard stays until nothing routes pod traffic any more.
    ctx.bpf.into_inner().cleanup();
    let _ = std::fs::remove_file(&ctx.args.control_socket);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;
    use keyexchange::DirRegistry;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        daemon: DaemonArgs,
    }

    fn args(name: &str, state: &std::path::Path) -> DaemonArgs {
        Cli::parse_from([
            "meshd",
            "--node-name",
            name,
            "--state-dir",
            &state.to_string_lossy(),
            "--pod-cidr-pool",
            "10.244.0.0/22",
            "--pod-cidr-pool",
            "fd00:244::/62",
        ])
        .daemon
    }

    fn record(name: &str, key: u8) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            public_key: PrivateKey::from_bytes([key; 32]).public_key(),
            listen_port: 51820,
            endpoints: vec![format!("198.18.0.{key}").parse().unwrap()],
            pod_cidrs: vec![],
        }
    }

    #[tokio::test]
    async fn two_nodes_claiming_the_same_block_at_once_end_up_with_different_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let registry_dir = dir.path().join("registry");
        let (s1, s2) = (dir.path().join("s1"), dir.path().join("s2"));
        // Both "remember" the same previous claim: the worst case of a simultaneous start.
        for s in [&s1, &s2] {
            write_claim(
                s,
                &[
                    "10.244.1.0/24".parse().unwrap(),
                    "fd00:244:0:1::/64".parse().unwrap(),
                ],
            )
            .unwrap();
        }
        let claim = |name: &'static str, key: u8, state: std::path::PathBuf| {
            let registry_dir = registry_dir.clone();
            tokio::spawn(async move {
                let registry = DirRegistry::new(registry_dir).unwrap();
                let mut events = registry.watch().unwrap();
                let mut initial = Vec::new();
                claim_pod_cidrs(
                    &args(name, &state),
                    &registry,
                    &mut events,
                    &mut initial,
                    &record(name, key),
                )
                .await
                .unwrap()
            })
        };
        let (a, b) = (claim("n1", 1, s1.clone()), claim("n2", 2, s2.clone()));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert_eq!(a.len(), 2);
        assert_eq!(b.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                !(x.contains(&y.network()) || y.contains(&x.network())),
                "{a:?} overlaps {b:?}"
            );
        }
        // The smaller name kept its claim; the claims are persisted.
        assert_eq!(a[0], "10.244.1.0/24".parse::<IpNet>().unwrap());
        assert_eq!(read_claim(&s1), a);
        assert_eq!(read_claim(&s2), b);
        // A restart keeps the claim while it is free.
        let registry = DirRegistry::new(registry_dir.clone()).unwrap();
        let mut events = registry.watch().unwrap();
        let again = claim_pod_cidrs(
            &args("n2", &s2),
            &registry,
            &mut events,
            &mut Vec::new(),
            &record("n2", 2),
        )
        .await
        .unwrap();
        assert_eq!(again, b);
    }
}
