//! Enrichment, pure: a decoded [`DatapathEvent`] plus lookup tables ([`Lookup`]: pods by
//! address, peer nodes by pod CIDR, interface names, the NetworkPolicies isolating each pod)
//! becomes the [`Flow`] record `meshctl observe` shows. The tables are built by the collector
//! from the policy World and the status (I/O there, none here).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use jiff::Timestamp;
use meshd_policy::model::{Direction, World};

use super::decode::DatapathEvent;
use super::record::{
    Endpoint, Flow, Interface, IpHeader, ObservationPoint, PolicyRef, Reason, TrafficDirection,
};

/// A pod as enrichment names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// The endpoint as the record shows it.
    pub endpoint: Endpoint,
    /// NetworkPolicies isolating the pod for ingress.
    pub isolated_ingress_by: Vec<PolicyRef>,
    /// NetworkPolicies isolating the pod for egress.
    pub isolated_egress_by: Vec<PolicyRef>,
}

/// What enrichment looks things up in.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    /// Pods by address.
    pub pods: HashMap<IpAddr, PodInfo>,
    /// Peer nodes by the pod CIDRs they own (longest prefix wins).
    pub peers: Vec<(IpNet, String)>,
    /// Interface names by ifindex.
    pub interfaces: HashMap<u32, String>,
}

impl Lookup {
    /// The pod tables of `world`: every pod address, with the policies that isolate it.
    pub fn pods_from_world(world: &World) -> HashMap<IpAddr, PodInfo> {
        let mut out = HashMap::new();
        for pod in world.pods.values() {
            let isolating = |direction| -> Vec<PolicyRef> {
                world
                    .policies
                    .values()
                    .filter(|p| {
                        p.key.namespace == pod.key.namespace
                            && p.applies_to(direction)
                            && p.pod_selector.matches(&pod.labels)
                    })
                    .map(|p| PolicyRef {
                        namespace: p.key.namespace.clone(),
                        name: p.key.name.clone(),
                        kind: "NetworkPolicy".to_string(),
                    })
                    .collect()
            };
            let info = PodInfo {
                endpoint: Endpoint {
                    namespace: pod.key.namespace.clone(),
                    pod_name: pod.key.name.clone(),
                    node_name: (!pod.node.is_empty()).then(|| pod.node.clone()),
                    labels: pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                },
                isolated_ingress_by: isolating(Direction::Ingress),
                isolated_egress_by: isolating(Direction::Egress),
            };
            for address in &pod.addresses {
                out.insert(*address, info.clone());
            }
        }
        out
    }

    /// The peer node owning `address` (longest matching pod CIDR).
    pub fn peer_of(&self, address: IpAddr) -> Option<&str> {
        self.peers
            .iter()
            .filter(|(net, _)| net.contains(&address))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, node)| node.as_str())
    }
}

/// The record of `event`, observed at `time` (already converted to wall-clock time).
pub fn enrich(event: &DatapathEvent, lookup: &Lookup, time: Timestamp) -> Flow {
    let source = lookup.pods.get(&event.source);
    let destination = lookup.pods.get(&event.destination);
    let traffic_direction = match event.point {
        ObservationPoint::ToEndpoint => TrafficDirection::Ingress,
        ObservationPoint::FromEndpoint | ObservationPoint::ToNetwork => TrafficDirection::Egress,
    };
    let (mut egress_denied_by, mut ingress_denied_by) = (Vec::new(), Vec::new());
    if event.reason == Reason::PolicyDenied {
        match event.policy_direction {
            Some(TrafficDirection::Egress) => {
                egress_denied_by = source
                    .map(|p| p.isolated_egress_by.clone())
                    .unwrap_or_default();
            }
            Some(TrafficDirection::Ingress) => {
                ingress_denied_by = destination
                    .map(|p| p.isolated_ingress_by.clone())
                    .unwrap_or_default();
            }
            None => {}
        }
    }
    Flow {
        time,
        verdict: event.verdict,
        reason: event.reason,
        drop_reason_desc: event.reason.drop_reason_desc().map(str::to_string),
        event: event.kind,
        ip: IpHeader {
            source: event.source,
            destination: event.destination,
            ip_version: event.ip_version,
        },
        l4: event.l4,
        source: source.map(|p| p.endpoint.clone()),
        destination: destination.map(|p| p.endpoint.clone()),
        peer_node: (event.reason == Reason::ToTunnel)
            .then(|| lookup.peer_of(event.destination).map(str::to_string))
            .flatten(),
        interface: Interface {
            index: event.ifindex,
            name: lookup
                .interfaces
                .get(&event.ifindex)
                .cloned()
                .unwrap_or_default(),
        },
        traffic_direction,
        trace_observation_point: event.point,
        egress_denied_by,
        ingress_denied_by,
        packets: event.packets,
        bytes: event.bytes,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::flows::record::{EventKind, IpVersion, Verdict};
    use meshd_policy::model::{LabelSelector, Pod, PodKey, Policy};

    fn world() -> World {
        let mut world = World::default();
        for (name, ip, app) in [("a", "10.244.1.5", "web"), ("b", "10.244.2.7", "db")] {
            let key = PodKey::new("shop", name);
            world.pods.insert(
                key.clone(),
                Pod {
                    key,
                    labels: [("app".to_string(), app.to_string())].into(),
                    addresses: vec![ip.parse().unwrap()],
                    node: format!("node-{name}"),
                    named_ports: Default::default(),
                },
            );
        }
        let deny = Policy {
            key: PodKey::new("shop", "db-deny"),
            pod_selector: LabelSelector::labels([("app", "db")]),
            policy_types: None,
            ingress: vec![],
            egress: vec![],
        };
        world.policies.insert(deny.key.clone(), deny);
        world
    }

    fn event(
        reason: Reason,
        point: ObservationPoint,
        dir: Option<TrafficDirection>,
    ) -> DatapathEvent {
        DatapathEvent {
            time_ns: 1,
            kind: EventKind::Drop,
            verdict: Verdict::Dropped,
            reason,
            source: "10.244.1.5".parse().unwrap(),
            destination: "10.244.2.7".parse().unwrap(),
            ip_version: IpVersion::IPv4,
            l4: None,
            ifindex: 9,
            point,
            policy_direction: dir,
            packets: 1,
            bytes: 60,
        }
    }

    #[test]
    fn a_policy_drop_names_both_pods_and_the_isolating_policy() {
        let lookup = Lookup {
            pods: Lookup::pods_from_world(&world()),
            interfaces: [(9, "mesh1234".to_string())].into(),
            ..Default::default()
        };
        let flow = enrich(
            &event(
                Reason::PolicyDenied,
                ObservationPoint::ToEndpoint,
                Some(TrafficDirection::Ingress),
            ),
            &lookup,
            Timestamp::UNIX_EPOCH,
        );
        let (src, dst) = (flow.source.unwrap(), flow.destination.unwrap());
        assert_eq!(
            (src.namespace.as_str(), src.pod_name.as_str()),
            ("shop", "a")
        );
        assert_eq!(dst.pod_name, "b");
        assert_eq!(dst.node_name.as_deref(), Some("node-b"));
        assert_eq!(dst.labels, vec!["app=db".to_string()]);
        assert_eq!(flow.ingress_denied_by.len(), 1);
        assert_eq!(flow.ingress_denied_by[0].name, "db-deny");
        assert!(flow.egress_denied_by.is_empty());
        assert_eq!(flow.traffic_direction, TrafficDirection::Ingress);
        assert_eq!(flow.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
        assert_eq!(flow.interface.name, "mesh1234");
    }

    #[test]
    fn tunnelled_flows_name_the_peer_by_longest_prefix_and_unknown_addresses_stay_bare() {
        let lookup = Lookup {
            peers: vec![
                ("10.244.0.0/16".parse().unwrap(), "wide".to_string()),
                ("10.244.2.0/24".parse().unwrap(), "node-b".to_string()),
            ],
            ..Default::default()
        };
        let mut e = event(Reason::ToTunnel, ObservationPoint::FromEndpoint, None);
        e.verdict = Verdict::Forwarded;
        let flow = enrich(&e, &lookup, Timestamp::UNIX_EPOCH);
        assert_eq!(flow.peer_node.as_deref(), Some("node-b"));
        assert!(flow.source.is_none() && flow.destination.is_none());
        assert_eq!(flow.drop_reason_desc, None);
        assert_eq!(flow.traffic_direction, TrafficDirection::Egress);
        assert_eq!(flow.interface.name, "");
    }
}
