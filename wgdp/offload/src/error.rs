//! The crate's one error type.

/// Why a packet read from the TUN could not be turned into wire packets.
///
/// Every variant names the field or header that was wrong; none of them is transient, so the
/// datapath should count the error and drop the packet (retrying the same bytes cannot help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Fewer than 10 bytes where a virtio-net header was expected.
    #[error("virtio-net header truncated: got {len} bytes, need 10")]
    TruncatedVnetHdr {
        /// Bytes available.
        len: usize,
    },
    /// `gso_type` is not one this crate segments (it handles NONE, TCPV4, TCPV6 and UDP_L4,
    /// optionally with the ECN bit).
    #[error("unsupported virtio-net gso_type {0:#04x} (expected NONE, TCPV4, TCPV6 or UDP_L4)")]
    UnsupportedGsoType(u8),
    /// `csum_start + csum_offset + 2` lies beyond the packet.
    #[error(
        "virtio-net checksum position out of range: csum_start {csum_start} + csum_offset \
         {csum_offset} + 2 > packet length {len}"
    )]
    ChecksumOutOfRange {
        /// `csum_start` from the header.
        csum_start: u16,
        /// `csum_offset` from the header.
        csum_offset: u16,
        /// Length of the IP packet.
        len: usize,
    },
    /// A GSO packet with `gso_size` 0.
    #[error("virtio-net GSO packet with gso_size 0")]
    ZeroGsoSize,
    /// Segmenting would produce more than [`MAX_SEGMENTS`](crate::MAX_SEGMENTS) packets.
    #[error("GSO packet would split into {segments} segments, more than the limit of {max}")]
    TooManySegments {
        /// Segments the packet would need.
        segments: usize,
        /// The limit.
        max: usize,
    },
    /// The IP header does not fit in the packet.
    #[error("IP header truncated: packet has {len} bytes")]
    TruncatedIpHeader {
        /// Length of the IP packet.
        len: usize,
    },
    /// The IP version nibble does not match the GSO type (4 for TCPV4, 6 for TCPV6, 4 or 6
    /// for UDP_L4).
    #[error("IP version {version} does not match virtio-net gso_type {gso_type:#04x}")]
    IpVersionMismatch {
        /// Version nibble found.
        version: u8,
        /// `gso_type` from the header.
        gso_type: u8,
    },
    /// IPv4 IHL below 5 words.
    #[error("IPv4 header length {0} bytes is below the minimum of 20")]
    BadIpv4HeaderLength(usize),
    /// The IPv4 total length or IPv6 payload length disagrees with the bytes present.
    #[error(
        "IP length field says {claimed} bytes but the packet has {actual} (header needs {min})"
    )]
    IpLengthMismatch {
        /// Length the IP header claims (whole packet).
        claimed: usize,
        /// Bytes actually present.
        actual: usize,
        /// Smallest length the headers need.
        min: usize,
    },
    /// The packet is an IP fragment (IPv4 MF/offset or an IPv6 fragment header); a GSO
    /// packet never is.
    #[error("GSO packet is an IP fragment")]
    Fragment,
    /// An IPv6 extension header this crate does not walk (only hop-by-hop and destination
    /// options are; a routing header would change the checksum's pseudo-header).
    #[error("unsupported IPv6 extension header {0} in a GSO packet")]
    UnsupportedIpv6ExtensionHeader(u8),
    /// The transport protocol does not match the GSO type.
    #[error("IP protocol {protocol} does not match virtio-net gso_type {gso_type:#04x}")]
    ProtocolMismatch {
        /// IP protocol / next header found.
        protocol: u8,
        /// `gso_type` from the header.
        gso_type: u8,
    },
    /// The TCP or UDP header does not fit in the packet.
    #[error(
        "transport header truncated: needs {needed} bytes from offset {offset}, packet has {len}"
    )]
    TruncatedTransportHeader {
        /// Offset of the transport header.
        offset: usize,
        /// Bytes the header needs.
        needed: usize,
        /// Length of the IP packet.
        len: usize,
    },
    /// TCP data offset below 5 words.
    #[error("TCP data offset {0} bytes is below the minimum of 20")]
    BadTcpDataOffset(usize),
}
