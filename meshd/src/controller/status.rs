//! Status publication: what `meshctl status`, `/readyz`, the metrics and the Node condition
//! see, built from the devices, the datapath and what the loop keeps.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use keyexchange::slots::{Slot, SLOTS};
use keyexchange::PublicKey;

use super::context::Context;
use super::state::State;
use super::unix_now;
use crate::control::{self, MalformedReport, PeerReport, RefusalReport, StatusReport};
use crate::rotation;

/// The peers of one device as the status reports them.
fn peer_reports(
    peers: &[netlink::PeerStatus],
    names: &BTreeMap<PublicKey, &str>,
) -> Vec<PeerReport> {
    let now = SystemTime::now();
    peers
        .iter()
        .map(|p| {
            let key = PublicKey::from_bytes(p.public_key);
            let unix = p
                .last_handshake
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            let ago = p
                .last_handshake
                .map(|t| now.duration_since(t).unwrap_or_default().as_secs());
            PeerReport {
                name: names.get(&key).map(|n| (*n).to_string()),
                public_key: key.to_string(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                last_handshake_unix: unix,
                last_handshake_secs_ago: ago,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            }
        })
        .collect()
}

/// Serve a fresh status; returns both devices' peers as read for it.
pub(super) async fn publish_status(
    ctx: &Context,
    state: &mut State,
    converged: bool,
) -> anyhow::Result<Vec<netlink::PeerStatus>> {
    let device = ctx.device(Slot::FIRST).read().await;
    let second = ctx.device(Slot::SECOND).read().await;
    // A device that cannot be read (its process died, or is being brought back) still gets a
    // status: not converged, its peers unknown. A stale "converged" would keep the node ready.
    let mut unreadable = None;
    let mut read = |slot: Slot, status: Result<netlink::DeviceStatus, netlink::DeviceError>| {
        status
            .map(|s| (s.listen_port, s.peers))
            .unwrap_or_else(|err| {
                let port = ctx.me().slot(slot).map_or(0, |k| k.listen_port);
                unreadable.get_or_insert(err);
                (port, Vec::new())
            })
    };
    let (listen_port, live_peers) = read(Slot::FIRST, device.status().await);
    let (listen_port2, live_peers2) = read(Slot::SECOND, second.status().await);
    let converged = converged && unreadable.is_none();
    let datapath = match ctx.bpf.lock().await.report() {
        Ok(r) => Some(r),
        Err(err) => {
            tracing::warn!(error = %err, "reading the eBPF datapath failed");
            None
        }
    };
    if let Some(d) = &datapath {
        let total = d
            .counters
            .strict_drops
            .saturating_add(d.counters.would_drops);
        let watch = &mut state.cleartext;
        watch.report.observe(&mut watch.total, total, unix_now());
    }
    let state = &*state;
    let names: BTreeMap<PublicKey, &str> = state
        .registry
        .records
        .values()
        .flat_map(|r| {
            SLOTS
                .iter()
                .filter_map(|s| r.slot(*s))
                .map(move |k| (k.public_key, r.name.as_str()))
        })
        .collect();
    let peers = peer_reports(&live_peers, &names);
    let me = ctx.me();
    let (phase, slot) = match state.rotation.driver.phase() {
        rotation::Phase::Idle => (control::RotationPhase::Idle, None),
        rotation::Phase::Waiting { slot } => (control::RotationPhase::Waiting, Some(slot)),
        rotation::Phase::Draining { slot } => (control::RotationPhase::Draining, Some(slot)),
        rotation::Phase::Replaced { slot } => (control::RotationPhase::Replaced, Some(slot)),
    };
    let rotation_report = control::RotationReport {
        phase,
        slot: slot.map(u8::from),
        serial: me.rotation.step.map(|s| s.serial),
        pending: state.rotation.driver.pending().to_vec(),
        excused: state.rotation.driver.excused().map(String::from).collect(),
        rotations: state.rotation.rotations,
        failures: state.rotation.failures,
        last_unix: state.rotation.last_unix,
        last_error: state.rotation.last_error.clone(),
        peer_slots: state
            .rotation
            .peer_slots
            .iter()
            .map(|(name, slot)| (name.clone(), u8::from(*slot)))
            .collect(),
        interval_secs: ctx.args.rotation.key_rotation_interval.map(|d| d.as_secs()),
    };
    let second_report = control::SlotReport {
        interface: second.name().to_string(),
        ifindex: second.ifindex(),
        public_key: ctx.key(Slot::SECOND).public_key().to_string(),
        listen_port: listen_port2,
        peers: peer_reports(&live_peers2, &names),
    };
    let report = StatusReport {
        node: ctx.me().name.clone(),
        public_key: ctx.key(Slot::FIRST).public_key().to_string(),
        mode: device.mode(),
        interface: device.name().to_string(),
        ifindex: device.ifindex(),
        adopted_device: ctx.adopted,
        listen_port,
        mtu: ctx.live.read().await.mtu,
        endpoints: ctx.me().endpoints.iter().map(ToString::to_string).collect(),
        pod_cidrs: ctx.me().pod_cidrs.iter().map(ToString::to_string).collect(),
        known_nodes: state.registry.records.keys().cloned().collect(),
        peers,
        conflicts: state.registry.last_conflicts.iter().cloned().collect(),
        malformed: state
            .registry
            .malformed
            .iter()
            .map(|(node, error)| MalformedReport {
                node: node.clone(),
                error: error.clone(),
            })
            .collect(),
        counters: state.counters.clone(),
        converged,
        encryption: ctx.live.read().await.encryption,
        strict_mode: ctx.live.read().await.strict_mode,
        host_encryption: ctx.live.read().await.host_encryption,
        encrypted_hosts: state
            .liveness
            .encrypted_hosts
            .iter()
            .map(ToString::to_string)
            .collect(),
        key_created_unix: ctx.key_created_unix(),
        second: Some(second_report),
        rotation: rotation_report,
        datapath,
        cleartext: state.cleartext.report.clone(),
        refused: state
            .registry
            .refused
            .iter()
            .map(|r| RefusalReport {
                node: r.node.clone(),
                field: r.field.to_string(),
                reason: r.reason.clone(),
                holder: r.holder.clone(),
            })
            .collect(),
        policy: ctx.policy.as_ref().map(|report| {
            report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }),
    };
    if let Some(feed) = &ctx.status_feed {
        // Receivers decide what changed (the Node condition writes only when it does).
        feed.send_replace(Some(report.clone()));
    }
    *ctx.status.write().await = Some(report);
    *ctx.heartbeat.write().await = Some(std::time::Instant::now());
    if let Some(err) = unreadable {
        return Err(err.into());
    }
    let mut all = live_peers;
    all.extend(live_peers2);
    Ok(all)
}
