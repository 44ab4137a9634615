//! The handles the controller works with: its arguments, this node's record and keys, the two
//! slot devices, rtnetlink, the eBPF datapath, the settings in force, where status goes and the
//! policy loop's report.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::UNIX_EPOCH;

use keyexchange::slots::Slot;
use keyexchange::{NodeRecord, PrivateKey};
use netlink::{Links, Routes, UserspaceOptions, WgDevice};
use tokio::sync::RwLock;

use super::args::DaemonArgs;
use super::state::Live;
use crate::bpf::Bpf;
use crate::control::{SharedStatus, StatusSummary};

/// The API servers' addresses as learnt from the cluster (the `kubernetes` Service's
/// endpoints): host encryption never tunnels them. `None` until first read.
pub type ApiServerFeed = tokio::sync::watch::Receiver<Option<BTreeSet<IpAddr>>>;

/// Everything the reconcile loop needs.
pub(super) struct Context {
    pub args: DaemonArgs,
    /// This node's record as published (its listen port, keys and rotation step change live).
    pub me: std::sync::RwLock<NodeRecord>,
    /// The private key of each slot (rotation replaces them).
    pub keys: std::sync::RwLock<[PrivateKey; 2]>,
    /// Each slot's device; replaced only when it vanished (its user-space process died).
    pub devices: [RwLock<WgDevice>; 2],
    /// Each slot's interface name.
    pub interfaces: [String; 2],
    /// Whether the first device existed before this meshd started.
    pub adopted: bool,
    /// The MTU `mtu: auto` stands for (`--mtu`, else derived from the underlay); the MTU in
    /// force is [`Live::mtu`].
    pub auto_mtu: u32,
    pub links: Links,
    pub routes: Routes,
    pub opts: UserspaceOptions,
    pub status: SharedStatus,
    pub bpf: tokio::sync::Mutex<Bpf>,
    /// The underlay interface.
    pub underlay: String,
    pub underlay_ifindex: u32,
    /// The settings in force (flags, then the ConfigMap's live values).
    pub live: RwLock<Live>,
    pub heartbeat: crate::health::Heartbeat,
    pub metrics: crate::metrics::Metrics,
    pub status_feed: Option<tokio::sync::watch::Sender<Option<StatusSummary>>>,
    /// The API servers' endpoints (host encryption excludes them).
    pub api_servers: Option<ApiServerFeed>,
    /// The policy loop's report (`None`: it could not start).
    pub policy: Option<crate::policy::SharedPolicyReport>,
    /// `node-subnet` IPAM: this node's blocks of the node subnet (`None` in other modes).
    pub blocks: Option<std::sync::Mutex<super::blocks::Blocks>>,
}

impl Context {
    /// This node's current record.
    pub fn me(&self) -> NodeRecord {
        self.me
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Slot `slot`'s private key.
    pub fn key(&self, slot: Slot) -> PrivateKey {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)[slot.index()]
        .clone()
    }

    /// Slot `slot`'s device.
    pub fn device(&self, slot: Slot) -> &RwLock<WgDevice> {
        &self.devices[slot.index()]
    }

    /// Change this node's record (then publish it).
    pub fn update_me(&self, f: impl FnOnce(&mut NodeRecord)) {
        f(&mut self
            .me
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// When the older of the two keys was written (UNIX seconds; the key files' mtimes).
    pub fn key_created_unix(&self) -> Option<u64> {
        [KEY_FILES[0], KEY_FILES[1]]
            .iter()
            .map(|f| key_mtime(&self.args.state_dir.join(f)))
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().min())
    }
}

/// Each slot's key file in the state directory.
pub(super) const KEY_FILES: [&str; 2] = [
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
