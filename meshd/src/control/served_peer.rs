//! The served status in the daemon's memory: [`ServedStatus`], whose peers ([`ServedPeer`])
//! hold keys, addresses and prefixes as fixed-size values instead of text, and serialise to
//! the very JSON of [`PeerReport`] (`docs/json-contract.md`).
//!
//! At 5,000 peers on each of the two devices the status as [`PeerReport`]s took ≈ 5 MiB
//! (eight small strings per peer: the key, the endpoint, four allowed IPs, the name, and the
//! list), next to the ≈ 3.5 MiB of its cached compact JSON. A [`ServedPeer`] holds only its
//! name as text. Clients read the same document into [`PeerReport`]s as before; inside the
//! daemon, the few readers that want a [`StatusReport`] (the metrics, `/status`, the Node
//! condition) get one with [`ServedStatus::report`].

use std::net::SocketAddr;

use ipnet::IpNet;
use keyexchange::PublicKey;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use smallvec::SmallVec;

use std::collections::BTreeMap;

use super::{PeerReport, RotationReport, SlotReport, StatusReport};
use crate::bpf::CidrList;

/// The status as the daemon keeps and serves it.
pub type ServedStatus = StatusReport<ServedPeer>;

/// A served peer's allowed IPs: four in place, more spilled to the heap.
pub type ServedAllowedIps = SmallVec<[IpNet; 4]>;

/// One peer of a device, as the daemon keeps it for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPeer {
    /// The peer's node name, when the registry knows it.
    pub name: Option<Box<str>>,
    /// The peer's WireGuard public key.
    pub public_key: PublicKey,
    /// The endpoint the device sends to.
    pub endpoint: Option<SocketAddr>,
    /// AllowedIPs, up to four in place (a peer's pod CIDRs and host addresses): no block of
    /// its own per peer, allocated at every status refresh among the devices' transient dumps.
    pub allowed_ips: ServedAllowedIps,
    /// Last handshake as UNIX seconds, if any.
    pub last_handshake_unix: Option<u64>,
    /// Seconds since the last handshake, if any.
    pub last_handshake_secs_ago: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

impl ServedPeer {
    /// The peer as clients read it.
    pub fn report(&self) -> PeerReport {
        PeerReport {
            name: self.name.as_deref().map(String::from),
            public_key: self.public_key.to_string(),
            endpoint: self.endpoint.map(|e| e.to_string()),
            allowed_ips: self.allowed_ips.iter().map(ToString::to_string).collect(),
            last_handshake_unix: self.last_handshake_unix,
            last_handshake_secs_ago: self.last_handshake_secs_ago,
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
        }
    }
}

/// A value serialised as its `Display` text (as `to_string` gives it).
struct AsText<'a, T: std::fmt::Display>(&'a T);

impl<T: std::fmt::Display> Serialize for AsText<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// A list serialised as the `Display` text of each item.
struct AllAsText<'a, T: std::fmt::Display>(&'a [T]);

impl<T: std::fmt::Display> Serialize for AllAsText<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&AsText(item))?;
        }
        seq.end()
    }
}

impl Serialize for ServedPeer {
    /// Field for field what `PeerReport`'s derived `Serialize` writes from [`Self::report`].
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("PeerReport", 8)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("public_key", &AsText(&self.public_key))?;
        s.serialize_field("endpoint", &self.endpoint.as_ref().map(AsText))?;
        s.serialize_field("allowed_ips", &AllAsText(&self.allowed_ips))?;
        s.serialize_field("last_handshake_unix", &self.last_handshake_unix)?;
        s.serialize_field("last_handshake_secs_ago", &self.last_handshake_secs_ago)?;
        s.serialize_field("rx_bytes", &self.rx_bytes)?;
        s.serialize_field("tx_bytes", &self.tx_bytes)?;
        s.end()
    }
}

/// The parts of a status, besides its peers, that hold an entry per peer node: copied into a
/// full report, left empty in a [`StatusSummary`].
struct PerPeerParts {
    known_nodes: Vec<String>,
    datapath: Option<crate::bpf::DatapathReport>,
    rotation: RotationReport,
}

impl<P> StatusReport<P> {
    /// The same status with each peer made by `peer`.
    pub fn map_peers<Q>(&self, peer: impl Fn(&P) -> Q) -> StatusReport<Q> {
        self.rebuilt(
            |list| list.iter().map(&peer).collect(),
            PerPeerParts {
                known_nodes: self.known_nodes.clone(),
                datapath: self.datapath.clone(),
                rotation: self.rotation.clone(),
            },
        )
    }

    /// This status's fields, each slot's peers made by `peers` and the per-peer parts given.
    fn rebuilt<Q>(&self, peers: impl Fn(&[P]) -> Vec<Q>, parts: PerPeerParts) -> StatusReport<Q> {
        StatusReport {
            node: self.node.clone(),
            public_key: self.public_key.clone(),
            mode: self.mode,
            interface: self.interface.clone(),
            ifindex: self.ifindex,
            adopted_device: self.adopted_device,
            listen_port: self.listen_port,
            mtu: self.mtu,
            endpoints: self.endpoints.clone(),
            pod_cidrs: self.pod_cidrs.clone(),
            known_nodes: parts.known_nodes,
            peers: peers(&self.peers),
            conflicts: self.conflicts.clone(),
            malformed: self.malformed.clone(),
            counters: self.counters.clone(),
            converged: self.converged,
            encryption: self.encryption,
            strict_mode: self.strict_mode,
            host_encryption: self.host_encryption,
            encrypted_hosts: self.encrypted_hosts.clone(),
            datapath: parts.datapath,
            key_created_unix: self.key_created_unix,
            second: self.second.as_ref().map(|s| SlotReport {
                interface: s.interface.clone(),
                ifindex: s.ifindex,
                public_key: s.public_key.clone(),
                listen_port: s.listen_port,
                peers: peers(&s.peers),
            }),
            rotation: parts.rotation,
            cleartext: self.cleartext.clone(),
            policy: self.policy.clone(),
            refused: self.refused.clone(),
        }
    }
}

/// The status as the status feed carries it (the Node condition, the refusal Events): every
/// field but the lists with an entry per peer node. Its peers are counted (each one `()`);
/// `known_nodes`, the rotation's `pending`, `excused` and `peer_slots` and the datapath's CIDR
/// lists are empty. The feed
/// is replaced after every pass: as a whole [`StatusReport`] it held another ≈ 5 MiB copy of
/// the status at 5,000 peers, rebuilt each time.
pub type StatusSummary = StatusReport<()>;

impl ServedStatus {
    /// The status as clients read it.
    pub fn report(&self) -> StatusReport {
        self.map_peers(ServedPeer::report)
    }

    /// The status as the status feed carries it ([`StatusSummary`]).
    pub fn summary(&self) -> StatusSummary {
        self.rebuilt(
            |list| vec![(); list.len()],
            PerPeerParts {
                known_nodes: Vec::new(),
                datapath: self.datapath.as_ref().map(|d| crate::bpf::DatapathReport {
                    pin_dir: d.pin_dir.clone(),
                    underlay_mode: d.underlay_mode,
                    underlay_interface: d.underlay_interface.clone(),
                    underlay_attached: d.underlay_attached,
                    guarded_interfaces: d.guarded_interfaces.clone(),
                    attach: d.attach,
                    remote_cidrs: CidrList::default(),
                    cluster_cidrs: CidrList::default(),
                    local_pods: d.local_pods,
                    pod_interfaces: d.pod_interfaces,
                    pod_sources: d.pod_sources,
                    counters: d.counters,
                }),
                rotation: RotationReport {
                    phase: self.rotation.phase,
                    slot: self.rotation.slot,
                    serial: self.rotation.serial,
                    pending: Vec::new(),
                    excused: Vec::new(),
                    rotations: self.rotation.rotations,
                    failures: self.rotation.failures,
                    last_unix: self.rotation.last_unix,
                    last_error: self.rotation.last_error.clone(),
                    peer_slots: BTreeMap::new(),
                    interval_secs: self.rotation.interval_secs,
                },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests_support::sample;
    use super::*;

    fn peer(i: u8, named: bool) -> ServedPeer {
        ServedPeer {
            name: named.then(|| format!("n{i}").into()),
            public_key: PublicKey::from_bytes([i; 32]),
            endpoint: Some(format!("198.18.0.{i}:51820").parse().unwrap()),
            allowed_ips: [
                format!("10.244.{i}.0/24"),
                format!("198.18.0.{i}/32"),
                format!("fd00:198::{i}/128"),
                format!("fd00:244:0:{i}::/64"),
            ]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect(),
            last_handshake_unix: named.then_some(1_796_576_675),
            last_handshake_secs_ago: named.then_some(29),
            rx_bytes: 596,
            tx_bytes: u64::from(i),
        }
    }

    #[test]
    fn the_summary_counts_the_peers_and_keeps_what_the_condition_and_events_read() {
        use crate::registry::kube::node_condition::condition;
        let mut served: ServedStatus = sample();
        served.peers = vec![peer(2, true), peer(3, false)];
        served.known_nodes = vec!["n1".into(), "n2".into(), "n3".into()];
        served.rotation.peer_slots = [("n2".to_string(), 1)].into();
        served.refused = vec![crate::control::RefusalReport {
            node: "n3".into(),
            field: "podCIDRs".into(),
            reason: "outside the pools".into(),
            holder: None,
        }];
        let summary = served.summary();
        assert_eq!(summary.peers.len(), 2);
        assert_eq!(condition(&summary), condition(&served.report()));
        assert_eq!(summary.refused, served.refused);
        assert_eq!(summary.converged, served.converged);
        // The lists with an entry per peer node are left out.
        assert!(summary.known_nodes.is_empty());
        assert!(summary.rotation.peer_slots.is_empty());
        let datapath = summary.datapath.as_ref().unwrap();
        assert!(datapath.remote_cidrs.is_empty());
        assert_eq!(
            datapath.underlay_attached,
            served.datapath.as_ref().unwrap().underlay_attached
        );
        served.converged = false;
        assert_eq!(condition(&served.summary()).reason, "NotConverged");
    }

    #[test]
    fn the_served_status_serialises_to_the_document_of_its_report() {
        let mut served: ServedStatus = sample();
        served.peers = vec![peer(2, true), peer(3, false)];
        served.second = Some(SlotReport {
            interface: "meshd1".into(),
            ifindex: 8,
            public_key: "k2".into(),
            listen_port: 51821,
            peers: vec![peer(4, true)],
        });
        let report = served.report();
        assert_eq!(report.peers[0].allowed_ips[3], "fd00:244:0:2::/64");
        assert_eq!(report.peers[1].name, None);
        assert_eq!(
            serde_json::to_string(&served).unwrap(),
            serde_json::to_string(&report).unwrap()
        );
        assert_eq!(
            serde_json::to_string_pretty(&served).unwrap(),
            serde_json::to_string_pretty(&report).unwrap()
        );
        // Clients read it back as before.
        let read: StatusReport = serde_json::from_str(&serde_json::to_string(&served).unwrap())
            .expect("a status report");
        assert_eq!(read, report);
    }
}
