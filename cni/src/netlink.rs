//! A small synchronous rtnetlink client: one socket, one request at a time, answered by an
//! acknowledgement ([`Netlink::request`]), a single message ([`Netlink::get`]) or a dump
//! ([`Netlink::dump`]).
//!
//! Messages are `netlink-packet-route`'s; the socket is `netlink-sys`'s blocking one, so the
//! plugin needs no async runtime. A socket stays in the network namespace it was opened in:
//! the pod's side of an interface is configured through a socket opened while the thread was
//! in the pod's namespace (see [`crate::datapath`]). Kernel refusals carry the errno and, when
//! the kernel gives one, its extended-ack message ("Nexthop device is not up").
//!
//! What this module does not do: decide anything. It knows no pod, no address and no name.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Receive buffer: large enough for any datagram of a dump (the kernel fills at most 32 KiB).
const RECV_BUF: usize = 64 * 1024;
/// The extended-ack attribute holding the kernel's error text (`NLMSGERR_ATTR_MSG`).
const NLMSGERR_ATTR_MSG: u16 = 1;
/// The length of a netlink message header.
const NLMSG_HDRLEN: usize = 16;

/// Errors of the rtnetlink client.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened, bound or configured.
    #[error("opening a NETLINK_ROUTE socket")]
    Open(#[source] io::Error),
    /// Sending the request failed.
    #[error("sending to the kernel")]
    Send(#[source] io::Error),
    /// Receiving the answer failed.
    #[error("receiving from the kernel")]
    Receive(#[source] io::Error),
    /// The answer did not decode.
    #[error("decoding the kernel's answer")]
    Decode(#[source] netlink_packet_core::DecodeError),
    /// The kernel refused the request.
    #[error("the kernel refused: {}{}", io::Error::from_raw_os_error(*errno), message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        /// The errno (positive).
        errno: i32,
        /// The kernel's extended-ack message, when it gave one.
        message: Option<String>,
    },
    /// The kernel answered a single-message request with nothing.
    #[error("the kernel sent no answer")]
    NoAnswer,
}

impl NetlinkError {
    /// The errno of a kernel refusal (`None` for every other error).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A blocking `NETLINK_ROUTE` socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Open a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        // Errors without the echoed request, with the kernel's text when it has one.
        socket.set_cap_ack(true).map_err(NetlinkError::Open)?;
        // Older kernels lack extended acks; the errno alone still says what failed.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            sequence: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Send `message` with `flags` (plus `NLM_F_REQUEST | NLM_F_ACK`) and wait for the
    /// acknowledgement.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        self.exchange(message, flags | NLM_F_ACK, |_| {})
    }

    /// Send a `GET` for one object and return the kernel's answer.
    pub fn get(
        &mut self,
        message: RouteNetlinkMessage,
    ) -> Result<RouteNetlinkMessage, NetlinkError> {
        let mut answer = None;
        self.exchange(message, 0, |m| {
            answer.get_or_insert(m);
        })?;
        answer.ok_or(NetlinkError::NoAnswer)
    }

    /// Send a dump request and return every message of the dump.
    pub fn dump(
        &mut self,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut all = Vec::new();
        self.exchange(message, NLM_F_DUMP, |m| all.push(m))?;
        Ok(all)
    }

    /// Send one request and read until its answer is complete: an error or acknowledgement
    /// (`NLMSG_ERROR`), `NLMSG_DONE` for dumps, or the single reply of a plain `GET`.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(NetlinkError::Send)?;

        let multipart = flags & NLM_F_DUMP == NLM_F_DUMP;
        let acked = flags & NLM_F_ACK != 0;
        loop {
            self.buf.clear();
            let n = self
                .socket
                .recv(&mut self.buf, 0)
                .map_err(NetlinkError::Receive)?;
            if n > self.buf.len() {
                return Err(NetlinkError::Receive(io::Error::other(
                    "netlink datagram truncated",
                )));
            }
            let mut offset = 0;
            while offset + NLMSG_HDRLEN <= self.buf.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..])
                    .map_err(NetlinkError::Decode)?;
                let length = reply.header.length as usize;
                if length < NLMSG_HDRLEN {
                    return Err(NetlinkError::Receive(io::Error::other(
                        "netlink message shorter than its header",
                    )));
                }
                offset += (length + 3) & !3;
                if reply.header.sequence_number != sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(NetlinkError::Kernel {
                                errno: code.get().abs(),
                                message: ext_ack_message(&e.header),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::InnerMessage(m) => {
                        each(m);
                        if !multipart && !acked {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The `RTNLGRP_LINK` multicast group as a bind mask (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;

/// A socket that hears the kernel announce link changes (`RTNLGRP_LINK`) in the namespace it
/// was opened in. The kernel announces a deleted link (`RTM_DELLINK`) once the link is
/// unlisted and its addresses, routes and neighbours are flushed, before it waits for the
/// grace periods that precede freeing it.
pub struct LinkMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LinkMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkMonitor").finish_non_exhaustive()
    }
}

impl LinkMonitor {
    /// Join `RTNLGRP_LINK`; each [`LinkMonitor::next`] waits at most `slice`.
    pub fn open(slice: std::time::Duration) -> Result<LinkMonitor, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(NetlinkError::Open)?;
        let timeout =
            nix::sys::time::TimeVal::new(slice.as_secs() as _, slice.subsec_micros() as _);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| NetlinkError::Open(e.into()))?;
        Ok(LinkMonitor {
            socket,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// The next thing heard about link `index`, waiting at most one slice.
    pub fn next(&mut self, index: u32) -> Result<Heard, NetlinkError> {
        self.buf.clear();
        match self.socket.recv(&mut self.buf, 0) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc_errno::EAGAIN | libc_errno::EINTR | libc_errno::ENOBUFS)
                ) =>
            {
                return Ok(Heard::Nothing)
            }
            Err(e) => return Err(NetlinkError::Receive(e)),
        }
        let mut offset = 0;
        while offset + NLMSG_HDRLEN <= self.buf.len() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..])
                .map_err(NetlinkError::Decode)?;
            let length = message.header.length as usize;
            if length < NLMSG_HDRLEN {
                break;
            }
            offset += (length + 3) & !3;
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) =
                message.payload
            {
                if link.header.index == index {
                    return Ok(Heard::Deleted);
                }
            }
        }
        Ok(Heard::Other)
    }
}

/// What a [`LinkMonitor`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The kernel announced the link's deletion.
    Deleted,
    /// Announcements about something else (or the link's other changes).
    Other,
    /// Nothing within the slice, or announcements were lost (`ENOBUFS`): ask the kernel.
    Nothing,
}

/// What the plugin reads of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its interface index.
    pub index: u32,
    /// Its alias (`None` when unset or empty).
    pub alias: Option<String>,
    /// Its MAC address, when it has one.
    pub mac: Option<[u8; 6]>,
}

/// A veth pair to create: `name` here, `peer` in the namespace `peer_netns`.
#[derive(Debug, Clone, Copy)]
pub struct VethPair<'a> {
    /// This side's name.
    pub name: &'a str,
    /// This side's MAC address.
    pub mac: [u8; 6],
    /// The peer's name.
    pub peer: &'a str,
    /// The peer's network namespace.
    pub peer_netns: BorrowedFd<'a>,
    /// The MTU of both sides (the kernel's default when `None`).
    pub mtu: Option<u32>,
}

/// A route of the main table: `dst` through `oif`, via `gateway` when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination.
    pub dst: IpNet,
    /// The next hop; `None` for an on-link route.
    pub gateway: Option<IpAddr>,
    /// The output interface's index.
    pub oif: u32,
}

/// Flags of a request that creates or replaces (`ip ... replace`).
const CREATE_OR_REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;

fn family_of(addr: &IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

// === impl Netlink: links, addresses, routes, neighbours ===

impl Netlink {
    /// The link named `name`, `None` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let answer = match self.get(RouteNetlinkMessage::GetLink(request)) {
            Ok(answer) => answer,
            Err(e) if e.errno() == Some(libc_errno::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        let RouteNetlinkMessage::NewLink(link) = answer else {
            return Err(NetlinkError::NoAnswer);
        };
        let mut out = Link {
            index: link.header.index,
            alias: None,
            mac: None,
        };
        for attribute in link.attributes {
            match attribute {
                LinkAttribute::IfAlias(a) if !a.is_empty() => out.alias = Some(a),
                LinkAttribute::Address(m) => out.mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
                _ => {}
            }
        }
        Ok(Some(out))
    }

    /// Create a veth pair (`ip link add NAME address MAC mtu M type veth peer name PEER mtu M
    /// netns NS`); fails with `EEXIST` when `name` exists.
    pub fn create_veth(&mut self, pair: &VethPair<'_>) -> Result<(), NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(pair.peer.to_string()));
        if let Some(mtu) = pair.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        peer.attributes
            .push(LinkAttribute::NetNsFd(pair.peer_netns.as_raw_fd()));
        let mut link = LinkMessage::default();
        link.attributes
            .push(LinkAttribute::IfName(pair.name.to_string()));
        link.attributes
            .push(LinkAttribute::Address(pair.mac.to_vec()));
        if let Some(mtu) = pair.mtu {
            link.attributes.push(LinkAttribute::Mtu(mtu));
        }
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Set the link `index` up, and its alias when `alias` is given (`ip link set ... alias A
    /// up`).
    pub fn set_up(&mut self, index: u32, alias: Option<&str>) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        if let Some(alias) = alias {
            link.attributes
                .push(LinkAttribute::IfAlias(alias.to_string()));
        }
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    /// Set the alias of link `index` (`ip link set ... alias A`), leaving its flags alone.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    /// Set the link named `name` up.
    pub fn set_up_by_name(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes
            .push(LinkAttribute::IfName(name.to_string()));
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    /// Whether a link with index `index` exists in this socket's namespace.
    pub fn has_link(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut request = LinkMessage::default();
        request.header.index = index;
        match self.get(RouteNetlinkMessage::GetLink(request)) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc_errno::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete the link `index` (and, for a veth, its peer).
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(link), 0)
    }

    /// Add or replace `addr` as a host address (`/32`, `/128`) on link `index`, without
    /// duplicate address detection for IPv6 (`ip addr replace A/32 dev D [nodad]`).
    pub fn replace_host_address(&mut self, index: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.family = family_of(&addr);
        message.header.prefix_len = host_prefix(&addr);
        message.header.index = index;
        message.attributes.push(AddressAttribute::Local(addr));
        message.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            message.header.flags = AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(RouteNetlinkMessage::NewAddress(message), CREATE_OR_REPLACE)
    }

    /// The addresses on link `index`, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let dump = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
        Ok(dump
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let prefix = a.header.prefix_len;
                    a.attributes.into_iter().find_map(|at| match at {
                        AddressAttribute::Local(ip) => IpNet::new(ip, prefix).ok(),
                        AddressAttribute::Address(ip) if ip.is_ipv6() => {
                            IpNet::new(ip, prefix).ok()
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Add or replace a route of the main table, as `ip route replace` does: protocol `boot`,
    /// and scope `link` for an IPv4 route without gateway.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let dst = route.dst.trunc();
        let mut message = RouteMessage::default();
        message.header.address_family = family_of(&dst.addr());
        message.header.destination_prefix_length = dst.prefix_len();
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.kind = RouteType::Unicast;
        message.header.scope = if dst.addr().is_ipv4() && route.gateway.is_none() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        if dst.prefix_len() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(dst.addr().into()));
        }
        if let Some(gateway) = route.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(gateway.into()));
        }
        message.attributes.push(RouteAttribute::Oif(route.oif));
        self.request(RouteNetlinkMessage::NewRoute(message), CREATE_OR_REPLACE)
    }

    /// The routes of the main table of the family of `family_of`.
    pub fn main_routes(&mut self, family_of_addr: IpAddr) -> Result<Vec<Route>, NetlinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family_of(&family_of_addr);
        let unspecified = match family_of_addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let dump = self.dump(RouteNetlinkMessage::GetRoute(request))?;
        Ok(dump
            .into_iter()
            .filter_map(|m| {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    return None;
                };
                let mut table = u32::from(r.header.table);
                let (mut dst, mut gateway, mut oif) = (unspecified, None, None);
                for attribute in &r.attributes {
                    match attribute {
                        RouteAttribute::Table(t) => table = *t,
                        RouteAttribute::Destination(a) => dst = ip_of(a)?,
                        RouteAttribute::Gateway(a) => gateway = ip_of(a),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(())?;
                Some(Route {
                    dst: IpNet::new(dst, r.header.destination_prefix_length).ok()?,
                    gateway,
                    oif: oif?,
                })
            })
            .collect())
    }

    /// Add or replace a permanent neighbour entry (`ip neigh replace A lladdr M dev D nud
    /// permanent`).
    pub fn replace_permanent_neighbour(
        &mut self,
        index: u32,
        addr: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = family_of(&addr);
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message
            .attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(message),
            CREATE_OR_REPLACE,
        )
    }
}

/// The host prefix length of `addr`'s family: 32 or 128.
pub fn host_prefix(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The errno values this client's callers tell apart.
pub mod libc_errno {
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// File exists.
    pub const EEXIST: i32 = 17;
    /// No such device.
    pub const ENODEV: i32 = 19;
    /// Interrupted system call.
    pub const EINTR: i32 = 4;
    /// Try again (a receive timeout passed).
    pub const EAGAIN: i32 = 11;
    /// No buffer space (multicast messages were dropped).
    pub const ENOBUFS: i32 = 105;
}

/// The extended-ack text of an error's payload (after the request's header; `NLM_F_CAPPED`
/// left the request's body out).
fn ext_ack_message(payload: &[u8]) -> Option<String> {
    let mut tlvs = payload.get(NLMSG_HDRLEN..)?;
    while tlvs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([tlvs[0], tlvs[1]]));
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            return Some(String::from_utf8_lossy(&text[..end]).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ext_ack_text_is_found_after_the_echoed_header() {
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        // An unrelated attribute (offset, 4 bytes of value), then the message.
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&2u16.to_ne_bytes());
        payload.extend_from_slice(&[0, 0, 0, 0]);
        let text = b"Nexthop device is not up\0";
        payload.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        assert_eq!(
            ext_ack_message(&payload).as_deref(),
            Some("Nexthop device is not up")
        );
        assert_eq!(ext_ack_message(&payload[..NLMSG_HDRLEN]), None);
        assert_eq!(ext_ack_message(&[]), None);
    }

    #[test]
    fn kernel_errors_print_errno_and_text_once() {
        let e = NetlinkError::Kernel {
            errno: 17,
            message: Some("x".into()),
        };
        assert_eq!(
            e.to_string(),
            "the kernel refused: File exists (os error 17) (x)"
        );
        assert_eq!(e.errno(), Some(17));
    }
}
