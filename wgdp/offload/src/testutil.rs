//! Packet builders and an independent checker for the tests. Nothing here uses the crate's
//! own checksum or header code, so a bug there cannot cancel itself out.
#![allow(clippy::unwrap_used)]

use crate::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};
use crate::VnetHdr;

pub(crate) const FIN: u8 = 0x01;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const PSH: u8 = 0x08;
pub(crate) const ACK: u8 = 0x10;
pub(crate) const ECE: u8 = 0x40;
pub(crate) const CWR: u8 = 0x80;

/// RFC 1071 the slow way: 16-bit words into a u32, folding after every add.
pub(crate) fn ref_fold(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    let mut i = 0;
    while i < data.len() {
        let hi = u32::from(data[i]) << 8;
        let lo = data.get(i + 1).map_or(0, |&b| u32::from(b));
        s += hi | lo;
        s = (s & 0xffff) + (s >> 16);
        i += 2;
    }
    s as u16
}

/// The pseudo-header as bytes (RFC 9293 3.1 / RFC 8200 8.1).
pub(crate) fn ref_pseudo(ip: &[u8], protocol: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if ip[0] >> 4 == 6 {
        p.extend_from_slice(&ip[8..40]);
        p.extend_from_slice(&(l4_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, protocol]);
    } else {
        p.extend_from_slice(&ip[12..20]);
        p.extend_from_slice(&[0, protocol]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    p
}

/// Addresses, IDs and IP header fields of generated packets.
#[derive(Debug, Clone)]
pub(crate) struct IpSpec {
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u16,
    pub df: bool,
    pub ttl: u8,
    pub tos: u8,
    pub flow_label: u32,
}

impl IpSpec {
    pub(crate) fn v4() -> Self {
        let mut src = [0; 16];
        let mut dst = [0; 16];
        src[..4].copy_from_slice(&[10, 0, 0, 1]);
        dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        IpSpec {
            v6: false,
            src,
            dst,
            id: 0x1234,
            df: true,
            ttl: 64,
            tos: 0,
            flow_label: 0,
        }
    }

    pub(crate) fn v6() -> Self {
        let mut src = [0; 16];
        let mut dst = [0; 16];
        src[..2].copy_from_slice(&[0xfd, 0x00]);
        src[15] = 1;
        dst[..2].copy_from_slice(&[0xfd, 0x00]);
        dst[15] = 2;
        IpSpec {
            v6: true,
            src,
            dst,
            id: 0,
            df: false,
            ttl: 64,
            tos: 0,
            flow_label: 0x12345,
        }
    }

    /// An IP header (no options) for `l4_len` transport bytes of `protocol`.
    pub(crate) fn header(&self, protocol: u8, l4_len: usize) -> Vec<u8> {
        if self.v6 {
            let mut h = vec![0u8; 40];
            let first = (6u32 << 28) | (u32::from(self.tos) << 20) | (self.flow_label & 0xfffff);
            h[..4].copy_from_slice(&first.to_be_bytes());
            h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            h[6] = protocol;
            h[7] = self.ttl;
            h[8..24].copy_from_slice(&self.src);
            h[24..40].copy_from_slice(&self.dst);
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[1] = self.tos;
            h[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&self.id.to_be_bytes());
            if self.df {
                h[6] = 0x40;
            }
            h[8] = self.ttl;
            h[9] = protocol;
            h[12..16].copy_from_slice(&self.src[..4]);
            h[16..20].copy_from_slice(&self.dst[..4]);
            let c = !ref_fold(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
    }
}

/// TCP header fields of generated packets.
#[derive(Debug, Clone)]
pub(crate) struct TcpSpec {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    /// Padded to a multiple of 4 by the caller.
    pub options: Vec<u8>,
}

impl Default for TcpSpec {
    fn default() -> Self {
        TcpSpec {
            sport: 40000,
            dport: 5201,
            seq: 1_000_000,
            ack: 77,
            flags: ACK,
            window: 502,
            urgent: 0,
            options: Vec::new(),
        }
    }
}

/// Timestamp option padded with two NOPs, as Linux sends it.
pub(crate) fn timestamps(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

/// Sets the L4 checksum of a packet with no IPv4 options / IPv6 extension headers.
fn fill_l4_checksum(pkt: &mut [u8], protocol: u8, partial: bool) {
    let l4_off = if pkt[0] >> 4 == 6 { 40 } else { 20 };
    let l4_len = pkt.len() - l4_off;
    let field = l4_off + if protocol == 6 { 16 } else { 6 };
    pkt[field..field + 2].copy_from_slice(&[0, 0]);
    let pseudo = ref_pseudo(pkt, protocol, l4_len);
    let c = if partial {
        // What the kernel leaves for CHECKSUM_PARTIAL: the folded pseudo-header sum.
        ref_fold(&pseudo)
    } else {
        let mut all = pseudo;
        all.extend_from_slice(&pkt[l4_off..]);
        match !ref_fold(&all) {
            0 if protocol == 17 => 0xffff,
            c => c,
        }
    };
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// A TCP packet with complete checksums.
pub(crate) fn tcp_packet(ip: &IpSpec, tcp: &TcpSpec, payload: &[u8]) -> Vec<u8> {
    let mut p = tcp_unchecked(ip, tcp, payload);
    fill_l4_checksum(&mut p, 6, false);
    p
}

fn tcp_unchecked(ip: &IpSpec, tcp: &TcpSpec, payload: &[u8]) -> Vec<u8> {
    assert_eq!(tcp.options.len() % 4, 0);
    let doff = 20 + tcp.options.len();
    let mut p = ip.header(6, doff + payload.len());
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&tcp.sport.to_be_bytes());
    t[2..4].copy_from_slice(&tcp.dport.to_be_bytes());
    t[4..8].copy_from_slice(&tcp.seq.to_be_bytes());
    t[8..12].copy_from_slice(&tcp.ack.to_be_bytes());
    t[12] = ((doff / 4) as u8) << 4;
    t[13] = tcp.flags;
    t[14..16].copy_from_slice(&tcp.window.to_be_bytes());
    t[18..20].copy_from_slice(&tcp.urgent.to_be_bytes());
    p.extend_from_slice(&t);
    p.extend_from_slice(&tcp.options);
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram with complete checksums.
pub(crate) fn udp_packet(ip: &IpSpec, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = udp_unchecked(ip, sport, dport, payload);
    fill_l4_checksum(&mut p, 17, false);
    p
}

fn udp_unchecked(ip: &IpSpec, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let l4_len = 8 + payload.len();
    let mut p = ip.header(17, l4_len);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A TSO super-packet as the kernel hands it to a TUN reader: partial checksum, the GSO
/// fields set, and `hdr_len` as Linux fills it (the linear length: here the whole packet).
pub(crate) fn tso(ip: &IpSpec, tcp: &TcpSpec, payload: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
    let mut p = tcp_unchecked(ip, tcp, payload);
    fill_l4_checksum(&mut p, 6, true);
    let l4_off: u16 = if ip.v6 { 40 } else { 20 };
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: if ip.v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        },
        hdr_len: p.len().min(65535) as u16,
        gso_size: mss,
        csum_start: l4_off,
        csum_offset: 16,
    };
    (hdr, p)
}

/// A USO super-packet as the kernel hands it to a TUN reader.
pub(crate) fn uso(
    ip: &IpSpec,
    sport: u16,
    dport: u16,
    payload: &[u8],
    size: u16,
) -> (VnetHdr, Vec<u8>) {
    let mut p = udp_unchecked(ip, sport, dport, payload);
    fill_l4_checksum(&mut p, 17, true);
    let l4_off: u16 = if ip.v6 { 40 } else { 20 };
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
        hdr_len: l4_off + 8,
        gso_size: size,
        csum_start: l4_off,
        csum_offset: 6,
    };
    (hdr, p)
}

/// What [`check_packet`] read from a packet it found well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub v6: bool,
    pub id: u16,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Asserts that `pkt` is a complete IPv4/IPv6 TCP or UDP packet (no IPv4 options or IPv6
/// extension headers) with consistent lengths and valid checksums, and returns its fields.
pub(crate) fn check_packet(pkt: &[u8]) -> Parsed {
    let v6 = pkt[0] >> 4 == 6;
    let (l4_off, protocol, id) = if v6 {
        assert_eq!(
            u16::from_be_bytes([pkt[4], pkt[5]]) as usize + 40,
            pkt.len(),
            "IPv6 payload length"
        );
        (40, pkt[6], 0)
    } else {
        assert_eq!(pkt[0], 0x45);
        assert_eq!(
            u16::from_be_bytes([pkt[2], pkt[3]]) as usize,
            pkt.len(),
            "IPv4 total length"
        );
        assert_eq!(ref_fold(&pkt[..20]), 0xffff, "IPv4 header checksum");
        (20, pkt[9], u16::from_be_bytes([pkt[4], pkt[5]]))
    };
    let l4 = &pkt[l4_off..];
    let mut all = ref_pseudo(pkt, protocol, l4.len());
    all.extend_from_slice(l4);
    assert_eq!(ref_fold(&all), 0xffff, "L4 checksum");
    let be16 = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    let be32 = |o: usize| u32::from_be_bytes([l4[o], l4[o + 1], l4[o + 2], l4[o + 3]]);
    match protocol {
        6 => {
            let doff = usize::from(l4[12] >> 4) * 4;
            Parsed {
                v6,
                id,
                protocol,
                sport: be16(0),
                dport: be16(2),
                seq: be32(4),
                ack: be32(8),
                flags: l4[13],
                window: be16(14),
                options: l4[20..doff].to_vec(),
                payload: l4[doff..].to_vec(),
            }
        }
        17 => {
            assert_eq!(be16(4) as usize, l4.len(), "UDP length");
            assert_ne!(be16(6), 0, "UDP checksum must not be 0");
            Parsed {
                v6,
                id,
                protocol,
                sport: be16(0),
                dport: be16(2),
                seq: 0,
                ack: 0,
                flags: 0,
                window: 0,
                options: Vec::new(),
                payload: l4[8..].to_vec(),
            }
        }
        p => panic!("unexpected protocol {p}"),
    }
}

/// Deterministic payload bytes.
pub(crate) fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// Splits the output of `segment` into owned packets.
pub(crate) fn split(out: &[u8], ranges: &[std::ops::Range<usize>]) -> Vec<Vec<u8>> {
    ranges.iter().map(|r| out[r.clone()].to_vec()).collect()
}

/// Flushes `c` into owned frames.
pub(crate) fn flush_all(c: &mut crate::Coalescer) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    c.flush(&mut |f| frames.push(f.to_vec()));
    frames
}

/// What the coalescer is allowed to change in a packet it merges and the segmenter rebuilds:
/// the IPv4 header checksum's representation, the IPv4 ID when DF is set (RFC 6864), and a
/// TCP checksum of 0xffff (the same number as 0 in one's complement). Zeroes those.
pub(crate) fn normalize(pkt: &[u8]) -> Vec<u8> {
    let mut p = trim(pkt).to_vec();
    let l4 = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 && p[0] == 0x45 => {
            p[10..12].fill(0);
            if p[6] & 0x40 != 0 {
                p[4..6].fill(0);
            }
            (p[9] == 6).then_some(20)
        }
        Some(6) if p.len() >= 40 => (p[6] == 6).then_some(40),
        _ => None,
    };
    if let Some(l4) = l4 {
        if p.len() >= l4 + 18 && p[l4 + 16..l4 + 18] == [0xff, 0xff] {
            p[l4 + 16..l4 + 18].fill(0);
        }
    }
    p
}

/// The packet cut to its IP length, as the coalescer keeps it.
pub(crate) fn trim(pkt: &[u8]) -> &[u8] {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            if ihl >= 20 && ihl <= total && total <= pkt.len() {
                &pkt[..total]
            } else {
                pkt
            }
        }
        Some(6) if pkt.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            if total <= pkt.len() {
                &pkt[..total]
            } else {
                pkt
            }
        }
        _ => pkt,
    }
}

/// The TCP/UDP flow a packet certainly belongs to (version, addresses, protocol, ports), if
/// its headers say so unambiguously (the coalescer ends that flow's merge for it).
pub(crate) fn flow_of(pkt: &[u8]) -> Option<Vec<u8>> {
    let p = trim(pkt);
    let (l4, proto, addrs) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            if ihl < 20 || frag_offset != 0 {
                return None;
            }
            (ihl, p[9], &p[12..20])
        }
        Some(6) if p.len() >= 40 => (40, p[6], &p[8..40]),
        _ => return None,
    };
    if (proto != 6 && proto != 17) || p.len() < l4 + 4 {
        return None;
    }
    let mut key = vec![p[0] >> 4, proto];
    key.extend_from_slice(addrs);
    key.extend_from_slice(&p[l4..l4 + 4]);
    Some(key)
}
