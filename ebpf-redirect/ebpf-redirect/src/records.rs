//! The records of the pod programs' attachments: `link_ingress_<ifname>` (`from_pod`) and
//! `link_egress_<ifname>` (`to_pod`), each the attached program pinned under the interface's
//! name in the pin directory ([`crate::pod`]).
//!
//! Two attachers work on one veth at once: the CNI plugin's ADD and the daemon's backstop pass
//! (which renews an attachment that runs another program or lacks its records). So:
//! - a record is replaced, never removed and made again: the program is pinned at a temporary
//!   name and renamed over the record (a rename on bpffs replaces the target atomically). A
//!   reader (the daemon's pass, `meshctl`, a test) never finds the record of an attached veth
//!   missing. Removing it first, as attaching once did, left a window per attachment in which
//!   it was gone, or gone for good when the attach after the removal failed;
//! - attaching or detaching a veth's programs and writing or dropping their records happen
//!   under an exclusive `flock(2)` on the pin directory ([`lock`]): whoever attaches last also
//!   records last, so a record always holds the program its filter runs (they differ while a
//!   plugin started before a meshd upgrade still holds the old program).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::cls_bpf;
use crate::{Error, Result};

/// The pin recording `from_pod`'s attachment to `ifname`.
pub(crate) fn ingress(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("link_ingress_{ifname}"))
}

/// The pin recording `to_pod`'s attachment to `ifname`.
pub(crate) fn egress(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("link_egress_{ifname}"))
}

/// The prefix of a record's temporary name while it is being replaced (bpffs refuses names
/// with a dot: `EPERM`).
pub(crate) const REPLACING_PREFIX: &str = "replacing_";

/// Where `record` is pinned before it is renamed over the record.
fn replacing(record: &Path) -> PathBuf {
    let name = record
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    record.with_file_name(format!("{REPLACING_PREFIX}{name}"))
}

/// The exclusive lock on the records of `pin_dir`, held while it lives (the kernel drops it
/// when its holder dies, so a killed plugin never wedges the daemon).
pub(crate) fn lock(pin_dir: &Path) -> Result<Flock<File>> {
    let failed = |source: io::Error| Error::RecordsLock {
        path: pin_dir.to_path_buf(),
        source,
    };
    let dir = File::open(pin_dir).map_err(failed)?;
    Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| failed(errno.into()))
}

/// Removes `record` (a missing one is not an error).
pub(crate) fn remove(record: &Path) -> Result<()> {
    match std::fs::remove_file(record) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Records `prog` at `record`, replacing what is there in one step. Call under [`lock`].
pub(crate) fn replace(prog: BorrowedFd<'_>, record: &Path) -> Result<()> {
    let temporary = replacing(record);
    // Left by a holder of the lock that was killed between its pin and its rename.
    remove(&temporary)?;
    let pinned = |source: io::Error| Error::Pinned {
        path: record.to_path_buf(),
        source,
    };
    cls_bpf::obj_pin(prog, &temporary).map_err(pinned)?;
    if let Err(e) = std::fs::rename(&temporary, record) {
        let _ = remove(&temporary);
        return Err(pinned(e));
    }
    Ok(())
}

/// The object pinned at `record` and what it is (`anon_inode:bpf-prog`, `anon_inode:bpf-link`),
/// or `None` when nothing is pinned there.
fn open_pinned(record: &Path) -> Result<Option<(OwnedFd, PathBuf)>> {
    let object = match cls_bpf::obj_get(record) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Pinned {
                path: record.to_path_buf(),
                source,
            })
        }
    };
    let kind = std::fs::read_link(format!("/proc/self/fd/{}", object.as_raw_fd()))?;
    Ok(Some((object, kind)))
}

/// Whether `record` holds the program whose id is `prog` (false when it is missing, or when
/// it is something else: another program, an older meshd's TCX link). Needs no lock: an
/// answer made stale by a concurrent attacher only makes the caller attach once more.
pub(crate) fn holds(record: &Path, prog: u32) -> Result<bool> {
    let Some((object, kind)) = open_pinned(record)? else {
        return Ok(false);
    };
    if kind.as_os_str() != "anon_inode:bpf-prog" {
        return Ok(false);
    }
    let id = cls_bpf::prog_id(object.as_fd()).map_err(|source| Error::Pinned {
        path: record.to_path_buf(),
        source,
    })?;
    Ok(id == prog)
}

/// Removes `record` if it is a TCX link (an older meshd's attachment of `from_pod`, which
/// unpinning detaches): it would run next to the filter. A recorded program stays until
/// [`replace`] replaces it.
pub(crate) fn remove_if_link(record: &Path) -> Result<()> {
    let Some((object, kind)) = open_pinned(record)? else {
        return Ok(());
    };
    drop(object);
    if kind.as_os_str() == "anon_inode:bpf-link" {
        remove(record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_is_replaced_through_a_name_the_record_listings_skip() {
        let record = ingress(Path::new("/sys/fs/bpf/meshd"), "mshabc");
        assert_eq!(record, Path::new("/sys/fs/bpf/meshd/link_ingress_mshabc"));
        let temporary = replacing(&record);
        assert_eq!(
            temporary,
            Path::new("/sys/fs/bpf/meshd/replacing_link_ingress_mshabc")
        );
        let name = temporary
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(!name.starts_with("link_"), "{name}");
        assert_eq!(egress(Path::new("/p"), "v"), Path::new("/p/link_egress_v"));
    }
}
