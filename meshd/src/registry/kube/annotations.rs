//! The Node-annotation codec: how a [`NodeRecord`] is carried by a Kubernetes `Node` object,
//! in both directions. Pure: no client, no I/O (the [`nodes`](super::nodes) registry does the
//! reads and writes).
//!
//! # The eight annotations
//!
//! All of meshd's annotations share the prefix [`ANNOTATION_PREFIX`] (`meshd.io/`); meshd owns
//! these eight ([`ANNOTATIONS`]), writes the first seven and no others:
//!
//! | annotation                 | holds | record field |
//! |----------------------------|-------|--------------|
//! | `meshd.io/public-key`      | the node's WireGuard public key (key slot 0), standard base64 of 32 bytes, not all zero; required | `publicKey` |
//! | `meshd.io/listen-port`     | the WireGuard UDP listen port of slot 0, decimal 1–65535; required | `listenPort` |
//! | `meshd.io/record-version`  | the record format version the publishing meshd wrote, decimal 1..=[`RECORD_VERSION`] (a future version is malformed, not guessed at); required | (format) |
//! | `meshd.io/pod-cidrs`       | the pod CIDRs meshd claimed itself (`cluster-pool` IPAM), comma-separated, possibly empty; read only with [`PodCidrSource::SpecOrClaim`] (`--pod-cidr-pool`) and when the `Node` has no `spec.podCIDRs`, or with [`PodCidrSource::Claim`] (`--ipam node-subnet`: the node's blocks of the node subnet, `spec.podCIDRs` ignored) | `podCIDRs` |
//! | `meshd.io/second-key`      | the public key of the node's second key slot, standard base64; optional, only together with `second-port` | `secondKey` |
//! | `meshd.io/second-port`     | the listen port of the second key slot, decimal 1–65535; optional, only together with `second-key` | `secondPort` |
//! | `meshd.io/rotation`        | the step of a key rotation in progress, JSON `{"serial":N,"draining":S,"replaced":true}`; absent when idle | `rotation` |
//! | `meshd.io/rotation-acks`   | written only by meshd before 0.20 (the rotation steps of other nodes that node applied); ignored when read, removed at the node's next publish | (none) |
//!
//! The key-rotation annotations (the last four) are optional and removed when empty; see
//! [`keyexchange::record`] for what they mean. A rotating node proves its peers' readiness from
//! its own WireGuard devices (handshakes on its new key), so no node writes into its record
//! for another node's rotation. The rest of the record comes from fields the
//! kubelet and the node IPAM / cloud controller own, which meshd never writes:
//!
//! | record field | source on the `Node` |
//! |--------------|----------------------|
//! | `name`       | `metadata.name` |
//! | `endpoints`  | every `status.addresses` entry of type `InternalIP`, both families |
//! | `podCIDRs`   | `spec.podCIDRs` (or the legacy single `spec.podCIDR`); `meshd.io/pod-cidrs` when neither is set and only with `cluster-pool` IPAM, or instead of them with `node-subnet` IPAM ([`PodCidrSource`]): anyone who can annotate a Node can write that one |
//!
//! # Who is a peer ([`node_state`])
//!
//! * A node carrying none of the eight annotations is **not a peer** (meshd is not rolled out
//!   there yet): [`NodeState::Absent`].
//! * A node labelled `meshd.io/exclude=true` ([`EXCLUDE_LABEL`]) is not a peer either, whatever
//!   its annotations say: the operator opted it out.
//! * A node with meshd's annotations that do not form a valid record (bad key, bad port, a
//!   future record version, no `InternalIP`, a malformed pod CIDR…) is
//!   [`NodeState::Malformed`], whose [`RecordError::field`] names the annotation or the `Node`
//!   field at fault.
//!
//! How pod traffic to a node that is not a peer is treated (dropped in strict mode, sent in
//! clear otherwise) is the daemon's policy, not the registry's.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use keyexchange::record::{is_dns1123_subdomain, NodeRecord, RecordError, RECORD_VERSION};
use keyexchange::PublicKey;
use serde_json::Value;

/// The prefix shared by every annotation and label meshd reads or writes on a `Node`.
pub const ANNOTATION_PREFIX: &str = "meshd.io/";
/// Annotation holding the node's WireGuard public key (standard base64).
pub const PUBLIC_KEY_ANNOTATION: &str = "meshd.io/public-key";
/// Annotation holding the node's WireGuard listen port (decimal).
pub const LISTEN_PORT_ANNOTATION: &str = "meshd.io/listen-port";
/// Annotation holding the record format version the publishing meshd wrote.
pub const RECORD_VERSION_ANNOTATION: &str = "meshd.io/record-version";
/// Annotation holding the pod CIDRs meshd claimed itself (`cluster-pool` IPAM, comma-separated);
/// only read when the Node has no `spec.podCIDRs`.
pub const POD_CIDRS_ANNOTATION: &str = "meshd.io/pod-cidrs";
/// Annotation holding the public key of the node's second key slot (standard base64).
pub const SECOND_KEY_ANNOTATION: &str = "meshd.io/second-key";
/// Annotation holding the listen port of the node's second key slot (decimal).
pub const SECOND_PORT_ANNOTATION: &str = "meshd.io/second-port";
/// Annotation holding the step of a key rotation in progress (JSON).
pub const ROTATION_ANNOTATION: &str = "meshd.io/rotation";
/// Annotation in which meshd before 0.20 acknowledged other nodes' rotation steps; no longer
/// written or read, and listed in [`ANNOTATIONS`] so that a publish removes a stale one.
pub const ROTATION_ACKS_ANNOTATION: &str = "meshd.io/rotation-acks";
/// Every annotation meshd writes; a node with none of them is not a peer.
pub const ANNOTATIONS: [&str; 8] = [
    PUBLIC_KEY_ANNOTATION,
    LISTEN_PORT_ANNOTATION,
    RECORD_VERSION_ANNOTATION,
    POD_CIDRS_ANNOTATION,
    SECOND_KEY_ANNOTATION,
    SECOND_PORT_ANNOTATION,
    ROTATION_ANNOTATION,
    ROTATION_ACKS_ANNOTATION,
];
/// Label that opts a node out of the mesh when set to `"true"`.
pub const EXCLUDE_LABEL: &str = "meshd.io/exclude";
/// `RecordError::field` when a node has no usable `InternalIP` address.
pub const ADDRESSES_FIELD: &str = "status.addresses";
/// `RecordError::field` when a node's pod CIDRs are malformed.
pub const POD_CIDRS_FIELD: &str = "spec.podCIDRs";

/// The addressing the cluster assigned to a node: what its own record must carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddressing {
    /// `InternalIP` addresses from `status.addresses`, in the order listed.
    pub endpoints: Vec<IpAddr>,
    /// `spec.podCIDRs` (or the legacy `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
}

/// What a `Node` object means for the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Not a peer: no meshd annotations, or opted out by [`EXCLUDE_LABEL`].
    Absent,
    /// A valid peer record.
    Peer(NodeRecord),
    /// meshd's annotations are present but do not form a valid record.
    Malformed(RecordError),
}

/// Where a Node's pod CIDRs are taken from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodCidrSource {
    /// Only `spec.podCIDRs` (or `spec.podCIDR`), which the cluster's node IPAM assigns; a
    /// self-declared [`POD_CIDRS_ANNOTATION`] is ignored. The default.
    #[default]
    Spec,
    /// `spec.podCIDRs`, else the node's own [`POD_CIDRS_ANNOTATION`] claim: only where meshd
    /// claims pod CIDRs itself (`cluster-pool` IPAM, `--pod-cidr-pool`).
    SpecOrClaim,
    /// Only the node's own [`POD_CIDRS_ANNOTATION`] claim, `spec.podCIDRs` ignored: `node-subnet`
    /// IPAM, where the claim is the blocks of the node subnet the node holds (a CIDR the
    /// cluster's node IPAM assigned belongs to another address plan).
    Claim,
}

/// Translates a `Node` into what it means for the mesh, its pod CIDRs from `spec.podCIDRs`
/// only ([`PodCidrSource::Spec`]; pure; see the module docs).
pub fn node_state(node: &Node) -> NodeState {
    node_state_from(node, PodCidrSource::Spec)
}

/// [`node_state`] with the pod CIDRs taken from `source`.
pub fn node_state_from(node: &Node, source: PodCidrSource) -> NodeState {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(EXCLUDE_LABEL))
        .is_some_and(|v| v == "true");
    let empty = BTreeMap::new();
    let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
    if excluded || !ANNOTATIONS.iter().any(|k| annotations.contains_key(*k)) {
        return NodeState::Absent;
    }
    match record_from_node(name, annotations, node, source) {
        Ok(record) => NodeState::Peer(record),
        Err(error) => NodeState::Malformed(error),
    }
}

fn record_from_node(
    name: &str,
    annotations: &BTreeMap<String, String>,
    node: &Node,
    source: PodCidrSource,
) -> Result<NodeRecord, RecordError> {
    let fail = |field: &'static str, reason: String| RecordError {
        node: name.to_string(),
        field,
        reason,
    };
    if !is_dns1123_subdomain(name) {
        return Err(fail(
            "metadata.name",
            format!("{name:?} is not a valid DNS-1123 subdomain"),
        ));
    }
    let annotation = |key: &'static str| {
        annotations
            .get(key)
            .map(|v| v.trim())
            .ok_or_else(|| fail(key, "missing".into()))
    };

    let version = annotation(RECORD_VERSION_ANNOTATION)?;
    match version.parse::<u32>() {
        Ok(0) => {
            return Err(fail(
                RECORD_VERSION_ANNOTATION,
                "version 0 is invalid".into(),
            ))
        }
        Ok(v) if v > RECORD_VERSION => {
            return Err(fail(
                RECORD_VERSION_ANNOTATION,
                format!("unsupported future version {v} (this meshd understands {RECORD_VERSION})"),
            ))
        }
        Ok(_) => {}
        Err(_) => {
            return Err(fail(
                RECORD_VERSION_ANNOTATION,
                format!("{version:?} is not a non-negative integer"),
            ))
        }
    }

    let key = annotation(PUBLIC_KEY_ANNOTATION)?;
    let public_key = key
        .parse::<PublicKey>()
        .map_err(|e| fail(PUBLIC_KEY_ANNOTATION, format!("{key:?}: {e}")))?;
    if public_key.is_zero() {
        return Err(fail(PUBLIC_KEY_ANNOTATION, "all-zero key".into()));
    }

    let port = annotation(LISTEN_PORT_ANNOTATION)?;
    let listen_port = match port.parse::<u16>() {
        Ok(0) | Err(_) => {
            return Err(fail(
                LISTEN_PORT_ANNOTATION,
                format!("must be a port 1-65535, got {port:?}"),
            ))
        }
        Ok(p) => p,
    };

    let mut addressing = addressing(node).map_err(|(field, reason)| fail(field, reason))?;
    let claim_counts = match source {
        PodCidrSource::Spec => false,
        // No controller-assigned CIDRs: meshd's own cluster-pool claim, if it published one.
        PodCidrSource::SpecOrClaim => addressing.pod_cidrs.is_empty(),
        PodCidrSource::Claim => {
            addressing.pod_cidrs.clear();
            true
        }
    };
    if claim_counts {
        if let Some(v) = annotations.get(POD_CIDRS_ANNOTATION) {
            addressing.pod_cidrs = v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<IpNet>()
                        .map_err(|_| fail(POD_CIDRS_ANNOTATION, format!("{c:?} is not a CIDR")))
                })
                .collect::<Result<Vec<_>, _>>()?;
        }
    }
    let rotation = rotation_from(annotations).map_err(|(field, reason)| fail(field, reason))?;
    let record = NodeRecord {
        name: name.to_string(),
        public_key,
        listen_port,
        endpoints: addressing.endpoints,
        pod_cidrs: addressing.pod_cidrs,
        rotation,
    };
    // Same rules as every other backend (unspecified/multicast endpoints, host bits in CIDRs).
    record.validate().map_err(|e| {
        let field = match e.field {
            "endpoints" => ADDRESSES_FIELD,
            "podCIDRs" => POD_CIDRS_FIELD,
            other => other,
        };
        fail(field, e.reason)
    })?;
    Ok(record)
}

/// The key-rotation fields from their (optional) annotations, or the offending one and why.
fn rotation_from(
    annotations: &BTreeMap<String, String>,
) -> Result<keyexchange::record::Rotation, (&'static str, String)> {
    use keyexchange::record::{parse_step, Rotation, SlotKey};
    let get = |k: &str| annotations.get(k).map(|v| v.trim());
    let second = match (get(SECOND_KEY_ANNOTATION), get(SECOND_PORT_ANNOTATION)) {
        (None, None) => None,
        (key, port) => {
            let key = key.ok_or((SECOND_KEY_ANNOTATION, "missing".to_string()))?;
            let public_key = key
                .parse::<PublicKey>()
                .map_err(|e| (SECOND_KEY_ANNOTATION, format!("{key:?}: {e}")))?;
            let port = port.ok_or((SECOND_PORT_ANNOTATION, "missing".to_string()))?;
            let listen_port = match port.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    return Err((
                        SECOND_PORT_ANNOTATION,
                        format!("must be a port 1-65535, got {port:?}"),
                    ))
                }
            };
            Some(SlotKey {
                public_key,
                listen_port,
            })
        }
    };
    let json = |k: &'static str, text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| (k, format!("not valid JSON: {e}")))
    };
    let step = match get(ROTATION_ANNOTATION) {
        None => None,
        Some(t) => {
            Some(parse_step(&json(ROTATION_ANNOTATION, t)?).map_err(|r| (ROTATION_ANNOTATION, r))?)
        }
    };
    // `meshd.io/rotation-acks` from a meshd before 0.20 is ignored, whatever it holds.
    Ok(Rotation { second, step })
}

/// A node's InternalIP addresses and pod CIDRs, or the offending field and why.
pub(crate) fn addressing(node: &Node) -> Result<NodeAddressing, (&'static str, String)> {
    let mut endpoints = Vec::new();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    for address in addresses.iter().filter(|a| a.type_ == "InternalIP") {
        let ip = address.address.parse::<IpAddr>().map_err(|_| {
            (
                ADDRESSES_FIELD,
                format!("InternalIP {:?} is not an IP address", address.address),
            )
        })?;
        if !endpoints.contains(&ip) {
            endpoints.push(ip);
        }
    }
    if endpoints.is_empty() {
        return Err((ADDRESSES_FIELD, "no InternalIP address".into()));
    }

    let spec = node.spec.as_ref();
    let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let cidrs = if listed.is_empty() {
        spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect()
    } else {
        listed
    };
    let pod_cidrs = cidrs
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .map_err(|_| (POD_CIDRS_FIELD, format!("{c:?} is not a CIDR")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NodeAddressing {
        endpoints,
        pod_cidrs,
    })
}

/// meshd's annotations for `record`, exactly as published (the optional key-rotation ones only
/// when set; [`KubeRegistry`](super::nodes::KubeRegistry)'s publish removes those absent here).
pub fn record_annotations(record: &NodeRecord) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::from([
        (PUBLIC_KEY_ANNOTATION, record.public_key.to_string()),
        (LISTEN_PORT_ANNOTATION, record.listen_port.to_string()),
        (RECORD_VERSION_ANNOTATION, RECORD_VERSION.to_string()),
        (
            POD_CIDRS_ANNOTATION,
            record
                .pod_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]);
    let r = &record.rotation;
    if let Some(second) = r.second {
        out.insert(SECOND_KEY_ANNOTATION, second.public_key.to_string());
        out.insert(SECOND_PORT_ANNOTATION, second.listen_port.to_string());
    }
    if let Some(step) = r.step {
        out.insert(
            ROTATION_ANNOTATION,
            serde_json::to_string(&step).unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    /// The module doc is the reference for operators: every annotation meshd writes has its
    /// row in the table, under its real name (an earlier doc spoke of three annotations).
    #[test]
    fn the_module_doc_lists_every_annotation() {
        let rows: Vec<&str> = include_str!("annotations.rs")
            .lines()
            .filter(|l| l.starts_with("//! | `meshd.io/"))
            .collect();
        assert_eq!(rows.len(), ANNOTATIONS.len(), "{rows:#?}");
        for annotation in ANNOTATIONS {
            assert!(annotation.starts_with(ANNOTATION_PREFIX), "{annotation}");
            assert!(
                rows.iter()
                    .any(|r| r.starts_with(&format!("//! | `{annotation}`"))),
                "{annotation} has no row in the module doc"
            );
        }
    }

    fn key() -> PublicKey {
        PublicKey::from_bytes([7; 32])
    }

    fn node(name: &str, annotations: &[(&str, &str)], addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00:244:0:1::/64".into()]),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
        }
    }

    fn good_annotations() -> Vec<(&'static str, String)> {
        vec![
            (PUBLIC_KEY_ANNOTATION, key().to_string()),
            (LISTEN_PORT_ANNOTATION, "51820".into()),
            (RECORD_VERSION_ANNOTATION, "1".into()),
            ("other.example.com/keep", "x".into()),
        ]
    }

    /// A valid dual-stack peer `n1` (also used by the registry's watch tests).
    pub(crate) fn good_node() -> Node {
        let ann = good_annotations();
        let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (*k, v.as_str())).collect();
        node(
            "n1",
            &ann,
            &[
                ("Hostname", "n1"),
                ("InternalIP", "198.18.0.11"),
                ("ExternalIP", "203.0.113.7"),
                ("InternalIP", "fd00:198::11"),
            ],
        )
    }

    fn with_annotation(key: &str, value: Option<&str>) -> Node {
        let mut n = good_node();
        let ann = n.metadata.annotations.as_mut().unwrap();
        match value {
            Some(v) => ann.insert(key.into(), v.into()),
            None => ann.remove(key),
        };
        n
    }

    fn malformed_field(n: &Node) -> &'static str {
        match node_state(n) {
            NodeState::Malformed(e) => {
                assert_eq!(e.node, "n1");
                e.field
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn good_dual_stack_node() {
        let NodeState::Peer(record) = node_state(&good_node()) else {
            panic!("expected a peer");
        };
        assert_eq!(
            record,
            NodeRecord {
                name: "n1".into(),
                public_key: key(),
                listen_port: 51820,
                // InternalIP only, both families, ExternalIP and Hostname ignored.
                endpoints: vec![
                    "198.18.0.11".parse().unwrap(),
                    "fd00:198::11".parse().unwrap()
                ],
                pod_cidrs: vec![
                    "10.244.1.0/24".parse().unwrap(),
                    "fd00:244:0:1::/64".parse().unwrap()
                ],
                rotation: Default::default(),
            }
        );
        // Published annotations round-trip to the same record.
        let published = record_annotations(&record);
        for (k, v) in good_annotations().iter().take(3) {
            assert_eq!(published.get(k), Some(v));
        }
    }

    #[test]
    fn rotation_fields_round_trip_through_annotations() {
        use keyexchange::record::{Rotation, RotationStep, SlotKey};
        let mut n = good_node();
        let NodeState::Peer(mut record) = node_state(&n) else {
            panic!("expected a peer");
        };
        record.rotation = Rotation {
            second: Some(SlotKey {
                public_key: PublicKey::from_bytes([5; 32]),
                listen_port: 51821,
            }),
            step: Some(RotationStep {
                serial: 9,
                draining: Some(0),
                replaced: true,
            }),
        };
        let published = record_annotations(&record);
        assert!(
            published[ROTATION_ANNOTATION].contains(r#""replaced":true"#),
            "{published:?}"
        );
        let annotations = n.metadata.annotations.get_or_insert_with(Default::default);
        for (k, v) in published {
            annotations.insert(k.to_string(), v);
        }
        let NodeState::Peer(back) = node_state(&n) else {
            panic!("expected a peer");
        };
        assert_eq!(back, record);
        assert!(!record_annotations(&back).contains_key(ROTATION_ACKS_ANNOTATION));
    }

    #[test]
    fn acks_left_by_an_older_meshd_are_ignored() {
        let mut n = good_node();
        let NodeState::Peer(plain) = node_state(&n) else {
            panic!("expected a peer");
        };
        for stale in [r#"{"n2":4}"#, "not json"] {
            n.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ROTATION_ACKS_ANNOTATION.to_string(), stale.to_string());
            let NodeState::Peer(back) = node_state(&n) else {
                panic!("a record with stale acks {stale:?} is still a peer");
            };
            assert_eq!(back, plain);
        }
    }

    #[test]
    fn the_self_declared_pod_cidrs_count_only_with_cluster_pool_ipam() {
        let mut n = good_node();
        n.spec = None;
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(POD_CIDRS_ANNOTATION.into(), "10.244.9.0/24".into());
        let claimed = vec!["10.244.9.0/24".parse::<IpNet>().unwrap()];
        // By default a Node cannot declare its own pod CIDRs.
        let NodeState::Peer(record) = node_state(&n) else {
            panic!("expected a peer");
        };
        assert!(record.pod_cidrs.is_empty(), "{:?}", record.pod_cidrs);
        // cluster-pool IPAM: the claim counts, unless the cluster assigned CIDRs.
        let NodeState::Peer(record) = node_state_from(&n, PodCidrSource::SpecOrClaim) else {
            panic!("expected a peer");
        };
        assert_eq!(record.pod_cidrs, claimed);
        let mut assigned = good_node();
        assigned
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(POD_CIDRS_ANNOTATION.into(), "10.244.9.0/24".into());
        let NodeState::Peer(record) = node_state_from(&assigned, PodCidrSource::SpecOrClaim) else {
            panic!("expected a peer");
        };
        assert_ne!(record.pod_cidrs, claimed);
        // A malformed claim is only an error where it is read.
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(POD_CIDRS_ANNOTATION.into(), "0.0.0.0/0,nonsense".into());
        assert!(matches!(node_state(&n), NodeState::Peer(_)));
        assert!(matches!(
            node_state_from(&n, PodCidrSource::SpecOrClaim),
            NodeState::Malformed(e) if e.field == POD_CIDRS_ANNOTATION
        ));
    }

    #[test]
    fn with_node_subnet_ipam_only_the_claimed_blocks_count() {
        let mut n = good_node();
        let blocks = "192.168.10.16/28,192.168.10.48/28,fd00:10::10/124";
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(POD_CIDRS_ANNOTATION.into(), blocks.into());
        // spec.podCIDRs is set on this Node: node-subnet ignores it.
        let NodeState::Peer(record) = node_state_from(&n, PodCidrSource::Claim) else {
            panic!("expected a peer");
        };
        let want: Vec<IpNet> = blocks.split(',').map(|b| b.parse().unwrap()).collect();
        assert_eq!(record.pod_cidrs, want);
        // No blocks claimed yet: no pod CIDRs, still a peer (its node address is reachable).
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(POD_CIDRS_ANNOTATION.into(), String::new());
        let NodeState::Peer(record) = node_state_from(&n, PodCidrSource::Claim) else {
            panic!("expected a peer");
        };
        assert!(record.pod_cidrs.is_empty());
        // The annotation is written with every block: it reads back the same.
        let published = record_annotations(&NodeRecord {
            pod_cidrs: want.clone(),
            ..record
        });
        assert_eq!(published[POD_CIDRS_ANNOTATION], blocks);
    }

    #[test]
    fn legacy_single_pod_cidr() {
        let mut n = good_node();
        n.spec.as_mut().unwrap().pod_cidrs = None;
        let NodeState::Peer(record) = node_state(&n) else {
            panic!("expected a peer");
        };
        assert_eq!(
            record.pod_cidrs,
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
        // No pod CIDR assigned yet is still a peer (it just routes nothing).
        n.spec = None;
        let NodeState::Peer(record) = node_state(&n) else {
            panic!("expected a peer");
        };
        assert!(record.pod_cidrs.is_empty());
    }

    #[test]
    fn no_meshd_annotations_is_absent() {
        let n = node(
            "n1",
            &[("other.example.com/x", "1")],
            &[("InternalIP", "198.18.0.11")],
        );
        assert_eq!(node_state(&n), NodeState::Absent);
        let mut n = good_node();
        n.metadata.annotations = None;
        assert_eq!(node_state(&n), NodeState::Absent);
        // An unrelated meshd.io/ annotation alone does not make a peer either.
        let n = node(
            "n1",
            &[("meshd.io/something-else", "1")],
            &[("InternalIP", "198.18.0.11")],
        );
        assert_eq!(node_state(&n), NodeState::Absent);
    }

    #[test]
    fn exclude_label_opts_out() {
        let mut n = good_node();
        n.metadata.labels = Some(BTreeMap::from([(EXCLUDE_LABEL.into(), "true".into())]));
        assert_eq!(node_state(&n), NodeState::Absent);
        n.metadata.labels = Some(BTreeMap::from([(EXCLUDE_LABEL.into(), "false".into())]));
        assert!(matches!(node_state(&n), NodeState::Peer(_)));
    }

    #[test]
    fn malformed_annotations_name_the_field() {
        for (key, value) in [
            (PUBLIC_KEY_ANNOTATION, Some("!!!")),
            (PUBLIC_KEY_ANNOTATION, Some("AAAA")),
            (
                PUBLIC_KEY_ANNOTATION,
                Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            ),
            (PUBLIC_KEY_ANNOTATION, None),
            (LISTEN_PORT_ANNOTATION, Some("0")),
            (LISTEN_PORT_ANNOTATION, Some("65536")),
            (LISTEN_PORT_ANNOTATION, Some("http")),
            (LISTEN_PORT_ANNOTATION, None),
            (RECORD_VERSION_ANNOTATION, Some("2")),
            (RECORD_VERSION_ANNOTATION, Some("0")),
            (RECORD_VERSION_ANNOTATION, Some("one")),
            (RECORD_VERSION_ANNOTATION, None),
        ] {
            assert_eq!(
                malformed_field(&with_annotation(key, value)),
                key,
                "{key}={value:?}"
            );
        }
        let NodeState::Malformed(e) =
            node_state(&with_annotation(RECORD_VERSION_ANNOTATION, Some("2")))
        else {
            panic!()
        };
        assert!(e.reason.contains("future version 2"), "{}", e.reason);
    }

    #[test]
    fn malformed_node_fields() {
        let mut n = good_node();
        n.status = None;
        assert_eq!(malformed_field(&n), ADDRESSES_FIELD);

        let mut n = good_node();
        n.status.as_mut().unwrap().addresses = Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: "not-an-ip".into(),
        }]);
        assert_eq!(malformed_field(&n), ADDRESSES_FIELD);

        let mut n = good_node();
        n.status.as_mut().unwrap().addresses = Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: "0.0.0.0".into(),
        }]);
        assert_eq!(malformed_field(&n), ADDRESSES_FIELD);

        for bad in ["garbage", "10.244.1.1/24"] {
            let mut n = good_node();
            n.spec.as_mut().unwrap().pod_cidrs = Some(vec![bad.into()]);
            assert_eq!(malformed_field(&n), POD_CIDRS_FIELD, "{bad}");
        }
    }
}
