//! The flow record's JSON: Hubble's field names where the meaning is the same, and round trips.

use super::*;

fn policy_drop() -> FlowsResponse {
    let time: Timestamp = "2026-12-06T10:00:00.5Z".parse().expect("time");
    FlowsResponse {
        item: ResponseItem::Flow(Box::new(Flow {
            time,
            verdict: Verdict::Dropped,
            reason: Reason::PolicyDenied,
            drop_reason_desc: Reason::PolicyDenied.drop_reason_desc().map(str::to_string),
            event: EventKind::Drop,
            ip: IpHeader {
                source: "10.1.0.5".parse().expect("ip"),
                destination: "10.2.0.7".parse().expect("ip"),
                ip_version: IpVersion::IPv4,
            },
            l4: Some(L4::Tcp(Ports {
                source_port: 40000,
                destination_port: 80,
            })),
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "web-1".into(),
                node_name: Some("n1".into()),
                labels: vec!["app=web".into()],
            }),
            destination: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "db-0".into(),
                node_name: Some("n2".into()),
                labels: vec![],
            }),
            peer_node: None,
            interface: Interface {
                index: 12,
                name: "mshabc".into(),
            },
            traffic_direction: TrafficDirection::Egress,
            trace_observation_point: ObservationPoint::FromEndpoint,
            egress_denied_by: vec![PolicyRef {
                namespace: "shop".into(),
                name: "deny-db".into(),
                kind: "NetworkPolicy".into(),
            }],
            ingress_denied_by: vec![],
            packets: 1,
            bytes: 60,
        })),
        node_name: "n1".into(),
        time,
    }
}

#[test]
fn a_policy_drop_has_hubbles_field_names() {
    let json = serde_json::to_value(policy_drop()).expect("json");
    assert_eq!(json["node_name"], "n1");
    assert_eq!(json["time"], "2026-12-06T10:00:00.5Z");
    let flow = &json["flow"];
    assert_eq!(flow["verdict"], "DROPPED");
    assert_eq!(flow["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(flow["reason"], "policy-denied");
    assert_eq!(flow["event"], "drop");
    assert_eq!(flow["IP"]["source"], "10.1.0.5");
    assert_eq!(flow["IP"]["ipVersion"], "IPv4");
    assert_eq!(flow["l4"]["TCP"]["destination_port"], 80);
    assert_eq!(flow["source"]["pod_name"], "web-1");
    assert_eq!(flow["traffic_direction"], "EGRESS");
    assert_eq!(flow["trace_observation_point"], "FROM_ENDPOINT");
    assert_eq!(flow["egress_denied_by"][0]["name"], "deny-db");
    assert!(
        flow.get("ingress_denied_by").is_none(),
        "empty lists are left out"
    );
    assert!(flow.get("peer_node").is_none());
}

#[test]
fn stream_lines_round_trip() {
    let lost = FlowsResponse {
        item: ResponseItem::LostEvents(LostEvents {
            source: LostEventsSource::RingBuffer,
            num_events_lost: 3,
        }),
        node_name: "n2".into(),
        time: "2026-12-06T10:00:01Z".parse().expect("time"),
    };
    for line in [policy_drop(), lost] {
        let text = serde_json::to_string(&line).expect("json");
        assert!(!text.contains('\n'), "one object per line");
        let back: FlowsResponse = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, line);
    }
    let lost: serde_json::Value = serde_json::from_str(
        r#"{"lost_events":{"source":"OBSERVER_QUEUE","num_events_lost":9},"node_name":"n1","time":"2026-12-06T10:00:00Z"}"#,
    )
    .expect("json");
    let parsed: FlowsResponse = serde_json::from_value(lost).expect("a lost-events line");
    assert!(matches!(
        parsed.item,
        ResponseItem::LostEvents(LostEvents {
            source: LostEventsSource::ObserverQueue,
            num_events_lost: 9
        })
    ));
}

#[test]
fn l4_names_its_protocol() {
    let other: L4 = serde_json::from_str(r#"{"other":{"protocol":132}}"#).expect("json");
    assert_eq!(other.protocol(), 132);
    assert_eq!(other.ports(), None);
    let icmp: L4 = serde_json::from_str(r#"{"ICMPv6":{"type":128,"code":0}}"#).expect("json");
    assert_eq!(icmp.protocol(), 58);
    assert_eq!(Reason::WouldDrop.drop_reason_desc(), None);
}
