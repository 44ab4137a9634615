//! The filter's flags, their errors, and what passes.

use proptest::prelude::*;

use super::*;
use crate::flows::fixtures::{at, endpoint, flow_at, flow_mut, lost_at};
use crate::flows::record::{Ports, L4};

fn filter(flags: FilterFlags) -> FlowFilter {
    FlowFilter::from_flags(&flags, at(600)).expect("valid flags")
}

fn error(flags: FilterFlags) -> String {
    FlowFilter::from_flags(&flags, at(600))
        .expect_err("invalid flags")
        .to_string()
}

#[test]
fn bad_values_are_refused_naming_the_flag_and_the_value() {
    let cases = [
        (
            FilterFlags {
                pod: vec!["a/b/c".into()],
                ..Default::default()
            },
            "--pod \"a/b/c\": expected NAMESPACE/NAME",
        ),
        (
            FilterFlags {
                verdict: Some("denied".into()),
                ..Default::default()
            },
            "--verdict \"denied\": expected forwarded, dropped or audit",
        ),
        (
            FilterFlags {
                reason: Some("policy".into()),
                ..Default::default()
            },
            "--reason \"policy\": expected one of to-tunnel, local-delivery, policy-denied",
        ),
        (
            FilterFlags {
                port: Some("70000".into()),
                ..Default::default()
            },
            "--port \"70000\"",
        ),
        (
            FilterFlags {
                protocol: Some("quic".into()),
                ..Default::default()
            },
            "--protocol \"quic\"",
        ),
        (
            FilterFlags {
                since: Some("yesterday".into()),
                ..Default::default()
            },
            "--since \"yesterday\"",
        ),
        (
            FilterFlags {
                last: Some("-1".into()),
                ..Default::default()
            },
            "--last \"-1\"",
        ),
        (
            FilterFlags {
                from: Some("10.0.0.300".into()),
                ..Default::default()
            },
            "--from \"10.0.0.300\": expected a pod NAMESPACE/NAME, an IP address or a CIDR",
        ),
        (
            FilterFlags {
                to: Some("web".into()),
                ..Default::default()
            },
            "--to \"web\"",
        ),
        (
            FilterFlags {
                namespace: vec!["a/b".into()],
                ..Default::default()
            },
            "--namespace \"a/b\"",
        ),
    ];
    for (flags, want) in cases {
        let got = error(flags);
        assert!(got.starts_with(want), "{got}");
    }
}

#[test]
fn pod_and_namespace_match_either_end() {
    let line = flow_at(0, Verdict::Forwarded, Reason::ToTunnel);
    for pod in ["shop/web-1", "shop/db-0"] {
        assert!(filter(FilterFlags {
            pod: vec![pod.into()],
            ..Default::default()
        })
        .matches(&line));
    }
    assert!(!filter(FilterFlags {
        pod: vec!["shop/web-2".into()],
        ..Default::default()
    })
    .matches(&line));
    assert!(
        !filter(FilterFlags {
            pod: vec!["web-1".into()],
            ..Default::default()
        })
        .matches(&line),
        "NAME alone is in namespace default"
    );
    assert!(filter(FilterFlags {
        namespace: vec!["other".into(), "shop".into()],
        ..Default::default()
    })
    .matches(&line));
    assert!(!filter(FilterFlags {
        namespace: vec!["other".into()],
        ..Default::default()
    })
    .matches(&line));
}

#[test]
fn from_and_to_match_their_own_end_by_pod_ip_or_cidr() {
    let line = flow_at(0, Verdict::Forwarded, Reason::ToTunnel);
    let passes = |from: Option<&str>, to: Option<&str>| {
        filter(FilterFlags {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            ..Default::default()
        })
        .matches(&line)
    };
    assert!(passes(Some("shop/web-1"), Some("shop/db-0")));
    assert!(
        !passes(Some("shop/db-0"), None),
        "the destination is not the source"
    );
    assert!(passes(Some("10.244.1.2"), Some("10.244.2.0/24")));
    assert!(!passes(Some("10.244.2.0/24"), None));
    assert!(!passes(None, Some("fd00::/8")));
    assert!(passes(None, Some("10.0.0.0/8")));
}

#[test]
fn verdict_reason_port_and_protocol_select() {
    let drop = flow_at(0, Verdict::Dropped, Reason::PolicyDenied);
    let fwd = flow_at(0, Verdict::Forwarded, Reason::ToTunnel);
    let f = filter(FilterFlags {
        verdict: Some("DROPPED".into()),
        reason: Some("policy-denied".into()),
        ..Default::default()
    });
    assert!(f.matches(&drop));
    assert!(!f.matches(&fwd));
    for (port, want) in [("40000", true), ("5432", true), ("80", false)] {
        assert_eq!(
            filter(FilterFlags {
                port: Some(port.into()),
                ..Default::default()
            })
            .matches(&fwd),
            want,
            "port {port}"
        );
    }
    for (proto, want) in [("tcp", true), ("6", true), ("udp", false), ("icmp", false)] {
        assert_eq!(
            filter(FilterFlags {
                protocol: Some(proto.into()),
                ..Default::default()
            })
            .matches(&fwd),
            want,
            "protocol {proto}"
        );
    }
    let mut ping = fwd.clone();
    flow_mut(&mut ping).l4 = Some(L4::IcmpV6(crate::flows::record::Icmp {
        kind: 128,
        code: 0,
    }));
    assert!(filter(FilterFlags {
        protocol: Some("icmp".into()),
        ..Default::default()
    })
    .matches(&ping));
    assert!(
        !filter(FilterFlags {
            port: Some("0".into()),
            ..Default::default()
        })
        .matches(&ping),
        "ICMP has no ports"
    );
    let mut udp = fwd;
    flow_mut(&mut udp).l4 = Some(L4::Udp(Ports {
        source_port: 53,
        destination_port: 53,
    }));
    assert!(filter(FilterFlags {
        protocol: Some("UDP".into()),
        port: Some("53".into()),
        ..Default::default()
    })
    .matches(&udp));
}

#[test]
fn since_takes_a_duration_back_from_now_or_a_time() {
    // now is at(600).
    let f = filter(FilterFlags {
        since: Some("5m".into()),
        ..Default::default()
    });
    assert_eq!(f.since, Some(at(300)));
    assert!(f.matches(&flow_at(300, Verdict::Forwarded, Reason::ToTunnel)));
    assert!(!f.matches(&flow_at(299, Verdict::Forwarded, Reason::ToTunnel)));
    let f = filter(FilterFlags {
        since: Some("2026-12-06T10:01:00Z".into()),
        ..Default::default()
    });
    assert_eq!(f.since, Some(at(60)));
}

#[test]
fn lost_events_pass_every_filter() {
    let f = filter(FilterFlags {
        pod: vec!["x/y".into()],
        verdict: Some("audit".into()),
        since: Some("1s".into()),
        ..Default::default()
    });
    assert!(f.matches(&lost_at(0, 3)));
}

#[test]
fn last_keeps_the_newest_matching_flows_and_every_loss_in_order() {
    let lines = vec![
        flow_at(1, Verdict::Dropped, Reason::PolicyDenied),
        lost_at(2, 5),
        flow_at(3, Verdict::Forwarded, Reason::ToTunnel),
        flow_at(4, Verdict::Dropped, Reason::StrictMode),
        flow_at(5, Verdict::Dropped, Reason::SpoofedSource),
    ];
    let got = filter(FilterFlags {
        verdict: Some("dropped".into()),
        last: Some("2".into()),
        ..Default::default()
    })
    .apply(lines.clone());
    assert_eq!(
        got,
        vec![lines[1].clone(), lines[3].clone(), lines[4].clone()]
    );
    let none = filter(FilterFlags {
        last: Some("0".into()),
        ..Default::default()
    })
    .apply(lines.clone());
    assert_eq!(none, vec![lines[1].clone()]);
}

#[test]
fn a_flow_without_pods_matches_no_pod_filter() {
    let mut line = flow_at(0, Verdict::Dropped, Reason::StrictMode);
    flow_mut(&mut line).source = None;
    flow_mut(&mut line).destination = Some(endpoint("kube-system", "dns", "n2"));
    assert!(!filter(FilterFlags {
        from: Some("shop/web-1".into()),
        ..Default::default()
    })
    .matches(&line));
    assert!(filter(FilterFlags {
        namespace: vec!["kube-system".into()],
        ..Default::default()
    })
    .matches(&line));
}

/// A line: a lost-events notice or a flow with a varied verdict, reason, port and time.
fn any_line() -> impl Strategy<Value = FlowsResponse> {
    (0i64..1000, 0usize..6, 0u8..3, any::<bool>(), any::<u16>()).prop_map(
        |(secs, reason, verdict, lost, port)| {
            if lost {
                return lost_at(secs, 1);
            }
            let verdict = [Verdict::Forwarded, Verdict::Dropped, Verdict::Audit][verdict as usize];
            let mut line = flow_at(secs, verdict, REASONS[reason]);
            flow_mut(&mut line).l4 = Some(L4::Udp(Ports {
                source_port: port,
                destination_port: 53,
            }));
            line
        },
    )
}

fn any_flags() -> impl Strategy<Value = FilterFlags> {
    (
        proptest::option::of(prop_oneof![
            Just("forwarded"),
            Just("dropped"),
            Just("audit")
        ]),
        proptest::option::of(0usize..6),
        proptest::option::of(any::<u16>()),
        proptest::option::of(0usize..8),
        proptest::option::of(1u64..900),
    )
        .prop_map(|(verdict, reason, port, last, since)| FilterFlags {
            verdict: verdict.map(str::to_string),
            reason: reason.map(|r| reason_name(REASONS[r]).to_string()),
            port: port.map(|p| p.to_string()),
            last: last.map(|n| n.to_string()),
            since: since.map(|s| format!("{s}s")),
            ..Default::default()
        })
}

proptest! {
    #[test]
    fn a_filter_never_drops_lost_events(
        lines in proptest::collection::vec(any_line(), 0..60),
        flags in any_flags(),
    ) {
        let f = filter(flags);
        let lost = |ls: &[FlowsResponse]| {
            ls.iter().filter(|l| matches!(l.item, ResponseItem::LostEvents(_))).count()
        };
        let out = f.apply(lines.clone());
        prop_assert_eq!(lost(&out), lost(&lines));
    }

    #[test]
    fn last_returns_at_most_n_flows_the_newest_matching_in_order(
        lines in proptest::collection::vec(any_line(), 0..60),
        flags in any_flags(),
    ) {
        let f = filter(flags);
        let flows: Vec<FlowsResponse> = lines
            .iter()
            .filter(|l| matches!(l.item, ResponseItem::Flow(_)) && f.matches(l))
            .cloned()
            .collect();
        let out: Vec<FlowsResponse> = f
            .apply(lines)
            .into_iter()
            .filter(|l| matches!(l.item, ResponseItem::Flow(_)))
            .collect();
        let n = f.last.unwrap_or(usize::MAX).min(flows.len());
        prop_assert_eq!(&out[..], &flows[flows.len() - n..]);
    }
}
