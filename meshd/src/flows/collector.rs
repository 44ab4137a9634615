//! The collector task (I/O): reads the datapath's ring buffer as it becomes readable (tokio
//! `AsyncFd`), decodes, enriches and publishes each event to the history and the metrics;
//! every report interval it turns the flow table's movement into aggregates, forgets idle
//! flows, reports events the datapath lost (`lost_events` from `RING_BUFFER`) and refreshes
//! its lookup tables (peers from the status, interface names from `/sys/class/net`). Pods and
//! policies are read from the policy loop's pod table, which the loop keeps up to date.
//!
//! Times: the programs stamp events with the monotonic clock; the offset to wall-clock time is
//! taken once at start ([`BootClock`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ebpf_redirect::FlowMaps;
use jiff::Timestamp;
use tokio::io::unix::AsyncFd;

use super::aggregate::Aggregator;
use super::decode::{self, DatapathEvent};
use super::enrich::{enrich, Lookup};
use super::history::FlowHub;
use super::record::{FlowsResponse, LostEvents, LostEventsSource, ResponseItem};
use crate::control::SharedStatus;
use crate::metrics::Metrics;
use crate::policy::pod_table::{PodTable, SharedPodTable};
use crate::policy::SharedPolicyReport;

/// Records read per wake-up before the task yields (the ring keeps the rest).
const DRAIN_BATCH: usize = 4096;

/// How the collector runs.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// The datapath's pin directory.
    pub pin_dir: PathBuf,
    /// This node's name (on every line).
    pub node_name: String,
    /// How often aggregates and losses are reported.
    pub report_every: Duration,
    /// A flow not seen for this long is forgotten (its entry deleted).
    pub idle_after: Duration,
}

/// Where enrichment's tables come from.
#[derive(Clone)]
pub struct Sources {
    /// The policy loop's report (its world), when policy runs.
    pub policy: Option<SharedPolicyReport>,
    /// The status (peers and their pod CIDRs).
    pub status: SharedStatus,
}

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The flow maps could not be opened or switched.
    #[error("opening the flow maps")]
    Maps(#[source] ebpf_redirect::Error),
    /// The ring buffer could not be registered with the runtime.
    #[error("watching the flow ring buffer")]
    Watch(#[source] std::io::Error),
}

/// Monotonic nanoseconds (`bpf_ktime_get_ns`) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// Wall-clock nanoseconds at monotonic zero.
    offset_ns: i128,
}

impl BootClock {
    /// The offset now.
    pub fn now() -> BootClock {
        let mono = monotonic_ns();
        let wall = Timestamp::now().as_nanosecond();
        BootClock {
            offset_ns: wall - i128::from(mono),
        }
    }

    /// The wall-clock time of monotonic `ns`.
    pub fn wall(&self, ns: u64) -> Timestamp {
        Timestamp::from_nanosecond(self.offset_ns + i128::from(ns))
            .unwrap_or_else(|_| Timestamp::now())
    }
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// Turns flow events on and starts the collector.
pub fn spawn(
    config: CollectorConfig,
    hub: FlowHub,
    metrics: Metrics,
    sources: Sources,
) -> Result<tokio::task::JoinHandle<()>, CollectorError> {
    let mut maps = FlowMaps::open(&config.pin_dir).map_err(CollectorError::Maps)?;
    let ring = maps.flow_ring().map_err(CollectorError::Maps)?;
    let ring = watch(ring)?;
    maps.set_events(true).map_err(CollectorError::Maps)?;
    let pods = sources.policy.as_ref().map(|policy| {
        let mut report = policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The policy loop keeps its pod table for enrichment from its next batch on.
        report.pod_table_wanted = true;
        report.pod_table.clone()
    });
    let collector = Collector {
        lost_before: maps.lost().unwrap_or(0),
        maps,
        config,
        hub,
        metrics,
        sources,
        clock: BootClock::now(),
        lookup: Lookup::default(),
        pods,
        aggregator: Aggregator::default(),
        undecodable: 0,
        listed_at: std::time::Instant::now(),
    };
    Ok(tokio::spawn(collector.run(ring)))
}

/// Registers the ring buffer's descriptor with the runtime.
///
/// tokio 1.54 deprecated the safe constructors because a type that merely borrows a
/// descriptor could close it while registered; its replacement is `unsafe`, which meshd
/// forbids. Here the condition holds: the `FlowRing` owns its descriptor (the map's
/// `MapData`) and is moved into the `AsyncFd`, which deregisters it before dropping it.
#[allow(deprecated)]
fn watch(
    ring: ebpf_redirect::flows::FlowRing,
) -> Result<AsyncFd<ebpf_redirect::flows::FlowRing>, CollectorError> {
    AsyncFd::with_interest(ring, tokio::io::Interest::READABLE).map_err(CollectorError::Watch)
}

struct Collector {
    maps: FlowMaps,
    config: CollectorConfig,
    hub: FlowHub,
    metrics: Metrics,
    sources: Sources,
    clock: BootClock,
    lookup: Lookup,
    /// The policy loop's pod table, when policy runs.
    pods: Option<SharedPodTable>,
    aggregator: Aggregator,
    lost_before: u64,
    undecodable: u64,
    listed_at: std::time::Instant,
}

impl Collector {
    async fn run(mut self, mut ring: AsyncFd<ebpf_redirect::flows::FlowRing>) {
        self.refresh_lookup().await;
        let mut tick = tokio::time::interval(self.config.report_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = ring.readable_mut() => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(err) => {
                            tracing::error!(%err, "flow ring buffer: polling failed; flow events stop");
                            return;
                        }
                    };
                    let mut records = Vec::new();
                    let n = guard.get_inner_mut().drain(DRAIN_BATCH, |bytes| records.push(decode::decode(bytes)));
                    if n < DRAIN_BATCH {
                        guard.clear_ready();
                    }
                    for record in records {
                        match record {
                            Ok(event) => self.publish(&event),
                            Err(err) => {
                                self.undecodable += 1;
                                tracing::debug!(%err, total = self.undecodable, "flow record refused");
                            }
                        }
                    }
                }
                _ = tick.tick() => self.report().await,
            }
        }
    }

    fn publish(&mut self, event: &DatapathEvent) {
        // An interface new since the last listing: list again, at most once a second (an
        // interface that is gone must not make every event read /sys).
        if !self.lookup.interfaces.contains_key(&event.ifindex)
            && self.listed_at.elapsed() >= Duration::from_secs(1)
        {
            self.lookup.interfaces = interface_names();
            self.listed_at = std::time::Instant::now();
        }
        // The policy loop's table as it is now: a pod applied a moment ago is named in its
        // first packets.
        let time = self.clock.wall(event.time_ns);
        let flow = match &self.pods {
            Some(pods) => enrich(event, &self.lookup, &pods.read(), time),
            None => enrich(event, &self.lookup, &PodTable::default(), time),
        };
        self.metrics.flows().observe(&flow);
        let time = flow.time;
        self.push(ResponseItem::Flow(Box::new(flow)), time);
    }

    fn push(&self, item: ResponseItem, time: Timestamp) {
        let response = FlowsResponse {
            item,
            node_name: self.config.node_name.clone(),
            time,
        };
        match serde_json::to_string(&response) {
            Ok(line) => self.hub.push(Arc::from(line)),
            Err(err) => tracing::warn!(%err, "flow record not encodable"),
        }
    }

    /// Aggregates, idle flows, datapath losses, fresh tables.
    async fn report(&mut self) {
        self.refresh_lookup().await;
        let now = monotonic_ns();
        match self.maps.flows() {
            Ok(entries) => {
                let idle = u64::try_from(self.config.idle_after.as_nanos()).unwrap_or(u64::MAX);
                let report = self.aggregator.report(&entries, now, idle);
                for (key, counters, packets, bytes) in &report.moved {
                    match decode::aggregate(key, counters, *packets, *bytes) {
                        Ok(event) => self.publish(&event),
                        Err(err) => tracing::debug!(%err, "flow table entry refused"),
                    }
                }
                for key in &report.idle {
                    if let Err(err) = self.maps.remove_flow(key) {
                        tracing::debug!(error = %format!("{:#}", anyhow::Error::new(err)), "forgetting an idle flow");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::new(err)), "reading the flow table");
            }
        }
        match self.maps.lost() {
            Ok(total) => {
                let lost = total.saturating_sub(self.lost_before);
                self.lost_before = total;
                if lost > 0 {
                    self.metrics
                        .flows()
                        .lost(LostEventsSource::RingBuffer, lost);
                    self.push(
                        ResponseItem::LostEvents(LostEvents {
                            source: LostEventsSource::RingBuffer,
                            num_events_lost: lost,
                        }),
                        Timestamp::now(),
                    );
                }
            }
            Err(err) => {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::new(err)), "reading the lost flow events")
            }
        }
    }

    async fn refresh_lookup(&mut self) {
        if let Some(status) = self.sources.status.read().await.as_ref() {
            self.lookup.peers = status
                .peers
                .iter()
                .filter_map(|p| p.name.as_deref().map(|name| (name, &p.allowed_ips)))
                .flat_map(|(name, ips)| {
                    ips.iter()
                        .map(move |net| (*net, name.to_string()))
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        self.lookup.interfaces = interface_names();
    }
}

/// Interface names by ifindex, from `/sys/class/net` (this network namespace).
fn interface_names() -> HashMap<u32, String> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let index = std::fs::read_to_string(entry.path().join("ifindex")).ok()?;
            Some((index.trim().parse().ok()?, name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_boot_clock_maps_monotonic_now_to_wall_clock_now() {
        let clock = BootClock::now();
        let wall = clock.wall(monotonic_ns());
        let drift = (Timestamp::now().as_nanosecond() - wall.as_nanosecond()).abs();
        assert!(drift < 1_000_000_000, "{drift} ns");
    }
}
