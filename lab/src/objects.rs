//! The Kubernetes objects `meshctl lab apply` takes, pure: multi-document YAML (`---`
//! separated, `kind: List` too) parsed into Namespaces, Pods and NetworkPolicies, each checked
//! as the API server would (known apiVersion/kind, names that are DNS labels, valid labels,
//! ports and policies) and given the API server's defaults (namespace `default`, the
//! `kubernetes.io/metadata.name` label, port protocol TCP). A bad document is refused with an
//! error naming its index, kind/name and field. No I/O: `apply` writes what this returns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use serde::Deserialize as _;
use serde_json::Value;

use crate::labels::{check_key, check_value, is_dns_label};
use meshd_policy::model::NAMESPACE_NAME_LABEL;

/// Why a document cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The text is not YAML.
    #[error("document {index}: not valid YAML")]
    Yaml {
        /// 1-based document index.
        index: usize,
        /// The parser's complaint.
        #[source]
        source: serde_norway::Error,
    },
    /// A document that is not a valid object.
    #[error("document {index} ({object}): {field}: {problem}")]
    Invalid {
        /// 1-based document index (`2.3`: item 3 of the List in document 2).
        index: String,
        /// `Kind namespace/name` as far as known.
        object: String,
        /// The offending field's path.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// The kinds the lab takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Namespace.
    Namespace,
    /// `v1` Pod.
    Pod,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        })
    }
}

/// Which object: kind, namespace (empty for a Namespace) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace; empty for a Namespace (cluster-scoped).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One valid object, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub enum LabObject {
    /// A Namespace (with its `kubernetes.io/metadata.name` label).
    Namespace(core::Namespace),
    /// A Pod (namespace set, port protocols defaulted, no status).
    Pod(Box<core::Pod>),
    /// A NetworkPolicy (namespace set, port protocols defaulted).
    NetworkPolicy(networking::NetworkPolicy),
}

impl LabObject {
    /// Which object this is.
    pub fn reference(&self) -> ObjectRef {
        let (kind, meta) = match self {
            LabObject::Namespace(o) => (Kind::Namespace, &o.metadata),
            LabObject::Pod(o) => (Kind::Pod, &o.metadata),
            LabObject::NetworkPolicy(o) => (Kind::NetworkPolicy, &o.metadata),
        };
        ObjectRef {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The object as `kubectl get -o json` prints it (with `apiVersion` and `kind`).
    pub fn to_json(&self) -> Value {
        let value = match self {
            LabObject::Namespace(o) => serde_json::to_value(o),
            LabObject::Pod(o) => serde_json::to_value(o),
            LabObject::NetworkPolicy(o) => serde_json::to_value(o),
        };
        value.unwrap_or(Value::Null)
    }
}

/// The namespace a Pod's or NetworkPolicy's name lives in, with its label as the API server
/// sets it (also what `apply` creates implicitly for a Pod whose namespace it was not given).
pub fn namespace_object(name: &str) -> core::Namespace {
    core::Namespace {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Parse a multi-document YAML (or JSON) text into objects, all or none: the first bad
/// document is the error. Empty documents are skipped; the same object twice is an error.
pub fn parse_documents(text: &str) -> Result<Vec<LabObject>, ObjectError> {
    let mut objects = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value =
            Value::deserialize(doc).map_err(|source| ObjectError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid(index.to_string(), "List", "items", "must be a list"))?;
            for (j, item) in items.iter().enumerate() {
                objects.push(parse_object(format!("{index}.{}", j + 1), item.clone())?);
            }
        } else {
            objects.push(parse_object(index.to_string(), value)?);
        }
    }
    let mut seen = BTreeSet::new();
    for object in &objects {
        let reference = object.reference();
        if !seen.insert(reference.clone()) {
            return Err(invalid(
                "(all)".into(),
                &reference.to_string(),
                "metadata.name",
                "the same object appears twice",
            ));
        }
    }
    Ok(objects)
}

fn invalid(index: String, object: &str, field: &str, problem: impl Into<String>) -> ObjectError {
    ObjectError::Invalid {
        index,
        object: object.to_string(),
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// One object from its JSON value.
fn parse_object(index: String, mut value: Value) -> Result<LabObject, ObjectError> {
    if !value.is_object() {
        return Err(invalid(index, "?", "(document)", "not a mapping"));
    }
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let api_version = text(&value, "apiVersion").unwrap_or_default();
    let kind_text = text(&value, "kind").unwrap_or_default();
    let kind = match (api_version.as_str(), kind_text.as_str()) {
        ("v1", "Namespace") => Kind::Namespace,
        ("v1", "Pod") => Kind::Pod,
        ("networking.k8s.io/v1", "NetworkPolicy") => Kind::NetworkPolicy,
        (_, "") => return Err(invalid(index, "?", "kind", "missing")),
        ("", _) => return Err(invalid(index, &kind_text, "apiVersion", "missing")),
        (_, "Namespace" | "Pod" | "NetworkPolicy") => {
            return Err(invalid(
                index,
                &kind_text,
                "apiVersion",
                format!("{api_version:?} is not the apiVersion of a {kind_text}"),
            ))
        }
        _ => {
            return Err(invalid(
                index,
                &kind_text,
                "kind",
                format!("{api_version}/{kind_text} is not one of v1 Namespace, v1 Pod, networking.k8s.io/v1 NetworkPolicy, v1 List"),
            ))
        }
    };
    let meta = value.get("metadata").cloned().unwrap_or(Value::Null);
    let name = text(&meta, "name").unwrap_or_default();
    let mut object = format!("{kind} {name}");
    if !is_dns_label(&name) {
        return Err(invalid(
            index,
            &object,
            "metadata.name",
            format!("{name:?} must be a DNS label: 1-63 characters of a-z, 0-9 and '-', starting and ending alphanumeric"),
        ));
    }
    let namespace = if kind == Kind::Namespace {
        // Cluster-scoped: a namespace given there means nothing (kubectl ignores it too).
        None
    } else {
        let namespace = match meta.get("namespace") {
            None | Some(Value::Null) => "default".to_string(),
            Some(v) => v.as_str().unwrap_or_default().to_string(),
        };
        object = format!("{kind} {namespace}/{name}");
        if !is_dns_label(&namespace) {
            return Err(invalid(
                index,
                &object,
                "metadata.namespace",
                format!("{namespace:?} must be a DNS label"),
            ));
        }
        Some(namespace)
    };
    match meta.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                let field = format!("metadata.labels[{k:?}]");
                let Some(v) = v.as_str() else {
                    return Err(invalid(
                        index,
                        &object,
                        &field,
                        "a label value must be a string",
                    ));
                };
                check_key(k)
                    .and_then(|()| check_value(k, v))
                    .map_err(|e| invalid(index.clone(), &object, &field, e.to_string()))?;
            }
        }
        Some(_) => {
            return Err(invalid(
                index,
                &object,
                "metadata.labels",
                "must be a mapping",
            ))
        }
    }
    // Whatever status was written is the kubelet's to report, not the user's.
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    let schema = |e: serde_json::Error| invalid(index.clone(), &object, "(schema)", e.to_string());
    let object = match kind {
        Kind::Namespace => {
            let mut ns: core::Namespace = serde_json::from_value(value).map_err(schema)?;
            ns.metadata.namespace = None;
            ns.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
            LabObject::Namespace(ns)
        }
        Kind::Pod => {
            let mut pod: core::Pod = serde_json::from_value(value).map_err(schema)?;
            pod.metadata.namespace = namespace;
            check_pod(&mut pod)
                .map_err(|(field, problem)| invalid(index.clone(), &object, &field, problem))?;
            LabObject::Pod(Box::new(pod))
        }
        Kind::NetworkPolicy => {
            let mut policy: networking::NetworkPolicy =
                serde_json::from_value(value).map_err(schema)?;
            policy.metadata.namespace = namespace;
            default_policy_protocols(&mut policy);
            meshd_policy::k8s::policy_from_k8s(&policy)
                .map_err(|e| invalid(index.clone(), &object, "spec", e.to_string()))?;
            LabObject::NetworkPolicy(policy)
        }
    };
    Ok(object)
}

/// A served port of a pod: what `apply` runs a server for and `probe` finds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServedPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port number.
    pub port: u16,
    /// Its name, if any.
    pub name: Option<String>,
}

/// The ports a (checked) Pod serves, from `spec.containers[].ports`.
pub fn served_ports(pod: &core::Pod) -> Vec<ServedPort> {
    let mut out = Vec::new();
    for container in pod.spec.iter().flat_map(|s| &s.containers) {
        for port in container.ports.iter().flatten() {
            out.push(ServedPort {
                protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port: u16::try_from(port.container_port).unwrap_or(0),
                name: port.name.clone(),
            });
        }
    }
    out
}

/// Check a Pod as the API server would for what the lab uses, defaulting port protocols;
/// `Err((field, problem))`.
fn check_pod(pod: &mut core::Pod) -> Result<(), (String, String)> {
    let Some(spec) = pod.spec.as_mut() else {
        return Err(("spec".into(), "missing".into()));
    };
    if spec.containers.is_empty() {
        return Err((
            "spec.containers".into(),
            "a Pod needs at least one container".into(),
        ));
    }
    if spec.host_network == Some(true) {
        return Err((
            "spec.hostNetwork".into(),
            "host-network pods are not supported by the lab".into(),
        ));
    }
    if let Some(node) = &spec.node_name {
        if node.is_empty() {
            spec.node_name = None;
        }
    }
    let mut served = BTreeSet::new();
    for (c, container) in spec.containers.iter_mut().enumerate() {
        if !is_dns_label(&container.name) {
            return Err((
                format!("spec.containers[{c}].name"),
                format!("{:?} must be a DNS label", container.name),
            ));
        }
        for (p, port) in container.ports.iter_mut().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{p}]");
            if !(1..=65535).contains(&port.container_port) {
                return Err((
                    format!("{field}.containerPort"),
                    format!("{} is not a port in 1..=65535", port.container_port),
                ));
            }
            let protocol = port.protocol.get_or_insert_with(|| "TCP".into());
            if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
                return Err((
                    format!("{field}.protocol"),
                    format!("{protocol:?} is not TCP, UDP or SCTP"),
                ));
            }
            if let Some(name) = &port.name {
                let ok = name.len() <= 15
                    && is_dns_label(name)
                    && name.chars().any(|c| c.is_ascii_lowercase())
                    && !name.contains("--");
                if !ok {
                    return Err((
                        format!("{field}.name"),
                        format!("{name:?} must be 1-15 characters of a-z, 0-9 and '-' with a letter (IANA_SVC_NAME)"),
                    ));
                }
            }
            if !served.insert((protocol.clone(), port.container_port)) {
                return Err((
                    format!("{field}.containerPort"),
                    format!(
                        "{}/{protocol} is already served by this pod",
                        port.container_port
                    ),
                ));
            }
        }
    }
    meshd_policy::k8s::pod_from_k8s(pod).map_err(|e| ("spec".to_string(), e.to_string()))?;
    Ok(())
}

/// The API server's default: a NetworkPolicy port without protocol is TCP.
fn default_policy_protocols(policy: &mut networking::NetworkPolicy) {
    let Some(spec) = policy.spec.as_mut() else {
        return;
    };
    let ingress = spec
        .ingress
        .iter_mut()
        .flatten()
        .flat_map(|r| r.ports.iter_mut().flatten());
    let egress = spec
        .egress
        .iter_mut()
        .flatten()
        .flat_map(|r| r.ports.iter_mut().flatten());
    for port in ingress.chain(egress) {
        port.protocol.get_or_insert_with(|| "TCP".into());
    }
}

#[cfg(test)]
mod tests;
