//! meshctl's command line: every command and flag (clap), and the parsers of flag values.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use meshd::control;
use meshd::controller::parse_interval;

/// meshctl: inspect meshd and run the local multi-node lab.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Show this node's meshd: mode, device, peers, handshakes, counters.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// List every peer, conflict and malformed record in the table (default: counts, then
        /// at most 20 of each, the unhealthy peers first).
        #[arg(long)]
        all: bool,
        /// meshd's control socket.
        #[arg(long, default_value = control::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Audit the mesh: every node and ordered pair of nodes (keys, peers, handshakes, strict
    /// mode, plaintext counters, key age, settings). Exit 0: pass, 1: findings, 2: could not
    /// audit.
    Audit(AuditArgs),
    /// Rotate this node's WireGuard keys without losing a packet: both key slots are drained
    /// and replaced in turn, each step acknowledged by every peer (see the README). Waits
    /// until the rotation ends; exit 1 if it was abandoned (no key was changed then, or the
    /// drain stays until every peer holds the new key).
    RotateKey {
        /// meshd's control socket.
        #[arg(long, default_value = control::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Flows this node's datapath saw (forwarded, dropped, audited) with their reasons, from
    /// meshd's history through the control socket, filtered here; like `hubble observe`.
    Observe {
        #[command(flatten)]
        args: ObserveArgs,
        /// meshd's control socket.
        #[arg(long, default_value = control::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// The mesh as a graph: this node and its peers, each tunnel with its last handshake and
    /// bytes each way (DOT, or SVG), like Kilo's `kgctl graph`.
    Graph {
        #[command(flatten)]
        args: GraphArgs,
        /// meshd's control socket.
        #[arg(long, default_value = control::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// The local multi-node lab (network namespaces on this machine).
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
}

/// The flags of `meshctl observe` and `meshctl lab observe`: what to show and how.
#[derive(Debug, Args)]
pub(crate) struct ObserveArgs {
    /// Keep printing flows as they are seen, after the history.
    #[arg(short, long)]
    pub(crate) follow: bool,
    /// Flows to or from this pod, `NAMESPACE/NAME` (`NAME` alone: namespace `default`);
    /// repeatable (any of them).
    #[arg(long)]
    pub(crate) pod: Vec<String>,
    /// Flows to or from a pod in this namespace; repeatable (any of them).
    #[arg(long)]
    pub(crate) namespace: Vec<String>,
    /// The source: a pod `NAMESPACE/NAME`, an IP address or a CIDR.
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// The destination: a pod `NAMESPACE/NAME`, an IP address or a CIDR.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// `forwarded`, `dropped` or `audit` (permissive mode: would have been dropped).
    #[arg(long)]
    pub(crate) verdict: Option<String>,
    /// meshd's reason: to-tunnel, local-delivery, policy-denied, strict-mode,
    /// spoofed-source or would-drop.
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Either port.
    #[arg(long)]
    pub(crate) port: Option<String>,
    /// `tcp`, `udp`, `sctp`, `icmp` or an IP protocol number.
    #[arg(long)]
    pub(crate) protocol: Option<String>,
    /// Flows since a time: a duration back from now (`30s`, `5m`, `1h`, `2d`) or an RFC 3339
    /// time.
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Only the last N matching flows of the history (lost-events notices always show).
    #[arg(long)]
    pub(crate) last: Option<String>,
    /// Output format: a table, or `json` (one stream line per line, as meshd sends it).
    #[arg(short, long, value_enum, default_value = "table")]
    pub(crate) output: Output,
}

impl ObserveArgs {
    /// The filter flags' raw values.
    pub(crate) fn filter_flags(&self) -> meshd::flows::filter::FilterFlags {
        meshd::flows::filter::FilterFlags {
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            verdict: self.verdict.clone(),
            reason: self.reason.clone(),
            port: self.port.clone(),
            protocol: self.protocol.clone(),
            since: self.since.clone(),
            last: self.last.clone(),
        }
    }
}

/// The flags of `meshctl graph` and `meshctl lab graph`.
#[derive(Debug, Args)]
pub(crate) struct GraphArgs {
    /// `dot` (Graphviz source) or `svg` (rendered by Graphviz's `dot` when installed, else
    /// by meshctl's own layout).
    #[arg(short, long, value_enum, default_value = "dot")]
    pub(crate) output: GraphOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum GraphOutput {
    Dot,
    Svg,
}

/// The flags of `meshctl audit`.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// The lab to audit (unless `--cluster`).
    #[arg(long, default_value = "mlab")]
    pub(crate) lab: String,
    /// Audit the Kubernetes cluster instead: Nodes from the API, each node's meshd status from
    /// its `/status` endpoint at its InternalIP.
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Kubeconfig for `--cluster` (default: `$KUBECONFIG`, `~/.kube/config`, in-cluster).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Port of meshd's `--health-listen` on every node (`--cluster`); it must listen on the
    /// node's address (its default is loopback only).
    #[arg(long, default_value_t = 9108)]
    pub(crate) status_port: u16,
    /// Prove encryption per pair: canary traffic between pods, checked on an underlay
    /// capture.
    #[arg(long)]
    pub(crate) evidence: bool,
    /// Keys older than this many days are a finding.
    #[arg(long, default_value_t = 90)]
    pub(crate) max_key_age_days: u64,
    /// Cleartext attempted towards pod CIDRs (strict drops, would-drops) within this long
    /// is a finding, e.g. `1h`, `7d`; `0`: at any time since the datapath was loaded.
    #[arg(long, default_value = "24h", value_parser = parse_window)]
    pub(crate) plaintext_window: std::time::Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub(crate) output: Output,
    /// List every finding in the table (default: with more than 20, the counts per check,
    /// then 20 findings, the failed ones first).
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LabCmd {
    /// Build the lab and start a meshd on every node.
    Up {
        /// Lab name (prefix of every namespace).
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods_per_node: u32,
        /// WireGuard mode for every meshd.
        #[arg(long, default_value = "auto")]
        wireguard_mode: String,
        /// A node's own WireGuard mode, e.g. `n2=userspace` (repeatable): a mixed lab.
        /// `external`: the lab runs that node's two `meshd-wg` devices itself, after meshd
        /// (as separate containers would), and meshd adopts them.
        #[arg(long = "node-wireguard-mode", value_parser = parse_node_mode)]
        node_modes: Vec<(u32, String)>,
        /// `enabled` or `permissive` for every meshd.
        #[arg(long, default_value = "enabled")]
        encryption: String,
        /// Strict mode for every meshd.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        strict_mode: bool,
        /// `ebpf` (tc redirect into the tunnel) or `routes` for every meshd.
        #[arg(long, default_value = "ebpf")]
        pod_steering: String,
        /// `dir` (a shared directory) or `kubernetes` (Node annotations on the lab's API
        /// server, live settings from the `meshd-config` ConfigMap: see `lab set`).
        #[arg(long, default_value = "dir")]
        registry: String,
        /// The API server of a kubernetes lab: `kube-apiserver` (the real one, with etcd),
        /// `mock` (`fake-apiserver`) or `auto` (the real one when it is built, else the mock).
        #[arg(long, default_value = "auto")]
        apiserver: String,
        /// `node` (pod CIDRs 10.244.K.0/24 and fd00:244:0:K::/64 given to node K),
        /// `cluster-pool` (every meshd claims its own blocks out of the cluster CIDRs) or
        /// `node-subnet` (pods take addresses from /28 and /124 blocks of the underlay subnet
        /// each meshd claims as its pods need: docs/node-subnet.md).
        #[arg(long, default_value = "node")]
        ipam: String,
        /// Node-to-node encryption for every meshd (directory registry; a kubernetes lab
        /// takes it from the ConfigMap: `lab set host-encryption=true`).
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        host_encryption: bool,
        /// Persistent keepalive in seconds for every peer.
        #[arg(long)]
        keepalive: Option<u16>,
        /// Scheduled key rotation for every meshd, e.g. `30s`, `24h` (default: on demand).
        #[arg(long, value_parser = parse_rotation_interval)]
        key_rotation_interval: Option<String>,
        /// How long a peer must have been without a WireGuard handshake before a key rotation
        /// may go on without its acknowledgement, for every meshd, e.g. `5s` (default 180s).
        #[arg(long, value_parser = parse_rotation_interval)]
        rotation_silence: Option<String>,
        /// Give every meshd the lab's cluster CIDRs (10.244.0.0/16, fd00:244::/48) as
        /// `--cluster-cidr`; with `false` each meshd guards its own pod CIDRs and those it
        /// learns from peers.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        guard_cluster_cidrs: bool,
        /// `--max-nodes` for every meshd: the node count the datapath's per-node maps are
        /// sized for (default: meshd's, 16384).
        #[arg(long)]
        max_nodes: Option<u32>,
    },
    /// Change the lab's meshd-config ConfigMap (kubernetes labs), e.g. `encryption=disabled`.
    Set {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// `KEY=VALUE` pairs.
        #[arg(required = true, value_parser = parse_pair)]
        pairs: Vec<(String, String)>,
    },
    /// Remove everything the lab made.
    Down {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
    },
    /// Nodes, pods, peers and where to capture.
    Status {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// List every peer of every node in the table (default: per node, the peers counted
        /// by health and at most 20 unhealthy ones named once a node has more than 20).
        #[arg(long)]
        all: bool,
    },
    /// Flows seen by every lab node's datapath, merged by time (see `meshctl observe`).
    Observe {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        #[command(flatten)]
        args: ObserveArgs,
    },
    /// The lab's mesh as a graph: every node, every tunnel with its last handshake and bytes
    /// each way (see `meshctl graph`).
    Graph {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        #[command(flatten)]
        args: GraphArgs,
    },
    /// Add a node to the running lab.
    AddNode {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Pods on the new node.
        #[arg(long, default_value_t = 2)]
        pods: u32,
    },
    /// Remove a node (its record is deleted; the others drop it).
    RemoveNode {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Node name, e.g. n4.
        node: String,
    },
    /// SIGKILL a node's meshd (the datapath keeps running).
    KillNode {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Node name.
        node: String,
    },
    /// Start a node's meshd again.
    StartNode {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Node name.
        node: String,
        /// Start meshd with `--cleanup` (it removes its device, routes and tc programs on exit).
        #[arg(long)]
        cleanup: bool,
    },
    /// Stop a node's meshd with SIGTERM (it exits cleanly; the datapath stays unless it was
    /// started with `--cleanup`).
    StopNode {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Node name.
        node: String,
    },
    /// Run a command inside a node (e.g. `meshctl lab exec n1 -- wg show`).
    Exec {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Node name.
        node: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Rotate the keys of the given nodes (default: every node), all at once; prints one
    /// outcome per node and exits 1 if any rotation was abandoned.
    RotateKey {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Nodes to rotate (default: all).
        nodes: Vec<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Apply Kubernetes objects (Namespaces, Pods, NetworkPolicies; multi-document YAML, as
    /// `kubectl apply -f` takes): all or nothing. A Pod is created on its `spec.nodeName`
    /// (else round-robin) through meshd-cni, with a server on each of its ports.
    Apply {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// The file (`-`: standard input).
        #[arg(short, long = "filename")]
        file: PathBuf,
    },
    /// Delete the objects of a file (Pods are stopped; a Namespace takes its Pods and
    /// NetworkPolicies with it).
    Delete {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// The file (`-`: standard input).
        #[arg(short, long = "filename")]
        file: PathBuf,
    },
    /// Change the labels of a Pod (`pod NS/NAME`) or Namespace (`namespace NAME`):
    /// `k=v` sets, `k-` removes; changing a value needs `--overwrite`.
    Label {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Allow changing the value of an existing label.
        #[arg(long)]
        overwrite: bool,
        /// `pod` or `namespace`.
        #[arg(value_parser = ["pod", "pods", "po", "namespace", "namespaces", "ns"])]
        resource: String,
        /// `NS/NAME` for a pod (`NAME` alone: namespace `default`), `NAME` for a namespace.
        target: String,
        /// `k=v` or `k-`.
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Probe from every applied Pod to every applied Pod (itself included) from inside the
    /// source Pod: a truth table (rows from, columns to; `.` allowed, `X` blocked). Allowed
    /// means the destination's server answered, so a port nobody serves shows blocked.
    Probe {
        /// Lab name.
        #[arg(long, default_value = "mlab")]
        name: String,
        /// Destination port.
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// `TCP`, `UDP` or `SCTP`.
        #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
        protocol: String,
        /// Address family: 4 or 6.
        #[arg(long, default_value_t = 4, value_parser = parse_family)]
        family: u8,
        /// How long each probe waits for an answer, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// A Pod's port server (started by `lab apply` inside the Pod).
    #[command(hide = true)]
    Serve {
        /// The Pod's network namespace (a path under /run/netns).
        #[arg(long)]
        netns: PathBuf,
        /// `TCP`, `UDP` or `SCTP`.
        #[arg(long, value_parser = parse_protocol)]
        protocol: String,
        /// The port.
        #[arg(long)]
        port: u16,
    },
}

/// `4` or `6`.
fn parse_family(s: &str) -> Result<u8, String> {
    match s {
        "4" => Ok(4),
        "6" => Ok(6),
        _ => Err(format!("{s:?}: expected 4 or 6")),
    }
}

/// `TCP`, `UDP` or `SCTP`, in any case.
fn parse_protocol(s: &str) -> Result<String, String> {
    let upper = s.to_ascii_uppercase();
    if matches!(upper.as_str(), "TCP" | "UDP" | "SCTP") {
        Ok(upper)
    } else {
        Err(format!("{s:?}: expected TCP, UDP or SCTP"))
    }
}

/// `0`, or an interval with a unit (`--plaintext-window`).
fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    parse_interval(s)
}

/// A `--key-rotation-interval` value meshd accepts, kept as given.
fn parse_rotation_interval(s: &str) -> Result<String, String> {
    parse_interval(s).map(|_| s.to_string())
}

/// `KEY=VALUE` → (KEY, VALUE).
fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// `nK=MODE` → (K, MODE).
fn parse_node_mode(s: &str) -> Result<(u32, String), String> {
    let (node, mode) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NODE=MODE, e.g. n2=userspace"))?;
    let index = node
        .strip_prefix('n')
        .and_then(|i| i.parse::<u32>().ok())
        .ok_or_else(|| format!("{node:?}: expected a lab node name such as n2"))?;
    if !matches!(mode, "auto" | "kernel" | "userspace" | "external") {
        return Err(format!(
            "{mode:?}: expected auto, kernel, userspace or external"
        ));
    }
    Ok((index, mode.to_string()))
}
