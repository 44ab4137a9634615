//! Serde types for the lab status contract printed by
//! `meshctl lab status --name NAME -o json` (version 1). Deserialisation is
//! tolerant: unknown keys are ignored and missing keys take defaults.

use serde::{Deserialize, Serialize};

/// The lab's cluster pod CIDRs (`meshctl lab up` passes them to every meshd as
/// `--cluster-cidr`; node K's pods get `10.244.K.0/24` and `fd00:244:0:K::/64`). Not in the
/// status contract; a test keeps them equal to meshd's.
pub const CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:244::/48"];

/// Top-level lab status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabStatus {
    /// Contract version (1).
    pub version: u32,
    /// Lab name.
    pub lab: String,
    /// WireGuard listen port used by every node.
    pub listen_port: u16,
    /// Where to capture underlay traffic.
    pub capture: CaptureSpot,
    /// The nodes.
    pub nodes: Vec<LabNode>,
    /// The pods.
    pub pods: Vec<LabPod>,
}

/// Namespace and interface on which the whole underlay can be captured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaptureSpot {
    /// Network namespace (e.g. `NAME-ul`).
    pub namespace: String,
    /// Interface (e.g. `br0`).
    pub interface: String,
}

/// One lab node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabNode {
    /// Node name (`n1`).
    pub name: String,
    /// Node network namespace.
    pub namespace: String,
    /// Underlay interface inside the node namespace.
    pub underlay_interface: String,
    /// Underlay addresses (IPv4 and/or IPv6), as text.
    pub underlay_addresses: Vec<String>,
    /// WireGuard interface name.
    pub wireguard_interface: String,
    /// `userspace` or `kernel`.
    pub mode: String,
    /// Pod CIDRs owned by this node, as text.
    pub pod_cidrs: Vec<String>,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// PID of the node's meshd, if running.
    pub meshd_pid: Option<u32>,
    /// Whether meshd is running.
    pub running: bool,
    /// Peers as reported by meshd (shape not fixed by the contract).
    pub peers: Vec<serde_json::Value>,
}

/// One lab pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabPod {
    /// Pod name (`n1-p1`).
    pub name: String,
    /// Name of the node it runs on.
    pub node: String,
    /// Pod network namespace.
    pub namespace: String,
    /// Pod interface name.
    pub interface: String,
    /// IPv4 address, if any.
    pub ipv4: Option<String>,
    /// IPv6 address, if any.
    pub ipv6: Option<String>,
}

impl LabStatus {
    /// Parses the JSON printed by `meshctl lab status -o json`.
    pub fn from_json(s: &str) -> serde_json::Result<Self> {
        serde_json::from_str(s)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pods running on node `node`, in listed order.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a LabPod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// All pod CIDRs of all nodes, parsed (unparseable entries are skipped).
    pub fn pod_cidrs(&self) -> Vec<ipnet::IpNet> {
        self.nodes
            .iter()
            .flat_map(|n| n.pod_cidrs.iter())
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// What a capture of this lab's underlay may hold: WireGuard on the lab's port between node
    /// addresses, and no pod address (no marker strings).
    pub fn capture_policy(&self) -> crate::capture::CapturePolicy {
        crate::capture::CapturePolicy {
            pod_cidrs: self.pod_cidrs(),
            node_addrs: self.node_addrs(),
            wireguard_port: self.listen_port,
            markers: vec![],
        }
    }

    /// All node underlay addresses, parsed (unparseable entries are skipped).
    pub fn node_addrs(&self) -> Vec<std::net::IpAddr> {
        self.nodes
            .iter()
            .flat_map(|n| n.underlay_addresses.iter())
            .filter_map(|a| a.split('/').next().and_then(|a| a.parse().ok()))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cluster_cidrs_are_the_labs() {
        assert_eq!(
            CLUSTER_CIDRS,
            [meshd_lab::plan::CLUSTER_V4, meshd_lab::plan::CLUSTER_V6]
        );
    }

    const SAMPLE: &str = r#"{ "version": 1, "lab": "t", "listen_port": 51820,
      "capture": { "namespace": "t-ul", "interface": "br0" },
      "nodes": [ { "name": "n1", "namespace": "t-n1", "underlay_interface": "eth0",
        "underlay_addresses": ["198.18.0.11", "fd00:198::11"], "wireguard_interface": "meshd0",
        "mode": "userspace", "pod_cidrs": ["10.244.1.0/24", "fd00:244:1::/64"],
        "public_key": "abc=", "meshd_pid": 1234, "running": true, "peers": [], "extra": 5 } ],
      "pods": [ { "name": "n1-p1", "node": "n1", "namespace": "t-n1-p1", "interface": "eth0",
        "ipv4": "10.244.1.2", "ipv6": "fd00:244:1::2" } ], "future": {"x": 1} }"#;

    #[test]
    fn parses_contract() {
        let s = LabStatus::from_json(SAMPLE).unwrap();
        assert_eq!(s.version, 1);
        assert_eq!(s.capture.interface, "br0");
        assert_eq!(s.nodes[0].meshd_pid, Some(1234));
        assert_eq!(s.pods_on("n1").count(), 1);
        assert_eq!(s.pod_cidrs().len(), 2);
        assert_eq!(s.node_addrs().len(), 2);
        assert_eq!(s.node("n1").unwrap().mode, "userspace");
    }

    #[test]
    fn tolerates_missing_and_null() {
        let s = LabStatus::from_json(
            r#"{"lab":"x","nodes":[{"name":"n1","meshd_pid":null}],"pods":[{"name":"p","ipv6":null}]}"#,
        )
        .unwrap();
        assert_eq!(s.nodes[0].meshd_pid, None);
        assert_eq!(s.pods[0].ipv4, None);
        assert_eq!(s.listen_port, 0);
    }
}
