//! The pod programs' attachment to a pod's host veth: direct-action `cls_bpf` filters on the
//! interface's `clsact` hooks (`from_pod` on ingress, `to_pod` on egress), added, replaced,
//! listed and deleted over rtnetlink, and the few `bpf(2)` commands the CNI plugin needs on
//! the pinned objects. Both speak the kernel's interfaces directly, without aya, so the
//! plugin's path does no feature probing.
//!
//! Why a classic filter and not a TCX link: creating a TCX link swaps the device's program
//! array and then waits for a full RCU grace period (`synchronize_rcu`, 12–13 ms on the test
//! VM, once per pod). Adding the first `cls_bpf` filter waits at most for an expedited grace
//! period (`mini_qdisc_pair_swap`), replacing one frees the old program asynchronously. The
//! filter belongs to the interface, as a TCX link pinned in bpffs does: it survives every
//! process, and vanishes with the interface.
//!
//! meshd's filter sits at a fixed priority and handle on each hook ([`crate::NETLINK_PRIORITY`],
//! [`crate::NETLINK_HANDLE`]): attaching replaces it in place, so two attachers (the CNI
//! plugin and the daemon's backstop) never stack two copies of a program on one interface.
//!
//! It also answers the loader's one question about a link, its type ([`link_type`]), which
//! decides the guard program an interface gets ([`crate::framing`]).
//!
//! The crate's one module with `unsafe`: the `socket`/`sendto`/`recv`/`bpf` system calls,
//! each with its SAFETY note.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{NETLINK_HANDLE, NETLINK_PRIORITY};

// Traffic-control constants of `linux/pkt_sched.h` and `linux/rtnetlink.h`.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const TC_H_MIN_INGRESS: u32 = 0xfff2;
const TC_H_MIN_EGRESS: u32 = 0xfff3;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `struct tcmsg`: family, 3 bytes padding, ifindex, handle, parent, info.
const TCMSG_LEN: usize = 20;
const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// The `clsact` qdisc's handle (`ffff:`).
const CLSACT_HANDLE: u32 = TC_H_CLSACT & 0xffff_0000;
/// The `clsact` ingress hook as a filter parent (`ffff:fff2`).
const INGRESS_PARENT: u32 = (TC_H_CLSACT & 0xffff_0000) | TC_H_MIN_INGRESS;
/// The `clsact` egress hook as a filter parent (`ffff:fff3`).
const EGRESS_PARENT: u32 = (TC_H_CLSACT & 0xffff_0000) | TC_H_MIN_EGRESS;

/// A `clsact` hook of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    /// Packets the interface receives (for a host veth: what the pod sends).
    Ingress,
    /// Packets the interface sends (for a host veth: what the pod is delivered).
    Egress,
}

impl Hook {
    /// The hook as a filter parent.
    fn parent(self) -> u32 {
        match self {
            Hook::Ingress => INGRESS_PARENT,
            Hook::Egress => EGRESS_PARENT,
        }
    }
}

/// `ETH_P_ALL` in network byte order, as `tcm_info`'s protocol half wants it.
fn eth_p_all_be() -> u32 {
    u32::from((libc::ETH_P_ALL as u16).to_be())
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink request under construction: header, `tcmsg`, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(kind: u16, flags: u16, ifindex: u32, handle: u32, parent: u32, info: u32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        buf.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        buf.extend_from_slice(&handle.to_ne_bytes());
        buf.extend_from_slice(&parent.to_ne_bytes());
        buf.extend_from_slice(&info.to_ne_bytes());
        Self { buf }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Opens a nested attribute; returns where its length goes.
    fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        at
    }

    fn end_nested(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A `NETLINK_ROUTE` socket in the calling thread's network namespace.
struct RouteSocket(OwnedFd);

impl RouteSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; all-zero is the kernel's address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `addr` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(&buf[..n as usize])
    }

    /// Sends a request with `NLM_F_ACK` set and waits for the kernel's answer.
    fn request(&self, msg: &[u8]) -> io::Result<()> {
        self.send(msg)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let data = self.recv(&mut buf)?;
            for (kind, payload) in messages(data) {
                if kind == libc::NLMSG_ERROR as u16 {
                    return errno_of(payload);
                }
            }
        }
    }

    /// Sends a dump request and calls `each` with the payload of every answer.
    fn dump(&self, msg: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
        self.send(msg)?;
        let mut buf = vec![0u8; 32768];
        loop {
            let data = self.recv(&mut buf)?;
            for (kind, payload) in messages(data) {
                match kind {
                    k if k == libc::NLMSG_DONE as u16 => return Ok(()),
                    k if k == libc::NLMSG_ERROR as u16 => return errno_of(payload),
                    _ => each(payload),
                }
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The netlink messages in one datagram, as (type, payload).
fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32_at(data, 0)? as usize;
        let kind = u16_at(data, 4)?;
        if len < NLMSG_HDR_LEN || len > data.len() {
            return None;
        }
        let payload = &data[NLMSG_HDR_LEN..len];
        data = &data[align4(len).min(data.len())..];
        Some((kind, payload))
    })
}

/// The attributes in `data`, as (type without flags, payload).
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(data, 0)? as usize;
        let kind = u16_at(data, 2)? & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((kind, payload))
    })
}

/// An `NLMSG_ERROR` payload: 0 is the acknowledgement, anything else the negated errno.
fn errno_of(payload: &[u8]) -> io::Result<()> {
    match u32_at(payload, 0).map(|e| e as i32) {
        Some(0) => Ok(()),
        Some(e) => Err(io::Error::from_raw_os_error(-e)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink error message",
        )),
    }
}

/// The index of `ifname` in the calling thread's namespace (`NotFound` when there is none).
pub(crate) fn ifindex(ifname: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(ifname).map_err(|e| {
        if e == nix::errno::Errno::ENODEV {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {ifname}"))
        } else {
            io::Error::from(e)
        }
    })
}

/// `tcm_info` of meshd's filter: its priority and protocol `all`.
fn filter_info() -> u32 {
    (u32::from(NETLINK_PRIORITY) << 16) | eth_p_all_be()
}

/// Adds a `clsact` qdisc to `ifindex` unless it has one.
fn add_clsact(nl: &RouteSocket, ifindex: u32) -> io::Result<()> {
    let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut req = Request::new(
        libc::RTM_NEWQDISC,
        flags,
        ifindex,
        CLSACT_HANDLE,
        TC_H_CLSACT,
        0,
    );
    req.attr(TCA_KIND, b"clsact\0");
    match nl.request(&req.finish()) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// The request that attaches `prog` as meshd's direct-action filter on `hook` of `ifindex`,
/// replacing the one there (an atomic program swap) or creating it.
fn attach_request(ifindex: u32, hook: Hook, prog: BorrowedFd<'_>, name: &str) -> Vec<u8> {
    let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    let mut req = Request::new(
        libc::RTM_NEWTFILTER,
        flags,
        ifindex,
        NETLINK_HANDLE,
        hook.parent(),
        filter_info(),
    );
    req.attr(TCA_KIND, b"bpf\0");
    let options = req.begin_nested(TCA_OPTIONS);
    req.attr(TCA_BPF_FD, &(prog.as_raw_fd() as u32).to_ne_bytes());
    let mut label = name.as_bytes().to_vec();
    label.push(0);
    req.attr(TCA_BPF_NAME, &label);
    req.attr(TCA_BPF_FLAGS, &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes());
    req.end_nested(options);
    req.finish()
}

/// Attaches each `(hook, program, name)` as meshd's filter on that hook of `ifindex`, in
/// order, after the `clsact` qdisc, over one netlink socket.
pub(crate) fn attach(ifindex: u32, filters: &[(Hook, BorrowedFd<'_>, &str)]) -> io::Result<()> {
    let nl = RouteSocket::open()?;
    add_clsact(&nl, ifindex)?;
    for (hook, prog, name) in filters {
        nl.request(&attach_request(ifindex, *hook, *prog, name))?;
    }
    Ok(())
}

/// Deletes meshd's filter from `hook` of `ifindex`. A missing filter, qdisc or interface is
/// not an error.
pub(crate) fn detach(ifindex: u32, hook: Hook) -> io::Result<()> {
    let nl = RouteSocket::open()?;
    let mut req = Request::new(
        libc::RTM_DELTFILTER,
        libc::NLM_F_ACK as u16,
        ifindex,
        NETLINK_HANDLE,
        hook.parent(),
        filter_info(),
    );
    req.attr(TCA_KIND, b"bpf\0");
    match nl.request(&req.finish()) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The id of the program in meshd's filter on `hook` of `ifindex`, if there is one.
pub(crate) fn attached_prog_id(ifindex: u32, hook: Hook) -> io::Result<Option<u32>> {
    let nl = RouteSocket::open()?;
    let req = Request::new(
        libc::RTM_GETTFILTER,
        libc::NLM_F_DUMP as u16,
        ifindex,
        0,
        hook.parent(),
        0,
    );
    let mut found = None;
    let dumped = nl.dump(&req.finish(), |payload| {
        let handle = u32_at(payload, 8);
        let info = u32_at(payload, 16);
        if handle != Some(NETLINK_HANDLE)
            || info.map(|i| i >> 16) != Some(u32::from(NETLINK_PRIORITY))
        {
            return;
        }
        let Some(attrs) = payload.get(TCMSG_LEN..) else {
            return;
        };
        for (kind, value) in attributes(attrs) {
            if kind != TCA_OPTIONS {
                continue;
            }
            for (kind, value) in attributes(value) {
                if kind == TCA_BPF_ID {
                    found = u32_at(value, 0);
                }
            }
        }
    });
    match dumped {
        // No clsact qdisc: no filter either.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
        Ok(()) => Ok(found),
    }
}

/// The link type (`ARPHRD_*`, `ifinfomsg.ifi_type`) of `ifindex`: `RTM_GETLINK` for one
/// interface. `NotFound` when the kernel has no such interface.
pub(crate) fn link_type(ifindex: u32) -> io::Result<u16> {
    let nl = RouteSocket::open()?;
    let mut req = Vec::with_capacity(NLMSG_HDR_LEN + IFINFOMSG_LEN);
    req.extend_from_slice(&((NLMSG_HDR_LEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    req.extend_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
                                                // ifinfomsg: family, pad, type, index, flags, change.
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    req.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    nl.send(&req)?;
    let mut buf = vec![0u8; 32768];
    loop {
        let data = nl.recv(&mut buf)?;
        for (kind, payload) in messages(data) {
            if kind == libc::RTM_NEWLINK {
                return u16_at(payload, 2).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "short RTM_NEWLINK message")
                });
            }
            if kind == libc::NLMSG_ERROR as u16 {
                errno_of(payload).map_err(|e| {
                    if e.raw_os_error() == Some(libc::ENODEV) {
                        io::Error::new(io::ErrorKind::NotFound, format!("no interface {ifindex}"))
                    } else {
                        e
                    }
                })?;
            }
        }
    }
}

// bpf(2) commands of `linux/bpf.h`.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `bpf(cmd, attr, size)` with the attribute union as 16 `u64`s (128 bytes, more than any
/// command used here reads).
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable attribute buffer of the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of::<[u64; 16]>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Opens a pinned BPF object (`BPF_OBJ_GET`).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let name = c_path(path)?;
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Pins `fd` at `path` (`BPF_OBJ_PIN`).
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let name = c_path(path)?;
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    attr[1] = u64::from(fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// The id of the program `fd` (the second field of `struct bpf_prog_info`).
pub(crate) fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; 2];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | ((size_of::<[u32; 2]>() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[1])
}

/// `BPF_MAP_UPDATE_ELEM` with flags `BPF_ANY`.
pub(crate) fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_ptr() as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// `BPF_MAP_DELETE_ELEM`; a missing key is not an error.
pub(crate) fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = key.as_ptr() as u64;
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(drop),
    }
}

/// Whether `key` is in the map (`BPF_MAP_LOOKUP_ELEM` into a `value_size` buffer).
pub(crate) fn map_contains(map: BorrowedFd<'_>, key: &[u8], value_size: usize) -> io::Result<bool> {
    let mut value = vec![0u8; value_size];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_mut_ptr() as u64;
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every key of the map (`BPF_MAP_GET_NEXT_KEY` from no key), each `key_size` bytes. Keys
/// deleted or added meanwhile may be missed or seen; a walk restarted by a concurrent delete
/// is cut off after `limit` keys.
pub(crate) fn map_keys(
    map: BorrowedFd<'_>,
    key_size: usize,
    limit: usize,
) -> io::Result<Vec<Vec<u8>>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut next = vec![0u8; key_size];
        let mut attr = [0u64; 16];
        attr[0] = u64::from(map.as_raw_fd() as u32);
        // No key (null) asks for the first one.
        attr[1] = keys.last().map_or(0, |k| k.as_ptr() as u64);
        attr[2] = next.as_mut_ptr() as u64;
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => keys.push(next),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
        if keys.len() >= limit {
            return Ok(keys);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn hooks_are_clsacts_ingress_and_egress_parents() {
        assert_eq!(Hook::Ingress.parent(), 0xffff_fff2);
        assert_eq!(Hook::Egress.parent(), 0xffff_fff3);
        let (a, b) = std::io::pipe().unwrap();
        let msg = attach_request(9, Hook::Egress, a.as_fd(), "to_pod");
        drop(b);
        let payload = &msg[NLMSG_HDR_LEN..];
        assert_eq!(u32_at(payload, 4), Some(9));
        assert_eq!(u32_at(payload, 12), Some(0xffff_fff3));
    }

    #[test]
    fn requests_carry_their_length_and_aligned_attributes() {
        let mut req = Request::new(
            libc::RTM_NEWTFILTER,
            0,
            7,
            NETLINK_HANDLE,
            INGRESS_PARENT,
            filter_info(),
        );
        let nested = req.begin_nested(TCA_OPTIONS);
        req.attr(TCA_BPF_NAME, b"abc\0\0");
        req.end_nested(nested);
        let msg = req.finish();
        assert_eq!(u32_at(&msg, 0), Some(msg.len() as u32));
        assert_eq!(msg.len() % 4, 0);
        let payload = &msg[NLMSG_HDR_LEN..];
        assert_eq!(u32_at(payload, 4), Some(7));
        assert_eq!(u32_at(payload, 12), Some(0xffff_fff2));
        let attrs: Vec<_> = attributes(&payload[TCMSG_LEN..]).collect();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].0, TCA_OPTIONS);
        let inner: Vec<_> = attributes(attrs[0].1).collect();
        assert_eq!(inner, [(TCA_BPF_NAME, &b"abc\0\0"[..])]);
    }

    #[test]
    fn the_filter_sits_at_meshds_priority_for_every_protocol() {
        assert_eq!(filter_info() >> 16, u32::from(NETLINK_PRIORITY));
        assert_eq!(filter_info() & 0xffff, u32::from(0x0003u16.to_be()));
    }
}
