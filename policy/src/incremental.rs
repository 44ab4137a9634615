//! The incremental compiler: holds the world, the node's local endpoints and each endpoint's
//! compiled entries; takes one change at a time and returns the map delta.
//!
//! A change recompiles only the endpoints it can affect, and the delta holds only entries that
//! differ, so an endpoint whose entries stay the same is never touched:
//! * a policy added, changed or removed: the endpoints of its namespace its old or new
//!   `podSelector` selects;
//! * a pod added, changed or removed: the pod itself (if local), and the endpoints selected by
//!   policies that can refer to it — a pod peer selecting its old or new version, or egress
//!   named ports (resolved on destinations, so any pod's ports can matter);
//! * another node's pods replaced ([`Change::SetNodeEndpoints`]): the same, once per identity
//!   whose addresses changed (not once per pod);
//! * a namespace added, relabelled or removed: the endpoints selected by policies with a
//!   `namespaceSelector` matching its old or new labels;
//! * an endpoint attached or detached: that endpoint.
//!
//! After any sequence of changes the maps equal a full [`crate::compile()`] of the resulting world
//! (property-tested), since every endpoint's entries are a function of the world alone.
//!
//! Memory: a `BTreeMap` grown one insert at a time keeps its nodes a little over half full
//! (about 76 bytes an entry for the world's pods, whose entries are 40), where one built from a
//! sorted sequence fills them (42). Once a quarter of the pods were added since the last time,
//! the pods' map is rebuilt that way ([`COMPACT_MIN_PODS`] and up): the work stays linear in
//! the pods added, and at 150,000 remote pods it saves about 5 MiB.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::compile::{compile_endpoint_with, peer_selects, CompileError, Compiled, RuleCache};
use crate::ipcache::RemotePod;
use crate::maps::{EndpointId, MapDelta, PolicyMaps};
use crate::model::{
    Direction, LabelsView, Name, Namespace, Peer, Pod, PodKey, Policy, PolicyKey, PortSpec, World,
};

/// One change to what policy depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A namespace was added or its labels changed.
    UpsertNamespace(Namespace),
    /// A namespace was deleted.
    RemoveNamespace(String),
    /// A pod was added or changed (labels, addresses, named ports, node).
    UpsertPod(Pod),
    /// A pod was deleted.
    RemovePod(PodKey),
    /// Another node's pods are exactly these (addresses and identity each), replacing what
    /// was known of that node ([`crate::ipcache`]); an empty list forgets the node.
    SetNodeEndpoints {
        /// The node.
        node: String,
        /// Its pods.
        pods: Vec<RemotePod>,
    },
    /// A NetworkPolicy was added or changed.
    UpsertPolicy(Policy),
    /// A NetworkPolicy was deleted.
    RemovePolicy(PolicyKey),
    /// A local pod's interface came up with this endpoint id (its host-side veth's ifindex;
    /// distinct pods must have distinct ids). Attaching again with another id moves the entries.
    AttachEndpoint {
        /// The pod.
        pod: PodKey,
        /// Its endpoint id.
        endpoint: EndpointId,
    },
    /// A local pod's interface went away.
    DetachEndpoint(PodKey),
}

/// Fewest pods for which the pods' map is rebuilt packed (see the module doc).
pub const COMPACT_MIN_PODS: usize = 1024;

/// The incremental compiler's state. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct Compiler {
    world: World,
    endpoints: BTreeMap<PodKey, EndpointId>,
    compiled: BTreeMap<PodKey, Compiled>,
    /// Pods added to the world since its pods' map was last rebuilt packed.
    pods_added: usize,
}

impl Compiler {
    /// An empty world with no endpoints (and so no entries).
    pub fn new() -> Self {
        Self::default()
    }

    /// The world as of the last change.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The local endpoints as of the last change.
    pub fn endpoints(&self) -> &BTreeMap<PodKey, EndpointId> {
        &self.endpoints
    }

    /// The full map contents.
    pub fn maps(&self) -> PolicyMaps {
        let mut maps = PolicyMaps::default();
        for compiled in self.compiled.values() {
            maps.extend(&compiled.maps);
        }
        maps
    }

    /// Policies currently refused for some endpoint-direction.
    pub fn errors(&self) -> Vec<CompileError> {
        self.compiled
            .values()
            .flat_map(|c| c.errors.iter().cloned())
            .collect()
    }

    /// Applies `change` and returns how the maps change.
    pub fn apply(&mut self, change: Change) -> MapDelta {
        let affected = match change {
            Change::UpsertPolicy(policy) => {
                let mut affected = self.selected_by(&policy);
                if let Some(old) = self.world.policies.insert(policy.key.clone(), policy) {
                    affected.extend(self.selected_by(&old));
                }
                affected
            }
            Change::RemovePolicy(key) => match self.world.policies.remove(&key) {
                Some(old) => self.selected_by(&old),
                None => BTreeSet::new(),
            },
            Change::UpsertPod(pod) => {
                let key = pod.key.clone();
                let mut affected = self.referring_to(&pod);
                match self.world.pods.insert(key.clone(), Arc::new(pod)) {
                    Some(old) => affected.extend(self.referring_to(&old)),
                    None => self.pod_added(),
                }
                affected.insert(key);
                affected
            }
            Change::SetNodeEndpoints { node, pods } => {
                let mut affected = BTreeSet::new();
                for identity in self.world.remote.set_node(&node, pods) {
                    affected
                        .extend(self.referring_to_peer(identity.namespace(), identity.labels()));
                }
                affected
            }
            Change::RemovePod(key) => {
                let mut affected = BTreeSet::from([key.clone()]);
                if let Some(old) = self.world.pods.remove(&key) {
                    affected.extend(self.referring_to(&old));
                }
                affected
            }
            Change::UpsertNamespace(namespace) => {
                let mut affected = self.selecting_namespace(&namespace.labels);
                let name = namespace.name.clone();
                // An unknown namespace had no labels.
                let old_labels = self
                    .world
                    .namespaces
                    .insert(name, namespace)
                    .map(|old| old.labels)
                    .unwrap_or_default();
                affected.extend(self.selecting_namespace(&old_labels));
                affected
            }
            Change::RemoveNamespace(name) => match self.world.namespaces.remove(&name) {
                Some(old) => {
                    let mut affected = self.selecting_namespace(&old.labels);
                    affected.extend(self.selecting_namespace(&Default::default()));
                    affected
                }
                None => BTreeSet::new(),
            },
            Change::AttachEndpoint { pod, endpoint } => {
                self.endpoints.insert(pod.clone(), endpoint);
                BTreeSet::from([pod])
            }
            Change::DetachEndpoint(pod) => {
                self.endpoints.remove(&pod);
                BTreeSet::from([pod])
            }
        };
        let mut delta = MapDelta::default();
        let mut cache = RuleCache::default();
        for pod in affected {
            delta.merge(self.recompile(&pod, &mut cache));
        }
        delta
    }

    /// Counts a pod added; rebuilds the pods' map packed once a quarter of it was added since
    /// the last time (see the module doc).
    fn pod_added(&mut self) {
        self.pods_added += 1;
        let pods = self.world.pods.len();
        if pods >= COMPACT_MIN_PODS && self.pods_added >= pods / 4 {
            self.world.pods = std::mem::take(&mut self.world.pods).packed();
            self.pods_added = 0;
        }
    }

    /// Recompiles one endpoint (or drops its entries if it is no longer attached).
    fn recompile(&mut self, pod: &PodKey, cache: &mut RuleCache) -> MapDelta {
        let new = match self.endpoints.get(pod) {
            Some(id) => compile_endpoint_with(&self.world, pod, *id, cache),
            None => Compiled::default(),
        };
        let old = self.compiled.remove(pod).unwrap_or_default();
        let delta = MapDelta::between(&old.maps, &new.maps);
        if new != Compiled::default() {
            self.compiled.insert(pod.clone(), new);
        }
        delta
    }

    /// Local endpoints `policy` selects (whatever its types).
    fn selected_by(&self, policy: &Policy) -> BTreeSet<PodKey> {
        self.endpoints
            .keys()
            .filter(|key| key.namespace == policy.key.namespace)
            .filter(|key| {
                self.world
                    .pods
                    .get(key)
                    .is_some_and(|pod| policy.pod_selector.matches(&pod.labels))
            })
            .cloned()
            .collect()
    }

    /// Local endpoints selected by a policy whose rules can refer to `pod` as a peer.
    fn referring_to(&self, pod: &Pod) -> BTreeSet<PodKey> {
        self.referring_to_peer(&pod.key.namespace, pod.labels.view())
    }

    /// Local endpoints selected by a policy whose rules can refer to a pod of `namespace`
    /// labelled `labels` as a peer (by selector, or by an egress named port, which any pod
    /// may serve).
    fn referring_to_peer(&self, namespace: &Name, labels: LabelsView<'_>) -> BTreeSet<PodKey> {
        let mut out = BTreeSet::new();
        for policy in self.world.policies.values() {
            let by_selector = Direction::ALL.iter().any(|d| {
                policy.rules(*d).iter().any(|rule| {
                    rule.peers.iter().any(|peer| match peer {
                        Peer::Pods {
                            namespace_selector,
                            pod_selector,
                        } => peer_selects(
                            &self.world,
                            policy,
                            namespace_selector.as_ref(),
                            pod_selector.as_ref(),
                            namespace,
                            labels,
                        ),
                        Peer::IpBlock { .. } => false,
                    })
                })
            });
            let by_named_port = policy.egress.iter().any(|rule| {
                rule.ports
                    .iter()
                    .any(|p| matches!(p.port, PortSpec::Named(_)))
            });
            if by_selector || by_named_port {
                out.extend(self.selected_by(policy));
            }
        }
        out
    }

    /// Local endpoints selected by a policy with a `namespaceSelector` matching `labels`.
    fn selecting_namespace(&self, labels: &crate::model::Labels) -> BTreeSet<PodKey> {
        let mut out = BTreeSet::new();
        for policy in self.world.policies.values() {
            let refers = Direction::ALL.iter().any(|d| {
                policy.rules(*d).iter().any(|rule| {
                    rule.peers.iter().any(|peer| {
                        matches!(peer, Peer::Pods { namespace_selector: Some(s), .. } if s.matches(labels))
                    })
                })
            });
            if refers {
                out.extend(self.selected_by(policy));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e_model::{self, from, namespaces, policy};
    use crate::model::LabelSelector;

    /// A model world built change by change, with x/a and y/a local.
    fn compiler() -> Compiler {
        let world = e2e_model::world();
        let mut compiler = Compiler::new();
        for ns in world.namespaces.values() {
            compiler.apply(Change::UpsertNamespace(ns.clone()));
        }
        for pod in world.pods.values() {
            compiler.apply(Change::UpsertPod((**pod).clone()));
        }
        compiler.apply(Change::AttachEndpoint {
            pod: PodKey::new("x", "a"),
            endpoint: EndpointId(1),
        });
        compiler.apply(Change::AttachEndpoint {
            pod: PodKey::new("y", "a"),
            endpoint: EndpointId(2),
        });
        compiler
    }

    #[test]
    fn the_pods_map_rebuilt_packed_holds_the_same_pods() {
        let mut compiler = compiler();
        let template = compiler.world().pods[&PodKey::new("x", "b")].clone();
        for i in 0..3 * COMPACT_MIN_PODS {
            let mut pod = (*template).clone();
            pod.key = PodKey::new("x", format!("b-{i}"));
            let (hi, lo) = ((i / 250) as u8, (i % 250) as u8);
            pod.addresses = vec![std::net::IpAddr::from([10, 9, hi, lo])];
            compiler.apply(Change::UpsertPod(pod));
        }
        assert!(
            compiler.pods_added < compiler.world().pods.len() / 4,
            "it was rebuilt"
        );
        assert!(compiler.world().pods.contains_key(&PodKey::new("x", "b-0")));
        assert!(compiler
            .world()
            .pods
            .contains_key(&PodKey::new("x", "b-3071")));
        // A policy taking every b-* as a peer compiles from the rebuilt map as from scratch.
        let mut p = policy("x", "from-b", LabelSelector::everything());
        p.ingress.push(from(vec![crate::model::Peer::Pods {
            namespace_selector: None,
            pod_selector: Some(LabelSelector::labels([("pod", "b")])),
        }]));
        compiler.apply(Change::UpsertPolicy(p));
        let full = crate::compile(compiler.world(), compiler.endpoints());
        assert_eq!(compiler.maps(), full.maps);
        assert!(
            compiler.maps().len() > 3 * COMPACT_MIN_PODS,
            "every b-* is a peer"
        );
    }

    #[test]
    fn policy_change_touches_only_selected_endpoints() {
        let mut compiler = compiler();
        assert!(compiler.maps().is_empty());
        let delta = compiler.apply(Change::UpsertPolicy(policy(
            "x",
            "deny",
            LabelSelector::everything(),
        )));
        assert_eq!(delta.endpoints(), [EndpointId(1)].into());
        assert_eq!(delta.isolation.upsert.len(), 1);
        let delta = compiler.apply(Change::RemovePolicy(PodKey::new("x", "deny")));
        assert_eq!(delta.isolation.delete.len(), 1);
        assert!(compiler.maps().is_empty());
    }

    #[test]
    fn namespace_removal_and_first_sight_count_as_labels_emptied_and_set() {
        let mut compiler = compiler();
        let mut y = compiler.world().namespaces["y"].clone();
        y.labels.insert("team".into(), "blue".into());
        compiler.apply(Change::UpsertNamespace(y.clone()));
        let mut p = policy("x", "not-blue", LabelSelector::everything());
        p.ingress.push(from(vec![namespaces(LabelSelector {
            match_labels: Default::default(),
            match_expressions: vec![crate::model::Requirement {
                key: "team".into(),
                operator: crate::model::Operator::NotIn(["blue".to_owned()].into()),
            }],
        })]));
        compiler.apply(Change::UpsertPolicy(p));
        for change in [
            Change::RemoveNamespace("y".into()),
            Change::UpsertNamespace(y),
        ] {
            let delta = compiler.apply(change);
            assert_eq!(delta.endpoints(), [EndpointId(1)].into());
            let full = crate::compile(compiler.world(), compiler.endpoints());
            assert_eq!(compiler.maps(), full.maps);
        }
    }

    #[test]
    fn namespace_relabel_reaches_policies_selecting_it() {
        let mut compiler = compiler();
        let mut p = policy("x", "from-y", LabelSelector::everything());
        p.ingress.push(from(vec![namespaces(LabelSelector::labels([(
            "team", "blue",
        )]))]));
        compiler.apply(Change::UpsertPolicy(p));
        let before = compiler.maps();
        let mut y = compiler.world().namespaces["y"].clone();
        y.labels.insert("team".into(), "blue".into());
        let delta = compiler.apply(Change::UpsertNamespace(y));
        assert_eq!(delta.endpoints(), [EndpointId(1)].into());
        assert_ne!(compiler.maps(), before);
        let full = crate::compile(compiler.world(), compiler.endpoints());
        assert_eq!(compiler.maps(), full.maps);
    }
}
