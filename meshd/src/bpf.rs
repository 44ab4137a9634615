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
use std::path::{Path, PathBuf};

use ebpf_redirect::{Datapath, MapSizes, Mode};
use ipnet::IpNet;

/// The guard's cluster map: configured and learned cluster CIDRs.
mod clusters;
/// The guard's attachments to the underlay and the other ways out.
mod guard;
/// The pods' part: local-pod and source maps, `from_pod` and `to_pod` on host veths.
mod pod_programs;
/// The verdict counters and the datapath's status report.
mod report;

pub use clusters::{cluster_plan, learn_plan};
pub use report::{CidrList, DatapathReport, VerdictCounters};

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn strict_only_when_enabled_and_strict() {
        assert_eq!(program_mode(Encryption::Enabled, true), Mode::Enforce);
        assert_eq!(program_mode(Encryption::Enabled, false), Mode::Permissive);
        assert_eq!(program_mode(Encryption::Permissive, true), Mode::Permissive);
        assert_eq!(program_mode(Encryption::Disabled, true), Mode::Permissive);
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
