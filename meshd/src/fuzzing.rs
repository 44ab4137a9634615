//! Entry points of the cargo-fuzz targets that read meshd's untrusted inputs (`fuzz/`, see
//! `docs/fuzzing.md`): a Kubernetes `Node` becoming a record ([`node_record`]), the
//! `meshd-config` ConfigMap ([`settings_configmap`]) and the control socket's protocol
//! ([`control_protocol`]). Each asserts the properties that must hold (panicking otherwise)
//! and returns whether the input was accepted; this crate's tests feed every committed seed
//! through them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keyexchange::NodeRecord;

use crate::control::{error_body, parse_request, RotateOutcome, StatusReport, MAX_REQUEST_LINE};
use crate::registry::kube::annotations::{node_state, record_annotations, NodeState};
use crate::settings::{Settings, KEYS};

/// A `Node` (JSON, as the API server sends it) through [`node_state`]:
///
/// - a peer's record is valid, round-trips through the record JSON, and a `Node` carrying
///   exactly what meshd publishes for it (its annotations and `InternalIP`s) reads back as
///   the same record;
/// - a malformed node's error names its node, the field at fault and what is wrong.
pub fn node_record(data: &[u8]) -> bool {
    let Ok(node) = serde_json::from_slice::<Node>(data) else {
        return false;
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    match node_state(&node) {
        NodeState::Absent => false,
        NodeState::Malformed(err) => {
            assert_eq!(err.node, name, "the error names another node: {err}");
            assert!(!err.field.is_empty() && !err.reason.is_empty(), "{err:?}");
            assert!(err.to_string().contains(err.field), "{err}");
            false
        }
        NodeState::Peer(record) => {
            assert_eq!(record.name, name);
            record
                .validate()
                .unwrap_or_else(|e| panic!("an accepted record does not validate: {e}"));
            let json = record.to_json();
            assert_eq!(
                NodeRecord::from_json(&record.name, &json).as_ref(),
                Ok(&record),
                "the record does not round-trip through {json}"
            );
            let published = published_node(&record, node.spec.clone());
            assert_eq!(
                node_state(&published),
                NodeState::Peer(record),
                "the node as published does not read back"
            );
            true
        }
    }
}

/// A `Node` with what meshd publishes for `record`, the addresses the kubelet reports and the
/// `spec` the cluster set (its `podCIDRs` are the node's pod CIDRs; meshd never writes them).
fn published_node(record: &NodeRecord, spec: Option<k8s_openapi::api::core::v1::NodeSpec>) -> Node {
    let annotations = record_annotations(record)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(record.name.clone()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(
                record
                    .endpoints
                    .iter()
                    .map(|ip| NodeAddress {
                        address: ip.to_string(),
                        type_: "InternalIP".into(),
                    })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
        spec,
    }
}

/// A `ConfigMap` (JSON) through [`Settings::from_data`]:
///
/// - accepted settings write back ([`Settings::to_data`]) to data that reads as the same
///   settings, and only keys outside [`KEYS`] are reported unknown;
/// - a refusal names a key meshd knows and the value exactly as written.
pub fn settings_configmap(data: &[u8]) -> bool {
    let Ok(cm) = serde_json::from_slice::<ConfigMap>(data) else {
        return false;
    };
    let data: BTreeMap<String, String> = cm.data.unwrap_or_default();
    for key in Settings::unknown_keys(&data) {
        assert!(!KEYS.contains(&key), "{key} reported unknown");
    }
    match Settings::from_data(&data) {
        Ok(settings) => {
            let written = settings.to_data();
            assert_eq!(
                Settings::from_data(&written).as_ref(),
                Ok(&settings),
                "settings do not round-trip through {written:?}"
            );
            true
        }
        Err(err) => {
            let key = err.key();
            assert!(KEYS.contains(&key), "refused an unknown key {key}");
            assert_eq!(data.get(key).map(String::as_str), Some(err.value()));
            assert!(err.to_string().contains(key), "{err}");
            false
        }
    }
}

/// The control socket's protocol from both ends:
///
/// - the bytes as a request line (lossy UTF-8, as the daemon reads it; a longer line is
///   refused unread): a line that names no request is answered with a JSON object whose
///   `error` names the line;
/// - the bytes as the daemon's answer, as `meshctl` reads it: a status report or a rotation
///   outcome that decodes re-encodes to the same value.
///
/// Returns whether the bytes were a request.
pub fn control_protocol(data: &[u8]) -> bool {
    if let Ok(report) = serde_json::from_slice::<StatusReport>(data) {
        let text = serde_json::to_string_pretty(&report).expect("a report encodes");
        let again: StatusReport = serde_json::from_str(&text).expect("a report decodes");
        assert_eq!(again, report, "a status report does not round-trip");
    }
    if let Ok(outcome) = serde_json::from_slice::<RotateOutcome>(data) {
        let text = serde_json::to_string_pretty(&outcome).expect("an outcome encodes");
        let again: RotateOutcome = serde_json::from_str(&text).expect("an outcome decodes");
        assert_eq!(again, outcome, "a rotation outcome does not round-trip");
    }
    if data.len() > MAX_REQUEST_LINE {
        return false;
    }
    let line = String::from_utf8_lossy(data);
    match parse_request(&line) {
        Ok(_) => true,
        Err(unknown) => {
            let body = error_body(&unknown.to_string());
            let answer: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("the answer {body:?} is not JSON: {e}"));
            let message = answer["error"].as_str().expect("an error message");
            assert!(
                message.starts_with("unknown request")
                    && message.contains(&format!("{:?}", unknown.line)),
                "the answer {message:?} does not name the line"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed seed of `target` through `check` ([`testkit::seeds::replay`]).
    fn replay(target: &str, check: fn(&[u8]) -> bool) {
        testkit::seeds::replay(env!("CARGO_MANIFEST_DIR"), target, check);
    }

    #[test]
    fn node_record_seeds() {
        replay("node_record", node_record);
    }

    #[test]
    fn settings_configmap_seeds() {
        replay("settings_configmap", settings_configmap);
    }

    #[test]
    fn control_protocol_seeds() {
        replay("control_protocol", control_protocol);
    }

    /// The status seeds are what `meshctl` reads (docs/json-contract.md's example, and the
    /// same without the fields added over time), so the fuzzer starts from real answers.
    #[test]
    fn the_status_seeds_are_status_reports() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/control_protocol");
        for name in ["answer-status-contract", "answer-status-old-meshd"] {
            let data = std::fs::read(dir.join(name)).expect("a seed");
            serde_json::from_slice::<StatusReport>(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
