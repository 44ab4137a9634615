//! The daemon's command line: every flag, its default, and the small parsers they need.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use netlink::WireguardMode;

use crate::bpf::{self, Encryption};
use crate::control;

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
    /// Key rotation.
    #[command(flatten)]
    pub rotation: RotationArgs,
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
    /// `cluster-pool` IPAM: the pools pod CIDRs are claimed from.
    #[command(flatten)]
    pub pool: PoolArgs,
    /// `node-subnet` IPAM: pods take addresses from blocks of the node's own subnet.
    #[command(flatten)]
    pub node_subnet: NodeSubnetArgs,
    /// Cluster-wide pod CIDRs (repeatable): strict mode drops any packet from or to them that
    /// would leave through the underlay outside WireGuard. Default: this node's pod CIDRs.
    /// Also comma-separated (one value from an environment variable, for dual stack).
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    pub cluster_cidrs: Vec<IpNet>,
    /// Record trust: the rest of the cluster's address plan records are checked against.
    #[command(flatten)]
    pub trust: super::trust::TrustArgs,
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
    /// The most nodes the cluster may have: every per-node map of the tc datapath (redirects,
    /// the guard's cluster CIDRs) is sized for this many nodes at the per-record cap of pod
    /// CIDRs, both families. Peers beyond it are refused one by one (status `refused`, field
    /// `capacity`), never the whole pass. Changing it resizes the pinned maps on the next
    /// start without a window in enforcement.
    #[arg(long, default_value_t = ebpf_redirect::DEFAULT_MAX_NODES)]
    pub max_nodes: u32,
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
    /// The CNI configuration meshd installs while the node takes pods.
    #[command(flatten)]
    pub cni: CniArgs,
    /// Flow observability (`--flow-*`).
    #[command(flatten)]
    pub flows: crate::settings::FlowArgs,
    /// The user-space WireGuard datapath (`--wireguard-mode userspace`, or `auto` without the
    /// kernel module).
    #[command(flatten)]
    pub userspace: UserspaceArgs,
    /// Serve `/healthz`, `/readyz`, `/metrics` and `/status` on this address. Loopback by
    /// default: these answers are unauthenticated, so expose them (e.g. `0.0.0.0:9108`, which
    /// `meshctl audit --cluster` needs) only where the network is trusted.
    #[arg(long, default_value = "127.0.0.1:9108")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Also serve only `/healthz` and `/readyz` on this address: for a kubelet that probes
    /// the node's address (the DaemonSet uses `0.0.0.0:9109`). Off by default.
    #[arg(long)]
    pub probe_listen: Option<std::net::SocketAddr>,
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

/// The user-space WireGuard datapath (`--wireguard-mode userspace`, or `auto` without the
/// kernel module).
#[derive(Debug, Clone, Args)]
pub struct UserspaceArgs {
    /// The user-space WireGuard helper binary; default: `meshd-wg` next to this executable.
    #[arg(long)]
    pub helper_binary: Option<PathBuf>,
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
}

/// Key rotation.
#[derive(Debug, Clone, Args)]
pub struct RotationArgs {
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
}

/// `cluster-pool` IPAM: the pools pod CIDRs are claimed from.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
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
}

/// How pod addresses are managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IpamMode {
    /// One pod CIDR per node and family: `--pod-cidr`, the Node's `spec.podCIDRs`, or claimed
    /// out of `--pod-cidr-pool` (`cluster-pool`).
    #[default]
    NodeCidr,
    /// Pods take addresses from small blocks of the nodes' own subnet (`--pod-range-v4`,
    /// `--pod-range-v6`), claimed as the node fills and given back when empty
    /// (docs/node-subnet.md).
    NodeSubnet,
}

/// `node-subnet` IPAM: the pod ranges inside the underlay subnet and the block sizes.
#[derive(Debug, Clone, Args)]
pub struct NodeSubnetArgs {
    /// `node-cidr` (a pod CIDR per node) or `node-subnet` (blocks of the nodes' own subnet).
    #[arg(long, default_value = "node-cidr")]
    pub ipam: IpamMode,
    /// `node-subnet`: the IPv4 range of the underlay subnet reserved for pods.
    #[arg(long)]
    pub pod_range_v4: Option<ipnet::Ipv4Net>,
    /// `node-subnet`: the IPv6 range of the underlay subnet reserved for pods.
    #[arg(long)]
    pub pod_range_v6: Option<ipnet::Ipv6Net>,
    /// `node-subnet`: prefix length of the IPv4 blocks a node claims.
    #[arg(long, default_value_t = crate::node_subnet::DEFAULT_BLOCK_V4)]
    pub pod_block_v4: u8,
    /// `node-subnet`: prefix length of the IPv6 blocks a node claims.
    #[arg(long, default_value_t = crate::node_subnet::DEFAULT_BLOCK_V6)]
    pub pod_block_v6: u8,
    /// `node-subnet`: free addresses kept per family; a block is claimed when fewer are left.
    #[arg(long, default_value_t = 4)]
    pub pod_headroom: u32,
    /// `node-subnet`: how long a block stays empty before it is given back.
    #[arg(long, value_parser = parse_interval, default_value = "60s")]
    pub pod_block_release_after: Duration,
}

impl NodeSubnetArgs {
    /// The pod ranges of `node-subnet` IPAM (empty in any other mode).
    pub fn ranges(&self) -> Vec<IpNet> {
        if self.ipam != IpamMode::NodeSubnet {
            return Vec::new();
        }
        let v4 = self.pod_range_v4.map(|r| IpNet::V4(r.trunc()));
        let v6 = self.pod_range_v6.map(|r| IpNet::V6(r.trunc()));
        v4.into_iter().chain(v6).collect()
    }

    /// The allocator's settings, with `settle` (how long a claim is watched for a competing
    /// one: longer than the registry takes to show a record to every node).
    pub fn config(&self, settle: Duration) -> crate::node_subnet::NodeSubnetConfig {
        crate::node_subnet::NodeSubnetConfig {
            ranges: self.ranges(),
            block_v4: self.pod_block_v4,
            block_v6: self.pod_block_v6,
            headroom: u128::from(self.pod_headroom),
            settle,
            release_grace: self.pod_block_release_after,
        }
    }
}

/// The CNI configuration meshd installs while the node takes pods.
#[derive(Debug, Clone, Args)]
pub struct CniArgs {
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

/// How pod traffic to other nodes is steered into the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodSteering {
    /// `from_pod` on each pod's host veth redirects it into the WireGuard device.
    Ebpf,
    /// The kernel's routes via the WireGuard device.
    Routes,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        daemon: DaemonArgs,
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
            cli.daemon.rotation.key_rotation_interval,
            Some(Duration::from_secs(43200))
        );
    }

    #[test]
    fn node_subnet_flags_give_the_ranges_only_in_that_mode() {
        let base = [
            "meshd",
            "--node-name",
            "n1",
            "--pod-range-v4",
            "192.168.10.128/25",
            "--pod-range-v6",
            "fd00:10::8000/113",
        ];
        let cli = Cli::parse_from(base);
        assert_eq!(cli.daemon.node_subnet.ipam, IpamMode::NodeCidr);
        assert!(cli.daemon.node_subnet.ranges().is_empty());
        let cli = Cli::parse_from(base.iter().chain(&["--ipam", "node-subnet"]));
        let cfg = cli.daemon.node_subnet.config(Duration::from_secs(2));
        assert_eq!(
            cfg.ranges,
            vec![
                "192.168.10.128/25".parse::<IpNet>().unwrap(),
                "fd00:10::8000/113".parse().unwrap()
            ]
        );
        assert_eq!((cfg.block_v4, cfg.block_v6, cfg.headroom), (28, 124, 4));
        assert_eq!(cfg.release_grace, Duration::from_secs(60));
        assert_eq!(cfg.validate(), Ok(()));
    }
}
