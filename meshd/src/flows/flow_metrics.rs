//! Flow metrics (names in [`crate::flows`]'s docs): drops by reason and direction, forwarded
//! packets and bytes per peer node, flows per namespace pair, events lost; optionally flows
//! per pod pair. Label sets that grow with the cluster are bounded ([`PairBudget`], pure): a
//! pair beyond the budget is counted under `other`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::record::{EventKind, Flow, LostEventsSource, Reason, TrafficDirection, Verdict};

type Labels = Vec<(String, String)>;

/// The label value of pairs beyond the budget.
pub const OTHER: &str = "other";

/// Which pairs get a label set of their own: the first `max` distinct pairs seen.
#[derive(Debug, Default)]
pub struct PairBudget {
    max: usize,
    seen: HashSet<(String, String)>,
}

impl PairBudget {
    /// A budget of `max` pairs (0: every pair is `other`).
    pub fn new(max: usize) -> Self {
        PairBudget {
            max,
            seen: HashSet::new(),
        }
    }

    /// The labels to count `(source, destination)` under.
    pub fn admit(&mut self, source: &str, destination: &str) -> (String, String) {
        let pair = (source.to_string(), destination.to_string());
        if self.seen.contains(&pair) || self.seen.len() < self.max {
            self.seen.insert(pair.clone());
            pair
        } else {
            (OTHER.to_string(), OTHER.to_string())
        }
    }
}

/// The flow metrics, registered in meshd's registry.
#[derive(Debug)]
pub struct FlowMetrics {
    drops: Family<Labels, Counter>,
    forwarded_packets: Family<Labels, Counter>,
    forwarded_bytes: Family<Labels, Counter>,
    flows: Family<Labels, Counter>,
    pod_flows: Family<Labels, Counter>,
    lost: Family<Labels, Counter>,
    namespace_pairs: Mutex<PairBudget>,
    pod_pairs: Mutex<Option<PairBudget>>,
}

impl FlowMetrics {
    /// Registers the flow metrics in `registry` (prefix `meshd`), namespace pairs bounded to
    /// 200 and pod pairs off until [`FlowMetrics::configure`].
    pub fn register(registry: &mut Registry) -> FlowMetrics {
        let m = FlowMetrics {
            drops: Family::default(),
            forwarded_packets: Family::default(),
            forwarded_bytes: Family::default(),
            flows: Family::default(),
            pod_flows: Family::default(),
            lost: Family::default(),
            namespace_pairs: Mutex::new(PairBudget::new(200)),
            pod_pairs: Mutex::new(None),
        };
        registry.register(
            "flow_drops",
            "Dropped packets reported by the datapath, by reason and direction",
            m.drops.clone(),
        );
        registry.register(
            "flow_forwarded_packets",
            "Packets of forwarded flows into the tunnel, by peer node",
            m.forwarded_packets.clone(),
        );
        registry.register(
            "flow_forwarded_bytes",
            "Bytes of forwarded flows into the tunnel, by peer node",
            m.forwarded_bytes.clone(),
        );
        registry.register(
            "flows",
            "Flow events by namespace pair and verdict (pairs beyond the budget under \"other\")",
            m.flows.clone(),
        );
        registry.register(
            "flows_by_pod",
            "Flow events by pod pair and verdict (off unless --flow-metrics-pod-pairs; bounded)",
            m.pod_flows.clone(),
        );
        registry.register(
            "flow_events_lost",
            "Flow events lost, by where (RING_BUFFER, OBSERVER_QUEUE)",
            m.lost.clone(),
        );
        m
    }

    /// Sets the pair budgets: `max_namespace_pairs`, and `max_pod_pairs` (None: no pod pairs).
    pub fn configure(&self, max_namespace_pairs: usize, max_pod_pairs: Option<usize>) {
        *lock(&self.namespace_pairs) = PairBudget::new(max_namespace_pairs);
        *lock(&self.pod_pairs) = max_pod_pairs.map(PairBudget::new);
    }

    /// Counts one flow event.
    pub fn observe(&self, flow: &Flow) {
        let verdict = verdict_label(flow.verdict);
        if flow.verdict != Verdict::Forwarded {
            let direction = match flow.traffic_direction {
                TrafficDirection::Ingress => "INGRESS",
                TrafficDirection::Egress => "EGRESS",
            };
            self.drops
                .get_or_create(&vec![
                    ("reason".to_string(), reason_label(flow.reason).to_string()),
                    ("direction".to_string(), direction.to_string()),
                ])
                .inc_by(flow.packets);
        }
        if flow.reason == Reason::ToTunnel && flow.event != EventKind::Drop {
            let peer = vec![(
                "peer_node".to_string(),
                flow.peer_node
                    .clone()
                    .unwrap_or_else(|| "unknown".to_string()),
            )];
            self.forwarded_packets
                .get_or_create(&peer)
                .inc_by(flow.packets);
            self.forwarded_bytes.get_or_create(&peer).inc_by(flow.bytes);
        }
        let ns = |e: &Option<super::record::Endpoint>| {
            e.as_ref().map_or("", |e| e.namespace.as_str()).to_string()
        };
        let (src, dst) =
            lock(&self.namespace_pairs).admit(&ns(&flow.source), &ns(&flow.destination));
        self.flows
            .get_or_create(&vec![
                ("source_namespace".to_string(), src),
                ("destination_namespace".to_string(), dst),
                ("verdict".to_string(), verdict.to_string()),
            ])
            .inc();
        if let Some(budget) = lock(&self.pod_pairs).as_mut() {
            let pod = |e: &Option<super::record::Endpoint>| {
                e.as_ref()
                    .map_or(String::new(), |e| format!("{}/{}", e.namespace, e.pod_name))
            };
            let (src, dst) = budget.admit(&pod(&flow.source), &pod(&flow.destination));
            self.pod_flows
                .get_or_create(&vec![
                    ("source_pod".to_string(), src),
                    ("destination_pod".to_string(), dst),
                    ("verdict".to_string(), verdict.to_string()),
                ])
                .inc();
        }
    }

    /// Counts `n` lost events lost at `source`.
    pub fn lost(&self, source: LostEventsSource, n: u64) {
        let source = match source {
            LostEventsSource::RingBuffer => "RING_BUFFER",
            LostEventsSource::ObserverQueue => "OBSERVER_QUEUE",
        };
        self.lost
            .get_or_create(&vec![("source".to_string(), source.to_string())])
            .inc_by(n);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Forwarded => "FORWARDED",
        Verdict::Dropped => "DROPPED",
        Verdict::Audit => "AUDIT",
    }
}

fn reason_label(r: Reason) -> &'static str {
    match r {
        Reason::ToTunnel => "to-tunnel",
        Reason::LocalDelivery => "local-delivery",
        Reason::PolicyDenied => "policy-denied",
        Reason::StrictMode => "strict-mode",
        Reason::SpoofedSource => "spoofed-source",
        Reason::WouldDrop => "would-drop",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_pair_budget_admits_the_first_pairs_and_counts_the_rest_as_other() {
        let mut budget = PairBudget::new(2);
        assert_eq!(budget.admit("a", "b"), ("a".into(), "b".into()));
        assert_eq!(budget.admit("a", "c"), ("a".into(), "c".into()));
        assert_eq!(budget.admit("x", "y"), (OTHER.into(), OTHER.into()));
        // Known pairs stay themselves.
        assert_eq!(budget.admit("a", "b"), ("a".into(), "b".into()));
        assert_eq!(
            PairBudget::new(0).admit("a", "b"),
            (OTHER.into(), OTHER.into())
        );
    }
}
