//! The only unsafe code of wgdp: the TUN ioctls, the batched socket syscalls
//! (`sendmmsg`/`recvmmsg` with per-message UDP GSO/GRO control messages) that `nix` does not
//! cover in the shape needed, and glibc's malloc parameters and trim (for [`crate::memory`]). Everything here is wrapped in safe functions and types that own
//! or borrow the memory the kernel reads and writes; the rest of the crate forbids unsafe.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

/// `struct ifreq` as `TUNSETIFF` uses it: the name and the flags (40 bytes on 64-bit).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches the open `/dev/net/tun` file `fd` to the interface `name` (created if absent)
/// with `IFF_*` `flags`; returns the interface's name as the kernel reports it.
pub fn tun_set_iff(fd: &OwnedFd, name: &str, flags: libc::c_short) -> io::Result<String> {
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a live, properly sized
    // (40-byte) and aligned `repr(C)` equivalent, and `fd` is an open file we own. The return
    // value is checked.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = req
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(req.name.len());
    Ok(String::from_utf8_lossy(&req.name[..end]).into_owned())
}

/// `TUNSETOFFLOAD`: which offloads (`TUN_F_*`) the reader of `fd` accepts.
pub fn tun_set_offload(fd: &OwnedFd, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); no memory is
    // passed. `fd` is an open TUN file we own; the return value is checked.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A `cmsghdr` carrying `UDP_SEGMENT` (a `u16`, as the kernel's `udp_cmsg_send` requires),
/// padded to `CMSG_SPACE(2)`.
#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    hdr: libc::cmsghdr,
    segment: u16,
    _pad: [u8; 6],
}

const CMSG_HDR_LEN: usize = std::mem::size_of::<libc::cmsghdr>();

/// One datagram (or a GSO train of equal-sized datagrams) to send.
#[derive(Debug, Clone, Copy)]
pub struct OutMsg<'a> {
    /// Destination.
    pub addr: SocketAddr,
    /// The payload: one datagram, or back-to-back datagrams of `segment` bytes (the last
    /// may be shorter) when `segment` is non-zero.
    pub data: &'a [u8],
    /// UDP GSO segment size; 0 sends `data` as one datagram.
    pub segment: u16,
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct of integers and raw pointers, for which the
    // all-zero bit pattern is valid (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// Reusable scratch for `sendmmsg`.
pub struct SendScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<SockaddrStorage>,
    cmsgs: Vec<GsoCmsg>,
}

// SAFETY: the raw pointers inside `hdrs`/`iovs` are only dereferenced (by the kernel)
// during `send`, which rewrites all of them from live borrows first; between calls they
// are never read, so moving the scratch to another thread is sound.
unsafe impl Send for SendScratch {}

impl std::fmt::Debug for SendScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendScratch")
            .field("capacity", &self.hdrs.capacity())
            .finish()
    }
}

impl Default for SendScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendScratch {
    /// Empty scratch; grows to the largest batch sent.
    pub fn new() -> Self {
        SendScratch {
            hdrs: Vec::new(),
            iovs: Vec::new(),
            addrs: Vec::new(),
            cmsgs: Vec::new(),
        }
    }

    /// Sends `msgs` with one `sendmmsg`; returns how many were sent (a prefix of `msgs`).
    /// An error means the first message failed.
    pub fn send(&mut self, fd: BorrowedFd<'_>, msgs: &[OutMsg<'_>]) -> io::Result<usize> {
        if msgs.is_empty() {
            return Ok(0);
        }
        let n = msgs.len();
        self.hdrs.clear();
        self.iovs.clear();
        self.addrs.clear();
        self.cmsgs.clear();
        for m in msgs {
            self.iovs.push(libc::iovec {
                iov_base: m.data.as_ptr().cast_mut().cast(),
                iov_len: m.data.len(),
            });
            self.addrs.push(SockaddrStorage::from(m.addr));
            self.cmsgs.push(GsoCmsg {
                hdr: libc::cmsghdr {
                    cmsg_len: CMSG_HDR_LEN + std::mem::size_of::<u16>(),
                    cmsg_level: libc::SOL_UDP,
                    cmsg_type: libc::UDP_SEGMENT,
                },
                segment: m.segment,
                _pad: [0; 6],
            });
        }
        // The vectors are not touched again until the call returns, so the pointers taken
        // below stay valid.
        for (((m, addr), iov), cmsg) in msgs
            .iter()
            .zip(&self.addrs)
            .zip(&mut self.iovs)
            .zip(&mut self.cmsgs)
        {
            let mut h = zeroed_mmsghdr();
            h.msg_hdr.msg_name = addr.as_ptr().cast_mut().cast();
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            if m.segment != 0 {
                h.msg_hdr.msg_control = (cmsg as *mut GsoCmsg).cast();
                h.msg_hdr.msg_controllen = std::mem::size_of::<GsoCmsg>();
            }
            self.hdrs.push(h);
        }
        let count = libc::c_uint::try_from(n).unwrap_or(libc::c_uint::MAX);
        // SAFETY: `hdrs` holds `count` initialised `mmsghdr`s whose name, iovec and control
        // pointers point into `self.addrs`, `self.iovs`, `self.cmsgs` (alive and unmoved for
        // the call) and into the caller's `msgs` data slices (borrowed for the call), with
        // matching lengths. The kernel only reads them (and writes `msg_len`).
        let rc = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                count,
                libc::MSG_NOSIGNAL,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(rc).unwrap_or(0))
    }
}

/// A `cmsg` receive buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; 64]);

/// Reusable buffers for `recvmmsg` with `UDP_GRO`.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<SockaddrStorage>,
    cmsgs: Vec<CmsgBuf>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    received: usize,
}

// SAFETY: the raw pointers inside `hdrs`/`iovs` point into heap buffers owned by the
// batch itself (which do not move with it) and are rewritten by every `recv` before use;
// `get` reads only lengths from them. Moving the batch to another thread is sound.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.bufs.len())
            .field("received", &self.received)
            .finish()
    }
}

/// One received message.
#[derive(Debug)]
pub struct InMsg<'a> {
    /// The payload: one datagram, or (with GRO) back-to-back datagrams of `segment` bytes,
    /// the last possibly shorter.
    pub data: &'a [u8],
    /// The sender.
    pub from: Option<SocketAddr>,
    /// The GRO segment size, if the kernel coalesced datagrams.
    pub segment: Option<usize>,
}

impl RecvBatch {
    /// `slots` messages of up to `size` bytes each.
    pub fn new(slots: usize, size: usize) -> Self {
        let placeholder = SockaddrStorage::from(SocketAddr::from(([0u8; 4], 0)));
        RecvBatch {
            bufs: (0..slots).map(|_| vec![0u8; size]).collect(),
            addrs: vec![placeholder; slots],
            cmsgs: vec![CmsgBuf([0; 64]); slots],
            hdrs: Vec::with_capacity(slots),
            iovs: Vec::with_capacity(slots),
            received: 0,
        }
    }

    /// One non-blocking `recvmmsg`; returns the number of messages (0 never: `WouldBlock`
    /// is an error).
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.received = 0;
        self.hdrs.clear();
        self.iovs.clear();
        for b in &mut self.bufs {
            self.iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            });
        }
        let slots = self.bufs.len();
        for i in 0..slots {
            let mut h = zeroed_mmsghdr();
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut SockaddrStorage).cast();
            h.msg_hdr.msg_namelen =
                libc::socklen_t::try_from(std::mem::size_of::<SockaddrStorage>()).unwrap_or(0);
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = (&mut self.cmsgs[i] as *mut CmsgBuf).cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<CmsgBuf>();
            self.hdrs.push(h);
        }
        let count = libc::c_uint::try_from(slots).unwrap_or(libc::c_uint::MAX);
        // SAFETY: `hdrs` holds `count` initialised `mmsghdr`s; each points at a distinct
        // buffer of `self.bufs` (its full length), a `SockaddrStorage` (a `repr(C)` union as
        // large as `sockaddr_storage`) and a 64-byte aligned control buffer, all owned by
        // `self` and unmoved during the call. The timeout pointer is null (non-blocking).
        let rc = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                count,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = usize::try_from(rc).unwrap_or(0).min(slots);
        Ok(self.received)
    }

    /// Number of messages of the last `recv`.
    pub fn len(&self) -> usize {
        self.received
    }

    /// Whether the last `recv` returned nothing.
    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Message `i` of the last `recv`.
    pub fn get(&self, i: usize) -> Option<InMsg<'_>> {
        if i >= self.received {
            return None;
        }
        let h = &self.hdrs[i];
        let len = usize::try_from(h.msg_len)
            .unwrap_or(0)
            .min(self.bufs[i].len());
        let from = {
            let a = &self.addrs[i];
            if let Some(v4) = a.as_sockaddr_in() {
                Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
            } else {
                a.as_sockaddr_in6()
                    .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
            }
        };
        let ctl_len = h.msg_hdr.msg_controllen.min(64);
        let segment = gro_segment(&self.cmsgs[i].0[..ctl_len]);
        Some(InMsg {
            data: &self.bufs[i][..len],
            from,
            segment,
        })
    }
}

/// Finds the `UDP_GRO` control message (an `int` segment size) in a control buffer.
fn gro_segment(ctl: &[u8]) -> Option<usize> {
    let mut off = 0;
    while off + CMSG_HDR_LEN <= ctl.len() {
        let len = usize::from_ne_bytes(ctl[off..off + 8].try_into().ok()?);
        let level = i32::from_ne_bytes(ctl[off + 8..off + 12].try_into().ok()?);
        let kind = i32::from_ne_bytes(ctl[off + 12..off + 16].try_into().ok()?);
        if len < CMSG_HDR_LEN || off + len > ctl.len() {
            return None;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO && len >= CMSG_HDR_LEN + 4 {
            let d = off + CMSG_HDR_LEN;
            let v = i32::from_ne_bytes(ctl[d..d + 4].try_into().ok()?);
            return usize::try_from(v).ok().filter(|v| *v > 0);
        }
        off += (len + 7) & !7;
    }
    None
}

/// Sets glibc malloc parameters (`mallopt`); each pair is (parameter, value). Nothing
/// with other C libraries.
pub fn malloc_params(params: &[(libc::c_int, libc::c_int)]) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for &(param, value) in params {
        // SAFETY: mallopt only sets one of glibc's malloc parameters; no pointer is involved.
        unsafe {
            libc::mallopt(param, value);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = params;
}

/// Returns the free memory of every malloc arena to the kernel (glibc's `malloc_trim(0)`).
/// Nothing with other C libraries.
pub fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only releases free memory glibc holds, under
    // its own arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmsg_layout_matches_the_kernel() {
        assert_eq!(CMSG_HDR_LEN, 16);
        // CMSG_SPACE(sizeof(u16)) on 64-bit Linux.
        assert_eq!(std::mem::size_of::<GsoCmsg>(), 24);
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }

    #[test]
    fn gro_cmsg_is_found() {
        let mut b = [0u8; 64];
        // An unrelated cmsg first, then UDP_GRO = 1452.
        b[0..8].copy_from_slice(&(CMSG_HDR_LEN + 4).to_ne_bytes());
        b[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        b[12..16].copy_from_slice(&1i32.to_ne_bytes());
        b[24..32].copy_from_slice(&(CMSG_HDR_LEN + 4).to_ne_bytes());
        b[32..36].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        b[36..40].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        b[40..44].copy_from_slice(&1452i32.to_ne_bytes());
        assert_eq!(gro_segment(&b[..48]), Some(1452));
        assert_eq!(gro_segment(&b[..24]), None);
        assert_eq!(gro_segment(&[]), None);
        // A bogus length does not loop or panic.
        let mut bad = [0u8; 32];
        bad[0..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(gro_segment(&bad), None);
    }
}
