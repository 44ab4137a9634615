//! The compiler's output enforced by the tc programs: small worlds of two local pods (x/a on
//! A, x/b on B) with NetworkPolicies, compiled by `meshd-policy`, written into the live maps in
//! `update::ordered_ops` order through `Datapath` (then `policy_changed`), as the daemon does,
//! and probed with real TCP and UDP connections, both families, both ways: every verdict must be
//! the one `datapath_model::allows` computes from the same maps.
#![allow(clippy::unwrap_used)]

mod lab;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ebpf_redirect::Datapath;
use lab::*;
use meshd_policy::{
    compile,
    datapath_model::{allows, DatapathPacket},
    e2e_model::{from, pods, policy, port, types, with},
    maps::EndpointId,
    model::{
        Direction, LabelSelector, Namespace, Peer, Pod, PodKey, Policy, PolicyPort, PortSpec,
        Protocol, Rule, World, NAMESPACE_NAME_LABEL,
    },
    update::{ordered_ops, MapOp},
    MapDelta, PolicyMaps,
};

/// Writes one map op through the loader, as the daemon does.
fn write(dp: &mut Datapath, op: &MapOp) {
    match op {
        MapOp::UpsertIsolation(k, v) => dp.policy_isolation_upsert(k, v),
        MapOp::DeleteIsolation(k) => dp.policy_isolation_delete(k),
        MapOp::UpsertPeerV4(k, v) => dp.policy_peer_v4_upsert(k, v),
        MapOp::DeletePeerV4(k) => dp.policy_peer_v4_delete(k),
        MapOp::UpsertPeerV6(k, v) => dp.policy_peer_v6_upsert(k, v),
        MapOp::DeletePeerV6(k) => dp.policy_peer_v6_delete(k),
        MapOp::UpsertPort(k, v) => dp.policy_port_upsert(k, v),
        MapOp::DeletePort(k) => dp.policy_port_delete(k),
    }
    .unwrap();
}

/// Namespace x with pods a and b at the lab's addresses.
fn world() -> World {
    let mut world = World::default();
    world.namespaces.insert(
        "x".into(),
        Namespace {
            name: "x".into(),
            labels: [(NAMESPACE_NAME_LABEL.to_owned(), "x".to_owned())].into(),
        },
    );
    for (name, fam_addrs) in [("a", [V4.a, V6.a]), ("b", [V4.b, V6.b])] {
        let key = PodKey::new("x", name);
        world.pods.insert(
            key.clone(),
            std::sync::Arc::new(Pod {
                key,
                labels: [("pod".to_owned(), name.to_owned())].into(),
                addresses: fam_addrs.to_vec(),
                node: "node".into(),
                named_ports: BTreeMap::new(),
            }),
        );
    }
    world
}

fn selects(pod: &str) -> LabelSelector {
    LabelSelector::labels([("pod", pod)])
}

/// The scenarios, applied one after the other (each replaces the previous policies).
fn scenarios() -> Vec<(&'static str, Vec<Policy>)> {
    let mut deny_b = policy("x", "deny-b", selects("b"));
    deny_b.policy_types = types(&[Direction::Ingress]);

    let mut b_from_a_80 = policy("x", "b-from-a-80", selects("b"));
    b_from_a_80.ingress.push(Rule {
        peers: vec![pods(selects("a"))],
        ports: vec![port(Protocol::Tcp, 80)],
    });

    let mut a_to_b_range = policy("x", "a-to-b-range", selects("a"));
    a_to_b_range.egress.push(Rule {
        peers: vec![pods(selects("b"))],
        ports: vec![
            PolicyPort {
                protocol: Protocol::Tcp,
                port: PortSpec::Range {
                    start: 8080,
                    end: 8095,
                },
            },
            port(Protocol::Udp, 80),
        ],
    });

    let mut a_to_block_except_b = policy("x", "a-to-block", selects("a"));
    a_to_block_except_b.egress.push(Rule {
        peers: vec![
            Peer::IpBlock {
                cidr: "10.210.0.0/16".parse().unwrap(),
                except: vec!["10.210.2.2/32".parse().unwrap()],
            },
            Peer::IpBlock {
                cidr: "fd00:210::/32".parse().unwrap(),
                except: vec!["fd00:210:2::2/128".parse().unwrap()],
            },
        ],
        ports: Vec::new(),
    });
    let mut b_all = policy("x", "b-all", selects("b"));
    b_all.ingress.push(from(Vec::new()));

    vec![
        ("b denies all ingress", vec![deny_b.clone()]),
        ("b admits a on TCP 80", vec![b_from_a_80.clone()]),
        (
            "b admits a on TCP 80, a sends to b on TCP 8080-8095 and UDP 80",
            vec![b_from_a_80, a_to_b_range],
        ),
        (
            "a sends to a block except b; b admits everyone",
            vec![a_to_block_except_b, b_all],
        ),
        ("deny-all ingress of b, added alone", vec![deny_b]),
        ("no policy", Vec::new()),
    ]
}

#[test]
fn compiled_policies_are_enforced_as_the_datapath_model_says() {
    let mut lab = Lab::new("m");
    let endpoints: BTreeMap<PodKey, EndpointId> = [
        (PodKey::new("x", "a"), EndpointId(lab.ep_a)),
        (PodKey::new("x", "b"), EndpointId(lab.ep_b)),
    ]
    .into();
    let names = [
        (lab.a().to_string(), lab.ep_a),
        (lab.b().to_string(), lab.ep_b),
    ];
    let mut live = PolicyMaps::default();
    let (mut allowed, mut denied) = (0, 0);
    for (scenario, policies) in scenarios() {
        let world = policies.into_iter().fold(world(), with);
        let compiled = compile(&world, &endpoints);
        assert!(
            compiled.errors.is_empty(),
            "{scenario}: {:?}",
            compiled.errors
        );
        for op in ordered_ops(&MapDelta::between(&live, &compiled.maps)) {
            write(&mut lab.dp, &op);
        }
        lab.dp.policy_changed().unwrap();
        live = compiled.maps;
        for fam in [V4, V6] {
            for (from_i, to_i) in [(0, 1), (1, 0)] {
                let addrs = [fam.a, fam.b];
                let (src, dst): (IpAddr, IpAddr) = (addrs[from_i], addrs[to_i]);
                for (protocol, number) in [(6u8, 80u16), (6, 81), (6, 8085), (17, 80)] {
                    let expected = allows(
                        &live,
                        &DatapathPacket {
                            src,
                            dst,
                            protocol,
                            port: number,
                            src_endpoint: Some(EndpointId(names[from_i].1)),
                            dst_endpoint: Some(EndpointId(names[to_i].1)),
                        },
                    );
                    let ns = &names[from_i].0;
                    let actual = if protocol == 6 {
                        tcp_ok(ns, dst, number)
                    } else {
                        udp_ok(ns, dst, number)
                    };
                    assert_eq!(
                        actual, expected,
                        "{scenario}: {src} -> {dst} proto {protocol} port {number}"
                    );
                    if expected {
                        allowed += 1;
                    } else {
                        denied += 1;
                    }
                }
            }
        }
    }
    // Both verdicts were exercised.
    assert!(
        allowed > 0 && denied > 0,
        "{allowed} allowed, {denied} denied"
    );
}
