//! Enrichment, pure: a decoded [`DatapathEvent`] plus lookup tables (the policy loop's
//! [`PodTable`]: pods by address and the NetworkPolicies isolating each; [`Lookup`]: peer nodes
//! by pod CIDR, interface names) becomes the [`Flow`] record `meshctl observe` shows. The
//! collector reads the pod table as the loop keeps it and builds the rest from the status
//! (I/O there, none here).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use jiff::Timestamp;
use meshd_policy::model::Direction;

use super::decode::DatapathEvent;

use super::record::{
    Endpoint, Flow, Interface, IpHeader, ObservationPoint, PolicyRef, Reason, TrafficDirection,
};
use crate::policy::pod_table::{PodTable, PodView};

/// What enrichment looks things up in, besides the pods ([`PodTable`], the policy loop's).
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    /// Peer nodes by the pod CIDRs they own (longest prefix wins).
    pub peers: Vec<(IpNet, String)>,
    /// Interface names by ifindex.
    pub interfaces: HashMap<u32, String>,
}

/// The record's view of `pod`.
fn endpoint(pod: PodView<'_>) -> Endpoint {
    Endpoint {
        namespace: pod.namespace.to_string(),
        pod_name: pod.name.to_string(),
        node_name: (!pod.node.is_empty()).then(|| pod.node.to_string()),
        labels: pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    }
}

/// The policies isolating `pod` in `direction`, as the record names them.
fn isolating(pods: &PodTable, pod: PodView<'_>, direction: Direction) -> Vec<PolicyRef> {
    pods.isolating(pod, direction)
        .map(|p| PolicyRef {
            namespace: p.key.namespace.to_string(),
            name: p.key.name.to_string(),
            kind: "NetworkPolicy".to_string(),
        })
        .collect()
}

/// The pod holding `address`: a local pod, else another node's, looked up in the list of the
/// peer whose pod CIDR holds it (another node's pod addresses are vetted against its CIDRs, so
/// an address outside every peer's is none of theirs). Before the peers are known, every
/// node's list is tried.
fn find_pod<'a>(pods: &'a PodTable, lookup: &Lookup, address: IpAddr) -> Option<PodView<'a>> {
    if lookup.peers.is_empty() {
        return pods.find(&address, None);
    }
    match lookup.peer_of(address) {
        Some(node) => pods.find(&address, Some(node)),
        None => pods.pod(&address).map(PodView::from),
    }
}

impl Lookup {
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
pub fn enrich(event: &DatapathEvent, lookup: &Lookup, pods: &PodTable, time: Timestamp) -> Flow {
    let source = find_pod(pods, lookup, event.source);
    let destination = find_pod(pods, lookup, event.destination);
    let traffic_direction = match event.point {
        ObservationPoint::ToEndpoint => TrafficDirection::Ingress,
        ObservationPoint::FromEndpoint | ObservationPoint::ToNetwork => TrafficDirection::Egress,
    };
    let (mut egress_denied_by, mut ingress_denied_by) = (Vec::new(), Vec::new());
    if event.reason == Reason::PolicyDenied {
        match event.policy_direction {
            Some(TrafficDirection::Egress) => {
                egress_denied_by = source
                    .clone()
                    .map(|p| isolating(pods, p, Direction::Egress))
                    .unwrap_or_default();
            }
            Some(TrafficDirection::Ingress) => {
                ingress_denied_by = destination
                    .clone()
                    .map(|p| isolating(pods, p, Direction::Ingress))
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
        source: source.map(endpoint),
        destination: destination.map(endpoint),
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
    use meshd_policy::World;

    fn world() -> World {
        let mut world = World::default();
        for (name, ip, app) in [("a", "10.244.1.5", "web"), ("b", "10.244.2.7", "db")] {
            let key = PodKey::new("shop", name);
            world.pods.insert(
                key.clone(),
                std::sync::Arc::new(Pod {
                    key,
                    labels: [("app".to_string(), app.to_string())].into(),
                    addresses: vec![ip.parse().unwrap()],
                    node: format!("node-{name}").into(),
                    named_ports: Default::default(),
                }),
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
            interfaces: [(9, "mesh1234".to_string())].into(),
            ..Default::default()
        };
        let pods = PodTable::from_world(&world());
        let flow = enrich(
            &event(
                Reason::PolicyDenied,
                ObservationPoint::ToEndpoint,
                Some(TrafficDirection::Ingress),
            ),
            &lookup,
            &pods,
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
        let flow = enrich(&e, &lookup, &PodTable::default(), Timestamp::UNIX_EPOCH);
        assert_eq!(flow.peer_node.as_deref(), Some("node-b"));
        assert!(flow.source.is_none() && flow.destination.is_none());
        assert_eq!(flow.drop_reason_desc, None);
        assert_eq!(flow.traffic_direction, TrafficDirection::Egress);
        assert_eq!(flow.interface.name, "");
    }

    #[test]
    fn another_nodes_pod_is_named_from_the_list_of_the_peer_owning_its_address() {
        let mut world = world();
        let b = world.pods.remove(&PodKey::new("shop", "b")).unwrap();
        // b is node-b's pod: held as node-b's entries, not as a pod.
        world.remote.set_node(
            "node-b",
            [meshd_policy::ipcache::RemotePod::of((*b).clone())],
        );
        let pods = PodTable::from_world(&world);
        let e = event(
            Reason::PolicyDenied,
            ObservationPoint::ToEndpoint,
            Some(TrafficDirection::Ingress),
        );
        let peers = Lookup {
            peers: vec![("10.244.2.0/24".parse().unwrap(), "node-b".to_string())],
            ..Default::default()
        };
        for lookup in [&peers, &Lookup::default()] {
            let flow = enrich(&e, lookup, &pods, Timestamp::UNIX_EPOCH);
            let dst = flow.destination.unwrap();
            assert_eq!(
                (dst.namespace.as_str(), dst.pod_name.as_str()),
                ("shop", "b")
            );
            assert_eq!(dst.node_name.as_deref(), Some("node-b"));
            assert_eq!(dst.labels, vec!["app=db".to_string()]);
            assert_eq!(flow.ingress_denied_by[0].name, "db-deny");
        }
        // Outside every peer's pod CIDR: no other node's pod.
        let elsewhere = Lookup {
            peers: vec![("10.244.3.0/24".parse().unwrap(), "node-c".to_string())],
            ..Default::default()
        };
        let flow = enrich(&e, &elsewhere, &pods, Timestamp::UNIX_EPOCH);
        assert!(flow.destination.is_none());
        assert_eq!(flow.source.unwrap().pod_name, "a", "local pods are found");
    }
}
