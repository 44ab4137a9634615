//! Per-key deadlines in a binary heap: the device's one timer structure.
//!
//! Each peer that has something pending (a handshake in flight, a live session, a keepalive
//! due) holds one deadline here; idle peers hold none, so an idle device with thousands of
//! peers never wakes up for them. Scheduling and cancelling are O(log n); a rescheduled key
//! leaves a stale heap entry that is skipped when it surfaces (and the heap is rebuilt if
//! stale entries ever outnumber live ones).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry<K> {
    at: Instant,
    seq: u64,
    key: K,
}

/// Deadlines keyed by `K`; at most one live deadline per key.
#[derive(Debug)]
pub struct TimerQueue<K> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
    live: HashMap<K, (Instant, u64)>,
    seq: u64,
}

impl<K: Hash + Eq + Ord + Copy> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            seq: 0,
        }
    }
}

impl<K: Hash + Eq + Ord + Copy> TimerQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`'s deadline to `at`, unless it already has an earlier (or equal) one.
    /// Returns whether `at` is now the earliest deadline of the queue (so a sleeping timer
    /// thread must be woken).
    pub fn schedule(&mut self, key: K, at: Instant) -> bool {
        if let Some((cur, _)) = self.live.get(&key) {
            if *cur <= at {
                return false;
            }
        }
        self.set(key, at)
    }

    /// Sets `key`'s deadline to exactly `at`, replacing any other. Returns whether `at` is
    /// now the earliest deadline.
    pub fn reschedule(&mut self, key: K, at: Instant) -> bool {
        self.set(key, at)
    }

    fn set(&mut self, key: K, at: Instant) -> bool {
        let earliest = self.peek_live().is_none_or(|first| at < first);
        self.seq += 1;
        self.live.insert(key, (at, self.seq));
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            key,
        }));
        if self.heap.len() > 2 * self.live.len() + 64 {
            self.rebuild();
        }
        earliest
    }

    /// Removes `key`'s deadline; returns whether it had one.
    pub fn cancel(&mut self, key: &K) -> bool {
        self.live.remove(key).is_some()
    }

    /// `key`'s deadline, if any.
    pub fn deadline(&self, key: &K) -> Option<Instant> {
        self.live.get(key).map(|(at, _)| *at)
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale();
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Removes every key whose deadline is at or before `now` and appends them to `out`,
    /// earliest first.
    pub fn pop_expired(&mut self, now: Instant, out: &mut Vec<K>) {
        while let Some(Reverse(e)) = self.heap.peek() {
            if e.at > now {
                break;
            }
            let live = self.live.get(&e.key).is_some_and(|(_, seq)| *seq == e.seq);
            let key = e.key;
            self.heap.pop();
            if live {
                self.live.remove(&key);
                out.push(key);
            }
        }
    }

    /// Number of keys with a deadline.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no key has a deadline.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn peek_live(&mut self) -> Option<Instant> {
        self.next_deadline()
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse(e)) = self.heap.peek() {
            if self.live.get(&e.key).is_some_and(|(_, seq)| *seq == e.seq) {
                break;
            }
            self.heap.pop();
        }
    }

    fn rebuild(&mut self) {
        self.heap = self
            .live
            .iter()
            .map(|(key, (at, seq))| {
                Reverse(Entry {
                    at: *at,
                    seq: *seq,
                    key: *key,
                })
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        assert!(q.schedule(3u32, t0 + ms(30)));
        assert!(q.schedule(1, t0 + ms(10)));
        assert!(!q.schedule(2, t0 + ms(20)));
        assert_eq!(q.next_deadline(), Some(t0 + ms(10)));
        let mut out = Vec::new();
        q.pop_expired(t0 + ms(5), &mut out);
        assert!(out.is_empty());
        q.pop_expired(t0 + ms(20), &mut out);
        assert_eq!(out, vec![1, 2]);
        assert_eq!(q.len(), 1);
        q.pop_expired(t0 + ms(100), &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn schedule_keeps_the_earlier_deadline_reschedule_replaces() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        q.schedule(7u32, t0 + ms(10));
        assert!(!q.schedule(7, t0 + ms(50)));
        assert_eq!(q.deadline(&7), Some(t0 + ms(10)));
        q.schedule(7, t0 + ms(5));
        assert_eq!(q.deadline(&7), Some(t0 + ms(5)));
        q.reschedule(7, t0 + ms(40));
        assert_eq!(q.deadline(&7), Some(t0 + ms(40)));
        let mut out = Vec::new();
        q.pop_expired(t0 + ms(39), &mut out);
        assert!(out.is_empty(), "stale earlier entries must not fire");
        q.pop_expired(t0 + ms(40), &mut out);
        assert_eq!(out, vec![7]);
    }

    #[test]
    fn cancel_and_stale_entries_are_bounded() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        for i in 0..10_000u64 {
            q.reschedule(1u32, t0 + ms(i % 97));
        }
        assert!(q.heap.len() <= 2 * q.live.len() + 65);
        assert!(q.cancel(&1));
        assert!(!q.cancel(&1));
        let mut out = Vec::new();
        q.pop_expired(t0 + ms(1000), &mut out);
        assert!(out.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    proptest! {
        /// Against a map of key → deadline: the popped keys are exactly the due ones.
        #[test]
        fn matches_reference(ops in proptest::collection::vec((0u8..3, 0u32..20, 0u64..100), 1..300)) {
            let t0 = Instant::now();
            let mut q = TimerQueue::new();
            let mut r: HashMap<u32, Instant> = HashMap::new();
            let mut now = t0;
            for (kind, key, t) in ops {
                match kind {
                    0 => {
                        let at = t0 + ms(t);
                        q.schedule(key, at);
                        let e = r.entry(key).or_insert(at);
                        if at < *e { *e = at; }
                    }
                    1 => {
                        prop_assert_eq!(q.cancel(&key), r.remove(&key).is_some());
                    }
                    _ => {
                        now = now.max(t0 + ms(t));
                        let mut out = Vec::new();
                        q.pop_expired(now, &mut out);
                        let mut want: Vec<(Instant, u32)> =
                            r.iter().filter(|(_, at)| **at <= now).map(|(k, at)| (*at, *k)).collect();
                        want.sort();
                        r.retain(|_, at| *at > now);
                        let mut got = out.clone();
                        got.sort();
                        let mut wk: Vec<u32> = want.iter().map(|(_, k)| *k).collect();
                        wk.sort();
                        prop_assert_eq!(got, wk);
                        // Earliest first.
                        let ats: Vec<Instant> = want.iter().map(|(at, _)| *at).collect();
                        prop_assert!(ats.windows(2).all(|w| w[0] <= w[1]));
                    }
                }
                prop_assert_eq!(q.len(), r.len());
                prop_assert_eq!(q.next_deadline(), r.values().min().copied());
            }
        }
    }
}
