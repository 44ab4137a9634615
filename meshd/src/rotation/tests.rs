//! The rotation driver's tests: every phase, the data-plane evidence each step waits for,
//! silent peers, resuming after a restart, and a property test of the safety rules.
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

/// A device reading: every named peer with this received-bytes count and no handshake.
fn rx(peers: &[(&str, u64)]) -> SlotReading {
    peers
        .iter()
        .map(|(n, rx_bytes)| {
            let r = PeerReading {
                rx_bytes: *rx_bytes,
                last_handshake: None,
            };
            (n.to_string(), r)
        })
        .collect()
}

/// A device reading: every named peer last handshook at `at`.
fn handshook(peers: &[&str], at: SystemTime) -> SlotReading {
    peers
        .iter()
        .map(|n| {
            let r = PeerReading {
                rx_bytes: 0,
                last_handshake: Some(at),
            };
            (n.to_string(), r)
        })
        .collect()
}

/// Feed `reading` at `now` and poll.
fn poll_with(
    d: &mut Driver,
    now: Instant,
    reading: &SlotReading,
    me: &NodeRecord,
    peers: &[&NodeRecord],
) -> Action {
    d.observe_slot(now, reading);
    d.poll(now, me, peers.iter().copied())
}

/// Drive a drain of `peers` (quiet since the step began) to its key replacement: returns
/// the step and when the key took effect.
fn drain_to_replace(
    d: &mut Driver,
    t: Instant,
    me: &NodeRecord,
    peers: &[&NodeRecord],
) -> (Slot, Option<RotationStep>, SystemTime) {
    let names: Vec<(&str, u64)> = peers.iter().map(|p| (p.name.as_str(), 7)).collect();
    assert_eq!(poll_with(d, t, &rx(&names), me, peers), Action::Wait);
    let Action::Replace(slot, step) = poll_with(d, t + DRAIN_MIN, &rx(&names), me, peers) else {
        panic!("expected a replacement once every peer was quiet")
    };
    let at = SystemTime::now();
    d.key_replaced(at);
    (slot, step, at)
}

#[test]
fn drains_replaces_and_finishes_only_on_data_plane_evidence() {
    let t0 = Instant::now();
    let mut me = rec("b");
    let peer = rec("a");
    let mut d = Driver::default();
    assert!(d.start(t0, 1000));
    assert!(!d.start(t0, 1000), "one rotation at a time");
    assert_eq!(d.evidence_slot(), None, "waiting needs no reading");
    let Action::Publish(Some(step)) = d.poll(t0, &me, [&peer]) else {
        panic!("expected the drain of slot 0")
    };
    assert_eq!(step.draining, Some(0));
    assert!(step.serial > 1000);
    me.rotation.step = Some(step);
    assert_eq!(d.evidence_slot(), Some(S0));
    // No reading of the device yet: wait, and name the peer.
    assert_eq!(d.poll(t0 + DRAIN_MIN * 2, &me, [&peer]), Action::Wait);
    assert_eq!(d.pending(), ["a"]);
    // The peer still sends on slot 0 (its meshd has not moved it yet): wait.
    let t1 = t0 + DRAIN_MIN;
    assert_eq!(
        poll_with(&mut d, t0, &rx(&[("a", 100)]), &me, &[&peer]),
        Action::Wait
    );
    assert_eq!(
        poll_with(&mut d, t1, &rx(&[("a", 200)]), &me, &[&peer]),
        Action::Wait
    );
    let almost = t1 + DRAIN_QUIET - Duration::from_millis(1);
    assert_eq!(
        poll_with(&mut d, almost, &rx(&[("a", 200)]), &me, &[&peer]),
        Action::Wait
    );
    assert_eq!(d.pending(), ["a"]);
    // Quiet for DRAIN_QUIET: its packets in flight have landed.
    let t2 = t1 + DRAIN_QUIET;
    let Action::Replace(S0, Some(step)) = poll_with(&mut d, t2, &rx(&[("a", 200)]), &me, &[&peer])
    else {
        panic!("expected slot 0's key to be replaced")
    };
    assert_eq!(step.draining, Some(0));
    assert!(step.replaced);
    me.rotation.step = Some(step);
    let replaced = SystemTime::now();
    d.key_replaced(replaced);
    // A handshake from before the new key took effect proves nothing.
    let old = handshook(&["a"], replaced - Duration::from_secs(1));
    assert_eq!(poll_with(&mut d, t2, &old, &me, &[&peer]), Action::Wait);
    assert_eq!(d.pending(), ["a"], "new key not yet proven");
    // One on the new key does: slot 1 drains next (traffic moves back onto the fresh slot 0).
    let new = handshook(&["a"], replaced);
    let Action::Publish(Some(step)) = poll_with(&mut d, t2, &new, &me, &[&peer]) else {
        panic!("expected the drain of slot 1")
    };
    assert_eq!(step.draining, Some(1));
    me.rotation.step = Some(step);
    assert_eq!(d.evidence_slot(), Some(S1));
    // The last key goes out with the drain lifted (nothing uses slot 1 without a drain)...
    let (slot, step, replaced) = drain_to_replace(&mut d, t2, &me, &[&peer]);
    assert_eq!((slot, step), (S1, None));
    me.rotation.step = step;
    // ...and the rotation finishes once the peer proved it holds that key too.
    assert_eq!(d.poll(t2, &me, [&peer]), Action::Wait);
    assert_eq!(d.phase(), Phase::Replaced { slot: S1 });
    let new = handshook(&["a"], replaced + Duration::from_millis(3));
    assert_eq!(poll_with(&mut d, t2, &new, &me, &[&peer]), Action::Finished);
    assert!(!d.busy());
}

#[test]
fn a_drain_held_until_its_record_landed_counts_from_the_landing() {
    let t0 = Instant::now();
    let mut me = rec("b");
    let peer = rec("a");
    let mut d = Driver::default();
    assert!(d.start(t0, 1000));
    let Action::Publish(Some(step)) = d.poll(t0, &me, [&peer]) else {
        panic!("expected the drain of slot 0")
    };
    me.rotation.step = Some(step);
    // The record has not landed for 40 s (a silent API server): the peer cannot have seen
    // the drain, and the step's clock restarts when it lands.
    let landed = t0 + Duration::from_secs(40);
    d.hold(landed);
    let quiet = rx(&[("a", 7)]);
    assert_eq!(
        poll_with(&mut d, landed, &quiet, &me, &[&peer]),
        Action::Wait,
        "no timeout and no replacement at the landing"
    );
    assert_eq!(
        poll_with(&mut d, landed + DRAIN_MIN / 2, &quiet, &me, &[&peer]),
        Action::Wait,
        "the drain's minimum counts from the landing"
    );
    assert!(matches!(
        poll_with(&mut d, landed + DRAIN_MIN, &quiet, &me, &[&peer]),
        Action::Replace(S0, _)
    ));
}

#[test]
fn a_peer_still_sending_aborts_the_drain_but_never_a_replaced_key() {
    // The peer keeps sending on the drained slot: the drain waits for it, then aborts.
    let t0 = Instant::now();
    let mut me = rec("b");
    let peer = rec("a");
    let mut d = Driver::default();
    d.start(t0, 0);
    let Action::Publish(step) = d.poll(t0, &me, [&peer]) else {
        panic!()
    };
    me.rotation.step = step;
    let mut t = t0;
    let mut bytes = 0;
    while t < t0 + STEP_TIMEOUT {
        bytes += 148;
        assert_eq!(
            poll_with(&mut d, t, &rx(&[("a", bytes)]), &me, &[&peer]),
            Action::Wait
        );
        t += POLL_INTERVAL;
    }
    let late = t0 + STEP_TIMEOUT + Duration::from_secs(1);
    let Action::Aborted(reason) = poll_with(&mut d, late, &rx(&[("a", bytes + 1)]), &me, &[&peer])
    else {
        panic!("expected an abort")
    };
    assert!(
        reason.contains("a") && reason.contains("no key was changed"),
        "{reason}"
    );
    assert!(!d.busy());

    // Past the replacement, a peer that never handshakes on the new key only keeps the
    // drain in place.
    let mut d = Driver::default();
    d.start(t0, 0);
    let Action::Publish(step) = d.poll(t0, &me, [&peer]) else {
        panic!()
    };
    me.rotation.step = step;
    let (_, step, _) = drain_to_replace(&mut d, t0, &me, &[&peer]);
    me.rotation.step = step;
    let never = rx(&[("a", 0)]);
    assert_eq!(
        poll_with(&mut d, late + STEP_TIMEOUT, &never, &me, &[&peer]),
        Action::Wait
    );
    assert_eq!(d.phase(), Phase::Replaced { slot: S0 });
    assert_eq!(d.pending(), ["a"]);
}

/// The defect seen at 1,000 peers: the pass that applies a drain moves every pair onto the
/// other slot and took 39 s; the first reading came after STEP_TIMEOUT, showed the live peer
/// as just seen, and the drain was aborted. The clock starts at the first reading and allows
/// for peers' passes as long as this node's own.
#[test]
fn a_drain_applied_by_a_pass_longer_than_the_timeout_still_completes() {
    let t0 = Instant::now();
    let mut me = rec("b");
    let live = rec("a");
    let silent = rec("c");
    let peers = [&live, &silent];
    let mut d = Driver::default();
    d.start(t0, 0);
    let Action::Publish(step) = d.poll(t0, &me, peers) else {
        panic!("expected the drain")
    };
    me.rotation.step = step;
    d.observe_silent(["c".to_string()].into());
    // This node's own pass took 39 s: the first reading.
    let own_pass = Duration::from_secs(39);
    let first = t0 + own_pass;
    assert_eq!(
        poll_with(&mut d, first, &rx(&[("a", 100), ("c", 0)]), &me, &peers),
        Action::Wait,
        "one reading proves nothing quiet, and must not abort"
    );
    // The live peer, itself busy with a pass as long, keeps sending for another 60 s.
    let mut t = first;
    let mut bytes = 100;
    while t < first + Duration::from_secs(60) {
        t += POLL_INTERVAL;
        bytes += 148;
        assert_eq!(
            poll_with(&mut d, t, &rx(&[("a", bytes), ("c", 0)]), &me, &peers),
            Action::Wait,
            "aborted {:?} after the first reading",
            t - first
        );
    }
    // It moved off the slot: the drain completes once it is quiet.
    assert_eq!(
        poll_with(&mut d, t, &rx(&[("a", bytes), ("c", 0)]), &me, &peers),
        Action::Wait
    );
    let Action::Replace(slot, _) = poll_with(
        &mut d,
        t + DRAIN_QUIET,
        &rx(&[("a", bytes), ("c", 0)]),
        &me,
        &peers,
    ) else {
        panic!("expected the replacement once every peer was quiet")
    };
    assert_eq!(slot, S0);

    // A peer that keeps sending is still given up on, once the extended wait is over.
    let mut d = Driver::default();
    d.start(t0, 0);
    let Action::Publish(step) = d.poll(t0, &me, [&live]) else {
        panic!()
    };
    me.rotation.step = step;
    let limit = first + STEP_TIMEOUT + 2 * own_pass;
    let mut t = first;
    let mut bytes = 0;
    while t <= limit {
        bytes += 148;
        assert_eq!(
            poll_with(&mut d, t, &rx(&[("a", bytes)]), &me, &[&live]),
            Action::Wait
        );
        t += Duration::from_secs(1);
    }
    let Action::Aborted(reason) = poll_with(&mut d, t, &rx(&[("a", bytes + 1)]), &me, &[&live])
    else {
        panic!("expected an abort past the extended wait")
    };
    assert!(reason.contains("no key was changed"), "{reason}");
}

#[test]
fn a_peer_without_a_tunnel_on_the_slot_is_not_waited_for() {
    // "c" is in the records but not programmed on the device (e.g. refused): nothing of it
    // can arrive on the slot, and it has no key of ours to prove.
    let t0 = Instant::now();
    let mut me = rec("b");
    let (a, c) = (rec("a"), rec("c"));
    let mut d = Driver::default();
    d.start(t0, 0);
    let Action::Publish(step) = d.poll(t0, &me, [&a, &c]) else {
        panic!()
    };
    me.rotation.step = step;
    let (_, step, replaced) = drain_to_replace(&mut d, t0, &me, &[&a]);
    me.rotation.step = step;
    let Action::Publish(Some(step)) =
        poll_with(&mut d, t0, &handshook(&["a"], replaced), &me, &[&a, &c])
    else {
        panic!("expected the drain of slot 1")
    };
    assert_eq!(step.draining, Some(1));
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
    // A later name draining the other slot blocks until it replaced that slot's key: before
    // the replacement, pairs following this node's drain would move onto the slot being
    // replaced.
    b.rotation.step = Some(RotationStep {
        serial: 30,
        draining: Some(0),
        replaced: false,
    });
    let mut dc = Driver::default();
    waiting(&mut dc);
    assert_eq!(dc.poll(t0, &a, [&b]), Action::Wait);
    b.rotation.step = Some(RotationStep {
        serial: 31,
        draining: Some(0),
        replaced: true,
    });
    assert!(matches!(dc.poll(t0, &a, [&b]), Action::Publish(Some(_))));
}

#[test]
fn an_earlier_name_done_with_slot_zero_waits_for_a_later_one_still_draining_it() {
    // "a" replaced slot 0 and wants to drain slot 1; "b" drains slot 0. If "a" drained slot 1
    // now, pairs would follow it onto slot 0 just as "b" replaces that key. "a" waits, "b"
    // replaces, then "a" goes on.
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
    let mut da = Driver::default();
    da.start(t0, 0);
    da.then = None;
    da.phase = Phase::Waiting { slot: S1 };
    assert_eq!(da.poll(t0, &a, [&b]), Action::Wait, "a must wait");
    // "b" is not held up by "a" (both keep off slot 0) and replaces its key.
    let (slot, step, _) = drain_to_replace(&mut db, t0, &b, &[&a]);
    assert_eq!(slot, S0);
    assert!(step.unwrap().replaced);
    b.rotation.step = step;
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
    let peer = rec("a");
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
    assert!(!text.contains("replaced_unix_ms"), "{text}");
    let back: Saved = serde_json::from_str(&text).unwrap();
    assert_eq!(back, saved);
    // A new process resumes the drain: its evidence starts over, then lets it go on.
    let wall = SystemTime::now();
    let (mut resumed, step2) = Driver::resume(&back, t0, wall);
    assert_eq!(step2, step);
    let Action::Replace(S0, Some(step3)) = ({
        assert_eq!(
            poll_with(&mut resumed, t0, &rx(&[("a", 5)]), &me, &[&peer]),
            Action::Wait
        );
        poll_with(
            &mut resumed,
            t0 + DRAIN_MIN,
            &rx(&[("a", 5)]),
            &me,
            &[&peer],
        )
    }) else {
        panic!("expected the replacement after the restart")
    };
    assert!(step3.serial > step.unwrap().serial);
    // Killed again right after the replacement: the key's time is kept, so a handshake
    // that proved the key before the restart still counts after it.
    let replaced = wall - Duration::from_secs(3);
    resumed.key_replaced(replaced);
    me.rotation.step = Some(step3);
    let saved = resumed.saved(Some(step3)).unwrap();
    assert!(saved.replaced_unix_ms.is_some());
    let back: Saved = serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
    let (mut again, _) = Driver::resume(&back, t0, wall);
    let before = handshook(&["a"], replaced - Duration::from_secs(1));
    assert_eq!(
        poll_with(&mut again, t0, &before, &me, &[&peer]),
        Action::Wait
    );
    let after = handshook(&["a"], replaced + Duration::from_secs(1));
    assert!(matches!(
        poll_with(&mut again, t0, &after, &me, &[&peer]),
        Action::Publish(Some(s)) if s.draining == Some(1)
    ));
    // A file from before 0.20 has no time: the restart's is used (later: never too early).
    let mut legacy = back.clone();
    legacy.replaced_unix_ms = None;
    let (mut old, _) = Driver::resume(&legacy, t0, wall);
    assert_eq!(poll_with(&mut old, t0, &after, &me, &[&peer]), Action::Wait);
    let later = handshook(&["a"], wall + Duration::from_secs(1));
    assert!(matches!(
        poll_with(&mut old, t0, &later, &me, &[&peer]),
        Action::Publish(Some(_))
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
    let alive = rec("c");
    let both = [&dead, &alive];
    let mut d = Driver::default();
    d.start(t0, 0);
    d.observe_silent(BTreeSet::from(["a".to_string()]));
    let Action::Publish(Some(step)) = d.poll(t0, &me, both) else {
        panic!("expected the drain of slot 0")
    };
    me.rotation.step = Some(step);
    // A dead node sends nothing: it is off the drained slot like any quiet peer.
    let (_, step, replaced) = drain_to_replace(&mut d, t0, &me, &both);
    me.rotation.step = step;
    let t1 = t0 + DRAIN_MIN;
    // It never handshakes on the new key. Within the grace it is still waited for.
    let only_c = {
        let mut r = handshook(&["c"], replaced);
        r.insert("a".into(), PeerReading::default());
        r
    };
    let almost = t1 + SILENT_GRACE - Duration::from_millis(1);
    assert_eq!(poll_with(&mut d, almost, &only_c, &me, &both), Action::Wait);
    assert_eq!(d.pending(), ["a"]);
    assert!(d
        .wake_at()
        .is_some_and(|w| w <= Instant::now() + POLL_INTERVAL));
    // Then it is excused, for the rest of the rotation: slot 1 drains and is replaced
    // without a new grace.
    let t2 = t1 + SILENT_GRACE;
    let Action::Publish(Some(step)) = poll_with(&mut d, t2, &only_c, &me, &both) else {
        panic!("expected the drain of slot 1 without the dead peer")
    };
    assert_eq!(step.draining, Some(1));
    assert_eq!(d.excused().collect::<Vec<_>>(), ["a"]);
    me.rotation.step = Some(step);
    let (slot, step, replaced) = drain_to_replace(&mut d, t2, &me, &both);
    assert_eq!(
        (slot, step),
        (S1, None),
        "the drain is lifted with the last key"
    );
    me.rotation.step = step;
    // The peer handshakes again (on the other slot) before proving the new key: it is waited
    // for again (forever, past a replaced key).
    d.observe_silent(BTreeSet::new());
    let mut only_c = handshook(&["c"], replaced);
    only_c.insert("a".into(), PeerReading::default());
    let late = t2 + STEP_TIMEOUT * 3;
    assert_eq!(poll_with(&mut d, late, &only_c, &me, &both), Action::Wait);
    assert_eq!(d.pending(), ["a"]);
    assert_eq!(d.excused().count(), 0);
    let all = handshook(&["a", "c"], replaced);
    assert_eq!(poll_with(&mut d, late, &all, &me, &both), Action::Finished);
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

/// One moment of a simulated rotation: time passes, and each peer (of three) may send on the
/// slot under drain and may complete a handshake.
#[derive(Debug, Clone)]
struct Moment {
    advance_ms: u64,
    sends: [bool; 3],
    handshakes: [bool; 3],
}

fn moments(len: std::ops::Range<usize>) -> impl proptest::strategy::Strategy<Value = Vec<Moment>> {
    use proptest::prelude::*;
    proptest::collection::vec(
        (0u64..700, any::<[bool; 3]>(), any::<[bool; 3]>()).prop_map(
            |(advance_ms, sends, handshakes)| Moment {
                advance_ms,
                sends,
                handshakes,
            },
        ),
        len,
    )
}

/// Runs a whole rotation of "b" against peers "a", "c", "d" through `script`, then through a
/// calm tail (nobody sends, everybody handshakes), checking the safety rules at every step.
/// Returns whether it finished.
fn simulate(script: &[Moment]) -> Result<bool, proptest::test_runner::TestCaseError> {
    use proptest::prelude::*;
    let names = ["a", "c", "d"];
    let peers: Vec<NodeRecord> = names.iter().map(|n| rec(n)).collect();
    let peer_refs: Vec<&NodeRecord> = peers.iter().collect();
    let mut me = rec("b");
    let t0 = Instant::now();
    let w0 = SystemTime::now();
    let mut d = Driver::default();
    d.start(t0, 0);
    let (mut t, mut wall) = (t0, w0);
    let mut rx_bytes = [0u64; 3];
    let mut last_hs: [Option<SystemTime>; 3] = [None; 3];
    // What the driver was shown since the current drain began: (time, rx per peer).
    let mut shown: Vec<(Instant, [u64; 3])> = Vec::new();
    let mut drain_since: Option<Instant> = None;
    let mut replaced_at: Option<SystemTime> = None;
    let mut any_key_changed = false;
    let mut last_serial = 0;
    let calm = Moment {
        advance_ms: 300,
        sends: [false; 3],
        handshakes: [true; 3],
    };
    let tail = std::iter::repeat_n(&calm, 40);
    for m in script.iter().chain(tail) {
        t += Duration::from_millis(m.advance_ms);
        wall += Duration::from_millis(m.advance_ms);
        for i in 0..3 {
            if m.sends[i] {
                rx_bytes[i] += 100;
            }
            if m.handshakes[i] {
                last_hs[i] = Some(wall);
            }
        }
        let reading: SlotReading = names
            .iter()
            .zip(rx_bytes.iter().zip(last_hs.iter()))
            .map(|(n, (rx, hs))| {
                let r = PeerReading {
                    rx_bytes: *rx,
                    last_handshake: *hs,
                };
                (n.to_string(), r)
            })
            .collect();
        if drain_since.is_some() {
            shown.push((t, rx_bytes));
        }
        let was = d.phase();
        let action = poll_with(&mut d, t, &reading, &me, &peer_refs);
        let step = match &action {
            Action::Publish(step) => *step,
            Action::Replace(slot, step) => {
                // Drain safety: long enough after the drain, and every peer's counter stood
                // still over a reading at least DRAIN_QUIET old.
                let since = drain_since.expect("a replacement only ends a drain");
                prop_assert_eq!(was, Phase::Draining { slot: *slot });
                prop_assert!(t.duration_since(since) >= DRAIN_MIN);
                // (By position: several readings may share an instant.)
                let still = shown.iter().enumerate().any(|(k, (at, _))| {
                    t.duration_since(*at) >= DRAIN_QUIET
                        && shown[k..].iter().all(|(_, c)| *c == rx_bytes)
                });
                prop_assert!(still, "replaced while a peer was not quiet: {:?}", shown);
                d.key_replaced(wall);
                replaced_at = Some(wall);
                any_key_changed = true;
                *step
            }
            Action::Finished => None,
            Action::Aborted(reason) => {
                prop_assert!(!any_key_changed, "aborted after a key changed: {}", reason);
                return Ok(false);
            }
            Action::Wait => {
                prop_assert_eq!(d.phase(), was);
                continue;
            }
        };
        // Key safety: a replaced slot is left only once every peer handshook on the new key.
        if let (Phase::Replaced { .. }, false) = (was, matches!(action, Action::Replace(..))) {
            let at = replaced_at.unwrap();
            prop_assert!(
                last_hs.iter().all(|h| h.is_some_and(|h| h >= at)),
                "left the replaced slot before every peer proved the key"
            );
        }
        if let Some(s) = step {
            prop_assert!(s.serial > last_serial, "serials grow");
            last_serial = s.serial;
        }
        me.rotation.step = step;
        drain_since = matches!(d.phase(), Phase::Draining { .. }).then_some(t);
        shown.clear();
        if matches!(action, Action::Finished) {
            prop_assert!(!d.busy());
            return Ok(true);
        }
    }
    Ok(false)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever the peers do, a key is replaced only after every peer fell quiet on its slot,
    /// a replaced slot is left only after every peer handshook on the new key, nothing aborts
    /// once a key changed, and once the peers are calm the rotation finishes.
    #[test]
    fn no_key_moves_ahead_of_its_evidence(script in moments(0..60)) {
        let busy_ms: u64 = script.iter().map(|m| m.advance_ms).sum();
        let finished = simulate(&script)?;
        // A drain aborts only when a peer kept sending on it for STEP_TIMEOUT, which the
        // calm tail never does; otherwise the tail lets the rotation finish.
        if !finished {
            proptest::prop_assert!(
                u128::from(busy_ms) >= STEP_TIMEOUT.as_millis(),
                "the rotation neither finished nor could have timed out"
            );
        }
    }
}
