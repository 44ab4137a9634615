//! A pod's part of the pinned datapath: `from_pod` on its host veth and its addresses in the
//! local-pod maps. [`PodDatapath`] opens just those pins with plain `bpf(2)` calls (no object
//! parsing, no feature probing), for the CNI plugin, which runs once per pod; [`Datapath`]
//! (the daemon's handle) attaches and checks through the same functions.
//!
//! The attachment is a `cls_bpf` filter ([`crate::cls_bpf`]), which belongs to the interface.
//! It is recorded by pinning the attached program at `link_ingress_<ifname>` in the pin
//! directory: the record is what [`Datapath::pinned_links`], [`Datapath::gc_links`] and
//! [`Datapath::detach_all`] go by, as they did when that pin was a TCX link. A TCX link left
//! there by an older meshd is unpinned (which detaches it) before the filter goes on, so
//! `from_pod` never runs twice on one interface.
//!
//! [`Datapath`]: crate::Datapath
//! [`Datapath::pinned_links`]: crate::Datapath::pinned_links
//! [`Datapath::gc_links`]: crate::Datapath::gc_links
//! [`Datapath::detach_all`]: crate::Datapath::detach_all

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use ebpf_redirect_common::map_names as mn;

use crate::{cls_bpf, Error, Result, PROG_FROM_POD};

/// The pin recording `from_pod`'s attachment to `ifname`.
pub(crate) fn ingress_record(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("link_ingress_{ifname}"))
}

fn tc_error<'a>(step: &'static str, ifname: &'a str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Tc {
        step,
        ifname: ifname.to_string(),
        source,
    }
}

fn remove_record(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Attaches `prog` (`from_pod`) to the ingress of `ifname` and records it under `pin_dir`.
pub(crate) fn attach_from_pod(prog: BorrowedFd<'_>, pin_dir: &Path, ifname: &str) -> Result<()> {
    let index = cls_bpf::ifindex(ifname).map_err(tc_error("looking up", ifname))?;
    let record = ingress_record(pin_dir, ifname);
    // The record may be an older meshd's TCX link: unpinning it detaches it.
    remove_record(&record)?;
    cls_bpf::attach_ingress(index, prog, PROG_FROM_POD)
        .map_err(tc_error("attaching from_pod's filter to", ifname))?;
    match cls_bpf::obj_pin(prog, &record) {
        // Recorded concurrently by the other attacher (the plugin or the daemon).
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map_err(|source| Error::Pinned {
            path: record,
            source,
        }),
    }
}

/// Detaches `from_pod` from `ifname` (a missing interface or filter is not an error) and
/// drops the record.
pub(crate) fn detach_from_pod(pin_dir: &Path, ifname: &str) -> Result<()> {
    match cls_bpf::ifindex(ifname) {
        Ok(index) => cls_bpf::detach_ingress(index)
            .map_err(tc_error("detaching from_pod's filter from", ifname))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(tc_error("looking up", ifname)(e)),
    }
    remove_record(&ingress_record(pin_dir, ifname))
}

/// Whether the program `prog` is meshd's filter on the ingress of `ifname` (false when the
/// interface is gone).
pub(crate) fn from_pod_attached(prog: BorrowedFd<'_>, ifname: &str) -> Result<bool> {
    let index = match cls_bpf::ifindex(ifname) {
        Ok(index) => index,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(tc_error("looking up", ifname)(e)),
    };
    let attached =
        cls_bpf::ingress_prog_id(index).map_err(tc_error("listing the filters of", ifname))?;
    let ours = cls_bpf::prog_id(prog).map_err(|source| Error::Pinned {
        path: PathBuf::from(PROG_FROM_POD),
        source,
    })?;
    Ok(attached == Some(ours))
}

/// The pins a pod's ADD, DEL and CHECK need: `from_pod` and the local-pod maps.
#[derive(Debug)]
pub struct PodDatapath {
    pin_dir: PathBuf,
    from_pod: OwnedFd,
    local_v4: OwnedFd,
    local_v6: OwnedFd,
}

/// The value of a local-pod map entry.
const LOCAL: u32 = 1;

impl PodDatapath {
    /// Opens the pins the daemon made under `pin_dir`.
    pub fn open(pin_dir: impl AsRef<Path>) -> Result<Self> {
        let dir = pin_dir.as_ref();
        let get = |name: &str| {
            let path = dir.join(name);
            cls_bpf::obj_get(&path).map_err(|source| Error::Pinned { path, source })
        };
        Ok(Self {
            pin_dir: dir.to_path_buf(),
            from_pod: get(&format!("prog_{PROG_FROM_POD}"))?,
            local_v4: get(mn::LOCAL_V4)?,
            local_v6: get(mn::LOCAL_V6)?,
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

    /// Attaches `from_pod` to `ifname`; see [`crate::Datapath::attach_from_pod`].
    pub fn attach_from_pod(&mut self, ifname: &str) -> Result<()> {
        attach_from_pod(self.from_pod.as_fd(), &self.pin_dir, ifname)
    }

    /// Detaches `from_pod` from `ifname`; see [`crate::Datapath::detach_from_pod`].
    pub fn detach_from_pod(&mut self, ifname: &str) -> Result<()> {
        detach_from_pod(&self.pin_dir, ifname)
    }

    /// Whether `from_pod` runs on `ifname`, asking the kernel.
    pub fn from_pod_attached(&self, ifname: &str) -> Result<bool> {
        from_pod_attached(self.from_pod.as_fd(), ifname)
    }
}
