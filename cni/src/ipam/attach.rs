//! The store's attach lock and commit stamp, which keep a GC from releasing what an ADD in
//! flight allocated (see "GC never takes an in-flight ADD's address" in the parent module),
//! and GC's choice of what to collect.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};

use super::{Entry, Ipam, IpamError, Owner};

/// The store's attach lock, held shared by an ADD from before its allocation until its commit
/// and exclusively by a GC (see the module documentation); released on drop.
#[derive(Debug)]
pub struct AttachLock {
    _lock: Flock<File>,
}

impl Ipam {
    fn attach_lock(&self, how: FlockArg) -> Result<AttachLock, IpamError> {
        // The directory itself: no file of its own that a listing would have to skip.
        let file = File::open(&self.dir).map_err(Self::io("opening", &self.dir))?;
        let lock = Flock::lock(file, how).map_err(|(_, errno)| IpamError::Io {
            op: "locking",
            path: self.dir.clone(),
            source: io::Error::from(errno),
        })?;
        Ok(AttachLock { _lock: lock })
    }

    /// Start an ADD: hold this (shared with other ADDs, exclusive of GC) from before
    /// [`Ipam::allocate`] until [`Ipam::commit`] once the pod is set up, or until the
    /// allocation is released on failure.
    pub fn begin_attach(&self) -> Result<AttachLock, IpamError> {
        self.attach_lock(FlockArg::LockShared)
    }

    /// Start a GC: waits for every in-flight ADD to commit or fail, and keeps new ones from
    /// allocating until it is dropped.
    pub fn begin_gc(&self) -> Result<AttachLock, IpamError> {
        self.attach_lock(FlockArg::LockExclusive)
    }

    /// Finish an ADD of `(container_id, ifname)` begun with `_attach`: stamp its owner file
    /// with the current time, so that a GC that started before this moment spares it.
    pub fn commit(
        &self,
        _attach: &AttachLock,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), IpamError> {
        let owner = Owner {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        };
        let index = self.dir.join(owner.index_name());
        OpenOptions::new()
            .write(true)
            .open(&index)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(Self::io("committing", &index))
    }

    /// What [`Ipam::gc_since`] would collect now: the entries whose owner is not in `valid`
    /// (or does not parse), except those modified at or after `started`. Takes no lock: call
    /// it holding [`Ipam::begin_gc`]'s lock for an answer that stays true.
    pub fn gc_candidates(
        &self,
        valid: &[(String, String)],
        started: Option<SystemTime>,
    ) -> Result<Vec<Entry>, IpamError> {
        let valid: HashSet<Owner> = valid
            .iter()
            .map(|(c, i)| Owner {
                container_id: c.clone(),
                ifname: i.clone(),
            })
            .collect();
        let mut out = Vec::new();
        for entry in self.list()? {
            if entry.owner.as_ref().is_some_and(|o| valid.contains(o)) {
                continue;
            }
            if let Some(started) = started {
                let path = self.dir.join(entry.address.to_string());
                match fs::metadata(&path).and_then(|m| m.modified()) {
                    // Committed by an ADD that finished after this GC began: not the
                    // runtime's to judge yet.
                    Ok(modified) if modified >= started => continue,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Self::io("reading", &path)(e)),
                }
            }
            out.push(entry);
        }
        Ok(out)
    }
}
