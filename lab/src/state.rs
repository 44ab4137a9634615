//! What a lab is: the options of `lab up`, the state it persists as `lab.json` (so that every
//! later command, and `down`, knows what was built) and the lab's on-disk layout under
//! [`LAB_ROOT`](crate::LAB_ROOT).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::plan::node_name;
use crate::{HOST_BPFFS, LAB_ROOT};

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
    /// `dir` (a shared directory) or `kubernetes` (Node annotations on the lab's API server,
    /// with the live `meshd-config` ConfigMap).
    #[serde(default = "default_registry")]
    pub registry: String,
    /// A kubernetes lab's API server as started: `kube-apiserver` (the real one; meshd uses
    /// [`Paths::meshd_kubeconfig`]) or `mock` (`fake-apiserver`); empty for a directory lab
    /// (and for a kubernetes lab saved before the real server was supported: the mock).
    #[serde(default)]
    pub apiserver: String,
    /// `node` (each node gets 10.244.K.0/24 and fd00:244:0:K::/64 as `--pod-cidr`),
    /// `cluster-pool` (each meshd claims its blocks out of the cluster CIDRs itself) or
    /// `node-subnet` (each meshd claims small blocks of the underlay subnet as its pods need).
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
    /// `--max-nodes` given to every meshd, if any (sizes the datapath's per-node maps).
    #[serde(default)]
    pub max_nodes: Option<u32>,
    /// The unpacked container image the nodes run their binaries from
    /// ([`crate::node_root`]), if `lab up` was given one; `None`: the workspace's binaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_root: Option<PathBuf>,
    /// The nodes, by index.
    pub nodes: Vec<NodeState>,
}

pub(crate) fn default_encryption() -> String {
    "enabled".into()
}

pub(crate) fn default_true() -> bool {
    true
}

pub(crate) fn default_steering() -> String {
    "ebpf".into()
}

pub(crate) fn default_registry() -> String {
    "dir".into()
}

impl LabState {
    /// Whether meshd chooses its nodes' pod addresses (`cluster-pool`, `node-subnet`): the
    /// lab reads them from the nodes instead of its addressing plan.
    pub(crate) fn meshd_allocates(&self) -> bool {
        self.ipam != "node"
    }
}

pub(crate) fn default_ipam() -> String {
    "node".into()
}

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
    pub(crate) fn mode_of(&self, i: u32) -> String {
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
    /// A kubernetes lab's API server: `auto`, `kube-apiserver` or `mock`.
    pub apiserver: String,
    /// `node`, `cluster-pool` or `node-subnet`.
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
    /// `--max-nodes` for every meshd (default: meshd's).
    pub max_nodes: Option<u32>,
}

/// The lab's on-disk layout.
pub(crate) struct Paths {
    /// The lab's name.
    pub(crate) lab: String,
    /// `/run/meshd-lab/<name>`.
    pub(crate) root: PathBuf,
}

impl Paths {
    pub(crate) fn new(lab: &str) -> Self {
        Paths {
            lab: lab.to_string(),
            root: Path::new(LAB_ROOT).join(lab),
        }
    }
    pub(crate) fn state(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    pub(crate) fn registry(&self) -> PathBuf {
        self.root.join("registry")
    }
    pub(crate) fn mnt_dir(&self) -> PathBuf {
        self.root.join("mnt")
    }
    pub(crate) fn mnt(&self, i: u32) -> PathBuf {
        self.mnt_dir().join(node_name(i))
    }
    pub(crate) fn node_dir(&self, i: u32) -> PathBuf {
        self.root.join(node_name(i))
    }
    pub(crate) fn pidfile(&self, i: u32) -> PathBuf {
        self.node_dir(i).join("meshd.pid")
    }
    /// The kubeconfig of the lab's tools (`lab set`, `audit`, tests): the admin's on the real
    /// API server; the only one on the mock.
    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    /// meshd's kubeconfig on the real API server: its service account's token.
    pub(crate) fn meshd_kubeconfig(&self) -> PathBuf {
        self.root.join("meshd.kubeconfig")
    }
    /// The real API server's directory (certificates, etcd's data, logs, the audit log).
    pub(crate) fn kube_apiserver_dir(&self) -> PathBuf {
        self.root.join("kube-apiserver")
    }
    /// The node's bpffs directory as the host sees it (the node's `/sys/fs/bpf`).
    pub(crate) fn bpffs(&self, i: u32) -> PathBuf {
        PathBuf::from(HOST_BPFFS)
            .join("meshd-lab")
            .join(format!("{}-{}", self.lab, node_name(i)))
    }
    pub(crate) fn log(&self, i: u32) -> PathBuf {
        self.node_dir(i).join("meshd.log")
    }
}

pub(crate) fn load_state(lab: &str) -> anyhow::Result<Option<LabState>> {
    let path = Paths::new(lab).state();
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub(crate) fn save_state(state: &LabState) -> anyhow::Result<()> {
    let path = Paths::new(&state.name).state();
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}
