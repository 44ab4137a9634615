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
/// With [`trust_l4_checksums`](Self::trust_l4_checksums) the TCP/UDP checksums are not
/// verified (a pass over every payload saved) and a segment whose checksum is wrong merges
/// like any other.
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
    /// Whether TCP/UDP checksums are taken as valid without being verified.
    trust_l4: bool,
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
            trust_l4: false,
        }
    }

    /// Whether to take the TCP/UDP checksums of pushed packets as valid without verifying
    /// them (off by default). For packets authenticated end to end, as WireGuard's AEAD
    /// authenticates what it opens: the checksum then guards nothing the tag does not, and
    /// Linux's own WireGuard marks such packets `CHECKSUM_UNNECESSARY` for the same reason.
    /// A merged packet's checksum is partial (`NEEDS_CSUM`), so one whose segments carried a
    /// wrong checksum is not dropped by the stack (local delivery checks none; forwarding
    /// computes it afresh). IPv4 header checksums are still verified. Affects packets pushed
    /// from now on.
    pub fn trust_l4_checksums(&mut self, trusted: bool) {
        self.trust_l4 = trusted;
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
        let seg = match classify(pkt, self.udp, self.trust_l4) {
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

/// Decides whether `pkt` may merge, checking everything about it alone (its TCP/UDP checksum
/// only unless `trust_l4`). A packet that may not still names, as far as its bytes tell, the
/// flows it could belong to, even when its length fields are wrong: ending a merge too many
/// is harmless, reordering a flow is not.
fn classify(pkt: &[u8], udp: bool, trust_l4: bool) -> Class {
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
            transport(pkt, key, ihl, ip_len, udp, trust_l4).unwrap_or(alone)
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
            transport(pkt, key, IPV6_HDR, ip_len, udp, trust_l4).unwrap_or(alone)
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

/// The transport checks for a mergeable segment (the checksum unless `trust_l4`); `None` if
/// it must stay alone.
fn transport(
    pkt: &[u8],
    key: PartialKey,
    l4_off: usize,
    ip_len: usize,
    udp: bool,
    trust_l4: bool,
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
    if !trust_l4
        && !checksum::verifies(checksum::sum(
            l4,
            ip::pseudo_sum(pkt, v6, protocol, l4.len()),
        ))
    {
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
mod tests;
