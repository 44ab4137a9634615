//! Key rotation glue: starts this node's rotation (on schedule or on demand), pokes a
//! handshake on other nodes' freshly replaced keys (the data-plane proof their rotation waits
//! for; nothing is written into the registry for them), reads the evidence this node's own
//! rotation waits for from its devices, lets the driver ([`crate::rotation`]) take its next
//! step, replaces a drained slot's key, and keeps the rotation under way in the state
//! directory.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use keyexchange::slots::Slot;
use keyexchange::{NodeRecord, PrivateKey, PublicKey};
use netlink::model::{PeerChange, PeerConfig};

use super::context::{Context, KEY_FILES};
use super::state::RotationBook;
use super::unix_now;
use crate::rotation::{self, Action, Driver};

/// A scheduled rotation that failed is retried after this long.
const ROTATION_RETRY: Duration = Duration::from_secs(600);

pub(super) fn rotation_retry_due(book: &RotationBook) -> bool {
    book.last_unix
        .is_none_or(|t| unix_now().saturating_sub(t) >= ROTATION_RETRY.as_secs())
}

/// Where a rotation under way is kept across restarts.
const ROTATION_FILE: &str = "rotation.json";

/// The rotation saved in `state_dir`, if any. A file that cannot be read is reported and
/// ignored: no rotation is resumed (any drain it held is lifted).
pub(super) fn load_rotation(state_dir: &std::path::Path) -> Option<rotation::Saved> {
    let path = state_dir.join(ROTATION_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot read the saved key rotation; not resuming it");
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(saved) => Some(saved),
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "the saved key rotation is corrupt; not resuming it");
            None
        }
    }
}

/// Keep the rotation's state in the state directory (removed once it ended).
fn save_rotation(ctx: &Context, book: &RotationBook) {
    let path = ctx.args.state_dir.join(ROTATION_FILE);
    let result = match book.driver.saved(ctx.me().rotation.step) {
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Some(saved) => serde_json::to_string(&saved)
            .map_err(std::io::Error::other)
            .and_then(|body| crate::statefile::write_atomic(&path, body.as_bytes(), 0o644)),
    };
    if let Err(err) = result {
        tracing::warn!(path = %path.display(), %err, "saving the key rotation's state failed");
    }
}

/// Begin a rotation unless one is under way (its end answers every waiter).
pub(super) fn start_rotation(book: &mut RotationBook, why: &str) {
    let floor = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if book.driver.start(std::time::Instant::now(), floor) {
        tracing::info!(why, "key rotation started");
    }
}

/// The keepalive interval a poke sets for a moment (the next pass restores the configured
/// one): going from off (0) to on makes both the kernel and `meshd-wg` send a keepalive at
/// once, which starts a handshake when the peer entry has no session.
const POKE_KEEPALIVE: u16 = 1;
/// How often this node pokes again the peers that have not yet proved its new key (the
/// devices retransmit a handshake initiation for about 90 s on their own).
const REPOKE_INTERVAL: Duration = Duration::from_secs(20);

/// Start a handshake now with each of `keys` on `slot`'s device: a keepalive goes out at
/// once and, as a fresh or re-keyed peer entry holds no session, a handshake initiation
/// with it. Only peers already programmed are touched, with their programmed endpoint and
/// allowed IPs. Returns how many were poked.
async fn poke(ctx: &Context, slot: Slot, keys: &BTreeSet<PublicKey>) -> anyhow::Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let device = ctx.device(slot).read().await;
    let status = device.status().await.context("reading the device")?;
    let changes: Vec<PeerChange> = status
        .peers
        .iter()
        .filter(|p| keys.contains(&PublicKey::from_bytes(p.public_key)))
        .flat_map(|p| {
            let off = PeerConfig {
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: Some(0),
            };
            let on = PeerConfig {
                persistent_keepalive: Some(POKE_KEEPALIVE),
                ..off.clone()
            };
            [PeerChange::Upsert(off), PeerChange::Upsert(on)]
        })
        .collect();
    device.apply(&changes).await.context("poking peers")?;
    Ok(changes.len() / 2)
}

/// How many nodes seen for the first time in one call make [`poke_rotating_peers`] build its
/// map of seen keys again (a cold start sees every node at once).
const REBUILD_SEEN_AFTER: usize = 256;

/// Other nodes' rotations: for each peer node whose published key changed since the last
/// converged pass (which just programmed the new one), start a handshake with that key on
/// its slot. The handshake is the proof that node's rotation waits for; nothing is written
/// into the registry. A node seen for the first time is not poked. True when a peer was poked.
async fn poke_rotating_peers(
    ctx: &Context,
    book: &mut RotationBook,
    records: &BTreeMap<String, NodeRecord>,
) -> bool {
    let me = ctx.me();
    book.seen_keys.retain(|name, _| records.contains_key(name));
    let mut due: [BTreeSet<PublicKey>; 2] = Default::default();
    let mut first_seen = 0usize;
    for r in records.values().filter(|r| r.name != me.name) {
        let keys = keyexchange::slots::SLOTS.map(|slot| r.slot(slot).map(|k| k.public_key));
        // In place: a node's name is allocated once, when it is first seen, not on every pass
        // (at 5,000 nodes that was 5,000 short strings allocated and freed per pass).
        let seen = match book.seen_keys.get_mut(&r.name) {
            Some(seen) => Some(std::mem::replace(seen, keys)),
            None => {
                book.seen_keys.insert(r.name.clone(), keys);
                first_seen += 1;
                None
            }
        };
        if let Some(before) = seen {
            for slot in keyexchange::slots::SLOTS {
                match keys[slot.index()] {
                    Some(key) if before[slot.index()] != Some(key) => {
                        due[slot.index()].insert(key);
                    }
                    _ => {}
                }
            }
        }
    }
    if first_seen >= REBUILD_SEEN_AFTER {
        // Inserted in name order, the map's nodes are half full, and its names sit among the
        // pass's transient data: built again from its sorted entries, in fresh blocks.
        book.seen_keys = book
            .seen_keys
            .iter()
            .map(|(name, keys)| (name.clone(), *keys))
            .collect();
    }
    let mut poked = false;
    for slot in keyexchange::slots::SLOTS {
        match poke(ctx, slot, &due[slot.index()]).await {
            Ok(0) => {}
            Ok(n) => {
                poked = true;
                tracing::debug!(%slot, peers = n, "poked a handshake on peers' new keys");
            }
            Err(err) => {
                // The peer's own pokes and the devices' retransmissions still get there.
                tracing::warn!(%slot, error = %format!("{err:#}"), "poking a handshake on peers' new keys failed");
            }
        }
    }
    poked
}

/// The current step's evidence from this node's device of `slot`: per peer node, what its
/// entry there reports. `None` when the device cannot be read.
async fn read_slot(
    ctx: &Context,
    slot: Slot,
    records: &BTreeMap<String, NodeRecord>,
    me: &str,
) -> Option<rotation::SlotReading> {
    let status = match ctx.device(slot).read().await.status().await {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%slot, %err, "key rotation: reading the device failed");
            return None;
        }
    };
    let by_key: BTreeMap<[u8; 32], &netlink::model::PeerStatus> =
        status.peers.iter().map(|p| (p.public_key, p)).collect();
    Some(
        records
            .values()
            .filter(|r| r.name != me)
            .filter_map(|r| {
                let key = r.slot(slot)?.public_key;
                let p = by_key.get(key.as_bytes())?;
                Some((
                    r.name.clone(),
                    rotation::PeerReading {
                        rx_bytes: p.rx_bytes,
                        last_handshake: p.last_handshake,
                    },
                ))
            })
            .collect(),
    )
}

/// While this node's new key waits for proof: poke the peers that have not handshaken on
/// it, at most every [`REPOKE_INTERVAL`]. Silent peers (no session on either slot) are left
/// alone: a live one pokes this node's new key itself when its meshd programs it
/// ([`poke_rotating_peers`]), and a dead one cannot answer; at 5,000 simulated (silent)
/// peers, poking them all set off 5,000 handshake initiations, retransmitted for 90 s.
async fn repoke_pending(
    ctx: &Context,
    book: &mut RotationBook,
    records: &BTreeMap<String, NodeRecord>,
) -> bool {
    let Some(slot) = book.driver.evidence_slot() else {
        return false;
    };
    if !matches!(book.driver.phase(), rotation::Phase::Replaced { .. })
        || book.poked_at.is_some_and(|t| t.elapsed() < REPOKE_INTERVAL)
    {
        return false;
    }
    let keys: BTreeSet<PublicKey> = book
        .driver
        .pending()
        .iter()
        .filter(|n| !book.driver.is_silent(n))
        .filter_map(|n| records.get(n)?.slot(slot))
        .map(|k| k.public_key)
        .collect();
    if keys.is_empty() {
        return false;
    }
    book.poked_at = Some(Instant::now());
    if let Err(err) = poke(ctx, slot, &keys).await {
        tracing::warn!(%slot, error = %format!("{err:#}"), "key rotation: poking peers failed");
    }
    true
}

/// What following the rotations asks of the event loop.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RotationFollowUp {
    /// This node's record changed: publish it.
    pub republish: bool,
    /// Peers were poked (a keepalive of [`POKE_KEEPALIVE`]): a pass soon restores the
    /// configured keepalive.
    pub poked: bool,
}

/// Follow the rotations after a converged pass (or, while this node rotates, at the driver's
/// wake-up when nothing changed since the last converged pass): poke other nodes' new keys,
/// then let this node's rotation take its next step.
pub(super) async fn follow_rotations(
    ctx: &Context,
    book: &mut RotationBook,
    records: &BTreeMap<String, NodeRecord>,
) -> RotationFollowUp {
    let poked = poke_rotating_peers(ctx, book, records).await;
    let (republish, repoked) = drive_rotation(ctx, book, records).await;
    RotationFollowUp {
        republish,
        poked: poked || repoked,
    }
}

/// Take this node's next rotation step, if the peers allow it. Returns whether the record
/// changed, and whether peers were poked.
async fn drive_rotation(
    ctx: &Context,
    book: &mut RotationBook,
    records: &BTreeMap<String, NodeRecord>,
) -> (bool, bool) {
    let me = ctx.me();
    let silent = book
        .handshakes
        .as_ref()
        .map_or_else(BTreeSet::new, |handshakes| {
            let peers = records.values().filter(|r| r.name != me.name);
            rotation::silent_peers(
                peers,
                handshakes,
                ctx.args.rotation.rotation_silence,
                SystemTime::now(),
            )
        });
    if book.driver.busy() && !landed(book, &me) {
        // The step's record is not in the registry yet (a slow or silent API server): peers
        // cannot have seen it, so nothing counts towards it; its clock starts when it lands.
        book.driver.hold(std::time::Instant::now());
        return (false, false);
    }
    book.driver.observe_silent(silent);
    if let Some(slot) = book.driver.evidence_slot() {
        if let Some(reading) = read_slot(ctx, slot, records, &me.name).await {
            book.driver.observe_slot(Instant::now(), &reading);
        }
    }
    let excused_before: BTreeSet<String> = book.driver.excused().map(String::from).collect();
    let action = book
        .driver
        .poll(std::time::Instant::now(), &me, records.values());
    let newly_excused: Vec<&str> = book
        .driver
        .excused()
        .filter(|p| !excused_before.contains(*p))
        .collect();
    if !newly_excused.is_empty() {
        // One line for all of them (a line each was 5,000 lines at 5,000 nodes); the message
        // is the one a line per peer had.
        tracing::warn!(
            count = newly_excused.len(),
            peers = %name_sample(&newly_excused),
            silence_s = ctx.args.rotation.rotation_silence.as_secs(),
            "key rotation goes on without a silent peer (no handshake on the new key, none on either slot)"
        );
    }
    let changed = !matches!(action, Action::Wait);
    let republish = drive_action(ctx, book, action).await;
    let repoked = repoke_pending(ctx, book, records).await;
    if changed {
        save_rotation(ctx, book);
    }
    (republish, repoked)
}

/// Names shown in one log line about many peers.
const NAMES_SHOWN: usize = 10;

/// The first [`NAMES_SHOWN`] of `names`, comma-separated, with how many more there are.
fn name_sample(names: &[&str]) -> String {
    let shown = names[..names.len().min(NAMES_SHOWN)].join(", ");
    match names.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Whether this node's record as it stands (its rotation step and keys) is the one last
/// written to the registry. Without a publisher to ask (tests), it is.
fn landed(book: &RotationBook, me: &NodeRecord) -> bool {
    book.landed.as_ref().is_none_or(|landed| {
        landed
            .borrow()
            .as_ref()
            .is_some_and(|r| r.rotation == me.rotation && r.public_key == me.public_key)
    })
}

/// Carry out what the rotation driver asked for; true when this node's record changed.
async fn drive_action(ctx: &Context, book: &mut RotationBook, action: Action) -> bool {
    match action {
        Action::Wait => false,
        Action::Publish(step) => {
            tracing::info!(?step, "key rotation: next step");
            ctx.update_me(|m| m.rotation.step = step);
            true
        }
        Action::Replace(slot, step) => {
            let serial = step.map(|s| s.serial);
            match replace_key(ctx, slot).await {
                Ok(public_key) => {
                    // Every session on the slot ended with the old key: from now on, a
                    // completed handshake there is one with the new key.
                    book.driver.key_replaced(SystemTime::now());
                    book.poked_at = None;
                    tracing::info!(%slot, %public_key, ?serial, "key rotation: new key in use on the drained slot");
                    ctx.update_me(|m| {
                        match slot {
                            Slot::FIRST => m.public_key = public_key,
                            _ => {
                                if let Some(second) = m.rotation.second.as_mut() {
                                    second.public_key = public_key;
                                }
                            }
                        }
                        m.rotation.step = step;
                    });
                }
                Err(err) => {
                    // Nothing changed on the device: publish the step anyway (peers poke the
                    // unchanged key) and let the rotation end as an error.
                    tracing::error!(%slot, error = %format!("{err:#}"), "key rotation: replacing the key failed");
                    book.driver = Driver::default();
                    finish_rotation(
                        ctx,
                        book,
                        Err(format!("replacing slot {slot}'s key: {err:#}")),
                    );
                }
            }
            true
        }
        Action::Finished => {
            finish_rotation(ctx, book, Ok("both keys replaced".into()));
            true
        }
        Action::Aborted(reason) => {
            finish_rotation(ctx, book, Err(reason));
            true
        }
    }
}

/// End the rotation: lift the drain and answer whoever waits.
fn finish_rotation(ctx: &Context, book: &mut RotationBook, outcome: Result<String, String>) {
    ctx.update_me(|m| m.rotation.step = None);
    book.last_unix = Some(unix_now());
    match &outcome {
        Ok(msg) => {
            book.rotations += 1;
            book.last_error = None;
            ctx.metrics.observe_rotation(true);
            tracing::info!(%msg, "key rotation finished");
        }
        Err(reason) => {
            book.failures += 1;
            book.last_error = Some(reason.clone());
            ctx.metrics.observe_rotation(false);
            tracing::error!(%reason, "key rotation abandoned");
        }
    }
    for w in book.waiters.drain(..) {
        let _ = w.send(outcome.clone());
    }
}

/// A new key for `slot`: generated, persisted (atomically, 0600), then programmed on the
/// slot's device. Returns its public key.
async fn replace_key(ctx: &Context, slot: Slot) -> anyhow::Result<PublicKey> {
    let key = PrivateKey::generate();
    let path = ctx.args.state_dir.join(KEY_FILES[slot.index()]);
    keyexchange::key::write_key_atomic(&path, &key)?;
    let port = ctx
        .me()
        .slot(slot)
        .map_or(ctx.args.listen_port, |k| k.listen_port);
    ctx.device(slot)
        .read()
        .await
        .configure(&key.to_bytes(), port, Some(ctx.args.mesh_mark))
        .await
        .context("programming the new key")?;
    let public_key = key.public_key();
    ctx.keys
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)[slot.index()] = key;
    Ok(public_key)
}
