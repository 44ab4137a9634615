//! The audit's unit tests: every check, the findings' wording and the bounded table, on
//! views built by hand (no mesh).
#![allow(clippy::unwrap_used)]
use super::*;
use crate::control::PeerReport;

const NOW: u64 = 1_800_000_000;

fn node(i: u32, key: &str, peers: Vec<PeerReport>) -> NodeView {
    let mut s = crate::control::tests_support::sample();
    s.node = format!("n{i}");
    s.public_key = key.into();
    s.peers = peers;
    s.key_created_unix = Some(NOW - 3600);
    if let Some(d) = s.datapath.as_mut() {
        d.counters = Default::default();
    }
    NodeView {
        name: format!("n{i}"),
        published_key: Some(key.into()),
        endpoints: vec![format!("198.18.0.1{i}").parse().unwrap()],
        pod_cidrs: vec![format!("10.244.{i}.0/24")],
        status: Some(s),
        status_error: None,
    }
}

fn key(i: u8) -> String {
    keyexchange::PrivateKey::from_bytes([i; 32])
        .public_key()
        .to_string()
}

fn peer(i: u32, k: &str) -> PeerReport {
    PeerReport {
        name: Some(format!("n{i}")),
        public_key: k.into(),
        endpoint: Some(format!("198.18.0.1{i}:51820")),
        allowed_ips: vec![format!("10.244.{i}.0/24"), format!("198.18.0.1{i}/32")],
        last_handshake_unix: Some(NOW - 5),
        last_handshake_secs_ago: Some(5),
        rx_bytes: 10,
        tx_bytes: 10,
    }
}

fn healthy() -> Vec<NodeView> {
    let (k1, k2) = (key(1), key(2));
    vec![
        node(1, &k1, vec![peer(2, &k2)]),
        node(2, &k2, vec![peer(1, &k1)]),
    ]
}

fn failed(r: &Report) -> Vec<(String, String)> {
    r.findings
        .iter()
        .filter(|f| !f.ok)
        .map(|f| (f.check.clone(), f.subject.clone()))
        .collect()
}

#[test]
fn a_healthy_mesh_passes_every_check() {
    let r = audit(&healthy(), &Policy::default(), NOW);
    assert_eq!(failed(&r), vec![], "{}", table(&r));
    assert_eq!((r.verdict.as_str(), r.exit_code()), ("pass", 0));
    // 6 node checks × 2, a peer and a handshake check per ordered pair, 3 settings.
    assert_eq!(r.findings.len(), 12 + 4 + 3);
}

#[test]
fn cleartext_is_a_finding_only_within_the_window() {
    use crate::control::CleartextReport;
    let hour = Duration::from_secs(3600);
    let at = |last: Option<u64>, since: Option<u64>| CleartextReport {
        watched_since_unix: since,
        last_unix: last,
    };
    let cases = [
        // (strict drops, would-drops, report, window, passes)
        (0, 0, at(None, None), hour, true),
        (3, 0, at(Some(NOW - 600), Some(NOW - 86400)), hour, false),
        (3, 0, at(Some(NOW - 7200), Some(NOW - 86400)), hour, true),
        (
            0,
            2,
            at(Some(NOW - 7200), Some(NOW - 86400)),
            Duration::ZERO,
            false,
        ),
        // Counted before this meshd started watching: only as recent as that start.
        (3, 0, at(None, Some(NOW - 600)), hour, false),
        (3, 0, at(None, Some(NOW - 7200)), hour, true),
        // An older meshd that does not say when.
        (3, 0, at(None, None), hour, false),
    ];
    for (i, (drops, would, report, window, passes)) in cases.into_iter().enumerate() {
        let mut nodes = healthy();
        let s1 = nodes[0].status.as_mut().unwrap();
        s1.cleartext = report;
        let c = &mut s1.datapath.as_mut().unwrap().counters;
        (c.strict_drops, c.would_drops) = (drops, would);
        let policy = Policy {
            plaintext_window: window,
            ..Policy::default()
        };
        let r = audit(&nodes, &policy, NOW);
        let f = r
            .findings
            .iter()
            .find(|f| f.check == "plaintext" && f.subject == "n1")
            .unwrap();
        assert_eq!(f.ok, passes, "case {i}: {f:?}");
    }
}

#[test]
fn the_cleartext_watch_notes_when_the_counters_grow() {
    use crate::control::CleartextReport;
    let mut r = CleartextReport::watching_from(100);
    let mut last = None;
    r.observe(&mut last, 5, 110);
    assert_eq!(r.last_unix, None, "counted before the watch began");
    r.observe(&mut last, 5, 120);
    assert_eq!(r.last_unix, None);
    r.observe(&mut last, 6, 130);
    assert_eq!(r.last_unix, Some(130));
    r.observe(&mut last, 6, 140);
    assert_eq!(r.last_unix, Some(130));
    // Maps recreated: a lower sum is the new baseline, not cleartext.
    r.observe(&mut last, 0, 150);
    assert_eq!((r.last_unix, last), (Some(130), Some(0)));
    r.observe(&mut last, 1, 160);
    assert_eq!(r.last_unix, Some(160));
    assert_eq!(r.watched_since_unix, Some(100));
}

#[test]
fn the_second_key_slot_is_checked_per_pair() {
    let mut nodes = healthy();
    let second = |i: u32, peer_i: u32, peer_key: &str| crate::control::SlotReport {
        interface: "meshd0b".into(),
        ifindex: 9,
        public_key: key(10 + i as u8),
        listen_port: 51821,
        peers: vec![PeerReport {
            endpoint: Some(format!("198.18.0.1{peer_i}:51821")),
            ..peer(peer_i, peer_key)
        }],
    };
    nodes[0].status.as_mut().unwrap().second = Some(second(1, 2, &key(12)));
    nodes[1].status.as_mut().unwrap().second = Some(second(2, 1, &key(11)));
    let r = audit(&nodes, &Policy::default(), NOW);
    assert_eq!(failed(&r), vec![], "{}", table(&r));
    assert_eq!(
        r.findings
            .iter()
            .filter(|f| f.check == "peer-slot-1")
            .count(),
        2
    );
    // n1's second device holds a stale key for n2.
    nodes[0].status.as_mut().unwrap().second = Some(second(1, 2, &key(99)));
    let r = audit(&nodes, &Policy::default(), NOW);
    assert_eq!(
        failed(&r),
        vec![("peer-slot-1".to_string(), "n1->n2".to_string())]
    );
}

#[test]
fn each_problem_is_a_finding_naming_the_node_or_pair() {
    let mut nodes = healthy();
    // n1: permissive, a strict drop, a stale key; its peer n2 has the wrong CIDRs.
    let s1 = nodes[0].status.as_mut().unwrap();
    s1.encryption = Encryption::Permissive;
    s1.key_created_unix = Some(NOW - 200 * 24 * 3600);
    s1.peers[0].allowed_ips = vec!["10.244.9.0/24".into()];
    s1.peers[0].last_handshake_secs_ago = Some(400);
    s1.datapath.as_mut().unwrap().counters.strict_drops = 3;
    // n2's device uses a key it has not published.
    nodes[1].status.as_mut().unwrap().public_key = key(7);
    let r = audit(&nodes, &Policy::default(), NOW);
    let f = failed(&r);
    for want in [
        ("encryption", "n1"),
        ("plaintext", "n1"),
        ("key-age", "n1"),
        ("key", "n2"),
        ("peer", "n1->n2"),
        ("handshake", "n1->n2"),
        ("settings", "cluster"),
    ] {
        assert!(
            f.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing: {f:?}"
        );
    }
    assert_eq!(r.exit_code(), 1);
    let t = table(&r);
    assert!(t.contains("FAIL") && t.contains("Fix:"), "{t}");
}

#[test]
fn settings_say_which_setting_and_which_node_holds_which_value() {
    let agree = [("n1", "51820".to_string()), ("n2", "51820".to_string())];
    assert_eq!(setting_seen("listen port", &agree), "listen port 51820");
    assert_eq!(setting_seen("mtu", &[("n1", "1420".into())]), "mtu 1420");
    let differ = [
        ("n1", "enabled".to_string()),
        ("n2", "permissive".to_string()),
        ("n3", "enabled".to_string()),
    ];
    assert_eq!(
        setting_seen("encryption", &differ),
        "encryption enabled on n1, n3; permissive on n2"
    );
    assert_eq!(setting_seen("mtu", &[]), "no node reported its mtu");
    // In the audit's table, for a healthy cluster and for one that disagrees.
    let mut nodes = healthy();
    let t = table(&audit(&nodes, &Policy::default(), NOW));
    for line in ["listen port 51820", "mtu 1420", "encryption enabled"] {
        assert!(
            t.lines()
                .any(|l| l.starts_with("settings") && l.ends_with(line)),
            "{line:?} missing:\n{t}"
        );
    }
    assert!(!t.contains("{\""), "no debug-printed sets:\n{t}");
    nodes[1].status.as_mut().unwrap().mtu = 1380;
    let t = table(&audit(&nodes, &Policy::default(), NOW));
    assert!(
        t.contains("expected one mtu on every node; saw mtu 1380 on n2; 1420 on n1."),
        "{t}"
    );
}

#[test]
fn an_unreachable_node_is_a_finding_and_nothing_readable_cannot_be_audited() {
    let mut nodes = healthy();
    nodes[1].status = None;
    nodes[1].status_error = Some("connection refused".into());
    let r = audit(&nodes, &Policy::default(), NOW);
    assert!(failed(&r).contains(&("status".into(), "n2".into())));
    assert_eq!(r.exit_code(), 1);
    nodes[0].status = None;
    assert_eq!(audit(&nodes, &Policy::default(), NOW).exit_code(), 2);
    assert_eq!(audit(&[], &Policy::default(), NOW).exit_code(), 2);
}

#[test]
fn thousands_of_findings_print_counts_and_the_failed_ones_first() {
    let finding = |i: usize, ok: bool| Finding {
        check: if i.is_multiple_of(2) {
            "peer"
        } else {
            "handshake"
        }
        .into(),
        subject: format!("n{i}"),
        ok,
        expected: "x".into(),
        seen: "y".into(),
        fix: "z".into(),
    };
    let r = Report {
        verdict: "fail".into(),
        nodes: 5000,
        findings: (0..5000).map(|i| finding(i, i % 1000 != 999)).collect(),
    };
    let t = table_bounded(&r, Some(20));
    assert!(t.contains("handshake       2495        5\n"), "{t}");
    assert!(t.contains("peer            2500        0\n"), "{t}");
    let rows: Vec<&str> = t
        .lines()
        .filter(|l| l.contains(" n") && !l.starts_with("verdict"))
        .collect();
    assert_eq!(rows.len(), 20, "{t}");
    assert!(rows[..5].iter().all(|l| l.contains("FAIL")), "{t}");
    assert!(t.contains("... and 4980 more findings (--all lists every one)"));
    assert!(
        t.ends_with("verdict: fail (5000 nodes, 5000 checks, 5 failed)\n"),
        "{t}"
    );
    assert_eq!(table(&r).lines().count(), 5002);
}
