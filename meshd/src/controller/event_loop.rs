//! The event loop: waits for whatever can change the desired state (a registry event, new
//! settings, the API servers' endpoints, a rotation command or its schedule, a tunnel coming
//! up or down, a resync or retry tick), folds it into the state, and runs a reconcile pass;
//! then pokes other nodes' new keys, drives this node's rotation, follows the CNI
//! configuration's readiness and publishes the status. This node's record is handed to the
//! [`Publisher`] task, never written from here: a silent API server cannot hold a pass up.

use std::time::{Duration, Instant};

use crate::registry::RegistryEvent;
use anyhow::{bail, Context as _};
use keyexchange::PublicKey;
use tokio::sync::mpsc;

use super::args::PodSteering;
use super::context::Context;
use super::devices::current_guard_interfaces;
use super::key_rotation::{follow_rotations, rotation_retry_due, start_rotation};
use super::liveness::track_liveness;
use super::pass::{pass, PassKind};
use super::publisher::Publisher;
use super::start::SettingsFeed;
use super::state::State;
use super::status::{patch_status, publish_status};
use super::unix_now;
use crate::control;
use crate::rotation::Driver;

/// How often the live state is re-read and reconciled even without registry events (passes for
/// record changes alone plan against what the last pass left: this full pass is what repairs
/// drift nothing reported). Each agent's is jittered by up to [`RESYNC_JITTER`] either way, so
/// that a cluster's agents do not read their nodes in step.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// The most a resync moves from [`RESYNC_INTERVAL`], either way.
const RESYNC_JITTER: Duration = Duration::from_secs(3);
/// How often the status tick runs: the ways out of the node are checked at every tick, the
/// served status (handshakes, counters) is read from the devices every
/// [`status_refresh_interval`].
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Known nodes per extra second between two status refreshes: reading both devices and the
/// maps costs time in proportion to the peers, and the loop does nothing else meanwhile.
const NODES_PER_REFRESH_SECOND: usize = 500;
/// The longest time between two status refreshes, however many peers.
const STATUS_REFRESH_MAX: Duration = Duration::from_secs(10);
/// Delay before retrying a failed reconcile pass.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// After a registry event, how long the loop waits for another before it runs a pass: records
/// written together (a cold start, a relist, many nodes joining) cost one pass, not one each.
const COALESCE: Duration = Duration::from_millis(2);
/// The longest a steady stream of registry events holds a pass back.
const COALESCE_MAX: Duration = Duration::from_millis(50);

/// Where the loop's events come from.
pub(super) struct Channels {
    /// Registry events read before the loop started (while claiming pod CIDRs).
    pub initial: Vec<RegistryEvent>,
    /// The registry watch.
    pub events: mpsc::Receiver<RegistryEvent>,
    /// The live settings, if a ConfigMap is watched.
    pub settings: Option<SettingsFeed>,
    /// Commands from the control socket.
    pub commands: mpsc::Receiver<control::Command>,
}

/// What the loop does after an event.
enum Next {
    /// Reconcile now.
    Reconcile,
    /// This node's rotation waits on time or on the data plane: poll it.
    Rotation,
    /// Nothing to reconcile.
    Wait,
    /// Stop (SIGTERM, SIGINT).
    Stop,
}

/// What the loop carries from one event to the next.
struct Pending {
    /// When to run a pass without an event (a retry, or a tunnel that came up).
    retry_at: Option<tokio::time::Instant>,
    /// Whether the last pass converged.
    converged: bool,
    /// This node's record must be published again.
    republish: bool,
    /// Something besides registry records changed (or may have: a tick, a retry, new
    /// settings): the next pass reads the whole node rather than planning from memory.
    full_due: bool,
    /// When the served status was last read from the devices.
    status_read_at: Option<Instant>,
    /// When the next full pass is due without any other reason (the periodic resync). Every
    /// pass that reads the node moves it [`resync_interval`] later: the pass that follows
    /// start-up is such a read, so the resync due at start is not repeated right after it
    /// (at 5,000 peers a redundant full pass held the next record back by about 400 ms).
    resync_at: tokio::time::Instant,
}

/// Run until SIGTERM/SIGINT (or the registry watch ends).
pub(super) async fn event_loop(
    ctx: &Context,
    publisher: &Publisher,
    channels: Channels,
    resumed: Option<Driver>,
) -> anyhow::Result<()> {
    let Channels {
        initial,
        mut events,
        mut settings,
        mut commands,
    } = channels;
    let mut state = State::default();
    state.cleartext.report = control::CleartextReport::watching_from(unix_now());
    if let Some(driver) = resumed {
        state.rotation.driver = driver;
    }
    state.rotation.landed = Some(publisher.landed());
    state
        .registry
        .records
        .insert(ctx.me().name.clone(), ctx.me());
    // The first pass runs at once (a lone first node gets no registry event to start one).
    let mut pending = Pending {
        retry_at: None,
        converged: false,
        republish: false,
        full_due: true,
        status_read_at: None,
        resync_at: tokio::time::Instant::now(),
    };
    for ev in initial {
        pending.republish |= apply_event(ctx, &mut state, ev);
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let mut rotation_tick = tokio::time::interval(rotation_check_interval(ctx));
    let mut commands_open = true;
    let mut api_servers = ctx.api_servers.clone();
    loop {
        let wake = state
            .rotation
            .driver
            .wake_at()
            .map(tokio::time::Instant::from_std);
        let next = tokio::select! {
            cmd = commands.recv(), if commands_open => match cmd {
                Some(control::Command::RotateKey(reply)) => {
                    start_rotation(&mut state.rotation, "requested");
                    state.rotation.waiters.push(reply);
                    pending.full_due = true;
                    Next::Reconcile
                }
                None => {
                    commands_open = false;
                    Next::Wait
                }
            },
            _ = rotation_tick.tick() => {
                let next = scheduled_rotation(ctx, &mut state);
                pending.full_due |= matches!(next, Next::Reconcile);
                next
            }
            ev = events.recv() => {
                let Some(ev) = ev else { bail!("registry watch ended") };
                pending.republish |= apply_event(ctx, &mut state, ev);
                for ev in following_events(&mut events).await {
                    pending.republish |= apply_event(ctx, &mut state, ev);
                }
                Next::Reconcile
            }
            _ = tokio::time::sleep_until(pending.resync_at) => {
                pending.resync_at = tokio::time::Instant::now() + resync_interval();
                pending.full_due = true;
                Next::Reconcile
            }
            _ = sleep_until(pending.retry_at) => {
                pending.full_due = true;
                Next::Reconcile
            }
            _ = sleep_until(wake) => Next::Rotation,
            // The API servers' endpoints changed: reconcile (host encryption excludes them).
            changed = changed(api_servers.as_mut()) => {
                if changed.is_err() {
                    tracing::warn!("the API server endpoint watcher stopped; the last endpoints stay excluded");
                    api_servers = None;
                }
                pending.full_due = true;
                Next::Reconcile
            }
            changed = changed(settings.as_mut()) => {
                if changed.is_err() {
                    tracing::warn!("the settings watcher stopped; the last settings stay in force");
                    settings = None;
                } else if let Some(new) = settings.as_ref().and_then(|feed| feed.borrow().clone()) {
                    apply_settings(ctx, &new).await;
                }
                pending.full_due = true;
                Next::Reconcile
            }
            _ = status_tick.tick() => {
                let refresh = pending.status_read_at.is_none_or(|at| {
                    at.elapsed() + STATUS_INTERVAL / 2 >= status_refresh_interval(&state)
                });
                if refresh {
                    pending.status_read_at = Some(Instant::now());
                }
                if status_tick_says_reconcile(ctx, &mut state, pending.converged, refresh).await {
                    pending.retry_at = Some(tokio::time::Instant::now());
                }
                Next::Wait
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM"); Next::Stop }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT"); Next::Stop }
        };
        match next {
            Next::Stop => return Ok(()),
            Next::Wait => continue,
            Next::Reconcile => after_event(ctx, publisher, &mut state, &mut pending).await,
            Next::Rotation => poll_rotation(ctx, publisher, &mut state, &mut pending).await,
        }
    }
}

/// The registry events that follow a first one closely: each within [`COALESCE`] of the one
/// before, for at most [`COALESCE_MAX`] in all. A closed channel ends the batch (the loop's
/// next read reports it).
async fn following_events(events: &mut mpsc::Receiver<RegistryEvent>) -> Vec<RegistryEvent> {
    let until = tokio::time::Instant::now() + COALESCE_MAX;
    let mut batch = Vec::new();
    loop {
        while let Ok(ev) = events.try_recv() {
            batch.push(ev);
        }
        let wait = COALESCE.min(until.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() {
            return batch;
        }
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(ev)) => batch.push(ev),
            Ok(None) | Err(_) => return batch,
        }
    }
}

/// [`RESYNC_INTERVAL`] moved by a random amount of at most [`RESYNC_JITTER`] either way.
fn resync_interval() -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    // A random number without a generator: std's hasher keys are drawn from the OS.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let span = 2 * RESYNC_JITTER.as_millis() as u64;
    RESYNC_INTERVAL - RESYNC_JITTER + Duration::from_millis(random % span.max(1))
}

/// The earlier of two optional instants.
fn earliest(
    a: Option<tokio::time::Instant>,
    b: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleep until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next change of a watched value, or never when there is no watch.
async fn changed<T>(
    feed: Option<&mut tokio::sync::watch::Receiver<T>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match feed {
        Some(feed) => feed.changed().await,
        None => std::future::pending().await,
    }
}

/// After an event that can change the desired state: republish this node's record if it must
/// be, then (once the registry is complete) run a pass.
async fn after_event(
    ctx: &Context,
    publisher: &Publisher,
    state: &mut State,
    pending: &mut Pending,
) {
    pending.retry_at = None;
    if std::mem::take(&mut pending.republish) {
        // Our record changed, or was overwritten or removed by someone else: (re)publish it,
        // so peers keep (or regain) the key this node actually uses. The publisher writes it
        // (and retries) on its own; the pass does not wait.
        tracing::info!("publishing this node's record");
        publisher.publish(ctx.me());
    }
    if !state.registry.synced {
        // Never act on a partial view: a restart would remove peers whose records
        // have simply not been read yet.
        return;
    }
    // A rotation under way changes the devices' keys between passes: read them.
    let kind = if std::mem::take(&mut pending.full_due) || state.rotation.driver.busy() {
        PassKind::Full
    } else {
        PassKind::Records
    };
    let (converged, retry, read_node) = reconcile(ctx, state, kind).await;
    pending.converged = converged;
    if read_node {
        pending.resync_at = tokio::time::Instant::now() + resync_interval();
    }
    if std::mem::take(&mut state.republish) {
        pending.republish = true;
        pending.retry_at = Some(tokio::time::Instant::now());
    }
    if let Some(at) = retry {
        pending.retry_at = Some(at);
    }
}

/// The rotation's wake-up (every [`crate::rotation::POLL_INTERVAL`] while it waits on the data
/// plane): when the last pass converged and nothing changed since, the rotation is polled
/// with a fresh reading of its device and no pass. A full pass at each wake-up re-read the
/// whole node every 200 ms for the whole rotation (at 5,000 peers, two device dumps, the
/// routes and the maps each time). A step taken, a key replaced or peers poked still run a
/// pass (at once, or a second later to restore the poked keepalive).
async fn poll_rotation(
    ctx: &Context,
    publisher: &Publisher,
    state: &mut State,
    pending: &mut Pending,
) {
    if !pending.converged || pending.republish || !state.registry.synced {
        pending.full_due = true;
        return after_event(ctx, publisher, state, pending).await;
    }
    let follow = follow_rotations(ctx, &mut state.rotation, &state.registry.records).await;
    if follow.republish {
        pending.republish = true;
        return after_event(ctx, publisher, state, pending).await;
    }
    if follow.poked {
        let soon = tokio::time::Instant::now() + POKE_RESTORE;
        pending.retry_at = earliest(pending.retry_at, Some(soon));
    }
}

/// How soon after a poke at a rotation's wake-up a pass restores the configured keepalive.
const POKE_RESTORE: Duration = Duration::from_secs(1);

/// How often the older key's age is checked: once a minute (more often for rotation
/// intervals under four minutes).
fn rotation_check_interval(ctx: &Context) -> Duration {
    ctx.args
        .rotation
        .key_rotation_interval
        .map_or(Duration::from_secs(60), |i| {
            (i / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
        })
}

/// Start a scheduled rotation when the older key is due (and no rotation failed recently).
fn scheduled_rotation(ctx: &Context, state: &mut State) -> Next {
    let due = ctx
        .args
        .rotation
        .key_rotation_interval
        .is_some_and(|every| {
            let age = ctx
                .key_created_unix()
                .map_or(u64::MAX, |c| unix_now().saturating_sub(c));
            age >= every.as_secs()
        });
    let failed_recently =
        state.rotation.last_error.is_some() && !rotation_retry_due(&state.rotation);
    if !due || state.rotation.driver.busy() || failed_recently {
        return Next::Wait;
    }
    start_rotation(&mut state.rotation, "scheduled");
    Next::Reconcile
}

/// The status tick; true when a pass should run now (a tunnel came up or went down, a new
/// way out of the node appeared, or a device could not be read).
/// Only ticks that `refresh` read the devices; the others check the ways out alone.
async fn status_tick_says_reconcile(
    ctx: &Context,
    state: &mut State,
    converged: bool,
    refresh: bool,
) -> bool {
    let started = Instant::now();
    let mut now = refresh && status_refresh(ctx, state, converged).await;
    // A new way out of the node (an uplink with a default route, a policy-routing table's
    // default route, a route to a cluster CIDR): guard it now rather than at the next resync.
    // The guarded CIDRs are the last pass's, when it left them (no read of the whole map).
    let guarded = state
        .remembered
        .as_ref()
        .map(|m| &m.observation.observed.guarded_cidrs);
    let guards = current_guard_interfaces(ctx, guarded).await;
    now |= ctx.bpf.lock().await.unguarded(&guards);
    // node-subnet: pods came or went, so a block is claimed or given back.
    now |= super::blocks::follow_blocks(ctx, state).await.0;
    // Passes from memory never read the IPAM store: a pod that came or went since the last
    // full pass asks for one now (its veth's programs, sources and the status follow it).
    if let Some(memory) = &state.remembered {
        if super::pods::read(&ctx.args.state_dir).is_ok_and(|pods| pods != memory.observation.pods)
        {
            now = true;
        }
    }
    tracing::debug!(
        refresh,
        elapsed_us = started.elapsed().as_micros() as u64,
        "status tick"
    );
    now
}

/// The time between two status refreshes: a second up to [`NODES_PER_REFRESH_SECOND`] known
/// nodes, a second more for each as many again, at most [`STATUS_REFRESH_MAX`]; a second while
/// this node rotates its key (the rotation asks which peers are silent).
fn status_refresh_interval(state: &State) -> Duration {
    if state.rotation.driver.busy() {
        return STATUS_INTERVAL;
    }
    let extra = state.registry.records.len() / NODES_PER_REFRESH_SECOND;
    (STATUS_INTERVAL * u32::try_from(extra + 1).unwrap_or(u32::MAX)).min(STATUS_REFRESH_MAX)
}

/// Read the devices for the served status and follow the tunnels' liveness; true when a pass
/// should run now (a tunnel came up or went down, a device could not be read).
async fn status_refresh(ctx: &Context, state: &mut State, converged: bool) -> bool {
    let peers = match publish_status(ctx, state, converged).await {
        Ok(peers) => peers,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "reading device status failed");
            // Reconcile now: it brings a vanished device back.
            return true;
        }
    };
    // Only a rotation under way asks which peers are silent.
    state.rotation.handshakes = state.rotation.driver.busy().then(|| {
        peers
            .iter()
            .map(|p| (PublicKey::from_bytes(p.public_key), p.last_handshake))
            .collect()
    });
    let live = ctx.live.read().await.clone();
    // A tunnel came up or went down: host encryption follows it now.
    track_liveness(&live, &mut state.liveness, &peers)
}

/// Run a pass and what follows it. Returns whether it converged, when to retry, and whether
/// the pass read the whole node (a full pass).
async fn reconcile(
    ctx: &Context,
    state: &mut State,
    kind: PassKind,
) -> (bool, Option<tokio::time::Instant>, bool) {
    let started = Instant::now();
    state.counters.reconciles += 1;
    // node-subnet: a block claimed or given back changes this node's own record; the pass
    // then reads the node (a pass from memory only follows other nodes' records).
    let (blocks_changed, blocks_at) = super::blocks::follow_blocks(ctx, state).await;
    let kind = if blocks_changed { PassKind::Full } else { kind };
    let (outcome, done) = match pass(ctx, state, kind).await {
        Ok(done) => (Ok(()), Some(done)),
        Err(err) => (Err(err), None),
    };
    let converged = outcome.is_ok();
    let mut restore_at = None;
    if converged {
        // Start a handshake on other nodes' keys just replaced (their proof that this node
        // holds them), then let this node's own rotation take its next step.
        let follow = follow_rotations(ctx, &mut state.rotation, &state.registry.records).await;
        state.republish |= follow.republish;
        if follow.poked {
            restore_at = Some(tokio::time::Instant::now() + POKE_RESTORE);
        }
    }
    let now = Instant::now();
    // The CNI configuration follows whether this node itself can serve pods: a pass that
    // failed only for a peer's sake (a full map, a peer's route) keeps it.
    let serving = crate::cni_conf::serves_pods(&outcome);
    state.failing_since = if serving {
        None
    } else {
        Some(state.failing_since.unwrap_or(now))
    };
    follow_cni_readiness(ctx, state, serving, now).await;
    let mut retry = earliest(blocks_at.map(tokio::time::Instant::from_std), restore_at);
    if let Err(err) = outcome {
        state.counters.reconcile_errors += 1;
        tracing::warn!(error = %format!("{err:#}"), "reconcile failed; retrying");
        retry = Some(tokio::time::Instant::now() + RETRY_DELAY);
    }
    ctx.metrics.observe_reconcile(started.elapsed());
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "reconciled"
    );
    // After a pass from memory the served status follows its steps; otherwise (and when there
    // is none yet to bring forward) it is read afresh.
    let patched = match &done {
        Some(done) if !done.observed => patch_status(ctx, state, &done.steps, converged).await,
        _ => false,
    };
    let read_node = done.as_ref().is_some_and(|d| d.observed);
    let computed_in_full = done.as_ref().is_some_and(|d| d.computed_in_full);
    // The steps are freed before a status is built afresh and the standing state compacted:
    // what stays is then allocated after what goes.
    drop(done);
    if !patched {
        if let Err(err) = publish_status(ctx, state, converged).await {
            tracing::warn!(error = %format!("{err:#}"), "reading device status failed");
        }
    }
    if computed_in_full {
        compact_standing(state);
    }
    (converged, retry, read_node)
}

/// After a pass that computed the desired state in full: the standing state, the memory of
/// accepted claims and the registry's records, built among the pass's (or the records'
/// decoding's) transient data, are built again in blocks of their own now that the transient
/// data is gone (their B-trees' nodes filled, sharing pages with one another rather than each
/// keeping a page of freed blocks resident).
fn compact_standing(state: &mut State) {
    let records = &mut state.registry.records;
    *records = records
        .iter()
        .map(|(name, record)| (name.clone(), record.clone()))
        .collect();
    if let Some(standing) = state.remembered.as_mut().and_then(|m| m.standing.as_mut()) {
        standing.compact();
    }
    if let Some(established) = state.registry.established.as_mut() {
        super::trust::compact(established);
    }
}

/// The node takes pods while it can serve them: the CNI configuration is installed after a
/// pass that converged (or failed only for a peer's sake) and removed once passes have kept
/// failing for this node's own sake for `--cni-unready-after`.
async fn follow_cni_readiness(ctx: &Context, state: &State, converged: bool, now: Instant) {
    let action = crate::cni_conf::action(
        converged,
        state.failing_since,
        now,
        ctx.args.cni.cni_unready_after,
    );
    if action == crate::cni_conf::Action::Remove
        && crate::cni_conf::remove(&ctx.args.cni.cni_conf_dir)
    {
        tracing::warn!(
            failing_for_s = ctx.args.cni.cni_unready_after.as_secs(),
            "the mesh keeps failing to converge: this node takes no new pods until it does"
        );
    }
    let blocks = super::blocks::cni_blocks(ctx);
    if action == crate::cni_conf::Action::Install && blocks != Some(None) {
        let mut conf = crate::cni_conf::conflist(
            &ctx.me(),
            &super::pods::ipam_dir(&ctx.args.state_dir),
            // The MTU in force: pods created after a live change get it too.
            ctx.live.read().await.mtu,
            &ctx.args.bpf_pin_dir,
            ctx.args.pod_steering == PodSteering::Ebpf,
        );
        if let Some(Some(usable)) = &blocks {
            crate::cni_conf::use_blocks(&mut conf, usable);
        }
        if let Err(err) = crate::cni_conf::write(&ctx.args.cni.cni_conf_dir, &conf) {
            tracing::warn!(error = %format!("{err:#}"), "writing the CNI configuration failed");
        }
    }
}

/// Fold one registry event into the registry cache; true when this node's own record must be
/// published again.
fn apply_event(ctx: &Context, state: &mut State, ev: RegistryEvent) -> bool {
    let cache = &mut state.registry;
    match ev {
        RegistryEvent::Upsert(record) => {
            cache.malformed.remove(&record.name);
            if record.name == ctx.me().name && record != ctx.me() {
                tracing::warn!(
                    "the registry holds a different record under this node's name; keeping ours"
                );
                return true;
            }
            tracing::info!(node = %record.name, key = %record.public_key, "record");
            let name = record.name.clone();
            let old = cache.records.insert(name.clone(), record);
            // The first change since the last pass keeps what that pass took in.
            cache.changed.entry(name).or_insert(old);
        }
        RegistryEvent::Delete(name) => {
            cache.malformed.remove(&name);
            if name == ctx.me().name {
                tracing::warn!("this node's record was removed from the registry");
                return true;
            }
            tracing::info!(node = %name, "record removed");
            let old = cache.records.remove(&name);
            cache.changed.entry(name).or_insert(old);
        }
        RegistryEvent::Synced => {
            if !cache.synced {
                tracing::info!(nodes = cache.records.len(), "registry state complete");
            }
            cache.synced = true;
        }
        RegistryEvent::Malformed { node, error } => {
            state.counters.malformed_records += 1;
            tracing::warn!(%node, %error, "skipping malformed record (last good record, if any, stays in force)");
            let mine = node == ctx.me().name;
            cache.malformed.insert(node, error.to_string());
            return mine;
        }
    }
    false
}

/// Fold new operator settings into the live ones; the reconcile pass that follows moves the
/// node (see [`super::plan`] for the order that keeps connections and encryption).
async fn apply_settings(ctx: &Context, new: &crate::settings::Settings) {
    let mut live = ctx.live.write().await;
    let before = live.clone();
    live.apply(new, ctx.auto_mtu);
    if *live != before {
        tracing::info!(
            encryption = %live.encryption,
            strict = live.strict_mode,
            keepalive = ?live.keepalive,
            mtu = live.mtu,
            listen_port = live.listen_port,
            host_encryption = live.host_encryption,
            "settings changed; applying live"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(i: usize) -> RegistryEvent {
        RegistryEvent::Delete(format!("n{i}"))
    }

    #[tokio::test]
    async fn records_arriving_together_are_taken_in_one_batch() {
        let (tx, mut rx) = mpsc::channel(4096);
        // Some already queued, more trickling in closer together than the window.
        for i in 0..1000 {
            tx.send(event(i)).await.unwrap();
        }
        let writer = tokio::spawn(async move {
            for i in 1000..1010 {
                tokio::task::yield_now().await;
                tx.send(event(i)).await.unwrap();
            }
        });
        let batch = following_events(&mut rx).await;
        writer.await.unwrap();
        assert_eq!(batch.len(), 1010);
    }

    #[tokio::test]
    async fn a_lone_event_waits_one_window_and_a_stream_at_most_the_cap() {
        let (tx, mut rx) = mpsc::channel::<RegistryEvent>(16);
        let started = Instant::now();
        assert!(following_events(&mut rx).await.is_empty());
        assert!(started.elapsed() < COALESCE_MAX, "{:?}", started.elapsed());
        let writer = tokio::spawn(async move {
            for i in 0.. {
                if tx.send(event(i)).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let started = Instant::now();
        let batch = following_events(&mut rx).await;
        let took = started.elapsed();
        drop(rx);
        writer.await.unwrap();
        assert!(!batch.is_empty());
        // A steady stream is cut at the cap (with room for a loaded machine's scheduling).
        assert!(
            took >= COALESCE_MAX && took < COALESCE_MAX + Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_channel_ends_the_batch() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(event(1)).await.unwrap();
        drop(tx);
        assert_eq!(following_events(&mut rx).await.len(), 1);
        assert!(rx.recv().await.is_none());
    }
}
