//! The `lab status` document (`-o json`, a contract: see the README; its field names and values
//! do not change without a new [`STATUS_VERSION`](crate::STATUS_VERSION)) and its table: what
//! was built, where to capture, and what every node's meshd reports through its control socket.

use std::fs;
use std::io::Write as _;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::host::{meshd_pid, run};
use crate::plan::*;
use crate::state::{load_state, LabState, Paths};
use crate::{LISTEN_PORT, STATUS_VERSION};
use meshd::bpf::VerdictCounters;
use meshd::control::summary::{
    and_more, bounded, unhealthy_first, PeerCounts, PeerHealth, LIST_LIMIT,
};
use meshd::control::{PeerReport, StatusReport};
use meshd_cni::ipam::Ipam;

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
    /// The unpacked container image the nodes run meshd, meshctl, meshd-cni and meshd-wg
    /// from (`MESHD_LAB_NODE_ROOT` at `lab up`); absent: the workspace's binaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_root: Option<String>,
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
    pub peers: Vec<PeerReport>,
    /// meshd's full status, when it answers.
    pub status: Option<StatusReport>,
    /// `enabled` or `permissive`.
    pub encryption: String,
    /// Whether strict mode is on.
    pub strict_mode: bool,
    /// The node's pinned eBPF datapath on the host filesystem.
    pub bpf_pin_dir: String,
    /// The verdict counters, read from the pinned maps (so also while meshd is down).
    pub counters: Option<VerdictCounters>,
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
        let pool = state.meshd_allocates();
        let claimed = if state.ipam == "node-subnet" {
            held_blocks(&paths, i)
        } else if pool {
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
            mode: live
                .as_ref()
                .map_or("unknown".into(), |s| s.mode.to_string()),
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
        cluster_cidrs: if state.ipam == "node-subnet" {
            // The pods' addresses come from these ranges of the underlay.
            vec![
                NODE_SUBNET_POD_RANGE_V4.into(),
                NODE_SUBNET_POD_RANGE_V6.into(),
            ]
        } else {
            vec![CLUSTER_V4.into(), CLUSTER_V6.into()]
        },
        registry_dir: paths.registry().to_string_lossy().into_owned(),
        registry: state.registry.clone(),
        kubeconfig: (state.registry == "kubernetes")
            .then(|| paths.kubeconfig().to_string_lossy().into_owned()),
        nodes,
        pods,
        node_root: state
            .node_root
            .as_ref()
            .map(|r| r.to_string_lossy().into_owned()),
    })
}

/// Query node `i`'s meshd through its own control socket.
pub(crate) fn node_status(lab: &str, i: u32) -> anyhow::Result<StatusReport> {
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

/// The pod CIDRs a cluster-pool node claimed (its persisted claim).
pub(crate) fn claimed_cidrs(paths: &Paths, i: u32) -> Vec<String> {
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

/// The blocks of the underlay subnet a node-subnet node holds (kept in its state directory).
pub(crate) fn held_blocks(paths: &Paths, i: u32) -> Vec<String> {
    fs::read_to_string(
        paths
            .node_dir(i)
            .join("state")
            .join("node-subnet-blocks.json"),
    )
    .ok()
    .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
    .unwrap_or_default()
}

/// A pod's addresses as the node's IPAM store holds them (cluster-pool and node-subnet labs).
pub(crate) fn allocated_addrs(paths: &Paths, lab: &str, i: u32, j: u32) -> (String, String) {
    let addrs = Ipam::open(paths.node_dir(i).join("state").join("ipam"), &[])
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

/// Print the human table of nodes, peers and handshakes (peers bounded per node, see
/// [`render_status_table`]).
pub fn print_table(state: &LabState) -> anyhow::Result<()> {
    print_table_listing(state, false)
}

/// Print the human table; `all`: every peer of every node, else bounded (see [`render_status_table`]).
pub fn print_table_listing(state: &LabState, all: bool) -> anyhow::Result<()> {
    let st = status(&state.name)?;
    let mut out = std::io::stdout().lock();
    out.write_all(render_status_table(&st, (!all).then_some(LIST_LIMIT)).as_bytes())?;
    Ok(())
}

/// One node's peers for the table: each with its last handshake while there are at most
/// `limit` (all with `None`); beyond that, the counts by health and the unhealthy ones first,
/// at most `limit` of them.
fn peers_cell(peers: &[PeerReport], limit: Option<usize>) -> String {
    let named = |p: &PeerReport| {
        let name = p
            .name
            .clone()
            .unwrap_or_else(|| p.public_key.chars().take(8).collect());
        match p.last_handshake_secs_ago {
            Some(ago) => format!("{name} ({ago}s ago)"),
            None => format!("{name} (no handshake yet)"),
        }
    };
    if limit.is_none_or(|n| peers.len() <= n) {
        return peers.iter().map(named).collect::<Vec<_>>().join(", ");
    }
    let counts = PeerCounts::of(peers);
    let unhealthy: Vec<&PeerReport> = unhealthy_first(peers)
        .into_iter()
        .filter(|p| PeerHealth::of(p) != PeerHealth::Ok)
        .collect();
    if unhealthy.is_empty() {
        return counts.to_string();
    }
    let (shown, more) = bounded(&unhealthy, limit);
    let mut cell = format!(
        "{counts}; unhealthy: {}",
        shown
            .iter()
            .map(|p| named(p))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(tail) = and_more(more, "unhealthy", "--all lists every peer") {
        cell.push(' ');
        cell.push_str(&tail);
    }
    cell
}

/// The human table of a lab's status: one line per node with its peers ([`peers_cell`],
/// bounded by `limit`), its verdict counters, the pods and where to capture.
pub fn render_status_table(st: &LabStatus, limit: Option<usize>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<10} {:<8} {:<28} {:<32} PEERS (last handshake)",
        "NODE", "MODE", "MESHD", "UNDERLAY", "POD CIDRS"
    );
    for n in &st.nodes {
        let peers = n
            .status
            .as_ref()
            .map_or_else(|| "-".to_string(), |s| peers_cell(&s.peers, limit));
        let _ = writeln!(
            out,
            "{:<5} {:<10} {:<8} {:<28} {:<32} {}",
            n.name,
            n.mode,
            if n.running { "running" } else { "stopped" },
            n.underlay_addresses.join(" "),
            n.pod_cidrs.join(" "),
            peers
        );
        if let Some(c) = &n.counters {
            let _ = writeln!(
                out,
                "      eBPF: redirected {}  local {}  passed {}  strict drops {}  would-drops {}  spoofed {}  policy denied egress {}  policy denied ingress {}",
                c.redirected,
                c.local,
                c.passed,
                c.strict_drops,
                c.would_drops,
                c.spoofed,
                c.policy_denied_egress,
                c.policy_denied_ingress
            );
        }
    }
    let _ = writeln!(
        out,
        "pods: {}",
        st.pods
            .iter()
            .map(|p| format!("{} {}/{}", p.name, p.ipv4, p.ipv6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "capture the underlay: ip netns exec {} tcpdump -ni {}",
        st.capture.namespace, st.capture.interface
    );
    out
}

/// Print the table for a running lab by name.
pub fn print_status_table(lab: &str) -> anyhow::Result<()> {
    print_status_table_listing(lab, false)
}

/// Print the table for a running lab by name; `all`: every peer of every node.
pub fn print_status_table_listing(lab: &str, all: bool) -> anyhow::Result<()> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    print_table_listing(&state, all)
}

#[cfg(test)]
mod table_tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerReport> {
        (0..n)
            .map(|i| PeerReport {
                name: Some(format!("p{i:05}")),
                public_key: format!("key{i:05}"),
                endpoint: None,
                allowed_ips: vec![],
                last_handshake_unix: None,
                last_handshake_secs_ago: match i {
                    i if i % 100 == 1 => None,
                    i if i % 100 == 2 => Some(1000),
                    _ => Some(4),
                },
                rx_bytes: 0,
                tx_bytes: 0,
            })
            .collect()
    }

    #[test]
    fn a_node_with_five_thousand_peers_shows_counts_and_at_most_twenty_unhealthy_ones() {
        let cell = peers_cell(&peers(5000), Some(LIST_LIMIT));
        assert!(
            cell.starts_with("5000 peers: 4900 ok, 50 stale, 50 no handshake yet; unhealthy: p00001 (no handshake yet), p00101"),
            "{cell}"
        );
        assert_eq!(
            cell.matches(" ago)").count() + cell.matches("(no handshake yet)").count(),
            20
        );
        assert!(
            cell.ends_with("... and 80 more unhealthy (--all lists every peer)"),
            "{cell}"
        );
        assert!(cell.len() < 1000, "{} characters", cell.len());
        // --all: every peer.
        assert_eq!(peers_cell(&peers(5000), None).matches(", ").count(), 4999);
        // A small lab prints as before: every peer with its handshake.
        assert_eq!(
            peers_cell(&peers(3), Some(LIST_LIMIT)),
            "p00000 (4s ago), p00001 (no handshake yet), p00002 (1000s ago)"
        );
        // Many healthy peers: the counts alone.
        let healthy: Vec<PeerReport> = peers(300)
            .into_iter()
            .filter(|p| PeerHealth::of(p) == PeerHealth::Ok)
            .collect();
        assert_eq!(
            peers_cell(&healthy, Some(LIST_LIMIT)),
            "294 peers: 294 ok, 0 stale, 0 no handshake yet"
        );
    }
}
