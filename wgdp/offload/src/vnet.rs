//! The virtio-net header a TUN opened with `IFF_VNET_HDR` puts before every packet, both
//! ways, and the kernel constants that go with it.
//!
//! This is `struct virtio_net_hdr` of the virtio 1.x spec (5.1.6) without `num_buffers`:
//! 10 bytes, multi-byte fields little-endian (the TUN uses the host's byte order unless told
//! otherwise with `TUNSETVNETBE`, and every target wgdp runs on is little-endian).

use crate::OffloadError;

/// Length of the virtio-net header on the TUN (`TUNSETVNETHDRSZ` default).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the L4 checksum is partial; `csum_start`/`csum_offset` say where to finish it.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been validated (only meaningful from a device).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 super-packet (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: legacy UDP fragmentation offload (UFO); not supported here.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 super-packet (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP super-packet split into datagrams of `gso_size` payload bytes (USO).
/// Missing from Debian 12's headers.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP flow uses ECN (CWR may be set on the first segment only).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// `TUNSETOFFLOAD` bit: the reader accepts partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUNSETOFFLOAD` bit: the reader accepts TCPv4 super-packets.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUNSETOFFLOAD` bit: the reader accepts TCPv6 super-packets.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUNSETOFFLOAD` bit: the reader accepts TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUNSETOFFLOAD` bit: the reader accepts UDPv4 super-packets (needs [`TUN_F_CSUM`]).
/// Missing from Debian 12's headers.
pub const TUN_F_USO4: u32 = 0x20;
/// `TUNSETOFFLOAD` bit: the reader accepts UDPv6 super-packets (needs [`TUN_F_CSUM`]).
/// Missing from Debian 12's headers.
pub const TUN_F_USO6: u32 = 0x40;

/// A decoded virtio-net header.
///
/// Note that Linux's TUN sets `hdr_len` to the length of the skb's linear part, which can be
/// far more than the headers: [`segment`](crate::segment()) therefore never trusts it and
/// finds the headers' length itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// One of `VIRTIO_NET_HDR_GSO_*`, possibly with [`VIRTIO_NET_HDR_GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers (IP + L4) of a GSO packet; a hint.
    pub hdr_len: u16,
    /// Payload bytes per segment of a GSO packet (the MSS for TCP).
    pub gso_size: u16,
    /// Offset from the start of the IP packet where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Offset from `csum_start` of the 16-bit checksum field (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decodes the first [`VNET_HDR_LEN`] bytes of `buf`; the rest is ignored.
    pub fn parse(buf: &[u8]) -> Result<VnetHdr, OffloadError> {
        let Some(b) = buf.first_chunk::<VNET_HDR_LEN>() else {
            return Err(OffloadError::TruncatedVnetHdr { len: buf.len() });
        };
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        })
    }

    /// Encodes the header as the TUN expects it.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Whether [`VIRTIO_NET_HDR_F_NEEDS_CSUM`] is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// The GSO type without the [`VIRTIO_NET_HDR_GSO_ECN`] bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !VIRTIO_NET_HDR_GSO_ECN
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_little_endian_and_round_trips() {
        let bytes = [1, 4, 0x42, 0x00, 0x78, 0x05, 0x28, 0x00, 0x10, 0x00, 0xee];
        let h = VnetHdr::parse(&bytes).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
                hdr_len: 0x42,
                gso_size: 1400,
                csum_start: 40,
                csum_offset: 16,
            }
        );
        assert_eq!(h.encode(), bytes[..10]);
        assert!(h.needs_csum());
    }

    #[test]
    fn parse_rejects_short_buffers() {
        for n in 0..VNET_HDR_LEN {
            assert_eq!(
                VnetHdr::parse(&[0u8; 16][..n]),
                Err(OffloadError::TruncatedVnetHdr { len: n })
            );
        }
    }

    #[test]
    fn gso_kind_strips_ecn() {
        let h = VnetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            ..VnetHdr::default()
        };
        assert_eq!(h.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
    }
}
