//! The reference evaluator: NetworkPolicy semantics written plainly from the API documentation,
//! the slow obvious way, to judge the compiler against.
//!
//! It shares nothing with the compiler but the model's data types: label matching and the
//! defaulting of `policyTypes` are written again here on purpose. A packet from `src` to `dst`
//! passes when the source pod's egress allows it (or the source is not a pod) AND the
//! destination pod's ingress allows it (or the destination is not a pod). A pod is isolated in a
//! direction when some policy of its namespace selects it and applies to that direction; an
//! isolated pod admits what at least one rule of those policies admits; a pod selected by none
//! is open. Named ports are looked up on the destination pod (for egress too). An `ipBlock`
//! matches any address in it, pod addresses included, and its `except` narrows that peer only.
//! Replies, related ICMP, neighbour discovery and node-local traffic are the datapath's concern
//! (connection tracking and exemptions) and are not modelled here.

use std::net::IpAddr;

use crate::model::{
    Direction, LabelLookup, LabelSelector, Labels, Operator, Peer, Pod, PodKey, Policy, PolicyPort,
    PortSpec, Rule, World,
};

/// One end of a packet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A pod, sending or receiving on one of its addresses.
    Pod {
        /// Which pod.
        pod: PodKey,
        /// The pod address the packet carries.
        address: IpAddr,
    },
    /// An address that is no pod's (another network, a node, the internet).
    External(IpAddr),
}

impl Endpoint {
    /// The address the packet carries for this end.
    pub fn address(&self) -> IpAddr {
        match self {
            Endpoint::Pod { address, .. } | Endpoint::External(address) => *address,
        }
    }
}

/// Whether NetworkPolicy allows a new connection (its first packet) from `src` to `dst` with IP
/// protocol `protocol` and destination port `port` (0 for protocols without ports).
pub fn allowed(world: &World, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> bool {
    let src_pod = pod_of(world, src);
    let dst_pod = pod_of(world, dst);
    let egress_ok = match src_pod {
        None => true,
        Some(pod) => pod_admits(world, pod, Direction::Egress, dst, dst_pod, protocol, port),
    };
    let ingress_ok = match dst_pod {
        None => true,
        Some(pod) => pod_admits(world, pod, Direction::Ingress, src, dst_pod, protocol, port),
    };
    egress_ok && ingress_ok
}

fn pod_of<'a>(world: &'a World, endpoint: &Endpoint) -> Option<&'a Pod> {
    match endpoint {
        Endpoint::Pod { pod, .. } => world.pods.get(pod).map(|pod| &**pod),
        Endpoint::External(_) => None,
    }
}

/// Whether `pod`'s policies of `direction` admit traffic with `peer` (the other end), where
/// named ports are looked up on `serving` (the destination pod, if the destination is a pod).
fn pod_admits(
    world: &World,
    pod: &Pod,
    direction: Direction,
    peer: &Endpoint,
    serving: Option<&Pod>,
    protocol: u8,
    port: u16,
) -> bool {
    let mut isolated = false;
    for policy in world.policies.values() {
        if policy.key.namespace != pod.key.namespace {
            continue;
        }
        if !selector_matches(&policy.pod_selector, &pod.labels) {
            continue;
        }
        if !has_type(policy, direction) {
            continue;
        }
        isolated = true;
        let rules = match direction {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        for rule in rules {
            if rule_admits(world, policy, rule, peer, serving, protocol, port) {
                return true;
            }
        }
    }
    !isolated
}

/// The policy types of a policy: as written, or Ingress plus Egress when it has egress rules.
fn has_type(policy: &Policy, direction: Direction) -> bool {
    if let Some(types) = &policy.policy_types {
        return types.contains(&direction);
    }
    if direction == Direction::Ingress {
        return true;
    }
    !policy.egress.is_empty()
}

fn rule_admits(
    world: &World,
    policy: &Policy,
    rule: &Rule,
    peer: &Endpoint,
    serving: Option<&Pod>,
    protocol: u8,
    port: u16,
) -> bool {
    let peer_ok = if rule.peers.is_empty() {
        true
    } else {
        rule.peers
            .iter()
            .any(|p| peer_matches(world, policy, p, peer))
    };
    let port_ok = if rule.ports.is_empty() {
        true
    } else {
        rule.ports
            .iter()
            .any(|p| port_matches(p, serving, protocol, port))
    };
    peer_ok && port_ok
}

fn peer_matches(world: &World, policy: &Policy, peer: &Peer, endpoint: &Endpoint) -> bool {
    match peer {
        Peer::IpBlock { cidr, except } => {
            let address = endpoint.address();
            cidr.contains(&address) && !except.iter().any(|e| e.contains(&address))
        }
        Peer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            let Some(pod) = pod_of(world, endpoint) else {
                return false;
            };
            let namespace_ok = match namespace_selector {
                None => pod.key.namespace == policy.key.namespace,
                Some(selector) => {
                    let no_labels = Labels::new();
                    let labels = world
                        .namespaces
                        .get(pod.key.namespace.as_str())
                        .map(|ns| &ns.labels)
                        .unwrap_or(&no_labels);
                    selector_matches(selector, labels)
                }
            };
            let pod_ok = match pod_selector {
                None => true,
                Some(selector) => selector_matches(selector, &pod.labels),
            };
            namespace_ok && pod_ok
        }
    }
}

fn port_matches(policy_port: &PolicyPort, serving: Option<&Pod>, protocol: u8, port: u16) -> bool {
    if policy_port.protocol.number() != protocol {
        return false;
    }
    match &policy_port.port {
        PortSpec::Any => true,
        PortSpec::Range { start, end } => *start <= port && port <= *end,
        PortSpec::Named(name) => match serving {
            None => false,
            Some(pod) => match pod.named_ports.get(name) {
                None => false,
                Some(named) => named.protocol == policy_port.protocol && named.number == port,
            },
        },
    }
}

fn selector_matches<L: LabelLookup + ?Sized>(selector: &LabelSelector, labels: &L) -> bool {
    for (key, value) in &selector.match_labels {
        if labels.label(key) != Some(value.as_str()) {
            return false;
        }
    }
    for requirement in &selector.match_expressions {
        let value = labels.label(&requirement.key);
        let ok = match &requirement.operator {
            Operator::In(values) => match value {
                Some(v) => values.contains(v),
                None => false,
            },
            Operator::NotIn(values) => match value {
                Some(v) => !values.contains(v),
                None => true,
            },
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
