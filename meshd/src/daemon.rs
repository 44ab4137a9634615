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
use keyexchange::record::SlotKey;
use keyexchange::slots::{self, Slot, SLOTS};
use keyexchange::{NodeRecord, PrivateKey, PublicKey};
use netlink::{Links, Routes, UserspaceOptions, WgDevice, WireguardMode};
use tokio::sync::{mpsc, RwLock};

use crate::bpf::{self, Bpf, Encryption};
use crate::control::{self, Counters, MalformedReport, PeerReport, SharedStatus, StatusReport};
use crate::reconcile;
use crate::registry::{Registry, RegistryEvent};
use crate::rotation::{self, Action, Driver};
use meshd_cni::ipam::Ipam;

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
    /// The second key slot's WireGuard interface (key rotation runs over two devices);
    /// default: the interface name with `b` appended.
    #[arg(long)]
    pub second_interface: Option<String>,
    /// WireGuard UDP listen port; the second key slot listens on the next port.
    #[arg(long, default_value_t = 51820)]
    pub listen_port: u16,
    /// Rotate this node's keys on this schedule (e.g. `24h`, `30m`, `90s`; a plain number is
    /// seconds): both key slots are replaced without losing a packet (see the README).
    /// Default: only on demand (`meshctl rotate-key`).
    #[arg(long, value_parser = parse_interval)]
    pub key_rotation_interval: Option<Duration>,
    /// A peer that has not acknowledged a rotation step for 10 s, and with which no WireGuard
    /// handshake completed on either slot for this long, is excused for the rest of the
    /// rotation instead of aborting it (a dead node must not stop every other node's
    /// rotation). The default is WireGuard's own limit on a session's age, so an excused peer
    /// has no session; shorter values are for tests.
    #[arg(long, value_parser = parse_interval, default_value = "180s")]
    pub rotation_silence: Duration,
    /// Where the network sysctls of meshd's network namespace are (in a pod whose own
    /// `/proc/sys` is read-only: a host path mount of `/proc/sys/net`).
    #[arg(long, default_value = "/proc/sys/net")]
    pub proc_sys_net: PathBuf,
    /// `auto` (kernel module when available, else user space), `kernel`, `userspace`, or
    /// `external`: both user-space devices are run by another process (the `wireguard`
    /// containers of `deploy/components/userspace-wireguard`); meshd waits for each to appear
    /// and adopts it, and never spawns a helper.
    #[arg(long, default_value = "auto")]
    pub wireguard_mode: WireguardMode,
    /// Underlay addresses peers should send to (repeatable); default: the underlay interface's.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<IpAddr>,
    /// Underlay interface; default: the one carrying the default route.
    #[arg(long)]
    pub underlay_interface: Option<String>,
    /// Another interface whose egress strict mode guards (repeatable). Besides these and the
    /// underlay, every interface holding a default route is guarded, checked on every pass.
    #[arg(long = "guard-interface")]
    pub guard_interfaces: Vec<String>,
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
    /// converged and removes it when the mesh has failed to converge for
    /// `--cni-unready-after`, and when meshd stops, so no pod is scheduled onto a node whose
    /// mesh is down.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// How long reconcile passes must keep failing before the node stops taking pods (its CNI
    /// configuration is removed; it comes back on the next converged pass).
    #[arg(long, value_parser = parse_interval, default_value = "10s")]
    pub cni_unready_after: Duration,
    /// The user-space WireGuard helper binary; default: `meshd-wg` next to this executable.
    #[arg(long)]
    pub helper_binary: Option<PathBuf>,
    /// Serve `/healthz` and `/readyz` on this address (e.g. `0.0.0.0:9108`).
    #[arg(long)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// TUN queues of the user-space datapath; 0 = one per CPU, at most 4. One: a single
    /// thread seals and opens (the lowest latency). More: a thread per queue seals and one
    /// more opens; that only pays off with many flows, because received packets are written
    /// on queue 0, so the kernel sends each flow's replies through queue 0 too.
    #[arg(long, default_value_t = 1)]
    pub wg_threads: usize,
    /// The user-space datapath's busy poll after sending, in microseconds (0: never): a
    /// reply that comes back within it needs no thread wake-up. Capped at a tenth of a core.
    #[arg(
        long,
        env = "MESHD_WG_BUSY_POLL_US",
        default_value_t = netlink::DEFAULT_BUSY_POLL_US,
        value_parser = clap::value_parser!(u64).range(0..=1_000)
    )]
    pub wg_busy_poll_us: u64,
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

/// Parses `90`, `90s`, `30m`, `24h` or `7d` (at least one second).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with an optional unit s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        other => return Err(format!("{text:?}: unknown unit {other:?} (s, m, h or d)")),
    };
    if secs == 0 {
        return Err(format!("{text:?}: must be at least one second"));
    }
    Ok(Duration::from_secs(secs))
}

/// The second key slot's listen port for a first-slot port.
pub fn second_port(port: u16) -> u16 {
    port.wrapping_add(1)
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
    /// This node's record as published (its listen port, keys and rotation step change live).
    me: std::sync::RwLock<NodeRecord>,
    /// The private key of each slot (rotation replaces them).
    keys: std::sync::RwLock<[PrivateKey; 2]>,
    /// Each slot's device; replaced only when it vanished (its user-space process died).
    devices: [RwLock<WgDevice>; 2],
    /// Each slot's interface name.
    interfaces: [String; 2],
    adopted: bool,
    /// The MTU `mtu: auto` stands for (`--mtu`, else derived from the underlay); the MTU in
    /// force is [`Live::mtu`].
    auto_mtu: u32,
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
    status_feed: Option<tokio::sync::watch::Sender<Option<StatusReport>>>,
    /// The API servers' endpoints (host encryption excludes them).
    api_servers: Option<ApiServerFeed>,
}

impl Context {
    /// This node's current record.
    fn me(&self) -> NodeRecord {
        self.me
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Slot `slot`'s private key.
    fn key(&self, slot: Slot) -> PrivateKey {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)[usize::from(slot)]
        .clone()
    }

    /// Slot `slot`'s device.
    fn device(&self, slot: Slot) -> &RwLock<WgDevice> {
        &self.devices[usize::from(slot)]
    }

    /// Change this node's record (then publish it).
    fn update_me(&self, f: impl FnOnce(&mut NodeRecord)) {
        f(&mut self
            .me
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// When the older of the two keys was written (UNIX seconds; the key files' mtimes).
    fn key_created_unix(&self) -> Option<u64> {
        [KEY_FILES[0], KEY_FILES[1]]
            .iter()
            .map(|f| key_mtime(&self.args.state_dir.join(f)))
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().min())
    }
}

/// Each slot's key file in the state directory.
const KEY_FILES: [&str; 2] = [
    keyexchange::key::KEY_FILE,
    keyexchange::key::SECOND_KEY_FILE,
];

/// When a key file was last written (UNIX seconds).
fn key_mtime(path: &std::path::Path) -> Option<u64> {
    std::fs::metadata(path)
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
    /// Per peer (public key, so per slot): the last received-bytes count and when it last
    /// grew (tunnel liveness).
    rx_seen: BTreeMap<PublicKey, (u64, std::time::Instant)>,
    /// Peers whose tunnel is up by that measure.
    live_peers: BTreeSet<PublicKey>,
    /// Every programmed peer key's last handshake (both devices), as last read while a
    /// rotation is under way; `None` otherwise (no peer is judged silent then).
    handshakes: Option<BTreeMap<PublicKey, Option<SystemTime>>>,
    /// When cleartext was last attempted (see [`control::CleartextReport`]), and the last
    /// reading of the strict-drop plus would-drop counters.
    cleartext: control::CleartextReport,
    cleartext_total: Option<u64>,
    /// Since when reconcile passes have been failing (None: the last one converged).
    failing_since: Option<std::time::Instant>,
    /// Peer node addresses routed through the tunnel now (host encryption).
    encrypted_hosts: BTreeSet<IpAddr>,
    /// This node's record changed (listen port, acknowledgements): publish it.
    republish: bool,
    /// The slot each peer node's traffic uses now.
    peer_slots: BTreeMap<String, Slot>,
    /// This node's key rotation.
    rotation: Driver,
    /// Who waits for the rotation under way to end (`meshctl rotate-key`).
    rotation_waiters: Vec<tokio::sync::oneshot::Sender<Result<String, String>>>,
    /// Rotations finished and abandoned, and when the last one finished (UNIX seconds).
    rotations: u64,
    rotation_failures: u64,
    last_rotation_unix: Option<u64>,
    last_rotation_error: Option<String>,
}

impl Live {
    /// Folds new operator settings in; `mtu: auto` (`None`) is `auto_mtu`.
    fn apply(&mut self, new: &crate::settings::Settings, auto_mtu: u32) {
        self.encryption = new.encryption;
        self.strict_mode = new.strict_mode;
        if self.keepalive != new.keepalive {
            self.keepalive = new.keepalive;
            self.refresh_peers = true;
        }
        self.mtu = new.mtu.unwrap_or(auto_mtu);
        self.listen_port = new.listen_port;
        if self.host_encryption != new.host_encryption {
            self.host_encryption = new.host_encryption;
            // The effective keepalive may change with it.
            self.refresh_peers = true;
        }
    }

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

/// The API servers' addresses as learnt from the cluster (the `kubernetes` Service's
/// endpoints): host encryption never tunnels them. `None` until first read.
pub type ApiServerFeed = tokio::sync::watch::Receiver<Option<BTreeSet<IpAddr>>>;

/// Run the daemon until SIGTERM/SIGINT. With `settings`, the ConfigMap's values override the
/// flags and are applied live whenever they change.
pub async fn run<R: Registry>(
    args: DaemonArgs,
    registry: R,
    settings: Option<SettingsFeed>,
) -> anyhow::Result<()> {
    run_with(args, registry, settings, None, None).await
}

/// [`run`], also sending every status meshd serves to `status_feed` (e.g. for the Node
/// condition), and never tunnelling the addresses `api_servers` names (host encryption).
pub async fn run_with<R: Registry>(
    args: DaemonArgs,
    registry: R,
    settings: Option<SettingsFeed>,
    status_feed: Option<tokio::sync::watch::Sender<Option<StatusReport>>>,
    api_servers: Option<ApiServerFeed>,
) -> anyhow::Result<()> {
    let mut args = args;
    // `mtu: auto` in the ConfigMap means this: `--mtu`, else derived from the underlay.
    let flag_mtu = args.mtu;
    if let Some(feed) = &settings {
        if let Some(s) = feed.borrow().clone() {
            args.encryption = s.encryption;
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
    let mut keys = Vec::new();
    for (slot, file) in KEY_FILES.iter().enumerate() {
        let (key, origin) = keyexchange::key::load_or_generate_file(&args.state_dir, file)
            .with_context(|| format!("loading this node's WireGuard key for slot {slot}"))?;
        tracing::info!(node = %args.node_name, slot, public_key = %key.public_key(), ?origin, "key ready");
        keys.push(key);
    }
    let keys: [PrivateKey; 2] = [keys[0].clone(), keys[1].clone()];
    let public_key = keys[0].public_key();
    if args.listen_port == u16::MAX {
        bail!("--listen-port 65535 leaves no port for the second key slot (the next port)");
    }
    let interfaces = [
        args.interface.clone(),
        args.second_interface
            .clone()
            .unwrap_or_else(|| format!("{}b", args.interface)),
    ];
    if interfaces[1].len() > 15 || interfaces[1] == interfaces[0] {
        bail!(
            "second key slot's interface {:?} is not a valid, distinct interface name (at most 15 characters); pass --second-interface",
            interfaces[1]
        );
    }

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
    bpf.set_second_port(second_port(args.listen_port))
        .context("setting the second slot's port in the tc datapath")?;
    let guards = guard_interfaces(&args, &links, &interfaces).await;
    let anew = bpf
        .ensure_guards(&guards)
        .context("guarding the node's other ways out")?;
    tracing::info!(encryption = %args.encryption, strict = args.strict_mode, underlay = %underlay_if, others = ?anew, "underlay guarded");

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
        busy_poll_us: args.wg_busy_poll_us,
        log_file: Some(args.state_dir.join("meshd-wg.log")),
    };
    let auto_mtu = flag_mtu.unwrap_or_else(|| {
        netlink::wireguard_mtu(underlay_mtu, endpoints.iter().any(IpAddr::is_ipv6))
    });
    let mtu = args.mtu.unwrap_or(auto_mtu);
    let (device, adopted) = bring_up_device(
        &args,
        &opts,
        &links,
        (&interfaces[0], 0),
        &keys[0],
        args.listen_port,
        mtu,
        netlink::EXTERNAL_WAIT,
    )
    .await?;
    let (second, _) = bring_up_device(
        &args,
        &opts,
        &links,
        (&interfaces[1], 1),
        &keys[1],
        second_port(args.listen_port),
        mtu,
        netlink::EXTERNAL_WAIT,
    )
    .await?;

    let mut events = registry.watch().context("watching the registry")?;
    let mut initial = Vec::new();
    let mut me = NodeRecord {
        name: args.node_name.clone(),
        public_key,
        listen_port: args.listen_port,
        endpoints,
        pod_cidrs: args.pod_cidrs.iter().map(IpNet::trunc).collect(),
        rotation: keyexchange::record::Rotation {
            second: Some(SlotKey {
                public_key: keys[1].public_key(),
                listen_port: second_port(args.listen_port),
            }),
            ..Default::default()
        },
    };
    if me.pod_cidrs.is_empty() && !args.pod_cidr_pools.is_empty() {
        me.pod_cidrs = claim_pod_cidrs(&args, &registry, &mut events, &mut initial, &me).await?;
    }
    // A rotation this node was in the middle of when it stopped goes on from where it stood.
    let resumed = load_rotation(&args.state_dir).map(|saved| {
        let (driver, step) = Driver::resume(&saved, std::time::Instant::now());
        tracing::info!(phase = ?saved.phase, ?step, "resuming the key rotation under way");
        me.rotation.step = step;
        driver
    });
    me.validate().context("this node's own record is invalid")?;

    let status: SharedStatus = Arc::new(RwLock::new(None));
    let (commands_tx, commands) = mpsc::channel(16);
    let control = tokio::spawn(control::serve(
        args.control_socket.clone(),
        status.clone(),
        commands_tx,
    ));
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
    let ctx = Context {
        args,
        me: std::sync::RwLock::new(me),
        keys: std::sync::RwLock::new(keys),
        devices: [RwLock::new(device), RwLock::new(second)],
        interfaces,
        adopted,
        auto_mtu,
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
        status_feed,
        api_servers,
    };
    let result = event_loop(
        &ctx,
        &registry,
        (initial, events),
        settings,
        commands,
        resumed,
    )
    .await;
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
    let body = serde_json::json!({ "podCIDRs": cidrs.iter().map(ToString::to_string).collect::<Vec<_>>() });
    std::fs::create_dir_all(state_dir)?;
    crate::statefile::write_atomic(&path, body.to_string().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
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
    use crate::pod_cidr_pool as pool;
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

/// How long healing waits for an external device to come back before the pass fails and is
/// retried (start-up waits [`netlink::EXTERNAL_WAIT`]): the loop stays responsive meanwhile.
const EXTERNAL_HEAL_WAIT: Duration = Duration::from_secs(2);

/// Adopt (or create) the device and make sure key, port, MTU and link state are right. An
/// external device (`--wireguard-mode external`) is waited for up to `external_wait`.
#[allow(clippy::too_many_arguments)]
async fn bring_up_device(
    args: &DaemonArgs,
    opts: &UserspaceOptions,
    links: &Links,
    (interface, slot): (&str, Slot),
    private_key: &PrivateKey,
    port: u16,
    mtu: u32,
    external_wait: Duration,
) -> anyhow::Result<(WgDevice, bool)> {
    let mut opts = opts.clone();
    if slot > 0 {
        opts.log_file = Some(args.state_dir.join(format!("meshd-wg-{}.log", slot + 1)));
    }
    let ensured = if args.wireguard_mode == WireguardMode::External {
        WgDevice::adopt_external(interface, external_wait)
            .await
            .map(|d| (d, true))
    } else {
        WgDevice::ensure(interface, args.wireguard_mode, &opts).await
    };
    let (device, adopted) =
        ensured.with_context(|| format!("setting up WireGuard device {interface}"))?;
    tracing::info!(%interface, slot, mode = %device.mode(), adopted, "device ready");
    device
        .configure(&private_key.to_bytes(), port, Some(args.mesh_mark))
        .await
        .with_context(|| format!("configuring key, listen port and fwmark of {interface}"))?;
    links.set_mtu(device.ifindex(), mtu).await?;
    links.set_up(device.ifindex()).await?;
    relax_rp_filter(&args.proc_sys_net, interface);
    Ok((device, adopted))
}

/// A peer's packets may arrive on either slot's device while this node routes its CIDRs via
/// the other (for a moment while a slot drains): reverse-path filtering would drop them, so
/// the device gets an effective `rp_filter` of 0 (see [`crate::rpfilter`]).
fn relax_rp_filter(proc_sys_net: &std::path::Path, interface: &str) {
    match crate::rpfilter::apply(proc_sys_net, &[interface]) {
        Ok(writes) => {
            if writes.iter().any(|(name, _)| name == "all") {
                let raised: Vec<&(String, u8)> = writes
                    .iter()
                    .filter(|(name, _)| name != "all" && name != interface)
                    .collect();
                tracing::info!(
                    ?raised,
                    "net.ipv4.conf.all.rp_filter moved onto every other interface and default (their filtering is unchanged), then set to 0, so that {interface} is not filtered"
                );
            }
        }
        Err(err) => tracing::warn!(
            error = %err,
            "could not take {interface} out of reverse-path filtering: packets a peer sends on the other key slot during a rotation may be dropped (in a pod, mount the host's /proc/sys/net and pass --proc-sys-net)"
        ),
    }
}

/// The device stopped answering: bring it back (adopting it if it is in fact alive). Its peers,
/// routes and redirects are restored by the reconcile pass that follows; meanwhile redirects to
/// the vanished device drop, and strict mode drops whatever the kernel routes elsewhere.
async fn heal_device(ctx: &Context, slot: Slot) -> anyhow::Result<()> {
    let mut device = ctx.device(slot).write().await;
    if device.status().await.is_ok() {
        return Ok(());
    }
    let interface = &ctx.interfaces[usize::from(slot)];
    tracing::warn!(%interface, "WireGuard device is gone or not answering; bringing it back");
    let port = ctx
        .me()
        .slot(slot)
        .map_or(ctx.args.listen_port, |k| k.listen_port);
    let (fresh, adopted) = bring_up_device(
        &ctx.args,
        &ctx.opts,
        &ctx.links,
        (interface, slot),
        &ctx.key(slot),
        port,
        ctx.live.read().await.mtu,
        EXTERNAL_HEAL_WAIT,
    )
    .await?;
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
    (initial, mut events): (Vec<RegistryEvent>, mpsc::Receiver<RegistryEvent>),
    mut settings: Option<SettingsFeed>,
    mut commands: mpsc::Receiver<control::Command>,
    resumed: Option<Driver>,
) -> anyhow::Result<()> {
    let mut known = Known {
        cleartext: control::CleartextReport::watching_from(unix_now()),
        ..Known::default()
    };
    if let Some(driver) = resumed {
        known.rotation = driver;
    }
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
    // Scheduled rotation: the older key's age is checked once a minute (more often for
    // intervals under four minutes).
    let check_every = ctx
        .args
        .key_rotation_interval
        .map_or(Duration::from_secs(60), |i| {
            (i / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
        });
    let mut rotation_tick = tokio::time::interval(check_every);
    let mut commands_open = true;
    let mut api_servers = ctx.api_servers.clone();
    loop {
        let wake = known.rotation.wake_at().map(tokio::time::Instant::from_std);
        let retry_at_now = match (retry_at, wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retry = async {
            match retry_at_now {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = commands.recv(), if commands_open => {
                match cmd {
                    Some(control::Command::RotateKey(reply)) => {
                        start_rotation(&mut known, "requested");
                        known.rotation_waiters.push(reply);
                    }
                    None => {
                        commands_open = false;
                        continue;
                    }
                }
            }
            _ = rotation_tick.tick() => {
                let due = ctx.args.key_rotation_interval.is_some_and(|every| {
                    let age = ctx.key_created_unix().map_or(u64::MAX, |c| unix_now().saturating_sub(c));
                    age >= every.as_secs()
                });
                let failed_recently = known.last_rotation_error.is_some() && !rotation_retry_due(&known);
                if !due || known.rotation.busy() || failed_recently {
                    continue;
                }
                start_rotation(&mut known, "scheduled");
            }
            ev = events.recv() => {
                let Some(ev) = ev else { bail!("registry watch ended") };
                republish |= apply_event(ctx, &mut known, ev);
                while let Ok(ev) = events.try_recv() {
                    republish |= apply_event(ctx, &mut known, ev);
                }
            }
            _ = resync.tick() => {}
            _ = retry => {}
            // The API servers' endpoints changed: reconcile (host encryption excludes them).
            changed = async {
                match api_servers.as_mut() {
                    Some(feed) => feed.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    tracing::warn!("the API server endpoint watcher stopped; the last endpoints stay excluded");
                    api_servers = None;
                }
            }
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
                match publish_status(ctx, &mut known, converged).await {
                    Ok(peers) => {
                        // Only a rotation under way asks which peers are silent.
                        known.handshakes = known.rotation.busy().then(|| {
                            peers
                                .iter()
                                .map(|p| (PublicKey::from_bytes(p.public_key), p.last_handshake))
                                .collect()
                        });
                        if track_liveness(ctx, &mut known, &peers).await {
                            // A tunnel came up or went down: host encryption follows it now.
                            retry_at = Some(tokio::time::Instant::now());
                        }
                        // A new way out of the node (an uplink with a default route): guard it
                        // now rather than at the next resync.
                        let guards = guard_interfaces(&ctx.args, &ctx.links, &ctx.interfaces).await;
                        if ctx.bpf.lock().await.unguarded(&guards) {
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
        if converged {
            // Acknowledge the rotation steps just applied, then let this node's own rotation
            // take its next step.
            known.republish |= update_acks(ctx, &known);
            if drive_rotation(ctx, &mut known).await {
                known.republish = true;
            }
        }
        if std::mem::take(&mut known.republish) {
            republish = true;
            retry_at = Some(tokio::time::Instant::now());
        }
        let now = std::time::Instant::now();
        known.failing_since = if converged {
            None
        } else {
            Some(known.failing_since.unwrap_or(now))
        };
        let action = crate::cni_conf::action(
            converged,
            known.failing_since,
            now,
            ctx.args.cni_unready_after,
        );
        if action == crate::cni_conf::Action::Remove
            && crate::cni_conf::remove(&ctx.args.cni_conf_dir)
        {
            tracing::warn!(
                failing_for_s = ctx.args.cni_unready_after.as_secs(),
                "the mesh keeps failing to converge: this node takes no new pods until it does"
            );
        }
        if action == crate::cni_conf::Action::Install {
            let conf = crate::cni_conf::conflist(
                &ctx.me(),
                &ctx.args.state_dir.join("ipam"),
                // The MTU in force: pods created after a live change get it too.
                ctx.live.read().await.mtu,
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
        if let Err(err) = publish_status(ctx, &mut known, converged).await {
            tracing::warn!(error = %format!("{err:#}"), "reading device status failed");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A scheduled rotation that failed is retried after this long.
const ROTATION_RETRY: Duration = Duration::from_secs(600);

fn rotation_retry_due(known: &Known) -> bool {
    known
        .last_rotation_unix
        .is_none_or(|t| unix_now().saturating_sub(t) >= ROTATION_RETRY.as_secs())
}

/// Where a rotation under way is kept across restarts.
const ROTATION_FILE: &str = "rotation.json";

/// The rotation saved in `state_dir`, if any. A file that cannot be read is reported and
/// ignored: no rotation is resumed (any drain it held is lifted).
fn load_rotation(state_dir: &std::path::Path) -> Option<rotation::Saved> {
    let path = state_dir.join(ROTATION_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot read the saved key rotation; not resuming it");
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(saved) => Some(saved),
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "the saved key rotation is corrupt; not resuming it");
            None
        }
    }
}

/// Keep the rotation's state in the state directory (removed once it ended).
fn save_rotation(ctx: &Context, known: &Known) {
    let path = ctx.args.state_dir.join(ROTATION_FILE);
    let result = match known.rotation.saved(ctx.me().rotation.step) {
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Some(saved) => serde_json::to_string(&saved)
            .map_err(std::io::Error::other)
            .and_then(|body| crate::statefile::write_atomic(&path, body.as_bytes(), 0o644)),
    };
    if let Err(err) = result {
        tracing::warn!(path = %path.display(), %err, "saving the key rotation's state failed");
    }
}

/// Begin a rotation unless one is under way (its end answers every waiter).
fn start_rotation(known: &mut Known, why: &str) {
    let floor = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if known.rotation.start(std::time::Instant::now(), floor) {
        tracing::info!(why, "key rotation started");
    }
}

/// This node's acknowledgements: the serial of every other node's rotation step in progress,
/// as applied by the reconcile pass that just succeeded. True when they changed.
fn update_acks(ctx: &Context, known: &Known) -> bool {
    let me = ctx.me();
    let acks: BTreeMap<String, u64> = known
        .records
        .values()
        .filter(|r| r.name != me.name)
        .filter_map(|r| r.rotation.step.map(|s| (r.name.clone(), s.serial)))
        .collect();
    if acks == me.rotation.acks {
        return false;
    }
    ctx.update_me(|m| m.rotation.acks = acks);
    true
}

/// Take this node's next rotation step, if the peers allow it. True when the record changed.
async fn drive_rotation(ctx: &Context, known: &mut Known) -> bool {
    let me = ctx.me();
    let silent = known
        .handshakes
        .as_ref()
        .map_or_else(BTreeSet::new, |handshakes| {
            let peers = known.records.values().filter(|r| r.name != me.name);
            rotation::silent_peers(
                peers,
                handshakes,
                ctx.args.rotation_silence,
                SystemTime::now(),
            )
        });
    known.rotation.observe_silent(silent);
    let excused_before: BTreeSet<String> = known.rotation.excused().map(String::from).collect();
    let action = known
        .rotation
        .poll(std::time::Instant::now(), &me, known.records.values());
    for peer in known
        .rotation
        .excused()
        .filter(|p| !excused_before.contains(*p))
    {
        tracing::warn!(
            %peer,
            silence_s = ctx.args.rotation_silence.as_secs(),
            "key rotation goes on without a silent peer (no acknowledgement, no handshake)"
        );
    }
    let changed = !matches!(action, Action::Wait);
    let republish = drive_action(ctx, known, action).await;
    if changed {
        save_rotation(ctx, known);
    }
    republish
}

/// Carry out what the rotation driver asked for; true when this node's record changed.
async fn drive_action(ctx: &Context, known: &mut Known, action: Action) -> bool {
    match action {
        Action::Wait => false,
        Action::Publish(step) => {
            tracing::info!(?step, "key rotation: next step");
            ctx.update_me(|m| m.rotation.step = step);
            true
        }
        Action::Replace(slot, step) => {
            match replace_key(ctx, slot).await {
                Ok(public_key) => {
                    tracing::info!(slot, %public_key, serial = step.serial, "key rotation: new key in use on the drained slot");
                    ctx.update_me(|m| {
                        match slot {
                            0 => m.public_key = public_key,
                            _ => {
                                if let Some(second) = m.rotation.second.as_mut() {
                                    second.public_key = public_key;
                                }
                            }
                        }
                        m.rotation.step = Some(step);
                    });
                }
                Err(err) => {
                    // Nothing changed on the device: publish the step anyway (peers ack it
                    // unchanged) and let the rotation end as an error.
                    tracing::error!(slot, error = %format!("{err:#}"), "key rotation: replacing the key failed");
                    known.rotation = Driver::default();
                    finish_rotation(
                        ctx,
                        known,
                        Err(format!("replacing slot {slot}'s key: {err:#}")),
                    );
                }
            }
            true
        }
        Action::Finished => {
            finish_rotation(ctx, known, Ok("both keys replaced".into()));
            true
        }
        Action::Aborted(reason) => {
            finish_rotation(ctx, known, Err(reason));
            true
        }
    }
}

/// End the rotation: lift the drain and answer whoever waits.
fn finish_rotation(ctx: &Context, known: &mut Known, outcome: Result<String, String>) {
    ctx.update_me(|m| m.rotation.step = None);
    known.last_rotation_unix = Some(unix_now());
    match &outcome {
        Ok(msg) => {
            known.rotations += 1;
            known.last_rotation_error = None;
            ctx.metrics.observe_rotation(true);
            tracing::info!(%msg, "key rotation finished");
        }
        Err(reason) => {
            known.rotation_failures += 1;
            known.last_rotation_error = Some(reason.clone());
            ctx.metrics.observe_rotation(false);
            tracing::error!(%reason, "key rotation abandoned");
        }
    }
    for w in known.rotation_waiters.drain(..) {
        let _ = w.send(outcome.clone());
    }
}

/// A new key for `slot`: generated, persisted (atomically, 0600), then programmed on the
/// slot's device. Returns its public key.
async fn replace_key(ctx: &Context, slot: Slot) -> anyhow::Result<PublicKey> {
    let key = PrivateKey::generate();
    let path = ctx.args.state_dir.join(KEY_FILES[usize::from(slot)]);
    keyexchange::key::write_key_atomic(&path, &key)?;
    let port = ctx
        .me()
        .slot(slot)
        .map_or(ctx.args.listen_port, |k| k.listen_port);
    ctx.device(slot)
        .read()
        .await
        .configure(&key.to_bytes(), port, Some(ctx.args.mesh_mark))
        .await
        .context("programming the new key")?;
    let public_key = key.public_key();
    ctx.keys
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)[usize::from(slot)] = key;
    Ok(public_key)
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

/// Every known record as slot `slot`'s device presents it.
fn slot_views(known: &Known, slot: Slot) -> Vec<NodeRecord> {
    known
        .records
        .values()
        .filter_map(|r| slots::slot_view(r, slot))
        .collect()
}

/// The peers slot `slot`'s device should have, from the records as that slot presents them
/// (`views`, see [`slot_views`]).
fn desired(ctx: &Context, known: &mut Known, views: &[NodeRecord], slot: Slot) -> PeerSet {
    let Some(me) = slots::slot_view(&ctx.me(), slot) else {
        return PeerSet::default();
    };
    let set = compute_peers(views, &me);
    if slot > 0 {
        // Conflicts are reported once, from slot 0 (the second slot's mirror them).
        return set;
    }
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
    live.apply(new, ctx.auto_mtu);
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
    let me = ctx.me();
    let views = [slot_views(known, 0), slot_views(known, 1)];
    let mut wants = [
        desired(ctx, known, &views[0], 0),
        desired(ctx, known, &views[1], 1),
    ];
    let plain = if live.encryption == Encryption::Disabled {
        let plain = reconcile::plain_routes(known.records.values(), &wants[0]);
        wants = Default::default();
        plain
    } else {
        BTreeMap::new()
    };
    // Every peer accepts its node's own addresses from the tunnel, whatever this node's
    // host-encryption setting: a peer that already encrypts is never refused.
    let mut host_prefixes = BTreeSet::new();
    for (want, views) in wants.iter_mut().zip(&views) {
        host_prefixes.extend(reconcile::add_host_addresses(want, views));
    }
    for slot in SLOTS {
        if ctx.device(slot).read().await.status().await.is_err() {
            known.counters.device_restores += 1;
            heal_device(ctx, slot).await?;
        }
    }
    let devices = [ctx.device(0).read().await, ctx.device(1).read().await];
    let ports = [live.listen_port, second_port(live.listen_port)];
    let mut devs = Vec::new();
    for slot in SLOTS {
        let device = &devices[usize::from(slot)];
        let port = ports[usize::from(slot)];
        let mut dev = device.status().await.context("reading device")?;
        if dev.listen_port != port || dev.fwmark != ctx.args.mesh_mark {
            device
                .configure(&ctx.key(slot).to_bytes(), port, Some(ctx.args.mesh_mark))
                .await
                .context("setting the listen port and fwmark")?;
            if dev.listen_port != port {
                tracing::info!(
                    slot,
                    from = dev.listen_port,
                    to = port,
                    "listen port changed live"
                );
            }
            dev = device.status().await.context("reading device")?;
        }
        devs.push(dev);
    }
    let ifindex = [devices[0].ifindex(), devices[1].ifindex()];
    let mut bpf = ctx.bpf.lock().await;
    let second = me.rotation.second.map(|k| k.listen_port);
    if me.listen_port != devs[0].listen_port || second != Some(devs[1].listen_port) {
        // Peers learn the new ports from the record, and at once from this node's next
        // authenticated packet (WireGuard roaming).
        bpf.set_port(devs[0].listen_port)?;
        bpf.set_second_port(devs[1].listen_port)?;
        let (p0, p1) = (devs[0].listen_port, devs[1].listen_port);
        ctx.update_me(|m| {
            m.listen_port = p0;
            if let Some(s) = m.rotation.second.as_mut() {
                s.listen_port = p1;
            }
        });
        known.republish = true;
    }
    let me = ctx.me();
    let mut present = BTreeMap::new();
    for slot in SLOTS {
        let i = ifindex[usize::from(slot)];
        for dst in ctx.routes.list(i).await.context("listing routes")? {
            present.insert(dst.trunc(), i);
        }
    }
    let keepalive = live.effective_keepalive();
    let refresh = live.refresh_peers;
    let plans: Vec<reconcile::Plan> = SLOTS
        .iter()
        .map(|&slot| {
            let i = usize::from(slot);
            let mut plan =
                reconcile::plan(&wants[i], &devs[i].peers, &[], keepalive, &host_prefixes);
            if refresh {
                // Every peer again, as if none were programmed.
                plan.upsert_peers =
                    reconcile::plan(&wants[i], &[], &[], keepalive, &host_prefixes).upsert_peers;
            }
            plan
        })
        .collect();
    if refresh {
        ctx.live.write().await.refresh_peers = false;
    }
    // Which device carries each peer's traffic, as both ends agree (key rotation drains one).
    let peer_slots = reconcile::peer_slots(known.records.values(), &me, &wants);
    let routes = reconcile::steering(&wants, &peer_slots, ifindex, &host_prefixes);
    // The eBPF redirects are the same map as the routes.
    let redirects = &routes;
    let hosts = if live.host_encryption
        && live.encryption != Encryption::Disabled
        && devs.iter().all(|d| d.fwmark == ctx.args.mesh_mark)
    {
        // Up by the liveness tracker, or handshook just now (a new key after a rotation
        // step: its tunnel is up before the tracker has seen it).
        let window = liveness_window(&live);
        let mut up = known.live_peers.clone();
        up.extend(
            devs.iter()
                .flat_map(|d| &d.peers)
                .filter(|p| handshook_within(p, window))
                .map(|p| PublicKey::from_bytes(p.public_key)),
        );
        reconcile::encrypted_hosts(
            known.records.values(),
            &me,
            &wants,
            &peer_slots,
            &up,
            &reconcile::host_exclusions(
                &ctx.args.host_encryption_exclude,
                ctx.api_servers
                    .as_ref()
                    .and_then(|feed| feed.borrow().clone())
                    .as_ref(),
            ),
            ifindex,
        )
    } else {
        BTreeMap::new()
    };
    known.peer_slots = peer_slots
        .iter()
        .map(|(name, (slot, _))| (name.clone(), *slot))
        .collect();
    let mode = bpf::program_mode(live.encryption, live.strict_mode);
    if mode == ebpf_redirect::Mode::Permissive && bpf.mode() != mode {
        bpf.set_mode(mode)?;
        tracing::info!("underlay guard relaxed to permissive");
    }
    // Stop redirecting departing CIDRs and hosts before their peers go.
    let stale = reconcile::redirects_kept(redirects, &bpf.remotes().context("reading redirects")?);
    known.counters.map_ops += bpf.sync_remotes(&stale)? as u64;
    sync_host_routes(ctx, known, &hosts, true).await?;
    let guards = guard_interfaces(&ctx.args, &ctx.links, &ctx.interfaces).await;
    sync_pods(ctx, &mut bpf, known, &guards)?;
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
    for i in ifindex {
        if ctx.links.mtu(i).await.ok() != Some(live.mtu) {
            ctx.links.set_mtu(i, live.mtu).await?;
            tracing::info!(mtu = live.mtu, ifindex = i, "WireGuard MTU changed");
        }
    }
    // (The plans' own routes are unused: routes are steered per slot below.)
    let changes = plans
        .iter()
        .any(|p| !p.remove_peers.is_empty() || !p.upsert_peers.is_empty())
        || routes.iter().any(|(d, i)| present.get(d) != Some(i))
        || present.keys().any(|d| !routes.contains_key(d));
    if changes {
        tracing::info!(
            remove_peers = plans.iter().map(|p| p.remove_peers.len()).sum::<usize>(),
            upsert_peers = plans.iter().map(|p| p.upsert_peers.len()).sum::<usize>(),
            routes = routes.len(),
            "applying changes"
        );
    }
    // Departing peers go first (nothing is steered to a peer being removed: a departed node's
    // CIDRs lost their redirects above, and a key being replaced belongs to a drained slot).
    for (slot, plan) in SLOTS.iter().zip(&plans) {
        if !plan.remove_peers.is_empty() {
            devices[usize::from(*slot)]
                .apply(&plan.remove_peers)
                .await?;
            known.counters.peer_ops += plan.remove_peers.len() as u64;
        }
    }
    for (dst, i) in &present {
        if !routes.contains_key(dst) {
            ctx.routes.del(*dst, *i).await?;
            known.counters.route_ops += 1;
        }
    }
    for (slot, plan) in SLOTS.iter().zip(&plans) {
        if !plan.upsert_peers.is_empty() {
            devices[usize::from(*slot)]
                .apply(&plan.upsert_peers)
                .await?;
            known.counters.peer_ops += plan.upsert_peers.len() as u64;
        }
    }
    // New routes, and routes moving to the other slot's device (replaced in one operation).
    for (dst, i) in &routes {
        if present.get(dst) != Some(i) {
            ctx.routes.add(*dst, *i).await?;
            known.counters.route_ops += 1;
            if let Some(old) = present.get(dst) {
                // A replace keeps nothing behind; if the kernel added a second route instead,
                // the old one goes now.
                if ctx
                    .routes
                    .list(*old)
                    .await?
                    .iter()
                    .any(|d| d.trunc() == *dst)
                {
                    ctx.routes.del(*dst, *old).await?;
                }
            }
        }
    }
    drop(devices);
    finish_pass(
        ctx,
        known,
        &mut bpf,
        &plain,
        &plain_present,
        (redirects, &hosts),
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
        tracing::info!(%ip, "host traffic to the peer address leaves the tunnel");
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
        tracing::debug!(%ip, ifindex, "host traffic to the peer address goes through the tunnel");
        ctx.routes.add_host_in(ip, ifindex, src, HOST_TABLE).await?;
        known.counters.route_ops += 1;
    }
    known.encrypted_hosts = want.keys().copied().collect();
    Ok(())
}

/// The backstop for the CNI plugin, which updates the maps and attaches `from_pod` itself on
/// ADD: every local pod in the IPAM store is in the local map and, with eBPF steering, has
/// `from_pod` on its host veth; the underlay guard is still attached.
/// The interfaces `underlay_egress` guards besides the underlay: the `--guard-interface`s and
/// every interface holding a default route, never meshd's own devices. A failed route dump
/// is logged and leaves the flags' interfaces.
async fn guard_interfaces(args: &DaemonArgs, links: &Links, own: &[String; 2]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = args.guard_interfaces.iter().cloned().collect();
    match links.default_route_interfaces().await {
        Ok(names) => out.extend(names),
        Err(err) => tracing::warn!(%err, "listing the default routes' interfaces failed"),
    }
    out.retain(|i| !own.contains(i));
    out
}

fn sync_pods(
    ctx: &Context,
    bpf: &mut Bpf,
    known: &mut Known,
    guards: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let ipam_dir = ctx.args.state_dir.join("ipam");
    // The local-pod map mirrors the store under the store's lock: an ADD that allocates
    // meanwhile waits, so its own map entries are never removed as unknown.
    let mirror = |entries: &[meshd_cni::ipam::Entry], bpf: &mut Bpf| {
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
            .map(|o| meshd_cni::host_veth_name(&o.container_id, &o.ifname))
            .collect();
        known.counters.map_ops += bpf.sync_pods(&veths)? as u64;
    }
    let anew = bpf.ensure_guards(guards)?;
    if !anew.is_empty() {
        tracing::info!(interfaces = ?anew, "underlay_egress attached (a new way out, or it had been detached)");
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
    let window = liveness_window(&live);
    let now = std::time::Instant::now();
    let mut seen = BTreeMap::new();
    for p in peers {
        let key = PublicKey::from_bytes(p.public_key);
        let at = match known.rx_seen.get(&key) {
            Some((rx, at)) if *rx == p.rx_bytes => *at,
            Some(_) => now,
            // First sight (a restart, a new key): up if it handshook recently.
            None => {
                if handshook_within(p, window) {
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
    // (Keys no longer programmed, e.g. replaced by a rotation, just leave the set.)
    for k in known
        .live_peers
        .difference(&up)
        .filter(|k| known.rx_seen.contains_key(*k))
    {
        tracing::warn!(peer = %k, window_s = window.as_secs(), "nothing received from the peer: host traffic to it leaves the tunnel (fails open)");
    }
    known.live_peers = up;
    true
}

/// The peers of one device as the status reports them.
fn peer_reports(
    peers: &[netlink::PeerStatus],
    names: &BTreeMap<PublicKey, &str>,
) -> Vec<PeerReport> {
    let now = SystemTime::now();
    peers
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
        .collect()
}

/// Whether the peer completed a handshake within `window`.
fn handshook_within(p: &netlink::PeerStatus, window: Duration) -> bool {
    p.last_handshake.is_some_and(|t| {
        SystemTime::now()
            .duration_since(t)
            .is_ok_and(|age| age < window)
    })
}

/// How long a tunnel counts as up after bytes last arrived from it.
fn liveness_window(live: &Live) -> Duration {
    Duration::from_secs(
        u64::from(live.effective_keepalive().unwrap_or(HOST_KEEPALIVE))
            * u64::from(LIVENESS_INTERVALS),
    )
}

/// Serve a fresh status; returns both devices' peers as read for it.
async fn publish_status(
    ctx: &Context,
    known: &mut Known,
    converged: bool,
) -> anyhow::Result<Vec<netlink::PeerStatus>> {
    let device = ctx.device(0).read().await;
    let second = ctx.device(1).read().await;
    // A device that cannot be read (its process died, or is being brought back) still gets a
    // status: not converged, its peers unknown. A stale "converged" would keep the node ready.
    let mut unreadable = None;
    let mut read = |slot: Slot, status: Result<netlink::DeviceStatus, netlink::DeviceError>| {
        status
            .map(|s| (s.listen_port, s.peers))
            .unwrap_or_else(|err| {
                let port = ctx.me().slot(slot).map_or(0, |k| k.listen_port);
                unreadable.get_or_insert(err);
                (port, Vec::new())
            })
    };
    let (listen_port, live_peers) = read(0, device.status().await);
    let (listen_port2, live_peers2) = read(1, second.status().await);
    let converged = converged && unreadable.is_none();
    let datapath = match ctx.bpf.lock().await.report() {
        Ok(r) => Some(r),
        Err(err) => {
            tracing::warn!(error = %err, "reading the eBPF datapath failed");
            None
        }
    };
    if let Some(d) = &datapath {
        let total = d
            .counters
            .strict_drops
            .saturating_add(d.counters.would_drops);
        known
            .cleartext
            .observe(&mut known.cleartext_total, total, unix_now());
    }
    let known = &*known;
    let names: BTreeMap<PublicKey, &str> = known
        .records
        .values()
        .flat_map(|r| {
            SLOTS
                .iter()
                .filter_map(|s| r.slot(*s))
                .map(move |k| (k.public_key, r.name.as_str()))
        })
        .collect();
    let peers = peer_reports(&live_peers, &names);
    let me = ctx.me();
    let (phase, slot) = match known.rotation.phase() {
        rotation::Phase::Idle => (control::RotationPhase::Idle, None),
        rotation::Phase::Waiting { slot } => (control::RotationPhase::Waiting, Some(slot)),
        rotation::Phase::Draining { slot } => (control::RotationPhase::Draining, Some(slot)),
        rotation::Phase::Replaced { slot } => (control::RotationPhase::Replaced, Some(slot)),
    };
    let rotation_report = control::RotationReport {
        phase,
        slot,
        serial: me.rotation.step.map(|s| s.serial),
        pending: known.rotation.pending().to_vec(),
        excused: known.rotation.excused().map(String::from).collect(),
        rotations: known.rotations,
        failures: known.rotation_failures,
        last_unix: known.last_rotation_unix,
        last_error: known.last_rotation_error.clone(),
        peer_slots: known.peer_slots.clone(),
        interval_secs: ctx.args.key_rotation_interval.map(|d| d.as_secs()),
    };
    let second_report = control::SlotReport {
        interface: second.name().to_string(),
        ifindex: second.ifindex(),
        public_key: ctx.key(1).public_key().to_string(),
        listen_port: listen_port2,
        peers: peer_reports(&live_peers2, &names),
    };
    let report = StatusReport {
        node: ctx.me().name.clone(),
        public_key: ctx.key(0).public_key().to_string(),
        mode: device.mode(),
        interface: device.name().to_string(),
        ifindex: device.ifindex(),
        adopted_device: ctx.adopted,
        listen_port,
        mtu: ctx.live.read().await.mtu,
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
        encryption: ctx.live.read().await.encryption,
        strict_mode: ctx.live.read().await.strict_mode,
        host_encryption: ctx.live.read().await.host_encryption,
        encrypted_hosts: known
            .encrypted_hosts
            .iter()
            .map(ToString::to_string)
            .collect(),
        key_created_unix: ctx.key_created_unix(),
        second: Some(second_report),
        rotation: rotation_report,
        datapath,
        cleartext: known.cleartext.clone(),
    };
    if let Some(feed) = &ctx.status_feed {
        // Receivers decide what changed (the Node condition writes only when it does).
        feed.send_replace(Some(report.clone()));
    }
    *ctx.status.write().await = Some(report);
    *ctx.heartbeat.write().await = Some(std::time::Instant::now());
    if let Some(err) = unreadable {
        return Err(err.into());
    }
    let mut all = live_peers;
    all.extend(live_peers2);
    Ok(all)
}

async fn cleanup<R: Registry>(ctx: Context, registry: &R) {
    tracing::info!("--cleanup: withdrawing record, removing routes, device and tc programs");
    if let Err(err) = registry.withdraw(&ctx.me().name).await {
        tracing::warn!(%err, "withdrawing record failed");
    }
    let [device, second] = ctx.devices;
    let (device, second) = (device.into_inner(), second.into_inner());
    for i in [device.ifindex(), second.ifindex()] {
        if let Ok(present) = ctx.routes.list(i).await {
            for dst in present {
                if let Err(err) = ctx.routes.del(dst, i).await {
                    tracing::warn!(%err, %dst, "removing route failed");
                }
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
    for d in [device, second] {
        if let Err(err) = d.destroy().await {
            tracing::warn!(%err, "removing device failed");
        }
    }
    // Last: the underlay guard stays until nothing routes pod traffic any more.
    ctx.bpf.into_inner().cleanup();
    let _ = std::fs::remove_file(&ctx.args.control_socket);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::registry::DirRegistry;
    use clap::Parser;

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
            rotation: Default::default(),
        }
    }

    #[test]
    fn live_mtu_follows_the_setting_and_auto_reverts_to_the_derived_one() {
        let mut live = Live {
            encryption: Encryption::Enabled,
            strict_mode: true,
            keepalive: None,
            mtu: 1420,
            listen_port: 51820,
            host_encryption: false,
            refresh_peers: false,
        };
        let with_mtu = |mtu| crate::settings::Settings {
            mtu,
            ..Default::default()
        };
        live.apply(&with_mtu(Some(1300)), 1420);
        assert_eq!(live.mtu, 1300);
        // `mtu: auto` after an override goes back to what auto means.
        live.apply(&with_mtu(None), 1420);
        assert_eq!(live.mtu, 1420);
        live.apply(&with_mtu(Some(9000)), 1420);
        live.apply(&with_mtu(None), 1380);
        assert_eq!(live.mtu, 1380);
        assert!(!live.refresh_peers, "an MTU change re-programs no peer");
    }

    #[test]
    fn rotation_intervals_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_interval("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_interval("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_interval("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_interval("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        for bad in ["", "0", "0s", "5w", "h", "-1h"] {
            let err = parse_interval(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        let cli = Cli::parse_from([
            "meshd",
            "--node-name",
            "n1",
            "--key-rotation-interval",
            "12h",
        ]);
        assert_eq!(
            cli.daemon.key_rotation_interval,
            Some(Duration::from_secs(43200))
        );
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
