//! The TUN device: created with `IFF_TUN | IFF_NO_PI | IFF_VNET_HDR` (plus `IFF_MULTI_QUEUE`
//! for more than one queue) and as many offloads as the kernel accepts, falling back step by
//! step down to plain per-packet I/O without a virtio-net header.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use wgdp_offload::vnet::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};

use crate::sys;

/// Errors of creating the TUN.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// `/dev/net/tun` could not be opened.
    #[error("opening /dev/net/tun")]
    Open(#[source] io::Error),
    /// `TUNSETIFF` failed.
    #[error("creating TUN {name} (TUNSETIFF)")]
    SetIff {
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The offload sets tried in order; the first the kernel accepts wins.
const OFFLOAD_LADDER: [u32; 4] = [
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
    0,
];

/// An open TUN interface with one or more queues.
#[derive(Debug)]
pub struct Tun {
    name: String,
    queues: Vec<OwnedFd>,
    vnet_hdr: bool,
    offloads: u32,
}

fn open_dev() -> Result<OwnedFd, TunError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(TunError::Open)?;
    Ok(OwnedFd::from(f))
}

impl Tun {
    /// Creates (or attaches to) the TUN `name` with `queues` queues (at least one);
    /// without `offloads`, no virtio-net header and no offloads (plain per-packet I/O).
    pub fn create(name: &str, queues: usize, offloads: bool) -> Result<Tun, TunError> {
        let queues = queues.max(1);
        let mq = if queues > 1 { libc::IFF_MULTI_QUEUE } else { 0 };
        let base = libc::IFF_TUN | libc::IFF_NO_PI | mq;
        let set_iff = |fd: &OwnedFd, flags: libc::c_int| {
            let flags = libc::c_short::try_from(flags).unwrap_or(0);
            sys::tun_set_iff(fd, name, flags).map_err(|source| TunError::SetIff {
                name: name.to_string(),
                source,
            })
        };
        let first = open_dev()?;
        if !offloads {
            let real = set_iff(&first, base)?;
            return Self::finish(real, first, queues, base, false);
        }
        match set_iff(&first, base | libc::IFF_VNET_HDR) {
            Ok(real) => Self::finish(real, first, queues, base | libc::IFF_VNET_HDR, true),
            Err(err) => {
                tracing::warn!(%err, "TUN refuses IFF_VNET_HDR; falling back to per-packet I/O");
                let fd = open_dev()?;
                let real = set_iff(&fd, base)?;
                Self::finish(real, fd, queues, base, false)
            }
        }
    }

    fn finish(
        name: String,
        first: OwnedFd,
        queues: usize,
        flags: libc::c_int,
        vnet_hdr: bool,
    ) -> Result<Tun, TunError> {
        let mut offloads = 0;
        if vnet_hdr {
            for set in OFFLOAD_LADDER {
                match sys::tun_set_offload(&first, set) {
                    Ok(()) => {
                        offloads = set;
                        break;
                    }
                    Err(err) => {
                        tracing::debug!(offloads = format!("{set:#x}"), %err, "TUNSETOFFLOAD refused")
                    }
                }
            }
        }
        let mut fds = vec![first];
        for _ in 1..queues {
            let fd = open_dev()?;
            let flags = libc::c_short::try_from(flags).unwrap_or(0);
            sys::tun_set_iff(&fd, &name, flags).map_err(|source| TunError::SetIff {
                name: name.clone(),
                source,
            })?;
            fds.push(fd);
        }
        tracing::info!(
            interface = %name,
            queues,
            vnet_hdr,
            offloads = format!("{offloads:#x}"),
            "TUN ready"
        );
        Ok(Tun {
            name,
            queues: fds,
            vnet_hdr,
            offloads,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of queues.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Whether reads and writes carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The `TUN_F_*` offloads in effect.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// The file of queue `q`.
    pub fn queue(&self, q: usize) -> BorrowedFd<'_> {
        self.queues[q % self.queues.len()].as_fd()
    }

    /// One non-blocking read from queue `q`.
    pub fn read(&self, q: usize, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.queue(q).as_raw_fd(), buf).map_err(io::Error::from)
    }

    /// One write (a whole packet, with its virtio-net header if enabled) to queue `q`.
    pub fn write(&self, q: usize, buf: &[u8]) -> io::Result<usize> {
        nix::unistd::write(self.queue(q), buf).map_err(io::Error::from)
    }
}
