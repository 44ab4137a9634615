//! Flow events' ABI: the event the tc programs write into the `FLOW_EVENTS` ring buffer
//! ([`FlowEvent`]), the `FLOW_TABLE` LRU hash of forwarded flows ([`FlowKey`] →
//! [`FlowCounters`]), the one-entry `FLOW_CONFIG` array ([`FlowConfig`]) and the per-CPU
//! `FLOW_LOST` counter of events the ring buffer had no room for.
//!
//! Every drop (and permissive would-drop) is an event of kind [`FLOW_KIND_DROP`]. Forwarded
//! packets are counted per flow in `FLOW_TABLE`: the packet that inserts a flow's entry is also
//! an event of kind [`FLOW_KIND_FIRST_PACKET`]; later packets only add to the entry's
//! counters, which the daemon reads and reports as aggregates. `FLOW_CONFIG[0].events == 0`
//! (the unset value) turns all of it off.
//!
//! Addresses are network order (IPv4 in the first 4 bytes, the rest zero); ports are host
//! order in events and network order in flow keys (as in [`crate::CtKey`]).

/// `FlowEvent::kind`: a dropped (or, permissive, would-be-dropped) packet.
pub const FLOW_KIND_DROP: u8 = 1;
/// `FlowEvent::kind`: the first packet of a forwarded flow (its `FLOW_TABLE` entry was new).
pub const FLOW_KIND_FIRST_PACKET: u8 = 2;

/// `FlowEvent::verdict` / `FlowCounters::verdict`: sent on.
pub const FLOW_VERDICT_FORWARDED: u8 = 0;
/// Dropped.
pub const FLOW_VERDICT_DROPPED: u8 = 1;
/// Allowed, but strict mode would have dropped it (permissive).
pub const FLOW_VERDICT_AUDIT: u8 = 2;

/// `reason`: redirected into the tunnel (`from_pod`, destination in `REMOTE_*`).
pub const FLOW_REASON_TO_TUNNEL: u8 = 1;
/// `reason`: delivered locally (a local pod, or passed to the host stack).
pub const FLOW_REASON_LOCAL_DELIVERY: u8 = 2;
/// `reason`: denied by NetworkPolicy (`FlowEvent::policy_direction` says which side).
pub const FLOW_REASON_POLICY_DENIED: u8 = 3;
/// `reason`: strict mode, cluster traffic leaving the node in clear.
pub const FLOW_REASON_STRICT_MODE: u8 = 4;
/// `reason`: the source address is not the sending pod's.
pub const FLOW_REASON_SPOOFED_SOURCE: u8 = 5;
/// `reason`: permissive mode, strict mode would have dropped it.
pub const FLOW_REASON_WOULD_DROP: u8 = 6;

/// `point`: `from_pod` (packets a pod sends, on its host veth).
pub const FLOW_POINT_FROM_POD: u8 = 0;
/// `point`: `to_pod` (packets delivered to a pod, on its host veth).
pub const FLOW_POINT_TO_POD: u8 = 1;
/// `point`: the underlay guard (a way out of the node).
pub const FLOW_POINT_UNDERLAY: u8 = 2;

/// `family` of an event whose frame was too short to show its IP header.
pub const FLOW_FAMILY_UNKNOWN: u8 = 0;
/// `FlowEvent::policy_direction` when the event is not a policy drop.
pub const FLOW_POLICY_DIRECTION_NONE: u8 = 0xff;

/// One record of the `FLOW_EVENTS` ring buffer (64 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` when the packet was seen (monotonic since boot).
    pub time_ns: u64,
    /// Source address, network order.
    pub src: [u8; 16],
    /// Destination address, network order.
    pub dst: [u8; 16],
    /// `skb->ifindex`: the interface the program ran on.
    pub ifindex: u32,
    /// Length of the packet from its IP header on.
    pub ip_len: u32,
    /// Source port (TCP, UDP, SCTP), host order; 0 otherwise.
    pub src_port: u16,
    /// Destination port, host order; 0 otherwise.
    pub dst_port: u16,
    /// [`FLOW_KIND_DROP`] or [`FLOW_KIND_FIRST_PACKET`].
    pub kind: u8,
    /// `FLOW_VERDICT_*`.
    pub verdict: u8,
    /// `FLOW_REASON_*`.
    pub reason: u8,
    /// `CT_FAMILY_V4`, `CT_FAMILY_V6` or [`FLOW_FAMILY_UNKNOWN`].
    pub family: u8,
    /// IP protocol number (IPv6: the fixed header's next header).
    pub protocol: u8,
    /// `FLOW_POINT_*`.
    pub point: u8,
    /// For a policy drop, `DIRECTION_INGRESS` or `DIRECTION_EGRESS` of the policy that
    /// refused it; otherwise [`FLOW_POLICY_DIRECTION_NONE`].
    pub policy_direction: u8,
    /// ICMP/ICMPv6 type (0 for other protocols).
    pub icmp_type: u8,
    /// ICMP/ICMPv6 code.
    pub icmp_code: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// Size in bytes of a [`FlowEvent`] as the ring buffer holds it.
pub const FLOW_EVENT_SIZE: usize = core::mem::size_of::<FlowEvent>();

impl FlowEvent {
    /// Decodes a ring-buffer record (native byte order: the programs run on this machine).
    /// `None` unless `bytes` is exactly [`FLOW_EVENT_SIZE`] long; every field is taken as it
    /// is (validating the values is the reader's business).
    pub fn from_bytes(bytes: &[u8]) -> Option<FlowEvent> {
        let b: &[u8; FLOW_EVENT_SIZE] = bytes.try_into().ok()?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut time = [0u8; 8];
        time.copy_from_slice(&b[0..8]);
        let mut src = [0u8; 16];
        src.copy_from_slice(&b[8..24]);
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&b[24..40]);
        Some(FlowEvent {
            time_ns: u64::from_ne_bytes(time),
            src,
            dst,
            ifindex: u32_at(40),
            ip_len: u32_at(44),
            src_port: u16_at(48),
            dst_port: u16_at(50),
            kind: b[52],
            verdict: b[53],
            reason: b[54],
            family: b[55],
            protocol: b[56],
            point: b[57],
            policy_direction: b[58],
            icmp_type: b[59],
            icmp_code: b[60],
            reserved: [b[61], b[62], b[63]],
        })
    }
}

/// Key of `FLOW_TABLE` (44 bytes): where a forwarded flow was seen and its 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// `skb->ifindex` of the program.
    pub ifindex: u32,
    /// `CT_FAMILY_V4` or `CT_FAMILY_V6`.
    pub family: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// `FLOW_POINT_*`.
    pub point: u8,
    /// Zero.
    pub reserved: u8,
    /// Source port (ICMP echo: the identifier), network order.
    pub src_port: [u8; 2],
    /// Destination port (ICMP echo: the identifier), network order.
    pub dst_port: [u8; 2],
    /// Source address, network order.
    pub src: [u8; 16],
    /// Destination address, network order.
    pub dst: [u8; 16],
}

/// Value of `FLOW_TABLE` (40 bytes): the flow's counters since its entry was created.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Packets (atomically added).
    pub packets: u64,
    /// Bytes from the IP header on (atomically added).
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` of the first packet.
    pub first_ns: u64,
    /// `bpf_ktime_get_ns()` of the latest packet.
    pub last_ns: u64,
    /// `FLOW_VERDICT_*` of the flow's packets (forwarded).
    pub verdict: u8,
    /// `FLOW_REASON_*` of the flow's first packet.
    pub reason: u8,
    /// ICMP/ICMPv6 type of the first packet.
    pub icmp_type: u8,
    /// ICMP/ICMPv6 code of the first packet.
    pub icmp_code: u8,
    /// Zero.
    pub reserved: [u8; 4],
}

/// Value of the one-entry `FLOW_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowConfig {
    /// Non-zero: emit events and count forwarded flows. Zero (unset): nothing at all.
    pub events: u32,
    /// Zero.
    pub reserved: u32,
}

/// Default size of the `FLOW_EVENTS` ring buffer in bytes (a power of two, >= a page).
pub const DEFAULT_FLOW_RING_BYTES: u32 = 1 << 20;
/// Default max entries of `FLOW_TABLE` (LRU: the least recently used flow is forgotten).
pub const MAX_FLOWS: u32 = 65_536;

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, `Copy`, integers and byte arrays laid out without padding (64 bytes,
// checked by a test); every bit pattern is valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for FlowEvent {}

#[cfg(feature = "user")]
// SAFETY: as for `FlowEvent` (44 bytes, no padding).
#[allow(unsafe_code)]
unsafe impl aya::Pod for FlowKey {}

#[cfg(feature = "user")]
// SAFETY: as for `FlowEvent` (40 bytes, no padding).
#[allow(unsafe_code)]
unsafe impl aya::Pod for FlowCounters {}

#[cfg(feature = "user")]
// SAFETY: two `u32`s.
#[allow(unsafe_code)]
unsafe impl aya::Pod for FlowConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_field_by_field_and_only_at_their_size() {
        let event = FlowEvent {
            time_ns: 0x0102_0304_0506_0708,
            src: [1; 16],
            dst: [2; 16],
            ifindex: 7,
            ip_len: 1500,
            src_port: 40000,
            dst_port: 80,
            kind: FLOW_KIND_DROP,
            verdict: FLOW_VERDICT_DROPPED,
            reason: FLOW_REASON_POLICY_DENIED,
            family: 4,
            protocol: 6,
            point: FLOW_POINT_TO_POD,
            policy_direction: 0,
            icmp_type: 3,
            icmp_code: 4,
            reserved: [5, 6, 7],
        };
        let mut bytes = [0u8; FLOW_EVENT_SIZE];
        bytes[0..8].copy_from_slice(&event.time_ns.to_ne_bytes());
        bytes[8..24].copy_from_slice(&event.src);
        bytes[24..40].copy_from_slice(&event.dst);
        bytes[40..44].copy_from_slice(&7u32.to_ne_bytes());
        bytes[44..48].copy_from_slice(&1500u32.to_ne_bytes());
        bytes[48..50].copy_from_slice(&40000u16.to_ne_bytes());
        bytes[50..52].copy_from_slice(&80u16.to_ne_bytes());
        bytes[52..64].copy_from_slice(&[1, 1, 3, 4, 6, 1, 0, 3, 4, 5, 6, 7]);
        assert_eq!(FlowEvent::from_bytes(&bytes), Some(event));
        assert_eq!(FlowEvent::from_bytes(&bytes[..63]), None);
        assert_eq!(FlowEvent::from_bytes(&[0u8; 65]), None);
        assert_eq!(FlowEvent::from_bytes(&[]), None);
    }

    #[test]
    fn flow_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<FlowEvent>(), 64);
        assert_eq!(core::mem::size_of::<FlowKey>(), 44);
        assert_eq!(core::mem::size_of::<FlowCounters>(), 40);
        assert_eq!(core::mem::size_of::<FlowConfig>(), 8);
    }
}
