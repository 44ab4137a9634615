//! The Kubernetes objects a run applies, generated as multi-document YAML (JSON documents
//! separated by `---`; JSON is YAML): the bench's namespaces and pods, the policy set of
//! `--policies N` and the flip policy of the enforcement measurement. Pure: no I/O.
//!
//! The layout, chosen so that every generated policy is real work for the compiler and the
//! maps but none of them changes what the bench measures:
//!
//! - namespace `pb-a` (`team=a`): the clients `client-n1`, `client-n2` (`role=client`);
//! - namespace `pb-b` (`team=b`): the servers `server-n1`, `server-n2` (`role=server`), which
//!   serve [`PROBE_PORT`] and [`FLIP_PORT`]; iperf3 is started by the bench on [`IPERF_PORT`];
//! - namespace `pb-x` (`team=x`): `intruder-n1` (`role=intruder`), the denied source;
//! - namespaces `pb-g0`…: generated policies' homes, labelled `gen=K`, with no pods.
//!
//! The policy set holds `default-deny` (every pod of `pb-b`, ingress), `allow-clients` (the
//! clients to the servers on the iperf and probe ports), `clients-egress` (the clients'
//! egress to `team=b`, so the clients are egress-isolated and `from_pod` checks them too) and
//! generated ones up to N: four in ten select the servers and one in ten the clients (their
//! peers are labels and namespaces no pod has, the intruder's namespace and CIDRs, on ports the
//! bench does not use), the others select nobody in other namespaces, both directions. The flip policy opens [`FLIP_PORT`] from the clients (`allow`) or from
//! nobody (`deny`): both are `apply`s of the same object.

use serde_json::{json, Value};

/// Where the iperf3 server listens (started by the bench, not declared in the Pod).
pub(crate) const IPERF_PORT: u16 = 5201;
/// A port every server pod serves (TCP), allowed from the clients by the policy set.
pub(crate) const PROBE_PORT: u16 = 8080;
/// The port the flip policy opens and closes (TCP, served by the servers).
pub(crate) const FLIP_PORT: u16 = 9090;
/// Namespace of the clients.
pub(crate) const NS_CLIENTS: &str = "pb-a";
/// Namespace of the servers.
pub(crate) const NS_SERVERS: &str = "pb-b";
/// Namespace of the denied source.
pub(crate) const NS_INTRUDER: &str = "pb-x";
/// How many namespaces generated policies spread over (besides the bench's own).
pub(crate) const GENERATED_NAMESPACES: usize = 6;
/// Policies of the set that are not generated (`default-deny`, `allow-clients`,
/// `clients-egress`).
pub(crate) const FIXED_POLICIES: usize = 3;
/// Name of the flip policy (namespace [`NS_SERVERS`]).
pub(crate) const FLIP_POLICY: &str = "flip";

/// One bench pod: namespace, name, lab node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BenchPod {
    pub(crate) namespace: &'static str,
    pub(crate) name: &'static str,
    pub(crate) node: &'static str,
}

impl BenchPod {
    /// `namespace/name`, as `lab probe` names pods.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

pub(crate) const CLIENT_N1: BenchPod = BenchPod {
    namespace: NS_CLIENTS,
    name: "client-n1",
    node: "n1",
};
pub(crate) const CLIENT_N2: BenchPod = BenchPod {
    namespace: NS_CLIENTS,
    name: "client-n2",
    node: "n2",
};
pub(crate) const SERVER_N1: BenchPod = BenchPod {
    namespace: NS_SERVERS,
    name: "server-n1",
    node: "n1",
};
pub(crate) const SERVER_N2: BenchPod = BenchPod {
    namespace: NS_SERVERS,
    name: "server-n2",
    node: "n2",
};
pub(crate) const INTRUDER_N1: BenchPod = BenchPod {
    namespace: NS_INTRUDER,
    name: "intruder-n1",
    node: "n1",
};

/// Every bench pod.
pub(crate) const PODS: [BenchPod; 5] = [CLIENT_N1, CLIENT_N2, SERVER_N1, SERVER_N2, INTRUDER_N1];

/// Joins documents into one multi-document YAML stream.
pub(crate) fn yaml_stream(docs: &[Value]) -> String {
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
        + "\n"
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels}})
}

fn role_of(pod: &BenchPod) -> &'static str {
    match pod.namespace {
        NS_CLIENTS => "client",
        NS_SERVERS => "server",
        _ => "intruder",
    }
}

fn pod(p: &BenchPod) -> Value {
    let mut ports = vec![json!({"name": "probe", "containerPort": PROBE_PORT, "protocol": "TCP"})];
    if p.namespace == NS_SERVERS {
        ports.push(json!({"name": "flip", "containerPort": FLIP_PORT, "protocol": "TCP"}));
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": p.name, "namespace": p.namespace,
                        "labels": {"role": role_of(p), "app": "policy-bench"}},
           "spec": {"nodeName": p.node,
                    "containers": [{"name": "main", "image": "none", "ports": ports}]}})
}

/// Namespaces (the bench's and the generated policies') and the bench pods.
pub(crate) fn setup_objects() -> Vec<Value> {
    let mut docs = vec![
        namespace(NS_CLIENTS, json!({"team": "a"})),
        namespace(NS_SERVERS, json!({"team": "b"})),
        namespace(NS_INTRUDER, json!({"team": "x"})),
    ];
    for k in 0..GENERATED_NAMESPACES {
        docs.push(namespace(
            &generated_namespace(k),
            json!({"gen": k.to_string()}),
        ));
    }
    docs.extend(PODS.iter().map(pod));
    docs
}

/// Name of the `k`-th generated namespace.
pub(crate) fn generated_namespace(k: usize) -> String {
    format!("pb-g{k}")
}

fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

fn tcp(port: u16) -> Value {
    json!({"protocol": "TCP", "port": port})
}

/// The fixed part of the set: default-deny for the servers, the clients allowed in on the iperf
/// and probe ports, and the clients' egress to the servers' namespace.
fn fixed_policies() -> Vec<Value> {
    vec![
        policy(
            NS_SERVERS,
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        policy(
            NS_SERVERS,
            "allow-clients",
            json!({"podSelector": {"matchLabels": {"role": "server"}},
                   "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                          "podSelector": {"matchLabels": {"role": "client"}}}],
                                "ports": [tcp(IPERF_PORT), tcp(PROBE_PORT)]}]}),
        ),
        policy(
            NS_CLIENTS,
            "clients-egress",
            json!({"podSelector": {"matchLabels": {"role": "client"}},
                   "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}),
        ),
    ]
}

/// A peer of a generated rule, varied with `i`: labels and namespaces no pod has, the
/// intruder's namespace (real addresses in the maps; the ports never include the measured
/// ones) and IPv4/IPv6 blocks outside the lab's networks.
fn generated_peer(i: usize) -> Value {
    let k = i % GENERATED_NAMESPACES;
    match i % 6 {
        0 => json!({"podSelector": {"matchLabels": {"tier": format!("gen-{i}")}}}),
        1 => json!({"namespaceSelector": {"matchLabels": {"gen": k.to_string()}}}),
        2 => json!({"namespaceSelector": {"matchLabels": {"gen": k.to_string()}},
                    "podSelector": {"matchExpressions": [
                        {"key": "role", "operator": "In", "values": ["client", "server"]}]}}),
        3 => json!({"ipBlock": {"cidr": format!("172.{}.{}.0/24", 16 + i % 16, i % 256),
                                "except": [format!("172.{}.{}.128/25", 16 + i % 16, i % 256)]}}),
        4 => json!({"namespaceSelector": {"matchLabels": {"team": "x"}}}),
        _ => json!({"ipBlock": {"cidr": format!("fd00:dead:{:x}::/64", i)}}),
    }
}

/// Distinct port sets among the generated policies that select a bench pod: well under the
/// compiler's 64 per endpoint-direction (`MAX_RULES`), as a real workload would be.
pub(crate) const SELECTING_PORT_SETS: usize = 16;

/// Ports of a generated rule, one of [`SELECTING_PORT_SETS`] sets for `i % 16`, else varied
/// with `i`: never the iperf, probe or flip port (all below 10000).
fn generated_ports(i: usize) -> Value {
    let base = 10_000 + (i * 7) % 10_000;
    match i % 4 {
        0 => json!([{"protocol": "TCP", "port": base}]),
        1 => json!([{"protocol": "UDP", "port": base}, {"protocol": "TCP", "port": base + 1}]),
        2 => json!([{"protocol": "TCP", "port": 20_000 + i % 1000, "endPort": 20_010 + i % 1000}]),
        _ => json!([{"protocol": "SCTP", "port": base}]),
    }
}

/// The `i`-th generated policy. Four in ten live in the servers' namespace and select them
/// (matchLabels or matchExpressions; ingress), one in ten selects the clients (egress), the
/// rest live in the generated namespaces, selecting pods that do not exist, ingress, egress
/// or both.
fn generated_policy(i: usize) -> Value {
    let name = format!("gen-{i:04}");
    let peers = json!([generated_peer(i), generated_peer(i + 1)]);
    let pooled_ports = generated_ports(i % SELECTING_PORT_SETS);
    match i % 10 {
        0..=3 => {
            let selector = if i.is_multiple_of(2) {
                json!({"matchLabels": {"role": "server"}})
            } else {
                json!({"matchExpressions": [
                    {"key": "role", "operator": "In", "values": ["server", "other"]},
                    {"key": "app", "operator": "Exists"}]})
            };
            policy(
                NS_SERVERS,
                &name,
                json!({"podSelector": selector, "policyTypes": ["Ingress"],
                       "ingress": [{"from": peers, "ports": pooled_ports}]}),
            )
        }
        4 => policy(
            NS_CLIENTS,
            &name,
            json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": peers, "ports": pooled_ports}]}),
        ),
        _ => {
            let ns = generated_namespace(i % GENERATED_NAMESPACES);
            let selector = json!({"matchLabels": {"app": format!("gen-{}", i % 17)}});
            let spec = match i % 3 {
                0 => json!({"podSelector": selector, "policyTypes": ["Ingress"],
                            "ingress": [{"from": peers, "ports": generated_ports(i)}]}),
                1 => json!({"podSelector": selector, "policyTypes": ["Egress"],
                            "egress": [{"to": peers, "ports": generated_ports(i)}]}),
                _ => json!({"podSelector": selector, "policyTypes": ["Ingress", "Egress"],
                            "ingress": [{"from": peers}],
                            "egress": [{"to": [generated_peer(i + 2)],
                                        "ports": generated_ports(i)}]}),
            };
            policy(&ns, &name, spec)
        }
    }
}

/// The policy set of `--policies n` (at least the fixed ones): the fixed policies, then
/// generated ones up to `n`.
pub(crate) fn policy_set(n: usize) -> Vec<Value> {
    let mut docs = fixed_policies();
    docs.extend((0..n.saturating_sub(FIXED_POLICIES)).map(generated_policy));
    docs
}

/// The flip policy: [`FLIP_PORT`] on the servers open to the clients (`allow`) or to a label
/// no pod has (deny).
pub(crate) fn flip_policy(allow: bool) -> Value {
    let role = if allow { "client" } else { "nobody" };
    policy(
        NS_SERVERS,
        FLIP_POLICY,
        json!({"podSelector": {"matchLabels": {"role": "server"}},
               "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                      "podSelector": {"matchLabels": {"role": role}}}],
                            "ports": [tcp(FLIP_PORT)]}]}),
    )
}
