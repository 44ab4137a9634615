//! Carries out a plan: walks its steps in order, one kernel or map change each, and counts the
//! operations. The order is the plan's; this module only batches neighbouring peer changes of
//! one device into one request, and neighbouring local-pod (or source-map) changes under one
//! IPAM lock.
//!
//! A step that concerns peers and fails carries [`PeerStepFailed`]: the pass failed, but not
//! this node's ability to serve its pods (the CNI configuration stays). A peer's pod CIDR that
//! does not fit a full map is left out (logged, its redirect skipped so that no CIDR is
//! redirected before it is guarded) and the pass goes on: the plan's capacity check
//! ([`super::capacity`]) refuses such peers before they get here, this is the backstop.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Context as _;
use keyexchange::slots::Slot;
use netlink::PeerChange;

use super::context::Context;
use super::plan::Step;
use super::pods::{self, LocalChange, SourceChange};
use super::{HOST_RULE_PRIORITY, HOST_TABLE};
use crate::bpf::Bpf;
use crate::cni_conf::PeerStepFailed;
use crate::control::Counters;

/// Apply `steps` in order. `encrypted_hosts` follows the host routes as they change. Returns
/// whether every step was carried out as planned (false: a full map left a CIDR out, so the
/// node is not what the plan says it is now).
pub(super) async fn apply(
    ctx: &Context,
    steps: &[Step],
    counters: &mut Counters,
    encrypted_hosts: &mut BTreeSet<IpAddr>,
) -> anyhow::Result<bool> {
    log_summary(steps);
    let mut bpf = ctx.bpf.lock().await;
    let mut full = BTreeSet::new();
    let mut rest = steps;
    while let Some(step) = rest.first() {
        let taken = match step {
            Step::RemovePeer { slot, .. } | Step::UpsertPeer { slot, .. } => {
                let batch = peer_batch(rest, *slot);
                apply_peers(ctx, *slot, &batch)
                    .await
                    .context(PeerStepFailed)?;
                counters.peer_ops += batch.len() as u64;
                batch.len()
            }
            Step::AddLocalPod(_) | Step::RemoveLocalPod(_) => {
                let batch = local_batch(rest);
                counters.map_ops +=
                    pods::apply_locals(&ctx.args.state_dir, &mut bpf, &batch)? as u64;
                batch.len()
            }
            Step::AddPodSource(_) | Step::RemovePodSource(_) => {
                let batch = source_batch(rest);
                counters.map_ops +=
                    pods::apply_sources(&ctx.args.state_dir, &mut bpf, &batch)? as u64;
                batch.len()
            }
            _ => {
                let done = apply_one(ctx, &mut bpf, step, counters, encrypted_hosts, &mut full);
                if concerns_peers(step) {
                    done.await.context(PeerStepFailed)?;
                } else {
                    done.await?;
                }
                1
            }
        };
        rest = &rest[taken..];
    }
    Ok(full.is_empty())
}

/// Whether a step programs peers (their tunnel, routes, redirects, host routes) rather than
/// this node's own devices, pods and guard.
fn concerns_peers(step: &Step) -> bool {
    matches!(
        step,
        Step::RemovePeer { .. }
            | Step::UpsertPeer { .. }
            | Step::AddRoute { .. }
            | Step::DeleteRoute { .. }
            | Step::GuardCidr(_)
            | Step::SetRedirect { .. }
            | Step::RemoveRedirect(_)
            | Step::AddHostRoute { .. }
            | Step::DeleteHostRoute { .. }
            | Step::EnsureMarkRule
            | Step::RemoveMarkRule
            | Step::AddPlainRoute { .. }
            | Step::DeletePlainRoute { .. }
    )
}

/// "applying changes" when peers or tunnel routes change (the lab's tests read it).
fn log_summary(steps: &[Step]) {
    let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let remove_peers = count(|s| matches!(s, Step::RemovePeer { .. }));
    let upsert_peers = count(|s| matches!(s, Step::UpsertPeer { .. }));
    let routes = count(|s| matches!(s, Step::AddRoute { .. } | Step::DeleteRoute { .. }));
    if remove_peers + upsert_peers + routes > 0 {
        tracing::info!(remove_peers, upsert_peers, routes, "applying changes");
    }
}

/// The peer changes of `slot` at the head of `steps`.
fn peer_batch(steps: &[Step], slot: Slot) -> Vec<PeerChange> {
    steps
        .iter()
        .map_while(|s| match s {
            Step::RemovePeer { slot: s, key } if *s == slot => {
                Some(PeerChange::Remove(*key.as_bytes()))
            }
            Step::UpsertPeer { slot: s, peer } if *s == slot => {
                Some(PeerChange::Upsert(peer.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The local-pod changes at the head of `steps`.
fn local_batch(steps: &[Step]) -> Vec<LocalChange> {
    steps
        .iter()
        .map_while(|s| match s {
            Step::AddLocalPod(ip) => Some(LocalChange::Add(*ip)),
            Step::RemoveLocalPod(ip) => Some(LocalChange::Remove(*ip)),
            _ => None,
        })
        .collect()
}

/// The source-map changes at the head of `steps`.
fn source_batch(steps: &[Step]) -> Vec<SourceChange> {
    steps
        .iter()
        .map_while(|s| match s {
            Step::AddPodSource(source) => Some(SourceChange::Add(*source)),
            Step::RemovePodSource(source) => Some(SourceChange::Remove(*source)),
            _ => None,
        })
        .collect()
}

async fn apply_peers(ctx: &Context, slot: Slot, changes: &[PeerChange]) -> anyhow::Result<()> {
    ctx.device(slot).read().await.apply(changes).await?;
    Ok(())
}

/// One step on its own.
async fn apply_one(
    ctx: &Context,
    bpf: &mut Bpf,
    step: &Step,
    counters: &mut Counters,
    encrypted_hosts: &mut BTreeSet<IpAddr>,
    full: &mut BTreeSet<ipnet::IpNet>,
) -> anyhow::Result<()> {
    match step {
        Step::RemovePeer { slot, .. } | Step::UpsertPeer { slot, .. } => {
            apply_peers(ctx, *slot, &peer_batch(std::slice::from_ref(step), *slot)).await?;
            counters.peer_ops += 1;
        }
        Step::AddLocalPod(_) | Step::RemoveLocalPod(_) => {
            let change = local_batch(std::slice::from_ref(step));
            counters.map_ops += pods::apply_locals(&ctx.args.state_dir, bpf, &change)? as u64;
        }
        Step::AddPodSource(_) | Step::RemovePodSource(_) => {
            let change = source_batch(std::slice::from_ref(step));
            counters.map_ops += pods::apply_sources(&ctx.args.state_dir, bpf, &change)? as u64;
        }
        Step::SetGuardMode(_)
        | Step::GuardCidr(_)
        | Step::RemoveRedirect(_)
        | Step::SetRedirect { .. }
        | Step::AttachToPod(_)
        | Step::AttachFromPod(_)
        | Step::CollectStaleLinks
        | Step::AttachGuard(_) => apply_datapath(bpf, step, counters, full)?,
        Step::SetMtu { ifindex, mtu } => {
            ctx.links.set_mtu(*ifindex, *mtu).await?;
            tracing::info!(mtu, ifindex, "WireGuard MTU changed");
        }
        Step::EnsureMarkRule => {
            ctx.routes
                .ensure_mark_rule(ctx.args.mesh_mark, HOST_TABLE, HOST_RULE_PRIORITY)
                .await?;
        }
        Step::RemoveMarkRule => {
            ctx.routes
                .remove_mark_rule(ctx.args.mesh_mark, HOST_TABLE, HOST_RULE_PRIORITY)
                .await?;
        }
        Step::DeleteHostRoute { ip, ifindex } => {
            tracing::info!(%ip, "host traffic to the peer address leaves the tunnel");
            ctx.routes.del_host_in(*ip, *ifindex, HOST_TABLE).await?;
            encrypted_hosts.remove(ip);
            counters.route_ops += 1;
        }
        Step::AddHostRoute { ip, route } => {
            tracing::debug!(%ip, ifindex = route.ifindex, "host traffic to the peer address goes through the tunnel");
            ctx.routes
                .add_host_in(*ip, route.ifindex, route.src, HOST_TABLE)
                .await?;
            encrypted_hosts.insert(*ip);
            counters.route_ops += 1;
        }
        Step::AddPlainRoute { cidr, gateway } => {
            ctx.routes
                .add_via(*cidr, *gateway, ctx.underlay_ifindex)
                .await?;
            counters.route_ops += 1;
        }
        Step::DeletePlainRoute { cidr, gateway } => {
            ctx.routes
                .del_via(*cidr, *gateway, ctx.underlay_ifindex)
                .await?;
            counters.route_ops += 1;
        }
        Step::DeleteRoute { cidr, ifindex } => {
            ctx.routes.del(*cidr, *ifindex).await?;
            counters.route_ops += 1;
        }
        Step::AddRoute {
            cidr,
            ifindex,
            replacing,
        } => {
            add_route(ctx, *cidr, *ifindex, *replacing).await?;
            counters.route_ops += 1;
        }
    }
    Ok(())
}

/// A step on the eBPF datapath.
fn apply_datapath(
    bpf: &mut Bpf,
    step: &Step,
    counters: &mut Counters,
    full: &mut BTreeSet<ipnet::IpNet>,
) -> anyhow::Result<()> {
    match step {
        Step::SetGuardMode(mode) => {
            bpf.set_mode(*mode)?;
            tracing::info!(?mode, "underlay guard mode set");
        }
        Step::GuardCidr(cidr) => {
            tracing::info!(%cidr, "guarding a peer's pod CIDR on the underlay");
            match bpf.guard_cidr(*cidr) {
                Err(err) if err.is_map_full() => {
                    tracing::error!(%cidr, "the guard's cluster map is full: the peer's pod CIDR is left out (raise --max-nodes); the next pass refuses the peer");
                    full.insert(*cidr);
                }
                other => other?,
            }
        }
        Step::RemoveRedirect(cidr) => {
            bpf.remove_remote(*cidr)?;
            counters.map_ops += 1;
        }
        // Never redirect a CIDR the guard could not take.
        Step::SetRedirect { cidr, .. } if full.contains(cidr) => {}
        Step::SetRedirect { cidr, ifindex } => match bpf.set_remote(*cidr, *ifindex) {
            Err(err) if err.is_map_full() => {
                tracing::error!(%cidr, "the redirect map is full: the peer's pod CIDR is left out (raise --max-nodes); its traffic follows the route into the tunnel");
                full.insert(*cidr);
            }
            other => {
                other?;
                counters.map_ops += 1;
            }
        },
        Step::AttachToPod(veth) => {
            bpf.attach_to_pod(veth)?;
            counters.map_ops += 1;
        }
        Step::AttachFromPod(veth) => {
            bpf.attach_from_pod(veth)?;
            counters.map_ops += 1;
        }
        Step::CollectStaleLinks => counters.map_ops += bpf.collect_stale_links()? as u64,
        Step::AttachGuard(interface) => {
            let attached = bpf.attach_guard(interface)?;
            if attached {
                tracing::info!(%interface, "underlay_egress attached (a new way out, or it had been detached)");
            }
        }
        _ => {}
    }
    Ok(())
}

/// Add (or replace) a main-table route; the route it replaces goes if the kernel kept it.
async fn add_route(
    ctx: &Context,
    cidr: ipnet::IpNet,
    ifindex: u32,
    replacing: Option<u32>,
) -> anyhow::Result<()> {
    ctx.routes.add(cidr, ifindex).await?;
    if let Some(old) = replacing {
        // A replace keeps nothing behind; if the kernel added a second route instead, the
        // old one goes now. The delete names the old device, so it never matches the new
        // route (a missing route is not an error): one request, where listing the old
        // device's routes to look first made a drain at 5,000 peers (10,000 routes moved,
        // each followed by a dump of up to 10,000) take minutes.
        ctx.routes.del(cidr, old).await?;
    }
    Ok(())
}
