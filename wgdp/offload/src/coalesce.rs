//! GRO for the TUN write path: decrypted IP packets in, virtio-net framed packets out, with
//! in-order TCP segments of a flow merged into one `GSO_TCPV4`/`GSO_TCPV6` super-packet (and,
//! optionally, equal-sized UDP datagrams into one `GSO_UDP_L4` packet).
//!
//! The merge rules follow Linux's `tcp_gro_receive`/`udp_gro_receive`, so what the kernel
//! re-segments (when it forwards the packet or hands it to a socket without GRO) is exactly
//! what arrived: the same headers, payloads, sequence numbers, flags and (for packets without
//! DF) IPv4 IDs.

use crate::checksum;
use crate::ip::{
    self, read16, read32, write16, IPV4_DF, IPV4_MIN_HDR, IPV6_HDR, PROTO_TCP, PROTO_UDP, TCP_ACK,
    TCP_CSUM_OFF, TCP_CWR, TCP_FIN, TCP_FLAGS_OFF, TCP_MIN_HDR, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG,
    UDP_CSUM_OFF, UDP_HDR,
};
use crate::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};
use crate::{VnetHdr, VNET_HDR_LEN};

/// Largest IP packet a merge may produce: the IPv4 total length (and the IPv6 payload
/// length) are 16-bit, and Linux's `gro_max_size` defaults to 64 KiB.
pub const MAX_COALESCED_LEN: usize = 65535;

/// Most UDP datagrams merged into one `GSO_UDP_L4` packet, as Linux's `UDP_GRO_CNT_MAX`
/// (the TUN refuses more than 128).
pub const MAX_UDP_COALESCED_SEGMENTS: usize = 64;

/// Coalesces decrypted IP packets (as they come out of WireGuard, with complete checksums)
/// for writing to the TUN.
///
/// Use one per TUN queue and batch: [`push`](Self::push) every packet decrypted from one
/// receive batch, then [`flush`](Self::flush) to write them. A TCP segment is merged into the
/// packet its flow (addresses, ports) last started when it continues it exactly:
/// * IPv4 without options or fragmentation and a valid header checksum, or IPv6 with TCP
///   directly after the fixed header; the same TOS/traffic class, TTL/hop limit, DF bit (and
///   flow label); without DF, the next IPv4 ID;
/// * a valid TCP checksum, a non-empty payload, ACK set and none of SYN/RST/URG/CWR;
/// * the next sequence number, the same ACK number, window, urgent pointer, flags (but
///   PSH/FIN) and option bytes;
/// * a payload no longer than the first segment's (a shorter one, or one with PSH or FIN, is
///   the last of its packet), and the whole at most [`MAX_COALESCED_LEN`] bytes.
///
/// UDP datagrams (enabled by default, see [`set_udp`](Self::set_udp)) merge the same way
/// when their payloads have the first one's length (a shorter one ends the packet), their
/// checksum is non-zero and valid and there are at most [`MAX_UDP_COALESCED_SEGMENTS`].
///
/// Anything else (other protocols, fragments, IPv4 options, IPv6 extension headers, bad
/// checksums, pure ACKs, non-IP bytes) is kept as its own packet with a `GSO_NONE` header,
/// and ends the merging of any flow it may belong to so that each flow stays in order. IP
/// packets are cut to the length their header gives (dropping WireGuard's padding).
///
/// Buffers are kept across flushes, so steady-state operation allocates nothing; memory
/// grows to the largest batch seen.
#[derive(Debug)]
pub struct Coalescer {
    /// Held packets, in arrival order of their first segment; `items[..used]` are live.
    items: Vec<Item>,
    used: usize,
    /// Flows whose last held packet can still take segments.
    flows: Vec<Flow>,
    udp: bool,
}

#[derive(Debug, Default)]
struct Item {
    /// [`VNET_HDR_LEN`] bytes reserved for the header, then the IP packet: the first
    /// segment's headers and every merged segment's payload.
    buf: Vec<u8>,
    /// Set when the packet is a TCP/UDP segment that others may have joined.
    merge: Option<Merge>,
}

#[derive(Debug, Clone, Copy)]
struct Merge {
    v6: bool,
    tcp: bool,
    /// Offset of the TCP/UDP header in the IP packet.
    l4_off: usize,
    /// Length of IP + TCP/UDP headers.
    hdrs_len: usize,
    /// Payload length of the first segment.
    gso_size: usize,
    /// Segments held.
    count: usize,
    /// TCP sequence number the next segment must carry.
    next_seq: u32,
}

/// A flow whose packet at `items[item]` can take more segments.
#[derive(Debug, Clone, Copy)]
struct Flow {
    key: FlowKey,
    item: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    protocol: u8,
    /// Source then destination address (IPv4: the first 8 bytes).
    addrs: [u8; 32],
    /// Source then destination port.
    ports: [u8; 4],
}

/// As much of a flow key as a packet that will not merge reveals.
#[derive(Debug, Clone, Copy)]
struct PartialKey {
    v6: bool,
    addrs: [u8; 32],
    protocol: Option<u8>,
    ports: Option<[u8; 4]>,
}

impl PartialKey {
    fn matches(&self, k: &FlowKey) -> bool {
        self.v6 == k.v6
            && self.addrs == k.addrs
            && self.protocol.is_none_or(|p| p == k.protocol)
            && self.ports.is_none_or(|p| p == k.ports)
    }
}

/// A TCP segment or UDP datagram that may merge.
#[derive(Debug, Clone, Copy)]
struct Segment {
    key: FlowKey,
    l4_off: usize,
    hdrs_len: usize,
    ip_len: usize,
    /// TCP sequence number (0 for UDP).
    seq: u32,
    /// TCP flags (0 for UDP).
    flags: u8,
}

impl Segment {
    fn payload_len(&self) -> usize {
        self.ip_len - self.hdrs_len
    }

    fn tcp(&self) -> bool {
        self.key.protocol == PROTO_TCP
    }
}

/// What [`Coalescer::push`] makes of a packet.
enum Class {
    Segment(Segment),
    /// Held as is (the first `ip_len` bytes); `key` says which flows it may belong to.
    Alone {
        ip_len: usize,
        key: Option<PartialKey>,
    },
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    /// An empty coalescer that merges TCP and UDP.
    pub fn new() -> Self {
        Coalescer {
            items: Vec::new(),
            used: 0,
            flows: Vec::new(),
            udp: true,
        }
    }

    /// Whether to merge UDP datagrams into `GSO_UDP_L4` packets (on by default). Turn it
    /// off when the TUN did not accept `TUN_F_USO4|TUN_F_USO6` (kernels before 6.2, which
    /// also refuse `GSO_UDP_L4` writes). Affects packets pushed from now on.
    pub fn set_udp(&mut self, enabled: bool) {
        self.udp = enabled;
    }

    /// Number of packets [`flush`](Self::flush) would emit now.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Adds one IP packet (without virtio-net header). Never fails: what cannot be merged is
    /// held as its own packet.
    pub fn push(&mut self, pkt: &[u8]) {
        let seg = match classify(pkt, self.udp) {
            Class::Alone { ip_len, key } => {
                if let Some(key) = key {
                    self.flows.retain(|f| !key.matches(&f.key));
                }
                self.hold(&pkt[..ip_len], None);
                return;
            }
            Class::Segment(seg) => seg,
        };
        let flow = self.flows.iter().rposition(|f| f.key == seg.key);
        if let Some(fi) = flow {
            let item = &mut self.items[self.flows[fi].item];
            if let Some(open) = try_merge(item, pkt, &seg) {
                if !open {
                    self.flows.swap_remove(fi);
                }
                return;
            }
        }
        let merge = Merge {
            v6: seg.key.v6,
            tcp: seg.tcp(),
            l4_off: seg.l4_off,
            hdrs_len: seg.hdrs_len,
            gso_size: seg.payload_len(),
            count: 1,
            next_seq: seg.seq.wrapping_add(seg.payload_len() as u32),
        };
        let idx = self.hold(&pkt[..seg.ip_len], Some(merge));
        let open = seg.flags & (TCP_PSH | TCP_FIN) == 0;
        match (flow, open) {
            (Some(fi), true) => self.flows[fi].item = idx,
            (Some(fi), false) => {
                self.flows.swap_remove(fi);
            }
            (None, true) => self.flows.push(Flow {
                key: seg.key,
                item: idx,
            }),
            (None, false) => {}
        }
    }

    /// Emits every held packet as virtio-net header bytes followed by the IP packet, in the
    /// order their first segments were pushed (so each flow's packets stay in order), then
    /// empties the coalescer.
    ///
    /// Merged packets carry `GSO_TCPV4`/`GSO_TCPV6`/`GSO_UDP_L4`, `gso_size` (the first
    /// segment's payload length), `hdr_len` (IP + L4 headers), `NEEDS_CSUM` with
    /// `csum_start` at the L4 header and `csum_offset` 16 (TCP) or 6 (UDP); their L4 checksum
    /// field holds the folded pseudo-header sum over the merged length, their IP length
    /// fields (and UDP length) are the merged ones and the IPv4 header checksum is redone.
    /// Single packets go out as pushed (cut to their IP length) with an all-zero (`GSO_NONE`)
    /// header.
    pub fn flush(&mut self, emit: &mut dyn FnMut(&[u8])) {
        for item in &mut self.items[..self.used] {
            let hdr = finish_item(item);
            if let Some(h) = item.buf.get_mut(..VNET_HDR_LEN) {
                h.copy_from_slice(&hdr.encode());
            }
            emit(&item.buf);
        }
        self.used = 0;
        self.flows.clear();
    }

    /// Stores a new packet, reusing a buffer from earlier batches; returns its index.
    fn hold(&mut self, ip_pkt: &[u8], merge: Option<Merge>) -> usize {
        if self.used == self.items.len() {
            self.items.push(Item::default());
        }
        let idx = self.used;
        let item = &mut self.items[idx];
        item.buf.clear();
        item.buf.extend_from_slice(&[0; VNET_HDR_LEN]);
        item.buf.extend_from_slice(ip_pkt);
        item.merge = merge;
        self.used += 1;
        idx
    }
}

/// Appends `seg` (the packet `pkt`) to `item` if it continues it. Returns `None` if it does
/// not, else whether the item can take more.
fn try_merge(item: &mut Item, pkt: &[u8], seg: &Segment) -> Option<bool> {
    let m = item.merge.as_mut()?;
    let ip_pkt = item.buf.get(VNET_HDR_LEN..)?;
    let payload_len = seg.payload_len();
    if m.v6 != seg.key.v6
        || m.tcp != seg.tcp()
        || m.l4_off != seg.l4_off
        || m.hdrs_len != seg.hdrs_len
        || payload_len > m.gso_size
        || ip_pkt.len() + payload_len > MAX_COALESCED_LEN
    {
        return None;
    }
    if m.v6 {
        // Version, traffic class and flow label; hop limit.
        if ip_pkt[..4] != pkt[..4] || ip_pkt[7] != pkt[7] {
            return None;
        }
    } else {
        let df = read16(ip_pkt, 6) & IPV4_DF;
        if ip_pkt[1] != pkt[1] || ip_pkt[8] != pkt[8] || df != read16(pkt, 6) & IPV4_DF {
            return None;
        }
        // Without DF the ID identifies the datagram; re-segmentation numbers them from the
        // first, so only consecutive IDs round-trip.
        if df == 0 && read16(pkt, 4) != read16(ip_pkt, 4).wrapping_add(m.count as u16) {
            return None;
        }
    }
    let l4 = m.l4_off;
    let mut open = true;
    if m.tcp {
        let flags_ok = (ip_pkt[l4 + TCP_FLAGS_OFF] ^ seg.flags) & !(TCP_PSH | TCP_FIN) == 0;
        if seg.seq != m.next_seq
            || !flags_ok
            // ACK number.
            || ip_pkt[l4 + 8..l4 + 12] != pkt[l4 + 8..l4 + 12]
            // Data offset and reserved bits.
            || ip_pkt[l4 + 12] != pkt[l4 + 12]
            // Window.
            || ip_pkt[l4 + 14..l4 + 16] != pkt[l4 + 14..l4 + 16]
            // Urgent pointer: meaningless without URG, but kept so that re-segmenting gives
            // back the very bytes that arrived (found by fuzzing).
            || ip_pkt[l4 + 18..l4 + 20] != pkt[l4 + 18..l4 + 20]
            // Options (timestamps included, as Linux).
            || ip_pkt[l4 + TCP_MIN_HDR..m.hdrs_len] != pkt[l4 + TCP_MIN_HDR..m.hdrs_len]
        {
            return None;
        }
        let end_flags = seg.flags & (TCP_PSH | TCP_FIN);
        if end_flags != 0 {
            item.buf[VNET_HDR_LEN + l4 + TCP_FLAGS_OFF] |= end_flags;
            open = false;
        }
        m.next_seq = seg.seq.wrapping_add(payload_len as u32);
    } else if m.count + 1 >= MAX_UDP_COALESCED_SEGMENTS {
        open = false;
    }
    item.buf.extend_from_slice(&pkt[seg.hdrs_len..seg.ip_len]);
    m.count += 1;
    if payload_len < m.gso_size {
        open = false;
    }
    Some(open)
}

/// Fixes the headers of a merged packet and returns the virtio-net header to send it with.
fn finish_item(item: &mut Item) -> VnetHdr {
    let Some(m) = item.merge.filter(|m| m.count > 1) else {
        return VnetHdr::default();
    };
    let Some(ip_pkt) = item.buf.get_mut(VNET_HDR_LEN..) else {
        return VnetHdr::default();
    };
    let ip_len = ip_pkt.len();
    let l4_len = ip_len - m.l4_off;
    // Lengths fit in 16 bits: merges stop at MAX_COALESCED_LEN.
    let gso_type = if m.v6 {
        write16(ip_pkt, 4, (ip_len - IPV6_HDR) as u16);
        if m.tcp {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_UDP_L4
        }
    } else {
        write16(ip_pkt, 2, ip_len as u16);
        ip::set_ipv4_checksum(&mut ip_pkt[..m.l4_off]);
        if m.tcp {
            VIRTIO_NET_HDR_GSO_TCPV4
        } else {
            VIRTIO_NET_HDR_GSO_UDP_L4
        }
    };
    let (protocol, csum_off) = if m.tcp {
        (PROTO_TCP, TCP_CSUM_OFF)
    } else {
        write16(ip_pkt, m.l4_off + 4, l4_len as u16);
        (PROTO_UDP, UDP_CSUM_OFF)
    };
    // The kernel finishes the checksum from csum_start over the whole packet, starting
    // from the (uncomplemented) pseudo-header sum in the field.
    let pseudo = checksum::fold(ip::pseudo_sum(ip_pkt, m.v6, protocol, l4_len));
    write16(ip_pkt, m.l4_off + csum_off, pseudo);
    VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: m.hdrs_len as u16,
        gso_size: m.gso_size as u16,
        csum_start: m.l4_off as u16,
        csum_offset: csum_off as u16,
    }
}

/// Decides whether `pkt` may merge, checking everything about it alone. A packet that may
/// not still names, as far as its bytes tell, the flows it could belong to, even when its
/// length fields are wrong: ending a merge too many is harmless, reordering a flow is not.
fn classify(pkt: &[u8], udp: bool) -> Class {
    let len = pkt.len();
    match pkt.first().map(|b| b >> 4) {
        Some(4) if len >= IPV4_MIN_HDR => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(read16(pkt, 2));
            let lengths_ok = ihl >= IPV4_MIN_HDR && ihl <= total && total <= len;
            let ip_len = if lengths_ok { total } else { len };
            let mut addrs = [0u8; 32];
            addrs[..8].copy_from_slice(&pkt[12..20]);
            let protocol = pkt[9];
            let frag = read16(pkt, 6);
            let mut key = PartialKey {
                v6: false,
                addrs,
                protocol: Some(protocol),
                ports: None,
            };
            // Only a first (or no) fragment has the ports.
            if ihl >= IPV4_MIN_HDR && frag & 0x1fff == 0 {
                key.ports = ports(pkt, ihl, ip_len, protocol);
            }
            let alone = Class::Alone {
                ip_len,
                key: Some(key),
            };
            if !lengths_ok
                || ihl != IPV4_MIN_HDR
                // Fragments, and the reserved bit (as Linux's GRO; found by fuzzing).
                || frag & !IPV4_DF != 0
                || !checksum::verifies(checksum::sum(&pkt[..ihl], 0))
            {
                return alone;
            }
            transport(pkt, key, ihl, ip_len, udp).unwrap_or(alone)
        }
        Some(6) if len >= IPV6_HDR => {
            let total = IPV6_HDR + usize::from(read16(pkt, 4));
            let lengths_ok = total <= len;
            let ip_len = if lengths_ok { total } else { len };
            let mut addrs = [0u8; 32];
            addrs.copy_from_slice(&pkt[8..40]);
            let next = pkt[6];
            // Behind extension headers could be anything.
            let protocol = (!ip::is_ipv6_extension(next)).then_some(next);
            let key = PartialKey {
                v6: true,
                addrs,
                protocol,
                ports: ports(pkt, IPV6_HDR, ip_len, next),
            };
            let alone = Class::Alone {
                ip_len,
                key: Some(key),
            };
            if !lengths_ok {
                return alone;
            }
            transport(pkt, key, IPV6_HDR, ip_len, udp).unwrap_or(alone)
        }
        _ => Class::Alone {
            ip_len: len,
            key: None,
        },
    }
}

/// The ports of a TCP/UDP header at `l4_off`, if present.
fn ports(pkt: &[u8], l4_off: usize, ip_len: usize, protocol: u8) -> Option<[u8; 4]> {
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return None;
    }
    pkt.get(l4_off..(l4_off + 4).min(ip_len))?.try_into().ok()
}

/// The transport checks for a mergeable segment; `None` if it must stay alone.
fn transport(
    pkt: &[u8],
    key: PartialKey,
    l4_off: usize,
    ip_len: usize,
    udp: bool,
) -> Option<Class> {
    let protocol = key.protocol?;
    let ports = key.ports?;
    let v6 = key.v6;
    let l4 = pkt.get(l4_off..ip_len)?;
    let (hdr_len, seq, flags) = match protocol {
        PROTO_TCP => {
            let doff = usize::from(*l4.get(12)? >> 4) * 4;
            let flags = *l4.get(TCP_FLAGS_OFF)?;
            if doff < TCP_MIN_HDR || doff >= l4.len() {
                // Too short, or no payload.
                return None;
            }
            if flags & TCP_ACK == 0 || flags & (TCP_SYN | TCP_RST | TCP_URG | TCP_CWR) != 0 {
                return None;
            }
            (doff, read32(l4, 4), flags)
        }
        PROTO_UDP if udp => {
            if l4.len() <= UDP_HDR
                || usize::from(read16(l4, 4)) != l4.len()
                || read16(l4, UDP_CSUM_OFF) == 0
            {
                return None;
            }
            (UDP_HDR, 0, 0)
        }
        _ => return None,
    };
    let pseudo = ip::pseudo_sum(pkt, v6, protocol, l4.len());
    if !checksum::verifies(checksum::sum(l4, pseudo)) {
        return None;
    }
    Some(Class::Segment(Segment {
        key: FlowKey {
            v6,
            protocol,
            addrs: key.addrs,
            ports,
        },
        l4_off,
        hdrs_len: l4_off + hdr_len,
        ip_len,
        seq,
        flags,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{segment_frame, OffloadError};

    /// `n` consecutive segments of one flow, `mss` payload bytes each (the last `last`).
    fn stream(ip: &IpSpec, tcp: &TcpSpec, n: usize, mss: usize, last: usize) -> Vec<Vec<u8>> {
        let mut ip = ip.clone();
        let mut tcp = tcp.clone();
        (0..n)
            .map(|i| {
                let len = if i + 1 == n { last } else { mss };
                let p = tcp_packet(&ip, &tcp, &payload(len, i as u8));
                ip.id = ip.id.wrapping_add(1);
                tcp.seq = tcp.seq.wrapping_add(len as u32);
                p
            })
            .collect()
    }

    fn coalesce(pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut c = Coalescer::new();
        for p in pkts {
            c.push(p);
        }
        assert_eq!(c.len(), {
            let mut probe = Coalescer::new();
            pkts.iter().for_each(|p| probe.push(p));
            probe.len()
        });
        let frames = flush_all(&mut c);
        assert!(c.is_empty());
        assert!(flush_all(&mut c).is_empty(), "flush must reset");
        frames
    }

    /// Re-segments a frame the way the kernel would (via our own segmenter, whose output is
    /// checked independently in its tests).
    fn resegment(frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let (mut out, mut ranges) = (Vec::new(), Vec::new());
        segment_frame(frame, &mut out, &mut ranges)?;
        Ok(split(&out, &ranges))
    }

    fn vnet(frame: &[u8]) -> VnetHdr {
        VnetHdr::parse(frame).unwrap()
    }

    /// Checks a merged frame as the kernel's `virtio_net_hdr_to_skb` and TCP stack would.
    fn check_merged(frame: &[u8], v6: bool, tcp: bool, gso_size: usize) {
        let h = vnet(frame);
        let ip = &frame[VNET_HDR_LEN..];
        let l4_off = if v6 { 40 } else { 20 };
        let (want_type, l4_hdr, csum_off, proto) = match (v6, tcp) {
            (false, true) => (
                VIRTIO_NET_HDR_GSO_TCPV4,
                usize::from(ip[32] >> 4) * 4,
                16,
                6,
            ),
            (true, true) => (
                VIRTIO_NET_HDR_GSO_TCPV6,
                usize::from(ip[52] >> 4) * 4,
                16,
                6,
            ),
            (_, false) => (VIRTIO_NET_HDR_GSO_UDP_L4, 8, 6, 17),
        };
        assert_eq!(h.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(h.gso_type, want_type);
        assert_eq!(usize::from(h.gso_size), gso_size);
        assert_eq!(usize::from(h.hdr_len), l4_off + l4_hdr);
        assert_eq!(usize::from(h.csum_start), l4_off);
        assert_eq!(usize::from(h.csum_offset), csum_off);
        if v6 {
            assert_eq!(
                usize::from(u16::from_be_bytes([ip[4], ip[5]])) + 40,
                ip.len()
            );
        } else {
            assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
            assert_eq!(ref_fold(&ip[..20]), 0xffff, "IPv4 header checksum");
        }
        let field = l4_off + csum_off;
        let pseudo = ref_fold(&ref_pseudo(ip, proto, ip.len() - l4_off));
        assert_eq!(
            u16::from_be_bytes([ip[field], ip[field + 1]]),
            pseudo,
            "pseudo-header sum"
        );
        if !tcp {
            assert_eq!(
                usize::from(u16::from_be_bytes([ip[l4_off + 4], ip[l4_off + 5]])),
                ip.len() - l4_off
            );
        }
        // Completing the checksum as the kernel would gives a valid packet.
        let mut done = ip.to_vec();
        let c = !ref_fold(&done[l4_off..]);
        done[field..field + 2].copy_from_slice(&c.to_be_bytes());
        let mut all = ref_pseudo(&done, proto, done.len() - l4_off);
        all.extend_from_slice(&done[l4_off..]);
        assert_eq!(ref_fold(&all), 0xffff);
    }

    #[test]
    fn in_order_tcpv4_segments_merge_and_round_trip() {
        let tcp = TcpSpec {
            options: timestamps(5, 6),
            ..TcpSpec::default()
        };
        let segs = stream(&IpSpec::v4(), &tcp, 10, 1388, 500);
        let frames = coalesce(&segs);
        assert_eq!(frames.len(), 1);
        check_merged(&frames[0], false, true, 1388);
        assert_eq!(resegment(&frames[0]).unwrap(), segs);
    }

    #[test]
    fn in_order_tcpv6_segments_merge_and_round_trip() {
        let segs = stream(&IpSpec::v6(), &TcpSpec::default(), 30, 1380, 1380);
        let frames = coalesce(&segs);
        assert_eq!(frames.len(), 1);
        check_merged(&frames[0], true, true, 1380);
        assert_eq!(resegment(&frames[0]).unwrap(), segs);
    }

    #[test]
    fn psh_and_fin_end_a_merge_and_stay_on_the_last_segment() {
        for end in [PSH, FIN, PSH | FIN] {
            let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 6, 1000, 1000);
            let last3 = TcpSpec {
                seq: TcpSpec::default().seq + 2000,
                flags: ACK | end,
                ..TcpSpec::default()
            };
            let ip3 = IpSpec {
                id: IpSpec::v4().id + 2,
                ..IpSpec::v4()
            };
            segs[2] = tcp_packet(&ip3, &last3, &payload(1000, 2));
            let frames = coalesce(&segs);
            assert_eq!(frames.len(), 2);
            let first = resegment(&frames[0]).unwrap();
            assert_eq!(first, segs[..3]);
            assert_eq!(resegment(&frames[1]).unwrap(), segs[3..]);
        }
    }

    #[test]
    fn a_short_segment_ends_a_merge() {
        let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 600);
        let more = stream(
            &IpSpec {
                id: IpSpec::v4().id + 3,
                ..IpSpec::v4()
            },
            &TcpSpec {
                seq: TcpSpec::default().seq + 2600,
                ..TcpSpec::default()
            },
            3,
            1000,
            1000,
        );
        segs.extend(more);
        let frames = coalesce(&segs);
        assert_eq!(frames.len(), 2);
        assert_eq!(resegment(&frames[0]).unwrap(), segs[..3]);
        assert_eq!(resegment(&frames[1]).unwrap(), segs[3..]);
        // A longer segment after the first can't join either.
        let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 2, 500, 500);
        segs[1] = tcp_packet(
            &IpSpec {
                id: IpSpec::v4().id + 1,
                ..IpSpec::v4()
            },
            &TcpSpec {
                seq: TcpSpec::default().seq + 500,
                ..TcpSpec::default()
            },
            &payload(501, 0),
        );
        assert_eq!(coalesce(&segs), frames_alone(&segs));
    }

    /// The frames `pkts` would give if nothing merged.
    fn frames_alone(pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
        pkts.iter()
            .map(|p| {
                let mut f = vec![0u8; VNET_HDR_LEN];
                f.extend_from_slice(p);
                f
            })
            .collect()
    }

    #[test]
    fn out_of_order_and_duplicate_segments_are_not_merged() {
        let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 4, 1000, 1000);
        // 0 2 1 3: each continues neither the packet its flow last started nor anything later,
        // so all four stay alone, in arrival order.
        let order = [0usize, 2, 1, 3];
        let shuffled: Vec<Vec<u8>> = order.iter().map(|&i| segs[i].clone()).collect();
        let frames = coalesce(&shuffled);
        let replayed: Vec<Vec<u8>> = frames.iter().flat_map(|f| resegment(f).unwrap()).collect();
        assert_eq!(replayed, shuffled, "arrival order kept");
        assert_eq!(frames, frames_alone(&shuffled));
    }

    #[test]
    fn retransmitted_segment_is_not_merged() {
        let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 1000);
        let pushed = vec![
            segs[0].clone(),
            segs[1].clone(),
            segs[1].clone(),
            segs[2].clone(),
        ];
        let frames = coalesce(&pushed);
        let replayed: Vec<Vec<u8>> = frames.iter().flat_map(|f| resegment(f).unwrap()).collect();
        assert_eq!(replayed, pushed);
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn interleaved_flows_merge_separately_in_order() {
        let a = stream(&IpSpec::v4(), &TcpSpec::default(), 5, 1200, 1200);
        let b = stream(
            &IpSpec::v4(),
            &TcpSpec {
                sport: 40001,
                ..TcpSpec::default()
            },
            5,
            1200,
            700,
        );
        let c6 = stream(&IpSpec::v6(), &TcpSpec::default(), 5, 1200, 1200);
        let mut mixed = Vec::new();
        for i in 0..5 {
            mixed.push(a[i].clone());
            mixed.push(b[i].clone());
            mixed.push(c6[i].clone());
        }
        let frames = coalesce(&mixed);
        assert_eq!(frames.len(), 3);
        assert_eq!(resegment(&frames[0]).unwrap(), a);
        assert_eq!(resegment(&frames[1]).unwrap(), b);
        assert_eq!(resegment(&frames[2]).unwrap(), c6);
    }

    #[test]
    fn differing_headers_are_not_merged() {
        let base = TcpSpec::default();
        let next = |t: TcpSpec| TcpSpec {
            seq: base.seq + 1000,
            ..t
        };
        let ip1 = IpSpec {
            id: IpSpec::v4().id + 1,
            ..IpSpec::v4()
        };
        let variants: Vec<(&str, IpSpec, TcpSpec)> = vec![
            (
                "ack",
                ip1.clone(),
                next(TcpSpec {
                    ack: 78,
                    ..base.clone()
                }),
            ),
            (
                "window",
                ip1.clone(),
                next(TcpSpec {
                    window: 1,
                    ..base.clone()
                }),
            ),
            (
                "options",
                ip1.clone(),
                next(TcpSpec {
                    options: timestamps(1, 1),
                    ..base.clone()
                }),
            ),
            (
                "ece",
                ip1.clone(),
                next(TcpSpec {
                    flags: ACK | ECE,
                    ..base.clone()
                }),
            ),
            (
                "cwr",
                ip1.clone(),
                next(TcpSpec {
                    flags: ACK | CWR,
                    ..base.clone()
                }),
            ),
            (
                "seq gap",
                ip1.clone(),
                TcpSpec {
                    seq: base.seq + 1001,
                    ..base.clone()
                },
            ),
            (
                "ttl",
                IpSpec {
                    ttl: 63,
                    ..ip1.clone()
                },
                next(base.clone()),
            ),
            (
                "tos",
                IpSpec {
                    tos: 3,
                    ..ip1.clone()
                },
                next(base.clone()),
            ),
            (
                "df",
                IpSpec {
                    df: false,
                    ..ip1.clone()
                },
                next(base.clone()),
            ),
            (
                "dst",
                IpSpec {
                    dst: [9; 16],
                    ..ip1.clone()
                },
                next(base.clone()),
            ),
            (
                "dport",
                ip1.clone(),
                next(TcpSpec {
                    dport: 1,
                    ..base.clone()
                }),
            ),
            // Fuzzing found this one: a stray urgent pointer (URG clear) on a later segment
            // was dropped by the merge (fuzz/artifacts/coalesce/crash-035ba0cf…).
            (
                "urgent pointer",
                ip1.clone(),
                next(TcpSpec {
                    urgent: 0x87,
                    ..base.clone()
                }),
            ),
        ];
        for (what, ip, tcp) in variants {
            let pkts = vec![
                tcp_packet(&IpSpec::v4(), &base, &payload(1000, 0)),
                tcp_packet(&ip, &tcp, &payload(1000, 1)),
            ];
            assert!(
                coalesce(&pkts) == frames_alone(&pkts),
                "{what} differs, yet merged"
            );
        }
        let v6 = IpSpec::v6();
        for (what, ip) in [
            (
                "flow label",
                IpSpec {
                    flow_label: 1,
                    ..v6.clone()
                },
            ),
            (
                "hop limit",
                IpSpec {
                    ttl: 1,
                    ..v6.clone()
                },
            ),
            (
                "traffic class",
                IpSpec {
                    tos: 1,
                    ..v6.clone()
                },
            ),
        ] {
            let pkts = vec![
                tcp_packet(&v6, &base, &payload(1000, 0)),
                tcp_packet(&ip, &next(base.clone()), &payload(1000, 1)),
            ];
            assert!(
                coalesce(&pkts) == frames_alone(&pkts),
                "{what} differs, yet merged"
            );
        }
    }

    #[test]
    fn ipv4_without_df_needs_consecutive_ids() {
        let ip = IpSpec {
            df: false,
            id: 0xffff,
            ..IpSpec::v4()
        };
        let segs = stream(&ip, &TcpSpec::default(), 3, 1000, 1000);
        let frames = coalesce(&segs);
        assert_eq!(frames.len(), 1);
        assert_eq!(resegment(&frames[0]).unwrap(), segs);
        let mut skipped = segs.clone();
        skipped[1] = tcp_packet(
            &IpSpec {
                id: 5,
                ..ip.clone()
            },
            &TcpSpec {
                seq: TcpSpec::default().seq + 1000,
                ..TcpSpec::default()
            },
            &payload(1000, 1),
        );
        // 0 | 1 (wrong ID) | 2 (does not follow 1's ID either).
        assert_eq!(coalesce(&skipped), frames_alone(&skipped));
        // With DF the ID may jump (RFC 6864): it is not part of the flow.
        let df = IpSpec {
            id: 9,
            ..IpSpec::v4()
        };
        let mut pkts = stream(&df, &TcpSpec::default(), 2, 1000, 1000);
        pkts[1][4..6].copy_from_slice(&500u16.to_be_bytes());
        pkts[1][10..12].fill(0);
        let c = !ref_fold(&pkts[1][..20]);
        pkts[1][10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(coalesce(&pkts).len(), 1);
    }

    #[test]
    fn ipv4_reserved_flag_is_not_merged() {
        // Fuzzing found the merge dropping the reserved ("evil") bit of a later segment,
        // whose IPv4 flags then came back as plain DF (fuzz/artifacts/coalesce/crash-fb04…).
        let set_reserved = |p: &mut Vec<u8>| {
            p[6] |= 0x80;
            p[10..12].fill(0);
            let c = !ref_fold(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        };
        let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 1000);
        set_reserved(&mut segs[1]);
        let frames = coalesce(&segs);
        assert_eq!(frames.len(), 3);
        assert!(frames[1] == frames_alone(&segs[1..2])[0]);
        for s in &mut segs {
            if s[6] & 0x80 == 0 {
                set_reserved(s);
            }
        }
        assert!(
            coalesce(&segs) == frames_alone(&segs),
            "reserved bit merged"
        );
    }

    #[test]
    fn bad_checksums_stay_alone_and_end_the_flow() {
        let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 4, 1000, 1000);
        segs[1][100] ^= 1; // payload corrupt: TCP checksum fails
        let frames = coalesce(&segs);
        // 0 | 1 (alone, unchanged) | 2+3
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1], frames_alone(&segs[1..2])[0]);
        assert_eq!(resegment(&frames[2]).unwrap(), segs[2..]);
        let mut segs = stream(&IpSpec::v4(), &TcpSpec::default(), 3, 1000, 1000);
        segs[1][8] = 1; // TTL changed without fixing the header checksum
        segs[2][8] = 1;
        assert_eq!(coalesce(&segs), frames_alone(&segs));
    }

    #[test]
    fn unmergeable_packets_pass_through_unchanged() {
        let ip = IpSpec::v4();
        let syn = tcp_packet(
            &ip,
            &TcpSpec {
                flags: SYN,
                ..TcpSpec::default()
            },
            &[],
        );
        let pure_ack = tcp_packet(&ip, &TcpSpec::default(), &[]);
        let mut icmp = ip.header(1, 8);
        icmp.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
        let mut fragment = tcp_packet(&ip, &TcpSpec::default(), &payload(100, 0));
        fragment[6] = 0x20; // MF
        let mut options = tcp_packet(&ip, &TcpSpec::default(), &payload(100, 0));
        options.splice(20..20, [1, 1, 1, 0]);
        options[0] = 0x46;
        options[3] += 4;
        let mut ext6 = tcp_packet(&IpSpec::v6(), &TcpSpec::default(), &payload(100, 0));
        ext6.splice(40..40, [6, 0, 1, 4, 0, 0, 0, 0]);
        ext6[6] = 0;
        ext6[5] += 8;
        let udp_no_csum = {
            let mut u = udp_packet(&ip, 1, 2, &payload(100, 0));
            u[26..28].fill(0);
            u
        };
        let pkts: Vec<Vec<u8>> = vec![
            syn.clone(),
            syn,
            pure_ack.clone(),
            pure_ack,
            icmp.clone(),
            icmp,
            fragment.clone(),
            fragment,
            options.clone(),
            options,
            ext6.clone(),
            ext6,
            udp_no_csum.clone(),
            udp_no_csum,
            b"garbage".to_vec(),
            vec![],
            vec![0x45],
            vec![0x60; 39],
        ];
        assert!(coalesce(&pkts) == frames_alone(&pkts), "something merged");
    }

    #[test]
    fn a_packet_that_may_belong_to_a_flow_ends_its_merge() {
        let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 4, 1000, 1000);
        let mut frag = segs[0].clone();
        frag[6] = 0x00;
        frag[7] = 0x10; // offset 128: a non-first fragment with no ports
        frag[10..12].fill(0);
        let c = !ref_fold(&frag[..20]);
        frag[10..12].copy_from_slice(&c.to_be_bytes());
        let pkts = vec![
            segs[0].clone(),
            segs[1].clone(),
            frag,
            segs[2].clone(),
            segs[3].clone(),
        ];
        let frames = coalesce(&pkts);
        assert_eq!(frames.len(), 3);
        assert_eq!(resegment(&frames[0]).unwrap(), segs[..2]);
        assert_eq!(frames[1], frames_alone(&pkts[2..3])[0]);
        assert_eq!(resegment(&frames[2]).unwrap(), segs[2..]);
    }

    #[test]
    fn merges_stop_at_64k() {
        let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 100, 1400, 1400);
        let frames = coalesce(&segs);
        // 20 + 20 + 46 × 1400 = 64,440; one more would be 65,840.
        let per = (MAX_COALESCED_LEN - 40) / 1400;
        assert_eq!(per, 46);
        assert_eq!(frames.len(), 100usize.div_ceil(per));
        let mut replayed = Vec::new();
        for f in &frames {
            assert!(f.len() - VNET_HDR_LEN <= MAX_COALESCED_LEN);
            replayed.extend(resegment(f).unwrap());
        }
        assert_eq!(replayed, segs);
    }

    #[test]
    fn wireguard_padding_is_trimmed() {
        let segs = stream(&IpSpec::v6(), &TcpSpec::default(), 3, 1000, 1000);
        let padded: Vec<Vec<u8>> = segs
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.resize(p.len().next_multiple_of(16), 0);
                p
            })
            .collect();
        let frames = coalesce(&padded);
        assert_eq!(frames.len(), 1);
        assert_eq!(resegment(&frames[0]).unwrap(), segs);
        let single = coalesce(&padded[..1]);
        assert_eq!(single, frames_alone(&segs[..1]));
    }

    fn udp_stream(ip: &IpSpec, n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
        let mut ip = ip.clone();
        (0..n)
            .map(|i| {
                let len = if i + 1 == n { last } else { size };
                let p = udp_packet(&ip, 443, 50_000, &payload(len, i as u8));
                ip.id = ip.id.wrapping_add(1);
                p
            })
            .collect()
    }

    #[test]
    fn udp_datagrams_merge_into_uso_and_round_trip() {
        for ip in [IpSpec::v4(), IpSpec::v6()] {
            let dgrams = udp_stream(&ip, 5, 1200, 300);
            let frames = coalesce(&dgrams);
            assert_eq!(frames.len(), 1);
            check_merged(&frames[0], ip.v6, false, 1200);
            assert_eq!(resegment(&frames[0]).unwrap(), dgrams);
        }
    }

    #[test]
    fn udp_merges_stop_at_64_datagrams_and_on_a_short_one() {
        let dgrams = udp_stream(&IpSpec::v4(), 100, 500, 500);
        let frames = coalesce(&dgrams);
        assert_eq!(frames.len(), 2);
        assert_eq!(vnet(&frames[0]).gso_size, 500);
        assert_eq!(
            resegment(&frames[0]).unwrap().len(),
            MAX_UDP_COALESCED_SEGMENTS
        );
        let mut dgrams = udp_stream(&IpSpec::v4(), 2, 500, 100);
        dgrams.extend(udp_stream(
            &IpSpec {
                id: IpSpec::v4().id + 2,
                ..IpSpec::v4()
            },
            2,
            500,
            500,
        ));
        let frames = coalesce(&dgrams);
        assert_eq!(frames.len(), 2);
        assert_eq!(resegment(&frames[1]).unwrap(), dgrams[2..]);
    }

    #[test]
    fn udp_coalescing_can_be_turned_off() {
        let dgrams = udp_stream(&IpSpec::v4(), 5, 1200, 1200);
        let mut c = Coalescer::default();
        c.set_udp(false);
        dgrams.iter().for_each(|d| c.push(d));
        assert_eq!(flush_all(&mut c), frames_alone(&dgrams));
    }

    #[test]
    fn single_packets_get_a_zero_header() {
        let p = tcp_packet(&IpSpec::v4(), &TcpSpec::default(), &payload(10, 0));
        let frames = coalesce(std::slice::from_ref(&p));
        assert_eq!(frames, frames_alone(&[p]));
    }

    #[test]
    fn buffers_are_reused_across_batches() {
        let segs = stream(&IpSpec::v4(), &TcpSpec::default(), 50, 1400, 1400);
        let mut c = Coalescer::new();
        let capacity = |c: &Coalescer| {
            (
                c.items.capacity(),
                c.flows.capacity(),
                c.items
                    .iter()
                    .map(|i| (i.buf.as_ptr(), i.buf.capacity()))
                    .collect::<Vec<_>>(),
            )
        };
        for round in 0..3 {
            segs.iter().for_each(|p| c.push(p));
            let before = capacity(&c);
            assert_eq!(flush_all(&mut c).len(), 2);
            if round > 0 {
                segs.iter().for_each(|p| c.push(p));
                assert_eq!(capacity(&c), before, "no reallocation in steady state");
                flush_all(&mut c);
            }
        }
    }
}
