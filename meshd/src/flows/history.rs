//! The flow history and its followers: a bounded ring of stream lines (JSON, one
//! [`FlowsResponse`](super::record::FlowsResponse) each) and a broadcast to every follower.
//! Memory is bounded twice: the ring holds at most `capacity` lines, and each follower's queue
//! as many; a follower that falls behind loses the oldest lines of its queue and is told how
//! many (`lost_events` with source `OBSERVER_QUEUE`), and never slows the reader down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// One stream line (without its newline), shared by the ring and every follower.
pub type Line = Arc<str>;

/// The history and the followers' channel.
#[derive(Clone)]
pub struct FlowHub {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    ring: Mutex<VecDeque<Line>>,
    followers: broadcast::Sender<Line>,
}

impl std::fmt::Debug for FlowHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowHub")
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

impl FlowHub {
    /// A hub keeping `capacity` lines (at least one); each follower may queue as many.
    pub fn new(capacity: usize) -> FlowHub {
        let capacity = capacity.max(1);
        let (followers, _) = broadcast::channel(capacity);
        FlowHub {
            inner: Arc::new(Inner {
                capacity,
                ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
                followers,
            }),
        }
    }

    /// Appends a line (the oldest goes when full) and sends it to every follower.
    pub fn push(&self, line: Line) {
        let mut ring = self.ring();
        if ring.len() == self.inner.capacity {
            ring.pop_front();
        }
        ring.push_back(line.clone());
        // No follower is no error; sent under the lock so a new follower's snapshot and
        // subscription meet exactly ([`FlowHub::follow`]).
        let _ = self.inner.followers.send(line);
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<Line> {
        self.ring().iter().cloned().collect()
    }

    /// The history and a subscription to every line after it (none missed, none twice).
    pub fn follow(&self) -> (Vec<Line>, broadcast::Receiver<Line>) {
        let ring = self.ring();
        let rx = self.inner.followers.subscribe();
        (ring.iter().cloned().collect(), rx)
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, VecDeque<Line>> {
        self.inner
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line(n: usize) -> Line {
        Arc::from(n.to_string())
    }

    #[test]
    fn the_history_keeps_the_newest_lines() {
        let hub = FlowHub::new(3);
        for n in 0..5 {
            hub.push(line(n));
        }
        let kept: Vec<String> = hub.history().iter().map(|l| l.to_string()).collect();
        assert_eq!(kept, ["2", "3", "4"]);
    }

    #[tokio::test]
    async fn a_follower_gets_what_follows_and_a_slow_one_learns_how_much_it_lost() {
        let hub = FlowHub::new(4);
        hub.push(line(0));
        let (history, mut rx) = hub.follow();
        assert_eq!(history.len(), 1);
        hub.push(line(1));
        assert_eq!(&*rx.recv().await.unwrap(), "1");
        // Ten lines while the follower sleeps: its queue of four keeps the newest.
        for n in 2..12 {
            hub.push(line(n));
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(lost)) => assert_eq!(lost, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(&*rx.recv().await.unwrap(), "8");
    }
}
