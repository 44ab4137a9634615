//! `meshctl`: the operator CLI (node status, the local lab).
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use meshd::control;
use meshd_lab as lab;

/// meshctl: inspect meshd and run the local multi-node lab.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show this node's meshd: mode, device, peers, handshakes, counters.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// meshd's control socket.
        #[arg(long, default_value = control::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Audit the mesh: every node and ordered pair of nodes (keys, peers, handshakes, strict
    /// mode, plaintext counters, key age, settings). Exit 0: pass, 1: findings, 2: could not
    /// audit.
    Audit {
        /// The lab to audit (unless `--cluster`).
        #[arg(long, default_value = "mlab")]
        lab: String,
        /// Audit the Kubernetes cluster instead: Nodes from the API, each node's meshd status from
        /// its `/status` endpoint at its InternalIP.
        #[arg(long)]
        cluster: bool,
        /// Kubeconfig for `--cluster` (default: `$KUBECONFIG`, `~/.kube/config`, in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Port of meshd's `--health-listen` on every node (`--cluster`).
        #[arg(long, default_value_t = 9108)]
        status_port: u16,
        /// Prove encryption per pair: canary traffic between pods, checked on an underlay
        /// capture.
        #[arg(long)]
        evidence: bool,
        /// Keys older than this many days are a finding.
        #[arg(long, default_value_t = 90)]
        max_key_age_days: u64,
        /// Cleartext attempted towards pod CIDRs (strict drops, would-drops) within this long
        /// is a finding, e.g. `1h`, `7d`; `0`: at any time since the datapath was loaded.
        #[arg(long, default_value = "24h", value_parser = parse_window)]
        plaintext_window: std::time::Duration,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
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
    /// The local multi-node lab (network namespaces on this machine).
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
}

#[derive(Debug, Subcommand)]
enum LabCmd {
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
        /// `dir` (a shared directory) or `kubernetes` (Node annotations on a mock API server,
        /// live settings from the `meshd-config` ConfigMap: see `lab set`).
        #[arg(long, default_value = "dir")]
        registry: String,
        /// `node` (pod CIDRs 10.244.K.0/24 and fd00:244:0:K::/64 given to node K) or
        /// `cluster-pool` (every meshd claims its own blocks out of the cluster CIDRs).
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
}

/// A `--key-rotation-interval` value meshd accepts, kept as given.
/// `0`, or an interval with a unit (`--plaintext-window`).
fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    meshd::daemon::parse_interval(s)
}

fn parse_rotation_interval(s: &str) -> Result<String, String> {
    meshd::daemon::parse_interval(s).map(|_| s.to_string())
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("meshctl: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Status { output, socket } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(control::query(&socket))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print_node_status(&report),
            }
        }
        Cmd::RotateKey { socket, output } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let outcome = rt.block_on(control::rotate_key(&socket))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
                Output::Table => {
                    println!(
                        "{}: {}",
                        if outcome.ok { "rotated" } else { "FAILED" },
                        outcome.message
                    );
                    for (slot, key) in outcome.public_keys.iter().enumerate() {
                        println!("slot {slot} key {key}");
                    }
                }
            }
            if !outcome.ok {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Audit {
            lab,
            cluster,
            kubeconfig,
            status_port,
            evidence,
            max_key_age_days,
            plaintext_window,
            output,
        } => {
            let policy = meshd::audit::Policy {
                max_key_age: std::time::Duration::from_secs(max_key_age_days * 24 * 3600),
                plaintext_window,
            };
            let report = if cluster {
                if evidence {
                    eprintln!("meshctl audit: --evidence needs pods to send canaries from; it runs against the lab only");
                    return Ok(ExitCode::from(2));
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                match rt.block_on(meshd::audit_cluster::cluster_views(
                    kubeconfig.as_deref(),
                    status_port,
                )) {
                    Ok(views) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs();
                        Ok(meshd::audit::audit(&views, &policy, now))
                    }
                    Err(e) => Err(e),
                }
            } else {
                lab::evidence::audit_lab(&lab, &policy, evidence)
            };
            let report = match report {
                Ok(r) => r,
                Err(err) => {
                    eprintln!("meshctl audit: could not audit: {err:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!("{}", meshd::audit::table(&report)),
            }
            return Ok(ExitCode::from(report.exit_code()));
        }
        Cmd::Lab { command } => match command {
            LabCmd::Up {
                name,
                nodes,
                pods_per_node,
                wireguard_mode,
                node_modes,
                encryption,
                strict_mode,
                pod_steering,
                registry,
                ipam,
                host_encryption,
                keepalive,
                key_rotation_interval,
                rotation_silence,
                guard_cluster_cidrs,
            } => lab::up(&lab::UpOptions {
                name,
                nodes,
                pods_per_node,
                wireguard_mode,
                node_modes,
                encryption,
                strict_mode,
                pod_steering,
                registry,
                ipam,
                host_encryption,
                keepalive,
                key_rotation_interval,
                rotation_silence,
                guard_cluster_cidrs,
            })?,
            LabCmd::Set { name, pairs } => lab::set(&name, &pairs)?,
            LabCmd::Down { name } => lab::down(&name)?,
            LabCmd::Status { name, output } => match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&lab::status(&name)?)?),
                Output::Table => lab::print_status_table(&name)?,
            },
            LabCmd::AddNode { name, pods } => {
                let node = lab::add_node(&name, pods)?;
                println!("{node}");
            }
            LabCmd::RemoveNode { name, node } => lab::remove_node(&name, &node)?,
            LabCmd::KillNode { name, node } => {
                let pid = lab::kill_node(&name, &node)?;
                println!("{pid}");
            }
            LabCmd::StartNode {
                name,
                node,
                cleanup,
            } => {
                let pid = lab::start_node(&name, &node, cleanup)?;
                println!("{pid}");
            }
            LabCmd::StopNode { name, node } => lab::stop_node(&name, &node)?,
            LabCmd::RotateKey {
                name,
                nodes,
                output,
            } => {
                let outcomes = lab::rotate_keys(&name, &nodes)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
                    Output::Table => {
                        for (node, o) in &outcomes {
                            println!(
                                "{node}: {} {}",
                                if o.ok { "rotated" } else { "FAILED" },
                                o.message
                            );
                        }
                    }
                }
                if outcomes.values().any(|o| !o.ok) {
                    return Ok(ExitCode::from(1));
                }
            }
            LabCmd::Exec {
                name,
                node,
                command,
            } => {
                let status = lab::exec(&name, &node, &command)?;
                return Ok(ExitCode::from(
                    status.code().unwrap_or(1).clamp(0, 255) as u8
                ));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn print_node_status(s: &control::StatusReport) {
    println!("node {}  key {}", s.node, s.public_key);
    println!(
        "device {} (ifindex {}, {} mode{}), port {}, mtu {}",
        s.interface,
        s.ifindex,
        s.mode,
        if s.adopted_device { ", adopted" } else { "" },
        s.listen_port,
        s.mtu
    );
    println!(
        "endpoints {}  pod CIDRs {}",
        s.endpoints.join(" "),
        s.pod_cidrs.join(" ")
    );
    if let Some(second) = &s.second {
        println!(
            "second key slot: device {} (ifindex {}), port {}, key {}",
            second.interface, second.ifindex, second.listen_port, second.public_key
        );
    }
    let r = &s.rotation;
    println!(
        "key rotation: {}{}, {} done, {} abandoned{}",
        r.phase,
        r.slot.map_or(String::new(), |s| format!(" (slot {s})")),
        r.rotations,
        r.failures,
        r.last_error
            .as_ref()
            .map_or(String::new(), |e| format!("; last error: {e}"))
    );
    println!(
        "{:<8} {:<46} {:<24} {:<12} {:>12} {:>12}  ALLOWED IPS",
        "PEER", "KEY", "ENDPOINT", "HANDSHAKE", "RX", "TX"
    );
    for p in &s.peers {
        println!(
            "{:<8} {:<46} {:<24} {:<12} {:>12} {:>12}  {}",
            p.name.as_deref().unwrap_or("?"),
            p.public_key,
            p.endpoint.as_deref().unwrap_or("-"),
            p.last_handshake_secs_ago
                .map_or("never".into(), |a| format!("{a}s ago")),
            p.rx_bytes,
            p.tx_bytes,
            p.allowed_ips.join(" ")
        );
    }
    for c in &s.conflicts {
        println!("conflict: {c}");
    }
    for m in &s.malformed {
        println!("malformed record from {}: {}", m.node, m.error);
    }
    println!(
        "encryption {}  strict mode {}",
        s.encryption,
        if s.strict_mode { "on" } else { "off" }
    );
    match &s.datapath {
        Some(d) => {
            println!(
                "eBPF datapath ({}, {}): underlay {} {} ({}), {} remote CIDRs, {} local pods on {} interfaces",
                d.pin_dir,
                d.attach,
                d.underlay_interface,
                d.underlay_mode,
                match d.underlay_attached {
                    Some(true) => "attached",
                    Some(false) => "NOT ATTACHED",
                    None => "attachment not visible",
                },
                d.remote_cidrs.len(),
                d.local_pods,
                d.pod_interfaces
            );
            let v = &d.counters;
            println!(
                "verdicts: redirected {}  local {}  passed {}  strict drops {}  would-drops {}",
                v.redirected, v.local, v.passed, v.strict_drops, v.would_drops
            );
        }
        None => println!("eBPF datapath: not readable"),
    }
    let c = &s.counters;
    println!(
        "converged {}  reconciles {} (errors {})  peer ops {}  route ops {}  map ops {}  malformed records {}",
        s.converged,
        c.reconciles,
        c.reconcile_errors,
        c.peer_ops,
        c.route_ops,
        c.map_ops,
        c.malformed_records
    );
}
