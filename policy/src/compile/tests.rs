//! The compiler on the e2e model: map contents for simple cases, verdicts through the datapath
//! model against the reference's truth tables, named-port splits and the rule limit.

use std::collections::BTreeMap;

use super::*;
use crate::datapath_model::{self, DatapathPacket};
use crate::e2e_model::*;
use crate::maps::{DIRECTION_EGRESS, DIRECTION_INGRESS};
use crate::model::{Direction::*, LabelSelector, PolicyPort, Protocol, Protocol::*};
use crate::reference::Endpoint;

/// Every model pod local, endpoint ids 1..=9.
fn all_local(world: &World) -> BTreeMap<PodKey, EndpointId> {
    world
        .pods
        .keys()
        .zip(1..)
        .map(|(k, i)| (k.clone(), EndpointId(i)))
        .collect()
}

fn packet(
    endpoints: &BTreeMap<PodKey, EndpointId>,
    src: &Endpoint,
    dst: &Endpoint,
    protocol: Protocol,
    port: u16,
) -> DatapathPacket {
    let id = |e: &Endpoint| match e {
        Endpoint::Pod { pod, .. } => endpoints.get(pod).copied(),
        Endpoint::External(_) => None,
    };
    DatapathPacket {
        src: src.address(),
        dst: dst.address(),
        protocol: protocol.number(),
        port,
        src_endpoint: id(src),
        dst_endpoint: id(dst),
    }
}

/// The compiled datapath's truth table next to the reference's, for both families.
fn assert_same_tables(world: &World, protocol: Protocol, port: u16) {
    let endpoints = all_local(world);
    let compiled = compile(world, &endpoints);
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
    for family in [4, 6] {
        let compiled_table = truth_table_for(world, family, &mut |s, d| {
            datapath_model::allows(&compiled.maps, &packet(&endpoints, s, d, protocol, port))
        });
        let reference_table = truth_table_for(world, family, &mut |s, d| {
            crate::reference::allowed(world, s, d, protocol.number(), port)
        });
        assert_eq!(
            compiled_table, reference_table,
            "IPv{family} {protocol}/{port}"
        );
    }
}

#[test]
fn default_deny_is_one_isolation_entry_per_selected_pod() {
    let w = with(world(), policy("x", "deny", LabelSelector::everything()));
    let compiled = compile(&w, &all_local(&w));
    assert_eq!(compiled.maps.isolation.len(), 3);
    assert!(compiled
        .maps
        .isolation
        .keys()
        .all(|k| k.direction == DIRECTION_INGRESS && k.endpoint <= 3));
    assert!(compiled.maps.peer_v4.is_empty() && compiled.maps.ports.is_empty());
    assert_same_tables(&w, Tcp, 80);
}

#[test]
fn allow_all_is_two_slash_zero_entries_and_a_wildcard_port() {
    let mut p = policy("x", "all", sel_a());
    p.policy_types = types(&[Egress]);
    p.egress.push(Rule::default());
    let w = with(world(), p);
    let compiled = compile(&w, &all_local(&w));
    let key = IsolationKey {
        endpoint: 1,
        direction: DIRECTION_EGRESS,
        reserved: [0; 3],
    };
    assert_eq!(compiled.maps.isolation[&key].rules, 1);
    assert_eq!(compiled.maps.peer_v4.len(), 1);
    assert_eq!(compiled.maps.peer_v6.len(), 1);
    let (port_key, bits) = compiled.maps.ports.iter().next().expect("one port entry");
    assert_eq!(port_key.prefix_len, PORT_KEY_FIXED_BITS);
    assert_eq!(bits.bits, 1);
}

fn sel_a() -> LabelSelector {
    LabelSelector::labels([("pod", "a")])
}

#[test]
fn e2e_cases_match_the_reference() {
    let mut cases = Vec::new();
    cases.push(with(
        world(),
        policy("x", "deny", LabelSelector::everything()),
    ));
    let mut p = policy("x", "pod-and-ns", sel_a());
    p.ingress.push(from(vec![crate::model::Peer::Pods {
        namespace_selector: Some(LabelSelector::labels([("ns", "y")])),
        pod_selector: Some(LabelSelector::labels([("pod", "b")])),
    }]));
    cases.push(with(world(), p));
    let mut p = policy("x", "ports", sel_a());
    p.ingress.push(Rule {
        peers: vec![namespaces(LabelSelector::labels([("ns", "y")]))],
        ports: vec![port(Tcp, 81), named(Udp, "serve-80-udp")],
    });
    p.ingress.push(Rule {
        peers: vec![pods(LabelSelector::labels([("pod", "c")]))],
        ports: vec![PolicyPort {
            protocol: Tcp,
            port: crate::model::PortSpec::Range { start: 79, end: 80 },
        }],
    });
    cases.push(with(world(), p));
    let mut p = policy("y", "egress-cidr", LabelSelector::everything());
    p.policy_types = types(&[Ingress, Egress]);
    p.egress.push(from(vec![crate::model::Peer::IpBlock {
        cidr: "10.0.0.0/24".parse().expect("literal"),
        except: vec!["10.0.0.4/30".parse().expect("literal")],
    }]));
    p.egress.push(from(vec![crate::model::Peer::IpBlock {
        cidr: "10.0.0.4/31".parse().expect("literal"),
        except: Vec::new(),
    }]));
    p.egress.push(Rule {
        peers: vec![crate::model::Peer::IpBlock {
            cidr: "fd00::/120".parse().expect("literal"),
            except: vec!["fd00::8/126".parse().expect("literal")],
        }],
        ports: vec![named(Tcp, "serve-81-tcp")],
    });
    p.ingress.push(Rule::default());
    cases.push(with(world(), p));
    for w in &cases {
        for (protocol, port) in [(Tcp, 80), (Tcp, 81), (Udp, 80), (Udp, 81), (Sctp, 80)] {
            assert_same_tables(w, protocol, port);
        }
    }
}

#[test]
fn egress_named_port_resolving_differently_becomes_separate_rules() {
    let mut w = world();
    for (pod, number) in [("b", 8080), ("c", 9090)] {
        w.pods
            .get_mut(&PodKey::new("x", pod))
            .expect("model pod")
            .named_ports
            .insert(
                "http".into(),
                crate::model::NamedPort {
                    protocol: Tcp,
                    number,
                },
            );
    }
    let mut p = policy("x", "egress-http", sel_a());
    p.policy_types = types(&[Egress]);
    p.egress.push(Rule {
        peers: Vec::new(),
        ports: vec![named(Tcp, "http")],
    });
    let w = with(w, p);
    let compiled = compile(&w, &all_local(&w));
    let key = IsolationKey {
        endpoint: 1,
        direction: DIRECTION_EGRESS,
        reserved: [0; 3],
    };
    assert_eq!(compiled.maps.isolation[&key].rules, 2);
    for port in [80, 8080, 9090] {
        assert_same_tables(&w, Tcp, port);
    }
}

#[test]
fn rule_limit_refuses_whole_policies_and_fails_closed() {
    let mut w = world();
    // 70 policies selecting x/a, each allowing a different port from x/b.
    for i in 0..70u16 {
        let mut p = policy("x", &format!("p{i:02}"), sel_a());
        p.ingress.push(Rule {
            peers: vec![pods(LabelSelector::labels([("pod", "b")]))],
            ports: vec![port(Tcp, 1000 + i)],
        });
        w = with(w, p);
    }
    let endpoints = all_local(&w);
    let compiled = compile(&w, &endpoints);
    assert_eq!(compiled.errors.len(), 6, "{:?}", compiled.errors);
    assert_eq!(
        compiled.errors[0].to_string(),
        "policy x/p64 is not enforced for ingress on pod x/a (endpoint 1): the pod's ingress \
         rules would need more than 64 distinct port sets; traffic only it allows is denied"
    );
    let b = endpoint(&w, &PodKey::new("x", "b"), 4);
    let a = endpoint(&w, &PodKey::new("x", "a"), 4);
    let allows =
        |port| datapath_model::allows(&compiled.maps, &packet(&endpoints, &b, &a, Tcp, port));
    assert!(allows(1000) && allows(1063));
    assert!(!allows(1064) && !allows(1069) && !allows(80));
}

#[test]
fn rules_with_the_same_ports_share_a_bit() {
    let mut w = world();
    for i in 0..100u16 {
        let mut p = policy("x", &format!("p{i:03}"), sel_a());
        p.ingress.push(Rule {
            peers: vec![crate::model::Peer::IpBlock {
                cidr: format!("192.168.{i}.0/24").parse().expect("literal"),
                except: Vec::new(),
            }],
            ports: vec![port(Tcp, 443)],
        });
        w = with(w, p);
    }
    let compiled = compile(&w, &all_local(&w));
    assert!(compiled.errors.is_empty());
    let key = IsolationKey {
        endpoint: 1,
        direction: DIRECTION_INGRESS,
        reserved: [0; 3],
    };
    assert_eq!(compiled.maps.isolation[&key].rules, 1);
    assert_eq!(compiled.maps.peer_v4.len(), 100);
}

#[test]
fn a_block_with_host_bits_set_means_its_network() {
    let block = |cidr: &str| {
        let mut p = policy("x", "cidr", sel_a());
        p.policy_types = types(&[Egress]);
        p.egress.push(from(vec![crate::model::Peer::IpBlock {
            cidr: cidr.parse().expect("literal"),
            except: vec!["10.0.0.5/30".parse().expect("literal")],
        }]));
        with(world(), p)
    };
    let sloppy = block("10.0.0.9/28");
    let canonical = block("10.0.0.0/28");
    assert_eq!(
        compile(&sloppy, &all_local(&sloppy)),
        compile(&canonical, &all_local(&canonical))
    );
    assert_same_tables(&sloppy, Tcp, 80);
}
