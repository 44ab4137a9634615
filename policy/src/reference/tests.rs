//! Named cases from the upstream e2e suite's model, checked against hand-written truth tables.

use std::net::IpAddr;

use crate::e2e_model::*;
use crate::model::{Direction::*, LabelSelector, Operator, Peer, PodKey, Protocol::*, Requirement};
use crate::reference::{allowed, Endpoint};

const OPEN: [&str; 9] = ["........."; 9];

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::labels(pairs.iter().copied())
}

#[test]
fn no_policy_allows_everything() {
    assert_eq!(reference_table(&world(), Tcp, 80), expect(OPEN));
}

#[test]
fn default_deny_ingress() {
    let w = with(world(), policy("x", "deny", LabelSelector::everything()));
    let x = "XXX......";
    assert_eq!(reference_table(&w, Tcp, 80), expect([x; 9]));
}

#[test]
fn deny_all_ingress_and_egress() {
    let mut p = policy("x", "deny", LabelSelector::everything());
    p.policy_types = types(&[Ingress, Egress]);
    let w = with(world(), p);
    let out = "XXXXXXXXX";
    let x = "XXX......";
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect([out, out, out, x, x, x, x, x, x])
    );
}

#[test]
fn pod_selector_same_namespace() {
    let mut p = policy("x", "allow-b", sel(&[("pod", "a")]));
    p.ingress.push(from(vec![pods(sel(&[("pod", "b")]))]));
    let w = with(world(), p);
    let ok = "X........";
    let b = ".........";
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect([ok, b, ok, ok, ok, ok, ok, ok, ok])
    );
}

#[test]
fn namespace_selector_and_match_expressions() {
    let mut p = policy("x", "allow-ns", sel(&[("pod", "a")]));
    p.ingress.push(from(vec![namespaces(LabelSelector {
        match_labels: Default::default(),
        match_expressions: vec![Requirement {
            key: "ns".into(),
            operator: Operator::NotIn(["x".to_owned()].into()),
        }],
    })]));
    let w = with(world(), p);
    let blocked = "X........";
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect([blocked, blocked, blocked, OPEN[0], OPEN[0], OPEN[0], OPEN[0], OPEN[0], OPEN[0]])
    );
}

#[test]
fn pod_and_namespace_versus_pod_or_namespace() {
    // AND: pod=b in ns=y.
    let mut and = policy("x", "and", sel(&[("pod", "a")]));
    and.ingress.push(from(vec![Peer::Pods {
        namespace_selector: Some(sel(&[("ns", "y")])),
        pod_selector: Some(sel(&[("pod", "b")])),
    }]));
    let w = with(world(), and);
    let x = "X........";
    let o = ".........";
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect([x, x, x, x, o, x, x, x, x])
    );
    // OR: pod=b in x, or anything in ns=y.
    let mut or = policy("x", "and", sel(&[("pod", "a")]));
    or.ingress.push(from(vec![
        namespaces(sel(&[("ns", "y")])),
        pods(sel(&[("pod", "b")])),
    ]));
    let w = with(world(), or);
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect([x, o, x, o, o, o, x, x, x])
    );
}

#[test]
fn ports_numeric_and_named_and_protocols() {
    let mut p = policy("x", "port-81", sel(&[("pod", "a")]));
    p.ingress.push(crate::model::Rule {
        peers: Vec::new(),
        ports: vec![port(Tcp, 81), named(Udp, "serve-80-udp")],
    });
    let w = with(world(), p);
    let x = "X........";
    assert_eq!(reference_table(&w, Tcp, 80), expect([x; 9]));
    assert_eq!(reference_table(&w, Tcp, 81), expect(OPEN));
    assert_eq!(reference_table(&w, Udp, 80), expect(OPEN));
    assert_eq!(reference_table(&w, Udp, 81), expect([x; 9]));
    // SCTP is not TCP.
    assert_eq!(reference_table(&w, Sctp, 81), expect([x; 9]));
}

#[test]
fn named_port_protocol_must_match_the_container_port() {
    let mut p = policy("x", "named", sel(&[("pod", "a")]));
    p.ingress.push(crate::model::Rule {
        peers: Vec::new(),
        ports: vec![named(Udp, "serve-80-tcp")],
    });
    let w = with(world(), p);
    assert_eq!(reference_table(&w, Tcp, 80), expect(["X........"; 9]));
    assert_eq!(reference_table(&w, Udp, 80), expect(["X........"; 9]));
}

#[test]
fn egress_named_port_resolves_on_the_destination() {
    let mut w = world();
    // z/c serves "serve-80-tcp" on 8080 instead.
    w.pods
        .get_mut(&PodKey::new("z", "c"))
        .expect("model pod")
        .named_ports
        .get_mut("serve-80-tcp")
        .expect("model port")
        .number = 8080;
    let mut p = policy("x", "egress-named", sel(&[("pod", "a")]));
    p.policy_types = types(&[Egress]);
    p.egress.push(crate::model::Rule {
        peers: Vec::new(),
        ports: vec![named(Tcp, "serve-80-tcp")],
    });
    let w = with(w, p);
    let o = ".........";
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect(["........X", o, o, o, o, o, o, o, o])
    );
    assert_eq!(
        reference_table(&w, Tcp, 8080),
        expect(["XXXXXXXX.", o, o, o, o, o, o, o, o])
    );
    // An external destination has no named ports.
    let src = endpoint(&w, &PodKey::new("x", "a"), 4);
    let ext = Endpoint::External("192.0.2.1".parse().expect("literal"));
    assert!(!allowed(&w, &src, &ext, 6, 80));
}

#[test]
fn stacked_policies_union_and_allow_all_precedence() {
    let deny = policy("x", "deny", LabelSelector::everything());
    let mut allow = policy("x", "allow-all", LabelSelector::everything());
    allow.ingress.push(crate::model::Rule::default());
    let w = with(with(world(), deny), allow);
    assert_eq!(reference_table(&w, Tcp, 80), expect(OPEN));
}

#[test]
fn deny_egress_except_dns_and_client_side_deny() {
    let mut p = policy("x", "dns-only", LabelSelector::everything());
    p.policy_types = types(&[Egress]);
    p.egress.push(crate::model::Rule {
        peers: Vec::new(),
        ports: vec![port(Udp, 53), port(Tcp, 53)],
    });
    let w = with(world(), p);
    let out = "XXXXXXXXX";
    let o = ".........";
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect([out, out, out, o, o, o, o, o, o])
    );
    assert_eq!(reference_table(&w, Udp, 53), expect(OPEN));
}

#[test]
fn cidr_with_except_and_overlapping_cidrs() {
    // Egress from x/a to 10.0.0.0/24 except 10.0.0.4/30 (y/a..y/c are .4 .5 .6; .7 is z/a).
    let block = |except: Vec<&str>| Peer::IpBlock {
        cidr: "10.0.0.0/24".parse().expect("literal"),
        except: except
            .into_iter()
            .map(|e| e.parse().expect("literal"))
            .collect(),
    };
    let mut p = policy("x", "cidr", sel(&[("pod", "a")]));
    p.policy_types = types(&[Egress]);
    p.egress.push(from(vec![block(vec!["10.0.0.4/30"])]));
    let w = with(world(), p.clone());
    let o = ".........";
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect(["...XXXX..", o, o, o, o, o, o, o, o])
    );
    // A second rule allowing 10.0.0.4/31 re-opens y/b (.5) and z/a's neighbour .4 (y/a).
    p.egress.push(from(vec![Peer::IpBlock {
        cidr: "10.0.0.4/31".parse().expect("literal"),
        except: Vec::new(),
    }]));
    let w = with(world(), p);
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect([".....XX..", o, o, o, o, o, o, o, o])
    );
    // ipBlock matches pod addresses; IPv6 traffic is outside an IPv4 block.
    let src = endpoint(&w, &PodKey::new("x", "a"), 6);
    let dst = endpoint(&w, &PodKey::new("y", "a"), 6);
    assert!(!allowed(&w, &src, &dst, 6, 80));
}

#[test]
fn end_port_range() {
    let mut p = policy("x", "range", sel(&[("pod", "a")]));
    p.ingress.push(crate::model::Rule {
        peers: Vec::new(),
        ports: vec![crate::model::PolicyPort {
            protocol: Tcp,
            port: crate::model::PortSpec::Range { start: 81, end: 90 },
        }],
    });
    let w = with(world(), p);
    let x = "X........";
    assert_eq!(reference_table(&w, Tcp, 80), expect([x; 9]));
    assert_eq!(reference_table(&w, Tcp, 81), expect(OPEN));
    assert_eq!(reference_table(&w, Tcp, 90), expect(OPEN));
    assert_eq!(reference_table(&w, Tcp, 91), expect([x; 9]));
}

#[test]
fn default_namespace_label_and_external_sources() {
    let mut p = policy("x", "from-y", LabelSelector::everything());
    p.ingress
        .push(from(vec![namespaces(sel(&[(NAMESPACE_NAME_LABEL, "y")]))]));
    let w = with(world(), p);
    let x = "XXX......";
    let o = ".........";
    assert_eq!(
        reference_table(&w, Tcp, 80),
        expect([x, x, x, o, o, o, x, x, x])
    );
    // An external source is no pod: pod peers never match it.
    let ext = Endpoint::External(IpAddr::from([192, 0, 2, 9]));
    let dst = endpoint(&w, &PodKey::new("x", "b"), 4);
    assert!(!allowed(&w, &ext, &dst, 6, 80));
    let dst = endpoint(&w, &PodKey::new("y", "b"), 4);
    assert!(allowed(&w, &ext, &dst, 6, 80));
}
