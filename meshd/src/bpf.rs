//! The daemon's side of the tc eBPF datapath: loading the programs into bpffs, strict mode on
//! the underlay, and keeping the maps and the pod attachments in step with the mesh.
//!
//! Start-up order is the fail-closed guarantee: [`Bpf::start`] sets the mode and the cluster
//! CIDRs and attaches `underlay_egress` before meshd creates a peer, a route or the CNI
//! configuration, so there is never a moment on a node where a pod route exists and
//! cleartext pod traffic could leave through the underlay unnoticed. Programs, maps and links
//! are pinned: a meshd restart (or SIGKILL) leaves them working, and the next meshd reloads
//! the programs over the same pinned maps (counters keep counting) and swaps every attachment
//! atomically to the new program.
//!
//! What the maps should hold, and in which order they change, is decided by the controller's
//! pure plan (`crate::controller::plan`); this module carries out one step at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ebpf_redirect::{
    ClusterMarker, Datapath, MapSizes, Mode, TcAttachType, Verdict, CLUSTER_CONFIGURED,
    CLUSTER_LEARNED,
};

/// `to_pod` and the source map: the pod programs' part added with source validation.
mod pod_programs;
use ipnet::IpNet;
use pod_programs::attachments_done;
use serde::{Deserialize, Serialize};

/// Default bpffs directory for meshd's pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/meshd";
/// Where bpffs is conventionally mounted.
const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors of the eBPF datapath. Each variant names its step and carries the loader's error
/// as its source, never in its message: `{:#}` prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The pin directory is not on a bpffs and one could not be mounted.
    #[error(
        "{path} is not on a bpf filesystem and mounting bpffs on {BPFFS_ROOT} failed: {reason}"
    )]
    Bpffs {
        /// The pin directory.
        path: PathBuf,
        /// Why mounting failed.
        reason: String,
    },
    /// Loading or adopting the programs failed.
    #[error("loading the tc programs into {path}")]
    Load {
        /// The pin directory.
        path: PathBuf,
        /// The cause.
        source: Box<ebpf_redirect::Error>,
    },
    /// Attaching a program failed.
    #[error("attaching {program} to {interface}")]
    Attach {
        /// `from_pod` or `underlay_egress`.
        program: &'static str,
        /// The interface.
        interface: String,
        /// The cause.
        source: Box<ebpf_redirect::Error>,
    },
    /// A map update or read failed.
    #[error("{what}")]
    Map {
        /// What was being done.
        what: String,
        /// The cause.
        source: Box<ebpf_redirect::Error>,
    },
}

impl BpfError {
    /// Whether a map update failed only because the map is full (the entry does not fit).
    pub fn is_map_full(&self) -> bool {
        matches!(self, BpfError::Map { source, .. } if source.is_map_full())
    }
}

pub use crate::mode::Encryption;

/// The program mode for an encryption setting and the strict-mode switch.
pub fn program_mode(encryption: Encryption, strict: bool) -> Mode {
    match (encryption, strict) {
        (Encryption::Enabled, true) => Mode::Enforce,
        _ => Mode::Permissive,
    }
}

/// The verdict counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictCounters {
    /// Pod packets redirected into the tunnel.
    pub redirected: u64,
    /// Pod packets to a local pod, left to the kernel.
    pub local: u64,
    /// Pod packets to anything else, passed to the stack.
    pub passed: u64,
    /// Cluster packets dropped at the underlay by strict mode.
    pub strict_drops: u64,
    /// Cluster packets strict mode would have dropped (permissive).
    pub would_drops: u64,
    /// Pod packets dropped by `from_pod` because their source is not the pod's address on
    /// that interface (absent from an older meshd's report: 0).
    #[serde(default)]
    pub spoofed: u64,
    /// Pod packets dropped by the sending pod's egress policy.
    #[serde(default)]
    pub policy_denied_egress: u64,
    /// Packets dropped by the receiving pod's ingress policy.
    #[serde(default)]
    pub policy_denied_ingress: u64,
}

impl From<[u64; ebpf_redirect::VERDICT_COUNT as usize]> for VerdictCounters {
    fn from(c: [u64; ebpf_redirect::VERDICT_COUNT as usize]) -> Self {
        VerdictCounters {
            redirected: c[Verdict::Redirect as usize],
            local: c[Verdict::Local as usize],
            passed: c[Verdict::Pass as usize],
            strict_drops: c[Verdict::StrictDrop as usize],
            would_drops: c[Verdict::WouldDrop as usize],
            spoofed: c[Verdict::Spoofed as usize],
            policy_denied_egress: c[Verdict::PolicyDeniedEgress as usize],
            policy_denied_ingress: c[Verdict::PolicyDeniedIngress as usize],
        }
    }
}

/// The datapath as `meshctl status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatapathReport {
    /// bpffs directory holding the pins.
    pub pin_dir: String,
    /// `enforce` (strict drops) or `permissive` (would-drops only).
    #[serde(with = "crate::mode::underlay_mode_name")]
    pub underlay_mode: Mode,
    /// The underlay interface carrying `underlay_egress`.
    pub underlay_interface: String,
    /// Whether `underlay_egress` is attached to every guarded interface right now (`None`:
    /// the kernel cannot say).
    pub underlay_attached: Option<bool>,
    /// Every interface carrying `underlay_egress`: the underlay, `--guard-interface`s and
    /// the interfaces holding a default route.
    #[serde(default)]
    pub guarded_interfaces: Vec<String>,
    /// `tcx` (kernel >= 6.6, pinned links) or `netlink` (clsact filters).
    pub attach: crate::mode::Attachment,
    /// Remote pod CIDRs redirected into the tunnel.
    pub remote_cidrs: Vec<String>,
    /// Cluster CIDRs strict mode guards.
    pub cluster_cidrs: Vec<String>,
    /// Local pod addresses.
    pub local_pods: usize,
    /// Pod interfaces carrying `from_pod`.
    pub pod_interfaces: usize,
    /// Entries of the source map: (pod veth, address) pairs `from_pod` lets through.
    #[serde(default)]
    pub pod_sources: usize,
    /// Verdict counters.
    pub counters: VerdictCounters,
}

/// Handle on the loaded datapath.
pub struct Bpf {
    dp: Datapath,
    underlay: String,
    /// Interfaces guarded besides the underlay (they come and go: see [`Bpf::ensure_guards`]).
    guarded: BTreeSet<String>,
    mode: Mode,
    port: u16,
    pods: BTreeSet<String>,
    /// Pod interfaces carrying this meshd's `to_pod`.
    to_pods: BTreeSet<String>,
    /// The sizes the maps were loaded with.
    sizes: MapSizes,
}

/// The map sizes for a cluster of at most `max_nodes` nodes (`--max-nodes`): the per-node
/// maps hold every node at record trust's per-record cap of pod CIDRs per family
/// (`cidrs_per_node`: [`keyexchange::trust::TrustPolicy::max_pod_cidrs_per_family`], larger
/// with `node-subnet` IPAM's blocks).
pub fn map_sizes(max_nodes: u32, cidrs_per_node: usize) -> MapSizes {
    let cap = u32::try_from(cidrs_per_node).unwrap_or(u32::MAX);
    MapSizes::for_nodes(max_nodes, cap)
}

/// [`map_sizes`] with the flow ring buffer of `flow_ring_bytes` (`--flow-ring-bytes`).
pub fn map_sizes_with_flows(
    max_nodes: u32,
    cidrs_per_node: usize,
    flow_ring_bytes: u32,
) -> MapSizes {
    MapSizes {
        flow_ring_bytes,
        ..map_sizes(max_nodes, cidrs_per_node)
    }
}

impl std::fmt::Debug for Bpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpf")
            .field("pin_dir", &self.dp.pin_dir())
            .field("underlay", &self.underlay)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn map_err(what: impl Into<String>) -> impl FnOnce(ebpf_redirect::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError::Map {
        what,
        source: Box::new(source),
    }
}

/// Make sure `pin_dir` can hold pins: its parent must be on bpffs; mounts bpffs on
/// `/sys/fs/bpf` when that is the parent and nothing is mounted there yet.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), BpfError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    let on_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if on_bpffs(parent) {
        return Ok(());
    }
    let fail = |reason: String| BpfError::Bpffs {
        path: pin_dir.to_path_buf(),
        reason,
    };
    if parent != Path::new(BPFFS_ROOT) {
        return Err(fail(format!("{} is not bpffs", parent.display())));
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS_ROOT,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| fail(e.to_string()))?;
    tracing::info!("mounted bpffs on {BPFFS_ROOT}");
    Ok(())
}

impl Bpf {
    /// Load the programs (reusing pinned maps and their contents), set the mode and the
    /// cluster CIDRs, and attach `underlay_egress` to the underlay: strict mode is in force
    /// when this returns.
    pub fn start(
        pin_dir: &Path,
        underlay: &str,
        port: u16,
        mode: Mode,
        clusters: &[IpNet],
        sizes: &MapSizes,
    ) -> Result<Bpf, BpfError> {
        ensure_bpffs(pin_dir)?;
        let dp = Datapath::load_sized(pin_dir, sizes).map_err(|source| BpfError::Load {
            path: pin_dir.to_path_buf(),
            source: Box::new(source),
        })?;
        for r in dp.resized() {
            // Filled before anything below attaches the new programs: no window.
            tracing::info!(
                map = r.map,
                from = r.old_max_entries,
                carried = r.carried,
                dropped = r.dropped,
                "per-node map resized (--max-nodes changed); its entries were carried over"
            );
            if r.dropped > 0 {
                tracing::warn!(map = r.map, dropped = r.dropped, "the resized map is smaller than what it held: the peers left out are refused by the next pass");
            }
        }
        let mut bpf = Bpf {
            dp,
            underlay: underlay.to_string(),
            guarded: BTreeSet::new(),
            mode,
            port,
            pods: BTreeSet::new(),
            to_pods: BTreeSet::new(),
            sizes: *sizes,
        };
        // Mode and port first: CLUSTER entries are only safe to act on with a valid CONFIG.
        bpf.dp
            .set_config(port, mode)
            .map_err(map_err("setting mode and port"))?;
        bpf.sync_clusters(clusters)?;
        bpf.dp
            .attach_underlay_egress(underlay)
            .map_err(|source| BpfError::Attach {
                program: ebpf_redirect::PROG_UNDERLAY_EGRESS,
                interface: underlay.to_string(),
                source: Box::new(source),
            })?;
        tracing::info!(
            pin_dir = %pin_dir.display(),
            %underlay,
            ?mode,
            tcx = ebpf_redirect::tcx_supported(),
            "tc datapath loaded; underlay guard attached"
        );
        Ok(bpf)
    }

    /// The sizes the maps were loaded with.
    pub fn sizes(&self) -> &MapSizes {
        &self.sizes
    }

    /// The underlay mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Change the underlay mode (enforce / permissive) live.
    pub fn set_mode(&mut self, mode: Mode) -> Result<(), BpfError> {
        self.dp
            .set_config(self.port, mode)
            .map_err(map_err("setting mode"))?;
        self.mode = mode;
        Ok(())
    }

    /// Change the WireGuard port whose messages pass the underlay guard (a live
    /// `listen-port` change).
    pub fn set_port(&mut self, port: u16) -> Result<(), BpfError> {
        self.dp
            .set_config(port, self.mode)
            .map_err(map_err("setting the WireGuard port"))?;
        self.port = port;
        Ok(())
    }

    /// The WireGuard port of the second key slot, whose messages pass the guard too.
    pub fn set_second_port(&mut self, port: u16) -> Result<(), BpfError> {
        self.dp
            .set_second_port(port)
            .map_err(map_err("setting the second slot's WireGuard port"))
    }

    /// Tell `underlay_egress` which firewall mark the tunnel's own packets carry.
    pub fn set_mesh_mark(&mut self, mark: u32) -> Result<(), BpfError> {
        self.dp
            .set_mesh_mark(mark)
            .map_err(map_err("setting the mesh mark"))
    }

    fn cluster_entries(&self) -> Result<BTreeMap<IpNet, ClusterMarker>, BpfError> {
        Ok(self
            .dp
            .cluster_entries()
            .map_err(map_err("reading cluster CIDRs"))?
            .into_iter()
            .collect())
    }

    fn set_clusters(&mut self, set: Vec<(IpNet, ClusterMarker)>) -> Result<(), BpfError> {
        for (cidr, marker) in set {
            self.dp
                .set_cluster_marked(cidr, marker)
                .map_err(map_err(format!("adding cluster CIDR {cidr}")))?;
        }
        Ok(())
    }

    /// Bring the configured cluster CIDRs to `clusters`; learned ones stay (see
    /// [`cluster_plan`]).
    fn sync_clusters(&mut self, clusters: &[IpNet]) -> Result<(), BpfError> {
        let configured: BTreeSet<IpNet> = clusters.iter().map(IpNet::trunc).collect();
        let (remove, set) = cluster_plan(&configured, &self.cluster_entries()?);
        self.set_clusters(set)?;
        for cidr in remove {
            self.dp
                .remove_cluster(cidr)
                .map_err(map_err(format!("removing cluster CIDR {cidr}")))?;
        }
        Ok(())
    }

    /// The CIDRs in the guard's cluster map (configured and learned).
    pub fn cluster_cidrs(&self) -> Result<BTreeSet<IpNet>, BpfError> {
        Ok(self.cluster_entries()?.into_keys().collect())
    }

    /// The guard's cluster map, each CIDR with whether it was learned (a peer's pod CIDR)
    /// rather than configured.
    pub fn cluster_learned(&self) -> Result<BTreeMap<IpNet, bool>, BpfError> {
        Ok(self
            .cluster_entries()?
            .into_iter()
            .map(|(c, m)| (c, m == CLUSTER_LEARNED))
            .collect())
    }

    /// Remove `cidr` from the guard's cluster map (an absent one is not an error).
    pub fn unguard_cidr(&mut self, cidr: IpNet) -> Result<(), BpfError> {
        self.dp
            .remove_cluster(cidr)
            .map_err(map_err(format!("removing cluster CIDR {cidr}")))
    }

    /// Guard `cidr` (a peer's pod CIDR) from now on, for as long as the pinned maps live: once
    /// its peer is gone, its traffic is dropped, not sent in clear, even where
    /// `--cluster-cidr` does not cover it (it is removed only once no record claims it and a
    /// configured cluster CIDR covers it: `controller::guard::prunable`). A CIDR already
    /// there is left as it is.
    /// One map update whatever the map holds (not a read of the whole map per CIDR: at
    /// thousands of peers that made a pass quadratic).
    pub fn guard_cidr(&mut self, cidr: IpNet) -> Result<(), BpfError> {
        self.dp
            .learn_cluster(cidr)
            .map_err(map_err(format!("adding cluster CIDR {cidr}")))?;
        Ok(())
    }

    /// The remote-CIDR maps now: CIDR → tunnel ifindex.
    pub fn remotes(&self) -> Result<BTreeMap<IpNet, u32>, BpfError> {
        Ok(self
            .dp
            .remotes()
            .map_err(map_err("reading remote CIDRs"))?
            .into_iter()
            .collect())
    }

    /// Redirect `cidr` into the tunnel device `ifindex`.
    pub fn set_remote(&mut self, cidr: IpNet, ifindex: u32) -> Result<(), BpfError> {
        self.dp
            .set_remote(cidr, ifindex)
            .map_err(map_err(format!("redirecting {cidr} to ifindex {ifindex}")))
    }

    /// Stop redirecting `cidr`.
    pub fn remove_remote(&mut self, cidr: IpNet) -> Result<(), BpfError> {
        self.dp
            .remove_remote(cidr)
            .map_err(map_err(format!("removing remote CIDR {cidr}")))
    }

    /// The local-pod maps now.
    pub fn locals(&self) -> Result<BTreeSet<IpAddr>, BpfError> {
        Ok(self
            .dp
            .locals()
            .map_err(map_err("reading local pods"))?
            .into_iter()
            .collect())
    }

    /// Add a local pod's address to the local-pod maps.
    pub fn add_local(&mut self, ip: IpAddr) -> Result<(), BpfError> {
        self.dp
            .add_local(ip)
            .map_err(map_err(format!("adding local pod {ip}")))
    }

    /// Remove an address from the local-pod maps.
    pub fn remove_local(&mut self, ip: IpAddr) -> Result<(), BpfError> {
        self.dp
            .remove_local(ip)
            .map_err(map_err(format!("removing local pod {ip}")))
    }

    /// The interfaces of `veths` that need no `from_pod` attachment: gone, or attached by
    /// this meshd and still attached. After a start none is, so every attachment is renewed,
    /// which swaps a restarted meshd's freshly loaded program in atomically.
    pub fn from_pod_done(&self, veths: &BTreeSet<String>) -> Result<BTreeSet<String>, BpfError> {
        attachments_done(veths, &self.pods, |veth| {
            Ok(self.dp.from_pod_attached(veth)? != Some(false))
        })
    }

    /// Attach `from_pod` to a pod's host veth (replacing an attachment atomically).
    pub fn attach_from_pod(&mut self, veth: &str) -> Result<(), BpfError> {
        self.dp
            .attach_from_pod(veth)
            .map_err(|source| BpfError::Attach {
                program: ebpf_redirect::PROG_FROM_POD,
                interface: veth.to_string(),
                source: Box::new(source),
            })?;
        self.pods.insert(veth.to_string());
        Ok(())
    }

    /// Remember `veths` as the pod interfaces carrying `from_pod` (the status counts them).
    pub fn record_pod_interfaces(&mut self, veths: &BTreeSet<String>) {
        self.pods = veths.clone();
        self.to_pods = veths.clone();
    }

    /// Interfaces with a pinned link that no longer exist (a pod deleted without a CNI DEL).
    pub fn stale_links(&self) -> Result<BTreeSet<String>, BpfError> {
        let mut out = BTreeSet::new();
        for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
            let pinned = self
                .dp
                .pinned_links(attach)
                .map_err(map_err("listing pinned links"))?;
            out.extend(pinned.into_iter().filter(|i| !interface_exists(i)));
        }
        Ok(out)
    }

    /// Remove the pinned links of interfaces that are gone. Returns how many went.
    pub fn collect_stale_links(&mut self) -> Result<usize, BpfError> {
        let gone = self
            .dp
            .gc_links()
            .map_err(map_err("collecting stale links"))?;
        if !gone.is_empty() {
            tracing::info!(?gone, "removed links of deleted interfaces");
        }
        Ok(gone.len())
    }

    /// The interfaces of the underlay and `others` that need no guard attachment: guarded
    /// now, or (besides the underlay) not to be asked about (gone, or the query failed).
    pub fn guarded_interfaces(
        &self,
        others: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, BpfError> {
        let mut out = BTreeSet::new();
        for ifname in std::iter::once(&self.underlay).chain(others) {
            match self.dp.underlay_egress_attached(ifname) {
                Ok(Some(true)) => {
                    out.insert(ifname.clone());
                }
                Ok(_) => {}
                Err(_) if *ifname != self.underlay => {
                    out.insert(ifname.clone());
                }
                Err(e) => return Err(map_err(format!("querying {ifname}"))(e)),
            }
        }
        Ok(out)
    }

    /// Attach the guard (`underlay_egress`, or `underlay_egress_ip` on a link without a
    /// link-layer header) to `ifname`. The underlay's attachment is required; another
    /// interface that is gone is skipped, one whose link type the guard cannot parse is
    /// reported and skipped. Returns whether it was attached.
    pub fn attach_guard(&mut self, ifname: &str) -> Result<bool, BpfError> {
        match self.dp.attach_underlay_egress(ifname) {
            Ok(framing) => {
                tracing::debug!(interface = %ifname, %framing, "guard attached");
                Ok(true)
            }
            Err(_) if ifname != self.underlay && !interface_exists(ifname) => Ok(false),
            Err(err @ ebpf_redirect::Error::UnsupportedLink { .. }) if ifname != self.underlay => {
                tracing::warn!(%err, "a way out of the node the guard cannot parse stays unguarded");
                Ok(false)
            }
            Err(source) => Err(BpfError::Attach {
                program: ebpf_redirect::PROG_UNDERLAY_EGRESS,
                interface: ifname.to_string(),
                source: Box::new(source),
            }),
        }
    }

    /// Remember which of `others` carry the guard now (the existing ones).
    pub fn record_guarded(&mut self, others: &BTreeSet<String>) {
        let underlay = self.underlay.clone();
        self.guarded = others
            .iter()
            .filter(|i| **i != underlay && guardable(i))
            .cloned()
            .collect();
    }

    /// Make sure `underlay_egress` is attached to the underlay and to every interface of
    /// `others` that exists (someone may have removed it; an interface may be new). Returns
    /// the interfaces where it had to be attached anew.
    pub fn ensure_guards(&mut self, others: &BTreeSet<String>) -> Result<Vec<String>, BpfError> {
        let guarded = self.guarded_interfaces(others)?;
        let mut attached_now = Vec::new();
        let underlay = self.underlay.clone();
        for ifname in std::iter::once(&underlay).chain(others.iter().filter(|i| **i != underlay)) {
            if !guarded.contains(ifname) && self.attach_guard(ifname)? {
                attached_now.push(ifname.clone());
            }
        }
        self.record_guarded(others);
        Ok(attached_now)
    }

    /// Whether `others` (see [`Bpf::ensure_guards`]) holds an existing interface not guarded
    /// yet: a new way out of the node.
    pub fn unguarded(&self, others: &BTreeSet<String>) -> bool {
        others
            .iter()
            .any(|i| *i != self.underlay && !self.guarded.contains(i) && guardable(i))
    }

    /// The verdict counters.
    pub fn counters(&self) -> Result<VerdictCounters, BpfError> {
        Ok(self
            .dp
            .counters()
            .map_err(map_err("reading counters"))?
            .into())
    }

    /// The datapath for `meshctl status`.
    pub fn report(&self) -> Result<DatapathReport, BpfError> {
        let mut remote_cidrs: Vec<String> = self
            .dp
            .remotes()
            .map_err(map_err("reading remote CIDRs"))?
            .into_iter()
            .map(|(c, _)| c.to_string())
            .collect();
        remote_cidrs.sort();
        let mut cluster_cidrs: Vec<String> = self
            .dp
            .clusters()
            .map_err(map_err("reading cluster CIDRs"))?
            .into_iter()
            .map(|c| c.to_string())
            .collect();
        cluster_cidrs.sort();
        Ok(DatapathReport {
            pin_dir: self.dp.pin_dir().display().to_string(),
            underlay_mode: self.mode,
            underlay_interface: self.underlay.clone(),
            underlay_attached: std::iter::once(&self.underlay)
                .chain(&self.guarded)
                .map(|i| self.dp.underlay_egress_attached(i).unwrap_or(None))
                .try_fold(true, |all, a| a.map(|a| all && a)),
            guarded_interfaces: std::iter::once(&self.underlay)
                .chain(&self.guarded)
                .cloned()
                .collect(),
            attach: crate::mode::Attachment::of_this_kernel(),
            remote_cidrs,
            cluster_cidrs,
            local_pods: self
                .dp
                .locals()
                .map_err(map_err("reading local pods"))?
                .len(),
            pod_interfaces: self.pods.len(),
            pod_sources: self
                .dp
                .sources()
                .map_err(map_err("reading the source map"))?
                .len(),
            counters: self.counters()?,
        })
    }

    /// `--cleanup`: detach everything meshd attached and remove every pin.
    pub fn cleanup(mut self) {
        for veth in std::mem::take(&mut self.pods) {
            if let Err(err) = self.dp.detach_from_pod(&veth) {
                tracing::warn!(%err, %veth, "detaching from_pod failed");
            }
        }
        for veth in std::mem::take(&mut self.to_pods) {
            if let Err(err) = self.dp.detach_to_pod(&veth) {
                tracing::warn!(%err, %veth, "detaching to_pod failed");
            }
        }
        if let Err(err) = self.dp.detach_underlay_egress(&self.underlay) {
            tracing::warn!(%err, "detaching underlay_egress failed");
        }
        if let Err(err) = self.dp.detach_all() {
            tracing::warn!(%err, "removing the pins failed");
        }
    }
}

fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Whether `name` exists and has a link type the guard can parse.
fn guardable(name: &str) -> bool {
    match ebpf_redirect::Datapath::link_framing(name) {
        Ok(_) => true,
        Err(ebpf_redirect::Error::UnsupportedLink { .. }) => false,
        Err(_) => interface_exists(name),
    }
}

/// What to do to the cluster map for the configured CIDRs `configured`, given what it holds:
/// configured entries no longer configured go; learned entries stay (a peer's pod CIDR stays
/// guarded after the peer is gone); configured CIDRs are set, re-marked configured if they
/// were learned. Returns (remove, set).
pub fn cluster_plan(
    configured: &BTreeSet<IpNet>,
    present: &BTreeMap<IpNet, ClusterMarker>,
) -> (Vec<IpNet>, Vec<(IpNet, ClusterMarker)>) {
    let remove = present
        .iter()
        .filter(|(c, m)| **m != CLUSTER_LEARNED && !configured.contains(*c))
        .map(|(c, _)| *c)
        .collect();
    let set = configured
        .iter()
        .filter(|c| present.get(*c) != Some(&CLUSTER_CONFIGURED))
        .map(|c| (*c, CLUSTER_CONFIGURED))
        .collect();
    (remove, set)
}

/// The learned entries to add so that every CIDR of `cidrs` is in the cluster map (a CIDR
/// already there, configured or learned, is left as it is).
pub fn learn_plan<'a>(
    cidrs: impl IntoIterator<Item = &'a IpNet>,
    present: &BTreeMap<IpNet, ClusterMarker>,
) -> Vec<(IpNet, ClusterMarker)> {
    cidrs
        .into_iter()
        .map(IpNet::trunc)
        .filter(|c| !present.contains_key(c))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|c| (c, CLUSTER_LEARNED))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn configured_cluster_cidrs_follow_the_configuration_and_learned_ones_stay() {
        let present: BTreeMap<IpNet, ClusterMarker> = [
            (net("10.244.0.0/16"), CLUSTER_CONFIGURED),
            (net("10.96.0.0/12"), CLUSTER_CONFIGURED),
            (net("10.245.3.0/24"), CLUSTER_LEARNED),
            (net("fd00:244:0:3::/64"), CLUSTER_LEARNED),
        ]
        .into();
        let configured: BTreeSet<IpNet> = [
            net("10.244.0.0/16"),
            net("fd00:244:0:3::/64"),
            net("fd00:245::/48"),
        ]
        .into();
        let (remove, set) = cluster_plan(&configured, &present);
        assert_eq!(
            remove,
            vec![net("10.96.0.0/12")],
            "only the unconfigured configured one"
        );
        assert_eq!(
            set,
            vec![
                (net("fd00:244:0:3::/64"), CLUSTER_CONFIGURED),
                (net("fd00:245::/48"), CLUSTER_CONFIGURED),
            ],
            "new configured CIDRs, and a learned one re-marked"
        );
        let after: BTreeMap<IpNet, ClusterMarker> = [
            (net("10.244.0.0/16"), CLUSTER_CONFIGURED),
            (net("10.245.3.0/24"), CLUSTER_LEARNED),
            (net("fd00:244:0:3::/64"), CLUSTER_CONFIGURED),
            (net("fd00:245::/48"), CLUSTER_CONFIGURED),
        ]
        .into();
        assert_eq!(
            cluster_plan(&configured, &after),
            (vec![], vec![]),
            "in step"
        );
        // Nothing configured: the learned entries are still the guard.
        let (remove, set) = cluster_plan(&BTreeSet::new(), &after);
        assert_eq!(
            remove,
            vec![
                net("10.244.0.0/16"),
                net("fd00:244:0:3::/64"),
                net("fd00:245::/48")
            ]
        );
        assert!(set.is_empty());
    }

    #[test]
    fn peers_pod_cidrs_are_learned_once_and_never_over_a_configured_entry() {
        let present: BTreeMap<IpNet, ClusterMarker> = [
            (net("10.244.1.0/24"), CLUSTER_CONFIGURED),
            (net("10.244.2.0/24"), CLUSTER_LEARNED),
        ]
        .into();
        let remotes = [
            net("10.244.1.0/24"),
            net("10.244.2.0/24"),
            net("10.244.3.7/24"),
            net("fd00:244:0:3::/64"),
        ];
        assert_eq!(
            learn_plan(&remotes, &present),
            vec![
                (net("10.244.3.0/24"), CLUSTER_LEARNED),
                (net("fd00:244:0:3::/64"), CLUSTER_LEARNED),
            ]
        );
        assert!(learn_plan(&remotes[..2], &present).is_empty());
    }

    #[test]
    fn strict_only_when_enabled_and_strict() {
        assert_eq!(program_mode(Encryption::Enabled, true), Mode::Enforce);
        assert_eq!(program_mode(Encryption::Enabled, false), Mode::Permissive);
        assert_eq!(program_mode(Encryption::Permissive, true), Mode::Permissive);
        assert_eq!(program_mode(Encryption::Disabled, true), Mode::Permissive);
    }

    #[test]
    fn counters_map_by_verdict_index() {
        let c = VerdictCounters::from([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            (c.spoofed, c.policy_denied_egress, c.policy_denied_ingress),
            (6, 7, 8)
        );
        let json = serde_json::to_value(c).unwrap();
        for (name, value) in [
            ("spoofed", 6),
            ("policy_denied_egress", 7),
            ("policy_denied_ingress", 8),
        ] {
            assert_eq!(json[name], value, "{name}");
        }
        // An older meshd's report (five counters) still reads.
        let old: VerdictCounters = serde_json::from_str(
            r#"{"redirected":1,"local":2,"passed":3,"strict_drops":4,"would_drops":5}"#,
        )
        .unwrap();
        assert_eq!((old.would_drops, old.spoofed), (5, 0));
        assert_eq!(
            (
                c.redirected,
                c.local,
                c.passed,
                c.strict_drops,
                c.would_drops
            ),
            (1, 2, 3, 4, 5)
        );
    }

    #[test]
    fn a_failed_map_update_prints_its_cause_once() {
        let syscall = aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(1), // EPERM
        };
        let loader = ebpf_redirect::Error::from(aya::maps::MapError::from(syscall));
        let err = map_err("setting remote 10.244.2.0/24")(loader);
        let printed = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(
            printed.matches("`bpf_map_update_elem` failed").count(),
            1,
            "{printed}"
        );
        assert!(
            printed.starts_with("setting remote 10.244.2.0/24: `bpf_map_update_elem` failed: "),
            "{printed}"
        );
        assert_eq!(printed.matches("(os error 1)").count(), 1, "{printed}");
    }
}
