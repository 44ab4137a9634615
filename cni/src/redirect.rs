//! The pod's part of the tc eBPF datapath: on ADD the pod's addresses enter the local-pod map
//! and `from_pod` is attached to its host veth (when the configuration asks for the redirect);
//! DEL undoes both; CHECK verifies them. The programs and maps are the ones meshd pinned under
//! the configuration's `bpfPinDir`: the plugin never loads programs itself, and opens only the
//! pins it needs ([`PodDatapath`]: `from_pod` and the local-pod maps, no feature probing).

use std::net::IpAddr;
use std::path::Path;

use ebpf_redirect::PodDatapath;

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

/// ADD: mark `addrs` local and, with `redirect`, attach `from_pod` to `host_veth`.
pub fn attach(
    pin_dir: &Path,
    host_veth: &str,
    addrs: &[IpAddr],
    redirect: bool,
) -> Result<(), CniError> {
    let mut dp = open(pin_dir)?;
    for addr in addrs {
        dp.add_local(*addr)
            .map_err(io(format!("adding {addr} to the local-pod map")))?;
    }
    if redirect {
        dp.attach_from_pod(host_veth)
            .map_err(io(format!("attaching from_pod to {host_veth}")))?;
    }
    Ok(())
}

/// DEL: forget `addrs` and detach from `host_veth`. Idempotent; a datapath that is gone
/// (meshd removed it with `--cleanup`) leaves nothing to undo.
pub fn detach(pin_dir: &Path, host_veth: &str, addrs: &[IpAddr]) -> Result<(), CniError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let mut dp = open(pin_dir)?;
    for addr in addrs {
        dp.remove_local(*addr)
            .map_err(io(format!("removing {addr} from the local-pod map")))?;
    }
    dp.detach_from_pod(host_veth)
        .map_err(io(format!("detaching from_pod from {host_veth}")))
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
    if redirect
        && !dp
            .from_pod_attached(host_veth)
            .map_err(io(format!("querying {host_veth}")))?
    {
        return Err(CniError::Io(format!(
            "CHECK failed: from_pod is not attached to {host_veth}"
        )));
    }
    Ok(())
}
