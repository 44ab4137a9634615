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
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::vnet::{
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_UDP,
    };

    fn run(hdr: &VnetHdr, pkt: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut out = vec![0xaa; 7];
        let mut ranges = vec![3..5, 5..7];
        let r = segment(hdr, pkt, &mut out, &mut ranges);
        if r.is_err() {
            assert!(
                out.is_empty() && ranges.is_empty(),
                "buffers left dirty on error"
            );
        } else {
            // Back to back, covering `out`.
            let mut at = 0;
            for range in &ranges {
                assert_eq!(range.start, at);
                at = range.end;
            }
            assert_eq!(at, out.len());
        }
        r.map(|()| split(&out, &ranges))
    }

    /// Segments a TSO packet and checks every segment against the original.
    fn check_tso(ip: &IpSpec, tcp: &TcpSpec, len: usize, mss: u16) -> Vec<Parsed> {
        let data = payload(len, 7);
        let (hdr, pkt) = tso(ip, tcp, &data, mss);
        let segs = run(&hdr, &pkt).unwrap();
        let mss = usize::from(mss);
        assert_eq!(segs.len(), len.div_ceil(mss).max(1));
        let parsed: Vec<Parsed> = segs.iter().map(|s| check_packet(s)).collect();
        let n = parsed.len();
        for (i, p) in parsed.iter().enumerate() {
            let last = i + 1 == n;
            assert_eq!(p.protocol, 6);
            assert_eq!(p.v6, ip.v6);
            assert_eq!(
                (p.sport, p.dport, p.ack, p.window),
                (tcp.sport, tcp.dport, tcp.ack, tcp.window)
            );
            assert_eq!(p.options, tcp.options);
            assert_eq!(
                p.seq,
                tcp.seq.wrapping_add((i * mss) as u32),
                "seq of segment {i}"
            );
            if !ip.v6 {
                assert_eq!(p.id, ip.id.wrapping_add(i as u16), "IPv4 ID of segment {i}");
            }
            let mut want = tcp.flags;
            if !last {
                want &= !(FIN | PSH);
            }
            if i > 0 {
                want &= !CWR;
            }
            assert_eq!(p.flags, want, "flags of segment {i}");
            let expect_len = if last { len - i * mss } else { mss };
            assert_eq!(p.payload.len(), expect_len);
        }
        let joined: Vec<u8> = parsed.iter().flat_map(|p| p.payload.clone()).collect();
        assert_eq!(joined, data);
        parsed
    }

    #[test]
    fn tcpv4_tso_segments() {
        let tcp = TcpSpec {
            flags: ACK | PSH | FIN | CWR | ECE,
            options: timestamps(1, 2),
            ..TcpSpec::default()
        };
        check_tso(&IpSpec::v4(), &tcp, 5000, 1400);
        check_tso(&IpSpec::v4(), &tcp, 64_000 - 52, 1448);
        check_tso(&IpSpec::v4(), &tcp, 2800, 1400); // exact multiple
    }

    #[test]
    fn tcpv6_tso_segments() {
        let tcp = TcpSpec {
            flags: ACK | PSH,
            options: timestamps(0xdead_beef, 9),
            ..TcpSpec::default()
        };
        check_tso(&IpSpec::v6(), &tcp, 60_000, 1380);
        check_tso(&IpSpec::v6(), &TcpSpec::default(), 1381, 1380);
    }

    #[test]
    fn sequence_numbers_and_ids_wrap() {
        let ip = IpSpec {
            id: 0xfffe,
            df: false,
            ..IpSpec::v4()
        };
        let tcp = TcpSpec {
            seq: u32::MAX - 1000,
            ..TcpSpec::default()
        };
        let p = check_tso(&ip, &tcp, 4000, 1000);
        assert_eq!(
            p.iter().map(|p| p.id).collect::<Vec<_>>(),
            [0xfffe, 0xffff, 0, 1]
        );
        assert_eq!(p[2].seq, 999);
    }

    #[test]
    fn single_segment_and_empty_payload_gso() {
        check_tso(&IpSpec::v4(), &TcpSpec::default(), 100, 1400);
        check_tso(&IpSpec::v6(), &TcpSpec::default(), 0, 1400);
    }

    #[test]
    fn ecn_bit_in_gso_type_is_accepted() {
        let (mut hdr, pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &payload(3000, 1), 1000);
        hdr.gso_type |= VIRTIO_NET_HDR_GSO_ECN;
        assert_eq!(run(&hdr, &pkt).unwrap().len(), 3);
    }

    fn check_uso(ip: &IpSpec, len: usize, size: u16) {
        let data = payload(len, 3);
        let (hdr, pkt) = uso(ip, 4433, 53, &data, size);
        let segs = run(&hdr, &pkt).unwrap();
        let size = usize::from(size);
        assert_eq!(segs.len(), len.div_ceil(size));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = check_packet(s);
            assert_eq!((p.protocol, p.sport, p.dport), (17, 4433, 53));
            assert_eq!(p.payload.len(), size.min(len - i * size));
            if !ip.v6 {
                assert_eq!(p.id, ip.id.wrapping_add(i as u16));
            }
            joined.extend_from_slice(&p.payload);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn udpv4_uso_segments() {
        check_uso(&IpSpec::v4(), 3000, 1000);
        check_uso(&IpSpec::v4(), 65_000, 1400);
    }

    #[test]
    fn udpv6_uso_segments() {
        check_uso(&IpSpec::v6(), 3001, 1000);
        check_uso(&IpSpec::v6(), 1, 1200);
    }

    #[test]
    fn ipv4_options_are_copied_to_every_segment() {
        let data = payload(2500, 9);
        let (mut hdr, plain) = tso(&IpSpec::v4(), &TcpSpec::default(), &data, 1000);
        // Insert 4 bytes of options (NOP NOP NOP EOL) after the fixed header.
        let mut pkt = plain[..20].to_vec();
        pkt[0] = 0x46;
        pkt.extend_from_slice(&[1, 1, 1, 0]);
        pkt.extend_from_slice(&plain[20..]);
        let total = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        hdr.csum_start = 24;
        let segs = run(&hdr, &pkt).unwrap();
        assert_eq!(segs.len(), 3);
        for s in &segs {
            assert_eq!(&s[20..24], &[1, 1, 1, 0]);
            assert_eq!(ref_fold(&s[..24]), 0xffff);
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            let mut all = ref_pseudo(s, 6, s.len() - 24);
            all.extend_from_slice(&s[24..]);
            assert_eq!(ref_fold(&all), 0xffff);
        }
    }

    #[test]
    fn ipv6_hop_by_hop_is_walked_and_routing_header_refused() {
        let data = payload(2500, 9);
        let (hdr, plain) = tso(&IpSpec::v6(), &TcpSpec::default(), &data, 1000);
        let with_ext = |next: u8| {
            let mut pkt = plain[..40].to_vec();
            pkt[6] = next;
            pkt.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next TCP, 8 bytes, PadN
            pkt.extend_from_slice(&plain[40..]);
            let pl = (pkt.len() - 40) as u16;
            pkt[4..6].copy_from_slice(&pl.to_be_bytes());
            pkt
        };
        let segs = run(&hdr, &with_ext(0)).unwrap();
        assert_eq!(segs.len(), 3);
        for s in &segs {
            assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, s.len() - 40);
            let mut all = ref_pseudo(s, 6, s.len() - 48);
            all.extend_from_slice(&s[48..]);
            assert_eq!(ref_fold(&all), 0xffff);
        }
        assert_eq!(
            run(&hdr, &with_ext(43)),
            Err(OffloadError::UnsupportedIpv6ExtensionHeader(43))
        );
        assert_eq!(run(&hdr, &with_ext(44)), Err(OffloadError::Fragment));
    }

    #[test]
    fn trailing_bytes_after_ip_length_are_dropped() {
        let data = payload(2000, 2);
        let (hdr, mut pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &data, 1000);
        pkt.extend_from_slice(&[0xee; 13]);
        let segs = run(&hdr, &pkt).unwrap();
        let joined: Vec<u8> = segs.iter().flat_map(|s| check_packet(s).payload).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn non_gso_partial_checksum_is_completed() {
        for ip in [IpSpec::v4(), IpSpec::v6()] {
            let data = payload(777, 5);
            let (mut hdr, pkt) = tso(&ip, &TcpSpec::default(), &data, 1400);
            hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
            hdr.gso_size = 0;
            let segs = run(&hdr, &pkt).unwrap();
            assert_eq!(segs.len(), 1);
            assert_eq!(segs[0], tcp_packet(&ip, &TcpSpec::default(), &data));
            let (mut hdr, pkt) = uso(&ip, 1, 2, &data, 1400);
            hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
            assert_eq!(run(&hdr, &pkt).unwrap()[0], udp_packet(&ip, 1, 2, &data));
        }
    }

    #[test]
    fn computed_zero_udp_checksum_is_sent_as_ffff() {
        // Pick the last two payload bytes (an even offset) so that the checksum comes out 0:
        // with them zero the range sums to `s`, so the word 0xffff - s makes it 0xffff.
        let ip = IpSpec::v4();
        let mut data = payload(100, 1);
        data[98..100].fill(0);
        let p = udp_packet(&ip, 1, 2, &data);
        let mut all = ref_pseudo(&p, 17, p.len() - 20);
        all.extend_from_slice(&p[20..]);
        all[12 + 6..12 + 8].fill(0); // the UDP checksum field, after the 12-byte pseudo-header
        let fill = 0xffff - ref_fold(&all);
        data[98..100].copy_from_slice(&fill.to_be_bytes());

        let (mut hdr, pkt) = uso(&ip, 1, 2, &data, 1400);
        hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
        let out = run(&hdr, &pkt).unwrap();
        assert_eq!(&out[0][26..28], &[0xff, 0xff]);
        check_packet(&out[0]);
        // And through USO, too.
        let (hdr, pkt) = uso(&ip, 1, 2, &data, 1400);
        assert_eq!(&run(&hdr, &pkt).unwrap()[0][26..28], &[0xff, 0xff]);
    }

    #[test]
    fn gso_none_without_needs_csum_passes_anything_through() {
        for pkt in [&b""[..], b"\x45", b"not an IP packet at all", &[0x60; 100]] {
            assert_eq!(run(&VnetHdr::default(), pkt).unwrap(), vec![pkt.to_vec()]);
        }
    }

    #[test]
    fn segment_frame_parses_the_header() {
        let (hdr, pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &payload(3000, 1), 1000);
        let mut frame = hdr.encode().to_vec();
        frame.extend_from_slice(&pkt);
        let (mut out, mut ranges) = (Vec::new(), Vec::new());
        segment_frame(&frame, &mut out, &mut ranges).unwrap();
        assert_eq!(ranges.len(), 3);
        assert_eq!(
            segment_frame(&frame[..9], &mut out, &mut ranges),
            Err(OffloadError::TruncatedVnetHdr { len: 9 })
        );
        assert!(out.is_empty() && ranges.is_empty());
        segment_frame(&frame[..10], &mut out, &mut ranges).unwrap_err();
    }

    #[test]
    fn malformed_packets_are_errors() {
        let data = payload(3000, 1);
        let (hdr, pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &data, 1000);
        let (hdr6, pkt6) = tso(&IpSpec::v6(), &TcpSpec::default(), &data, 1000);
        let (uhdr, upkt) = uso(&IpSpec::v4(), 1, 2, &data, 1000);
        let with = |h: VnetHdr, f: &dyn Fn(&mut VnetHdr)| {
            let mut h = h;
            f(&mut h);
            h
        };
        let edit = |p: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = p.to_vec();
            f(&mut p);
            p
        };
        use OffloadError as E;
        let cases: Vec<(VnetHdr, Vec<u8>, OffloadError)> = vec![
            (with(hdr, &|h| h.gso_size = 0), pkt.clone(), E::ZeroGsoSize),
            (
                with(hdr, &|h| h.gso_size = 1),
                pkt.clone(),
                E::TooManySegments {
                    segments: 3000,
                    max: MAX_SEGMENTS,
                },
            ),
            (
                with(hdr, &|h| h.gso_type = VIRTIO_NET_HDR_GSO_UDP),
                pkt.clone(),
                E::UnsupportedGsoType(3),
            ),
            (
                with(hdr, &|h| h.gso_type = 2),
                pkt.clone(),
                E::UnsupportedGsoType(2),
            ),
            (
                hdr,
                pkt6.clone(),
                E::IpVersionMismatch {
                    version: 6,
                    gso_type: 1,
                },
            ),
            (
                hdr6,
                pkt.clone(),
                E::IpVersionMismatch {
                    version: 4,
                    gso_type: 4,
                },
            ),
            (hdr, Vec::new(), E::TruncatedIpHeader { len: 0 }),
            (hdr, pkt[..19].to_vec(), E::TruncatedIpHeader { len: 19 }),
            (hdr6, pkt6[..39].to_vec(), E::TruncatedIpHeader { len: 39 }),
            (
                hdr,
                edit(&pkt, &|p| p[0] = 0x44),
                E::BadIpv4HeaderLength(16),
            ),
            (
                hdr,
                edit(&pkt[..50], &|p| {
                    p[0] = 0x4f;
                    p[2] = 0;
                    p[3] = 50
                }),
                E::IpLengthMismatch {
                    claimed: 50,
                    actual: 50,
                    min: 60,
                },
            ),
            (
                hdr,
                pkt[..1000].to_vec(),
                E::IpLengthMismatch {
                    claimed: pkt.len(),
                    actual: 1000,
                    min: 20,
                },
            ),
            (
                hdr6,
                pkt6[..1000].to_vec(),
                E::IpLengthMismatch {
                    claimed: pkt6.len(),
                    actual: 1000,
                    min: 40,
                },
            ),
            (hdr, edit(&pkt, &|p| p[6] = 0x20), E::Fragment),
            (hdr, edit(&pkt, &|p| p[7] = 0x01), E::Fragment),
            (
                hdr,
                edit(&pkt, &|p| p[9] = 17),
                E::ProtocolMismatch {
                    protocol: 17,
                    gso_type: 1,
                },
            ),
            (
                hdr6,
                edit(&pkt6, &|p| p[6] = 58),
                E::ProtocolMismatch {
                    protocol: 58,
                    gso_type: 4,
                },
            ),
            (
                uhdr,
                pkt.clone(),
                E::ProtocolMismatch {
                    protocol: 6,
                    gso_type: 5,
                },
            ),
            (hdr, edit(&pkt, &|p| p[32] = 0x40), E::BadTcpDataOffset(16)),
            (
                hdr,
                edit(&pkt[..40], &|p| {
                    p[2] = 0;
                    p[3] = 40;
                    p[32] = 0xf0
                }),
                E::TruncatedTransportHeader {
                    offset: 20,
                    needed: 60,
                    len: 40,
                },
            ),
            (
                hdr,
                edit(&pkt[..30], &|p| {
                    p[2] = 0;
                    p[3] = 30
                }),
                E::TruncatedTransportHeader {
                    offset: 20,
                    needed: 20,
                    len: 30,
                },
            ),
            (
                uhdr,
                edit(&upkt[..27], &|p| {
                    p[2] = 0;
                    p[3] = 27
                }),
                E::TruncatedTransportHeader {
                    offset: 20,
                    needed: 8,
                    len: 27,
                },
            ),
            (
                with(VnetHdr::default(), &|h| {
                    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
                    h.csum_start = 20;
                    h.csum_offset = 16
                }),
                pkt[..37].to_vec(),
                E::ChecksumOutOfRange {
                    csum_start: 20,
                    csum_offset: 16,
                    len: 37,
                },
            ),
            (
                with(VnetHdr::default(), &|h| {
                    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
                    h.csum_start = u16::MAX;
                    h.csum_offset = u16::MAX
                }),
                pkt.clone(),
                E::ChecksumOutOfRange {
                    csum_start: u16::MAX,
                    csum_offset: u16::MAX,
                    len: pkt.len(),
                },
            ),
        ];
        for (i, (h, p, want)) in cases.into_iter().enumerate() {
            let got = run(&h, &p).map(|segs| segs.len());
            assert_eq!(got, Err(want.clone()), "case {i}");
            // Messages name what was wrong.
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn many_small_segments_up_to_the_limit() {
        // Linux's smallest MSS over a 64 KiB super-packet stays under the limit.
        let (hdr, pkt) = tso(&IpSpec::v4(), &TcpSpec::default(), &payload(65_000, 1), 48);
        let segs = run(&hdr, &pkt).unwrap();
        assert_eq!(segs.len(), 65_000usize.div_ceil(48));
        for s in &segs {
            check_packet(s);
        }
    }
}
