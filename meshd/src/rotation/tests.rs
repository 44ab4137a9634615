//! The rotation driver's tests: every phase, silent peers, resuming after a restart.
#![allow(clippy::unwrap_used)]

use super::*;
use keyexchange::record::{Rotation, SlotKey};
use keyexchange::PublicKey;

const S0: Slot = Slot::FIRST;
const S1: Slot = Slot::SECOND;

fn rec(name: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        public_key: PublicKey::from_bytes([name.len() as u8 + 1; 32]),
        listen_port: 51820,
        endpoints: vec!["198.18.0.1".parse().unwrap()],
        pod_cidrs: vec![],
        rotation: Rotation {
            second: Some(SlotKey {
                public_key: PublicKey::from_bytes([40 + name.len() as u8; 32]),
                listen_port: 51821,
            }),
            ..Rotation::default()
        },
    }
}

fn ack(peer: &mut NodeRecord, me: &NodeRecord) {
    let serial = me.rotation.step.unwrap().serial;
    peer.rotation.acks.insert(me.name.clone(), serial);
}

#[test]
fn drains_replaces_and_finishes_only_on_acknowledgements() {
    let t0 = Instant::now();
    let mut me = rec("b");
    let mut peer = rec("a");
    let mut d = Driver::default();
    assert!(d.start(t0, 1000));
    assert!(!d.start(t0, 1000), "one rotation at a time");
    let Action::Publish(Some(step)) = d.poll(t0, &me, [&peer]) else {
        panic!("expected the drain of slot 0")
    };
    assert_eq!(step.draining, Some(0));
    assert!(step.serial > 1000);
    me.rotation.step = Some(step);
    // Not acknowledged: wait, and name the peer.
    assert_eq!(d.poll(t0, &me, [&peer]), Action::Wait);
    assert_eq!(d.pending(), ["a"]);
    ack(&mut peer, &me);
    // Acknowledged, but the grace period runs first.
    assert_eq!(d.poll(t0, &me, [&peer]), Action::Wait);
    let t1 = t0 + DRAIN_GRACE;
    let Action::Replace(S0, step) = d.poll(t1, &me, [&peer]) else {
        panic!("expected slot 0's key to be replaced")
    };
    assert_eq!(step.draining, Some(0));
    me.rotation.step = Some(step);
    assert_eq!(
        d.poll(t1, &me, [&peer]),
        Action::Wait,
        "new key not yet acked"
    );
    ack(&mut peer, &me);
    // Slot 0 done: slot 1 drains next (traffic moves back onto the fresh slot 0).
    let Action::Publish(Some(step)) = d.poll(t1, &me, [&peer]) else {
        panic!("expected the drain of slot 1")
    };
    assert_eq!(step.draining, Some(1));
    me.rotation.step = Some(step);
    ack(&mut peer, &me);
    assert_eq!(d.poll(t1, &me, [&peer]), Action::Wait);
    let t2 = t1 + DRAIN_GRACE;
    let Action::Replace(S1, step) = d.poll(t2, &me, [&peer]) else {
        panic!("expected slot 1's key to be replaced")
    };
    me.rotation.step = Some(step);
    ack(&mut peer, &me);
    assert_eq!(d.poll(t2, &me, [&peer]), Action::Finished);
    assert!(!d.busy());
}

#[test]
fn a_peer_that_does_not_answer_aborts_the_drain_but_never_a_replaced_key() {
    // Its tunnel is not known to be silent: the drain waits for it, then aborts.
    let t0 = Instant::now();
    let mut me = rec("b");
    let peer = rec("a");
    let mut d = Driver::default();
    d.start(t0, 0);
    let Action::Publish(step) = d.poll(t0, &me, [&peer]) else {
        panic!()
    };
    me.rotation.step = step;
    let late = t0 + STEP_TIMEOUT + Duration::from_secs(1);
    let Action::Aborted(reason) = d.poll(late, &me, [&peer]) else {
        panic!("expected an abort")
    };
    assert!(
        reason.contains("a") && reason.contains("no key was changed"),
        "{reason}"
    );
    assert!(!d.busy());

    // Past the replacement, a peer that does not answer only keeps the drain in place.
    let mut peer = rec("a");
    let mut d = Driver::default();
    d.start(t0, 0);
    let Action::Publish(step) = d.poll(t0, &me, [&peer]) else {
        panic!()
    };
    me.rotation.step = step;
    ack(&mut peer, &me);
    d.poll(t0, &me, [&peer]);
    let Action::Replace(S0, step) = d.poll(t0 + DRAIN_GRACE, &me, [&peer]) else {
        panic!()
    };
    me.rotation.step = Some(step);
    assert_eq!(d.poll(late + STEP_TIMEOUT, &me, [&peer]), Action::Wait);
    assert_eq!(d.phase(), Phase::Replaced { slot: S0 });
}

#[test]
fn nodes_all_holding_a_drain_of_slot_zero_do_not_deadlock() {
    // Every node replaced slot 0 and waits to drain slot 1, still draining 0.
    let t0 = Instant::now();
    let held = |name: &str, serial| {
        let mut r = rec(name);
        r.rotation.step = Some(RotationStep {
            serial,
            draining: Some(0),
            replaced: true,
        });
        r
    };
    let (mut a, mut b) = (held("a", 10), held("b", 20));
    a.rotation.acks.insert("b".into(), 20);
    b.rotation.acks.insert("a".into(), 10);
    let waiting = |d: &mut Driver| {
        d.start(t0, 0);
        d.then = None;
        d.phase = Phase::Waiting { slot: S1 };
    };
    let (mut da, mut db) = (Driver::default(), Driver::default());
    waiting(&mut da);
    waiting(&mut db);
    // The earlier name goes first; the later one waits for it...
    let Action::Publish(Some(step)) = da.poll(t0, &a, [&b]) else {
        panic!("a should drain slot 1")
    };
    assert_eq!(step.draining, Some(1));
    assert_eq!(db.poll(t0, &b, [&a]), Action::Wait);
    // ...and follows once "a" drains slot 1 too.
    a.rotation.step = Some(step);
    let Action::Publish(Some(step)) = db.poll(t0, &b, [&a]) else {
        panic!("b should drain slot 1 now")
    };
    assert_eq!(step.draining, Some(1));
    // A later name draining the other slot blocks until it replaced that slot's key and
    // its step is applied: before the replacement, even an acknowledged drain blocks
    // (pairs following this node's drain would move onto the slot being replaced).
    b.rotation.step = Some(RotationStep {
        serial: 30,
        draining: Some(0),
        replaced: false,
    });
    a.rotation.acks.insert("b".into(), 30);
    let mut dc = Driver::default();
    waiting(&mut dc);
    assert_eq!(dc.poll(t0, &a, [&b]), Action::Wait);
    b.rotation.step = Some(RotationStep {
        serial: 31,
        draining: Some(0),
        replaced: true,
    });
    assert_eq!(dc.poll(t0, &a, [&b]), Action::Wait);
    a.rotation.acks.insert("b".into(), 31);
    assert!(matches!(dc.poll(t0, &a, [&b]), Action::Publish(Some(_))));
}

#[test]
fn an_earlier_name_done_with_slot_zero_waits_for_a_later_one_still_draining_it() {
    // "a" replaced slot 0 and wants to drain slot 1; "b" drains slot 0 and has every
    // acknowledgement. If "a" drained slot 1 now, pairs would follow it onto slot 0 just
    // as "b" replaces that key. "a" waits, "b" replaces, then "a" goes on.
    let t0 = Instant::now();
    let mut a = rec("a");
    a.rotation.step = Some(RotationStep {
        serial: 10,
        draining: Some(0),
        replaced: true,
    });
    let mut b = rec("b");
    let mut db = Driver::default();
    db.start(t0, 0);
    let Action::Publish(step) = db.poll(t0, &b, [&a]) else {
        panic!("b should drain slot 0")
    };
    b.rotation.step = step;
    ack(&mut a, &b);
    b.rotation.acks.insert("a".into(), 10);
    let mut da = Driver::default();
    da.start(t0, 0);
    da.then = None;
    da.phase = Phase::Waiting { slot: S1 };
    assert_eq!(da.poll(t0, &a, [&b]), Action::Wait, "a must wait");
    // "b" is not held up by "a" (both keep off slot 0) and replaces its key.
    assert_eq!(db.poll(t0, &b, [&a]), Action::Wait);
    let Action::Replace(S0, step) = db.poll(t0 + DRAIN_GRACE, &b, [&a]) else {
        panic!("b should replace slot 0")
    };
    assert!(step.replaced);
    b.rotation.step = Some(step);
    assert_eq!(
        da.poll(t0, &a, [&b]),
        Action::Wait,
        "until a holds b's new key"
    );
    ack(&mut a, &b);
    let Action::Publish(Some(step)) = da.poll(t0, &a, [&b]) else {
        panic!("a should drain slot 1 now")
    };
    assert_eq!(step.draining, Some(1));
    assert!(!step.replaced);
}

#[test]
fn a_saved_rotation_resumes_where_it_stood() {
    let t0 = Instant::now();
    let mut me = rec("b");
    let mut peer = rec("a");
    let mut d = Driver::default();
    assert_eq!(d.saved(None), None, "nothing to save when idle");
    d.start(t0, 100);
    let Action::Publish(step) = d.poll(t0, &me, [&peer]) else {
        panic!()
    };
    me.rotation.step = step;
    let saved = d.saved(step).unwrap();
    let text = serde_json::to_string(&saved).unwrap();
    assert!(
        text.contains(r#""phase":{"draining":{"slot":0}}"#),
        "{text}"
    );
    let back: Saved = serde_json::from_str(&text).unwrap();
    assert_eq!(back, saved);
    // A new process resumes: the peer's acknowledgement of the saved serial lets it go on.
    let (mut resumed, step2) = Driver::resume(&back, t0);
    assert_eq!(step2, step);
    ack(&mut peer, &me);
    assert_eq!(resumed.poll(t0, &me, [&peer]), Action::Wait);
    assert!(matches!(
        resumed.poll(t0 + DRAIN_GRACE, &me, [&peer]),
        Action::Replace(S0, s) if s.serial > step.unwrap().serial
    ));
}

#[test]
fn an_older_peer_without_a_second_slot_aborts_at_once() {
    let me = rec("b");
    let mut old = rec("a");
    old.rotation.second = None;
    let mut d = Driver::default();
    d.start(Instant::now(), 0);
    let Action::Aborted(reason) = d.poll(Instant::now(), &me, [&old]) else {
        panic!("expected an abort")
    };
    assert!(reason.contains("a"), "{reason}");
}

#[test]
fn the_later_name_steps_back_from_opposite_drains() {
    let t0 = Instant::now();
    let mut me = rec("b");
    let mut first = rec("a");
    let mut d = Driver::default();
    d.start(t0, 0);
    let Action::Publish(step) = d.poll(t0, &me, [&first]) else {
        panic!()
    };
    me.rotation.step = step;
    // "a" drains slot 1 at the same moment: "b" withdraws its drain and waits.
    first.rotation.step = Some(RotationStep {
        serial: 5,
        draining: Some(1),
        replaced: false,
    });
    let Action::Publish(Some(step)) = d.poll(t0, &me, [&first]) else {
        panic!("expected the drain to be withdrawn")
    };
    assert_eq!(step.draining, None);
    assert_eq!(d.phase(), Phase::Waiting { slot: S0 });
    assert_eq!(d.poll(t0, &me, [&first]), Action::Wait);
    // "a" finished: "b" drains again.
    first.rotation.step = None;
    d.since = t0;
    let Action::Publish(Some(step)) = d.poll(t0, &me, [&first]) else {
        panic!("expected the drain again")
    };
    assert_eq!(step.draining, Some(0));
}

#[test]
fn a_dead_peer_is_excused_after_the_grace_and_a_returning_one_is_waited_for() {
    let t0 = Instant::now();
    let mut me = rec("b");
    let dead = rec("a");
    let mut alive = rec("c");
    let mut d = Driver::default();
    d.start(t0, 0);
    d.observe_silent(BTreeSet::from(["a".to_string()]));
    let Action::Publish(Some(step)) = d.poll(t0, &me, [&dead, &alive]) else {
        panic!("expected the drain of slot 0")
    };
    me.rotation.step = Some(step);
    ack(&mut alive, &me);
    // Within the grace the silent peer is still waited for.
    let t1 = t0 + SILENT_GRACE - Duration::from_millis(1);
    assert_eq!(d.poll(t1, &me, [&dead, &alive]), Action::Wait);
    assert_eq!(d.pending(), ["a"]);
    assert!(d.wake_at().is_some_and(|w| w <= t0 + SILENT_GRACE));
    // Then it is excused: the drain's grace runs and the key is replaced.
    let t2 = t0 + SILENT_GRACE;
    assert_eq!(d.poll(t2, &me, [&dead, &alive]), Action::Wait);
    assert!(d.pending().is_empty());
    assert_eq!(d.excused().collect::<Vec<_>>(), ["a"]);
    let t3 = t2 + DRAIN_GRACE;
    let Action::Replace(S0, step) = d.poll(t3, &me, [&dead, &alive]) else {
        panic!("expected slot 0's key to be replaced without the dead peer")
    };
    me.rotation.step = Some(step);
    ack(&mut alive, &me);
    // Excused for the rest of the rotation: slot 1 drains at once, without a new grace.
    let Action::Publish(Some(step)) = d.poll(t3, &me, [&dead, &alive]) else {
        panic!("expected the drain of slot 1")
    };
    assert_eq!(step.draining, Some(1));
    me.rotation.step = Some(step);
    ack(&mut alive, &me);
    assert_eq!(d.poll(t3, &me, [&dead, &alive]), Action::Wait);
    let t4 = t3 + DRAIN_GRACE;
    let Action::Replace(S1, step) = d.poll(t4, &me, [&dead, &alive]) else {
        panic!("expected slot 1's key to be replaced")
    };
    me.rotation.step = Some(step);
    // The peer handshakes again before acknowledging: it is waited for again (forever,
    // past a replaced key).
    d.observe_silent(BTreeSet::new());
    ack(&mut alive, &me);
    let late = t4 + STEP_TIMEOUT * 3;
    assert_eq!(d.poll(late, &me, [&dead, &alive]), Action::Wait);
    assert_eq!(d.pending(), ["a"]);
    assert_eq!(d.excused().count(), 0);
    let mut back = dead.clone();
    ack(&mut back, &me);
    assert_eq!(d.poll(late, &me, [&back, &alive]), Action::Finished);
    assert_eq!(d.excused().count(), 0, "the next rotation starts afresh");
}

#[test]
fn a_node_that_died_draining_the_other_slot_blocks_only_for_the_grace() {
    let t0 = Instant::now();
    let me = rec("b");
    // "a" sorts first and died while draining slot 1.
    let mut dead = rec("a");
    dead.rotation.step = Some(RotationStep {
        serial: 7,
        draining: Some(1),
        replaced: false,
    });
    let mut d = Driver::default();
    d.start(t0, 0);
    assert_eq!(d.poll(t0, &me, [&dead]), Action::Wait, "blocked by a");
    d.observe_silent(BTreeSet::from(["a".to_string()]));
    assert_eq!(
        d.poll(t0 + Duration::from_secs(1), &me, [&dead]),
        Action::Wait
    );
    let Action::Publish(Some(step)) = d.poll(t0 + SILENT_GRACE, &me, [&dead]) else {
        panic!("expected the drain of slot 0 once a is excused")
    };
    assert_eq!(step.draining, Some(0));
}

#[test]
fn silent_peers_are_those_without_a_recent_handshake_on_any_slot() {
    let now = SystemTime::now();
    let ago = |s: u64| Some(now - Duration::from_secs(s));
    let (a, b, c, e) = (rec("a"), rec("bb"), rec("ccc"), rec("eeeee"));
    let second = |r: &NodeRecord| r.rotation.second.as_ref().unwrap().public_key;
    let handshakes = BTreeMap::from([
        // a: both slots stale.
        (a.public_key, ago(200)),
        (second(&a), ago(181)),
        // bb: slot 0 stale, slot 1 fresh.
        (b.public_key, ago(500)),
        (second(&b), ago(10)),
        // ccc: never handshook on its only programmed slot.
        (c.public_key, None),
    ]);
    // eeeee: none of its keys programmed here, so not judged.
    let silent = silent_peers([&a, &b, &c, &e], &handshakes, DEFAULT_SILENCE, now);
    assert_eq!(silent, BTreeSet::from(["a".to_string(), "ccc".to_string()]));
    let shorter = silent_peers([&a, &b, &c, &e], &handshakes, Duration::from_secs(5), now);
    assert_eq!(shorter.len(), 3, "{shorter:?}");
    let longer = silent_peers([&a, &b, &c, &e], &handshakes, Duration::from_secs(300), now);
    assert_eq!(longer, BTreeSet::from(["ccc".to_string()]));
}
