//! The compiler: (policies, pods, namespaces) and the node's local endpoints → the contents of
//! the BPF policy maps described in [`crate::maps`].
//!
//! For each local endpoint and direction:
//! 1. The policies of the endpoint's namespace that select it and apply to the direction, in
//!    (namespace, name) order. None: the direction is open and has no entries.
//! 2. Each of their rules becomes one or more *bit rules*, each a product of a peer set and a
//!    (protocol, port) set ([`crate::prefix::PortSet`]): pod peers become the pods' addresses (host prefixes),
//!    `ipBlock`s stay blocks with their own `except`, an empty `from`/`to` is every address.
//!    Other nodes' pods ([`crate::ipcache`]) are selected by identity (each identity matched
//!    once per rule), then their addresses taken, exactly as the same pods held whole would be.
//!    Named ports resolve on the pod serving them: for ingress that is the endpoint itself, so a
//!    rule stays one product; for egress it is the destination, so the named part of a rule
//!    splits into one bit rule per distinct resolution, each over the addresses of the rule's
//!    peers that resolve the name that way (addresses of no pod resolve nothing).
//! 3. Bit rules with the same port set merge (the union of their peers): `A×P ∪ B×P = (A∪B)×P`.
//!    Each distinct port set is one bit, numbered in port-set order, so the layout is a function
//!    of the world alone (deterministic, independent of the order policies arrived in).
//! 4. The peer trie (per family) gets every prefix a bit rule mentions (blocks, excepts, hosts,
//!    `/0` for "every address"); each carries the bits of the rules containing all of it, so the
//!    longest match answers exactly ([`crate::prefix::lpm_entries`]). The port trie likewise.
//!
//! Limit: [`MAX_RULES`] distinct port sets per endpoint-direction. Policies are added in order;
//! one that would exceed the limit is refused whole for that endpoint and direction and reported
//! as a [`CompileError::RuleLimit`]: its selection still isolates the endpoint, so what it alone
//! would allow is denied (fail closed, never silently open).
//!
//! Also to know: an endpoint whose pod the world does not know yet gets no entries (open) until
//! the pod arrives; identity is by address, so two pods holding one address (a reused address
//! before the old pod is gone) are both admitted where either is (terminated pods hold no
//! address, see [`crate::k8s`]); an endpoint-direction holds one peer entry per distinct pod
//! address its rules select, cluster-wide (a rule selecting every pod costs one entry per pod).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::maps::{
    direction_byte, EndpointId, IsolationKey, IsolationValue, PeerKeyV4, PeerKeyV6, PolicyMaps,
    PortKey, RuleBits, MAX_RULES, PEER_KEY_FIXED_BITS, PORT_KEY_FIXED_BITS,
};
use crate::model::{
    namespace_labels, Direction, IdentityId, LabelsView, Name, NamedPort, Peer, Pod, PodKey,
    Policy, PolicyKey, PortSpec, Protocol, Rule, World,
};
use crate::prefix::{lpm_entries, port_point, PortPrefix, PortSet};

/// What the compiler could not enforce as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A policy would take an endpoint-direction past [`MAX_RULES`] distinct port sets.
    #[error(
        "policy {policy} is not enforced for {direction} on pod {pod} ({endpoint}): the pod's \
         {direction} rules would need more than {MAX_RULES} distinct port sets; traffic only it \
         allows is denied"
    )]
    RuleLimit {
        /// The refused policy.
        policy: PolicyKey,
        /// The endpoint's pod.
        pod: PodKey,
        /// The endpoint.
        endpoint: EndpointId,
        /// The direction.
        direction: Direction,
    },
}

/// Map contents and what could not be enforced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// The map entries.
    pub maps: PolicyMaps,
    /// Policies refused for some endpoint-direction.
    pub errors: Vec<CompileError>,
}

impl Compiled {
    /// Adds another endpoint's result.
    pub fn extend(&mut self, other: &Compiled) {
        self.maps.extend(&other.maps);
        self.errors.extend(other.errors.iter().cloned());
    }
}

/// Compiles the maps of every endpoint in `endpoints` (local pods and their ids). An endpoint
/// whose pod `world` does not know gets no entries (open) until the pod is known.
pub fn compile(world: &World, endpoints: &BTreeMap<PodKey, EndpointId>) -> Compiled {
    let mut out = Compiled::default();
    let mut cache = RuleCache::default();
    for (pod, id) in endpoints {
        out.extend(&compile_endpoint_with(world, pod, *id, &mut cache));
    }
    out
}

/// Compiles the entries of one endpoint.
pub fn compile_endpoint(world: &World, pod: &PodKey, endpoint: EndpointId) -> Compiled {
    compile_endpoint_with(world, pod, endpoint, &mut RuleCache::default())
}

/// Compiles the entries of one endpoint, reusing what `cache` resolved for other endpoints of
/// the same world.
pub(crate) fn compile_endpoint_with(
    world: &World,
    pod: &PodKey,
    endpoint: EndpointId,
    cache: &mut RuleCache,
) -> Compiled {
    let mut out = Compiled::default();
    let Some(pod) = world.pods.get(pod) else {
        return out;
    };
    for direction in Direction::ALL {
        compile_direction(world, pod, endpoint, direction, cache, &mut out);
    }
    out
}

/// What one world's rules resolve to, shared by the endpoints they select: selectors are matched
/// against every pod once per rule, not once per rule and endpoint. Valid for one world only.
#[derive(Default)]
pub(crate) struct RuleCache {
    /// (policy, direction, rule index) → the rule's peer set.
    peers: HashMap<(PolicyKey, Direction, usize), Vec<PeerItem>>,
    /// (policy, direction, rule index) → its bit rules, for rules whose bit rules do not depend
    /// on the endpoint (all but ingress rules with named ports).
    bit_rules: HashMap<(PolicyKey, Direction, usize), Vec<BitRule>>,
}

impl RuleCache {
    fn bit_rules(
        &mut self,
        world: &World,
        policy: &Policy,
        direction: Direction,
        index: usize,
        pod: &Pod,
    ) -> Vec<BitRule> {
        let rule = &policy.rules(direction)[index];
        let key = (policy.key.clone(), direction, index);
        if let Some(rules) = self.bit_rules.get(&key) {
            return rules.clone();
        }
        let peers = self
            .peers
            .entry(key.clone())
            .or_insert_with(|| rule_peers(world, policy, rule))
            .clone();
        let rules = bit_rules(world, rule, peers, pod, direction);
        let per_endpoint = direction == Direction::Ingress
            && rule
                .ports
                .iter()
                .any(|p| matches!(p.port, PortSpec::Named(_)));
        if !per_endpoint {
            self.bit_rules.insert(key, rules.clone());
        }
        rules
    }
}

/// One element of a bit rule's peer set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PeerItem {
    /// Every address of both families.
    Any,
    /// A block (normalised) minus its excepts.
    Block { cidr: IpNet, except: Vec<IpNet> },
    /// One address.
    Host(IpAddr),
}

impl PeerItem {
    /// Whether the item contains every address of `prefix` (same family as `prefix`).
    fn contains(&self, prefix: &IpNet) -> bool {
        match self {
            PeerItem::Any => true,
            PeerItem::Block { cidr, except } => {
                cidr.contains(prefix) && !except.iter().any(|e| e.contains(prefix))
            }
            PeerItem::Host(address) => host_prefix(*address) == *prefix,
        }
    }

    fn contains_address(&self, address: IpAddr) -> bool {
        self.contains(&host_prefix(address))
    }
}

fn host_prefix(address: IpAddr) -> IpNet {
    IpNet::from(address)
}

/// A product of peers and ports.
#[derive(Clone)]
struct BitRule {
    peers: Vec<PeerItem>,
    ports: PortSet,
}

fn compile_direction(
    world: &World,
    pod: &Pod,
    endpoint: EndpointId,
    direction: Direction,
    cache: &mut RuleCache,
    out: &mut Compiled,
) {
    let policies: Vec<&Policy> = world
        .policies
        .values()
        .filter(|p| {
            p.key.namespace == pod.key.namespace
                && p.applies_to(direction)
                && p.pod_selector.matches(&pod.labels)
        })
        .collect();
    if policies.is_empty() {
        return;
    }
    // Port set → union of peers; one bit per port set.
    let mut groups: BTreeMap<PortSet, BTreeSet<PeerItem>> = BTreeMap::new();
    for policy in policies {
        let mut contribution: BTreeMap<PortSet, BTreeSet<PeerItem>> = BTreeMap::new();
        for index in 0..policy.rules(direction).len() {
            for bit_rule in cache.bit_rules(world, policy, direction, index, pod) {
                if bit_rule.peers.is_empty() || bit_rule.ports.is_empty() {
                    continue;
                }
                contribution
                    .entry(bit_rule.ports)
                    .or_default()
                    .extend(bit_rule.peers);
            }
        }
        let new_port_sets = contribution
            .keys()
            .filter(|ports| !groups.contains_key(*ports))
            .count();
        if groups.len() + new_port_sets > MAX_RULES {
            out.errors.push(CompileError::RuleLimit {
                policy: policy.key.clone(),
                pod: pod.key.clone(),
                endpoint,
                direction,
            });
            continue;
        }
        for (ports, peers) in contribution {
            groups.entry(ports).or_default().extend(peers);
        }
    }
    let rules: Vec<(u64, &PortSet, &BTreeSet<PeerItem>)> = groups
        .iter()
        .enumerate()
        .map(|(i, (ports, peers))| (1u64 << i, ports, peers))
        .collect();
    let dir = direction_byte(direction);
    out.maps.isolation.insert(
        IsolationKey {
            endpoint: endpoint.0,
            direction: dir,
            reserved: [0; 3],
        },
        IsolationValue {
            // At most MAX_RULES (64).
            rules: rules.len() as u32,
        },
    );
    for (prefix, bits) in peer_entries(&rules) {
        let prefix_len = PEER_KEY_FIXED_BITS + u32::from(prefix.prefix_len());
        match prefix.network() {
            IpAddr::V4(address) => {
                let key = PeerKeyV4 {
                    prefix_len,
                    endpoint: endpoint.0,
                    direction: dir,
                    reserved: [0; 3],
                    address: address.octets(),
                };
                out.maps.peer_v4.insert(key, RuleBits { bits });
            }
            IpAddr::V6(address) => {
                let key = PeerKeyV6 {
                    prefix_len,
                    endpoint: endpoint.0,
                    direction: dir,
                    reserved: [0; 3],
                    address: address.octets(),
                };
                out.maps.peer_v6.insert(key, RuleBits { bits });
            }
        }
    }
    for (prefix, bits) in port_entries(&rules) {
        let key = PortKey {
            prefix_len: PORT_KEY_FIXED_BITS + u32::from(prefix.len),
            endpoint: endpoint.0,
            direction: dir,
            protocol: prefix.protocol(),
            port: prefix.port().to_be_bytes(),
        };
        out.maps.ports.insert(key, RuleBits { bits });
    }
}

/// The peer-trie entries of `rules` (both families).
fn peer_entries(rules: &[(u64, &PortSet, &BTreeSet<PeerItem>)]) -> BTreeMap<IpNet, u64> {
    let mut inserted = BTreeSet::new();
    let mut any_bits = 0u64;
    let mut host_bits: HashMap<IpNet, u64> = HashMap::new();
    let mut blocks: Vec<(u64, &IpNet, &[IpNet])> = Vec::new();
    for (bit, _, peers) in rules {
        for item in *peers {
            match item {
                PeerItem::Any => {
                    any_bits |= bit;
                    inserted.insert(IpNet::V4(Default::default()));
                    inserted.insert(IpNet::V6(Default::default()));
                }
                PeerItem::Block { cidr, except } => {
                    blocks.push((*bit, cidr, except));
                    inserted.insert(*cidr);
                    inserted.extend(except.iter().copied());
                }
                PeerItem::Host(address) => {
                    let prefix = host_prefix(*address);
                    *host_bits.entry(prefix).or_default() |= bit;
                    inserted.insert(prefix);
                }
            }
        }
    }
    lpm_entries(&inserted, |prefix| {
        let mut bits = any_bits | host_bits.get(prefix).copied().unwrap_or(0);
        for (bit, cidr, except) in &blocks {
            if cidr.contains(prefix) && !except.iter().any(|e| e.contains(prefix)) {
                bits |= bit;
            }
        }
        bits
    })
}

/// The port-trie entries of `rules`.
fn port_entries(rules: &[(u64, &PortSet, &BTreeSet<PeerItem>)]) -> BTreeMap<PortPrefix, u64> {
    let per_rule: Vec<(u64, Vec<PortPrefix>)> = rules
        .iter()
        .map(|(bit, ports, _)| (*bit, ports.prefixes()))
        .collect();
    let inserted: BTreeSet<PortPrefix> = per_rule
        .iter()
        .flat_map(|(_, prefixes)| prefixes.iter().copied())
        .collect();
    lpm_entries(&inserted, |prefix| {
        per_rule
            .iter()
            .filter(|(_, prefixes)| prefixes.iter().any(|p| p.contains(prefix)))
            .fold(0, |bits, (bit, _)| bits | bit)
    })
}

/// The bit rules of one policy rule with peer set `peers` for endpoint `pod` in `direction`.
fn bit_rules(
    world: &World,
    rule: &Rule,
    peers: Vec<PeerItem>,
    pod: &Pod,
    direction: Direction,
) -> Vec<BitRule> {
    if rule.ports.is_empty() {
        return vec![BitRule {
            peers,
            ports: PortSet::all(),
        }];
    }
    let mut numeric = Vec::new();
    let mut named = Vec::new();
    for port in &rule.ports {
        let protocol = port.protocol.number();
        match &port.port {
            PortSpec::Any => {
                numeric.push((port_point(protocol, 0), port_point(protocol, u16::MAX)))
            }
            PortSpec::Range { start, end } => {
                numeric.push((port_point(protocol, *start), port_point(protocol, *end)));
            }
            PortSpec::Named(name) => named.push((port.protocol, name.as_str())),
        }
    }
    let resolve = |serving: &Pod| resolve_on(&named, |name| serving.named_ports.get(name).copied());
    match direction {
        Direction::Ingress => {
            numeric.extend(resolve(pod));
            vec![BitRule {
                peers,
                ports: PortSet::from_ranges(numeric),
            }]
        }
        Direction::Egress => {
            let mut out = vec![BitRule {
                peers: peers.clone(),
                ports: PortSet::from_ranges(numeric),
            }];
            if named.is_empty() {
                return out;
            }
            // Resolution → the addresses of the rule's peers that resolve that way.
            let mut by_resolution: BTreeMap<PortSet, Vec<PeerItem>> = BTreeMap::new();
            for serving in world.pods.values() {
                let ports = PortSet::from_ranges(resolve(serving));
                if ports.is_empty() {
                    continue;
                }
                let hosts = serving
                    .addresses
                    .iter()
                    .filter(|a| peers.iter().any(|item| item.contains_address(**a)))
                    .map(|a| PeerItem::Host(*a));
                by_resolution.entry(ports).or_default().extend(hosts);
            }
            // Other nodes' pods: resolved once per identity.
            let resolutions: Vec<Option<PortSet>> = (0..world.remote.id_bound())
                .map(|i| {
                    let identity = world.remote.get(IdentityId(i as u32))?;
                    let ports =
                        PortSet::from_ranges(resolve_on(&named, |name| identity.named_port(name)));
                    (!ports.is_empty()).then_some(ports)
                })
                .collect();
            for (address, id) in world.remote.entries() {
                let Some(Some(ports)) = resolutions.get(id.0 as usize) else {
                    continue;
                };
                if peers.iter().any(|item| item.contains_address(address)) {
                    by_resolution
                        .entry(ports.clone())
                        .or_default()
                        .push(PeerItem::Host(address));
                }
            }
            out.extend(
                by_resolution
                    .into_iter()
                    .map(|(ports, peers)| BitRule { peers, ports }),
            );
            out
        }
    }
}

/// The peer set of a rule: every address for an empty list, else the union of its peers.
fn rule_peers(world: &World, policy: &Policy, rule: &Rule) -> Vec<PeerItem> {
    if rule.peers.is_empty() {
        return vec![PeerItem::Any];
    }
    let mut out = Vec::new();
    for peer in &rule.peers {
        match peer {
            Peer::IpBlock { cidr, except } => out.push(PeerItem::Block {
                cidr: cidr.trunc(),
                except: except.iter().map(IpNet::trunc).collect(),
            }),
            Peer::Pods {
                namespace_selector,
                pod_selector,
            } => {
                for candidate in world.pods.values() {
                    if pod_peer_selects(
                        world,
                        policy,
                        namespace_selector.as_ref(),
                        pod_selector.as_ref(),
                        candidate,
                    ) {
                        out.extend(candidate.addresses.iter().map(|a| PeerItem::Host(*a)));
                    }
                }
                // Other nodes' pods: each identity matched once, then its addresses taken.
                let selected: Vec<bool> = (0..world.remote.id_bound())
                    .map(|i| {
                        world
                            .remote
                            .get(IdentityId(i as u32))
                            .is_some_and(|identity| {
                                peer_selects(
                                    world,
                                    policy,
                                    namespace_selector.as_ref(),
                                    pod_selector.as_ref(),
                                    identity.namespace(),
                                    identity.labels(),
                                )
                            })
                    })
                    .collect();
                if selected.contains(&true) {
                    out.extend(
                        world
                            .remote
                            .entries()
                            .filter(|(_, id)| selected[id.0 as usize])
                            .map(|(address, _)| PeerItem::Host(address)),
                    );
                }
            }
        }
    }
    out
}

/// Whether a pod peer (`namespaceSelector` / `podSelector`) of `policy` selects `candidate`.
pub(crate) fn pod_peer_selects(
    world: &World,
    policy: &Policy,
    namespace_selector: Option<&crate::model::LabelSelector>,
    pod_selector: Option<&crate::model::LabelSelector>,
    candidate: &Pod,
) -> bool {
    peer_selects(
        world,
        policy,
        namespace_selector,
        pod_selector,
        &candidate.key.namespace,
        candidate.labels.view(),
    )
}

/// Whether a pod peer (`namespaceSelector` / `podSelector`) of `policy` selects a pod of
/// `namespace` labelled `labels` (a local pod, or another node's pod by its identity).
pub(crate) fn peer_selects(
    world: &World,
    policy: &Policy,
    namespace_selector: Option<&crate::model::LabelSelector>,
    pod_selector: Option<&crate::model::LabelSelector>,
    namespace: &Name,
    labels: LabelsView<'_>,
) -> bool {
    let namespace_ok = match namespace_selector {
        None => *namespace == policy.key.namespace,
        Some(selector) => selector.matches(namespace_labels(world, namespace)),
    };
    namespace_ok && pod_selector.is_none_or(|s| s.matches(&labels))
}

/// The named ports of `named` (protocol, name) that the serving pod's (`port`: its port of a
/// name) resolve, as port ranges of one port each.
fn resolve_on(
    named: &[(Protocol, &str)],
    port: impl Fn(&str) -> Option<NamedPort>,
) -> Vec<(u32, u32)> {
    named
        .iter()
        .filter_map(|(protocol, name)| {
            let port = port(name)?;
            (port.protocol == *protocol).then(|| {
                let point = port_point(protocol.number(), port.number);
                (point, point)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
