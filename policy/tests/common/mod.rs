//! Random worlds for the property tests: a few namespaces and pods with labels from a small
//! alphabet (so selectors hit), policies using every feature of `networking.k8s.io/v1`, and
//! packets between pods and external addresses of both families.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use meshd_policy::maps::EndpointId;
use meshd_policy::model::{
    Direction, LabelSelector, Labels, NamedPort, Namespace, Operator, Peer, Pod, PodKey, Policy,
    PolicyPort, PortSpec, Protocol, Requirement, Rule, World,
};
use meshd_policy::reference::Endpoint;
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// Namespace names.
pub const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const KEYS: [&str; 2] = ["k1", "k2"];
const VALUES: [&str; 2] = ["a", "b"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "nope"];
/// Ports packets use (those policies name, and their neighbours).
pub const PACKET_PORTS: [u16; 7] = [53, 79, 80, 81, 82, 84, 443];
/// Nodes pods are spread over.
pub const NODES: [&str; 2] = ["node-1", "node-2"];

fn protocol() -> impl Strategy<Value = Protocol> {
    select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp])
}

pub fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(select(KEYS.to_vec()), select(VALUES.to_vec()), 0..=2).prop_map(
        |m| {
            m.into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        },
    )
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let values = || {
        proptest::collection::btree_set(select(VALUES.to_vec()), 1..=2)
            .prop_map(|s| s.into_iter().map(str::to_owned).collect::<BTreeSet<_>>())
    };
    let operator = prop_oneof![
        values().prop_map(Operator::In),
        values().prop_map(Operator::NotIn),
        Just(Operator::Exists),
        Just(Operator::DoesNotExist),
    ];
    (select(KEYS.to_vec()), operator).prop_map(|(key, operator)| Requirement {
        key: key.to_owned(),
        operator,
    })
}

pub fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        proptest::collection::btree_map(select(KEYS.to_vec()), select(VALUES.to_vec()), 0..=1),
        proptest::collection::vec(requirement(), 0..=1),
    )
        .prop_map(|(labels, match_expressions)| LabelSelector {
            match_labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            match_expressions,
        })
}

/// A prefix of the test address space (10.0.0.0/26 or fd00::/122) around `host`.
fn net(v6: bool, host: u8, len: u8) -> IpNet {
    if v6 {
        let address = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(host));
        IpNet::V6(
            Ipv6Net::new(address, 128 - (32 - len))
                .expect("valid length")
                .trunc(),
        )
    } else {
        let address = Ipv4Addr::new(10, 0, 0, host);
        IpNet::V4(Ipv4Net::new(address, len).expect("valid length").trunc())
    }
}

fn ip_block() -> impl Strategy<Value = Peer> {
    (
        any::<bool>(),
        0u8..32,
        select(vec![0u8, 8, 24, 26, 27, 28, 29, 30, 31, 32]),
        proptest::collection::vec((0u8..32, 1u8..=6), 0..=2),
    )
        .prop_map(|(v6, host, len, excepts)| {
            let cidr = net(v6, host, len);
            let except = excepts
                .into_iter()
                // An except inside the block: the block's host plus an offset, longer prefix.
                .map(|(offset, extra)| {
                    net(v6, host.wrapping_add(offset) % 64, (len + extra).min(32))
                })
                .filter(|e| cidr.contains(e))
                .collect();
            Peer::IpBlock { cidr, except }
        })
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        3 => (proptest::option::of(selector()), proptest::option::of(selector()))
            .prop_map(|(namespace_selector, pod_selector)| match (namespace_selector, pod_selector) {
                (None, None) => Peer::Pods { namespace_selector: None, pod_selector: Some(LabelSelector::everything()) },
                (namespace_selector, pod_selector) => Peer::Pods { namespace_selector, pod_selector },
            }),
        2 => ip_block(),
    ]
}

fn policy_port() -> impl Strategy<Value = PolicyPort> {
    let spec = prop_oneof![
        1 => Just(PortSpec::Any),
        3 => select(vec![53u16, 80, 81]).prop_map(|p| PortSpec::Range { start: p, end: p }),
        2 => (79u16..=82, 0u16..=3).prop_map(|(start, extra)| PortSpec::Range { start, end: start + extra }),
        3 => select(PORT_NAMES.to_vec()).prop_map(|n| PortSpec::Named(n.to_owned())),
    ];
    (protocol(), spec).prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::vec(peer(), 0..=2),
        proptest::collection::vec(policy_port(), 0..=2),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

pub fn policy(index: usize) -> impl Strategy<Value = Policy> {
    let types = prop_oneof![
        2 => Just(None),
        1 => Just(Some([Direction::Ingress].into())),
        1 => Just(Some([Direction::Egress].into())),
        1 => Just(Some([Direction::Ingress, Direction::Egress].into())),
    ];
    (
        select(NAMESPACES.to_vec()),
        selector(),
        types,
        proptest::collection::vec(rule(), 0..=2),
        proptest::collection::vec(rule(), 0..=2),
    )
        .prop_map(
            move |(ns, pod_selector, policy_types, ingress, egress)| Policy {
                key: PodKey::new(ns, format!("q{index}")),
                pod_selector,
                policy_types,
                ingress,
                egress,
            },
        )
}

pub fn named_ports() -> impl Strategy<Value = BTreeMap<String, NamedPort>> {
    proptest::collection::btree_map(
        select(PORT_NAMES[..2].to_vec()),
        (protocol(), select(vec![53u16, 80, 81, 84])),
        0..=2,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(name, (protocol, number))| (name.to_owned(), NamedPort { protocol, number }))
            .collect()
    })
}

/// Pod `index`: addresses 10.0.0.(3i+1+o) and/or fd00::(3i+1+o) (unique per pod, inside the
/// blocks policies use).
pub fn pod(index: usize) -> impl Strategy<Value = Pod> {
    (
        select(NAMESPACES.to_vec()),
        labels(),
        0u8..3,
        select(vec![
            (true, true),
            (true, true),
            (true, false),
            (false, true),
        ]),
        select(NODES.to_vec()),
        named_ports(),
    )
        .prop_map(move |(ns, labels, offset, (v4, v6), node, named_ports)| {
            // index < 10, so the host stays below 32.
            let host = index as u8 * 3 + 1 + offset;
            let mut addresses = Vec::new();
            if v4 {
                addresses.push(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)));
            }
            if v6 {
                addresses.push(IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    u16::from(host),
                )));
            }
            Pod {
                key: PodKey::new(ns, format!("p{index}")),
                labels: labels.into(),
                addresses,
                node: node.into(),
                named_ports,
            }
        })
}

pub fn namespace(name: &'static str) -> impl Strategy<Value = Namespace> {
    labels().prop_map(move |mut labels| {
        labels.insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
        Namespace {
            name: name.to_owned(),
            labels,
        }
    })
}

/// A world of three namespaces, 1..=6 pods and 0..=4 policies.
pub fn world() -> impl Strategy<Value = World> {
    let namespaces = (namespace("n0"), namespace("n1"), namespace("n2"));
    let pods = (1usize..=6).prop_flat_map(|n| (0..n).map(pod).collect::<Vec<_>>());
    let policies = (0usize..=4).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    (namespaces, pods, policies).prop_map(|((a, b, c), pods, policies)| World {
        namespaces: [a, b, c].into_iter().map(|n| (n.name.clone(), n)).collect(),
        pods: pods
            .into_iter()
            .map(|p| (p.key.clone(), p.into()))
            .collect(),
        policies: policies.into_iter().map(|p| (p.key.clone(), p)).collect(),
        remote: Default::default(),
    })
}

/// One end of a random packet, resolved against a world with [`PacketEnd::endpoint`].
#[derive(Clone, Debug)]
pub enum PacketEnd {
    /// A pod (index into the world's pods).
    Pod(Index),
    /// An address: host in the test space, or one far outside it.
    External(u8),
}

pub fn packet_end() -> impl Strategy<Value = PacketEnd> {
    prop_oneof![
        3 => any::<Index>().prop_map(PacketEnd::Pod),
        1 => (0u8..40).prop_map(PacketEnd::External),
    ]
}

/// A random packet: ends, family, IP protocol, port.
#[derive(Clone, Debug)]
pub struct RandomPacket {
    pub src: PacketEnd,
    pub dst: PacketEnd,
    pub v6: bool,
    pub protocol: u8,
    pub port: u16,
}

pub fn packet() -> impl Strategy<Value = RandomPacket> {
    (
        packet_end(),
        packet_end(),
        any::<bool>(),
        select(vec![6u8, 6, 17, 132, 1]),
        select(PACKET_PORTS.to_vec()),
    )
        .prop_map(|(src, dst, v6, protocol, port)| RandomPacket {
            src,
            dst,
            v6,
            protocol,
            port: if protocol == 1 { 0 } else { port },
        })
}

impl PacketEnd {
    /// The endpoint in `world` for this end and family; `None` if a chosen pod lacks the family.
    /// An external address that is some pod's is that pod (a pod cannot send from another's).
    pub fn endpoint(&self, world: &World, v6: bool) -> Option<Endpoint> {
        match self {
            PacketEnd::Pod(index) => {
                let pods: Vec<&Pod> = world.pods.values().map(|p| &**p).collect();
                let pod = index.get(&pods);
                let address = pod.addresses.iter().find(|a| a.is_ipv6() == v6)?;
                Some(Endpoint::Pod {
                    pod: pod.key.clone(),
                    address: *address,
                })
            }
            PacketEnd::External(host) => {
                let address = match (v6, *host) {
                    (false, 39) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                    (true, 39) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                    (false, h) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, h)),
                    (true, h) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(h))),
                };
                Some(
                    match world.pods.values().find(|p| p.addresses.contains(&address)) {
                        Some(pod) => Endpoint::Pod {
                            pod: pod.key.clone(),
                            address,
                        },
                        None => Endpoint::External(address),
                    },
                )
            }
        }
    }
}

/// The local endpoints of `node`: its pods, ids from their position in the world (+10).
pub fn endpoints_of(world: &World, node: &str) -> BTreeMap<PodKey, EndpointId> {
    world
        .pods
        .values()
        .zip(10u32..)
        .filter(|(p, _)| p.node == node)
        .map(|(p, id)| (p.key.clone(), EndpointId(id)))
        .collect()
}
