//! Conversion from the Kubernetes API objects (`k8s-openapi`'s `NetworkPolicy`, `Pod`,
//! `Namespace`) to the [`crate::model`] types.
//!
//! The conversion applies the API's defaults (protocol TCP; an empty `policyTypes` is "not
//! specified"; the `kubernetes.io/metadata.name` namespace label, which the API server always
//! sets) and refuses, with an error naming the object and the field, what the API server
//! would reject or the model cannot represent: an invalid CIDR or pod address, an unknown
//! protocol, operator or policy type, a port out of range, `endPort` without a numeric port or
//! before it, a peer with nothing or with `ipBlock` and a selector, duplicate named ports.
//! Host-network pods are left out (`Ok(None)`): they use the node's address and no podSelector
//! selects them. Terminated pods keep their labels but hold no address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{
    Direction, LabelSelector, NamedPort, Namespace, Operator, Peer, Pod, PodKey, Policy,
    PolicyPort, PortSpec, Protocol, Requirement, Rule, NAMESPACE_NAME_LABEL,
};

/// Why an API object cannot be converted. `object` is `Kind namespace/name`.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The object has no `metadata.name`.
    #[error("{kind} without metadata.name")]
    MissingName {
        /// The object's kind.
        kind: &'static str,
    },
    /// A CIDR of an `ipBlock` does not parse.
    #[error("{object}: {field} is not a valid CIDR: {value:?}")]
    InvalidCidr {
        /// The policy.
        object: String,
        /// The field's path.
        field: String,
        /// What it says.
        value: String,
        /// Why it does not parse.
        #[source]
        source: ipnet::AddrParseError,
    },
    /// A pod address does not parse.
    #[error("{object}: {field} is not a valid IP address: {value:?}")]
    InvalidAddress {
        /// The pod.
        object: String,
        /// The field's path.
        field: String,
        /// What it says.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// A protocol other than TCP, UDP and SCTP.
    #[error("{object}: {field} is {value:?}, not TCP, UDP or SCTP")]
    UnknownProtocol {
        /// The object.
        object: String,
        /// The field's path.
        field: String,
        /// What it says.
        value: String,
    },
    /// A port number outside 1..=65535.
    #[error("{object}: {field} is {value}, not a port in 1..=65535")]
    InvalidPort {
        /// The object.
        object: String,
        /// The field's path.
        field: String,
        /// What it says.
        value: i32,
    },
    /// `endPort` without a numeric `port`, or smaller than it.
    #[error("{object}: {field} is {end_port}, which needs a numeric port at most that large")]
    InvalidEndPort {
        /// The policy.
        object: String,
        /// The field's path.
        field: String,
        /// The `endPort`.
        end_port: i32,
    },
    /// A named port that is empty.
    #[error("{object}: {field} is an empty port name")]
    EmptyPortName {
        /// The policy.
        object: String,
        /// The field's path.
        field: String,
    },
    /// A `matchExpressions` operator the API does not define.
    #[error("{object}: {field} has operator {operator:?}, not In, NotIn, Exists or DoesNotExist")]
    UnknownOperator {
        /// The object.
        object: String,
        /// The field's path.
        field: String,
        /// What it says.
        operator: String,
    },
    /// `In`/`NotIn` without values, or `Exists`/`DoesNotExist` with some.
    #[error("{object}: {field}: operator {operator} {requirement}")]
    OperatorValues {
        /// The object.
        object: String,
        /// The field's path.
        field: String,
        /// The operator.
        operator: String,
        /// What the operator requires.
        requirement: &'static str,
    },
    /// A peer with neither selectors nor `ipBlock`, or `ipBlock` together with a selector.
    #[error("{object}: {field} must set ipBlock alone, or podSelector and/or namespaceSelector")]
    InvalidPeer {
        /// The policy.
        object: String,
        /// The field's path.
        field: String,
    },
    /// A policy type other than Ingress and Egress.
    #[error("{object}: {field} is {value:?}, not Ingress or Egress")]
    UnknownPolicyType {
        /// The policy.
        object: String,
        /// The field's path.
        field: String,
        /// What it says.
        value: String,
    },
    /// Two container ports of a pod with one name.
    #[error("{object}: container port name {name:?} is used twice")]
    DuplicatePortName {
        /// The pod.
        object: String,
        /// The name.
        name: String,
    },
}

fn object_name(kind: &'static str, meta: &meta::ObjectMeta) -> Result<(String, String), K8sError> {
    let name = meta.name.clone().ok_or(K8sError::MissingName { kind })?;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    Ok((namespace, name))
}

/// Converts a `Namespace`, adding `kubernetes.io/metadata.name` when missing.
pub fn namespace_from_k8s(namespace: &core::Namespace) -> Result<Namespace, K8sError> {
    let name = namespace
        .metadata
        .name
        .clone()
        .ok_or(K8sError::MissingName { kind: "Namespace" })?;
    let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
    labels
        .entry(NAMESPACE_NAME_LABEL.to_owned())
        .or_insert_with(|| name.clone());
    Ok(Namespace { name, labels })
}

/// Converts a `Pod`; `Ok(None)` for a host-network pod. Addresses come from `status.podIPs`
/// (else `status.podIP`), none once the pod has terminated (phase `Succeeded` or `Failed`: its
/// addresses may be reused); named ports from `spec.containers[].ports[]` entries with a name.
pub fn pod_from_k8s(pod: &core::Pod) -> Result<Option<Pod>, K8sError> {
    let (namespace, name) = object_name("Pod", &pod.metadata)?;
    let object = format!("Pod {namespace}/{name}");
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        return Ok(None);
    }
    let status = pod.status.clone().unwrap_or_default();
    // A pod that has terminated keeps its addresses in its status, but they are free again and
    // may already belong to a new pod: it holds none.
    let terminated = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let texts: Vec<(String, String)> = match (&status.pod_ips, &status.pod_ip) {
        _ if terminated => Vec::new(),
        (Some(ips), _) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("status.podIPs[{i}].ip"), ip.ip.clone()))
            .collect(),
        (_, Some(ip)) => vec![("status.podIP".to_owned(), ip.clone())],
        _ => Vec::new(),
    };
    let mut addresses = Vec::new();
    for (field, value) in texts {
        let address: IpAddr = value.parse().map_err(|source| K8sError::InvalidAddress {
            object: object.clone(),
            field,
            value: value.clone(),
            source,
        })?;
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    let mut named_ports = BTreeMap::new();
    for (c, container) in spec.containers.iter().enumerate() {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let Some(port_name) = &port.name else {
                continue;
            };
            let field = format!("spec.containers[{c}].ports[{p}]");
            let protocol = protocol(
                &object,
                &format!("{field}.protocol"),
                port.protocol.as_deref(),
            )?;
            let number = port_number(
                &object,
                &format!("{field}.containerPort"),
                port.container_port,
            )?;
            if named_ports
                .insert(port_name.clone(), NamedPort { protocol, number })
                .is_some()
            {
                return Err(K8sError::DuplicatePortName {
                    object,
                    name: port_name.clone(),
                });
            }
        }
    }
    Ok(Some(Pod {
        key: PodKey::new(namespace, name),
        labels: pod.metadata.labels.clone().unwrap_or_default().into(),
        addresses,
        node: spec.node_name.unwrap_or_default().into(),
        named_ports,
    }))
}

/// Converts a `NetworkPolicy`.
pub fn policy_from_k8s(policy: &networking::NetworkPolicy) -> Result<Policy, K8sError> {
    let (namespace, name) = object_name("NetworkPolicy", &policy.metadata)?;
    let object = format!("NetworkPolicy {namespace}/{name}");
    let spec = policy.spec.clone().unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(&object, "spec.podSelector", s)?,
        None => LabelSelector::everything(),
    };
    let policy_types = match spec.policy_types.as_deref() {
        None | Some([]) => None,
        Some(types) => Some(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "Ingress" => Ok(Direction::Ingress),
                    "Egress" => Ok(Direction::Egress),
                    _ => Err(K8sError::UnknownPolicyType {
                        object: object.clone(),
                        field: format!("spec.policyTypes[{i}]"),
                        value: t.clone(),
                    }),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{i}]");
        ingress.push(Rule {
            peers: peers(&object, &format!("{field}.from"), rule.from.as_deref())?,
            ports: ports(&object, &format!("{field}.ports"), rule.ports.as_deref())?,
        });
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{i}]");
        egress.push(Rule {
            peers: peers(&object, &format!("{field}.to"), rule.to.as_deref())?,
            ports: ports(&object, &format!("{field}.ports"), rule.ports.as_deref())?,
        });
    }
    Ok(Policy {
        key: PodKey::new(namespace, name),
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

fn protocol(object: &str, field: &str, value: Option<&str>) -> Result<Protocol, K8sError> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(K8sError::UnknownProtocol {
            object: object.to_owned(),
            field: field.to_owned(),
            value: other.to_owned(),
        }),
    }
}

fn port_number(object: &str, field: &str, value: i32) -> Result<u16, K8sError> {
    match u16::try_from(value) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(K8sError::InvalidPort {
            object: object.to_owned(),
            field: field.to_owned(),
            value,
        }),
    }
}

fn cidr(object: &str, field: &str, value: &str) -> Result<IpNet, K8sError> {
    value.parse().map_err(|source| K8sError::InvalidCidr {
        object: object.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
        source,
    })
}

fn peers(
    object: &str,
    field: &str,
    peers: Option<&[networking::NetworkPolicyPeer]>,
) -> Result<Vec<Peer>, K8sError> {
    let mut out = Vec::new();
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        let field = format!("{field}[{i}]");
        let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, has_selector) {
            (Some(block), false) => {
                let block_field = format!("{field}.ipBlock");
                let mut except = Vec::new();
                for (j, e) in block.except.iter().flatten().enumerate() {
                    except.push(cidr(object, &format!("{block_field}.except[{j}]"), e)?);
                }
                out.push(Peer::IpBlock {
                    cidr: cidr(object, &format!("{block_field}.cidr"), &block.cidr)?,
                    except,
                });
            }
            (None, true) => out.push(Peer::Pods {
                namespace_selector: peer
                    .namespace_selector
                    .as_ref()
                    .map(|s| selector(object, &format!("{field}.namespaceSelector"), s))
                    .transpose()?,
                pod_selector: peer
                    .pod_selector
                    .as_ref()
                    .map(|s| selector(object, &format!("{field}.podSelector"), s))
                    .transpose()?,
            }),
            _ => {
                return Err(K8sError::InvalidPeer {
                    object: object.to_owned(),
                    field,
                })
            }
        }
    }
    Ok(out)
}

fn ports(
    object: &str,
    field: &str,
    ports: Option<&[networking::NetworkPolicyPort]>,
) -> Result<Vec<PolicyPort>, K8sError> {
    let mut out = Vec::new();
    for (i, port) in ports.unwrap_or_default().iter().enumerate() {
        let field = format!("{field}[{i}]");
        let protocol = protocol(
            object,
            &format!("{field}.protocol"),
            port.protocol.as_deref(),
        )?;
        let end_error = |end_port| K8sError::InvalidEndPort {
            object: object.to_owned(),
            field: format!("{field}.endPort"),
            end_port,
        };
        let spec = match (&port.port, port.end_port) {
            (None, None) => PortSpec::Any,
            (Some(IntOrString::Int(n)), end) => {
                let start = port_number(object, &format!("{field}.port"), *n)?;
                let end = match end {
                    None => start,
                    Some(e) => match port_number(object, &format!("{field}.endPort"), e) {
                        Ok(end) if end >= start => end,
                        _ => return Err(end_error(e)),
                    },
                };
                PortSpec::Range { start, end }
            }
            (Some(IntOrString::String(name)), None) => {
                if name.is_empty() {
                    return Err(K8sError::EmptyPortName {
                        object: object.to_owned(),
                        field: format!("{field}.port"),
                    });
                }
                PortSpec::Named(name.clone())
            }
            (_, Some(e)) => return Err(end_error(e)),
        };
        out.push(PolicyPort {
            protocol,
            port: spec,
        });
    }
    Ok(out)
}

fn selector(
    object: &str,
    field: &str,
    selector: &meta::LabelSelector,
) -> Result<LabelSelector, K8sError> {
    let mut match_expressions = Vec::new();
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{field}.matchExpressions[{i}]");
        let values = expr.values.clone().unwrap_or_default();
        let wrong = |requirement| K8sError::OperatorValues {
            object: object.to_owned(),
            field: field.clone(),
            operator: expr.operator.clone(),
            requirement,
        };
        let operator = match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => return Err(wrong("needs values")),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(wrong("takes no values"))
            }
            "In" => Operator::In(values.into_iter().collect()),
            "NotIn" => Operator::NotIn(values.into_iter().collect()),
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(K8sError::UnknownOperator {
                    object: object.to_owned(),
                    field,
                    operator: other.to_owned(),
                })
            }
        };
        match_expressions.push(Requirement {
            key: expr.key.clone(),
            operator,
        });
    }
    Ok(LabelSelector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions,
    })
}

#[cfg(test)]
mod tests;
