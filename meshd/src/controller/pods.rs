//! This node's pods as the IPAM store holds them: their addresses (the local-pod map) and
//! their host veths (`from_pod`). The only place the controller reads the CNI plugin's store.
//!
//! The CNI plugin updates the maps and attaches `from_pod` itself on ADD; the controller is
//! the backstop. The local-pod map is changed under the store's lock, re-checking the store:
//! an ADD or DEL that ran since the pass observed it is never undone.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::bpf::Bpf;
use meshd_cni::host_veth_name;
use meshd_cni::ipam::{Entry, Ipam};

/// The pods of the IPAM store: their addresses and host veths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Pods {
    /// The owned addresses.
    pub addresses: BTreeSet<IpAddr>,
    /// The host veths of their owners.
    pub veths: BTreeSet<String>,
}

impl Pods {
    fn of(entries: &[Entry]) -> Pods {
        let owned = || {
            entries
                .iter()
                .filter_map(|e| e.owner.as_ref().map(|o| (e, o)))
        };
        Pods {
            addresses: owned().map(|(e, _)| e.address).collect(),
            veths: owned()
                .map(|(_, o)| host_veth_name(&o.container_id, &o.ifname))
                .collect(),
        }
    }
}

/// The IPAM store's directory in the state directory.
pub(super) fn ipam_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ipam")
}

/// Run `f` on the store's pods under the store's lock (no pods when there is no store).
fn with_locked<T>(state_dir: &Path, f: impl FnOnce(&Pods) -> T) -> anyhow::Result<T> {
    let dir = ipam_dir(state_dir);
    if !dir.exists() {
        return Ok(f(&Pods::default()));
    }
    Ipam::open(&dir, &[])
        .and_then(|i| i.with_locked_list(|entries| f(&Pods::of(entries))))
        .with_context(|| format!("reading the IPAM store {}", dir.display()))
}

/// The store's pods now.
pub(super) fn read(state_dir: &Path) -> anyhow::Result<Pods> {
    with_locked(state_dir, Pods::clone)
}

/// A change to the local-pod map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LocalChange {
    /// Add a pod's address.
    Add(IpAddr),
    /// Remove an address no pod owns.
    Remove(IpAddr),
}

/// Apply `changes` to the local-pod map under the store's lock, each only while the store
/// still agrees with it. Returns the number of map operations.
pub(super) fn apply_locals(
    state_dir: &Path,
    bpf: &mut Bpf,
    changes: &[LocalChange],
) -> anyhow::Result<usize> {
    with_locked(state_dir, |pods| {
        let mut ops = 0;
        for change in changes {
            match *change {
                LocalChange::Add(ip) if pods.addresses.contains(&ip) => bpf.add_local(ip)?,
                LocalChange::Remove(ip) if !pods.addresses.contains(&ip) => bpf.remove_local(ip)?,
                _ => continue,
            }
            ops += 1;
        }
        Ok::<usize, crate::bpf::BpfError>(ops)
    })?
    .map_err(Into::into)
}
