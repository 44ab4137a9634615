//! The key-rotation driver: which step of a rotation this node is in and when it may take the
//! next one. Pure: the daemon feeds it the records and carries out what it returns.
//!
//! A rotation replaces both of the node's keys, one slot at a time (see
//! [`keyexchange::slots`]). For slot `s`:
//! 1. **drain**: publish `draining: s` with a new serial. Every peer moves the traffic it sends
//!    to this node onto the other slot (so does this node) and acknowledges the serial in its
//!    own record.
//! 2. **replace**: once every peer acknowledged (and a short grace period has let packets
//!    already in flight on slot `s` land), generate the new key for `s`, program it and publish
//!    it with a new serial, still draining `s`. Every peer programs the new key and
//!    acknowledges.
//! 3. the next slot is drained the same way (traffic moves back onto the fresh slot `s`), and
//!    when the last slot is replaced and acknowledged, the drain is lifted.
//!
//! Two nodes draining opposite slots are settled by name: pairs follow the drain of the name
//! that sorts first ([`keyexchange::slots::pair_slot`]). A node does not start draining while
//! an earlier name drains the other slot, nor while a later one does whose latest step it has
//! not applied yet; if both start at the same moment, the later name withdraws its drain
//! before it changed any key, and waits.
//!
//! Nothing ever sends on a slot whose key the other end may not hold: a peer that does not
//! acknowledge a drain before [`STEP_TIMEOUT`] aborts the rotation before any key changed; a
//! peer that does not acknowledge a new key keeps the pair on the other slot (the drain stays)
//! until it does.
//!
//! The one exception is a **silent** peer: one with which no WireGuard session can exist on
//! either slot, because no handshake completed within the silence window (by default
//! WireGuard's own 180 s limit on a session's age; see [`silent_peers`]). Nothing of it can be
//! in flight and nothing of ours can reach it, so a dead node cannot hold every other node's
//! rotation hostage: a silent peer that has not acknowledged a step within [`SILENT_GRACE`] is
//! excused for the rest of the rotation (it leaves the excused set the moment it handshakes
//! again, and is waited for from then on). When it comes back it programs the keys its peers
//! publish then; until its meshd has read them, its handshakes on a replaced slot fail (they
//! are dropped, never sent in clear).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use keyexchange::record::RotationStep;
use keyexchange::slots::{yields_to, Slot};
use keyexchange::NodeRecord;

/// How long a drain waits for every peer's acknowledgement before the rotation is aborted.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rotation waits for other nodes' rotations before it starts draining.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a step waits for a silent peer's acknowledgement before it goes on without it.
pub const SILENT_GRACE: Duration = Duration::from_secs(10);
/// The default silence window: WireGuard rejects a session older than this
/// (`REJECT_AFTER_TIME`, the audit's handshake window), so a peer that has not handshaken for
/// this long has none.
pub const DEFAULT_SILENCE: Duration = crate::audit::HANDSHAKE_WINDOW;
/// After the last acknowledgement of a drain, how long packets already sent on the slot get
/// to arrive before its key is replaced.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Where the rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No rotation.
    Idle,
    /// Waiting to drain `slot`: a peer whose name sorts first drains the other slot.
    Waiting {
        /// The slot to drain next.
        slot: Slot,
    },
    /// `slot` is drained; waiting for every peer's acknowledgement.
    Draining {
        /// The drained slot.
        slot: Slot,
    },
    /// `slot`'s key was replaced; waiting for every peer to program it.
    Replaced {
        /// The slot whose key is new.
        slot: Slot,
    },
}

/// What the daemon must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing (yet).
    Wait,
    /// Publish this step (or the end of the rotation: `None`).
    Publish(Option<RotationStep>),
    /// Generate, persist and program a new key for the slot, then publish this step.
    Replace(Slot, RotationStep),
    /// The rotation finished: publish `None`, both keys are new.
    Finished,
    /// The rotation was abandoned before any key changed: publish `None`; the reason names the
    /// peers at fault.
    Aborted(String),
}

/// The driver's state.
#[derive(Debug, Clone)]
pub struct Driver {
    phase: Phase,
    /// The slot to rotate after the current one.
    then: Option<Slot>,
    serial: u64,
    /// When the current step was published.
    since: Instant,
    /// When every peer had acknowledged the current drain.
    acked_at: Option<Instant>,
    /// Peers not yet acknowledging the current step (for status).
    pending: Vec<String>,
    /// Peers with which no session exists now (as last read from the devices).
    silent: BTreeSet<String>,
    /// Silent peers this rotation stopped waiting for.
    excused: BTreeSet<String>,
}

impl Default for Driver {
    fn default() -> Self {
        Driver {
            phase: Phase::Idle,
            then: None,
            serial: 0,
            since: Instant::now(),
            acked_at: None,
            pending: Vec::new(),
            silent: BTreeSet::new(),
            excused: BTreeSet::new(),
        }
    }
}

/// A rotation under way as kept in the state directory, so that a restarted meshd finishes
/// it instead of lifting a drain (or publishing a replaced key) its peers were not ready for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    /// The phase.
    pub phase: Phase,
    /// The slot to rotate after the current one.
    pub then: Option<Slot>,
    /// The last serial used.
    pub serial: u64,
    /// The step this node publishes.
    pub step: Option<SavedStep>,
}

/// [`RotationStep`] as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedStep {
    /// The step's serial.
    pub serial: u64,
    /// The drained slot.
    pub draining: Option<Slot>,
    /// Whether the drained slot's key was replaced.
    #[serde(default)]
    pub replaced: bool,
}

impl Driver {
    /// What to save while a rotation is under way (`None` when idle); `step` is the step
    /// this node publishes.
    pub fn saved(&self, step: Option<RotationStep>) -> Option<Saved> {
        self.busy().then(|| Saved {
            phase: self.phase,
            then: self.then,
            serial: self.serial,
            step: step.map(|s| SavedStep {
                serial: s.serial,
                draining: s.draining.and_then(Slot::new),
                replaced: s.replaced,
            }),
        })
    }

    /// A driver that carries on with `saved` (its timeouts start over at `now`), and the step
    /// to publish.
    pub fn resume(saved: &Saved, now: Instant) -> (Driver, Option<RotationStep>) {
        let driver = Driver {
            phase: saved.phase,
            then: saved.then,
            serial: saved.serial,
            since: now,
            acked_at: None,
            pending: Vec::new(),
            silent: BTreeSet::new(),
            excused: BTreeSet::new(),
        };
        let step = saved.step.map(|s| RotationStep {
            serial: s.serial,
            draining: s.draining.map(u8::from),
            replaced: s.replaced,
        });
        (driver, step)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Peers the current step waits for.
    pub fn pending(&self) -> &[String] {
        &self.pending
    }

    /// Silent peers this rotation goes on without (for status).
    pub fn excused(&self) -> impl Iterator<Item = &str> {
        self.excused.iter().map(String::as_str)
    }

    /// Tell the driver which peers are silent now (see [`silent_peers`]).
    pub fn observe_silent(&mut self, silent: BTreeSet<String>) {
        self.silent = silent;
    }

    /// Whether a rotation is under way.
    pub fn busy(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// Begin a rotation of both slots (slot 0 first). `serial_floor` is a value every serial of
    /// this rotation must exceed (e.g. the clock in milliseconds, so serials keep growing across
    /// restarts). Returns false when one is already under way.
    pub fn start(&mut self, now: Instant, serial_floor: u64) -> bool {
        if self.busy() {
            return false;
        }
        self.serial = self.serial.max(serial_floor);
        self.phase = Phase::Waiting { slot: Slot::FIRST };
        self.then = Some(Slot::SECOND);
        self.since = now;
        self.acked_at = None;
        self.pending.clear();
        self.excused.clear();
        true
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn step(&mut self, now: Instant, phase: Phase, draining: Option<Slot>) -> RotationStep {
        self.phase = phase;
        self.since = now;
        self.acked_at = None;
        RotationStep {
            serial: self.next_serial(),
            draining: draining.map(u8::from),
            replaced: matches!(phase, Phase::Replaced { .. }),
        }
    }

    fn abort(&mut self, reason: String) -> Action {
        self.phase = Phase::Idle;
        self.then = None;
        self.pending.clear();
        self.excused.clear();
        Action::Aborted(reason)
    }

    /// Advance as far as `me` and the `peers`' records allow. `me` is this node's record as
    /// published (its step and keys included).
    pub fn poll<'a>(
        &mut self,
        now: Instant,
        me: &NodeRecord,
        peers: impl IntoIterator<Item = &'a NodeRecord>,
    ) -> Action {
        let peers: Vec<&NodeRecord> = peers.into_iter().filter(|p| p.name != me.name).collect();
        let published = me.rotation.step.map_or(0, |s| s.serial);
        // A peer that handshook again is waited for again.
        self.excused.retain(|n| self.silent.contains(n));
        let waited = now.duration_since(self.since);
        let pending: Vec<String> = peers
            .iter()
            .filter(|p| p.rotation.acks.get(&me.name).copied().unwrap_or(0) < published)
            .map(|p| p.name.clone())
            .filter(|n| !self.excuse(n, waited))
            .collect();
        match self.phase {
            Phase::Idle => Action::Wait,
            Phase::Waiting { slot } => {
                let old: Vec<&str> = peers
                    .iter()
                    .filter(|p| p.rotation.second.is_none())
                    .map(|p| p.name.as_str())
                    .collect();
                if me.rotation.second.is_none() || !old.is_empty() {
                    let who = if old.is_empty() {
                        me.name.clone()
                    } else {
                        old.join(", ")
                    };
                    return self.abort(format!(
                        "nodes without a second key slot (an older meshd): {who}"
                    ));
                }
                // Another node drains the other slot: pairs with it follow the drain of the
                // name that sorts first. Wait for an earlier name. A later one is fine once it
                // replaced that slot's key and this node applied the step (so both ends hold
                // its new key); before, it may replace the key at any moment, and pairs
                // moving onto the slot now would lose what they send.
                let blocked = peers.iter().any(|p| match (p.draining(), p.rotation.step) {
                    // A node that died in the middle of its own rotation blocks nobody.
                    _ if self.excuse(&p.name, waited) => false,
                    (Some(d), Some(step)) if d != slot => {
                        p.name < me.name
                            || !step.replaced
                            || me.rotation.acks.get(&p.name).copied() != Some(step.serial)
                    }
                    _ => false,
                });
                if blocked {
                    if now.duration_since(self.since) > WAIT_TIMEOUT {
                        return self.abort(format!(
                            "other nodes kept rotating for more than {} s",
                            WAIT_TIMEOUT.as_secs()
                        ));
                    }
                    return Action::Wait;
                }
                let step = self.step(now, Phase::Draining { slot }, Some(slot));
                Action::Publish(Some(step))
            }
            Phase::Draining { slot } => {
                if peers.iter().any(|p| yields_to(me, slot, p)) {
                    // Both sides started draining opposite slots: the later name steps back.
                    let step = self.step(now, Phase::Waiting { slot }, None);
                    return Action::Publish(Some(step));
                }
                self.pending = pending;
                if !self.pending.is_empty() {
                    if now.duration_since(self.since) > STEP_TIMEOUT {
                        let who = self.pending.join(", ");
                        return self.abort(format!(
                            "peers did not move off slot {slot} within {} s: {who}; no key was changed",
                            STEP_TIMEOUT.as_secs()
                        ));
                    }
                    return Action::Wait;
                }
                let acked = *self.acked_at.get_or_insert(now);
                if now.duration_since(acked) < DRAIN_GRACE {
                    return Action::Wait;
                }
                let step = self.step(now, Phase::Replaced { slot }, Some(slot));
                Action::Replace(slot, step)
            }
            Phase::Replaced { slot: _ } => {
                self.pending = pending;
                if !self.pending.is_empty() {
                    // Never give up here: the drain keeps pairs off the new key until every
                    // peer holds it.
                    return Action::Wait;
                }
                match self.then.take() {
                    Some(next) => {
                        self.phase = Phase::Waiting { slot: next };
                        self.since = now;
                        self.poll(now, me, peers)
                    }
                    None => {
                        self.phase = Phase::Idle;
                        self.excused.clear();
                        Action::Finished
                    }
                }
            }
        }
    }

    /// Whether the step may go on without `peer`: it is silent and was excused before, or the
    /// step has waited [`SILENT_GRACE`] for it (then it is excused from now on).
    fn excuse(&mut self, peer: &str, waited: Duration) -> bool {
        if !self.silent.contains(peer) {
            return false;
        }
        if self.excused.contains(peer) {
            return true;
        }
        if waited >= SILENT_GRACE {
            self.excused.insert(peer.to_string());
            return true;
        }
        false
    }

    /// A deadline by which [`Driver::poll`] should run again, if the driver waits on time
    /// rather than on records.
    pub fn wake_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => None,
            Phase::Draining { .. } => {
                let grace = (self.since + SILENT_GRACE).max(Instant::now());
                Some(
                    self.acked_at
                        .map_or(self.since + STEP_TIMEOUT, |a| a + DRAIN_GRACE)
                        .min(self.since + STEP_TIMEOUT)
                        .min(grace),
                )
            }
            Phase::Waiting { .. } | Phase::Replaced { .. } => {
                Some(Instant::now() + Duration::from_secs(1))
            }
        }
    }
}

/// The peers (by node name) with which no session can exist: every key of theirs programmed
/// here (`handshakes`: public key → last handshake, from both devices) last handshook at least
/// `silence` before `now`, or never. A peer none of whose keys is programmed is not judged.
pub fn silent_peers<'a>(
    peers: impl IntoIterator<Item = &'a NodeRecord>,
    handshakes: &BTreeMap<keyexchange::PublicKey, Option<SystemTime>>,
    silence: Duration,
    now: SystemTime,
) -> BTreeSet<String> {
    peers
        .into_iter()
        .filter(|p| {
            let keys = std::iter::once(p.public_key)
                .chain(p.rotation.second.as_ref().map(|s| s.public_key));
            let seen: Vec<Option<SystemTime>> =
                keys.filter_map(|k| handshakes.get(&k).copied()).collect();
            !seen.is_empty()
                && seen.iter().all(|last| {
                    last.is_none_or(|t| now.duration_since(t).is_ok_and(|age| age >= silence))
                })
        })
        .map(|p| p.name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
