//! The mesh graph's DOT: parsed back structurally, one edge per tunnel, bytes each way, styles.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::control::tests_support::sample;

fn peer(name: &str, ago: Option<u64>, rx: u64, tx: u64) -> PeerReport {
    PeerReport {
        name: Some(name.into()),
        public_key: format!("key-{name}"),
        endpoint: Some("198.18.0.12:51820".into()),
        allowed_ips: vec!["10.244.2.0/24".into()],
        last_handshake_unix: None,
        last_handshake_secs_ago: ago,
        rx_bytes: rx,
        tx_bytes: tx,
    }
}

fn report(node: &str, peers: Vec<PeerReport>) -> StatusReport {
    let mut r = sample();
    r.node = node.into();
    r.peers = peers;
    r
}

/// A DOT token: a quoted string (unescaped) or a bare word / punctuation.
#[derive(Debug, PartialEq)]
enum Token {
    Quoted(String),
    Bare(String),
}

fn tokens(dot: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = dot.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next().expect("a closed string") {
                        '"' => break,
                        '\\' => match chars.next().expect("an escape") {
                            'n' => s.push('\n'),
                            e => s.push(e),
                        },
                        c => s.push(c),
                    }
                }
                out.push(Token::Quoted(s));
            }
            '-' => {
                assert_eq!(chars.next(), Some('-'), "an undirected edge");
                out.push(Token::Bare("--".into()));
            }
            '{' | '}' | '[' | ']' | ';' | ',' | '=' => out.push(Token::Bare(c.to_string())),
            c => {
                let mut s = c.to_string();
                while chars
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    s.push(chars.next().expect("peeked"));
                }
                out.push(Token::Bare(s));
            }
        }
    }
    out
}

/// Nodes and edges (with their attributes) of a DOT graph, checking its grammar on the way.
#[derive(Debug, Default)]
struct Parsed {
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    edges: BTreeMap<(String, String), BTreeMap<String, String>>,
}

fn text(t: &Token) -> String {
    match t {
        Token::Quoted(s) | Token::Bare(s) => s.clone(),
    }
}

fn parse(dot: &str) -> Parsed {
    let ts = tokens(dot);
    assert_eq!(ts[0], Token::Bare("graph".into()));
    assert_eq!(ts[2], Token::Bare("{".into()));
    assert_eq!(ts.last(), Some(&Token::Bare("}".into())));
    let body = &ts[3..ts.len() - 1];
    let mut parsed = Parsed::default();
    for stmt in body.split(|t| *t == Token::Bare(";".into())) {
        if stmt.is_empty() {
            continue;
        }
        let open = stmt
            .iter()
            .position(|t| *t == Token::Bare("[".into()))
            .expect("attributes");
        assert_eq!(stmt.last(), Some(&Token::Bare("]".into())), "{stmt:?}");
        let mut attrs = BTreeMap::new();
        for pair in stmt[open + 1..stmt.len() - 1].split(|t| *t == Token::Bare(",".into())) {
            assert_eq!(pair.len(), 3, "key = value: {pair:?}");
            assert_eq!(pair[1], Token::Bare("=".into()));
            attrs.insert(text(&pair[0]), text(&pair[2]));
        }
        match &stmt[..open] {
            [Token::Bare(kw)] if kw == "node" => {}
            [Token::Quoted(id)] => {
                parsed.nodes.insert(id.clone(), attrs);
            }
            [Token::Quoted(a), Token::Bare(op), Token::Quoted(b)] if op == "--" => {
                assert!(
                    parsed.edges.insert((a.clone(), b.clone()), attrs).is_none(),
                    "one edge per tunnel"
                );
            }
            other => panic!("unexpected statement {other:?}"),
        }
    }
    parsed
}

#[test]
fn every_node_and_tunnel_appears_once_with_bytes_each_way() {
    let reports = vec![
        report(
            "n1",
            vec![peer("n2", Some(5), 1000, 2048), peer("n3", Some(900), 7, 8)],
        ),
        report(
            "n2",
            vec![peer("n1", Some(9), 2000, 1000), peer("n3", None, 0, 0)],
        ),
    ];
    let dot = mesh_dot(&reports);
    let g = parse(&dot);
    assert_eq!(
        g.nodes.keys().cloned().collect::<BTreeSet<_>>(),
        ["n1", "n2", "n3"].map(String::from).into(),
        "{dot}"
    );
    assert_eq!(g.edges.len(), 3, "{dot}");
    let e12 = &g.edges[&("n1".to_string(), "n2".to_string())];
    // Each sender's own count: n1 sent 2048 to n2, n2 sent 1000 to n1.
    assert_eq!(
        e12["label"], "handshake 5s ago\nn1→n2 2.0 KiB\nn2→n1 1000 B",
        "{dot}"
    );
    assert_eq!(e12["color"], HEALTHY_COLOR);
    let e13 = &g.edges[&("n1".to_string(), "n3".to_string())];
    assert_eq!(e13["color"], STALE_COLOR);
    assert_eq!(e13["style"], "dashed");
    // n3 did not report: what it sent is what n1 received.
    assert!(e13["label"].ends_with("n1→n3 8 B\nn3→n1 7 B"), "{dot}");
    let e23 = &g.edges[&("n2".to_string(), "n3".to_string())];
    assert_eq!(e23["color"], NO_HANDSHAKE_COLOR);
    assert!(e23["label"].starts_with("no handshake yet"));
    assert!(g.nodes["n1"]["label"].starts_with("n1\n"), "{dot}");
    assert!(
        g.nodes["n3"]["label"].contains("198.18.0.12:51820"),
        "a peer that did not report shows its endpoint: {dot}"
    );
}

#[test]
fn names_are_quoted_so_odd_ones_cannot_break_the_graph() {
    let mut odd = peer("x\"; evil -- \"y", Some(1), 1, 1);
    odd.name = Some("x\"; evil -- \"y\\".into());
    let g = parse(&mesh_dot(&[report("n1", vec![odd])]));
    assert!(g.nodes.contains_key("x\"; evil -- \"y\\"));
    assert_eq!(g.edges.len(), 1);
}

#[test]
fn a_mesh_without_reports_is_an_empty_graph() {
    let g = parse(&mesh_dot(&[]));
    assert!(g.nodes.is_empty() && g.edges.is_empty());
}

#[test]
fn bytes_read_like_a_human_wrote_them() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
}
