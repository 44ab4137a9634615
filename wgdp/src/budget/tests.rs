//! The budgets' decisions, with a clock the tests move.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

/// Puts the budget under load at `now` (initiations from sources that are not tested).
fn load(b: &HandshakeBudget, now: Instant) {
    for i in 0..=LOAD_THRESHOLD {
        b.admit(ip(1_000_000 + i), now);
    }
}

#[test]
fn outside_of_load_every_initiation_is_admitted() {
    let t0 = Instant::now();
    let b = HandshakeBudget::new(20, t0);
    for _ in 0..LOAD_THRESHOLD {
        assert_eq!(b.admit(ip(1), t0), Admission::Admitted);
        assert!(!b.exhausted(ip(1), t0));
    }
}

#[test]
fn under_load_one_source_gets_its_burst_then_its_rate() {
    let t0 = Instant::now();
    let b = HandshakeBudget::new(20, t0);
    load(&b, t0);
    let admitted = (0..100)
        .filter(|_| b.admit(ip(1), t0) == Admission::Admitted)
        .count();
    assert_eq!(admitted, HANDSHAKE_BURST as usize);
    assert!(b.exhausted(ip(1), t0));
    assert!(!b.exhausted(ip(2), t0), "an unknown source");
    assert!(
        !b.exhausted(ip(1), t0 + Duration::from_millis(60)),
        "a token was earned"
    );
    // Another source is not affected by the first one's flood.
    assert_eq!(b.admit(ip(2), t0), Admission::Admitted);
    // 10,000 a second for a second (the load window turns over and stays loaded): about 20
    // get through.
    let mut admitted = 0;
    for i in 1..=10_000u32 {
        let now = t0 + Duration::from_micros(100) * i;
        if b.admit(ip(1), now) == Admission::Admitted {
            admitted += 1;
        }
    }
    assert!((19..=21).contains(&admitted), "{admitted}");
}

#[test]
fn the_source_table_stays_bounded_and_forgets_idle_sources_first() {
    let t0 = Instant::now();
    let b = HandshakeBudget::with_sources(20, 64, t0);
    load(&b, t0);
    assert!(b.sources() <= 64);
    // A flooding source, then many new sources a little later: the table never grows past
    // its bound.
    for _ in 0..10 {
        b.admit(ip(7), t0);
    }
    let t1 = t0 + Duration::from_millis(10);
    for i in 0..1_000 {
        b.admit(ip(10_000 + i), t1);
        assert!(b.sources() <= 64);
    }
    // Once every bucket has refilled, one pass forgets them all.
    let t2 = t1 + Duration::from_secs(1);
    b.admit(ip(99), t2);
    assert_eq!(b.sources(), 1);
}

#[test]
fn held_packets_count_against_the_device_budget_and_drop_oldest_first() {
    let budget = Arc::new(HeldBudget::new(3 * (100 + HELD_OVERHEAD)));
    let mut a = HeldQueue::new(budget.clone());
    let mut b = HeldQueue::new(budget.clone());
    for i in 0..3u8 {
        assert_eq!(
            a.push(&[i; 100], u64::from(i), 256),
            Held {
                held: true,
                evicted: 0
            }
        );
    }
    assert_eq!(budget.used(), budget.limit());
    // Over budget: a's oldest goes.
    assert_eq!(
        a.push(&[9; 100], 9, 256),
        Held {
            held: true,
            evicted: 1
        }
    );
    assert_eq!(a.front(), Some(&[1u8; 100][..]));
    assert_eq!(a.oldest_since(), Some(1));
    // b holds nothing to give up: its packet is not held, and a keeps its own.
    assert_eq!(
        b.push(&[5; 100], 10, 256),
        Held {
            held: false,
            evicted: 0
        }
    );
    assert_eq!(a.len(), 3);
    // The per-queue cap still applies.
    let mut c = HeldQueue::new(Arc::new(HeldBudget::new(1 << 20)));
    assert!(c.push(&[1], 0, 1).held);
    assert!(!c.push(&[1], 0, 1).held);
    // Leaving the queue (sent, cleared, dropped) gives the bytes back.
    assert!(a.pop_front().is_some());
    assert_eq!(budget.used(), 2 * (100 + HELD_OVERHEAD));
    assert!(b.push(&[5; 100], 11, 256).held);
    assert_eq!(a.clear(), 2);
    drop(b);
    assert_eq!(budget.used(), 0);
}
