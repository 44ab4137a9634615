//! Attaching a program to one tc hook of an interface and taking it off: a pinned TCX link
//! (`link_<ingress|egress>_<ifname>`) on kernels with TCX, else meshd's clsact filter at its
//! fixed priority and handle over netlink; both replace what is there atomically.

use std::{fs, io, path::Path, path::PathBuf};

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    Link, LinkOrder, ProgramError, SchedClassifier,
};

use crate::{tcx_supported, Error, Result, TcAttachType, NETLINK_HANDLE, NETLINK_PRIORITY};

pub(crate) fn link_pin(dir: &Path, attach: TcAttachType, ifname: &str) -> PathBuf {
    let dir_name = match attach {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    };
    dir.join(format!("link_{dir_name}_{ifname}"))
}

fn is_not_found(e: &LinkError) -> bool {
    matches!(e, LinkError::SyscallError(s) if s.io_error.kind() == io::ErrorKind::NotFound)
}

pub(crate) fn attach(
    prog: &mut SchedClassifier,
    ifname: &str,
    attach: TcAttachType,
    path: &Path,
) -> Result<()> {
    if tcx_supported() {
        attach_pinned(prog, ifname, attach, path)
    } else {
        attach_netlink(prog, ifname, attach)
    }
}

fn nl_link(ifname: &str, attach: TcAttachType) -> Result<SchedClassifierLink> {
    Ok(SchedClassifierLink::attached(
        ifname,
        attach,
        NETLINK_PRIORITY,
        TcHandle::from(NETLINK_HANDLE),
        None,
    )?)
}

fn attach_netlink(prog: &mut SchedClassifier, ifname: &str, attach: TcAttachType) -> Result<()> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => {}
        // EEXIST: the qdisc is already there.
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(ProgramError::from(e).into()),
    }
    // Replace meshd's filter in place if there is one (atomic program swap) ...
    let id = match prog.attach_to_link(nl_link(ifname, attach)?) {
        Ok(id) => id,
        // ... else create it at meshd's fixed priority and handle.
        Err(_) => prog.attach_with_options(
            ifname,
            attach,
            TcAttachOptions::Netlink(NlOptions {
                priority: NETLINK_PRIORITY,
                handle: TcHandle::from(NETLINK_HANDLE),
                classid: None,
            }),
        )?,
    };
    // The filter belongs to the interface; dropping aya's handle would detach it.
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

pub(crate) fn detach(pin_dir: &Path, ifname: &str, attach: TcAttachType) -> Result<()> {
    if tcx_supported() {
        return unpin_link(&link_pin(pin_dir, attach, ifname));
    }
    match nl_link(ifname, attach) {
        Ok(link) => match link.detach() {
            Ok(()) => Ok(()),
            // No such filter (or interface gone): nothing to detach.
            Err(ProgramError::TcError(tc::TcError::NetlinkError(_))) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn is_attached(
    prog: &SchedClassifier,
    ifname: &str,
    attach: TcAttachType,
) -> Result<Option<bool>> {
    if !tcx_supported() {
        // cls_bpf filters cannot be listed through aya 0.14: unknown.
        return Ok(None);
    }
    let ours = prog.info()?.id();
    let (_, progs) = SchedClassifier::query_tcx(ifname, attach)?;
    Ok(Some(progs.iter().any(|p| p.id() == ours)))
}

fn attach_pinned(
    prog: &mut SchedClassifier,
    ifname: &str,
    attach: TcAttachType,
    path: &Path,
) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(old) => {
            // Already attached (daemon restart / upgrade): swap in this program atomically.
            let link: SchedClassifierLink = FdLink::from(old).try_into()?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    // The pin keeps the link; dropping our fd does not detach it.
                    drop(prog.take_link(id)?);
                    return Ok(());
                }
                Err(_) => {
                    // Stale link (interface was deleted/recreated): replace the pin.
                    fs::remove_file(path)?;
                }
            }
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    let id = prog.attach_with_options(
        ifname,
        attach,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )?;
    let link = prog.take_link(id)?;
    let fd_link: FdLink = link.try_into()?;
    drop(fd_link.pin(path)?);
    Ok(())
}

pub(crate) fn unpin_link(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}
