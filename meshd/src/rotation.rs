//! The key-rotation driver: which step of a rotation this node is in and when it may take the
//! next one. Pure: the daemon feeds it the records and what it read from its own WireGuard
//! devices, and carries out what it returns. No peer writes anything for this node's rotation:
//! its readiness is read from the data plane.
//!
//! A rotation replaces both of the node's keys, one slot at a time (see [`keyexchange::slots`]),
//! in four writes of the node's own record. For slot `s`:
//! 1. **drain**: publish `draining: s` with a new serial. Every peer moves the traffic it sends
//!    to this node onto the other slot (so does this node). A peer is off slot `s` once this
//!    node's slot-`s` device has received nothing from it for [`DRAIN_QUIET`], at least
//!    [`DRAIN_MIN`] after the drain was published (the time a live peer's meshd takes to apply
//!    a step; a peer still sending on `s` keeps the step waiting).
//! 2. **replace**: once every peer is off slot `s`, generate the new key for `s`, program it and
//!    publish it with a new serial, still draining `s`. Every peer programs the new key and
//!    starts a handshake on slot `s` (the daemon pokes its own side too). A handshake completed
//!    on this node's slot-`s` device after the new key took effect ([`Driver::key_replaced`])
//!    proves the peer holds the new key: nothing else can complete one.
//! 3. the next slot is drained the same way (traffic moves back onto the fresh slot `s`). Its
//!    new key is published with the drain lifted: pairs use slot 0 unless a node drains it, so
//!    nothing uses the last slot until its new key is held by both ends (when another node
//!    drains the other slot at that moment, the key goes out still drained and the drain is
//!    lifted after the proof: one write more). The rotation finishes when every peer proved
//!    the last key too.
//!
//! Two nodes draining opposite slots are settled by name: pairs follow the drain of the name
//! that sorts first ([`keyexchange::slots::pair_slot`]). A node does not start draining while
//! an earlier name drains the other slot, nor while a later one does that has not replaced its
//! key yet; if both start at the same moment, the later name withdraws its drain before it
//! changed any key, and waits.
//!
//! Nothing ever sends on a slot whose key the other end may not hold: a peer that keeps sending
//! on a drained slot for [`STEP_TIMEOUT`] aborts the rotation before any key changed; a peer
//! that does not prove it holds a new key keeps the pair on the other slot (the drain stays)
//! until it does. A peer with no entry on the slot's device has no tunnel with this node on it
//! and is not waited for.
//!
//! The one exception is a **silent** peer: one with which no WireGuard session can exist on
//! either slot, because no handshake completed within the silence window (by default
//! WireGuard's own 180 s limit on a session's age; see [`silent_peers`]). Nothing of it can be
//! in flight and nothing of ours can reach it, so a dead node cannot hold every other node's
//! rotation hostage: a silent peer that has not proved a new key within [`SILENT_GRACE`] is
//! excused for the rest of the rotation (it leaves the excused set the moment it handshakes
//! again, and is waited for from then on). When it comes back it programs the keys its peers
//! publish then; until its meshd has read them, its handshakes on a replaced slot fail (they
//! are dropped, never sent in clear).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyexchange::record::RotationStep;
use keyexchange::slots::{yields_to, Slot};
use keyexchange::NodeRecord;

/// How long a drain waits for every peer to stop sending on the drained slot before the
/// rotation is aborted (no key changed yet), counted from the step's first reading of the
/// device and extended by twice the time this node's own pass took to apply the step (see
/// [`Driver::drain_timed_out`]).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rotation waits for other nodes' rotations before it starts draining.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a step waits for a silent peer before it goes on without it.
pub const SILENT_GRACE: Duration = Duration::from_secs(10);
/// The default silence window: WireGuard rejects a session older than this
/// (`REJECT_AFTER_TIME`, the audit's handshake window), so a peer that has not handshaken for
/// this long has none.
pub const DEFAULT_SILENCE: Duration = crate::audit::HANDSHAKE_WINDOW;
/// The least time between publishing a drain and replacing the slot's key: what a live
/// peer's meshd gets to see the step and move its traffic, even when it sends nothing.
pub const DRAIN_MIN: Duration = Duration::from_secs(1);
/// How long the drained slot's device must have received nothing from a peer before the
/// peer counts as off the slot (its packets already in flight have landed).
pub const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// How often a step that waits on the data plane is polled (with a fresh device reading).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

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
    /// `slot` is drained; waiting for every peer to stop sending on it.
    Draining {
        /// The drained slot.
        slot: Slot,
    },
    /// `slot`'s key was replaced; waiting for every peer to handshake on it.
    Replaced {
        /// The slot whose key is new.
        slot: Slot,
    },
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing (yet).
    Wait,
    /// Publish this step (or the end of the rotation: `None`).
    Publish(Option<RotationStep>),
    /// Generate, persist and program a new key for the slot, tell the driver when it took
    /// effect ([`Driver::key_replaced`]), then publish the new key with this step (`None`:
    /// with the drain lifted, when the last slot's key is replaced and nothing can use that
    /// slot meanwhile; see [`Driver::poll`]).
    Replace(Slot, Option<RotationStep>),
    /// The rotation finished: publish `None`, both keys are new.
    Finished,
    /// The rotation was abandoned before any key changed: publish `None`; the reason names the
    /// peers at fault.
    Aborted(String),
}

/// What this node's device of one slot reports about one peer node's entry on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerReading {
    /// Bytes received from the peer on this slot.
    pub rx_bytes: u64,
    /// When the last handshake with the peer on this slot completed; `None` if never.
    pub last_handshake: Option<SystemTime>,
}

/// One reading of the device of the slot the current step is about
/// ([`Driver::evidence_slot`]), by peer node name; a peer with no entry on the device is
/// absent.
pub type SlotReading = BTreeMap<String, PeerReading>;

/// The driver's state.
#[derive(Debug, Clone)]
pub struct Driver {
    phase: Phase,
    /// The slot to rotate after the current one.
    then: Option<Slot>,
    serial: u64,
    /// When the current step was published.
    since: Instant,
    /// Peers the current step waits for (for status).
    pending: Vec<String>,
    /// Peers with which no session exists now (as last read from the devices).
    silent: BTreeSet<String>,
    /// Silent peers this rotation stopped waiting for.
    excused: BTreeSet<String>,
    /// The peers on the step's slot device at the last reading of this step (`None`: not
    /// read yet during this step).
    present: Option<BTreeSet<String>>,
    /// Draining: per peer, the bytes received on the drained slot and since when unchanged.
    quiet: BTreeMap<String, (u64, Instant)>,
    /// When the current step's device was first read: the first evidence of the step, taken
    /// after this node's own pass applied it.
    first_reading: Option<Instant>,
    /// Replaced: when the new key took effect on the device.
    replaced_at: Option<SystemTime>,
    /// Replaced: peers that handshook on the new key.
    proven: BTreeSet<String>,
}

impl Default for Driver {
    fn default() -> Self {
        Driver {
            phase: Phase::Idle,
            then: None,
            serial: 0,
            since: Instant::now(),
            pending: Vec::new(),
            silent: BTreeSet::new(),
            excused: BTreeSet::new(),
            present: None,
            quiet: BTreeMap::new(),
            first_reading: None,
            replaced_at: None,
            proven: BTreeSet::new(),
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
    /// When the replaced slot's new key took effect (UNIX milliseconds); only a handshake
    /// after it proves a peer holds the key. Absent from files written before 0.20: then
    /// the time of the restart is used (later, so never wrong, only slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_unix_ms: Option<u64>,
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

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
            replaced_unix_ms: self.replaced_at.map(unix_ms),
        })
    }

    /// A driver that carries on with `saved` (its timeouts start over at `now`, `wall_now`
    /// being the same moment on the wall clock), and the step to publish.
    pub fn resume(
        saved: &Saved,
        now: Instant,
        wall_now: SystemTime,
    ) -> (Driver, Option<RotationStep>) {
        let replaced_at = matches!(saved.phase, Phase::Replaced { .. }).then(|| {
            saved
                .replaced_unix_ms
                .map_or(wall_now, |ms| UNIX_EPOCH + Duration::from_millis(ms))
        });
        let driver = Driver {
            phase: saved.phase,
            then: saved.then,
            serial: saved.serial,
            since: now,
            replaced_at,
            ..Driver::default()
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

    /// Whether `peer` was silent at the last reading (see [`silent_peers`]).
    pub fn is_silent(&self, peer: &str) -> bool {
        self.silent.contains(peer)
    }

    /// Silent peers this rotation goes on without (for status).
    pub fn excused(&self) -> impl Iterator<Item = &str> {
        self.excused.iter().map(String::as_str)
    }

    /// Tell the driver which peers are silent now (see [`silent_peers`]).
    pub fn observe_silent(&mut self, silent: BTreeSet<String>) {
        self.silent = silent;
    }

    /// The slot whose device the current step reads its evidence from (see
    /// [`Driver::observe_slot`]); `None` when the step needs none.
    pub fn evidence_slot(&self) -> Option<Slot> {
        match self.phase {
            Phase::Draining { slot } | Phase::Replaced { slot } => Some(slot),
            Phase::Idle | Phase::Waiting { .. } => None,
        }
    }

    /// Feed a reading, taken at `now`, of the device of [`Driver::evidence_slot`].
    pub fn observe_slot(&mut self, now: Instant, reading: &SlotReading) {
        match self.phase {
            Phase::Draining { .. } => {
                for (name, r) in reading {
                    let seen = self.quiet.entry(name.clone()).or_insert((r.rx_bytes, now));
                    if seen.0 != r.rx_bytes {
                        *seen = (r.rx_bytes, now);
                    }
                }
            }
            Phase::Replaced { .. } => {
                if let Some(at) = self.replaced_at {
                    self.proven.extend(
                        reading
                            .iter()
                            .filter(|(_, r)| r.last_handshake.is_some_and(|h| h >= at))
                            .map(|(name, _)| name.clone()),
                    );
                }
            }
            Phase::Idle | Phase::Waiting { .. } => return,
        }
        self.first_reading.get_or_insert(now);
        self.present = Some(reading.keys().cloned().collect());
    }

    /// The new key of the replaced slot took effect on its device at `at` (before the step
    /// that publishes it): only a handshake completed since proves a peer holds it.
    pub fn key_replaced(&mut self, at: SystemTime) {
        self.replaced_at = Some(at);
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
        self.clear_evidence();
        self.pending.clear();
        self.excused.clear();
        true
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn clear_evidence(&mut self) {
        self.present = None;
        self.quiet.clear();
        self.first_reading = None;
        self.replaced_at = None;
        self.proven.clear();
    }

    fn step(&mut self, now: Instant, phase: Phase, draining: Option<Slot>) -> RotationStep {
        self.phase = phase;
        self.since = now;
        self.clear_evidence();
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
        self.clear_evidence();
        Action::Aborted(reason)
    }

    /// The current step's record is not in the registry yet: its clock (the drain's minimum,
    /// the quiet time, the timeouts) starts again from `now`, and no evidence gathered so far
    /// counts.
    pub fn hold(&mut self, now: Instant) {
        if self.busy() {
            self.since = now;
            self.quiet.clear();
            self.first_reading = None;
        }
    }

    /// Whether the drain has waited long enough for peers still sending on the slot to be
    /// given up on. The clock starts at the step's first reading, not at its publication:
    /// the pass that applies a drain moves every pair of this node onto the other slot (at
    /// 5,000 peers, 10,000 routes and redirects), and a single reading taken after a pass
    /// longer than [`STEP_TIMEOUT`] shows every peer as just seen, never as quiet (this
    /// aborted every rotation at 1,000 peers in a debug build). Peers' meshd take passes as
    /// long as this node's at the same cluster size, and one may have been under way when
    /// the step landed: the wait is extended by twice this node's own. Without any reading
    /// (the device cannot be read) the clock starts at the publication.
    fn drain_timed_out(&self, now: Instant) -> bool {
        match self.first_reading {
            None => now.duration_since(self.since) > STEP_TIMEOUT,
            Some(first) => {
                let own_pass = first.saturating_duration_since(self.since);
                now.saturating_duration_since(first) > STEP_TIMEOUT + 2 * own_pass
            }
        }
    }

    /// Whether `peer` is off the drained slot: at least [`DRAIN_MIN`] into the step, and the
    /// slot's device has received nothing from it for [`DRAIN_QUIET`] (a peer with no entry
    /// on the device sends nothing on it).
    fn drained(&self, peer: &str, now: Instant) -> bool {
        let Some(present) = &self.present else {
            return false;
        };
        if now.duration_since(self.since) < DRAIN_MIN {
            return false;
        }
        if !present.contains(peer) {
            return true;
        }
        let quiet_since = self.quiet.get(peer).map_or(self.since, |q| q.1);
        now.duration_since(quiet_since) >= DRAIN_QUIET
    }

    /// Whether `peer` proved it holds the replaced slot's new key (or has no tunnel with this
    /// node on that slot).
    fn holds_new_key(&self, peer: &str) -> bool {
        match &self.present {
            None => false,
            Some(present) => self.proven.contains(peer) || !present.contains(peer),
        }
    }

    /// Advance as far as `me`, the `peers`' records and the evidence fed since the step began
    /// allow. `me` is this node's record as published (its step and keys included); call it
    /// after a reconcile pass that applied `peers` succeeded.
    pub fn poll<'a>(
        &mut self,
        now: Instant,
        me: &NodeRecord,
        peers: impl IntoIterator<Item = &'a NodeRecord>,
    ) -> Action {
        let peers: Vec<&NodeRecord> = peers.into_iter().filter(|p| p.name != me.name).collect();
        // A peer that handshook again is waited for again.
        self.excused.retain(|n| self.silent.contains(n));
        let waited = now.duration_since(self.since);
        let ready = |d: &Driver, name: &str| match d.phase {
            Phase::Draining { .. } => d.drained(name, now),
            Phase::Replaced { .. } => d.holds_new_key(name),
            Phase::Idle | Phase::Waiting { .. } => true,
        };
        let not_ready: Vec<String> = peers
            .iter()
            .filter(|p| !ready(self, &p.name))
            .map(|p| p.name.clone())
            .collect();
        let pending: Vec<String> = not_ready
            .into_iter()
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
                // replaced that slot's key (this pass applied its step, so both ends hold
                // it); before, it may replace the key at any moment, and pairs moving onto
                // the slot now would lose what they send.
                let blocked = peers.iter().any(|p| match (p.draining(), p.rotation.step) {
                    // A node that died in the middle of its own rotation blocks nobody.
                    _ if self.excuse(&p.name, waited) => false,
                    (Some(d), Some(step)) if d != slot => p.name < me.name || !step.replaced,
                    _ => false,
                });
                if blocked {
                    if waited > WAIT_TIMEOUT {
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
                    if self.drain_timed_out(now) {
                        let who = self.pending.join(", ");
                        return self.abort(format!(
                            "peers did not move off slot {slot} within {} s (still sending on it, or this node could not read its device): {who}; no key was changed",
                            STEP_TIMEOUT.as_secs()
                        ));
                    }
                    return Action::Wait;
                }
                if self.present.is_none() || waited < DRAIN_MIN {
                    // No peer at all, but the step still needs its reading and its minimum.
                    return Action::Wait;
                }
                // The last slot: when no peer drains the other one, no pair uses this slot
                // once the drain is lifted (pairs use slot 0 unless a node drains it), and a
                // node that starts draining the other slot later has applied the record with
                // the new key first. So the new key goes out with the drain lifted, one write
                // fewer; this node still waits for every peer's handshake on it before the
                // rotation counts as finished. Otherwise the new key goes out still drained.
                let others_drain_other = peers
                    .iter()
                    .any(|p| p.draining() == Some(slot.other()) && !self.excused.contains(&p.name));
                if self.then.is_none() && slot != Slot::FIRST && !others_drain_other {
                    self.phase = Phase::Replaced { slot };
                    self.since = now;
                    self.clear_evidence();
                    return Action::Replace(slot, None);
                }
                let step = self.step(now, Phase::Replaced { slot }, Some(slot));
                Action::Replace(slot, Some(step))
            }
            Phase::Replaced { slot: _ } => {
                self.pending = pending;
                if !self.pending.is_empty() || self.present.is_none() {
                    // Never give up here: the drain keeps pairs off the new key until every
                    // peer holds it.
                    return Action::Wait;
                }
                match self.then.take() {
                    Some(next) => {
                        self.phase = Phase::Waiting { slot: next };
                        self.since = now;
                        self.clear_evidence();
                        self.poll(now, me, peers)
                    }
                    None => {
                        self.phase = Phase::Idle;
                        self.excused.clear();
                        self.clear_evidence();
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

    /// A deadline by which [`Driver::poll`] should run again (with a fresh reading), if the
    /// driver waits on time or on the data plane rather than on records.
    pub fn wake_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => None,
            Phase::Draining { .. } | Phase::Replaced { .. } => Some(Instant::now() + POLL_INTERVAL),
            Phase::Waiting { .. } => Some(Instant::now() + Duration::from_secs(1)),
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
