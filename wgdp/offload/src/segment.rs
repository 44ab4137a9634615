//! Turning one TUN read (virtio-net header + IP packet, possibly a TSO/USO super-packet with
//! a partial checksum) into wire-ready IP packets.

use std::ops::Range;

use crate::checksum;
use crate::ip::{
    self, read16, read32, write16, write32, IPV4_MF_OFFSET_MASK, IPV4_MIN_HDR, IPV6_HDR, PROTO_TCP,
    PROTO_UDP, TCP_CSUM_OFF, TCP_CWR, TCP_FIN, TCP_FLAGS_OFF, TCP_MIN_HDR, TCP_PSH, UDP_CSUM_OFF,
    UDP_HDR,
};
use crate::vnet::{
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};
use crate::{OffloadError, VnetHdr, VNET_HDR_LEN};

/// Most segments one GSO packet may be split into.
///
/// The kernel's TCP stack sizes super-packets by bytes, not segments, so a flow with a small
/// MSS legitimately produces many: 65,535 bytes at Linux's smallest MSS (`tcp_min_snd_mss`,
/// 48) is 1,366 segments. Dropping such a packet would make TCP resend the same super-packet
/// and crawl, so the limit sits above that and only bounds the work a nonsensical `gso_size`
/// (1, 2…) can cause. (USO packets never exceed 128 segments: `UDP_SEGMENT` refuses more.)
pub const MAX_SEGMENTS: usize = 2048;

/// IPv6 extension headers that may sit between the fixed header and TCP/UDP in a GSO packet.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;

/// Where the headers of a GSO packet end and what they are.
#[derive(Debug, Clone, Copy)]
struct Layout {
    v6: bool,
    /// Offset of the TCP/UDP header.
    l4_off: usize,
    /// `l4_off` + TCP/UDP header length: where the payload starts.
    hdrs_len: usize,
    /// Length of the IP packet according to its header (trailing bytes are ignored).
    ip_len: usize,
    tcp: bool,
}

/// Turns one packet read from the TUN (`hdr` + the IP packet `pkt` that followed it) into
/// wire-ready IP packets with complete IP/TCP/UDP checksums.
///
/// * `GSO_NONE` with `NEEDS_CSUM`: the packet, with the checksum at
///   `csum_start + csum_offset` completed over `pkt[csum_start..]` (0 becomes 0xffff, as in
///   Linux). Any protocol; nothing else is checked or changed.
/// * `GSO_NONE` without it: `pkt` unchanged, whatever it holds.
/// * `GSO_TCPV4`/`GSO_TCPV6` (with or without the ECN bit): one packet per `gso_size`
///   payload bytes (the last may be shorter), each with the headers copied (IPv4 options and
///   IPv6 hop-by-hop/destination options included), sequence numbers advanced, FIN/PSH only
///   on the last segment, CWR only on the first, IPv4 total length, an ID incremented per
///   segment (wrapping) and header checksum, or the IPv6 payload length, and a full TCP
///   checksum.
/// * `GSO_UDP_L4`: one UDP datagram per `gso_size` payload bytes with its length, IPv4
///   total length/ID/header checksum or IPv6 payload length, and a full UDP checksum.
///
/// For GSO packets `hdr_len`, `csum_start` and `csum_offset` are not trusted (Linux puts the
/// linear length in `hdr_len`): the headers are parsed, and all checksums recomputed from
/// scratch. The IP length field decides where the packet ends; trailing bytes are dropped.
/// Other GSO types (UFO), IP fragments, IPv6 routing or fragment headers, a `gso_size` of 0,
/// more than [`MAX_SEGMENTS`] segments or headers that don't fit are errors.
///
/// Segments are written back to back into `out` and their ranges pushed to `ranges`; both
/// are cleared first (and left empty on error), and keep their capacity across calls.
/// This copying form (into a fresh buffer) is for callers that keep the segments; the datapath
/// uses [`InPlaceSegments`], which produces the same packets without copying the payload.
pub fn segment(
    hdr: &VnetHdr,
    pkt: &[u8],
    out: &mut Vec<u8>,
    ranges: &mut Vec<Range<usize>>,
) -> Result<(), OffloadError> {
    out.clear();
    ranges.clear();
    let mut work = pkt.to_vec();
    let mut segs = InPlaceSegments::new(hdr, &mut work)?;
    while let Some(seg) = segs.next_segment() {
        let start = out.len();
        out.extend_from_slice(seg);
        ranges.push(start..out.len());
    }
    Ok(())
}

/// [`segment()`] for a whole TUN read: the virtio-net header followed by the IP packet.
pub fn segment_frame(
    frame: &[u8],
    out: &mut Vec<u8>,
    ranges: &mut Vec<Range<usize>>,
) -> Result<(), OffloadError> {
    out.clear();
    ranges.clear();
    let hdr = VnetHdr::parse(frame)?;
    segment(
        &hdr,
        frame.get(VNET_HDR_LEN..).unwrap_or_default(),
        out,
        ranges,
    )
}

/// The segments of one TUN read, made inside the read's own buffer: the packets of
/// [`segment()`], one at a time, without copying any payload.
///
/// Segment `i`'s payload stays where it is; its headers are written into the bytes just
/// before it, which belong to segment `i - 1` (its payload's tail, or for a tiny
/// `gso_size` its headers). So a segment is valid only until the next call to
/// [`next_segment`](Self::next_segment), which the borrow enforces, and the buffer holds no
/// useful packet afterwards. Everything that can be wrong with the packet is found by
/// [`new`](Self::new), before the first segment: a packet is sent whole or not at all.
#[derive(Debug)]
pub struct InPlaceSegments<'a> {
    pkt: &'a mut [u8],
    plan: Plan,
    /// Index of the next segment.
    next: usize,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    /// One packet, `pkt[..len]`, complete.
    Single { len: usize },
    /// A TSO/USO packet.
    Gso(Gso),
}

/// How a TSO/USO packet is cut: its headers, segment size and count, and the first
/// segment's IPv4 ID, TCP sequence number and flags.
#[derive(Debug, Clone, Copy)]
struct Gso {
    layout: Layout,
    gso_size: usize,
    count: usize,
    ipv4_id: u16,
    tcp_seq: u32,
    tcp_flags: u8,
}

impl<'a> InPlaceSegments<'a> {
    /// Plans the segments of `pkt`, the IP packet that followed `hdr` (see [`segment()`] for
    /// what is accepted and what each segment gets). A `GSO_NONE` packet with `NEEDS_CSUM`
    /// has its checksum completed here.
    pub fn new(hdr: &VnetHdr, pkt: &'a mut [u8]) -> Result<Self, OffloadError> {
        let gso_type = hdr.gso_type;
        let layout = match hdr.gso_kind() {
            VIRTIO_NET_HDR_GSO_NONE => {
                complete_single(hdr, pkt)?;
                let len = pkt.len();
                return Ok(InPlaceSegments {
                    pkt,
                    plan: Plan::Single { len },
                    next: 0,
                });
            }
            VIRTIO_NET_HDR_GSO_TCPV4 => parse_layout(pkt, gso_type, Some(false), PROTO_TCP)?,
            VIRTIO_NET_HDR_GSO_TCPV6 => parse_layout(pkt, gso_type, Some(true), PROTO_TCP)?,
            VIRTIO_NET_HDR_GSO_UDP_L4 => parse_layout(pkt, gso_type, None, PROTO_UDP)?,
            _ => return Err(OffloadError::UnsupportedGsoType(gso_type)),
        };
        if hdr.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let gso_size = usize::from(hdr.gso_size);
        let payload = layout.ip_len - layout.hdrs_len;
        // An empty payload still yields one (header-only) packet.
        let count = payload.div_ceil(gso_size).max(1);
        if count > MAX_SEGMENTS {
            return Err(OffloadError::TooManySegments {
                segments: count,
                max: MAX_SEGMENTS,
            });
        }
        let ipv4_id = if layout.v6 { 0 } else { read16(pkt, 4) };
        let (tcp_seq, tcp_flags) = if layout.tcp {
            (
                read32(pkt, layout.l4_off + 4),
                pkt[layout.l4_off + TCP_FLAGS_OFF],
            )
        } else {
            (0, 0)
        };
        Ok(InPlaceSegments {
            pkt,
            plan: Plan::Gso(Gso {
                layout,
                gso_size,
                count,
                ipv4_id,
                tcp_seq,
                tcp_flags,
            }),
            next: 0,
        })
    }

    /// [`new`](Self::new) for a whole TUN read: the virtio-net header, then the IP packet.
    pub fn from_frame(frame: &'a mut [u8]) -> Result<Self, OffloadError> {
        let hdr = VnetHdr::parse(frame)?;
        let pkt = frame.get_mut(VNET_HDR_LEN..).unwrap_or_default();
        Self::new(&hdr, pkt)
    }

    /// How many segments there are in all.
    pub fn count(&self) -> usize {
        match self.plan {
            Plan::Single { .. } => 1,
            Plan::Gso(g) => g.count,
        }
    }

    /// The length of the longest segment.
    pub fn max_len(&self) -> usize {
        match &self.plan {
            Plan::Single { len } => *len,
            Plan::Gso(g) => (g.layout.hdrs_len + g.gso_size).min(g.layout.ip_len),
        }
    }

    /// The next wire-ready packet, or `None` after the last.
    pub fn next_segment(&mut self) -> Option<&[u8]> {
        let index = self.next;
        if index >= self.count() {
            return None;
        }
        self.next += 1;
        let g = match self.plan {
            Plan::Single { len } => return Some(&self.pkt[..len]),
            Plan::Gso(g) => g,
        };
        let hdrs = g.layout.hdrs_len;
        let start = index * g.gso_size;
        let end = (hdrs + (index + 1) * g.gso_size).min(g.layout.ip_len);
        if index > 0 {
            // The previous segment's headers, into the bytes before this payload; the
            // fields that differ are rewritten below. (They may overlap when `gso_size` is
            // smaller than the headers: `copy_within` is a memmove.)
            let prev = start - g.gso_size;
            self.pkt.copy_within(prev..prev + hdrs, start);
        }
        let seg = &mut self.pkt[start..end];
        let seg_len = seg.len();
        let l4 = g.layout.l4_off;
        let l4_len = seg_len - l4;
        if g.layout.v6 {
            // Fits: never more than the original payload length.
            write16(seg, 4, (seg_len - IPV6_HDR) as u16);
        } else {
            // Fits: never more than the original total length.
            write16(seg, 2, seg_len as u16);
            // Wrapping on purpose: IDs are 16 bits.
            write16(seg, 4, g.ipv4_id.wrapping_add(index as u16));
            // For IPv4 the transport header follows the IP header directly.
            ip::set_ipv4_checksum(&mut seg[..l4]);
        }
        if g.layout.tcp {
            // Wrapping on purpose: sequence space is mod 2^32.
            write32(
                seg,
                l4 + 4,
                g.tcp_seq.wrapping_add((index * g.gso_size) as u32),
            );
            let mut flags = g.tcp_flags;
            if index + 1 < g.count {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if index > 0 {
                flags &= !TCP_CWR;
            }
            seg[l4 + TCP_FLAGS_OFF] = flags;
            write16(seg, l4 + TCP_CSUM_OFF, 0);
            let s = ip::pseudo_sum(seg, g.layout.v6, PROTO_TCP, l4_len);
            let c = checksum::finish(checksum::sum(&seg[l4..], s));
            write16(seg, l4 + TCP_CSUM_OFF, c);
        } else {
            write16(seg, l4 + 4, l4_len as u16);
            write16(seg, l4 + UDP_CSUM_OFF, 0);
            let s = ip::pseudo_sum(seg, g.layout.v6, PROTO_UDP, l4_len);
            let c = checksum::finish_nonzero(checksum::sum(&seg[l4..], s));
            write16(seg, l4 + UDP_CSUM_OFF, c);
        }
        Some(seg)
    }
}

/// A `GSO_NONE` packet: its partial checksum completed in place if it has one.
fn complete_single(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), OffloadError> {
    if hdr.needs_csum() {
        let start = usize::from(hdr.csum_start);
        let field = start + usize::from(hdr.csum_offset);
        if field + 2 > pkt.len() {
            return Err(OffloadError::ChecksumOutOfRange {
                csum_start: hdr.csum_start,
                csum_offset: hdr.csum_offset,
                len: pkt.len(),
            });
        }
        // The field holds the pseudo-header sum, so summing the range including it gives the
        // whole checksum.
        let c = checksum::finish_nonzero(checksum::sum(&pkt[start..], 0));
        write16(pkt, field, c);
    }
    Ok(())
}

/// Parses and checks the IP and transport headers of a GSO packet. `want_v6` is the IP
/// version the GSO type demands (`None`: either).
fn parse_layout(
    pkt: &[u8],
    gso_type: u8,
    want_v6: Option<bool>,
    protocol: u8,
) -> Result<Layout, OffloadError> {
    let len = pkt.len();
    let Some(&first) = pkt.first() else {
        return Err(OffloadError::TruncatedIpHeader { len });
    };
    let version = first >> 4;
    let v6 = match (version, want_v6) {
        (4, None | Some(false)) => false,
        (6, None | Some(true)) => true,
        _ => return Err(OffloadError::IpVersionMismatch { version, gso_type }),
    };
    let (l4_off, found_protocol, ip_len) = if v6 {
        parse_ipv6(pkt)?
    } else {
        parse_ipv4(pkt)?
    };
    if found_protocol != protocol {
        return Err(OffloadError::ProtocolMismatch {
            protocol: found_protocol,
            gso_type,
        });
    }
    let tcp = protocol == PROTO_TCP;
    let min_l4 = if tcp { TCP_MIN_HDR } else { UDP_HDR };
    if l4_off + min_l4 > ip_len {
        return Err(OffloadError::TruncatedTransportHeader {
            offset: l4_off,
            needed: min_l4,
            len: ip_len,
        });
    }
    let l4_hdr_len = if tcp {
        let doff = usize::from(pkt[l4_off + 12] >> 4) * 4;
        if doff < TCP_MIN_HDR {
            return Err(OffloadError::BadTcpDataOffset(doff));
        }
        if l4_off + doff > ip_len {
            return Err(OffloadError::TruncatedTransportHeader {
                offset: l4_off,
                needed: doff,
                len: ip_len,
            });
        }
        doff
    } else {
        UDP_HDR
    };
    Ok(Layout {
        v6,
        l4_off,
        hdrs_len: l4_off + l4_hdr_len,
        ip_len,
        tcp,
    })
}

/// Returns (transport offset, protocol, IP length) of an IPv4 packet.
fn parse_ipv4(pkt: &[u8]) -> Result<(usize, u8, usize), OffloadError> {
    let len = pkt.len();
    if len < IPV4_MIN_HDR {
        return Err(OffloadError::TruncatedIpHeader { len });
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HDR {
        return Err(OffloadError::BadIpv4HeaderLength(ihl));
    }
    let total = usize::from(read16(pkt, 2));
    if ihl > len || total < ihl || total > len {
        return Err(OffloadError::IpLengthMismatch {
            claimed: total,
            actual: len,
            min: ihl,
        });
    }
    if read16(pkt, 6) & IPV4_MF_OFFSET_MASK != 0 {
        return Err(OffloadError::Fragment);
    }
    Ok((ihl, pkt[9], total))
}

/// Returns (transport offset, upper-layer protocol, IP length) of an IPv6 packet, walking
/// hop-by-hop and destination options headers.
fn parse_ipv6(pkt: &[u8]) -> Result<(usize, u8, usize), OffloadError> {
    let len = pkt.len();
    if len < IPV6_HDR {
        return Err(OffloadError::TruncatedIpHeader { len });
    }
    let total = IPV6_HDR + usize::from(read16(pkt, 4));
    if total > len {
        return Err(OffloadError::IpLengthMismatch {
            claimed: total,
            actual: len,
            min: IPV6_HDR,
        });
    }
    let mut next = pkt[6];
    let mut off = IPV6_HDR;
    loop {
        match next {
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTS => {
                if off + 8 > total {
                    return Err(OffloadError::IpLengthMismatch {
                        claimed: total,
                        actual: len,
                        min: off + 8,
                    });
                }
                let ext_len = (usize::from(pkt[off + 1]) + 1) * 8;
                next = pkt[off];
                off += ext_len;
                if off > total {
                    return Err(OffloadError::IpLengthMismatch {
                        claimed: total,
                        actual: len,
                        min: off,
                    });
                }
            }
            IPV6_FRAGMENT => return Err(OffloadError::Fragment),
            PROTO_TCP | PROTO_UDP => return Ok((off, next, total)),
            // ICMPv6, routing headers, ESP… : whatever it is, it is not what the GSO type
            // says; report the protocol mismatch for upper layers and the extension header
            // otherwise.
            other if ip::is_ipv6_extension(other) => {
                return Err(OffloadError::UnsupportedIpv6ExtensionHeader(other))
            }
            other => return Ok((off, other, total)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
