//! A pod's part of the pinned datapath: `from_pod` on its host veth's ingress, `to_pod` on its
//! egress, its addresses in the local-pod maps and, per host veth, in the source maps.
//! [`PodDatapath`] opens just those pins with plain `bpf(2)` calls (no object parsing, no
//! feature probing), for the CNI plugin, which runs once per pod; [`Datapath`] (the daemon's
//! handle) attaches and checks through the same functions.
//!
//! Each attachment is a `cls_bpf` filter ([`crate::cls_bpf`]), which belongs to the interface.
//! It is recorded by pinning the attached program at `link_ingress_<ifname>` (`from_pod`) or
//! `link_egress_<ifname>` (`to_pod`) in the pin directory: the records are what
//! [`Datapath::pinned_links`], [`Datapath::gc_links`] and [`Datapath::detach_all`] go by, as
//! they did when the ingress pin was a TCX link. The plugin and the daemon attach to one veth
//! concurrently: a record is replaced in place, never missing, under a lock that makes the last
//! attacher the last recorder ([`crate::records`]). A TCX link left there by an older meshd is
//! unpinned (which detaches it) before the filter goes on, so `from_pod` never runs twice on
//! one interface.
//!
//! Source entries (`SOURCE_V4`/`SOURCE_V6`, key: host veth ifindex and address) must be
//! written before `from_pod` goes on: an interface without entries drops every IP packet of
//! its pod except IPv6 link-local and unspecified sources (fail closed).
//!
//! [`Datapath`]: crate::Datapath
//! [`Datapath::pinned_links`]: crate::Datapath::pinned_links
//! [`Datapath::gc_links`]: crate::Datapath::gc_links
//! [`Datapath::detach_all`]: crate::Datapath::detach_all

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use ebpf_redirect_common::{
    map_names as mn, SourceKeyV4, SourceKeyV6, MAX_SOURCE_V4, MAX_SOURCE_V6, SOURCE_POD,
};

use crate::cls_bpf::{self, Hook};
use crate::records;
use crate::{Error, Result, PROG_FROM_POD, PROG_TO_POD};

fn tc_error<'a>(step: &'static str, ifname: &'a str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Tc {
        step,
        ifname: ifname.to_string(),
        source,
    }
}

/// A pod program and where it goes.
#[derive(Clone, Copy)]
pub(crate) struct PodProgram<'a> {
    pub fd: BorrowedFd<'a>,
    pub hook: Hook,
}

impl PodProgram<'_> {
    fn name(&self) -> &'static str {
        match self.hook {
            Hook::Ingress => PROG_FROM_POD,
            Hook::Egress => PROG_TO_POD,
        }
    }

    fn record(&self, pin_dir: &Path, ifname: &str) -> PathBuf {
        match self.hook {
            Hook::Ingress => records::ingress(pin_dir, ifname),
            Hook::Egress => records::egress(pin_dir, ifname),
        }
    }
}

/// Attaches `progs` to their hooks of `ifname`, in order, and records them under `pin_dir`,
/// replacing the records in place under the records' lock ([`records`]): a concurrent
/// attacher (the plugin or the daemon) never sees them missing, and the last to attach is the
/// last to record.
pub(crate) fn attach(progs: &[PodProgram<'_>], pin_dir: &Path, ifname: &str) -> Result<()> {
    let index = cls_bpf::ifindex(ifname).map_err(tc_error("looking up", ifname))?;
    let _records = records::lock(pin_dir)?;
    for prog in progs {
        // The ingress record may be an older meshd's TCX link: unpinning it detaches it.
        records::remove_if_link(&prog.record(pin_dir, ifname))?;
    }
    let filters: Vec<_> = progs.iter().map(|p| (p.hook, p.fd, p.name())).collect();
    let step = match progs {
        [one] if one.hook == Hook::Egress => "attaching to_pod's filter to",
        [one] if one.hook == Hook::Ingress => "attaching from_pod's filter to",
        _ => "attaching the pod programs' filters to",
    };
    cls_bpf::attach(index, &filters).map_err(tc_error(step, ifname))?;
    for prog in progs {
        records::replace(prog.fd, &prog.record(pin_dir, ifname))?;
    }
    Ok(())
}

/// Detaches the program of `hook` from `ifname` (a missing interface or filter is not an
/// error) and drops its record, under the records' lock.
pub(crate) fn detach(pin_dir: &Path, ifname: &str, hook: Hook) -> Result<()> {
    let (step, record) = match hook {
        Hook::Ingress => (
            "detaching from_pod's filter from",
            records::ingress(pin_dir, ifname),
        ),
        Hook::Egress => (
            "detaching to_pod's filter from",
            records::egress(pin_dir, ifname),
        ),
    };
    let _records = records::lock(pin_dir)?;
    match cls_bpf::ifindex(ifname) {
        Ok(index) => cls_bpf::detach(index, hook).map_err(tc_error(step, ifname))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(tc_error("looking up", ifname)(e)),
    }
    records::remove(&record)
}

/// Drops both records of `ifname` if the interface is gone, under the records' lock. A pod's
/// DEL calls it after deleting the host veth: an attacher (the daemon's backstop) that
/// attached between the DEL's detach and the deletion recorded the veth again. After this no
/// attacher can record it (attaching to a deleted interface fails before its record). A veth
/// that still exists (owned by another pod) keeps its records.
pub fn forget_pod_records(pin_dir: &Path, ifname: &str) -> Result<()> {
    let _records = records::lock(pin_dir)?;
    match cls_bpf::ifindex(ifname) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            records::remove(&records::ingress(pin_dir, ifname))?;
            records::remove(&records::egress(pin_dir, ifname))
        }
        Err(e) => Err(tc_error("looking up", ifname)(e)),
    }
}

/// Whether the program `prog` is meshd's filter on `hook` of `ifname` (false when the
/// interface is gone).
pub(crate) fn attached(prog: BorrowedFd<'_>, ifname: &str, hook: Hook) -> Result<bool> {
    let index = match cls_bpf::ifindex(ifname) {
        Ok(index) => index,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(tc_error("looking up", ifname)(e)),
    };
    let attached = cls_bpf::attached_prog_id(index, hook)
        .map_err(tc_error("listing the filters of", ifname))?;
    let name = match hook {
        Hook::Ingress => PROG_FROM_POD,
        Hook::Egress => PROG_TO_POD,
    };
    let ours = cls_bpf::prog_id(prog).map_err(|source| Error::Pinned {
        path: PathBuf::from(name),
        source,
    })?;
    Ok(attached == Some(ours))
}

/// Whether the record of `hook` on `ifname` under `pin_dir` holds the program `prog` (a
/// plugin's ADD, which attaches the daemon's own pinned programs, leaves exactly that).
pub(crate) fn recorded(
    prog: BorrowedFd<'_>,
    pin_dir: &Path,
    ifname: &str,
    hook: Hook,
) -> Result<bool> {
    let record = match hook {
        Hook::Ingress => records::ingress(pin_dir, ifname),
        Hook::Egress => records::egress(pin_dir, ifname),
    };
    let ours = cls_bpf::prog_id(prog).map_err(|source| Error::Pinned {
        path: record.clone(),
        source,
    })?;
    records::holds(&record, ours)
}

/// An address a pod may send from, on its host veth: a `SOURCE_V4`/`SOURCE_V6` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodSource {
    /// Ifindex of the pod's host-side veth.
    pub ifindex: u32,
    /// The pod's address.
    pub addr: IpAddr,
}

impl PodSource {
    /// The map key's bytes (as the BPF program reads them) and the map's name.
    pub(crate) fn key(&self) -> (Vec<u8>, &'static str) {
        let mut key = self.ifindex.to_ne_bytes().to_vec();
        match self.addr {
            IpAddr::V4(a) => {
                key.extend_from_slice(&a.octets());
                (key, mn::SOURCE_V4)
            }
            IpAddr::V6(a) => {
                key.extend_from_slice(&a.octets());
                (key, mn::SOURCE_V6)
            }
        }
    }

    /// The entry a map key of `SOURCE_V4`/`SOURCE_V6` stands for (`None`: wrong length).
    pub(crate) fn from_key(key: &[u8]) -> Option<Self> {
        let ifindex = u32::from_ne_bytes(key.get(..4)?.try_into().ok()?);
        let addr = match key.len() {
            8 => IpAddr::from(<[u8; 4]>::try_from(&key[4..]).ok()?),
            20 => IpAddr::from(<[u8; 16]>::try_from(&key[4..]).ok()?),
            _ => return None,
        };
        Some(Self { ifindex, addr })
    }
}

// The byte layout above is the ABI's.
const _: () = assert!(std::mem::size_of::<SourceKeyV4>() == 8);
const _: () = assert!(std::mem::size_of::<SourceKeyV6>() == 20);

/// The source maps, opened from their pins.
#[derive(Debug)]
pub(crate) struct SourceMaps {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl SourceMaps {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            v4: get_pin(&dir.join(mn::SOURCE_V4))?,
            v6: get_pin(&dir.join(mn::SOURCE_V6))?,
        })
    }

    fn fd(&self, name: &str) -> BorrowedFd<'_> {
        if name == mn::SOURCE_V4 {
            self.v4.as_fd()
        } else {
            self.v6.as_fd()
        }
    }

    /// Lets the pod on `source.ifindex` send from `source.addr`.
    pub(crate) fn add(&self, source: &PodSource) -> Result<()> {
        let (key, map) = source.key();
        cls_bpf::map_update(self.fd(map), &key, &SOURCE_POD.to_ne_bytes())
            .map_err(|source| Error::MapEntry { map, source })
    }

    /// Removes an entry; a missing one is not an error.
    pub(crate) fn remove(&self, source: &PodSource) -> Result<()> {
        let (key, map) = source.key();
        cls_bpf::map_delete(self.fd(map), &key).map_err(|source| Error::MapEntry { map, source })
    }

    /// Whether the entry is there.
    pub(crate) fn contains(&self, source: &PodSource) -> Result<bool> {
        let (key, map) = source.key();
        cls_bpf::map_contains(self.fd(map), &key, std::mem::size_of::<u32>())
            .map_err(|source| Error::MapEntry { map, source })
    }

    /// Every entry of both maps.
    pub(crate) fn list(&self) -> Result<Vec<PodSource>> {
        let mut out = Vec::new();
        for (map, size, limit) in [
            (mn::SOURCE_V4, 8, MAX_SOURCE_V4),
            (mn::SOURCE_V6, 20, MAX_SOURCE_V6),
        ] {
            // Twice the size: room for a walk restarted by a concurrent delete.
            let keys = cls_bpf::map_keys(self.fd(map), size, 2 * limit as usize)
                .map_err(|source| Error::MapEntry { map, source })?;
            out.extend(keys.iter().filter_map(|k| PodSource::from_key(k)));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Removes the entries of a pod's `addrs`: on host veth `ifindex` when it is known (one
    /// delete per address), else on whichever interface holds them (one walk over the maps:
    /// the veth is gone, its ifindex with it). Returns how many entries it removed or tried.
    pub(crate) fn remove_pod(&self, ifindex: Option<u32>, addrs: &[IpAddr]) -> Result<usize> {
        let stale: Vec<PodSource> = match ifindex {
            Some(ifindex) => addrs
                .iter()
                .map(|addr| PodSource {
                    ifindex,
                    addr: *addr,
                })
                .collect(),
            None => self
                .list()?
                .into_iter()
                .filter(|s| addrs.contains(&s.addr))
                .collect(),
        };
        for s in &stale {
            self.remove(s)?;
        }
        Ok(stale.len())
    }
}

fn get_pin(path: &Path) -> Result<OwnedFd> {
    cls_bpf::obj_get(path).map_err(|source| Error::Pinned {
        path: path.to_path_buf(),
        source,
    })
}

/// The pins a pod's ADD, DEL and CHECK need: the pod programs, the local-pod maps and the
/// source maps.
#[derive(Debug)]
pub struct PodDatapath {
    pin_dir: PathBuf,
    from_pod: OwnedFd,
    to_pod: OwnedFd,
    local_v4: OwnedFd,
    local_v6: OwnedFd,
    sources: SourceMaps,
}

/// The value of a local-pod map entry.
const LOCAL: u32 = 1;

impl PodDatapath {
    /// Opens the pins the daemon made under `pin_dir`.
    pub fn open(pin_dir: impl AsRef<Path>) -> Result<Self> {
        let dir = pin_dir.as_ref();
        Ok(Self {
            pin_dir: dir.to_path_buf(),
            from_pod: get_pin(&dir.join(format!("prog_{PROG_FROM_POD}")))?,
            to_pod: get_pin(&dir.join(format!("prog_{PROG_TO_POD}")))?,
            local_v4: get_pin(&dir.join(mn::LOCAL_V4))?,
            local_v6: get_pin(&dir.join(mn::LOCAL_V6))?,
            sources: SourceMaps::open(dir)?,
        })
    }

    fn local_map(&self, ip: &IpAddr) -> (BorrowedFd<'_>, &'static str) {
        match ip {
            IpAddr::V4(_) => (self.local_v4.as_fd(), mn::LOCAL_V4),
            IpAddr::V6(_) => (self.local_v6.as_fd(), mn::LOCAL_V6),
        }
    }

    fn key(ip: &IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// Marks `ip` as a local pod address.
    pub fn add_local(&mut self, ip: IpAddr) -> Result<()> {
        let (map, name) = self.local_map(&ip);
        cls_bpf::map_update(map, &Self::key(&ip), &LOCAL.to_ne_bytes())
            .map_err(|source| Error::MapEntry { map: name, source })
    }

    /// Unmarks a local pod address. A missing entry is not an error.
    pub fn remove_local(&mut self, ip: IpAddr) -> Result<()> {
        let (map, name) = self.local_map(&ip);
        cls_bpf::map_delete(map, &Self::key(&ip))
            .map_err(|source| Error::MapEntry { map: name, source })
    }

    /// Whether `ip` is marked local.
    pub fn is_local(&self, ip: IpAddr) -> Result<bool> {
        let (map, name) = self.local_map(&ip);
        cls_bpf::map_contains(map, &Self::key(&ip), std::mem::size_of::<u32>())
            .map_err(|source| Error::MapEntry { map: name, source })
    }

    /// Lets the pod behind host veth `source.ifindex` send from `source.addr`.
    pub fn add_source(&mut self, source: PodSource) -> Result<()> {
        self.sources.add(&source)
    }

    /// Whether the source entry is there.
    pub fn has_source(&self, source: PodSource) -> Result<bool> {
        self.sources.contains(&source)
    }

    /// Every source entry.
    pub fn sources(&self) -> Result<Vec<PodSource>> {
        self.sources.list()
    }

    /// Removes the source entries of the pod's `addrs` on host veth `ifindex`, or on any
    /// interface when the veth (and so its ifindex) is gone. Returns how many it removed or
    /// tried.
    pub fn remove_pod_sources(&mut self, ifindex: Option<u32>, addrs: &[IpAddr]) -> Result<usize> {
        self.sources.remove_pod(ifindex, addrs)
    }

    /// Attaches `to_pod` (egress) and then `from_pod` (ingress) to `ifname`, as
    /// [`crate::Datapath::attach_to_pod`] and [`crate::Datapath::attach_from_pod`] do, over
    /// one netlink socket. The pod's source entries must be in place first.
    pub fn attach_pod(&mut self, ifname: &str) -> Result<()> {
        attach(
            &[
                PodProgram {
                    fd: self.to_pod.as_fd(),
                    hook: Hook::Egress,
                },
                PodProgram {
                    fd: self.from_pod.as_fd(),
                    hook: Hook::Ingress,
                },
            ],
            &self.pin_dir,
            ifname,
        )
    }

    /// Detaches `from_pod` and `to_pod` from `ifname` (missing ones are not an error).
    pub fn detach_pod(&mut self, ifname: &str) -> Result<()> {
        detach(&self.pin_dir, ifname, Hook::Ingress)?;
        detach(&self.pin_dir, ifname, Hook::Egress)
    }

    /// Whether `from_pod` runs on `ifname`, asking the kernel.
    pub fn from_pod_attached(&self, ifname: &str) -> Result<bool> {
        attached(self.from_pod.as_fd(), ifname, Hook::Ingress)
    }

    /// Whether `to_pod` runs on `ifname`, asking the kernel.
    pub fn to_pod_attached(&self, ifname: &str) -> Result<bool> {
        attached(self.to_pod.as_fd(), ifname, Hook::Egress)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn source_keys_are_ifindex_then_address_bytes() {
        let v4 = PodSource {
            ifindex: 7,
            addr: "10.244.1.2".parse().unwrap(),
        };
        let (key, map) = v4.key();
        assert_eq!(map, mn::SOURCE_V4);
        assert_eq!(&key[..4], &7u32.to_ne_bytes());
        assert_eq!(&key[4..], &[10, 244, 1, 2]);
        assert_eq!(PodSource::from_key(&key), Some(v4));
        let v6 = PodSource {
            ifindex: 9,
            addr: "fd00::2".parse().unwrap(),
        };
        let (key, map) = v6.key();
        assert_eq!((map, key.len()), (mn::SOURCE_V6, 20));
        assert_eq!(PodSource::from_key(&key), Some(v6));
        assert_eq!(PodSource::from_key(&key[..10]), None);
    }
}
