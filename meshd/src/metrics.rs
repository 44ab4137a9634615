//! Prometheus metrics, served on `/metrics` next to the health endpoints.
//!
//! Reconcile durations are observed as they happen (a histogram); everything else is read from
//! the status meshd serves on its control socket at scrape time, so `/metrics` and
//! `meshctl status` never disagree. A scrape reads the served status in place
//! ([`Metrics::render_served`]): no copy of it as a [`StatusReport`] (at 5,000 peers on each
//! device that copy was ≈ 5 MiB of short strings per scrape).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::control::{PeerReport, ServedPeer, ServedStatus, StatusReport};

type Labels = Vec<(String, String)>;

/// meshd's metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    reconcile_seconds: Histogram,
    info: Family<Labels, Gauge>,
    converged: Gauge,
    peers: Gauge,
    encrypted_hosts: Gauge,
    handshake_age: Family<Labels, Gauge<f64, AtomicU64>>,
    peer_rx: Family<Labels, Counter>,
    peer_tx: Family<Labels, Counter>,
    verdicts: Family<Labels, Counter>,
    ops: Family<Labels, Counter>,
    key_age: Gauge<f64, AtomicU64>,
    rotations: Family<Labels, Counter>,
    records_refused: Family<Labels, Gauge>,
    flows: crate::flows::flow_metrics::FlowMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// What the metrics read of a peer in a status: its label and its counters.
pub trait PeerMetrics {
    /// The `peer` label: the node's name, else its public key.
    fn label(&self) -> String;
    /// Seconds since the last handshake, if any.
    fn handshake_secs_ago(&self) -> Option<u64>;
    /// Bytes received from and sent to the peer.
    fn bytes(&self) -> (u64, u64);
}

impl PeerMetrics for PeerReport {
    fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.public_key.clone())
    }

    fn handshake_secs_ago(&self) -> Option<u64> {
        self.last_handshake_secs_ago
    }

    fn bytes(&self) -> (u64, u64) {
        (self.rx_bytes, self.tx_bytes)
    }
}

impl PeerMetrics for ServedPeer {
    fn label(&self) -> String {
        match &self.name {
            Some(name) => name.to_string(),
            None => self.public_key.to_string(),
        }
    }

    fn handshake_secs_ago(&self) -> Option<u64> {
        self.last_handshake_secs_ago
    }

    fn bytes(&self) -> (u64, u64) {
        (self.rx_bytes, self.tx_bytes)
    }
}

fn set(counter: &Counter, value: u64) {
    counter.inner().store(value, Ordering::Relaxed);
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meshd");
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 4.0, 9));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_seconds.clone(),
        );
        let info = Family::<Labels, Gauge>::default();
        registry.register(
            "info",
            "Always 1: this node, its WireGuard mode (kernel/userspace) and encryption setting",
            info.clone(),
        );
        let converged = Gauge::default();
        registry.register(
            "converged",
            "1 when the last reconcile pass converged without error",
            converged.clone(),
        );
        let peers = Gauge::default();
        registry.register("peers", "Peers programmed on the device", peers.clone());
        let encrypted_hosts = Gauge::default();
        registry.register(
            "encrypted_hosts",
            "Peer node addresses whose host traffic goes through the tunnel (host encryption)",
            encrypted_hosts.clone(),
        );
        let handshake_age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "peer_last_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with a peer (absent before the first)",
            handshake_age.clone(),
        );
        let peer_rx = Family::<Labels, Counter>::default();
        registry.register(
            "peer_receive_bytes",
            "Bytes received from a peer",
            peer_rx.clone(),
        );
        let peer_tx = Family::<Labels, Counter>::default();
        registry.register(
            "peer_transmit_bytes",
            "Bytes sent to a peer",
            peer_tx.clone(),
        );
        let verdicts = Family::<Labels, Counter>::default();
        registry.register(
            "datapath_verdicts",
            "Packets by tc eBPF verdict (redirected, local, passed, strict_drop, would_drop, spoofed, policy_denied_egress, policy_denied_ingress)",
            verdicts.clone(),
        );
        let ops = Family::<Labels, Counter>::default();
        registry.register(
            "operations",
            "Daemon operations by kind (reconcile, reconcile_error, peer, route, map, malformed_record, device_restore)",
            ops.clone(),
        );
        let key_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "key_age_seconds",
            "Age of this node's WireGuard private key",
            key_age.clone(),
        );
        let rotations = Family::<Labels, Counter>::default();
        registry.register(
            "key_rotations",
            "Key rotations by outcome (done: both keys replaced; aborted: no key changed)",
            rotations.clone(),
        );
        let records_refused = Family::<Labels, Gauge>::default();
        registry.register(
            "records_refused",
            "Node records this node refuses now (record trust), by the field at fault",
            records_refused.clone(),
        );
        let flows = crate::flows::flow_metrics::FlowMetrics::register(&mut registry);
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                reconcile_seconds,
                info,
                converged,
                peers,
                encrypted_hosts,
                handshake_age,
                peer_rx,
                peer_tx,
                verdicts,
                ops,
                key_age,
                rotations,
                records_refused,
                flows,
            }),
        }
    }

    /// The flow metrics (fed by the flow collector as events arrive).
    pub fn flows(&self) -> &crate::flows::flow_metrics::FlowMetrics {
        &self.inner.flows
    }

    /// Record the end of a key rotation.
    pub fn observe_rotation(&self, done: bool) {
        self.inner
            .rotations
            .get_or_create(&labels(&[(
                "outcome",
                if done { "done" } else { "aborted" },
            )]))
            .inc();
    }

    /// Record one reconcile pass.
    pub fn observe_reconcile(&self, took: Duration) {
        self.inner.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition of every metric, with the status-derived ones taken from `status`.
    pub fn render(&self, status: Option<&StatusReport>) -> String {
        self.render_status(status)
    }

    /// [`Self::render`] from the status as the daemon serves it (read in place).
    pub fn render_served(&self, status: Option<&ServedStatus>) -> String {
        self.render_status(status)
    }

    fn render_status<P: PeerMetrics>(&self, status: Option<&StatusReport<P>>) -> String {
        let m = &self.inner;
        if let Some(s) = status {
            m.info.clear();
            m.info
                .get_or_create(&labels(&[
                    ("node", &s.node),
                    ("mode", &s.mode.to_string()),
                    ("encryption", s.encryption.as_str()),
                    ("interface", &s.interface),
                ]))
                .set(1);
            m.converged.set(i64::from(s.converged));
            m.peers
                .set(i64::try_from(s.peers.len()).unwrap_or(i64::MAX));
            m.handshake_age.clear();
            m.peer_rx.clear();
            m.peer_tx.clear();
            for p in &s.peers {
                let name = p.label();
                let l = labels(&[("peer", &name)]);
                if let Some(ago) = p.handshake_secs_ago() {
                    m.handshake_age.get_or_create(&l).set(ago as f64);
                }
                let (rx, tx) = p.bytes();
                set(&m.peer_rx.get_or_create(&l), rx);
                set(&m.peer_tx.get_or_create(&l), tx);
            }
            m.encrypted_hosts
                .set(i64::try_from(s.encrypted_hosts.len()).unwrap_or(i64::MAX));
            m.records_refused.clear();
            for r in &s.refused {
                m.records_refused
                    .get_or_create(&labels(&[("field", &r.field)]))
                    .inc();
            }
            if let Some(d) = &s.datapath {
                let c = &d.counters;
                for (verdict, v) in [
                    ("redirected", c.redirected),
                    ("local", c.local),
                    ("passed", c.passed),
                    ("strict_drop", c.strict_drops),
                    ("would_drop", c.would_drops),
                    ("spoofed", c.spoofed),
                    ("policy_denied_egress", c.policy_denied_egress),
                    ("policy_denied_ingress", c.policy_denied_ingress),
                ] {
                    set(
                        &m.verdicts.get_or_create(&labels(&[("verdict", verdict)])),
                        v,
                    );
                }
            }
            let c = &s.counters;
            for (kind, v) in [
                ("reconcile", c.reconciles),
                ("reconcile_error", c.reconcile_errors),
                ("peer", c.peer_ops),
                ("route", c.route_ops),
                ("map", c.map_ops),
                ("malformed_record", c.malformed_records),
                ("device_restore", c.device_restores),
            ] {
                set(&m.ops.get_or_create(&labels(&[("kind", kind)])), v);
            }
            if let Some(p) = &s.policy {
                for (kind, v) in [
                    ("policy_apply", p.applies),
                    ("policy_write_error", p.write_errors),
                    ("malformed_object", p.malformed_total),
                ] {
                    set(&m.ops.get_or_create(&labels(&[("kind", kind)])), v);
                }
            }
            if let Some(created) = s.key_created_unix {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                m.key_age.set(now.saturating_sub(created) as f64);
            }
        }
        let mut out = String::new();
        let registry = m.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_status_derived_metrics_and_reconcile_histogram() {
        let m = Metrics::new();
        m.observe_reconcile(Duration::from_millis(3));
        let mut s = crate::control::tests_support::sample();
        s.peers.push(crate::control::PeerReport {
            name: Some("n2".into()),
            public_key: "k2".into(),
            endpoint: Some("198.18.0.12:51820".into()),
            allowed_ips: vec!["10.244.2.0/24".into()],
            last_handshake_unix: Some(1),
            last_handshake_secs_ago: Some(7),
            rx_bytes: 1234,
            tx_bytes: 5678,
        });
        s.counters.reconciles = 9;
        s.encrypted_hosts = vec!["198.18.0.12".into(), "fd00:198::12".into()];
        s.key_created_unix = Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                - 100,
        );
        let text = m.render(Some(&s));
        for want in [
            "meshd_reconcile_duration_seconds_count 1",
            "meshd_peers 1",
            "meshd_peer_last_handshake_age_seconds{peer=\"n2\"} 7",
            "meshd_peer_receive_bytes_total{peer=\"n2\"} 1234",
            "meshd_peer_transmit_bytes_total{peer=\"n2\"} 5678",
            "meshd_datapath_verdicts_total{verdict=\"redirected\"} 5",
            "meshd_datapath_verdicts_total{verdict=\"spoofed\"} 0",
            "meshd_datapath_verdicts_total{verdict=\"policy_denied_egress\"} 0",
            "meshd_datapath_verdicts_total{verdict=\"policy_denied_ingress\"} 0",
            "meshd_encrypted_hosts 2",
            "meshd_operations_total{kind=\"reconcile\"} 9",
            "meshd_converged 1",
            "mode=\"userspace\"",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("meshd_key_age_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((100.0..110.0).contains(&age), "{age}");
        // A peer that went away disappears from the next scrape.
        s.peers.clear();
        assert!(!m.render(Some(&s)).contains("peer=\"n2\""));
    }

    #[test]
    fn refused_records_are_counted_by_field_and_vanish_once_accepted() {
        let m = Metrics::new();
        let mut s = crate::control::tests_support::sample();
        for (node, field) in [
            ("evil", "podCIDRs"),
            ("evil6", "podCIDRs"),
            ("lo", "endpoints"),
        ] {
            s.refused.push(crate::control::RefusalReport {
                node: node.into(),
                field: field.into(),
                reason: "hostile".into(),
                holder: None,
            });
        }
        let text = m.render(Some(&s));
        assert!(
            text.contains("meshd_records_refused{field=\"podCIDRs\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("meshd_records_refused{field=\"endpoints\"} 1"),
            "{text}"
        );
        s.refused.clear();
        assert!(!m.render(Some(&s)).contains("meshd_records_refused{"));
    }

    #[test]
    fn the_policy_loops_counters_are_operations() {
        let m = Metrics::new();
        let mut s = crate::control::tests_support::sample();
        s.policy = Some(crate::policy::PolicyReport {
            applies: 4,
            write_errors: 1,
            malformed_total: 2,
            ..Default::default()
        });
        let text = m.render(Some(&s));
        for want in [
            "meshd_operations_total{kind=\"policy_apply\"} 4",
            "meshd_operations_total{kind=\"policy_write_error\"} 1",
            "meshd_operations_total{kind=\"malformed_object\"} 2",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    fn flow(
        verdict: crate::flows::record::Verdict,
        reason: crate::flows::record::Reason,
        src_ns: &str,
        dst_ns: &str,
    ) -> crate::flows::record::Flow {
        use crate::flows::record::*;
        let endpoint = |ns: &str| Endpoint {
            namespace: ns.into(),
            pod_name: format!("{ns}-pod"),
            node_name: None,
            labels: vec![],
        };
        Flow {
            time: jiff::Timestamp::UNIX_EPOCH,
            verdict,
            reason,
            drop_reason_desc: reason.drop_reason_desc().map(str::to_string),
            event: if verdict == Verdict::Forwarded {
                EventKind::Aggregate
            } else {
                EventKind::Drop
            },
            ip: IpHeader {
                source: "10.244.1.5".parse().unwrap(),
                destination: "10.244.2.7".parse().unwrap(),
                ip_version: IpVersion::IPv4,
            },
            l4: None,
            source: Some(endpoint(src_ns)),
            destination: Some(endpoint(dst_ns)),
            peer_node: (reason == Reason::ToTunnel).then(|| "n2".to_string()),
            interface: Interface {
                index: 3,
                name: String::new(),
            },
            traffic_direction: TrafficDirection::Ingress,
            trace_observation_point: ObservationPoint::ToEndpoint,
            egress_denied_by: vec![],
            ingress_denied_by: vec![],
            packets: if verdict == Verdict::Forwarded { 10 } else { 1 },
            bytes: if verdict == Verdict::Forwarded {
                1000
            } else {
                60
            },
        }
    }

    #[test]
    fn flow_metrics_render_with_the_documented_names_and_bounded_pairs() {
        use crate::flows::record::{LostEventsSource, Reason, Verdict};
        let m = Metrics::new();
        m.flows().configure(2, Some(1));
        m.flows()
            .observe(&flow(Verdict::Dropped, Reason::PolicyDenied, "shop", "db"));
        m.flows()
            .observe(&flow(Verdict::Forwarded, Reason::ToTunnel, "shop", "web"));
        // A third namespace pair is beyond the budget of two.
        m.flows()
            .observe(&flow(Verdict::Dropped, Reason::SpoofedSource, "evil", "db"));
        m.flows().lost(LostEventsSource::RingBuffer, 7);
        m.flows().lost(LostEventsSource::ObserverQueue, 2);
        let text = m.render(None);
        for want in [
            "meshd_flow_drops_total{reason=\"policy-denied\",direction=\"INGRESS\"} 1",
            "meshd_flow_drops_total{reason=\"spoofed-source\",direction=\"INGRESS\"} 1",
            "meshd_flow_forwarded_packets_total{peer_node=\"n2\"} 10",
            "meshd_flow_forwarded_bytes_total{peer_node=\"n2\"} 1000",
            "meshd_flows_total{source_namespace=\"shop\",destination_namespace=\"db\",verdict=\"DROPPED\"} 1",
            "meshd_flows_total{source_namespace=\"shop\",destination_namespace=\"web\",verdict=\"FORWARDED\"} 1",
            "meshd_flows_total{source_namespace=\"other\",destination_namespace=\"other\",verdict=\"DROPPED\"} 1",
            "meshd_flow_events_lost_total{source=\"RING_BUFFER\"} 7",
            "meshd_flow_events_lost_total{source=\"OBSERVER_QUEUE\"} 2",
            "meshd_flows_by_pod_total{source_pod=\"shop/shop-pod\",destination_pod=\"db/db-pod\",verdict=\"DROPPED\"} 1",
            "meshd_flows_by_pod_total{source_pod=\"other\",destination_pod=\"other\",verdict=\"FORWARDED\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // Pod pairs are off by default.
        let fresh = Metrics::new();
        fresh
            .flows()
            .observe(&flow(Verdict::Dropped, Reason::PolicyDenied, "shop", "db"));
        assert!(!fresh.render(None).contains("meshd_flows_by_pod_total{"));
    }
}
