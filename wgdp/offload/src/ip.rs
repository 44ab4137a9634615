//! Field offsets and small helpers for IPv4, IPv6, TCP and UDP headers, shared by the
//! segmenter and the coalescer. Callers check bounds before using the accessors.

use crate::checksum;

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

pub(crate) const IPV4_MIN_HDR: usize = 20;
pub(crate) const IPV6_HDR: usize = 40;
pub(crate) const TCP_MIN_HDR: usize = 20;
pub(crate) const UDP_HDR: usize = 8;
/// Offset of the checksum field in the TCP header.
pub(crate) const TCP_CSUM_OFF: usize = 16;
/// Offset of the checksum field in the UDP header.
pub(crate) const UDP_CSUM_OFF: usize = 6;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_URG: u8 = 0x20;
pub(crate) const TCP_CWR: u8 = 0x80;
/// Offset of the flags byte in the TCP header.
pub(crate) const TCP_FLAGS_OFF: usize = 13;

/// IPv4 "more fragments" bit and fragment offset, in the 16-bit flags/offset field.
pub(crate) const IPV4_MF_OFFSET_MASK: u16 = 0x3fff;
/// IPv4 "don't fragment" bit in the 16-bit flags/offset field.
pub(crate) const IPV4_DF: u16 = 0x4000;

pub(crate) fn read16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

pub(crate) fn write16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn read32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn write32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// Recomputes the IPv4 header checksum of `hdr` (exactly the IHL bytes).
pub(crate) fn set_ipv4_checksum(hdr: &mut [u8]) {
    write16(hdr, 10, 0);
    let c = checksum::finish(checksum::sum(hdr, 0));
    write16(hdr, 10, c);
}

/// Unfolded pseudo-header sum for the IP packet starting at `ip` (at least 20 bytes for v4,
/// 40 for v6), for transport `protocol` and `l4_len` transport bytes.
pub(crate) fn pseudo_sum(ip: &[u8], v6: bool, protocol: u8, l4_len: usize) -> u64 {
    // Source and destination are adjacent in both headers.
    let addrs = if v6 { &ip[8..40] } else { &ip[12..20] };
    // l4_len never exceeds 65535 + 40 here; as a 32-bit IPv6 length it sums the same.
    checksum::sum(addrs, u64::from(protocol) + l4_len as u64)
}

/// Whether an IPv6 next-header value is an extension header (RFC 8200 4, RFC 7045) rather
/// than an upper-layer protocol: hop-by-hop, routing, fragment, ESP, AH, destination
/// options, mobility, HIP, shim6 and the experimental values.
pub(crate) fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}
