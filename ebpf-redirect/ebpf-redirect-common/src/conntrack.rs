//! Connection tracking's ABI: the `CONNTRACK` LRU hash (key [`CtKey`], value [`CtValue`]), the
//! one-entry `POLICY_GENERATION` array, and the idle timeouts the tc programs apply.
//!
//! An entry belongs to one endpoint (host veth ifindex) and holds the connection's original
//! (forward) tuple as first seen at that endpoint, so a check at one endpoint never lets a
//! packet skip another's: same-node A→B has an entry at A (egress) and one at B (ingress).

/// `CtKey::family` of IPv4 tuples.
pub const CT_FAMILY_V4: u8 = 4;
/// `CtKey::family` of IPv6 tuples.
pub const CT_FAMILY_V6: u8 = 6;

/// Key of `CONNTRACK` (44 bytes): endpoint and the connection's forward 5-tuple.
///
/// Addresses are network order; an IPv4 address fills the first 4 bytes, the rest is zero.
/// Ports are network order; for ICMP/ICMPv6 echo both ports hold the echo identifier, for other
/// ICMP and for protocols without ports both are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// The endpoint (host veth ifindex) the entry belongs to, native endian.
    pub endpoint: u32,
    /// [`CT_FAMILY_V4`] or [`CT_FAMILY_V6`].
    pub family: u8,
    /// IP protocol number (ICMPv6 is 58, ICMP 1).
    pub protocol: u8,
    /// Source port (or echo id), network order.
    pub src_port: [u8; 2],
    /// Destination port (or echo id), network order.
    pub dst_port: [u8; 2],
    /// Zero.
    pub reserved: [u8; 2],
    /// Source address, network order.
    pub src: [u8; 16],
    /// Destination address, network order.
    pub dst: [u8; 16],
}

/// `CtValue::flags`: the node itself opened the connection (passes re-validation always).
pub const CT_FLAG_HOST: u8 = 1;
/// `CtValue::flags`: a TCP FIN or RST was seen; the short [`CT_TIMEOUT_TCP_CLOSING_NS`] applies.
pub const CT_FLAG_CLOSING: u8 = 2;

/// Value of `CONNTRACK` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet in either direction.
    pub last_seen_ns: u64,
    /// The `POLICY_GENERATION` the connection was last judged at.
    pub generation: u64,
    /// The policy direction of the forward tuple at the endpoint (`DIRECTION_INGRESS` or
    /// `DIRECTION_EGRESS`): the direction it is judged in again after a policy change.
    pub direction: u8,
    /// [`CT_FLAG_HOST`], [`CT_FLAG_CLOSING`].
    pub flags: u8,
    /// Zero.
    pub reserved: [u8; 6],
}

const SECOND_NS: u64 = 1_000_000_000;
/// Idle timeout of a TCP connection (2 hours, as long as Linux keepalive's first probe).
pub const CT_TIMEOUT_TCP_NS: u64 = 7200 * SECOND_NS;
/// Idle timeout of a TCP connection after a FIN or RST (10 seconds).
pub const CT_TIMEOUT_TCP_CLOSING_NS: u64 = 10 * SECOND_NS;
/// Idle timeout of an SCTP association (2 hours, like TCP; no chunk tracking).
pub const CT_TIMEOUT_SCTP_NS: u64 = 7200 * SECOND_NS;
/// Idle timeout of a UDP flow (60 seconds).
pub const CT_TIMEOUT_UDP_NS: u64 = 60 * SECOND_NS;
/// Idle timeout of an ICMP/ICMPv6 echo exchange (30 seconds).
pub const CT_TIMEOUT_ICMP_NS: u64 = 30 * SECOND_NS;
/// Idle timeout of any other protocol (60 seconds).
pub const CT_TIMEOUT_OTHER_NS: u64 = 60 * SECOND_NS;

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, `Copy`, integers only, no implicit padding (checked by the tests
// below): every bit pattern is valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for CtKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for CtValue {}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn byte_layouts() {
        assert_eq!(size_of::<CtKey>(), 44);
        assert_eq!(offset_of!(CtKey, src_port), 6);
        assert_eq!(offset_of!(CtKey, src), 12);
        assert_eq!(offset_of!(CtKey, dst), 28);
        assert_eq!(size_of::<CtValue>(), 24);
        assert_eq!(offset_of!(CtValue, direction), 16);
    }
}
