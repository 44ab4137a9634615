//! The process that sits through a link's deletion for DEL ([`crate::datapath`]): a child
//! forked from the plugin, which deletes one link and exits, so that DEL can return once the
//! kernel has unlisted the link instead of waiting for the grace periods that end the
//! deletion.
//!
//! A fork instead of starting `meshd-cni --delete-link` again: the child needs no `exec`, no
//! dynamic loading and no runtime start (about a millisecond of CPU on the test VM, on DEL's
//! critical path since the parent waits for the child's request to reach the kernel). Forking
//! is only sound in a process with one thread (the child gets a copy of every lock as it was,
//! and a lock another thread held would never be released in it): the `meshd-cni` binary
//! says it is one ([`declare_single_threaded`]), and any other process gets `None` from
//! [`LinkDeleter::fork`] (the caller falls back to its helper process).
//!
//! The crate's one module with `unsafe`: `fork(2)`, `close_range(2)` and `_exit(2)`, each with
//! its SAFETY note.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, ForkResult, Pid};

/// Whether this process has one thread and keeps it so (set by the `meshd-cni` binary).
static SINGLE_THREADED: AtomicBool = AtomicBool::new(false);

/// The calling process has one thread and starts none: DEL may fork its link deleter. The
/// `meshd-cni` binary calls this first thing; a library user that never does gets the helper
/// process instead.
pub fn declare_single_threaded() {
    SINGLE_THREADED.store(true, Ordering::Relaxed);
}

/// How a deleter's child ended, as far as the parent has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Still running.
    Running,
    /// Exited 0: the link is deleted (or was already gone).
    Deleted,
    /// Exited otherwise, or could not be waited for.
    Failed,
}

/// A forked child deleting one link.
#[derive(Debug)]
pub(crate) struct LinkDeleter {
    child: Pid,
}

impl LinkDeleter {
    /// Fork a child that deletes link `index` of the calling thread's network namespace and
    /// exits (0: deleted or already gone). `None` when the process did not declare itself
    /// single-threaded or the fork failed.
    pub(crate) fn fork(index: u32) -> Option<LinkDeleter> {
        if !SINGLE_THREADED.load(Ordering::Relaxed) {
            return None;
        }
        // Opened before the fork: the child only redirects onto it.
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .ok()?;
        // SAFETY: the process declared it has a single thread (`declare_single_threaded`), so
        // no lock (the allocator's, stdio's) is held by a thread the child lacks; the child
        // runs only `child_deletes` and leaves with `_exit`, never returning into the parent's
        // code.
        match unsafe { fork() }.ok()? {
            ForkResult::Parent { child } => Some(LinkDeleter { child }),
            ForkResult::Child => {
                let code = child_deletes(&null, index);
                // SAFETY: `_exit` ends the child at once: no destructors, no atexit handlers,
                // no stdio flush (they are the parent's).
                unsafe { nix::libc::_exit(code) }
            }
        }
    }

    /// Whether the child has exited, without waiting.
    pub(crate) fn ended(&self) -> Ended {
        match waitpid(self.child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => Ended::Running,
            Ok(WaitStatus::Exited(_, 0)) => Ended::Deleted,
            _ => Ended::Failed,
        }
    }
}

/// The child's work: let go of everything the parent holds (its stdout, which the runtime
/// reads to the end, and every other descriptor: a store or records lock must not outlive the
/// parent), then delete link `index`. Returns the exit code.
fn child_deletes(null: &File, index: u32) -> i32 {
    for fd in 0..3 {
        if dup2(null.as_raw_fd(), fd).is_err() {
            return 1;
        }
    }
    // SAFETY: close_range(2) only closes descriptors; every one above stderr belongs to the
    // parent's work (sockets, locks, the namespace file), none of which the child uses.
    let closed = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed != 0 {
        return 1;
    }
    crate::datapath::delete_link_exit_code(index)
}
