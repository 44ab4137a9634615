//! Packet parsing for the policy checks: Ethernet, IPv4 (IHL honoured, non-first fragments
//! have no ports) or IPv6 (the fixed header's next header only: no extension-header walk),
//! then TCP/UDP/SCTP ports, ICMP/ICMPv6 type, code and echo id, and the tuple embedded in an
//! ICMP error. Every read is a `bpf_skb_load_bytes` (`ctx.load`), bounds-checked by the kernel:
//! a packet too short for what its headers announce is an error, which the caller treats as
//! "cannot be judged" (dropped where the direction is isolated).
//!
//! An IPv6 packet whose first next header is an extension header (hop-by-hop, routing,
//! fragment, destination options, AH, ESP, ...) is judged as that protocol number with port 0:
//! it matches only rules that allow every protocol and port of the peer, so under port rules
//! it is refused (fail closed). Non-first IPv4 fragments likewise have port 0.

use aya_ebpf::programs::TcContext;
use ebpf_redirect_common::conntrack::{CT_FAMILY_V4, CT_FAMILY_V6};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV6_HLEN: usize = 40;

/// IP protocol numbers the parser knows.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// SCTP (same port offsets as TCP and UDP).
pub const PROTO_SCTP: u8 = 132;

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// What the L4 header says about the packet, beyond its ports.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP, UDP or SCTP with ports, or another protocol (ports zero).
    Plain,
    /// ICMP/ICMPv6 echo request or reply: both ports hold the identifier.
    Echo,
    /// An ICMP/ICMPv6 error (destination unreachable, time exceeded, packet too big,
    /// parameter problem) quoting the packet at `l4_off + 8`.
    Error,
    /// ICMPv6 neighbour discovery (router/neighbour solicitation/advertisement, 133–136).
    NeighbourDiscovery,
}

/// The fields the policy and connection tracking look at.
#[derive(Clone, Copy)]
pub struct Packet {
    /// `CT_FAMILY_V4` or `CT_FAMILY_V6`.
    pub family: u8,
    /// L4 protocol (IPv6: the fixed header's next header).
    pub protocol: u8,
    /// Kind of L4 header.
    pub l4: L4,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Source port (echo id), network order.
    pub src_port: [u8; 2],
    /// Destination port (echo id), network order.
    pub dst_port: [u8; 2],
    /// Source address, network order (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address, network order (IPv4 in the first 4 bytes).
    pub dst: [u8; 16],
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
}

impl Packet {
    /// Nothing read yet.
    pub const EMPTY: Packet = Packet {
        family: 0,
        protocol: 0,
        l4: L4::Plain,
        tcp_flags: 0,
        src_port: [0; 2],
        dst_port: [0; 2],
        src: [0; 16],
        dst: [0; 16],
        l4_off: 0,
    };
}

/// Parses the frame: `Ok(None)` for non-IP (ARP, ...), `Err` if it is too short for its headers.
#[inline(always)]
pub fn packet(ctx: &TcContext) -> Result<Option<Packet>, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    let mut p = Packet::EMPTY;
    let has_ports = match ethertype {
        ETH_P_IP => ipv4(ctx, ETH_HLEN, &mut p)?,
        ETH_P_IPV6 => ipv6(ctx, ETH_HLEN, &mut p)?,
        _ => return Ok(None),
    };
    if has_ports {
        l4(ctx, &mut p, false)?;
    }
    Ok(Some(p))
}

/// Parses an IP packet whose header starts at `off` (family from the version nibble) into
/// `p`, for flow events: `Ok(false)` when it is not IPv4 or IPv6, `Err` when the IP header
/// itself is truncated. A truncated L4 header leaves the ports zero instead of failing, so a
/// drop event still names the addresses.
#[inline(always)]
pub fn ip_at(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<bool, i64> {
    let has_ports = match ctx.load::<u8>(off)? >> 4 {
        4 => ipv4(ctx, off, p)?,
        6 => ipv6(ctx, off, p)?,
        _ => return Ok(false),
    };
    if has_ports && l4(ctx, p, false).is_err() {
        p.src_port = [0; 2];
        p.dst_port = [0; 2];
    }
    Ok(true)
}

/// Reads the IPv4 header at `off` into `p`; returns whether an L4 header follows (false for
/// a non-first fragment).
#[inline(always)]
fn ipv4(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<bool, i64> {
    // One helper call for the fixed header.
    let h: [u8; 20] = ctx.load(off)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(-1);
    }
    p.family = CT_FAMILY_V4;
    p.protocol = h[9];
    p.src[..4].copy_from_slice(&h[12..16]);
    p.dst[..4].copy_from_slice(&h[16..20]);
    p.l4_off = off + ihl;
    // Fragment offset (13 bits) non-zero: no L4 header in this packet.
    Ok(u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0)
}

/// Reads the IPv6 fixed header at `off` into `p`; an L4 header follows it unless the next
/// header is an extension header (then `protocol` is that header's number).
#[inline(always)]
fn ipv6(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<bool, i64> {
    let h: [u8; IPV6_HLEN] = ctx.load(off)?;
    p.family = CT_FAMILY_V6;
    p.protocol = h[6];
    p.src.copy_from_slice(&h[8..24]);
    p.dst.copy_from_slice(&h[24..40]);
    p.l4_off = off + IPV6_HLEN;
    Ok(true)
}

/// Reads ports, TCP flags or ICMP type and echo id at `p.l4_off`. A `quoted` packet (inside an
/// ICMP error) is only guaranteed its first 8 L4 bytes: its TCP flags are not read.
#[inline(always)]
fn l4(ctx: &TcContext, p: &mut Packet, quoted: bool) -> Result<(), i64> {
    let off = p.l4_off;
    match p.protocol {
        PROTO_TCP if !quoted => {
            // Ports and flags in one helper call (a TCP header has at least 20 bytes).
            let h: [u8; 14] = ctx.load(off)?;
            p.src_port = [h[0], h[1]];
            p.dst_port = [h[2], h[3]];
            p.tcp_flags = h[13];
        }
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let ports: [u8; 4] = ctx.load(off)?;
            p.src_port = [ports[0], ports[1]];
            p.dst_port = [ports[2], ports[3]];
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let head: [u8; 8] = ctx.load(off)?;
            p.l4 = icmp_kind(p.protocol, head[0]);
            if p.l4 == L4::Echo {
                p.src_port = [head[4], head[5]];
                p.dst_port = [head[4], head[5]];
            }
        }
        _ => {}
    }
    Ok(())
}

/// The kind of an ICMP (`protocol` 1) or ICMPv6 (58) message of type `icmp_type`.
#[inline(always)]
fn icmp_kind(protocol: u8, icmp_type: u8) -> L4 {
    if protocol == PROTO_ICMP {
        match icmp_type {
            0 | 8 => L4::Echo,
            3 | 11 | 12 => L4::Error,
            _ => L4::Plain,
        }
    } else {
        match icmp_type {
            128 | 129 => L4::Echo,
            1..=4 => L4::Error,
            133..=136 => L4::NeighbourDiscovery,
            _ => L4::Plain,
        }
    }
}

/// The packet quoted by the ICMP error `outer` (its first bytes follow the 8-byte ICMP header),
/// as it was sent: addresses, protocol and ports (or echo id). `Err` if it is truncated.
#[inline(always)]
pub fn quoted(ctx: &TcContext, outer: &Packet) -> Result<Packet, i64> {
    let mut p = Packet::EMPTY;
    let off = outer.l4_off + 8;
    let has_ports = if outer.family == CT_FAMILY_V4 {
        ipv4(ctx, off, &mut p)?
    } else {
        ipv6(ctx, off, &mut p)?
    };
    if has_ports {
        // RFC 792 and 4443 quote at least 8 bytes of the L4 header: ports, ICMP type and id.
        l4(ctx, &mut p, true)?;
    }
    Ok(p)
}
