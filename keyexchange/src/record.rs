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
//! * `acks` (object node name → serial): written by meshd versions before 0.20, in which
//!   every peer acknowledged every other node's rotation steps in its own record. It is no
//!   longer written; a record that still carries it parses, and the field is ignored
//!   (peers' readiness is now read from the data plane, see `docs/key-rotation.md`).
//!
//! Unknown extra fields are ignored, so version 1 can grow optional fields compatibly.
//! [`NodeRecord::to_json`] writes compact JSON with the fields in the order above, so equal
//! records always serialise to identical bytes.

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
    /// Changes (grows) with every step.
    pub serial: u64,
    /// The slot peers must not send on (its key is about to be or was just replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<u8>,
    /// Whether the drained slot's key was already replaced. Until then the node may replace
    /// it at any moment, so no pair may move onto that slot; after, a peer that completed a
    /// handshake with the node on that slot holds the new key.
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
        // `acks` (written by meshd before 0.20) is ignored, whatever it holds.

        Ok(NodeRecord {
            name,
            public_key,
            listen_port,
            endpoints,
            pod_cidrs,
            rotation: Rotation { second, step },
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
mod tests;
