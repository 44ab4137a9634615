//! The local lab: a multi-node meshd cluster built from network namespaces on one machine.
//!
//! Layout: an underlay namespace holds a bridge (the switch) with a router address that is every
//! node's default gateway but forwards nothing. Each node is a network namespace plus a
//! persistent mount namespace (private `/run/wireguard`, `/run/meshd`, `/sys` and a bpffs of its
//! own at `/sys/fs/bpf`, which is the host's `/sys/fs/bpf/meshd-lab/<lab>-nK`), so every node
//! runs an unmodified `meshd` with production paths: the device is `meshd0` on every node, and
//! `wg show` or `meshctl status` inside a node just work. Pods are namespaces behind veth pairs,
//! addressed from their node's pod CIDRs and routed the way a CNI does it (host routes to the
//! pod, a link-local next hop in the pod).
//!
//! State lives in `/run/meshd-lab/<name>/`; `lab.json` there records what was built so that
//! `down` removes exactly that. Lab traffic never leaves lab namespaces.

pub mod apiserver;
pub mod evidence;
pub mod plan;

use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use meshd::control::StatusReport;
use plan::*;

/// Where every lab keeps its state.
pub const LAB_ROOT: &str = "/run/meshd-lab";
/// Version of the `lab status -o json` document.
pub const STATUS_VERSION: u32 = 1;
/// The host's bpffs mount point.
const HOST_BPFFS: &str = "/sys/fs/bpf";
/// The WireGuard port every lab node listens on.
pub const LISTEN_PORT: u16 = 51820;

/// What `lab up` was asked to build, persisted as `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The lab's name (prefix of every namespace).
    pub name: String,
    /// `--wireguard-mode` given to every meshd (unless its node overrides it).
    pub wireguard_mode: String,
    /// `--encryption` given to every meshd.
    #[serde(default = "default_encryption")]
    pub encryption: String,
    /// `--strict-mode` given to every meshd.
    #[serde(default = "default_true")]
    pub strict_mode: bool,
    /// `--pod-steering` given to every meshd.
    #[serde(default = "default_steering")]
    pub pod_steering: String,
    /// `dir` (a shared directory) or `kubernetes` (Node annotations on the lab's mock API
    /// server, with the live `meshd-config` ConfigMap).
    #[serde(default = "default_registry")]
    pub registry: String,
    /// `node` (each node gets 10.244.K.0/24 and fd00:244:0:K::/64 as `--pod-cidr`) or
    /// `cluster-pool` (each meshd claims its blocks out of the cluster CIDRs itself).
    #[serde(default = "default_ipam")]
    pub ipam: String,
    /// `--host-encryption` given to every meshd (node-to-node encryption).
    #[serde(default)]
    pub host_encryption: bool,
    /// `--keepalive` given to every meshd, if any.
    #[serde(default)]
    pub keepalive: Option<u16>,
    /// `--key-rotation-interval` given to every meshd, if any (e.g. `30s`).
    #[serde(default)]
    pub key_rotation_interval: Option<String>,
    /// `--rotation-silence` given to every meshd, if any (e.g. `5s`).
    #[serde(default)]
    pub rotation_silence: Option<String>,
    /// Whether every meshd gets the lab's cluster CIDRs as `--cluster-cidr`; without them
    /// each guards its own pod CIDRs and the peers' it learns.
    #[serde(default = "default_true")]
    pub guard_cluster_cidrs: bool,
    /// The nodes, by index.
    pub nodes: Vec<NodeState>,
}

fn default_encryption() -> String {
    "enabled".into()
}
fn default_true() -> bool {
    true
}
fn default_steering() -> String {
    "ebpf".into()
}
fn default_registry() -> String {
    "dir".into()
}
fn default_ipam() -> String {
    "node".into()
}

/// Namespace of the lab's `meshd-config` ConfigMap (as in deploy/).
pub const CONFIG_NAMESPACE: &str = "meshd-system";
/// Where the lab's mock API server listens, inside the underlay namespace.
const APISERVER_PORT: u16 = 6443;

/// One node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Node index (1-based); names and addresses derive from it.
    pub index: u32,
    /// Number of pods on this node.
    pub pods: u32,
    /// This node's `--wireguard-mode`, when it differs from the lab's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_mode: Option<String>,
}

impl LabState {
    fn mode_of(&self, i: u32) -> String {
        self.nodes
            .iter()
            .find(|n| n.index == i)
            .and_then(|n| n.wireguard_mode.clone())
            .unwrap_or_else(|| self.wireguard_mode.clone())
    }
}

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Lab name.
    pub name: String,
    /// Number of nodes.
    pub nodes: u32,
    /// Pods per node.
    pub pods_per_node: u32,
    /// `auto`, `kernel` or `userspace`.
    pub wireguard_mode: String,
    /// Per-node overrides of `wireguard_mode`: (node index, mode).
    pub node_modes: Vec<(u32, String)>,
    /// `enabled` or `permissive`.
    pub encryption: String,
    /// Strict mode.
    pub strict_mode: bool,
    /// `ebpf` or `routes`.
    pub pod_steering: String,
    /// `dir` or `kubernetes`.
    pub registry: String,
    /// `node` or `cluster-pool`.
    pub ipam: String,
    /// Node-to-node encryption.
    pub host_encryption: bool,
    /// Persistent keepalive (seconds) for every peer.
    pub keepalive: Option<u16>,
    /// Scheduled key rotation for every meshd (e.g. `30s`).
    pub key_rotation_interval: Option<String>,
    /// How long a peer must be silent before a rotation may go on without it (e.g. `5s`).
    pub rotation_silence: Option<String>,
    /// Give every meshd the lab's cluster CIDRs as `--cluster-cidr`.
    pub guard_cluster_cidrs: bool,
}

/// The lab's on-disk layout.
struct Paths {
    lab: String,
    root: PathBuf,
}

impl Paths {
    fn new(lab: &str) -> Self {
        Paths {
            lab: lab.to_string(),
            root: Path::new(LAB_ROOT).join(lab),
        }
    }
    fn state(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    fn registry(&self) -> PathBuf {
        self.root.join("registry")
    }
    fn mnt_dir(&self) -> PathBuf {
        self.root.join("mnt")
    }
    fn mnt(&self, i: u32) -> PathBuf {
        self.mnt_dir().join(node_name(i))
    }
    fn node_dir(&self, i: u32) -> PathBuf {
        self.root.join(node_name(i))
    }
    fn pidfile(&self, i: u32) -> PathBuf {
        self.node_dir(i).join("meshd.pid")
    }
    /// The node's bpffs directory as the host sees it (the node's `/sys/fs/bpf`).
    fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    fn bpffs(&self, i: u32) -> PathBuf {
        PathBuf::from(HOST_BPFFS)
            .join("meshd-lab")
            .join(format!("{}-{}", self.lab, node_name(i)))
    }
    fn log(&self, i: u32) -> PathBuf {
        self.node_dir(i).join("meshd.log")
    }
}

fn step(msg: impl AsRef<str>) {
    eprintln!("› {}", msg.as_ref());
}

/// Run a command; fail with its command line and stderr.
fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args).map(drop)
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn sysctl(ns: &str, settings: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["sysctl", "-qw"];
    args.extend_from_slice(settings);
    in_ns(ns, &args).map(drop)
}

/// Namespaces that exist on this machine.
fn namespaces() -> anyhow::Result<Vec<String>> {
    Ok(run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()
        .context("locating meshctl")?
        .with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to meshctl; build the workspace first (cargo build)",
            path.display()
        );
    }
    Ok(path)
}

fn load_state(lab: &str) -> anyhow::Result<Option<LabState>> {
    let path = Paths::new(lab).state();
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_state(state: &LabState) -> anyhow::Result<()> {
    let path = Paths::new(&state.name).state();
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    Ok(())
}

/// `meshctl lab up`.
pub fn up(opts: &UpOptions) -> anyhow::Result<()> {
    check_name(&opts.name)?;
    check_range("nodes", opts.nodes, MAX_NODES)?;
    check_range("pods per node", opts.pods_per_node, MAX_PODS)?;
    require_root()?;
    if let Some(state) = load_state(&opts.name)? {
        eprintln!(
            "lab {} is already up with {} nodes; `meshctl lab down --name {}` first to rebuild it",
            state.name,
            state.nodes.len(),
            state.name
        );
        return print_table(&state);
    }
    let stray: Vec<String> = namespaces()?
        .into_iter()
        .filter(|ns| owns_namespace(&opts.name, ns))
        .collect();
    if !stray.is_empty() {
        bail!(
            "namespaces {} exist but lab {} has no state; remove them with `meshctl lab down --name {}` or pick another --name",
            stray.join(", "),
            opts.name,
            opts.name
        );
    }
    for bin in ["meshd", "meshd-wg", "meshd-cni"] {
        binary(bin)?;
    }
    if !matches!(opts.ipam.as_str(), "node" | "cluster-pool") {
        bail!("--ipam {}: expected node or cluster-pool", opts.ipam);
    }
    let started = Instant::now();
    let mut state = LabState {
        name: opts.name.clone(),
        wireguard_mode: opts.wireguard_mode.clone(),
        encryption: opts.encryption.clone(),
        strict_mode: opts.strict_mode,
        pod_steering: opts.pod_steering.clone(),
        registry: opts.registry.clone(),
        ipam: opts.ipam.clone(),
        host_encryption: opts.host_encryption,
        keepalive: opts.keepalive,
        key_rotation_interval: opts.key_rotation_interval.clone(),
        rotation_silence: opts.rotation_silence.clone(),
        guard_cluster_cidrs: opts.guard_cluster_cidrs,
        nodes: Vec::new(),
    };
    let result = build(&mut state, opts);
    if let Err(err) = result {
        eprintln!("lab up failed: {err:#}; cleaning up");
        let _ = down(&opts.name);
        return Err(err);
    }
    step(format!(
        "lab {} up in {:.1}s: {} nodes, {} pods",
        state.name,
        started.elapsed().as_secs_f64(),
        state.nodes.len(),
        state.nodes.iter().map(|n| n.pods).sum::<u32>()
    ));
    print_table(&state)
}

fn build(state: &mut LabState, opts: &UpOptions) -> anyhow::Result<()> {
    let paths = Paths::new(&state.name);
    fs::create_dir_all(paths.registry())
        .with_context(|| format!("creating {}", paths.registry().display()))?;
    save_state(state)?;
    step("underlay: switch and router");
    make_underlay(&state.name)?;
    make_mount_dir(&paths)?;
    meshd::bpf::ensure_bpffs(&Path::new(HOST_BPFFS).join("meshd-lab"))?;
    if state.registry == "kubernetes" {
        step("mock Kubernetes API server with the lab's Nodes");
        start_apiserver(&paths, opts.nodes, opts.ipam == "cluster-pool")?;
    }
    for i in 1..=opts.nodes {
        step(format!(
            "node {}: namespace, underlay link, meshd ({} pods)",
            node_name(i),
            opts.pods_per_node
        ));
        let mode = opts
            .node_modes
            .iter()
            .find(|(n, _)| *n == i)
            .map(|(_, m)| m.clone());
        add_node_inner(state, i, opts.pods_per_node, mode)?;
    }
    step("waiting for every node to program every peer");
    wait_converged(state, Duration::from_secs(60))?;
    step("first packets across the mesh (WireGuard handshakes)");
    warm_up(state);
    // meshd refreshes its served status every second: let the handshakes show.
    std::thread::sleep(Duration::from_millis(1200));
    Ok(())
}

fn make_underlay(lab: &str) -> anyhow::Result<()> {
    let ul = underlay_ns(lab);
    ip(&["netns", "add", &ul])?;
    in_ns(&ul, &["ip", "link", "set", "lo", "up"])?;
    in_ns(&ul, &["ip", "link", "add", "br0", "type", "bridge"])?;
    sysctl(&ul, &["net.ipv6.conf.br0.accept_dad=0"])?;
    // The underlay is a switch: frames it bridges skip iptables (where br_netfilter is
    // loaded these sysctls exist per namespace, on by default; `-e`: absent is fine).
    sysctl(
        &ul,
        &[
            "-e",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ],
    )?;
    in_ns(
        &ul,
        &[
            "ip",
            "addr",
            "add",
            &format!("{GATEWAY_V4}/24"),
            "dev",
            "br0",
        ],
    )?;
    in_ns(
        &ul,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ],
    )?;
    in_ns(&ul, &["ip", "link", "set", "br0", "up"])?;
    Ok(())
}

fn make_mount_dir(paths: &Paths) -> anyhow::Result<()> {
    let dir = paths.mnt_dir();
    fs::create_dir_all(&dir)?;
    let d = dir.to_string_lossy().into_owned();
    // Mount namespaces can only be pinned under a private mount.
    run("mount", &["--bind", &d, &d])?;
    run("mount", &["--make-private", &d])?;
    // Mount points the nodes' private mounts cover (empty directories on the host).
    fs::create_dir_all("/run/wireguard")?;
    fs::create_dir_all("/run/meshd")?;
    Ok(())
}

/// Create node `i` with `pods` pods and start its meshd.
fn add_node_inner(
    state: &mut LabState,
    i: u32,
    pods: u32,
    mode: Option<String>,
) -> anyhow::Result<()> {
    let lab = state.name.clone();
    let paths = Paths::new(&lab);
    let ns = node_ns(&lab, i);
    let ul = underlay_ns(&lab);
    let (v4, v6) = node_underlay(i);
    state.nodes.push(NodeState {
        index: i,
        pods,
        wireguard_mode: mode,
    });
    save_state(state)?;
    ip(&["netns", "add", &ns])?;
    sysctl(
        &ns,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    )?;
    in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
    let port = node_name(i);
    ip(&[
        "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
    in_ns(
        &ns,
        &["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"],
    )?;
    in_ns(
        &ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    )?;
    in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
    in_ns(
        &ns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V4.to_string(),
        ],
    )?;
    in_ns(
        &ns,
        &[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V6.to_string(),
        ],
    )?;

    // The node's bpffs: a directory of the host's, which the node sees as /sys/fs/bpf.
    let bpffs = paths.bpffs(i);
    fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
    // The node's private mount namespace.
    let mnt = paths.mnt(i);
    fs::write(&mnt, b"").with_context(|| format!("creating {}", mnt.display()))?;
    let m = mnt.to_string_lossy().into_owned();
    run(
        "unshare",
        &[&format!("--mount={m}"), "--propagation", "private", "true"],
    )?;
    run(
        "nsenter",
        &[
            &format!("--mount={m}"),
            &format!("--net=/run/netns/{ns}"),
            "--",
            "sh",
            "-c",
            &format!(
                "mount -t tmpfs -o mode=0755 meshd-lab /run/wireguard && \
                 mount -t tmpfs -o mode=0755 meshd-lab /run/meshd && \
                 mkdir /run/meshd/.bpffs && mount --bind {} /run/meshd/.bpffs && \
                 umount -l /sys && mount -t sysfs sysfs /sys && \
                 mount --move /run/meshd/.bpffs /sys/fs/bpf && rmdir /run/meshd/.bpffs",
                bpffs.display()
            ),
        ],
    )?;
    fs::create_dir_all(paths.node_dir(i))?;
    start_meshd(state, i)?;
    for j in 1..=pods {
        add_pod(&lab, i, j, state.ipam == "cluster-pool")?;
    }
    Ok(())
}

/// Start (or restart) node `i`'s meshd in its namespaces.
fn start_meshd(state: &LabState, i: u32) -> anyhow::Result<u32> {
    start_meshd_with(state, i, &[])
}

fn start_meshd_with(state: &LabState, i: u32, extra: &[&str]) -> anyhow::Result<u32> {
    let lab = state.name.as_str();
    let mode = state.mode_of(i);
    let paths = Paths::new(lab);
    let meshd = binary("meshd")?;
    let (c4, c6) = node_pod_cidrs(i);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log(i))
        .with_context(|| format!("opening {}", paths.log(i).display()))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--mount={}", paths.mnt(i).display()))
        .arg(format!("--net=/run/netns/{}", node_ns(lab, i)))
        .arg("--")
        .arg(&meshd)
        .args(["--node-name", &node_name(i)])
        .arg("--state-dir")
        .arg(paths.node_dir(i).join("state"))
        .args(registry_args(state, &paths))
        // As in the DaemonSet: Events about this meshd are recorded on its Pod, in the
        // ConfigMap's namespace.
        .args(if state.registry == "kubernetes" {
            vec!["--pod-name".to_string(), format!("meshd-{}", node_name(i))]
        } else {
            Vec::new()
        })
        .arg("--cni-conf-dir")
        .arg(paths.node_dir(i).join("cni"))
        .args(["--underlay-interface", "eth0"])
        .args(["--listen-port", &LISTEN_PORT.to_string()])
        .args(["--wireguard-mode", &mode])
        .args(["--encryption", &state.encryption])
        .args(["--strict-mode", &state.strict_mode.to_string()])
        .args(["--pod-steering", &state.pod_steering])
        .args(["--host-encryption", &state.host_encryption.to_string()])
        .args(
            state
                .keepalive
                .map(|k| vec!["--keepalive".to_string(), k.to_string()])
                .unwrap_or_default(),
        )
        .args(
            state
                .key_rotation_interval
                .as_ref()
                .map(|k| vec!["--key-rotation-interval".to_string(), k.clone()])
                .unwrap_or_default(),
        )
        .args(
            state
                .rotation_silence
                .as_ref()
                .map(|k| vec!["--rotation-silence".to_string(), k.clone()])
                .unwrap_or_default(),
        )
        // Health, metrics and /status on the node's address, as the DaemonSet does.
        .args(["--health-listen", "0.0.0.0:9108"])
        .args(extra)
        .args(if state.ipam == "cluster-pool" {
            vec![
                "--pod-cidr-pool".to_string(),
                CLUSTER_V4.to_string(),
                "--pod-cidr-pool".to_string(),
                CLUSTER_V6.to_string(),
            ]
        } else if state.registry == "kubernetes" {
            // As on a real cluster: meshd takes them from its Node's spec.podCIDRs, which
            // the lab's API server holds (start_apiserver).
            Vec::new()
        } else {
            vec![
                "--pod-cidr".to_string(),
                c4.to_string(),
                "--pod-cidr".to_string(),
                c6.to_string(),
            ]
        })
        .args(if state.guard_cluster_cidrs {
            &["--cluster-cidr", CLUSTER_V4, "--cluster-cidr", CLUSTER_V6][..]
        } else {
            &[][..]
        })
        .env(
            "RUST_LOG",
            std::env::var("MESHD_LAB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().context("starting meshd")?;
    // nsenter execs meshd in place: the child's pid is meshd's.
    let pid = child.id();
    fs::write(paths.pidfile(i), pid.to_string())?;
    // Not waited for: meshd outlives meshctl and is reparented to init.
    std::mem::forget(child);
    if mode == "external" {
        // Started after meshd, as a pod's containers may be: meshd waits for them.
        std::thread::sleep(Duration::from_millis(500));
        start_external_devices(&paths, lab, i)?;
    }
    Ok(pid)
}

/// `--wireguard-mode external`: node `i`'s two user-space devices run by `meshd-wg` processes
/// of their own, as the `wireguard` containers of deploy/components/userspace-wireguard run
/// them: started by the lab (once; a restarted meshd adopts them), never by meshd.
fn start_external_devices(paths: &Paths, lab: &str, i: u32) -> anyhow::Result<()> {
    let helper = binary("meshd-wg")?;
    for device in ["meshd0", "meshd0b"] {
        let present = Command::new("ip")
            .args(["-n", &node_ns(lab, i), "link", "show", device])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if present {
            continue;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.node_dir(i).join(format!("{device}-wg.log")))?;
        let child = Command::new("nsenter")
            .arg(format!("--mount={}", paths.mnt(i).display()))
            .arg(format!("--net=/run/netns/{}", node_ns(lab, i)))
            .arg("--")
            .arg(&helper)
            .args(["--interface", device])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting meshd-wg for {device}"))?;
        // Like meshd: outlives meshctl; `lab down` kills every process in the namespace.
        std::mem::forget(child);
    }
    Ok(())
}

fn registry_args(state: &LabState, paths: &Paths) -> Vec<String> {
    if state.registry == "kubernetes" {
        vec![
            "--registry".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            paths.kubeconfig().to_string_lossy().into_owned(),
            "--config-map".into(),
            format!("{CONFIG_NAMESPACE}/{}", meshd::settings::CONFIG_MAP_NAME),
        ]
    } else {
        vec![
            "--registry-dir".into(),
            paths.registry().to_string_lossy().into_owned(),
        ]
    }
}

/// The mock API server's request log in the lab's directory, beside `kubeconfig`.
pub const APISERVER_AUDIT_LOG: &str = "apiserver-audit.jsonl";

/// Start the mock API server (a test double: this machine has no kube-apiserver) in the
/// underlay namespace on the router's address, with a Node per lab node carrying its
/// InternalIPs and pod CIDRs as a cloud controller would set them.
fn start_apiserver(paths: &Paths, nodes: u32, pool: bool) -> anyhow::Result<()> {
    let server = binary("fake-apiserver")?;
    let log = fs::File::create(paths.root.join("apiserver.log"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &underlay_ns(&paths.lab)])
        .arg(&server)
        .args(["--listen", &format!("{GATEWAY_V4}:{APISERVER_PORT}")])
        .arg("--kubeconfig")
        .arg(paths.kubeconfig())
        // Every request's verb, resource and client: tests check meshd's RBAC against it.
        .arg("--audit-log")
        .arg(paths.root.join(APISERVER_AUDIT_LOG));
    for i in 1..=nodes {
        let (u4, u6) = node_underlay(i);
        let (c4, c6) = node_pod_cidrs(i);
        // cluster-pool: no controller allocates spec.podCIDRs; every meshd claims its own.
        let cidrs = if pool {
            String::new()
        } else {
            format!("{c4},{c6}")
        };
        cmd.args(["--node", &format!("{}={u4},{u6}+{cidrs}", node_name(i))]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting fake-apiserver")?;
    std::mem::forget(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !paths.kubeconfig().exists() {
        if Instant::now() > deadline {
            bail!(
                "the mock API server did not start; see {}",
                paths.root.join("apiserver.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `meshctl lab set KEY=VALUE…`: change the lab's `meshd-config` ConfigMap (kubernetes labs).
/// Every meshd applies the change live.
pub fn set(lab: &str, pairs: &[(String, String)]) -> anyhow::Result<()> {
    use keyexchange::k8s_openapi::api::core::v1::ConfigMap;
    use keyexchange::kube::api::{Api, Patch, PatchParams, PostParams};
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    if state.registry != "kubernetes" {
        bail!("lab {lab} uses the directory registry; settings live in a ConfigMap only with `lab up --registry kubernetes`");
    }
    let paths = Paths::new(lab);
    // The API server listens inside the underlay namespace: talk to it from there.
    let ns = fs::File::open(format!("/run/netns/{}", underlay_ns(lab)))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the underlay namespace")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = keyexchange::registry::kube::client(Some(&paths.kubeconfig())).await?;
        let api: Api<ConfigMap> = Api::namespaced(client, CONFIG_NAMESPACE);
        let data: std::collections::BTreeMap<String, String> = pairs.iter().cloned().collect();
        let name = meshd::settings::CONFIG_MAP_NAME;
        if api.get_opt(name).await?.is_none() {
            let cm = ConfigMap {
                metadata: keyexchange::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(CONFIG_NAMESPACE.into()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await?;
        } else {
            let patch = serde_json::json!({ "data": data });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        anyhow::Ok(())
    })
}

/// Create pod `j` on node `i` the way a container runtime does: a network namespace, then
/// `meshd-cni` invoked with the CNI environment and configuration on stdin, inside the node.
fn add_pod(lab: &str, i: u32, j: u32, pool: bool) -> anyhow::Result<()> {
    let paths = Paths::new(lab);
    let pod = pod_ns(lab, i, j);
    let (want4, want6) = pod_addrs(i, j);
    let (c4, c6) = node_pod_cidrs(i);
    ip(&["netns", "add", &pod])?;
    in_ns(&pod, &["ip", "link", "set", "lo", "up"])?;
    let plugin = binary("meshd-cni")?;
    let config = plugin_config(&paths, i)?;
    let cidrs = config["podCIDRs"].to_string();
    let expected = cidrs.contains(&c4.to_string()) && cidrs.contains(&c6.to_string());
    if !pool && !expected {
        bail!(
            "node {}'s CNI configuration has pod CIDRs {cidrs}, expected {c4} and {c6}",
            node_name(i)
        );
    }
    // The node's network namespace, but the host's mount namespace: pod namespaces are
    // pinned under /run/netns after the node's private mount namespace was made.
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node_ns(lab, i)))
        .arg("--")
        .arg(&plugin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &pod)
        .env("CNI_NETNS", format!("/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", format!("K8S_POD_NAME={}", pod_name(i, j)))
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running meshd-cni")?;
    child
        .stdin
        .take()
        .context("meshd-cni stdin")?
        .write_all(config.to_string().as_bytes())
        .context("writing the CNI configuration")?;
    let out = child.wait_with_output().context("waiting for meshd-cni")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "meshd-cni ADD for {pod} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result: serde_json::Value =
        serde_json::from_str(&stdout).with_context(|| format!("meshd-cni result: {stdout}"))?;
    let got: Vec<&str> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    let want = [format!("{want4}/32"), format!("{want6}/128")];
    if pool {
        // Addresses come from the block meshd claimed: one per family.
        if got.len() != 2 || !got[0].ends_with("/32") || !got[1].ends_with("/128") {
            bail!("meshd-cni gave {pod} {got:?}, expected one IPv4 and one IPv6 address");
        }
    } else if got != want {
        bail!("meshd-cni gave {pod} {got:?}, the lab expected {want:?}");
    }
    Ok(())
}

/// The plugin configuration a runtime would hand `meshd-cni`: the first plugin of the conflist
/// meshd installed (waiting, as the kubelet does, until the node is ready and it exists), with
/// the list's name and version.
fn plugin_config(paths: &Paths, i: u32) -> anyhow::Result<serde_json::Value> {
    let path = paths
        .node_dir(i)
        .join("cni")
        .join(meshd::cni_conf::CONFLIST);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        match fs::read_to_string(&path) {
            Ok(text) => break text,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => bail!(
                "meshd on {} never became ready ({}: {e})",
                node_name(i),
                path.display()
            ),
        }
    };
    let list: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut plugin = list["plugins"][0].clone();
    plugin["cniVersion"] = list["cniVersion"].clone();
    plugin["name"] = list["name"].clone();
    // meshd names its pin directory as the node sees it; the plugin runs in the host's mount
    // namespace (see add_pod), where the node's /sys/fs/bpf is the node's bpffs directory.
    if let Some(dir) = plugin["bpfPinDir"].as_str() {
        if let Ok(rest) = Path::new(dir).strip_prefix(HOST_BPFFS) {
            plugin["bpfPinDir"] = serde_json::json!(paths.bpffs(i).join(rest));
        }
    }
    Ok(plugin)
}

/// Rotate the keys of `nodes` (all when empty) at once, each through its own control socket;
/// the outcome per node.
pub fn rotate_keys(
    lab: &str,
    nodes: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, meshd::control::RotateOutcome>> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let chosen: Vec<u32> = if nodes.is_empty() {
        state.nodes.iter().map(|n| n.index).collect()
    } else {
        nodes
            .iter()
            .map(|n| node_index(&state, n))
            .collect::<anyhow::Result<_>>()?
    };
    let meshctl = std::env::current_exe().context("locating meshctl")?;
    let handles: Vec<_> = chosen
        .into_iter()
        .map(|i| {
            let paths = Paths::new(lab);
            let ns = node_ns(lab, i);
            let meshctl = meshctl.clone();
            std::thread::spawn(
                move || -> anyhow::Result<(String, meshd::control::RotateOutcome)> {
                    let out = Command::new("nsenter")
                        .arg(format!("--mount={}", paths.mnt(i).display()))
                        .arg(format!("--net=/run/netns/{ns}"))
                        .arg("--")
                        .arg(&meshctl)
                        .args(["rotate-key", "-o", "json"])
                        .stdin(Stdio::null())
                        .output()
                        .context("running meshctl rotate-key in the node")?;
                    let text = String::from_utf8_lossy(&out.stdout);
                    let outcome = serde_json::from_str(&text).with_context(|| {
                        format!(
                            "node {}: no outcome from meshd: {}",
                            node_name(i),
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                    })?;
                    Ok((node_name(i), outcome))
                },
            )
        })
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for h in handles {
        let (node, outcome) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a rotation thread panicked"))??;
        out.insert(node, outcome);
    }
    Ok(out)
}

/// Query node `i`'s meshd through its own control socket.
fn node_status(lab: &str, i: u32) -> anyhow::Result<StatusReport> {
    let paths = Paths::new(lab);
    let meshctl = std::env::current_exe().context("locating meshctl")?;
    let out = run(
        "nsenter",
        &[
            &format!("--mount={}", paths.mnt(i).display()),
            &format!("--net=/run/netns/{}", node_ns(lab, i)),
            "--",
            &meshctl.to_string_lossy(),
            "status",
            "-o",
            "json",
        ],
    )?;
    serde_json::from_str(&out).context("decoding meshd status")
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

fn meshd_pid(lab: &str, i: u32) -> Option<u32> {
    fs::read_to_string(Paths::new(lab).pidfile(i))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|pid| pid_alive(*pid))
}

/// Wait until every node's meshd has programmed a peer for every other node.
fn wait_converged(state: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let want = state.nodes.len().saturating_sub(1);
    loop {
        let mut pending = Vec::new();
        for n in &state.nodes {
            match node_status(&state.name, n.index) {
                // Encryption disabled: no peers, plain routes to every node it knows.
                Ok(s) if s.converged && s.encryption == "disabled" => {
                    if s.known_nodes.len() < state.nodes.len() {
                        pending.push(format!(
                            "{} ({}/{} nodes known)",
                            s.node,
                            s.known_nodes.len(),
                            state.nodes.len()
                        ));
                    }
                }
                Ok(s) if s.converged && s.peers.len() == want => {}
                Ok(s) => pending.push(format!("{} ({}/{want} peers)", s.node, s.peers.len())),
                Err(_) => {
                    if meshd_pid(&state.name, n.index).is_none() {
                        bail!(
                            "meshd on {} exited; see {}",
                            node_name(n.index),
                            Paths::new(&state.name).log(n.index).display()
                        );
                    }
                    pending.push(format!("{} (starting)", node_name(n.index)));
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "mesh did not converge in {timeout:?}: waiting for {}",
                pending.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One ping from the first pod of each node to the first pod of every other node, both families.
fn warm_up(state: &LabState) {
    for a in &state.nodes {
        for b in &state.nodes {
            if a.index == b.index || a.pods == 0 || b.pods == 0 {
                continue;
            }
            let (d4, d6) = if state.ipam == "cluster-pool" {
                allocated_addrs(&Paths::new(&state.name), &state.name, b.index, 1)
            } else {
                let (d4, d6) = pod_addrs(b.index, 1);
                (d4.to_string(), d6.to_string())
            };
            for dst in [d4, d6] {
                let _ = in_ns(
                    &pod_ns(&state.name, a.index, 1),
                    &["ping", "-c", "1", "-W", "2", &dst],
                );
            }
        }
    }
}

/// `meshctl lab down`: remove every namespace, process, mount and file of the lab.
pub fn down(lab: &str) -> anyhow::Result<()> {
    check_name(lab)?;
    require_root()?;
    let paths = Paths::new(lab);
    let ours: Vec<String> = namespaces()?
        .into_iter()
        .filter(|ns| owns_namespace(lab, ns))
        .collect();
    if ours.is_empty() && !paths.root.exists() {
        eprintln!("lab {lab} is not up; nothing to do");
        return Ok(());
    }
    step(format!("stopping processes in {} namespaces", ours.len()));
    for ns in &ours {
        kill_ns_processes(ns);
    }
    for ns in &ours {
        if let Err(err) = ip(&["netns", "del", ns]) {
            eprintln!("warning: {err:#}");
        }
    }
    if let Ok(entries) = fs::read_dir(paths.mnt_dir()) {
        for entry in entries.flatten() {
            let _ = run("umount", &[&entry.path().to_string_lossy()]);
        }
    }
    let _ = run("umount", &[&paths.mnt_dir().to_string_lossy()]);
    // The nodes' pinned programs, maps and links (meshd was killed, not cleaned up).
    let bpffs_root = Path::new(HOST_BPFFS).join("meshd-lab");
    if let Ok(entries) = fs::read_dir(&bpffs_root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name
                .strip_prefix(&format!("{lab}-n"))
                .is_some_and(|i| i.parse::<u32>().is_ok())
            {
                remove_bpffs(&entry.path());
            }
        }
    }
    if paths.root.exists() {
        fs::remove_dir_all(&paths.root)
            .with_context(|| format!("removing {}", paths.root.display()))?;
    }
    step(format!("lab {lab} is down"));
    Ok(())
}

fn kill_ns_processes(ns: &str) {
    for signal in ["-TERM", "-KILL"] {
        let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            return;
        }
        let mut args = vec![signal];
        args.extend(pids);
        let _ = run("kill", &args);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `meshctl lab add-node`: one more node, programmed by the others without restart.
pub fn add_node(lab: &str, pods: u32) -> anyhow::Result<String> {
    require_root()?;
    check_range("pods per node", pods, MAX_PODS)?;
    let mut state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    if state.registry == "kubernetes" {
        bail!("add-node is not supported for kubernetes labs yet (their Nodes are created at `lab up`)");
    }
    let i = state.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
    check_range("nodes", i, MAX_NODES)?;
    step(format!(
        "node {}: namespace, underlay link, meshd ({pods} pods)",
        node_name(i)
    ));
    add_node_inner(&mut state, i, pods, None)?;
    step("waiting for every node to program every peer");
    wait_converged(&state, Duration::from_secs(60))?;
    Ok(node_name(i))
}

fn node_index(state: &LabState, node: &str) -> anyhow::Result<u32> {
    state
        .nodes
        .iter()
        .map(|n| n.index)
        .find(|i| node_name(*i) == node)
        .with_context(|| format!("lab {} has no node {node}", state.name))
}

/// `meshctl lab remove-node`: delete a node as an operator deletes a Node: its record goes
/// away, and every other node removes its peer and routes.
pub fn remove_node(lab: &str, node: &str) -> anyhow::Result<()> {
    require_root()?;
    let mut state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    let paths = Paths::new(lab);
    let pods = state
        .nodes
        .iter()
        .find(|n| n.index == i)
        .map_or(0, |n| n.pods);
    let mut spaces: Vec<String> = (1..=pods).map(|j| pod_ns(lab, i, j)).collect();
    spaces.push(node_ns(lab, i));
    for ns in &spaces {
        kill_ns_processes(ns);
        let _ = ip(&["netns", "del", ns]);
    }
    let _ = fs::remove_file(paths.registry().join(format!("{node}.json")));
    let _ = run("umount", &[&paths.mnt(i).to_string_lossy()]);
    let _ = fs::remove_file(paths.mnt(i));
    let _ = fs::remove_dir_all(paths.node_dir(i));
    remove_bpffs(&paths.bpffs(i));
    state.nodes.retain(|n| n.index != i);
    save_state(&state)?;
    step(format!("node {node} removed"));
    Ok(())
}

/// `meshctl lab kill-node`: SIGKILL a node's meshd (its datapath keeps running).
pub fn kill_node(lab: &str, node: &str) -> anyhow::Result<u32> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    let pid = meshd_pid(lab, i).with_context(|| format!("meshd on {node} is not running"))?;
    run("kill", &["-KILL", &pid.to_string()])?;
    // SIGKILL is delivered at once but the process takes a moment to be torn
    // down; return only when it is gone so that a following start-node sees it so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        if Instant::now() > deadline {
            bail!("meshd on {node} (pid {pid}) still exists 10 s after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// `meshctl lab start-node`: start a node's meshd again (after kill-node).
pub fn start_node(lab: &str, node: &str, cleanup: bool) -> anyhow::Result<u32> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    if let Some(pid) = meshd_pid(lab, i) {
        bail!("meshd on {node} is already running (pid {pid})");
    }
    start_meshd_with(&state, i, if cleanup { &["--cleanup"] } else { &[] })
}

/// `meshctl lab stop-node`: SIGTERM a node's meshd and wait until it has exited.
pub fn stop_node(lab: &str, node: &str) -> anyhow::Result<()> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    let pid = meshd_pid(lab, i).with_context(|| format!("meshd on {node} is not running"))?;
    run("kill", &["-TERM", &pid.to_string()])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_alive(pid) {
        if Instant::now() > deadline {
            bail!("meshd on {node} (pid {pid}) did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The pod CIDRs a cluster-pool node claimed (its persisted claim).
fn claimed_cidrs(paths: &Paths, i: u32) -> Vec<String> {
    fs::read_to_string(paths.node_dir(i).join("state").join("pod-cidrs.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["podCIDRs"].as_array().map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// A pod's addresses as the node's IPAM store holds them (cluster-pool labs).
fn allocated_addrs(paths: &Paths, lab: &str, i: u32, j: u32) -> (String, String) {
    let addrs = meshd::ipam::Ipam::open(paths.node_dir(i).join("state").join("ipam"), &[])
        .and_then(|ipam| ipam.lookup(&pod_ns(lab, i, j), "eth0"))
        .unwrap_or_default();
    let pick = |v4: bool| {
        addrs
            .iter()
            .find(|a| a.is_ipv4() == v4)
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    (pick(true), pick(false))
}

/// Remove a node's bpffs directory: unpinning detaches its links and frees its programs.
fn remove_bpffs(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: removing {}: {err}", dir.display());
        }
    }
}

/// `meshctl lab exec`: run a command inside a node (its network and mount namespaces).
pub fn exec(lab: &str, node: &str, command: &[String]) -> anyhow::Result<std::process::ExitStatus> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    let paths = Paths::new(lab);
    let mut command = command.to_vec();
    // `meshctl` inside a node means this meshctl.
    if command.first().map(String::as_str) == Some("meshctl") {
        command[0] = std::env::current_exe()
            .context("locating meshctl")?
            .to_string_lossy()
            .into_owned();
    }
    let cwd = std::env::current_dir().context("reading the working directory")?;
    Command::new("nsenter")
        .arg(format!("--mount={}", paths.mnt(i).display()))
        .arg(format!("--net=/run/netns/{}", node_ns(lab, i)))
        .arg(format!("--wd={}", cwd.display()))
        .arg("--")
        .args(&command)
        .status()
        .context("running nsenter")
}

/// The `lab status -o json` document (see the README for the contract).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabStatus {
    /// Document version.
    pub version: u32,
    /// Lab name.
    pub lab: String,
    /// WireGuard port of every node.
    pub listen_port: u16,
    /// Where the underlay can be captured.
    pub capture: CaptureSpot,
    /// Cluster pod CIDRs.
    pub cluster_cidrs: Vec<String>,
    /// The directory registry the lab's nodes share (one `<node>.json` per node).
    pub registry_dir: String,
    /// `dir` or `kubernetes`.
    pub registry: String,
    /// Kubeconfig of the lab's mock API server (kubernetes labs; reachable from inside the
    /// lab's namespaces, e.g. the underlay namespace).
    pub kubeconfig: Option<String>,
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// Pods.
    pub pods: Vec<LabPod>,
}

/// Where to capture the underlay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptureSpot {
    /// Namespace.
    pub namespace: String,
    /// Interface (the switch: sees every node's traffic).
    pub interface: String,
}

/// A node in the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// Node name.
    pub name: String,
    /// Network namespace.
    pub namespace: String,
    /// Pinned mount namespace (enter with `nsenter --mount=… --net=/run/netns/…`).
    pub mount_namespace: String,
    /// Underlay interface inside the node.
    pub underlay_interface: String,
    /// Underlay addresses.
    pub underlay_addresses: Vec<String>,
    /// WireGuard interface.
    pub wireguard_interface: String,
    /// `kernel`, `userspace`, or `unknown` when meshd is not answering.
    pub mode: String,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<String>,
    /// Public key (empty when meshd is not answering).
    pub public_key: String,
    /// meshd's state directory (private key) on the host filesystem.
    pub state_dir: String,
    /// meshd's log file.
    pub log_file: String,
    /// meshd's pid, when running.
    pub meshd_pid: Option<u32>,
    /// Whether meshd is running.
    pub running: bool,
    /// Peers as programmed on the node's device (empty when meshd is not answering).
    pub peers: Vec<meshd::control::PeerReport>,
    /// meshd's full status, when it answers.
    pub status: Option<StatusReport>,
    /// `enabled` or `permissive`.
    pub encryption: String,
    /// Whether strict mode is on.
    pub strict_mode: bool,
    /// The node's pinned eBPF datapath on the host filesystem.
    pub bpf_pin_dir: String,
    /// The verdict counters, read from the pinned maps (so also while meshd is down).
    pub counters: Option<meshd::bpf::VerdictCounters>,
}

/// A pod in the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// Pod name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its network namespace.
    pub namespace: String,
    /// Its interface.
    pub interface: String,
    /// IPv4 address.
    pub ipv4: String,
    /// IPv6 address.
    pub ipv6: String,
}

/// Build the status document of a lab.
pub fn status(lab: &str) -> anyhow::Result<LabStatus> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let paths = Paths::new(lab);
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    for n in &state.nodes {
        let i = n.index;
        let pid = meshd_pid(lab, i);
        let live = pid.and_then(|_| node_status(lab, i).ok());
        let (u4, u6) = node_underlay(i);
        let (c4, c6) = node_pod_cidrs(i);
        let pool = state.ipam == "cluster-pool";
        let claimed = if pool {
            claimed_cidrs(&paths, i)
        } else {
            vec![c4.to_string(), c6.to_string()]
        };
        nodes.push(LabNode {
            name: node_name(i),
            namespace: node_ns(lab, i),
            mount_namespace: paths.mnt(i).to_string_lossy().into_owned(),
            underlay_interface: "eth0".into(),
            underlay_addresses: vec![u4.to_string(), u6.to_string()],
            wireguard_interface: live
                .as_ref()
                .map_or("meshd0".into(), |s| s.interface.clone()),
            mode: live.as_ref().map_or("unknown".into(), |s| s.mode.clone()),
            pod_cidrs: claimed,
            public_key: live
                .as_ref()
                .map_or(String::new(), |s| s.public_key.clone()),
            state_dir: paths
                .node_dir(i)
                .join("state")
                .to_string_lossy()
                .into_owned(),
            log_file: paths.log(i).to_string_lossy().into_owned(),
            meshd_pid: pid,
            running: pid.is_some(),
            peers: live.as_ref().map_or_else(Vec::new, |s| s.peers.clone()),
            status: live,
            encryption: state.encryption.clone(),
            strict_mode: state.strict_mode,
            bpf_pin_dir: paths.bpffs(i).join("meshd").to_string_lossy().into_owned(),
            counters: ebpf_redirect::Datapath::adopt(paths.bpffs(i).join("meshd"))
                .and_then(|dp| dp.counters())
                .ok()
                .map(Into::into),
        });
        for j in 1..=n.pods {
            let (a4, a6) = if pool {
                allocated_addrs(&paths, lab, i, j)
            } else {
                let (a4, a6) = pod_addrs(i, j);
                (a4.to_string(), a6.to_string())
            };
            pods.push(LabPod {
                name: pod_name(i, j),
                node: node_name(i),
                namespace: pod_ns(lab, i, j),
                interface: "eth0".into(),
                ipv4: a4,
                ipv6: a6,
            });
        }
    }
    Ok(LabStatus {
        version: STATUS_VERSION,
        lab: lab.to_string(),
        listen_port: LISTEN_PORT,
        capture: CaptureSpot {
            namespace: underlay_ns(lab),
            interface: "br0".into(),
        },
        cluster_cidrs: vec![CLUSTER_V4.into(), CLUSTER_V6.into()],
        registry_dir: paths.registry().to_string_lossy().into_owned(),
        registry: state.registry.clone(),
        kubeconfig: (state.registry == "kubernetes")
            .then(|| paths.kubeconfig().to_string_lossy().into_owned()),
        nodes,
        pods,
    })
}

/// Print the human table of nodes, peers and handshakes.
pub fn print_table(state: &LabState) -> anyhow::Result<()> {
    let st = status(&state.name)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<5} {:<10} {:<8} {:<28} {:<32} PEERS (last handshake)",
        "NODE", "MODE", "MESHD", "UNDERLAY", "POD CIDRS"
    )?;
    for n in &st.nodes {
        let peers = n.status.as_ref().map_or_else(
            || "-".to_string(),
            |s| {
                s.peers
                    .iter()
                    .map(|p| {
                        let name = p
                            .name
                            .clone()
                            .unwrap_or_else(|| p.public_key[..8].to_string());
                        match p.last_handshake_secs_ago {
                            Some(ago) => format!("{name} ({ago}s ago)"),
                            None => format!("{name} (no handshake yet)"),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        writeln!(
            out,
            "{:<5} {:<10} {:<8} {:<28} {:<32} {}",
            n.name,
            n.mode,
            if n.running { "running" } else { "stopped" },
            n.underlay_addresses.join(" "),
            n.pod_cidrs.join(" "),
            peers
        )?;
        if let Some(c) = &n.counters {
            writeln!(
                out,
                "      eBPF: redirected {}  local {}  passed {}  strict drops {}  would-drops {}",
                c.redirected, c.local, c.passed, c.strict_drops, c.would_drops
            )?;
        }
    }
    writeln!(
        out,
        "pods: {}",
        st.pods
            .iter()
            .map(|p| format!("{} {}/{}", p.name, p.ipv4, p.ipv6))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        out,
        "capture the underlay: ip netns exec {} tcpdump -ni {}",
        st.capture.namespace, st.capture.interface
    )?;
    Ok(())
}

/// Print the table for a running lab by name.
pub fn print_status_table(lab: &str) -> anyhow::Result<()> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    print_table(&state)
}
