//! Conversion of API objects written as the API server returns them (JSON).

use serde_json::json;

use super::*;

fn policy(spec: serde_json::Value) -> Result<Policy, K8sError> {
    let object: networking::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "x"},
        "spec": spec,
    }))
    .expect("valid NetworkPolicy JSON");
    policy_from_k8s(&object)
}

#[test]
fn full_policy_converts() {
    let p = policy(json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{
            "from": [
                {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]},
                 "namespaceSelector": {}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
            ],
            "ports": [{"port": 80}, {"protocol": "UDP", "port": "dns"}, {"port": 1000, "endPort": 2000}, {"protocol": "SCTP"}]
        }],
        "egress": [{}]
    }))
    .expect("converts");
    assert_eq!(p.key, PodKey::new("x", "p"));
    assert_eq!(p.policy_types, None);
    assert!(p.applies_to(Direction::Egress));
    assert_eq!(p.egress, vec![Rule::default()]);
    let rule = &p.ingress[0];
    assert_eq!(rule.peers.len(), 2);
    assert_eq!(
        rule.ports,
        vec![
            PolicyPort {
                protocol: Protocol::Tcp,
                port: PortSpec::Range { start: 80, end: 80 }
            },
            PolicyPort {
                protocol: Protocol::Udp,
                port: PortSpec::Named("dns".into())
            },
            PolicyPort {
                protocol: Protocol::Tcp,
                port: PortSpec::Range {
                    start: 1000,
                    end: 2000
                }
            },
            PolicyPort {
                protocol: Protocol::Sctp,
                port: PortSpec::Any
            },
        ]
    );
}

#[test]
fn empty_policy_types_means_unspecified_and_empty_egress_implies_nothing() {
    let p = policy(json!({"podSelector": {}, "policyTypes": [], "egress": []})).expect("converts");
    assert_eq!(p.policy_types, None);
    assert!(p.applies_to(Direction::Ingress));
    assert!(!p.applies_to(Direction::Egress));
    let p = policy(json!({"podSelector": {}, "policyTypes": ["Egress"]})).expect("converts");
    assert!(!p.applies_to(Direction::Ingress));
    assert!(p.applies_to(Direction::Egress));
}

#[test]
fn errors_name_the_policy_and_the_field() {
    let err = policy(json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/33"]}}]}]}))
        .expect_err("invalid except");
    assert_eq!(
        err.to_string(),
        "NetworkPolicy x/p: spec.ingress[0].from[0].ipBlock.except[0] is not a valid CIDR: \"10.1.0.0/33\""
    );
    let err = policy(json!({"egress": [{"ports": [{"port": "http", "endPort": 90}]}]}))
        .expect_err("named endPort");
    assert!(
        err.to_string().contains("spec.egress[0].ports[0].endPort"),
        "{err}"
    );
    let err = policy(json!({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]}))
        .expect_err("backwards");
    assert!(matches!(err, K8sError::InvalidEndPort { .. }));
    let err =
        policy(json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]})).expect_err("protocol");
    assert!(matches!(err, K8sError::UnknownProtocol { .. }));
    let err = policy(json!({"ingress": [{"from": [{}]}]})).expect_err("empty peer");
    assert!(matches!(err, K8sError::InvalidPeer { .. }));
    let err = policy(
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
    )
    .expect_err("ipBlock and selector");
    assert!(matches!(err, K8sError::InvalidPeer { .. }));
    let err =
        policy(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}))
            .expect_err("In without values");
    assert!(
        err.to_string()
            .contains("spec.podSelector.matchExpressions[0]"),
        "{err}"
    );
    let err = policy(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}))
        .expect_err("unknown operator");
    assert!(matches!(err, K8sError::UnknownOperator { .. }));
    let err = policy(json!({"policyTypes": ["Sideways"]})).expect_err("type");
    assert!(matches!(err, K8sError::UnknownPolicyType { .. }));
    let err = policy(json!({"ingress": [{"ports": [{"port": 70000}]}]})).expect_err("port");
    assert!(matches!(err, K8sError::InvalidPort { .. }));
}

#[test]
fn pods_and_namespaces_convert() {
    let pod: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
            {"name": "serve-80-tcp", "containerPort": 80},
            {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
            {"containerPort": 9000}
        ]}]},
        "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}
    }))
    .expect("valid Pod JSON");
    let pod = pod_from_k8s(&pod)
        .expect("converts")
        .expect("not host network");
    assert_eq!(pod.addresses.len(), 2);
    assert_eq!(pod.node, "n1");
    assert_eq!(pod.named_ports.len(), 2);
    assert_eq!(
        pod.named_ports["serve-80-udp"],
        NamedPort {
            protocol: Protocol::Udp,
            number: 80
        }
    );

    let host: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "h", "namespace": "x"},
        "spec": {"hostNetwork": true, "containers": []}
    }))
    .expect("valid Pod JSON");
    assert_eq!(pod_from_k8s(&host).expect("converts"), None);

    let done: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "d", "namespace": "x"},
        "spec": {"containers": []},
        "status": {"phase": "Succeeded", "podIPs": [{"ip": "10.0.0.1"}]}
    }))
    .expect("valid Pod JSON");
    let done = pod_from_k8s(&done)
        .expect("converts")
        .expect("not host network");
    assert!(
        done.addresses.is_empty(),
        "a terminated pod's address may be reused"
    );

    let bad: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "b", "namespace": "x"},
        "spec": {"containers": []},
        "status": {"podIPs": [{"ip": "10.0.0.300"}]}
    }))
    .expect("valid Pod JSON");
    let err = pod_from_k8s(&bad).expect_err("bad address");
    assert!(
        err.to_string().starts_with("Pod x/b: status.podIPs[0].ip"),
        "{err}"
    );

    let ns: core::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "y", "labels": {"team": "t"}}}))
            .expect("valid Namespace JSON");
    let ns = namespace_from_k8s(&ns).expect("converts");
    assert_eq!(ns.labels[NAMESPACE_NAME_LABEL], "y");
    assert_eq!(ns.labels["team"], "t");
}

/// The e2e model written as API objects converts to the same world `e2e_model::world` builds,
/// and a named-port policy from JSON gives the upstream truth table.
#[test]
fn api_objects_of_the_e2e_model_convert_to_the_model_world() {
    use crate::e2e_model::{self, expect, reference_table};
    let model = e2e_model::world();
    let mut world = crate::model::World::default();
    for ns in e2e_model::NAMESPACES {
        let object: core::Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"ns": ns}}}))
                .expect("valid Namespace JSON");
        let ns = namespace_from_k8s(&object).expect("converts");
        world.namespaces.insert(ns.name.clone(), ns);
    }
    for pod in model.pods.values() {
        let ports: Vec<serde_json::Value> = pod
            .named_ports
            .iter()
            .map(|(name, port)| {
                json!({"name": name, "containerPort": port.number, "protocol": port.protocol.to_string()})
            })
            .collect();
        let ips: Vec<serde_json::Value> = pod
            .addresses
            .iter()
            .map(|a| json!({"ip": a.to_string()}))
            .collect();
        let object: core::Pod = serde_json::from_value(json!({
            "metadata": {"name": pod.key.name.as_str(), "namespace": pod.key.namespace.as_str(), "labels": pod.labels.to_labels()},
            "spec": {"nodeName": pod.node.as_str(), "containers": [{"name": "serve", "ports": ports}]},
            "status": {"phase": "Running", "podIPs": ips}
        }))
        .expect("valid Pod JSON");
        let converted = pod_from_k8s(&object)
            .expect("converts")
            .expect("not host network");
        world.pods.insert(converted.key.clone(), converted.into());
    }
    assert_eq!(world, model);

    let object: networking::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "allow-y-b-named", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                          "podSelector": {"matchLabels": {"pod": "b"}}}],
                "ports": [{"port": "serve-80-tcp"}]
            }]
        }
    }))
    .expect("valid NetworkPolicy JSON");
    let policy = policy_from_k8s(&object).expect("converts");
    world.policies.insert(policy.key.clone(), policy);
    let (x, o) = ("X........", ".........");
    assert_eq!(
        reference_table(&world, Protocol::Tcp, 80),
        expect([x, x, x, x, o, x, x, x, x])
    );
    assert_eq!(reference_table(&world, Protocol::Tcp, 81), expect([x; 9]));
}
