//! The table's rows, golden-ish, and `-o json`'s lines.

use super::*;
use crate::flows::fixtures::{flow_at, flow_mut, lost_at};
use crate::flows::record::{Icmp, IpVersion, PolicyRef, Reason};

#[test]
fn a_policy_drop_names_pods_ports_verdict_reason_and_the_policy() {
    let mut line = flow_at(0, Verdict::Dropped, Reason::PolicyDenied);
    flow_mut(&mut line).egress_denied_by = vec![PolicyRef {
        namespace: "shop".into(),
        name: "deny-db".into(),
        kind: "NetworkPolicy".into(),
    }];
    assert_eq!(
        table_line(&line),
        "Dec 06 10:00:00.000 n1       shop/web-1:40000               shop/db-0:5432                 \
         TCP     DROPPED   policy-denied  egress denied by shop/deny-db"
    );
}

#[test]
fn the_header_lines_up_with_the_rows() {
    let row = table_line(&flow_at(0, Verdict::Forwarded, Reason::ToTunnel));
    let head = header();
    for col in [
        "NODE",
        "SOURCE",
        "DESTINATION",
        "PROTO",
        "VERDICT",
        "REASON",
    ] {
        let at = head.find(col).expect(col);
        assert_eq!(
            &row[at - 1..at],
            " ",
            "{col} starts a column:\n{head}\n{row}"
        );
        assert_ne!(&row[at..=at], " ", "{col} has a value:\n{head}\n{row}");
    }
}

#[test]
fn addresses_stand_in_for_unknown_pods_and_aggregates_show_counts() {
    let mut line = flow_at(1, Verdict::Forwarded, Reason::ToTunnel);
    let f = flow_mut(&mut line);
    f.source = None;
    f.destination = None;
    f.ip.source = "fd00:244:0:1::2".parse().expect("ip");
    f.ip.destination = "fd00:244:0:2::3".parse().expect("ip");
    f.ip.ip_version = IpVersion::IPv6;
    f.peer_node = Some("n2".into());
    f.event = EventKind::Aggregate;
    f.packets = 12;
    f.bytes = 9000;
    let row = table_line(&line);
    assert!(row.contains("[fd00:244:0:1::2]:40000"), "{row}");
    assert!(row.contains("[fd00:244:0:2::3]:5432"), "{row}");
    assert!(
        row.ends_with("FORWARDED to-tunnel      to node n2; 12 packets 9000 bytes"),
        "{row}"
    );
}

#[test]
fn icmp_shows_type_and_code_without_ports() {
    let mut line = flow_at(2, Verdict::Dropped, Reason::StrictMode);
    let f = flow_mut(&mut line);
    f.l4 = Some(L4::IcmpV4(Icmp { kind: 8, code: 0 }));
    f.destination = None;
    let row = table_line(&line);
    assert!(row.contains(" shop/web-1 "), "{row}");
    assert!(row.contains(" 10.244.2.3 "), "{row}");
    assert!(
        row.ends_with("ICMPv4  DROPPED   strict-mode    egress; type 8 code 0"),
        "{row}"
    );
}

#[test]
fn lost_events_are_a_line_of_their_own() {
    assert_eq!(
        table_line(&lost_at(3, 42)),
        "Dec 06 10:00:03.000 n1       EVENTS LOST: 42 (the datapath's ring buffer was full)"
    );
}

#[test]
fn json_lines_are_the_stream_lines_unchanged() {
    for line in [
        flow_at(0, Verdict::Dropped, Reason::SpoofedSource),
        lost_at(1, 7),
    ] {
        let text = json_line(&line);
        assert!(!text.contains('\n'));
        assert_eq!(text, serde_json::to_string(&line).expect("json"));
        let back: FlowsResponse = serde_json::from_str(&text).expect("parses back");
        assert_eq!(back, line);
    }
}
