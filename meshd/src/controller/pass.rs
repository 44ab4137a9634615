//! One reconcile pass: heal the devices, observe the node, compute the desired state, plan,
//! apply. Records are trusted first (see [`super::trust`]): refused ones count for nothing.
//! A full pass compares the *live* node with the desired state, which makes passes
//! idempotent and self-healing after drift; a pass for registry record changes alone compares
//! it with what the last pass left ([`super::remembered`]) and applies only the difference
//! (at 5,000 peers, reading the node cost a second per record). The plan carries the order
//! that keeps pod traffic from ever leaving in clear (see [`super::plan`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keyexchange::PublicKey;

use super::apply::apply;
use super::args::PodSteering;
use super::capacity::Capacity;
use super::context::Context;
use super::desired::incremental::{trusted_changed, Changed, Computed, Outcome, Standing};
use super::desired::{host_exclusions, Inputs};
use super::devices::{ensure_ports, heal_devices};
use super::liveness::{handshook_within, liveness_window};
use super::observe::{observe, Observation};
use super::plan::{plan, plan_within, Step};
use super::remembered::{after, Remembered};
use super::state::{Live, RegistryCache, State};
use super::trust;

/// What a pass starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PassKind {
    /// Heal the devices, keep their ports and read the whole node.
    Full,
    /// Only registry records changed since the last pass: plan against what it left
    /// ([`Remembered`]) when there is such a memory, else observe as a full pass does.
    Records,
}

/// What a pass did.
pub(super) struct PassOutcome {
    /// The steps it applied.
    pub steps: Vec<Step>,
    /// Whether it read the node (a full pass) rather than planning against its memory.
    pub observed: bool,
    /// Whether it computed the desired state in full (not brought forward by the changed
    /// records): the standing state was built among the pass's transient data.
    pub computed_in_full: bool,
}

/// One pass towards the desired state. A pass that applied every step exactly leaves its
/// result in `state.remembered` for the next [`PassKind::Records`] pass; any other outcome
/// forgets it, so the next pass reads the node.
pub(super) async fn pass(
    ctx: &Context,
    state: &mut State,
    kind: PassKind,
) -> anyhow::Result<PassOutcome> {
    let started = Instant::now();
    let live = ctx.live.read().await.clone();
    // The records changed since the last pass: a pass from memory brings the last desired
    // state forward by them (a full pass computes it afresh).
    let changed = std::mem::take(&mut state.registry.changed);
    let memory = match kind {
        PassKind::Records => state.remembered.take(),
        PassKind::Full => {
            state.remembered = None;
            None
        }
    };
    let observed = memory.is_none();
    let mut memory = match memory {
        Some(memory) => memory,
        None => read_node(ctx, state, &live).await?,
    };
    let observed_at = Instant::now();
    let standing = memory.standing.take();
    let (standing, trusted) = desired_now(ctx, state, &live, &memory, standing, &changed).await;
    let want = standing.desired();
    report_conflicts(&mut state.registry, &want.conflicts);
    // Copied only when it changed: 5,000 names allocated per pass otherwise, every one of them
    // among the pass's transient data.
    if state.rotation.peer_slots != want.peer_slots {
        state.rotation.peer_slots.clone_from(&want.peer_slots);
    }
    let desired_at = Instant::now();
    // Records brought forward one by one: only their entries can need a step.
    let steps = match &trusted.scope {
        Some(scope) => plan_within(want, &memory.observation.observed, scope),
        None => plan(want, &memory.observation.observed),
    };
    let planned_at = Instant::now();
    let exact = apply(
        ctx,
        &steps,
        &mut state.counters,
        &mut state.liveness.encrypted_hosts,
    )
    .await?;
    let applied_at = Instant::now();
    if trusted.memory_changed {
        // After the steps, and written off the loop: persisting the memory holds neither the
        // programming nor the next pass up.
        if let Some(established) = &state.registry.established {
            trust::save_in_background(&ctx.args.state_dir, established);
        }
    }
    // Where a pass spends its time (`RUST_LOG=meshd::controller::pass=debug`), phase by phase.
    tracing::debug!(
        records = state.registry.records.len(),
        changed = changed.len(),
        steps = steps.len(),
        observed,
        computed = ?trusted.computed,
        observe_us = micros(observed_at - started),
        trust_and_desired_us = micros(desired_at - observed_at),
        plan_us = micros(planned_at - desired_at),
        apply_us = micros(applied_at - planned_at),
        save_us = micros(applied_at.elapsed()),
        "pass phases"
    );
    let mut bpf = ctx.bpf.lock().await;
    if let Some(veths) = &want.pod_interfaces {
        bpf.record_pod_interfaces(veths);
    }
    bpf.record_guarded(&memory.observation.guard_interfaces);
    if observed && exact {
        let redirected = want.redirects.keys();
        prune_learned(
            &mut bpf,
            state,
            redirected,
            &mut memory.observation.observed.guarded_cidrs,
        );
    }
    drop(bpf);
    state.liveness.encrypted_hosts = want.host_routes.keys().copied().collect();
    if exact {
        after(&mut memory.observation.observed, &steps);
        memory.standing = Some(standing);
        state.remembered = Some(memory);
    }
    Ok(PassOutcome {
        steps,
        observed,
        computed_in_full: trusted.computed == Computed::Full,
    })
}

/// After a full pass that applied every step (a departed node's redirect, route and peer are
/// gone): remove the learned cluster-map entries no record claims that a configured entry
/// covers ([`super::guard::prunable`]), and forget them in `guarded`. What the pass redirects
/// (`redirected`) counts as claimed too: the plan guards it again. A failure is reported and
/// left for the next full pass: the entries only stay.
fn prune_learned<'a>(
    bpf: &mut crate::bpf::Bpf,
    state: &State,
    redirected: impl Iterator<Item = &'a ipnet::IpNet>,
    guarded: &mut BTreeSet<ipnet::IpNet>,
) {
    let claimed: BTreeSet<ipnet::IpNet> = state
        .registry
        .records
        .values()
        .flat_map(|r| r.pod_cidrs.iter().map(ipnet::IpNet::trunc))
        .chain(redirected.map(ipnet::IpNet::trunc))
        .collect();
    let gone = match bpf.cluster_learned() {
        Ok(present) => super::guard::prunable(&claimed, &present),
        Err(err) => {
            tracing::warn!(error = %format!("{:#}", anyhow::Error::new(err)), "reading the guard's cluster map failed; departed nodes' entries stay");
            return;
        }
    };
    let mut removed = 0usize;
    for cidr in &gone {
        match bpf.unguard_cidr(*cidr) {
            Ok(()) => {
                guarded.remove(cidr);
                removed += 1;
            }
            Err(err) => {
                tracing::warn!(%cidr, error = %format!("{:#}", anyhow::Error::new(err)), "removing a departed node's cluster-map entry failed; it stays");
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "removed departed nodes' learned cluster-map entries a configured cluster CIDR covers"
        );
    }
}

/// Heal the devices, keep their ports and read the node.
async fn read_node(ctx: &Context, state: &mut State, live: &Live) -> anyhow::Result<Remembered> {
    heal_devices(ctx, &mut state.counters).await?;
    let (devices, republish) = ensure_ports(ctx, live.listen_port).await?;
    state.republish |= republish;
    let observation = observe(ctx, &devices).await?;
    let window = liveness_window(live);
    Ok(Remembered {
        observation,
        mesh_marked: devices.iter().all(|d| d.fwmark == ctx.args.mesh_mark),
        handshook: devices
            .iter()
            .flat_map(|d| &d.peers)
            .filter(|p| handshook_within(p, window))
            .map(|p| PublicKey::from_bytes(p.public_key))
            .collect(),
        standing: None,
    })
}

/// A duration in whole microseconds, for the phase timings.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The desired state from the trusted records, the settings and what was just observed,
/// brought forward from the last pass's `standing` by the `changed` records when it can be
/// ([`trusted_changed`]); keeps the refusals and the memory of accepted claims (the caller
/// persists it when it changed).
async fn desired_now(
    ctx: &Context,
    state: &mut State,
    live: &Live,
    memory: &Remembered,
    standing: Option<Standing>,
    changed: &Changed,
) -> (Standing, Outcome) {
    let observation = &memory.observation;
    let me = ctx.me();
    let ifindex = observation.observed.devices.each_ref().map(|d| d.ifindex);
    let tunnels_up = tunnels_up(state, memory);
    let api_servers = ctx
        .api_servers
        .as_ref()
        .and_then(|feed| feed.borrow().clone());
    let exclude = host_exclusions(&ctx.args.host_encryption_exclude, api_servers.as_ref());
    let pods = &observation.pods;
    let policy = trust::policy(&ctx.args);
    let mut established = match state.registry.established.take() {
        Some(known) => known,
        None => {
            if policy.cluster_pools.is_empty() {
                tracing::warn!("record trust: no cluster pool configured (--cluster-cidr, --pod-cidr-pool): peers' pod CIDRs are held to the generic rules only");
            }
            trust::load(&ctx.args.state_dir).unwrap_or_else(|err| {
                tracing::error!(error = %err, "starting record trust without memory: every contested claim is refused until settled");
                Default::default()
            })
        }
    };
    let capacity = map_capacity(ctx, state, me.name.as_str(), observation).await;
    let (standing, outcome) = trusted_changed(
        standing,
        changed,
        &Inputs {
            records: &state.registry.records,
            me: &me,
            live,
            ifindex,
            mesh_marked: memory.mesh_marked,
            tunnels_up: &tunnels_up,
            host_exclude: &exclude,
            local_pods: pods.addresses.clone(),
            pod_interfaces: (ctx.args.pod_steering == PodSteering::Ebpf)
                .then(|| pods.veths.clone()),
            pod_sources: observation.pod_sources.clone(),
            guard_interfaces: observation.guard_interfaces.clone(),
            underlay: &ctx.underlay,
        },
        &policy,
        &mut established,
        &capacity,
    );
    let refused = standing.refused();
    for r in trust::new_refusals(&refused, &state.registry.refused) {
        tracing::error!(node = %r.node, field = r.field, reason = %r.reason, "record refused");
    }
    state.registry.refused = refused;
    state.registry.established = Some(established);
    (standing, outcome)
}

/// The room the per-node maps have for peers' pod CIDRs: their sizes, less what the cluster
/// map holds besides the known peers' pod CIDRs (configured cluster CIDRs, and learned
/// entries of nodes that are gone, which stay guarded for good).
async fn map_capacity(
    ctx: &Context,
    state: &State,
    me: &str,
    observation: &Observation,
) -> Capacity {
    let sizes = *ctx.bpf.lock().await.sizes();
    let peer_cidrs: BTreeSet<ipnet::IpNet> = state
        .registry
        .records
        .values()
        .filter(|r| r.name != me)
        .flat_map(|r| r.pod_cidrs.iter().map(ipnet::IpNet::trunc))
        .collect();
    let mut others = [0usize; 2];
    for cidr in observation
        .observed
        .guarded_cidrs
        .iter()
        .filter(|c| !peer_cidrs.contains(*c))
    {
        others[usize::from(matches!(cidr, ipnet::IpNet::V6(_)))] += 1;
    }
    Capacity::of_maps(sizes.remote_cidrs, sizes.cluster_cidrs, others)
}

/// The peers whose tunnel is up: by the liveness tracker, or handshook when the devices were
/// last read (a new key after a rotation step: its tunnel is up before the tracker has seen
/// it; a rotation step always brings a full pass, which reads them afresh).
fn tunnels_up(state: &State, memory: &Remembered) -> BTreeSet<PublicKey> {
    let mut up = state.liveness.live_peers.clone();
    up.extend(memory.handshook.iter().copied());
    up
}

/// Log each conflict once, when it appears (refusals are logged as such by `desired_now`).
fn report_conflicts(registry: &mut RegistryCache, conflicts: &BTreeSet<String>) {
    let refusals: BTreeSet<String> = registry.refused.iter().map(ToString::to_string).collect();
    for c in conflicts
        .difference(&registry.last_conflicts)
        .filter(|c| !refusals.contains(*c))
    {
        tracing::error!(conflict = %c, "conflicting records: neither side is programmed");
    }
    registry.last_conflicts = conflicts.clone();
}
