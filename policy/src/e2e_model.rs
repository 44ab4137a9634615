//! The upstream Kubernetes e2e NetworkPolicy model as a [`World`]: namespaces `x`, `y`, `z`
//! (labelled `ns=<name>` and `kubernetes.io/metadata.name=<name>`), pods `a`, `b`, `c` in each
//! (labelled `pod=<name>`), every pod serving ports 80 and 81 on TCP, UDP and SCTP under the
//! names `serve-<port>-<proto>`, and a truth table over every ordered pod pair.
//!
//! Used by this crate's tests and meant for the lab's conformance tests, which probe the same
//! model. Addresses: pod `i` (0..9 in x/a, x/b, … z/c order) has `10.0.0.<i+1>` and
//! `fd00::<i+1>`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::model::NAMESPACE_NAME_LABEL;
use crate::model::{
    Direction, LabelSelector, NamedPort, Namespace, Peer, Pod, PodKey, Policy, PolicyPort,
    PortSpec, Protocol, Rule, World,
};
use crate::reference::{self, Endpoint};

/// The model's namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The model's pod names (in each namespace).
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every pod serves.
pub const PORTS: [u16; 2] = [80, 81];

/// The model's world, without policies.
pub fn world() -> World {
    let mut world = World::default();
    let mut index: u8 = 0;
    for ns in NAMESPACES {
        world.namespaces.insert(
            ns.to_owned(),
            Namespace {
                name: ns.to_owned(),
                labels: [
                    ("ns".to_owned(), ns.to_owned()),
                    (NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned()),
                ]
                .into(),
            },
        );
        for pod in PODS {
            index += 1;
            let mut named_ports = BTreeMap::new();
            for port in PORTS {
                for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    named_ports.insert(
                        format!("serve-{port}-{}", protocol.to_string().to_lowercase()),
                        NamedPort {
                            protocol,
                            number: port,
                        },
                    );
                }
            }
            let key = PodKey::new(ns, pod);
            world.pods.insert(
                key.clone(),
                Pod {
                    key,
                    labels: [("pod".to_owned(), pod.to_owned())].into(),
                    addresses: vec![
                        IpAddr::V4(Ipv4Addr::new(10, 0, 0, index)),
                        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(index))),
                    ],
                    node: if index.is_multiple_of(2) {
                        "node-2"
                    } else {
                        "node-1"
                    }
                    .into(),
                    named_ports,
                }
                .into(),
            );
        }
    }
    world
}

/// Adds `policy` to `world` (replacing one of the same key).
pub fn with(mut world: World, policy: Policy) -> World {
    world.policies.insert(policy.key.clone(), policy);
    world
}

/// A policy `namespace/name` selecting pods by `pod_selector`, with no rules and no types.
pub fn policy(namespace: &str, name: &str, pod_selector: LabelSelector) -> Policy {
    Policy {
        key: PodKey::new(namespace, name),
        pod_selector,
        policy_types: None,
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

/// `policyTypes` from a list.
pub fn types(directions: &[Direction]) -> Option<std::collections::BTreeSet<Direction>> {
    Some(directions.iter().copied().collect())
}

/// A pod peer of `podSelector` only.
pub fn pods(selector: LabelSelector) -> Peer {
    Peer::Pods {
        namespace_selector: None,
        pod_selector: Some(selector),
    }
}

/// A pod peer of `namespaceSelector` only.
pub fn namespaces(selector: LabelSelector) -> Peer {
    Peer::Pods {
        namespace_selector: Some(selector),
        pod_selector: None,
    }
}

/// A rule of these peers on all ports.
pub fn from(peers: Vec<Peer>) -> Rule {
    Rule {
        peers,
        ports: Vec::new(),
    }
}

/// A numeric single-port policy port.
pub fn port(protocol: Protocol, number: u16) -> PolicyPort {
    PolicyPort {
        protocol,
        port: PortSpec::Range {
            start: number,
            end: number,
        },
    }
}

/// A named policy port.
pub fn named(protocol: Protocol, name: &str) -> PolicyPort {
    PolicyPort {
        protocol,
        port: PortSpec::Named(name.to_owned()),
    }
}

/// `pod`'s endpoint on its address of `family` (4 or 6).
pub fn endpoint(world: &World, pod: &PodKey, family: u8) -> Endpoint {
    let address = world.pods[pod]
        .addresses
        .iter()
        .copied()
        .find(|a| {
            if family == 4 {
                a.is_ipv4()
            } else {
                a.is_ipv6()
            }
        })
        .expect("every model pod has both families");
    Endpoint::Pod {
        pod: pod.clone(),
        address,
    }
}

/// The truth table of `world` for one protocol, port and family as the upstream suite prints
/// it: one row per source pod (`x/a` …), one column per destination, `.` allowed, `X` blocked.
/// `decide` gives the verdict for (source, destination).
pub fn truth_table(world: &World, mut decide: impl FnMut(&Endpoint, &Endpoint) -> bool) -> String {
    truth_table_for(world, 4, &mut decide)
}

/// [`truth_table`] over the pods' addresses of `family`.
pub fn truth_table_for(
    world: &World,
    family: u8,
    decide: &mut dyn FnMut(&Endpoint, &Endpoint) -> bool,
) -> String {
    let keys: Vec<PodKey> = world.pods.keys().cloned().collect();
    let mut out = String::new();
    for from in &keys {
        out.push_str(&from.to_string());
        out.push(' ');
        for to in &keys {
            let verdict = decide(&endpoint(world, from, family), &endpoint(world, to, family));
            out.push(if verdict { '.' } else { 'X' });
        }
        out.push('\n');
    }
    out
}

/// The reference evaluator's truth table for `protocol`/`port` over IPv4.
pub fn reference_table(world: &World, protocol: Protocol, port: u16) -> String {
    truth_table(world, |src, dst| {
        reference::allowed(world, src, dst, protocol.number(), port)
    })
}

/// Builds an expected truth table from rows written like the upstream suite's, e.g.
/// `["...XXX...", …]` in x/a, x/b, … z/c order.
pub fn expect(rows: [&str; 9]) -> String {
    let keys: Vec<String> = NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect();
    keys.iter()
        .zip(rows)
        .map(|(k, r)| format!("{k} {r}\n"))
        .collect()
}
