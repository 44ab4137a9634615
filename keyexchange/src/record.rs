//! The node record: what each node publishes about itself so others can peer with it.
//!
//! # Wire format (version 1) — this is a contract between meshd versions
//!
//! A record is a JSON object:
//!
//! ```json
//! {"version":1,"name":"n1","publicKey":"<base64>","listenPort":51820,
//!  "endpoints":["198.18.0.1","fd00:1::1"],"podCIDRs":["10.244.1.0/24","fd00:244:1::/64"]}
//! ```
//!
//! * `version` (required, integer ≥ 1): records with a version greater than [`RECORD_VERSION`]
//!   are rejected (a newer meshd may have changed the meaning of fields).
//! * `name` (required): the Kubernetes node name, a DNS-1123 subdomain (lowercase alphanumerics,
//!   `-` and `.`, at most 253 characters, starting and ending with an alphanumeric).
//! * `publicKey` (required): standard base64 of the 32-byte WireGuard public key; all-zero is
//!   invalid.
//! * `listenPort` (required): the node's WireGuard UDP port, 1–65535.
//! * `endpoints` (required, non-empty): plain IP addresses (no port) peers send to; unspecified
//!   and multicast addresses are invalid.
//! * `podCIDRs` (required, may be empty): the node's pod networks in canonical CIDR form (no
//!   host bits set), any mix of IPv4 and IPv6.
//!
//! Optional fields (key rotation, make-before-break over two key slots; omitted when empty, so a
//! record without them is byte-identical to what earlier meshd versions wrote):
//!
//! * `secondKey` and `secondPort` (together): the node's second key slot, a second WireGuard
//!   device with its own key and port. Peers keep a tunnel to each slot.
//! * `rotation` (object `{"serial":N,"draining":S,"replaced":true}`): a key rotation in
//!   progress. `serial` (≥ 1) changes with every step; `draining` (0, 1 or absent) is the slot
//!   peers must stop sending on, because its key is about to be replaced; `replaced` (true or
//!   absent) says that key was already replaced.
//! * `acks` (object node name → serial): the rotation steps of other nodes this node has
//!   applied. A rotating node moves to its next step only once every peer acknowledged.
//!
//! Unknown extra fields are ignored, so version 1 can grow optional fields compatibly.
//! [`NodeRecord::to_json`] writes compact JSON with the fields in the order above, so equal
//! records always serialise to identical bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::key::{KeyError, PublicKey};
use crate::slots::Slot;

/// The record format version this meshd writes and the highest it understands.
pub const RECORD_VERSION: u32 = 1;

/// A record failed to parse or validate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record for node \"{node}\": field {field}: {reason}")]
pub struct RecordError {
    /// The record's name if it parsed, else the name the caller expected.
    pub node: String,
    /// The offending JSON field (`"record"` when the document itself is unusable).
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// Everything peers need to know about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// Kubernetes node name (DNS-1123 subdomain).
    pub name: String,
    /// The node's WireGuard public key.
    pub public_key: PublicKey,
    /// The node's WireGuard UDP listen port.
    pub listen_port: u16,
    /// Addresses peers may reach the node at (no port).
    pub endpoints: Vec<IpAddr>,
    /// The node's pod networks.
    pub pod_cidrs: Vec<IpNet>,
    /// The second key slot and the key-rotation handshake (empty from an older meshd).
    pub rotation: Rotation,
}

/// One key slot of a node beyond the first: the key and port of its second device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotKey {
    /// The slot's WireGuard public key.
    pub public_key: PublicKey,
    /// The slot's WireGuard UDP listen port.
    pub listen_port: u16,
}

/// A step of a key rotation in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RotationStep {
    /// Changes (grows) with every step; peers acknowledge it.
    pub serial: u64,
    /// The slot peers must not send on (its key is about to be or was just replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<u8>,
    /// Whether the drained slot's key was already replaced. Until then the node may replace
    /// it at any moment, so no pair may move onto that slot; after, a peer that acknowledged
    /// the step holds the new key.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replaced: bool,
}

/// Key-rotation fields of a record (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// The second key slot; `None` from a meshd that has only one.
    pub second: Option<SlotKey>,
    /// The step of this node's rotation in progress; `None` when idle.
    pub step: Option<RotationStep>,
    /// Other nodes' rotation serials this node has applied, by node name.
    pub acks: BTreeMap<String, u64>,
}

impl NodeRecord {
    /// The key and port of `slot`; `None` when the node has no such slot.
    pub fn slot(&self, slot: Slot) -> Option<SlotKey> {
        if slot == Slot::FIRST {
            Some(SlotKey {
                public_key: self.public_key,
                listen_port: self.listen_port,
            })
        } else {
            self.rotation.second
        }
    }

    /// The slot this node asks peers not to send on, if any.
    pub fn draining(&self) -> Option<Slot> {
        self.rotation
            .step
            .and_then(|s| s.draining)
            .and_then(Slot::new)
    }
}

/// Serialisation shape; field order defines the byte-stable output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    version: u32,
    name: &'a str,
    public_key: &'a PublicKey,
    listen_port: u16,
    endpoints: &'a [IpAddr],
    #[serde(rename = "podCIDRs")]
    pod_cidrs: &'a [IpNet],
    #[serde(skip_serializing_if = "Option::is_none")]
    second_key: Option<&'a PublicKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    second_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation: Option<&'a RotationStep>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    acks: &'a BTreeMap<String, u64>,
}

/// Whether `name` is a DNS-1123 subdomain.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.';
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.iter().all(ok_char)
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

impl NodeRecord {
    /// Compact, deterministic JSON in the version-1 wire format (see the module docs).
    pub fn to_json(&self) -> String {
        let wire = Wire {
            version: RECORD_VERSION,
            name: &self.name,
            public_key: &self.public_key,
            listen_port: self.listen_port,
            endpoints: &self.endpoints,
            pod_cidrs: &self.pod_cidrs,
            second_key: self.rotation.second.as_ref().map(|s| &s.public_key),
            second_port: self.rotation.second.map(|s| s.listen_port),
            rotation: self.rotation.step.as_ref(),
            acks: &self.rotation.acks,
        };
        // Only strings, integers and arrays of Display-able values: serialisation cannot fail.
        serde_json::to_string(&wire)
            .unwrap_or_else(|e| unreachable!("serialising a NodeRecord cannot fail: {e}"))
    }

    /// Parses and validates a record. `node_hint` is the name the caller expects (e.g. the file
    /// stem or object name in the registry); when non-empty it must equal the record's name.
    pub fn from_json(node_hint: &str, text: &str) -> Result<NodeRecord, RecordError> {
        let fail = |node: &str, field: &'static str, reason: String| RecordError {
            node: node.to_string(),
            field,
            reason,
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| fail(node_hint, "record", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(fail(
                node_hint,
                "record",
                format!("expected a JSON object, got {}", kind(&value)),
            ));
        };

        // Attribute errors to the record's own name as soon as it is known to be valid.
        let name = match obj.get("name") {
            Some(Value::String(s)) if is_dns1123_subdomain(s) => Some(s.as_str()),
            _ => None,
        };
        let node = name.unwrap_or(node_hint);

        check_version(&obj).map_err(|reason| fail(node, "version", reason))?;

        let name = match (name, obj.get("name")) {
            (Some(n), _) => n.to_string(),
            (None, None) => return Err(fail(node, "name", "missing".into())),
            (None, Some(Value::String(s))) => {
                return Err(fail(
                    node,
                    "name",
                    format!("{s:?} is not a valid DNS-1123 subdomain"),
                ))
            }
            (None, Some(v)) => {
                return Err(fail(
                    node,
                    "name",
                    format!("expected a string, got {}", kind(v)),
                ))
            }
        };
        if !node_hint.is_empty() && node_hint != name {
            return Err(fail(
                node,
                "name",
                format!("record name {name:?} does not match the registry entry {node_hint:?}"),
            ));
        }

        let public_key =
            parse_public_key(obj.get("publicKey")).map_err(|r| fail(node, "publicKey", r))?;
        let listen_port =
            parse_port(obj.get("listenPort")).map_err(|r| fail(node, "listenPort", r))?;
        let endpoints =
            parse_endpoints(obj.get("endpoints")).map_err(|r| fail(node, "endpoints", r))?;
        let pod_cidrs = parse_cidrs(obj.get("podCIDRs")).map_err(|r| fail(node, "podCIDRs", r))?;
        let second = match (obj.get("secondKey"), obj.get("secondPort")) {
            (None, None) => None,
            (key, port) => Some(SlotKey {
                public_key: parse_public_key(key).map_err(|r| fail(node, "secondKey", r))?,
                listen_port: parse_port(port).map_err(|r| fail(node, "secondPort", r))?,
            }),
        };
        let step = match obj.get("rotation") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_step(v).map_err(|r| fail(node, "rotation", r))?),
        };
        let acks = match obj.get("acks") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => parse_acks(v).map_err(|r| fail(node, "acks", r))?,
        };

        Ok(NodeRecord {
            name,
            public_key,
            listen_port,
            endpoints,
            pod_cidrs,
            rotation: Rotation { second, step, acks },
        })
    }

    /// Checks every field against the same rules [`NodeRecord::from_json`] enforces.
    pub fn validate(&self) -> Result<(), RecordError> {
        let fail = |field: &'static str, reason: String| RecordError {
            node: self.name.clone(),
            field,
            reason,
        };
        if !is_dns1123_subdomain(&self.name) {
            return Err(fail(
                "name",
                format!("{:?} is not a valid DNS-1123 subdomain", self.name),
            ));
        }
        if self.public_key.is_zero() {
            return Err(fail("publicKey", "all-zero key".into()));
        }
        if self.listen_port == 0 {
            return Err(fail("listenPort", "must be 1-65535, got 0".into()));
        }
        check_endpoints(&self.endpoints).map_err(|r| fail("endpoints", r))?;
        for cidr in &self.pod_cidrs {
            check_cidr(cidr).map_err(|r| fail("podCIDRs", r))?;
        }
        if let Some(second) = self.rotation.second {
            if second.public_key.is_zero() {
                return Err(fail("secondKey", "all-zero key".into()));
            }
            if second.listen_port == 0 {
                return Err(fail("secondPort", "must be 1-65535, got 0".into()));
            }
        }
        if let Some(step) = self.rotation.step {
            check_step(&step).map_err(|r| fail("rotation", r))?;
        }
        Ok(())
    }
}

/// Short JSON type name for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_version(obj: &Map<String, Value>) -> Result<(), String> {
    let v = obj.get("version").ok_or_else(|| "missing".to_string())?;
    let n = v
        .as_u64()
        .ok_or_else(|| format!("expected a non-negative integer, got {v}"))?;
    if n == 0 {
        return Err("version 0 is invalid".into());
    }
    if n > u64::from(RECORD_VERSION) {
        return Err(format!(
            "unsupported future version {n} (this meshd understands {RECORD_VERSION})"
        ));
    }
    Ok(())
}

fn parse_public_key(v: Option<&Value>) -> Result<PublicKey, String> {
    let s = match v {
        None => return Err("missing".into()),
        Some(Value::String(s)) => s,
        Some(v) => return Err(format!("expected a base64 string, got {}", kind(v))),
    };
    let key = s.parse::<PublicKey>().map_err(|e| match e {
        KeyError::InvalidLength { len } => format!("key has {len} bytes, expected 32"),
        _ => format!("{s:?} is not valid base64"),
    })?;
    if key.is_zero() {
        return Err("all-zero key".into());
    }
    Ok(key)
}

/// Parses a rotation step object `{"serial":N,"draining":S,"replaced":B}`.
pub fn parse_step(v: &Value) -> Result<RotationStep, String> {
    let Value::Object(obj) = v else {
        return Err(format!("expected an object, got {}", kind(v)));
    };
    let serial = obj
        .get("serial")
        .ok_or_else(|| "serial missing".to_string())?
        .as_u64()
        .ok_or_else(|| "serial must be a non-negative integer".to_string())?;
    let draining = match obj.get("draining") {
        None | Some(Value::Null) => None,
        Some(d) => Some(
            d.as_u64()
                .and_then(|d| u8::try_from(d).ok())
                .ok_or_else(|| format!("draining must be a slot number, got {d}"))?,
        ),
    };
    let replaced = match obj.get("replaced") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(r) => return Err(format!("replaced must be true or false, got {r}")),
    };
    let step = RotationStep {
        serial,
        draining,
        replaced,
    };
    check_step(&step)?;
    Ok(step)
}

fn check_step(step: &RotationStep) -> Result<(), String> {
    if step.serial == 0 {
        return Err("serial must be at least 1".into());
    }
    match step.draining {
        Some(d) if d > 1 => Err(format!("draining must be slot 0 or 1, got {d}")),
        _ => Ok(()),
    }
}

/// Parses the acknowledgements object (node name → serial).
pub fn parse_acks(v: &Value) -> Result<BTreeMap<String, u64>, String> {
    let Value::Object(obj) = v else {
        return Err(format!("expected an object, got {}", kind(v)));
    };
    obj.iter()
        .map(|(k, v)| {
            if !is_dns1123_subdomain(k) {
                return Err(format!("{k:?} is not a node name"));
            }
            let n = v
                .as_u64()
                .ok_or_else(|| format!("ack for {k} must be a non-negative integer, got {v}"))?;
            Ok((k.clone(), n))
        })
        .collect()
}

fn parse_port(v: Option<&Value>) -> Result<u16, String> {
    let v = v.ok_or_else(|| "missing".to_string())?;
    match v.as_u64() {
        Some(0) => Err("must be 1-65535, got 0".into()),
        Some(n) => u16::try_from(n).map_err(|_| format!("must be 1-65535, got {n}")),
        None => Err(format!("expected an integer port, got {v}")),
    }
}

fn string_array(v: Option<&Value>) -> Result<Vec<&str>, String> {
    match v {
        None => Err("missing".into()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.as_str()),
                other => Err(format!("expected strings, got {}", kind(other))),
            })
            .collect(),
        Some(other) => Err(format!("expected an array of strings, got {}", kind(other))),
    }
}

fn parse_endpoints(v: Option<&Value>) -> Result<Vec<IpAddr>, String> {
    let endpoints = string_array(v)?
        .into_iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_endpoints(&endpoints)?;
    Ok(endpoints)
}

fn check_endpoints(endpoints: &[IpAddr]) -> Result<(), String> {
    if endpoints.is_empty() {
        return Err("must list at least one address".into());
    }
    for ip in endpoints {
        if ip.is_unspecified() {
            return Err(format!("{ip} is the unspecified address"));
        }
        if ip.is_multicast() {
            return Err(format!("{ip} is a multicast address"));
        }
    }
    Ok(())
}

fn parse_cidrs(v: Option<&Value>) -> Result<Vec<IpNet>, String> {
    string_array(v)?
        .into_iter()
        .map(|s| {
            let net = s
                .parse::<IpNet>()
                .map_err(|_| format!("{s:?} is not a CIDR (address/prefix)"))?;
            check_cidr(&net)?;
            Ok(net)
        })
        .collect()
}

fn check_cidr(net: &IpNet) -> Result<(), String> {
    if net.trunc() != *net {
        return Err(format!(
            "{net} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(())
}

impl fmt::Display for NodeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    fn sample() -> NodeRecord {
        NodeRecord {
            name: "n1".into(),
            public_key: PublicKey::from_bytes([3; 32]),
            listen_port: 51820,
            endpoints: vec!["198.18.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap()],
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:244:1::/64".parse().unwrap(),
            ],
            rotation: Default::default(),
        }
    }

    /// Sample as a JSON object with `edit` applied.
    fn json_with(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut v: Value = serde_json::from_str(&sample().to_json()).unwrap();
        edit(v.as_object_mut().unwrap());
        v.to_string()
    }

    #[test]
    fn rotation_fields_round_trip_and_are_omitted_when_empty() {
        let plain = sample().to_json();
        assert!(
            !plain.contains("second") && !plain.contains("rotation") && !plain.contains("acks")
        );
        let mut r = sample();
        r.rotation = Rotation {
            second: Some(SlotKey {
                public_key: PublicKey::from_bytes([5; 32]),
                listen_port: 51821,
            }),
            step: Some(RotationStep {
                serial: 3,
                draining: Some(1),
                replaced: true,
            }),
            acks: BTreeMap::from([("n2".to_string(), 9)]),
        };
        let text = r.to_json();
        assert!(
            text.contains(r#""rotation":{"serial":3,"draining":1,"replaced":true}"#),
            "{text}"
        );
        assert_eq!(NodeRecord::from_json("n1", &text).unwrap(), r);
        assert_eq!(r.slot(Slot::SECOND).unwrap().listen_port, 51821);
        assert_eq!(r.draining(), Some(Slot::SECOND));
    }

    #[test]
    fn rotation_field_errors_name_the_field() {
        let bad = [
            (
                json_with(|o| drop(o.insert("secondKey".into(), "AAAA".into()))),
                "secondKey",
            ),
            (
                json_with(|o| {
                    o.insert("secondKey".into(), STANDARD.encode([5u8; 32]).into());
                    o.insert("secondPort".into(), 0.into());
                }),
                "secondPort",
            ),
            (
                json_with(|o| drop(o.insert("rotation".into(), serde_json::json!({"serial": 0})))),
                "rotation",
            ),
            (
                json_with(|o| {
                    o.insert(
                        "rotation".into(),
                        serde_json::json!({"serial": 2, "draining": 2}),
                    );
                }),
                "rotation",
            ),
            (
                json_with(|o| {
                    o.insert(
                        "rotation".into(),
                        serde_json::json!({"serial": 2, "draining": 1, "replaced": "yes"}),
                    );
                }),
                "rotation",
            ),
            (
                json_with(|o| drop(o.insert("acks".into(), serde_json::json!({"N2!": 1})))),
                "acks",
            ),
        ];
        for (text, field) in bad {
            assert_eq!(field_err(&text).field, field, "{text}");
        }
    }

    fn field_err(text: &str) -> RecordError {
        NodeRecord::from_json("n1", text).unwrap_err()
    }

    #[test]
    fn exact_wire_format() {
        let key = STANDARD.encode([3u8; 32]);
        assert_eq!(
            sample().to_json(),
            format!(
                r#"{{"version":1,"name":"n1","publicKey":"{key}","listenPort":51820,"endpoints":["198.18.0.1","fd00:1::1"],"podCIDRs":["10.244.1.0/24","fd00:244:1::/64"]}}"#
            )
        );
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(NodeRecord::from_json("n1", &r.to_json()).unwrap(), r);
        assert_eq!(NodeRecord::from_json("", &r.to_json()).unwrap(), r);
        let mut empty = r.clone();
        empty.pod_cidrs.clear();
        assert_eq!(
            NodeRecord::from_json("n1", &empty.to_json()).unwrap(),
            empty
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let text = json_with(|o| {
            o.insert("futureField".into(), serde_json::json!({"x": [1, 2]}));
            o.insert("mtu".into(), 1420.into());
        });
        assert_eq!(NodeRecord::from_json("n1", &text).unwrap(), sample());
    }

    #[test]
    fn not_json_or_not_object() {
        for text in ["", "{", "nope", "[1,2]", "\"str\"", "null", "42"] {
            let e = NodeRecord::from_json("hint", text).unwrap_err();
            assert_eq!(e.field, "record", "{text:?}");
            assert_eq!(e.node, "hint");
        }
    }

    #[test]
    fn version_errors() {
        let e = field_err(&json_with(|o| {
            o.remove("version");
        }));
        assert_eq!((e.field, e.reason.as_str()), ("version", "missing"));

        let e = field_err(&json_with(|o| {
            o.insert("version".into(), 2.into());
        }));
        assert_eq!(e.field, "version");
        assert_eq!(e.node, "n1");
        assert!(
            e.reason.contains("unsupported future version 2"),
            "{}",
            e.reason
        );
        assert!(e.reason.contains("understands 1"), "{}", e.reason);
        assert_eq!(
            e.to_string(),
            "record for node \"n1\": field version: unsupported future version 2 (this meshd understands 1)"
        );

        for bad in [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!("1"),
            serde_json::json!(1.5),
        ] {
            let e = field_err(&json_with(|o| {
                o.insert("version".into(), bad.clone());
            }));
            assert_eq!(e.field, "version", "{bad}");
        }
    }

    #[test]
    fn name_errors() {
        let e = NodeRecord::from_json(
            "hint",
            &json_with(|o| {
                o.remove("name");
            }),
        )
        .unwrap_err();
        assert_eq!((e.field, e.node.as_str()), ("name", "hint"));

        let long = "a".repeat(254);
        for bad in [
            "",
            "N1",
            "-n1",
            "n1-",
            "n_1",
            "../x",
            "a/b",
            ".n1",
            long.as_str(),
        ] {
            let e = NodeRecord::from_json(
                "hint",
                &json_with(|o| {
                    o.insert("name".into(), bad.into());
                }),
            )
            .unwrap_err();
            assert_eq!(e.field, "name", "{bad:?}");
            assert_eq!(
                e.node, "hint",
                "invalid name must not be used as node: {bad:?}"
            );
        }
        let e = field_err(&json_with(|o| {
            o.insert("name".into(), 7.into());
        }));
        assert_eq!(e.field, "name");

        let ok = "a".repeat(253);
        assert!(is_dns1123_subdomain(&ok));
        assert!(is_dns1123_subdomain("node-1.example.com"));
    }

    #[test]
    fn name_mismatch_with_hint() {
        let e = NodeRecord::from_json("n2", &sample().to_json()).unwrap_err();
        assert_eq!(e.field, "name");
        assert_eq!(e.node, "n1");
        assert!(e.reason.contains("n2"), "{}", e.reason);
    }

    #[test]
    fn public_key_errors() {
        let e = field_err(&json_with(|o| {
            o.insert("publicKey".into(), "!!!not base64!!!".into());
        }));
        assert_eq!(e.field, "publicKey");
        assert!(e.reason.contains("base64"), "{}", e.reason);

        let e = field_err(&json_with(|o| {
            o.insert("publicKey".into(), STANDARD.encode([1u8; 16]).into());
        }));
        assert_eq!(e.field, "publicKey");
        assert!(e.reason.contains("16"), "{}", e.reason);

        let e = field_err(&json_with(|o| {
            o.insert("publicKey".into(), STANDARD.encode([0u8; 32]).into());
        }));
        assert_eq!(e.field, "publicKey");

        for edit in [None, Some(Value::from(5))] {
            let e = field_err(&json_with(|o| match edit {
                None => {
                    o.remove("publicKey");
                }
                Some(v) => {
                    o.insert("publicKey".into(), v);
                }
            }));
            assert_eq!(e.field, "publicKey");
        }
    }

    #[test]
    fn listen_port_errors() {
        for bad in [
            Some(Value::from(0)),
            Some(Value::from(65536)),
            Some(Value::from("51820")),
            None,
        ] {
            let e = field_err(&json_with(|o| match &bad {
                None => {
                    o.remove("listenPort");
                }
                Some(v) => {
                    o.insert("listenPort".into(), v.clone());
                }
            }));
            assert_eq!(e.field, "listenPort", "{bad:?}");
        }
    }

    #[test]
    fn endpoint_errors() {
        let cases = [
            serde_json::json!([]),
            serde_json::json!(["not-an-ip"]),
            serde_json::json!(["198.18.0.1:51820"]),
            serde_json::json!(["0.0.0.0"]),
            serde_json::json!(["::"]),
            serde_json::json!(["224.0.0.1"]),
            serde_json::json!(["ff02::1"]),
            serde_json::json!([1]),
            serde_json::json!("198.18.0.1"),
        ];
        for bad in cases {
            let e = field_err(&json_with(|o| {
                o.insert("endpoints".into(), bad.clone());
            }));
            assert_eq!(e.field, "endpoints", "{bad}");
        }
        let e = field_err(&json_with(|o| {
            o.remove("endpoints");
        }));
        assert_eq!(e.field, "endpoints");
    }

    #[test]
    fn pod_cidr_errors() {
        let cases = [
            serde_json::json!(["10.0.0.1/24"]),
            serde_json::json!(["fd00::1/64"]),
            serde_json::json!(["10.0.0.0"]),
            serde_json::json!(["10.0.0.0/33"]),
            serde_json::json!(["garbage"]),
            serde_json::json!({}),
        ];
        for bad in cases {
            let e = field_err(&json_with(|o| {
                o.insert("podCIDRs".into(), bad.clone());
            }));
            assert_eq!(e.field, "podCIDRs", "{bad}");
        }
        let e = field_err(&json_with(|o| {
            o.insert("podCIDRs".into(), serde_json::json!(["10.0.0.1/24"]));
        }));
        assert!(e.reason.contains("10.0.0.0/24"), "{}", e.reason);
    }

    #[test]
    fn validate_rejects_bad_records() {
        let mut r = sample();
        r.name = "../x".into();
        assert_eq!(r.validate().unwrap_err().field, "name");
        let mut r = sample();
        r.public_key = PublicKey::from_bytes([0; 32]);
        assert_eq!(r.validate().unwrap_err().field, "publicKey");
        let mut r = sample();
        r.listen_port = 0;
        assert_eq!(r.validate().unwrap_err().field, "listenPort");
        let mut r = sample();
        r.endpoints.clear();
        assert_eq!(r.validate().unwrap_err().field, "endpoints");
        let mut r = sample();
        r.endpoints.push("0.0.0.0".parse().unwrap());
        assert_eq!(r.validate().unwrap_err().field, "endpoints");
        let mut r = sample();
        r.pod_cidrs.push("10.1.2.3/16".parse().unwrap());
        assert_eq!(r.validate().unwrap_err().field, "podCIDRs");
    }
}
