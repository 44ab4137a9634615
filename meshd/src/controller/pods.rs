//! This node's pods as the IPAM store holds them: their addresses (the local-pod map), their
//! host veths (`to_pod`, `from_pod`) and which addresses each veth's pod may send from (the
//! source map, keyed by the veth's ifindex). The only place the controller reads the CNI
//! plugin's store.
//!
//! The CNI plugin updates the maps and attaches the programs itself on ADD; the controller is
//! the backstop (pods created before source validation existed get their entries from it, and
//! entries of veths that are gone are removed). The local-pod and source maps are changed
//! under the store's lock, re-checking the store (and the veths' ifindexes): an ADD or DEL
//! that ran since the pass observed it is never undone. A pass reads the maps before the
//! store ([`read_after`]), so it does not even plan to remove an entry an ADD made while it
//! was observing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::bpf::Bpf;
use ebpf_redirect::PodSource;
use meshd_cni::host_veth_name;
use meshd_cni::ipam::{Entry, Ipam};

/// The pods of the IPAM store: their addresses and host veths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Pods {
    /// The owned addresses.
    pub addresses: BTreeSet<IpAddr>,
    /// The host veths of their owners.
    pub veths: BTreeSet<String>,
    /// Each host veth's pod's addresses.
    pub addresses_by_veth: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl Pods {
    fn of(entries: &[Entry]) -> Pods {
        let owned = || {
            entries
                .iter()
                .filter_map(|e| e.owner.as_ref().map(|o| (e, o)))
        };
        let mut addresses_by_veth: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for (e, o) in owned() {
            addresses_by_veth
                .entry(host_veth_name(&o.container_id, &o.ifname))
                .or_default()
                .insert(e.address);
        }
        Pods {
            addresses: owned().map(|(e, _)| e.address).collect(),
            veths: addresses_by_veth.keys().cloned().collect(),
            addresses_by_veth,
        }
    }

    /// The source entries of each host veth that exists (in this namespace) now: its ifindex
    /// with its pod's addresses. A veth that is gone has none.
    pub fn sources(&self) -> BTreeMap<String, BTreeSet<PodSource>> {
        self.addresses_by_veth
            .iter()
            .filter_map(|(veth, addrs)| {
                let ifindex = nix::net::if_::if_nametoindex(veth.as_str()).ok()?;
                let sources = addrs.iter().map(|addr| PodSource {
                    ifindex,
                    addr: *addr,
                });
                Some((veth.clone(), sources.collect()))
            })
            .collect()
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

/// What `read_maps` returns (the local-pod and source maps: what a pass observes), then the
/// store's pods (what it wants), in that order. The plugin writes the store before the maps,
/// so every entry the maps hold belongs to a pod the store already held when it was read: the
/// plan never takes an entry an ADD made while the pass was observing for a stale one (read
/// the other way round, such an entry was planned for removal, and only the re-check under
/// the store's lock in [`apply_sources`] kept it).
pub(super) fn read_after<T>(
    state_dir: &Path,
    read_maps: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Pods)> {
    let maps = read_maps()?;
    Ok((maps, read(state_dir)?))
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

/// A change to the source map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SourceChange {
    /// Let a pod send from an address on its veth.
    Add(PodSource),
    /// Remove an entry no existing veth's pod holds.
    Remove(PodSource),
}

/// Apply `changes` to the source map under the store's lock, each only while the store and
/// the veths still agree with it. Returns the number of map operations.
pub(super) fn apply_sources(
    state_dir: &Path,
    bpf: &mut Bpf,
    changes: &[SourceChange],
) -> anyhow::Result<usize> {
    with_locked(state_dir, |pods| {
        let now: BTreeSet<PodSource> = pods.sources().into_values().flatten().collect();
        let mut ops = 0;
        for change in changes {
            match *change {
                SourceChange::Add(s) if now.contains(&s) => bpf.add_source(s)?,
                SourceChange::Remove(s) if !now.contains(&s) => bpf.remove_source(s)?,
                _ => continue,
            }
            ops += 1;
        }
        Ok::<usize, crate::bpf::BpfError>(ops)
    })?
    .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_add_that_lands_while_the_maps_are_read_is_in_the_snapshot() {
        let state = tempfile::tempdir().unwrap();
        let cidrs: Vec<ipnet::IpNet> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:244:0:1::/64".parse().unwrap(),
        ];
        let ipam = Ipam::open(ipam_dir(state.path()), &cidrs).unwrap();
        ipam.allocate("before", "eth0").unwrap();
        // The pass reads the maps; meanwhile an ADD allocates (and then writes its entries).
        let mut added = Vec::new();
        let (observed, pods) = read_after(state.path(), || {
            added = ipam.allocate("during", "eth0").unwrap();
            Ok("maps")
        })
        .unwrap();
        assert_eq!(observed, "maps");
        assert_eq!(added.len(), 2);
        for addr in &added {
            assert!(pods.addresses.contains(addr), "{addr} missing: {pods:?}");
        }
        let veth = host_veth_name("during", "eth0");
        assert_eq!(
            pods.addresses_by_veth.get(&veth),
            Some(&added.iter().copied().collect())
        );
        assert_eq!(pods.veths.len(), 2);
        // A failed map read fails the observation; the store is not read.
        let failed = read_after(state.path(), || -> anyhow::Result<()> {
            anyhow::bail!("reading the source map")
        });
        assert!(failed.is_err());
    }
}
