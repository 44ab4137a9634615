//! Aggregate reports of forwarded flows, pure: given the flow table's entries now and what was
//! reported before, which flows moved (and by how much) and which are idle enough to forget.
//! The table is the datapath's LRU; an entry it evicted simply stops appearing here.

use std::collections::HashMap;

use ebpf_redirect::flows::abi::{FlowCounters, FlowKey};

/// What the previous reports said, per flow: (packets, bytes) as counted then.
#[derive(Debug, Default)]
pub struct Aggregator {
    reported: HashMap<FlowKey, (u64, u64)>,
}

/// One report: flows that moved, and flows to delete from the table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// (key, counters now, packets since the last report, bytes since the last report).
    pub moved: Vec<(FlowKey, FlowCounters, u64, u64)>,
    /// Flows idle for longer than the idle limit (their last movement is reported first).
    pub idle: Vec<FlowKey>,
}

impl Aggregator {
    /// A report on `entries` (the whole table) at monotonic time `now_ns`: flows not seen
    /// for `idle_ns` are to be deleted. A flow whose counters went backwards (its entry was
    /// evicted and created again) reports its new counts whole. The first packet of a flow
    /// was already reported as such: an entry seen for the first time reports all packets but
    /// the first.
    pub fn report(
        &mut self,
        entries: &[(FlowKey, FlowCounters)],
        now_ns: u64,
        idle_ns: u64,
    ) -> Report {
        let mut out = Report::default();
        let mut seen = HashMap::with_capacity(entries.len());
        for (key, counters) in entries {
            let (packets, bytes) = (counters.packets, counters.bytes);
            let before = match self.reported.get(key) {
                Some(&(p, b)) if p <= packets && b <= bytes => (p, b),
                // New to us: its first packet was an event of its own.
                _ => (1, bytes.min(first_packet_bytes(counters))),
            };
            let (dp, db) = (packets - before.0.min(packets), bytes - before.1.min(bytes));
            if dp > 0 {
                out.moved.push((*key, *counters, dp, db));
            }
            if now_ns.saturating_sub(counters.last_ns) > idle_ns {
                out.idle.push(*key);
            } else {
                seen.insert(*key, (packets, bytes));
            }
        }
        self.reported = seen;
        out
    }
}

/// The first packet's bytes are not kept by the table; a flow of one packet has them all.
fn first_packet_bytes(counters: &FlowCounters) -> u64 {
    if counters.packets <= 1 {
        counters.bytes
    } else {
        counters.bytes / counters.packets
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(n: u8) -> FlowKey {
        FlowKey {
            ifindex: u32::from(n),
            family: 4,
            protocol: 6,
            ..Default::default()
        }
    }

    fn counters(packets: u64, bytes: u64, last_ns: u64) -> FlowCounters {
        FlowCounters {
            packets,
            bytes,
            last_ns,
            ..Default::default()
        }
    }

    #[test]
    fn only_movement_since_the_last_report_is_reported() {
        let mut agg = Aggregator::default();
        // One packet: the first-packet event said it all.
        let r = agg.report(&[(key(1), counters(1, 100, 10))], 10, 1_000);
        assert!(r.moved.is_empty() && r.idle.is_empty());
        // Four more.
        let r = agg.report(&[(key(1), counters(5, 500, 20))], 20, 1_000);
        assert_eq!(r.moved, vec![(key(1), counters(5, 500, 20), 4, 400)]);
        // Nothing new.
        let r = agg.report(&[(key(1), counters(5, 500, 20))], 30, 1_000);
        assert!(r.moved.is_empty());
    }

    #[test]
    fn idle_flows_are_reported_once_more_then_forgotten() {
        let mut agg = Aggregator::default();
        agg.report(&[(key(1), counters(2, 200, 10))], 10, 100);
        let r = agg.report(&[(key(1), counters(3, 300, 15))], 500, 100);
        assert_eq!(r.moved.len(), 1);
        assert_eq!(r.idle, vec![key(1)]);
        assert!(agg.reported.is_empty());
    }

    #[test]
    fn a_recreated_entry_counts_from_its_new_start() {
        let mut agg = Aggregator::default();
        agg.report(&[(key(2), counters(50, 5000, 10))], 10, 1_000);
        let r = agg.report(&[(key(2), counters(3, 300, 20))], 20, 1_000);
        assert_eq!(r.moved, vec![(key(2), counters(3, 300, 20), 2, 200)]);
    }
}
