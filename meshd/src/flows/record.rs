//! A flow as meshd reports it: the record `meshctl observe -o json` prints and the control
//! socket's `flows` requests stream, one JSON object per line.
//!
//! Field names follow Hubble's flow JSON where the meaning is the same (`verdict`,
//! `drop_reason_desc`, `IP`, `l4`, `source`, `destination`, `interface`,
//! `traffic_direction`, `trace_observation_point`, `egress_denied_by`, `ingress_denied_by`,
//! `lost_events`); what Hubble has no field for is meshd's own (`reason`, `packets`, `bytes`,
//! `event`, `peer_node`). The stream line is a [`FlowsResponse`]: a flow or a count of lost
//! events, with the observing node and the time. This module is the contract between the
//! daemon (producer) and `meshctl` (consumer): pure types, no I/O.

use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One line of a `flows` answer: a flow or a lost-events notice, seen on `node_name` at `time`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsResponse {
    /// The flow or the notice.
    #[serde(flatten)]
    pub item: ResponseItem,
    /// The node that observed it (meshd's node name).
    pub node_name: String,
    /// When it was observed (for an aggregate: the end of its interval).
    pub time: Timestamp,
}

/// What a [`FlowsResponse`] carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseItem {
    /// A flow event.
    Flow(Box<Flow>),
    /// Events that were lost before they reached the history.
    LostEvents(LostEvents),
}

/// A flow event: one packet (a drop, a flow's first packet) or a flow's aggregated counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// When the packet was seen (first packet or drop) or the aggregate interval ended.
    pub time: Timestamp,
    /// Forwarded, dropped, or would have been dropped (permissive mode).
    pub verdict: Verdict,
    /// Why: meshd's own reason, on every flow.
    pub reason: Reason,
    /// Hubble's name for the drop reason, on drops only (`POLICY_DENIED`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<String>,
    /// What this event counts: a single packet or an aggregate.
    pub event: EventKind,
    /// Addresses and family.
    #[serde(rename = "IP")]
    pub ip: IpHeader,
    /// Transport header, when the packet has one meshd parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<L4>,
    /// The source pod, when the address is a known pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    /// The destination pod, when the address is a known pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    /// The node the packet was tunnelled to (verdict forwarded, reason to-tunnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_node: Option<String>,
    /// The interface the program ran on.
    pub interface: Interface,
    /// Relative to the pod (from a pod: egress; to a pod: ingress) or the node (underlay: egress).
    pub traffic_direction: TrafficDirection,
    /// Which program saw it.
    pub trace_observation_point: ObservationPoint,
    /// Policies isolating the source pod for egress, on an egress policy drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<PolicyRef>,
    /// Policies isolating the destination pod for ingress, on an ingress policy drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<PolicyRef>,
    /// Packets this event stands for (1 for a single packet).
    pub packets: u64,
    /// Bytes (IP length) this event stands for.
    pub bytes: u64,
}

/// The verdict, in Hubble's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Sent on (into the tunnel, to a local pod, out of the node).
    Forwarded,
    /// Dropped.
    Dropped,
    /// Allowed, but enforcement would have dropped it (permissive mode).
    Audit,
}

/// meshd's reason for the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Redirected into the WireGuard tunnel towards the owning node.
    ToTunnel,
    /// Delivered to a pod on this node (or passed to the host stack).
    LocalDelivery,
    /// Denied by NetworkPolicy (direction in `traffic_direction`).
    PolicyDenied,
    /// Strict mode: cluster traffic about to leave the node in clear.
    StrictMode,
    /// The source address is not the sending pod's.
    SpoofedSource,
    /// Permissive mode: strict mode would have dropped this.
    WouldDrop,
}

impl Reason {
    /// Hubble's `drop_reason_desc` for a drop with this reason.
    pub fn drop_reason_desc(self) -> Option<&'static str> {
        match self {
            Reason::PolicyDenied => Some("POLICY_DENIED"),
            Reason::StrictMode => Some("UNENCRYPTED_TRAFFIC"),
            Reason::SpoofedSource => Some("INVALID_SOURCE_IP"),
            Reason::ToTunnel | Reason::LocalDelivery | Reason::WouldDrop => None,
        }
    }
}

/// What a flow event counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A dropped packet (every drop is reported).
    Drop,
    /// The first packet of a forwarded flow.
    FirstPacket,
    /// A forwarded flow's packets since its last report.
    Aggregate,
}

/// The IP header's addresses, in Hubble's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpHeader {
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// `IPv4` or `IPv6`.
    #[serde(rename = "ipVersion")]
    pub ip_version: IpVersion,
}

/// The address family, in Hubble's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpVersion {
    /// IPv4.
    IPv4,
    /// IPv6.
    IPv6,
}

/// The transport header, keyed by protocol as Hubble does (`{"TCP": {...}}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum L4 {
    /// TCP ports.
    #[serde(rename = "TCP")]
    Tcp(Ports),
    /// UDP ports.
    #[serde(rename = "UDP")]
    Udp(Ports),
    /// SCTP ports.
    #[serde(rename = "SCTP")]
    Sctp(Ports),
    /// ICMP type and code.
    #[serde(rename = "ICMPv4")]
    IcmpV4(Icmp),
    /// ICMPv6 type and code.
    #[serde(rename = "ICMPv6")]
    IcmpV6(Icmp),
    /// Another IP protocol, by number.
    #[serde(rename = "other")]
    Other {
        /// The IP protocol number.
        protocol: u8,
    },
}

impl L4 {
    /// The IP protocol number.
    pub fn protocol(&self) -> u8 {
        match self {
            L4::Tcp(_) => 6,
            L4::Udp(_) => 17,
            L4::Sctp(_) => 132,
            L4::IcmpV4(_) => 1,
            L4::IcmpV6(_) => 58,
            L4::Other { protocol } => *protocol,
        }
    }

    /// The ports, for TCP, UDP and SCTP.
    pub fn ports(&self) -> Option<Ports> {
        match self {
            L4::Tcp(p) | L4::Udp(p) | L4::Sctp(p) => Some(*p),
            _ => None,
        }
    }
}

/// Source and destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// Source port.
    pub source_port: u16,
    /// Destination port.
    pub destination_port: u16,
}

/// ICMP type and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    /// ICMP type.
    #[serde(rename = "type")]
    pub kind: u8,
    /// ICMP code.
    pub code: u8,
}

/// A pod at one end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The node the pod runs on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pod's labels, `key=value`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// The interface a program ran on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its ifindex on this node.
    pub index: u32,
    /// Its name, when it still existed when the event was decoded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Direction relative to the pod (or, underlay, the node), in Hubble's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficDirection {
    /// Towards the pod.
    Ingress,
    /// Away from the pod (or out of the node).
    Egress,
}

/// The program that saw the packet, in Hubble's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ObservationPoint {
    /// `from_pod`, on a pod's host-side veth (packets the pod sends).
    FromEndpoint,
    /// `to_pod`, on a pod's host-side veth (packets to the pod).
    ToEndpoint,
    /// The underlay guard, on a way out of the node.
    ToNetwork,
}

/// A NetworkPolicy named in a policy drop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Always `NetworkPolicy` today.
    pub kind: String,
}

/// Events that were lost, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    /// Where they were lost.
    pub source: LostEventsSource,
    /// How many since the previous notice.
    pub num_events_lost: u64,
}

/// Where events were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LostEventsSource {
    /// The datapath could not reserve room in the BPF ring buffer.
    RingBuffer,
    /// A follower was too slow and the daemon dropped events queued for it.
    ObserverQueue,
}

#[cfg(test)]
mod tests;
