//! The policy world as the compiler and the reference evaluator see it: namespaces, pods and
//! NetworkPolicies (all of `networking.k8s.io/v1`), as plain validated values.
//!
//! The types say what the API means rather than how it is spelled: an absent and an empty rule
//! list are both "no rules" (a `Vec`), an absent and an empty `from`/`to`/`ports` are both
//! "everything" (an empty `Vec`), the protocol is never omitted (TCP is filled in by the
//! conversion), and `policyTypes` stays as written (`None` when not specified) so that its
//! defaulting is done by whoever evaluates it. Conversion from the Kubernetes objects lives in
//! [`crate::k8s`]; this module does no I/O and knows nothing of the BPF maps.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub use crate::intern::{LabelLookup, LabelSet, LabelsView, Name, SharedLabels};
pub use crate::ipcache::{Identity, IdentityId, RemoteEndpoints};
pub use crate::pods::Pods;

/// Labels of a namespace or pod.
pub type Labels = BTreeMap<String, String>;

/// The label the API server sets on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace: its name and labels (including `kubernetes.io/metadata.name`, which the API
/// server sets on every namespace; [`crate::k8s`] adds it when missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
    /// The namespace's labels.
    pub labels: Labels,
}

/// A pod's identity: namespace and name (shared strings: the world holds the key twice, and
/// every pod of a namespace names it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    /// The pod's namespace.
    pub namespace: Name,
    /// The pod's name.
    pub name: Name,
}

impl PodKey {
    /// The key of pod `name` in `namespace`.
    pub fn new(namespace: impl Into<Name>, name: impl Into<Name>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A NetworkPolicy's identity: namespace and name.
pub type PolicyKey = PodKey;

/// An L4 protocol a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP, IP protocol 6 (the default when a policy port omits the protocol).
    Tcp,
    /// UDP, IP protocol 17.
    Udp,
    /// SCTP, IP protocol 132.
    Sctp,
}

impl Protocol {
    /// The IP protocol number (the IPv4 `protocol` / IPv6 `next header` value).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol with IP protocol number `number`, if a policy can name it.
    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A named container port: what a policy's named port resolves to on the pod serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    /// The container port's protocol.
    pub protocol: Protocol,
    /// The container port's number.
    pub number: u16,
}

/// A pod as policy sees it. Host-network pods are not represented (they share the node's
/// address and are not selectable; [`crate::k8s`] leaves them out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Namespace and name.
    pub key: PodKey,
    /// The pod's labels, shared with the other pods carrying the same set.
    pub labels: SharedLabels,
    /// The pod's addresses: IPv4 and/or IPv6 (`status.podIPs`).
    pub addresses: Vec<IpAddr>,
    /// The node the pod runs on (`spec.nodeName`), empty while unscheduled.
    pub node: Name,
    /// Named container ports: name → protocol and number.
    pub named_ports: BTreeMap<String, NamedPort>,
}

/// A label selector (`matchLabels` and `matchExpressions`, ANDed). The empty selector matches
/// everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    /// `matchLabels`: each key must be present with exactly this value.
    pub match_labels: Labels,
    /// `matchExpressions`: each requirement must hold.
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label key the requirement is about.
    pub key: String,
    /// What must hold for that key.
    pub operator: Operator,
}

/// A `matchExpressions` operator with its values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// The label is present with one of these values (never empty).
    In(BTreeSet<String>),
    /// The label is absent or has none of these values (never empty).
    NotIn(BTreeSet<String>),
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// The selector matching everything (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector of `matchLabels` only.
    pub fn labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether `labels` satisfy every `matchLabels` entry and every requirement.
    pub fn matches<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.label(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        let value = labels.label(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A direction of traffic relative to the pod a policy selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic arriving at the selected pod (`ingress` rules, peers in `from`).
    Ingress,
    /// Traffic leaving the selected pod (`egress` rules, peers in `to`).
    Egress,
}

impl Direction {
    /// Both directions, ingress first.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// One peer of a rule (`from` / `to` entry).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods: `podSelector` and/or `namespaceSelector` (both present = both must match).
    /// `namespace_selector: None` means the policy's own namespace; `pod_selector: None` means
    /// every pod of the selected namespaces. The API rejects a peer with neither.
    Pods {
        /// `namespaceSelector`, if present.
        namespace_selector: Option<LabelSelector>,
        /// `podSelector`, if present.
        pod_selector: Option<LabelSelector>,
    },
    /// `ipBlock`: addresses in `cidr` and in none of `except` (pod addresses included).
    IpBlock {
        /// The block.
        cidr: IpNet,
        /// Sub-blocks excluded from this peer only (never a deny).
        except: Vec<IpNet>,
    },
}

/// Which ports a policy port entry admits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// Every port of the protocol (`port` omitted).
    Any,
    /// `port` (and `endPort`, inclusive) as numbers; `end == start` when there is no `endPort`.
    Range {
        /// The first port.
        start: u16,
        /// The last port (inclusive).
        end: u16,
    },
    /// A named port, resolved on the pod serving it (the destination) by name and protocol.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPort {
    /// The protocol (TCP when the API object omits it).
    pub protocol: Protocol,
    /// The port(s).
    pub port: PortSpec,
}

/// One ingress or egress rule: traffic from/to any of `peers` on any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress); empty = every peer, pod or not.
    pub peers: Vec<Peer>,
    /// `ports`; empty = every protocol and port.
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Namespace and name; the policy selects pods of this namespace only.
    pub key: PolicyKey,
    /// `podSelector`: the pods of the policy's namespace it applies to.
    pub pod_selector: LabelSelector,
    /// `policyTypes` as written; `None` (or empty in the API) means "not specified".
    pub policy_types: Option<BTreeSet<Direction>>,
    /// `ingress` rules (absent and empty are the same: no ingress traffic allowed by this policy).
    pub ingress: Vec<Rule>,
    /// `egress` rules (absent and empty are the same).
    pub egress: Vec<Rule>,
}

impl Policy {
    /// The directions this policy isolates its pods in: `policyTypes` when specified, else
    /// Ingress always and Egress when it has egress rules (the API server's defaulting).
    pub fn applies_to(&self, direction: Direction) -> bool {
        match &self.policy_types {
            Some(types) => types.contains(&direction),
            None => match direction {
                Direction::Ingress => true,
                Direction::Egress => !self.egress.is_empty(),
            },
        }
    }

    /// The rules of `direction`.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Everything policy depends on: namespaces, pods and policies, each keyed by its identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods by namespace and name, each shared (the flow collector's table of pods by address
    /// points at the same ones); held without a copy of the key beside each ([`Pods`]).
    pub pods: Pods,
    /// Policies by namespace and name.
    pub policies: BTreeMap<PolicyKey, Policy>,
    /// Other nodes' pods as address → identity entries, node by node, without pod objects
    /// ([`crate::ipcache`]). A pod is either here (a peer only) or in `pods`, not both.
    pub remote: RemoteEndpoints,
}

/// The labels of namespace `name`; a namespace the world does not know has none.
pub fn namespace_labels<'a>(world: &'a World, name: &str) -> &'a Labels {
    static EMPTY: Labels = BTreeMap::new();
    world.namespaces.get(name).map_or(&EMPTY, |ns| &ns.labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selector_operators() {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let req = |key: &str, operator| Requirement {
            key: key.to_owned(),
            operator,
        };
        let l = labels(&[("pod", "a"), ("tier", "web")]);
        assert!(req("pod", Operator::In(set(&["a", "b"]))).matches(&l));
        assert!(!req("pod", Operator::In(set(&["c"]))).matches(&l));
        assert!(!req("missing", Operator::In(set(&["a"]))).matches(&l));
        assert!(req("missing", Operator::NotIn(set(&["a"]))).matches(&l));
        assert!(!req("pod", Operator::NotIn(set(&["a"]))).matches(&l));
        assert!(req("tier", Operator::Exists).matches(&l));
        assert!(req("missing", Operator::DoesNotExist).matches(&l));
        assert!(LabelSelector::everything().matches(&Labels::new()));
        assert!(LabelSelector::labels([("pod", "a")]).matches(&l));
        assert!(!LabelSelector::labels([("pod", "a"), ("x", "y")]).matches(&l));
    }

    #[test]
    fn implied_policy_types() {
        let mut policy = Policy {
            key: PodKey::new("x", "p"),
            pod_selector: LabelSelector::everything(),
            policy_types: None,
            ingress: Vec::new(),
            egress: Vec::new(),
        };
        assert!(policy.applies_to(Direction::Ingress));
        assert!(!policy.applies_to(Direction::Egress));
        policy.egress.push(Rule::default());
        assert!(policy.applies_to(Direction::Egress));
        policy.policy_types = Some([Direction::Egress].into());
        assert!(!policy.applies_to(Direction::Ingress));
        assert!(policy.applies_to(Direction::Egress));
    }
}
