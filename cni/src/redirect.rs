//! The pod's part of the tc eBPF datapath: on ADD the pod's addresses enter the local-pod map
//! and, when the configuration asks for the redirect, the source maps for its host veth's
//! ifindex (the addresses `from_pod` lets it send from), then `to_pod` and `from_pod` are
//! attached to the host veth, in that order: `from_pod` drops every IP packet of a pod
//! without source entries. DEL undoes all of it (the filters go with the veth); CHECK verifies
//! it. The programs and maps are the ones meshd pinned under the configuration's `bpfPinDir`:
//! the plugin never loads programs itself, and opens only the pins it needs ([`PodDatapath`]:
//! the pod programs, the local-pod and source maps, no feature probing).

use std::net::IpAddr;
use std::path::Path;

use ebpf_redirect::{PodDatapath, PodSource};

use super::CniError;

fn open(pin_dir: &Path) -> Result<PodDatapath, CniError> {
    PodDatapath::open(pin_dir).map_err(|e| {
        CniError::TryAgain(format!(
            "meshd's tc datapath is not loaded at {} (is meshd running on this node?): {e}",
            pin_dir.display()
        ))
    })
}

/// Whether meshd's pinned datapath can be opened (STATUS).
pub fn available(pin_dir: &Path) -> Result<(), CniError> {
    open(pin_dir).map(drop)
}

/// A datapath failure as the plugin's I/O error, `what: error: cause: ...` (each once).
fn io(what: String) -> impl FnOnce(ebpf_redirect::Error) -> CniError {
    move |e| {
        let mut text = format!("{what}: {e}");
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        CniError::Io(text)
    }
}

/// The ifindex of `host_veth` in the node's namespace (`None`: it is gone).
fn host_ifindex(host_veth: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(host_veth).ok()
}

/// ADD: mark `addrs` local and, with `redirect`, let the pod send from `addrs` on
/// `host_veth` and attach `to_pod` and `from_pod` to it. `replaced` is the ifindex of the host
/// veth an earlier attempt left (deleted by this ADD): its source entries go.
pub fn attach(
    pin_dir: &Path,
    host_veth: &str,
    addrs: &[IpAddr],
    redirect: bool,
    replaced: Option<u32>,
) -> Result<(), CniError> {
    let mut dp = open(pin_dir)?;
    if let Some(old) = replaced {
        dp.remove_pod_sources(Some(old), addrs).map_err(io(format!(
            "removing the source entries of the replaced {host_veth}"
        )))?;
    }
    for addr in addrs {
        dp.add_local(*addr)
            .map_err(io(format!("adding {addr} to the local-pod map")))?;
    }
    if redirect {
        let ifindex = host_ifindex(host_veth).ok_or_else(|| {
            CniError::Io(format!(
                "host veth {host_veth} vanished before from_pod went on"
            ))
        })?;
        for addr in addrs {
            dp.add_source(PodSource {
                ifindex,
                addr: *addr,
            })
            .map_err(io(format!(
                "adding {addr} on {host_veth} to the source map"
            )))?;
        }
        dp.attach_pod(host_veth)
            .map_err(io(format!("attaching to_pod and from_pod to {host_veth}")))?;
    }
    Ok(())
}

/// GC and a failed ADD: forget `addrs` and detach from `host_veth`. Idempotent; a datapath that is gone
/// (meshd removed it with `--cleanup`) leaves nothing to undo.
pub fn detach(pin_dir: &Path, host_veth: &str, addrs: &[IpAddr]) -> Result<(), CniError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let mut dp = open(pin_dir)?;
    forget_in(&mut dp, host_veth, addrs)?;
    dp.detach_pod(host_veth).map_err(io(format!(
        "detaching to_pod and from_pod from {host_veth}"
    )))
}

/// DEL, before the host veth goes: forget `addrs` in the local-pod map and the source
/// entries of `host_veth`. The programs are not detached: deleting the veth takes its filters
/// with it (and a veth another pod owns keeps its own); their records go with
/// [`forget_deleted`]. A datapath that is gone leaves nothing to undo.
pub fn forget_addresses(pin_dir: &Path, host_veth: &str, addrs: &[IpAddr]) -> Result<(), CniError> {
    // A pod with no addresses (a repeated DEL) has no entries: without its veth, looking for
    // them would walk both source maps.
    if addrs.is_empty() || !pin_dir.exists() {
        return Ok(());
    }
    forget_in(&mut open(pin_dir)?, host_veth, addrs)
}

/// Forget `addrs` in `dp`'s local-pod map and the source entries of `host_veth`.
fn forget_in(dp: &mut PodDatapath, host_veth: &str, addrs: &[IpAddr]) -> Result<(), CniError> {
    for addr in addrs {
        dp.remove_local(*addr)
            .map_err(io(format!("removing {addr} from the local-pod map")))?;
    }
    dp.remove_pod_sources(host_ifindex(host_veth), addrs)
        .map_err(io(format!("removing the source entries of {host_veth}")))?;
    Ok(())
}

/// After DEL deleted `host_veth`: drop its records, which the daemon's backstop may have
/// written again between [`forget_addresses`] and the deletion (nothing when the datapath is gone, or
/// the veth still exists because another pod owns it).
pub fn forget_deleted(pin_dir: &Path, host_veth: &str) -> Result<(), CniError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    ebpf_redirect::forget_pod_records(pin_dir, host_veth).map_err(io(format!(
        "dropping the attachment records of the deleted {host_veth}"
    )))
}

/// CHECK: `addrs` are in the local-pod map and, with `redirect`, `from_pod` runs on
/// `host_veth` (asking the kernel).
pub fn check(
    pin_dir: &Path,
    host_veth: &str,
    addrs: &[IpAddr],
    redirect: bool,
) -> Result<(), CniError> {
    let dp = open(pin_dir)?;
    for addr in addrs {
        if !dp
            .is_local(*addr)
            .map_err(io(format!("looking {addr} up in the local-pod map")))?
        {
            return Err(CniError::Io(format!(
                "CHECK failed: {addr} is not in the local-pod map"
            )));
        }
    }
    if !redirect {
        return Ok(());
    }
    let Some(ifindex) = host_ifindex(host_veth) else {
        return Err(CniError::Io(format!(
            "CHECK failed: host veth {host_veth} is missing"
        )));
    };
    for addr in addrs {
        let source = PodSource {
            ifindex,
            addr: *addr,
        };
        if !dp.has_source(source).map_err(io(format!(
            "looking {addr} on {host_veth} up in the source map"
        )))? {
            return Err(CniError::Io(format!(
                "CHECK failed: {addr} is not in the source map for {host_veth}"
            )));
        }
    }
    for (program, attached) in [
        ("to_pod", dp.to_pod_attached(host_veth)),
        ("from_pod", dp.from_pod_attached(host_veth)),
    ] {
        if !attached.map_err(io(format!("querying {host_veth}")))? {
            return Err(CniError::Io(format!(
                "CHECK failed: {program} is not attached to {host_veth}"
            )));
        }
    }
    Ok(())
}
