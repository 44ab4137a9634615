//! Key rotation glue: starts this node's rotation (on schedule or on demand), acknowledges
//! other nodes' steps, lets the driver ([`crate::rotation`]) take its next step, replaces a
//! drained slot's key, and keeps the rotation under way in the state directory.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use keyexchange::slots::Slot;
use keyexchange::{NodeRecord, PrivateKey, PublicKey};

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

/// This node's acknowledgements: the serial of every other node's rotation step in progress,
/// as applied by the reconcile pass that just succeeded. True when they changed.
pub(super) fn update_acks(ctx: &Context, records: &BTreeMap<String, NodeRecord>) -> bool {
    let me = ctx.me();
    let acks: BTreeMap<String, u64> = records
        .values()
        .filter(|r| r.name != me.name)
        .filter_map(|r| r.rotation.step.map(|s| (r.name.clone(), s.serial)))
        .collect();
    if acks == me.rotation.acks {
        return false;
    }
    ctx.update_me(|m| m.rotation.acks = acks);
    true
}

/// Take this node's next rotation step, if the peers allow it. True when the record changed.
pub(super) async fn drive_rotation(
    ctx: &Context,
    book: &mut RotationBook,
    records: &BTreeMap<String, NodeRecord>,
) -> bool {
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
    book.driver.observe_silent(silent);
    let excused_before: BTreeSet<String> = book.driver.excused().map(String::from).collect();
    let action = book
        .driver
        .poll(std::time::Instant::now(), &me, records.values());
    for peer in book
        .driver
        .excused()
        .filter(|p| !excused_before.contains(*p))
    {
        tracing::warn!(
            %peer,
            silence_s = ctx.args.rotation.rotation_silence.as_secs(),
            "key rotation goes on without a silent peer (no acknowledgement, no handshake)"
        );
    }
    let changed = !matches!(action, Action::Wait);
    let republish = drive_action(ctx, book, action).await;
    if changed {
        save_rotation(ctx, book);
    }
    republish
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
            match replace_key(ctx, slot).await {
                Ok(public_key) => {
                    tracing::info!(%slot, %public_key, serial = step.serial, "key rotation: new key in use on the drained slot");
                    ctx.update_me(|m| {
                        match slot {
                            Slot::FIRST => m.public_key = public_key,
                            _ => {
                                if let Some(second) = m.rotation.second.as_mut() {
                                    second.public_key = public_key;
                                }
                            }
                        }
                        m.rotation.step = Some(step);
                    });
                }
                Err(err) => {
                    // Nothing changed on the device: publish the step anyway (peers ack it
                    // unchanged) and let the rotation end as an error.
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
