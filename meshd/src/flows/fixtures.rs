//! Flow lines for the tests of the flows modules (filter, render, merge).

use super::record::*;

/// A TCP flow at `secs` seconds after 2026-12-06T10:00:00Z, from pod `shop/web-1`
/// (10.244.1.2:40000) to pod `shop/db-0` (10.244.2.3:5432), seen on `n1`.
pub(crate) fn flow_at(secs: i64, verdict: Verdict, reason: Reason) -> FlowsResponse {
    let time = at(secs);
    FlowsResponse {
        item: ResponseItem::Flow(Box::new(Flow {
            time,
            verdict,
            reason,
            drop_reason_desc: reason.drop_reason_desc().map(str::to_string),
            event: if verdict == Verdict::Dropped {
                EventKind::Drop
            } else {
                EventKind::FirstPacket
            },
            ip: IpHeader {
                source: "10.244.1.2".parse().expect("ip"),
                destination: "10.244.2.3".parse().expect("ip"),
                ip_version: IpVersion::IPv4,
            },
            l4: Some(L4::Tcp(Ports {
                source_port: 40000,
                destination_port: 5432,
            })),
            source: Some(endpoint("shop", "web-1", "n1")),
            destination: Some(endpoint("shop", "db-0", "n2")),
            peer_node: None,
            interface: Interface {
                index: 7,
                name: "msh1234".into(),
            },
            traffic_direction: TrafficDirection::Egress,
            trace_observation_point: ObservationPoint::FromEndpoint,
            egress_denied_by: vec![],
            ingress_denied_by: vec![],
            packets: 1,
            bytes: 60,
        })),
        node_name: "n1".into(),
        time,
    }
}

/// A lost-events notice at `secs`.
pub(crate) fn lost_at(secs: i64, n: u64) -> FlowsResponse {
    FlowsResponse {
        item: ResponseItem::LostEvents(LostEvents {
            source: LostEventsSource::RingBuffer,
            num_events_lost: n,
        }),
        node_name: "n1".into(),
        time: at(secs),
    }
}

/// 2026-12-06T10:00:00Z plus `secs`.
pub(crate) fn at(secs: i64) -> jiff::Timestamp {
    let base: jiff::Timestamp = "2026-12-06T10:00:00Z".parse().expect("time");
    base.checked_add(jiff::SignedDuration::from_secs(secs))
        .expect("time in range")
}

/// A pod endpoint.
pub(crate) fn endpoint(ns: &str, pod: &str, node: &str) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        pod_name: pod.into(),
        node_name: Some(node.into()),
        labels: vec![],
    }
}

/// The flow inside a line (panics on a lost-events line).
pub(crate) fn flow_mut(line: &mut FlowsResponse) -> &mut Flow {
    match &mut line.item {
        ResponseItem::Flow(f) => f,
        ResponseItem::LostEvents(_) => panic!("not a flow"),
    }
}
