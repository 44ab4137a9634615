//! Decoding the datapath's flow records, pure: a ring-buffer record (bytes) or a flow-table
//! entry becomes a [`DatapathEvent`] with meshd's types. Bad bytes (a short or long record, an
//! unknown kind, verdict, reason, family or observation point) are a [`DecodeError`] naming the
//! field: the reader counts and skips that record, never more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ebpf_redirect::flows::abi::{
    self, FlowCounters, FlowEvent, FlowKey, FLOW_EVENT_SIZE, FLOW_FAMILY_UNKNOWN,
};

use super::record::{
    EventKind, Icmp, IpVersion, ObservationPoint, Ports, Reason, TrafficDirection, Verdict, L4,
};

/// Family codes of the datapath (`CT_FAMILY_*`).
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;
/// `DIRECTION_INGRESS` / `DIRECTION_EGRESS` of the policy maps.
const POLICY_INGRESS: u8 = 0;
const POLICY_EGRESS: u8 = 1;

/// One thing the datapath saw, decoded but not yet enriched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathEvent {
    /// Monotonic nanoseconds since boot (`bpf_ktime_get_ns`).
    pub time_ns: u64,
    /// What it stands for.
    pub kind: EventKind,
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// Source address (`0.0.0.0` when the frame was too short to show it).
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// Family.
    pub ip_version: IpVersion,
    /// Transport header.
    pub l4: Option<L4>,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// Which program saw it.
    pub point: ObservationPoint,
    /// For a policy drop: the direction of the policy that refused it.
    pub policy_direction: Option<TrafficDirection>,
    /// Packets it stands for.
    pub packets: u64,
    /// Bytes (from the IP header on) it stands for.
    pub bytes: u64,
}

/// Why a record was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is not one event long.
    #[error("flow record of {0} bytes, expected {FLOW_EVENT_SIZE}")]
    Size(usize),
    /// A field holds a value this meshd does not know.
    #[error("flow record field {field} holds unknown value {value}")]
    Unknown {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u8,
    },
}

fn unknown(field: &'static str, value: u8) -> DecodeError {
    DecodeError::Unknown { field, value }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<DatapathEvent, DecodeError> {
    let raw = FlowEvent::from_bytes(bytes).ok_or(DecodeError::Size(bytes.len()))?;
    let kind = match raw.kind {
        abi::FLOW_KIND_DROP => EventKind::Drop,
        abi::FLOW_KIND_FIRST_PACKET => EventKind::FirstPacket,
        other => return Err(unknown("kind", other)),
    };
    let (source, destination, ip_version) = addresses(raw.family, &raw.src, &raw.dst)?;
    let policy_direction = match (raw.reason, raw.policy_direction) {
        (abi::FLOW_REASON_POLICY_DENIED, POLICY_INGRESS) => Some(TrafficDirection::Ingress),
        (abi::FLOW_REASON_POLICY_DENIED, POLICY_EGRESS) => Some(TrafficDirection::Egress),
        (abi::FLOW_REASON_POLICY_DENIED, other) => return Err(unknown("policy_direction", other)),
        _ => None,
    };
    let l4 = if raw.family == FLOW_FAMILY_UNKNOWN {
        None
    } else {
        Some(l4_of(
            raw.protocol,
            raw.src_port,
            raw.dst_port,
            [raw.icmp_type, raw.icmp_code],
        ))
    };
    Ok(DatapathEvent {
        time_ns: raw.time_ns,
        kind,
        verdict: verdict(raw.verdict)?,
        reason: reason(raw.reason)?,
        source,
        destination,
        ip_version,
        l4,
        ifindex: raw.ifindex,
        point: point(raw.point)?,
        policy_direction,
        packets: 1,
        bytes: u64::from(raw.ip_len),
    })
}

/// The aggregate of a forwarded flow: `packets` and `bytes` since its last report, at
/// `counters.last_ns`.
pub fn aggregate(
    key: &FlowKey,
    counters: &FlowCounters,
    packets: u64,
    bytes: u64,
) -> Result<DatapathEvent, DecodeError> {
    let (source, destination, ip_version) = addresses(key.family, &key.src, &key.dst)?;
    let ports = (
        u16::from_be_bytes(key.src_port),
        u16::from_be_bytes(key.dst_port),
    );
    Ok(DatapathEvent {
        time_ns: counters.last_ns,
        kind: EventKind::Aggregate,
        verdict: verdict(counters.verdict)?,
        reason: reason(counters.reason)?,
        source,
        destination,
        ip_version,
        l4: Some(l4_of(
            key.protocol,
            ports.0,
            ports.1,
            [counters.icmp_type, counters.icmp_code],
        )),
        ifindex: key.ifindex,
        point: point(key.point)?,
        policy_direction: None,
        packets,
        bytes,
    })
}

fn addresses(
    family: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Result<(IpAddr, IpAddr, IpVersion), DecodeError> {
    let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    match family {
        FAMILY_V4 => Ok((v4(src), v4(dst), IpVersion::IPv4)),
        FAMILY_V6 => Ok((
            IpAddr::V6(Ipv6Addr::from(*src)),
            IpAddr::V6(Ipv6Addr::from(*dst)),
            IpVersion::IPv6,
        )),
        FLOW_FAMILY_UNKNOWN => {
            let none = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            Ok((none, none, IpVersion::IPv4))
        }
        other => Err(unknown("family", other)),
    }
}

fn l4_of(protocol: u8, source_port: u16, destination_port: u16, [kind, code]: [u8; 2]) -> L4 {
    let ports = Ports {
        source_port,
        destination_port,
    };
    match protocol {
        6 => L4::Tcp(ports),
        17 => L4::Udp(ports),
        132 => L4::Sctp(ports),
        1 => L4::IcmpV4(Icmp { kind, code }),
        58 => L4::IcmpV6(Icmp { kind, code }),
        protocol => L4::Other { protocol },
    }
}

fn verdict(v: u8) -> Result<Verdict, DecodeError> {
    match v {
        abi::FLOW_VERDICT_FORWARDED => Ok(Verdict::Forwarded),
        abi::FLOW_VERDICT_DROPPED => Ok(Verdict::Dropped),
        abi::FLOW_VERDICT_AUDIT => Ok(Verdict::Audit),
        other => Err(unknown("verdict", other)),
    }
}

fn reason(r: u8) -> Result<Reason, DecodeError> {
    match r {
        abi::FLOW_REASON_TO_TUNNEL => Ok(Reason::ToTunnel),
        abi::FLOW_REASON_LOCAL_DELIVERY => Ok(Reason::LocalDelivery),
        abi::FLOW_REASON_POLICY_DENIED => Ok(Reason::PolicyDenied),
        abi::FLOW_REASON_STRICT_MODE => Ok(Reason::StrictMode),
        abi::FLOW_REASON_SPOOFED_SOURCE => Ok(Reason::SpoofedSource),
        abi::FLOW_REASON_WOULD_DROP => Ok(Reason::WouldDrop),
        other => Err(unknown("reason", other)),
    }
}

fn point(p: u8) -> Result<ObservationPoint, DecodeError> {
    match p {
        abi::FLOW_POINT_FROM_POD => Ok(ObservationPoint::FromEndpoint),
        abi::FLOW_POINT_TO_POD => Ok(ObservationPoint::ToEndpoint),
        abi::FLOW_POINT_UNDERLAY => Ok(ObservationPoint::ToNetwork),
        other => Err(unknown("point", other)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn record(f: impl FnOnce(&mut [u8; FLOW_EVENT_SIZE])) -> [u8; FLOW_EVENT_SIZE] {
        let mut b = [0u8; FLOW_EVENT_SIZE];
        b[0..8].copy_from_slice(&5_000_000_000u64.to_ne_bytes());
        b[8..12].copy_from_slice(&[10, 244, 1, 5]);
        b[24..28].copy_from_slice(&[10, 244, 2, 7]);
        b[40..44].copy_from_slice(&12u32.to_ne_bytes());
        b[44..48].copy_from_slice(&60u32.to_ne_bytes());
        b[48..50].copy_from_slice(&40000u16.to_ne_bytes());
        b[50..52].copy_from_slice(&80u16.to_ne_bytes());
        // kind drop, verdict dropped, reason policy, family 4, TCP, to_pod, ingress.
        b[52..59].copy_from_slice(&[1, 1, 3, 4, 6, 1, 0]);
        f(&mut b);
        b
    }

    #[test]
    fn a_policy_drop_decodes_with_its_direction_and_ports() {
        let event = decode(&record(|_| {})).unwrap();
        assert_eq!(event.kind, EventKind::Drop);
        assert_eq!(
            (event.verdict, event.reason),
            (Verdict::Dropped, Reason::PolicyDenied)
        );
        assert_eq!(event.source, "10.244.1.5".parse::<IpAddr>().unwrap());
        assert_eq!(event.destination, "10.244.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(event.point, ObservationPoint::ToEndpoint);
        assert_eq!(event.policy_direction, Some(TrafficDirection::Ingress));
        assert_eq!(
            event.l4,
            Some(L4::Tcp(Ports {
                source_port: 40000,
                destination_port: 80
            }))
        );
        assert_eq!((event.packets, event.bytes, event.ifindex), (1, 60, 12));
    }

    #[test]
    fn icmp_and_v6_and_frames_too_short_to_parse() {
        let ping = decode(&record(|b| {
            b[52..61].copy_from_slice(&[2, 0, 1, 6, 58, 0, 0xff, 128, 0]);
            b[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        }))
        .unwrap();
        assert_eq!(ping.kind, EventKind::FirstPacket);
        assert_eq!(ping.ip_version, IpVersion::IPv6);
        assert_eq!(ping.source, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(ping.l4, Some(L4::IcmpV6(Icmp { kind: 128, code: 0 })));
        assert_eq!(ping.policy_direction, None);
        let short = decode(&record(|b| b[52..58].copy_from_slice(&[1, 1, 5, 0, 0, 0]))).unwrap();
        assert_eq!(short.reason, Reason::SpoofedSource);
        assert_eq!(short.l4, None);
        assert_eq!(short.source, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn hostile_records_are_refused_naming_the_field() {
        assert_eq!(decode(&[0u8; 63]), Err(DecodeError::Size(63)));
        assert_eq!(decode(&[]), Err(DecodeError::Size(0)));
        assert_eq!(decode(&[0u8; 65]), Err(DecodeError::Size(65)));
        for (offset, field) in [
            (52, "kind"),
            (53, "verdict"),
            (54, "reason"),
            (55, "family"),
            (57, "point"),
            (58, "policy_direction"),
        ] {
            let err = decode(&record(|b| b[offset] = 0x77)).unwrap_err();
            assert_eq!(err, unknown(field, 0x77), "{field}");
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn an_aggregate_carries_the_table_counts() {
        let key = FlowKey {
            ifindex: 3,
            family: 4,
            protocol: 17,
            point: 0,
            reserved: 0,
            src_port: 5353u16.to_be_bytes(),
            dst_port: 53u16.to_be_bytes(),
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let counters = FlowCounters {
            packets: 10,
            bytes: 1000,
            first_ns: 1,
            last_ns: 99,
            verdict: 0,
            reason: 1,
            ..Default::default()
        };
        let event = aggregate(&key, &counters, 4, 400).unwrap();
        assert_eq!(event.kind, EventKind::Aggregate);
        assert_eq!((event.packets, event.bytes, event.time_ns), (4, 400, 99));
        assert_eq!(event.reason, Reason::ToTunnel);
        assert_eq!(
            event.l4,
            Some(L4::Udp(Ports {
                source_port: 5353,
                destination_port: 53
            }))
        );
    }

    proptest! {
        /// Whatever the bytes, decoding answers (an event or an error), never panics, and a
        /// record of the wrong size is always refused.
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..130)) {
            let result = decode(&bytes);
            if bytes.len() != FLOW_EVENT_SIZE {
                prop_assert_eq!(result, Err(DecodeError::Size(bytes.len())));
            }
        }
    }
}
