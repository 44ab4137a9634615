//! The device's UDP sockets: one IPv6-only and one IPv4 socket on the same port, with large
//! forced buffers, `UDP_GRO` on receive, `UDP_SEGMENT` (GSO) trains on send via `sendmmsg`,
//! and `SO_MARK`. Falls back to one datagram per message when the kernel refuses GSO.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{
    bind, getsockname, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    SockaddrIn6, SockaddrStorage,
};

use crate::stats::{DropReason, Stats};
use crate::sys::{OutMsg, SendScratch};

/// Socket buffer size asked for with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`.
pub const SOCKET_BUFFER: usize = 7 << 20;
/// Most datagrams in one GSO send.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (the largest UDP payload over IPv4).
pub const MAX_GSO_BYTES: usize = 65_507;

/// Errors of binding the sockets.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// Creating a socket failed.
    #[error("creating {family} UDP socket")]
    Socket {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
    /// Binding failed.
    #[error("binding {family} UDP socket to port {port}")]
    Bind {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The port.
        port: u16,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
    /// Setting `SO_MARK` failed.
    #[error("setting SO_MARK {mark}")]
    Mark {
        /// The mark.
        mark: u32,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
}

impl UdpError {
    /// The errno to report over the UAPI.
    pub fn errno(&self) -> i32 {
        match self {
            UdpError::Bind { source, .. } if *source == nix::Error::EADDRINUSE => libc::EADDRINUSE,
            UdpError::Socket { source, .. }
            | UdpError::Bind { source, .. }
            | UdpError::Mark { source, .. } => *source as i32,
        }
    }
}

/// The bound sockets of a device.
#[derive(Debug)]
pub struct Sockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    port: u16,
    gso: AtomicBool,
    offloads: bool,
}

fn family_name(f: AddressFamily) -> &'static str {
    if f == AddressFamily::Inet6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn tune(fd: &OwnedFd, offloads: bool) {
    if setsockopt(fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(fd, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(fd, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    if !offloads {
        return;
    }
    if let Err(err) = setsockopt(fd, sockopt::UdpGroSegment, &true) {
        tracing::debug!(%err, "UDP_GRO refused; receiving one datagram per message");
    }
}

fn open(
    family: AddressFamily,
    port: u16,
    mark: u32,
    offloads: bool,
) -> Result<(OwnedFd, u16), UdpError> {
    let fname = family_name(family);
    let fd =
        socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(|source| {
            UdpError::Socket {
                family: fname,
                source,
            }
        })?;
    let bind_err = |source| UdpError::Bind {
        family: fname,
        port,
        source,
    };
    use std::os::fd::AsRawFd;
    if family == AddressFamily::Inet6 {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(bind_err)?;
        let addr = SockaddrIn6::from(std::net::SocketAddrV6::new(
            Ipv6Addr::UNSPECIFIED,
            port,
            0,
            0,
        ));
        bind(fd.as_raw_fd(), &addr).map_err(bind_err)?;
    } else {
        let addr = SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        bind(fd.as_raw_fd(), &addr).map_err(bind_err)?;
    }
    if mark != 0 {
        setsockopt(&fd, sockopt::Mark, &mark).map_err(|source| UdpError::Mark { mark, source })?;
    }
    tune(&fd, offloads);
    let bound: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(bind_err)?;
    let bound_port = bound
        .as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| bound.as_sockaddr_in6().map(|a| a.port()))
        .unwrap_or(port);
    Ok((fd, bound_port))
}

/// Whether an error means the address family is unavailable (IPv6 disabled).
fn family_unavailable(err: &UdpError) -> bool {
    let e = match err {
        UdpError::Socket { source, .. } | UdpError::Bind { source, .. } => *source,
        UdpError::Mark { .. } => return false,
    };
    matches!(
        e,
        nix::Error::EAFNOSUPPORT | nix::Error::EADDRNOTAVAIL | nix::Error::EPROTONOSUPPORT
    )
}

impl Sockets {
    /// Binds both families on `port` (0: a free port, the same for both) with `mark`;
    /// `offloads` enables UDP GRO and GSO (else one datagram per message).
    pub fn bind(port: u16, mark: u32, offloads: bool) -> Result<Sockets, UdpError> {
        let attempts = if port == 0 { 16 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            match Self::try_bind(port, mark, offloads) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(UdpError::Bind {
            family: "IPv4",
            port,
            source: nix::Error::EADDRINUSE,
        }))
    }

    fn try_bind(port: u16, mark: u32, offloads: bool) -> Result<Sockets, UdpError> {
        let (v6, port) = match open(AddressFamily::Inet6, port, mark, offloads) {
            Ok((fd, p)) => (Some(fd), p),
            Err(e) if family_unavailable(&e) => {
                tracing::info!(err = %e, "no IPv6 socket");
                (None, port)
            }
            Err(e) => return Err(e),
        };
        let (v4, port) = match open(AddressFamily::Inet, port, mark, offloads) {
            Ok((fd, p)) => (Some(fd), p),
            Err(e) if family_unavailable(&e) && v6.is_some() => {
                tracing::info!(err = %e, "no IPv4 socket");
                (None, port)
            }
            Err(e) => return Err(e),
        };
        let probe = v4.as_ref().or(v6.as_ref());
        let gso = probe
            .is_some_and(|fd| nix::sys::socket::getsockopt(fd, sockopt::UdpGsoSegment).is_ok());
        Ok(Sockets {
            v4: v4.map(UdpSocket::from),
            v6: v6.map(UdpSocket::from),
            port,
            gso: AtomicBool::new(gso),
            offloads,
        })
    }

    /// Whether GRO/GSO were asked for (kept across rebinds).
    pub fn offloads(&self) -> bool {
        self.offloads
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets `SO_MARK` on both sockets.
    pub fn set_mark(&self, mark: u32) -> Result<(), UdpError> {
        for s in [&self.v4, &self.v6].into_iter().flatten() {
            setsockopt(s, sockopt::Mark, &mark)
                .map_err(|source| UdpError::Mark { mark, source })?;
        }
        Ok(())
    }

    /// The sockets to poll for input.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .map(|s| s.as_fd())
    }

    /// Whether GSO sends are in use.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    fn fd_for(&self, addr: &SocketAddr) -> Option<BorrowedFd<'_>> {
        match addr {
            SocketAddr::V4(_) => self.v4.as_ref().map(|s| s.as_fd()),
            SocketAddr::V6(_) => self.v6.as_ref().map(|s| s.as_fd()),
        }
    }

    /// Sends the datagrams `list` (each a destination and a range of `arena`), in order,
    /// merging runs of equal-sized datagrams to one destination into GSO sends.
    pub fn send_all(
        &self,
        scratch: &mut SendScratch,
        arena: &[u8],
        list: &[(SocketAddr, Range<usize>)],
        stats: &Stats,
    ) {
        self.send_filled(scratch, arena, list, stats, false);
    }

    /// [`send_all`](Self::send_all), except that with `keep_open` a last GSO train that could
    /// still take datagrams is not sent: the caller keeps them and sends them with those
    /// that follow. Returns how many datagrams of `list` were sent (or dropped).
    pub fn send_filled(
        &self,
        scratch: &mut SendScratch,
        arena: &[u8],
        list: &[(SocketAddr, Range<usize>)],
        stats: &Stats,
        keep_open: bool,
    ) -> usize {
        let gso = self.gso();
        let max_segs = if gso { MAX_GSO_SEGMENTS } else { 1 };
        let mut plan = plan_sends(list, max_segs, MAX_GSO_BYTES);
        let mut done = list.len();
        if keep_open {
            let open = open_tail(list, max_segs, MAX_GSO_BYTES);
            if open > 0 {
                plan.pop();
                done -= open;
            }
        }
        let mut msgs: Vec<OutMsg<'_>> = Vec::with_capacity(plan.len());
        for p in &plan {
            let Some(data) = arena.get(p.range.clone()) else {
                continue;
            };
            msgs.push(OutMsg {
                addr: p.addr,
                data,
                segment: p.segment,
            });
        }
        let mut i = 0;
        while i < msgs.len() {
            // A run of messages of one family goes out in one sendmmsg.
            let v4 = msgs[i].addr.is_ipv4();
            let end = msgs[i..]
                .iter()
                .position(|m| m.addr.is_ipv4() != v4)
                .map_or(msgs.len(), |n| i + n);
            let Some(fd) = self.fd_for(&msgs[i].addr) else {
                stats.drop_n(DropReason::NoSocket, (end - i) as u64);
                i = end;
                continue;
            };
            while i < end {
                match scratch.send(fd, &msgs[i..end]) {
                    Ok(0) => {
                        stats.drop(DropReason::UdpSend);
                        i += 1;
                    }
                    Ok(n) => i += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        let m = msgs[i];
                        if m.segment != 0
                            && matches!(
                                err.raw_os_error(),
                                Some(
                                    libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT
                                )
                            )
                        {
                            // The kernel or device cannot segment: never try GSO again on
                            // these sockets and send this train one datagram at a time.
                            tracing::warn!(%err, "UDP GSO send failed; falling back to one datagram per send");
                            self.gso.store(false, Ordering::Relaxed);
                            self.send_unsegmented(scratch, fd, &m, stats);
                        } else {
                            tracing::trace!(%err, to = %m.addr, "UDP send failed");
                            stats.drop(DropReason::UdpSend);
                        }
                        i += 1;
                    }
                }
            }
        }
        done
    }

    fn send_unsegmented(
        &self,
        scratch: &mut SendScratch,
        fd: BorrowedFd<'_>,
        m: &OutMsg<'_>,
        stats: &Stats,
    ) {
        let seg = usize::from(m.segment).max(1);
        let parts: Vec<OutMsg<'_>> = m
            .data
            .chunks(seg)
            .map(|data| OutMsg {
                addr: m.addr,
                data,
                segment: 0,
            })
            .collect();
        let mut i = 0;
        while i < parts.len() {
            match scratch.send(fd, &parts[i..]) {
                Ok(n) if n > 0 => i += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    stats.drop(DropReason::UdpSend);
                    i += 1;
                }
            }
        }
    }
}

/// One planned send: a single datagram (`segment` 0) or a GSO train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSend {
    /// Destination.
    pub addr: SocketAddr,
    /// Bytes of the arena.
    pub range: Range<usize>,
    /// GSO segment size (0 for a single datagram).
    pub segment: u16,
}

/// How many datagrams at the end of `list` make up its last GSO train (as [`plan_sends`]
/// groups them) if that train could take one more datagram of its size; 0 if it is complete.
pub fn open_tail(list: &[(SocketAddr, Range<usize>)], max_segs: usize, max_bytes: usize) -> usize {
    let plan = plan_sends(list, max_segs, max_bytes);
    let Some(last) = plan.last() else {
        return 0;
    };
    let count = list
        .iter()
        .rev()
        .take_while(|(_, r)| r.start >= last.range.start)
        .count();
    let seg = list[list.len() - count].1.len();
    let closed = list.last().is_some_and(|(_, r)| r.len() < seg);
    if closed || seg == 0 || count >= max_segs || last.range.len() + seg > max_bytes {
        0
    } else {
        count
    }
}

/// Groups consecutive datagrams into GSO trains: same destination, adjacent in the arena,
/// all the size of the first except a shorter last one, at most `max_segs` datagrams and
/// `max_bytes` bytes per train.
pub fn plan_sends(
    list: &[(SocketAddr, Range<usize>)],
    max_segs: usize,
    max_bytes: usize,
) -> Vec<PlannedSend> {
    let mut out: Vec<PlannedSend> = Vec::new();
    // State of the open train: its segment size, count, and whether it is closed (a
    // shorter datagram ended it).
    let mut open: Option<(usize, usize, bool)> = None;
    for (addr, r) in list {
        let len = r.len();
        if let (Some(last), Some((seg, count, closed))) = (out.last_mut(), open.as_mut()) {
            let joins = !*closed
                && last.addr == *addr
                && last.range.end == r.start
                && len <= *seg
                && len > 0
                && *count < max_segs
                && last.range.len() + len <= max_bytes
                && u16::try_from(*seg).is_ok();
            if joins {
                last.range.end = r.end;
                *count += 1;
                if len < *seg {
                    *closed = true;
                }
                if *count > 1 {
                    last.segment = u16::try_from(*seg).unwrap_or(0);
                }
                continue;
            }
        }
        out.push(PlannedSend {
            addr: *addr,
            range: r.clone(),
            segment: 0,
        });
        open = Some((len, 1, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().expect("ep")
    }

    fn list(items: &[(&str, usize)]) -> Vec<(SocketAddr, Range<usize>)> {
        let mut off = 0;
        items
            .iter()
            .map(|(a, len)| {
                let r = off..off + len;
                off += len;
                (ep(a), r)
            })
            .collect()
    }

    #[test]
    fn equal_sizes_to_one_peer_become_one_train() {
        let l = list(&[("1.1.1.1:1", 100), ("1.1.1.1:1", 100), ("1.1.1.1:1", 60)]);
        let p = plan_sends(&l, 64, MAX_GSO_BYTES);
        assert_eq!(
            p,
            vec![PlannedSend {
                addr: ep("1.1.1.1:1"),
                range: 0..260,
                segment: 100
            }]
        );
    }

    #[test]
    fn trains_split_on_destination_size_and_limits() {
        let l = list(&[
            ("1.1.1.1:1", 100),
            ("1.1.1.1:1", 50),
            ("1.1.1.1:1", 50), // after a short one: new train
            ("2.2.2.2:1", 50), // other peer
            ("2.2.2.2:1", 80), // larger: new train
            ("2.2.2.2:1", 80),
            ("2.2.2.2:1", 80),
        ]);
        let p = plan_sends(&l, 2, MAX_GSO_BYTES);
        let shape: Vec<(usize, u16)> = p.iter().map(|s| (s.range.len(), s.segment)).collect();
        assert_eq!(
            shape,
            vec![(150, 100), (50, 0), (50, 0), (160, 80), (80, 0)]
        );
        // Byte cap.
        let l = list(&[("1.1.1.1:1", 1452); 60]);
        let p = plan_sends(&l, 64, MAX_GSO_BYTES);
        assert!(p.iter().all(|s| s.range.len() <= MAX_GSO_BYTES));
        assert_eq!(p.iter().map(|s| s.range.len()).sum::<usize>(), 60 * 1452);
        assert_eq!(p[0].range.len(), 45 * 1452);
        // No GSO: one message per datagram.
        assert_eq!(plan_sends(&l, 1, MAX_GSO_BYTES).len(), 60);
    }

    #[test]
    fn a_last_train_with_room_is_open() {
        // 45 full-sized datagrams fill a train's bytes; the 15 after them have room.
        let l = list(&[("1.1.1.1:1", 1452); 60]);
        assert_eq!(open_tail(&l, 64, MAX_GSO_BYTES), 15);
        assert_eq!(open_tail(&l[..45], 64, MAX_GSO_BYTES), 0, "full by bytes");
        assert_eq!(open_tail(&l[..8], 8, MAX_GSO_BYTES), 0, "full by segments");
        assert_eq!(open_tail(&l, 1, MAX_GSO_BYTES), 0, "no GSO: nothing waits");
        assert_eq!(open_tail(&[], 64, MAX_GSO_BYTES), 0);
        // A shorter datagram closes its train.
        let l = list(&[("1.1.1.1:1", 100), ("1.1.1.1:1", 100), ("1.1.1.1:1", 60)]);
        assert_eq!(open_tail(&l, 64, MAX_GSO_BYTES), 0);
        assert_eq!(open_tail(&l[..2], 64, MAX_GSO_BYTES), 2);
        // Only the last train counts.
        let l = list(&[("1.1.1.1:1", 100), ("2.2.2.2:1", 100)]);
        assert_eq!(open_tail(&l, 64, MAX_GSO_BYTES), 1);
    }
}
