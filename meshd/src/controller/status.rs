//! Status publication: what `meshctl status`, `/readyz`, the metrics and the Node condition
//! see, built from the devices, the datapath and what the loop keeps.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use keyexchange::slots::{Slot, SLOTS};
use keyexchange::PublicKey;

use super::context::Context;
use super::plan::Step;
use super::state::State;
use super::unix_now;
use crate::control::{
    self, Counters, MalformedReport, RefusalReport, ServedPeer, ServedStatus, StatusReport,
};
use crate::rotation;

/// The peers of one device as the status reports them.
fn peer_reports(
    peers: &[netlink::PeerStatus],
    names: &BTreeMap<PublicKey, &str>,
) -> Vec<ServedPeer> {
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
            ServedPeer {
                name: names.get(&key).map(|n| Box::from(*n)),
                public_key: key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.as_slice().into(),
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
    let second_report = control::SlotReport {
        interface: second.name().to_string(),
        ifindex: second.ifindex(),
        public_key: ctx.key(Slot::SECOND).public_key().to_string(),
        listen_port: listen_port2,
        peers: peer_reports(&live_peers2, &names),
    };
    let mut report: ServedStatus = StatusReport {
        node: ctx.me().name.clone(),
        public_key: ctx.key(Slot::FIRST).public_key().to_string(),
        mode: device.mode(),
        interface: device.name().to_string(),
        ifindex: device.ifindex(),
        adopted_device: ctx.adopted,
        listen_port,
        mtu: 0,
        endpoints: Vec::new(),
        pod_cidrs: Vec::new(),
        known_nodes: Vec::new(),
        peers,
        conflicts: Vec::new(),
        malformed: Vec::new(),
        counters: Counters::default(),
        converged,
        encryption: crate::bpf::Encryption::Enabled,
        strict_mode: false,
        host_encryption: false,
        encrypted_hosts: Vec::new(),
        key_created_unix: None,
        second: Some(second_report),
        rotation: control::RotationReport::default(),
        datapath,
        cleartext: state.cleartext.report.clone(),
        refused: Vec::new(),
        policy: None,
    };
    fill_from_state(&mut report, ctx, state, converged).await;
    drop((device, second));
    serve(ctx, report).await;
    if let Some(err) = unreadable {
        return Err(err.into());
    }
    let mut all = live_peers;
    all.extend(live_peers2);
    Ok(all)
}

/// The parts of the status that come from the settings and what the loop keeps (not from the
/// devices or the maps): cheap to set again after every pass.
async fn fill_from_state(report: &mut ServedStatus, ctx: &Context, state: &State, converged: bool) {
    let me = ctx.me();
    let live = ctx.live.read().await.clone();
    report.mtu = live.mtu;
    report.encryption = live.encryption;
    report.strict_mode = live.strict_mode;
    report.host_encryption = live.host_encryption;
    report.endpoints = me.endpoints.iter().map(ToString::to_string).collect();
    report.pod_cidrs = me.pod_cidrs.iter().map(ToString::to_string).collect();
    follow_sorted(&mut report.known_nodes, state.registry.records.keys());
    report.conflicts = state.registry.last_conflicts.iter().cloned().collect();
    report.malformed = state
        .registry
        .malformed
        .iter()
        .map(|(node, error)| MalformedReport {
            node: node.clone(),
            error: error.clone(),
        })
        .collect();
    report.counters = state.counters.clone();
    report.converged = converged;
    report.encrypted_hosts = state
        .liveness
        .encrypted_hosts
        .iter()
        .map(ToString::to_string)
        .collect();
    report.key_created_unix = ctx.key_created_unix();
    let peer_slots = std::mem::take(&mut report.rotation.peer_slots);
    report.rotation = rotation_report(ctx, state, peer_slots);
    report.cleartext = state.cleartext.report.clone();
    report.refused = state
        .registry
        .refused
        .iter()
        .map(|r| RefusalReport {
            node: r.node.clone(),
            field: r.field.to_string(),
            reason: r.reason.clone(),
            holder: r.holder.clone(),
        })
        .collect();
    report.policy = ctx.policy.as_ref().map(|report| {
        report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    });
}

/// `list` (sorted) made equal to `names` (sorted), keeping the strings it already holds: a
/// pass that adds a node allocates that one name, not every known node's again among the
/// pass's transient data.
fn follow_sorted<'a>(list: &mut Vec<String>, names: impl ExactSizeIterator<Item = &'a String>) {
    let mut old = std::mem::take(list).into_iter().peekable();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        while old.next_if(|o| o < name).is_some() {}
        out.push(old.next_if(|o| o == name).unwrap_or_else(|| name.clone()));
    }
    *list = out;
}

/// `served` (the slot of each peer node, as served) made equal to `slots`, in place: the
/// names it holds are kept.
fn follow_slots(served: &mut BTreeMap<String, u8>, slots: &BTreeMap<String, Slot>) {
    served.retain(|name, _| slots.contains_key(name));
    for (name, slot) in slots {
        match served.get_mut(name) {
            Some(s) => *s = u8::from(*slot),
            None => {
                served.insert(name.clone(), u8::from(*slot));
            }
        }
    }
}

/// Where this node's key rotation stands; `peer_slots` is the last status's, brought forward.
fn rotation_report(
    ctx: &Context,
    state: &State,
    mut peer_slots: BTreeMap<String, u8>,
) -> control::RotationReport {
    follow_slots(&mut peer_slots, &state.rotation.peer_slots);
    let (phase, slot) = match state.rotation.driver.phase() {
        rotation::Phase::Idle => (control::RotationPhase::Idle, None),
        rotation::Phase::Waiting { slot } => (control::RotationPhase::Waiting, Some(slot)),
        rotation::Phase::Draining { slot } => (control::RotationPhase::Draining, Some(slot)),
        rotation::Phase::Replaced { slot } => (control::RotationPhase::Replaced, Some(slot)),
    };
    control::RotationReport {
        phase,
        slot: slot.map(u8::from),
        serial: ctx.me().rotation.step.map(|s| s.serial),
        pending: state.rotation.driver.pending().to_vec(),
        excused: state.rotation.driver.excused().map(String::from).collect(),
        rotations: state.rotation.rotations,
        failures: state.rotation.failures,
        last_unix: state.rotation.last_unix,
        last_error: state.rotation.last_error.clone(),
        peer_slots,
        interval_secs: ctx.args.rotation.key_rotation_interval.map(|d| d.as_secs()),
    }
}

/// Serve `report` (the control socket, the status feed) and beat the heart.
async fn serve(ctx: &Context, report: ServedStatus) {
    if let Some(feed) = &ctx.status_feed {
        // Receivers decide what changed (the Node condition writes only when it does).
        feed.send_replace(Some(report.summary()));
    }
    let mut served = ctx.status.write().await;
    *served = Some(report);
    control::status_changed();
    drop(served);
    *ctx.heartbeat.write().await = Some(std::time::Instant::now());
}

/// After a pass that planned from memory: bring the served status forward by its `steps`
/// (peers added, changed or removed on either device, redirects and guarded CIDRs) and what
/// the loop keeps, without reading the devices or the maps (at thousands of peers that read
/// cost more than the pass). Handshakes and byte counts stay as last read; the next status
/// tick reads them. False when there is no status yet to bring forward.
pub(super) async fn patch_status(
    ctx: &Context,
    state: &State,
    steps: &[Step],
    converged: bool,
) -> bool {
    // In place: a copy of a status of thousands of peers costs more than the patch.
    let mut served = ctx.status.write().await;
    let Some(report) = served.as_mut() else {
        return false;
    };
    patch_report(report, steps, &state.registry.records);
    fill_from_state(report, ctx, state, converged).await;
    control::status_changed();
    if let Some(feed) = &ctx.status_feed {
        feed.send_replace(Some(report.summary()));
    }
    drop(served);
    *ctx.heartbeat.write().await = Some(std::time::Instant::now());
    true
}

/// Bring `report`'s peers and datapath CIDRs forward by `steps` (pure).
fn patch_report(
    report: &mut ServedStatus,
    steps: &[Step],
    records: &BTreeMap<String, keyexchange::NodeRecord>,
) {
    let mut second_peers = report.second.as_mut().map(|s| &mut s.peers);
    for step in steps {
        match step {
            Step::RemovePeer { slot, key } => {
                if let Some(peers) = peers_of(&mut report.peers, &mut second_peers, *slot) {
                    peers.retain(|p| p.public_key != *key);
                }
            }
            Step::UpsertPeer { slot, peer } => {
                let key = PublicKey::from_bytes(peer.public_key);
                let name = records
                    .values()
                    .find(|r| {
                        SLOTS
                            .iter()
                            .any(|s| r.slot(*s).is_some_and(|k| k.public_key == key))
                    })
                    .map(|r| Box::from(r.name.as_str()));
                let Some(peers) = peers_of(&mut report.peers, &mut second_peers, *slot) else {
                    continue;
                };
                let allowed_ips = peer.allowed_ips.as_slice().into();
                match peers.iter_mut().find(|p| p.public_key == key) {
                    Some(p) => {
                        p.name = name;
                        p.allowed_ips = allowed_ips;
                        if let Some(e) = peer.endpoint {
                            p.endpoint = Some(e);
                        }
                    }
                    None => peers.push(ServedPeer {
                        name,
                        public_key: key,
                        endpoint: peer.endpoint,
                        allowed_ips,
                        last_handshake_unix: None,
                        last_handshake_secs_ago: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    }),
                }
            }
            _ => {}
        }
    }
    if let Some(datapath) = report.datapath.as_mut() {
        for step in steps {
            match step {
                Step::SetRedirect { cidr, .. } => datapath.remote_cidrs.insert(*cidr),
                Step::RemoveRedirect(cidr) => datapath.remote_cidrs.remove(cidr),
                Step::GuardCidr(cidr) => datapath.cluster_cidrs.insert(*cidr),
                _ => {}
            }
        }
    }
}

/// The peer list of `slot`'s device in a status report.
fn peers_of<'a>(
    first: &'a mut Vec<ServedPeer>,
    second: &'a mut Option<&mut Vec<ServedPeer>>,
    slot: Slot,
) -> Option<&'a mut Vec<ServedPeer>> {
    if slot == Slot::FIRST {
        Some(first)
    } else {
        second.as_deref_mut()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::tests_support::sample;

    fn record(name: &str, key: PublicKey) -> keyexchange::NodeRecord {
        keyexchange::NodeRecord {
            name: name.into(),
            public_key: key,
            listen_port: 51820,
            endpoints: vec!["198.18.0.12".parse().unwrap()],
            pod_cidrs: vec!["10.244.3.0/24".parse().unwrap()],
            rotation: Default::default(),
        }
    }

    fn upsert(slot: Slot, key: PublicKey, cidr: &str) -> Step {
        Step::UpsertPeer {
            slot,
            peer: netlink::PeerConfig {
                public_key: *key.as_bytes(),
                endpoint: Some("198.18.0.12:51820".parse().unwrap()),
                allowed_ips: vec![cidr.parse().unwrap()],
                persistent_keepalive: None,
            },
        }
    }

    #[test]
    fn a_patched_status_follows_the_steps_of_a_pass_from_memory() {
        let (k3, k4) = (
            PublicKey::from_bytes([3; 32]),
            PublicKey::from_bytes([4; 32]),
        );
        let records: BTreeMap<_, _> = [("n3".to_string(), record("n3", k3))].into();
        let mut report: ServedStatus = sample();
        report.second = Some(control::SlotReport {
            interface: "meshd1".into(),
            ifindex: 8,
            public_key: "k2".into(),
            listen_port: 51821,
            peers: Vec::new(),
        });
        let cidr: ipnet::IpNet = "10.244.3.0/24".parse().unwrap();
        let steps = vec![
            upsert(Slot::FIRST, k3, "10.244.3.0/24"),
            upsert(Slot::SECOND, k4, "10.244.4.0/24"),
            Step::GuardCidr(cidr),
            Step::SetRedirect { cidr, ifindex: 7 },
            Step::RemoveRedirect("10.244.2.0/24".parse().unwrap()),
        ];
        patch_report(&mut report, &steps, &records);
        assert_eq!(report.peers.len(), 1);
        assert_eq!(report.peers[0].name.as_deref(), Some("n3"));
        assert_eq!(report.report().peers[0].allowed_ips, vec!["10.244.3.0/24"]);
        let second = &report.second.as_ref().unwrap().peers;
        assert_eq!(second.len(), 1);
        // A key no record holds has no name.
        assert_eq!(second[0].name, None);
        let datapath = report.datapath.as_ref().unwrap();
        assert_eq!(datapath.remote_cidrs, vec!["10.244.3.0/24"]);
        assert_eq!(
            datapath.cluster_cidrs,
            vec!["10.244.0.0/16", "10.244.3.0/24"]
        );

        // The peer goes: removed from its device's list only.
        patch_report(
            &mut report,
            &[Step::RemovePeer {
                slot: Slot::FIRST,
                key: k3,
            }],
            &records,
        );
        assert!(report.peers.is_empty());
        assert_eq!(report.second.as_ref().unwrap().peers.len(), 1);
    }

    #[test]
    fn the_known_nodes_follow_the_records_keeping_the_names_they_hold() {
        let names = |l: &[&str]| l.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut list = names(&["a", "c", "d"]);
        let kept = list[1].as_ptr();
        let records = names(&["b", "c", "e"]);
        follow_sorted(&mut list, records.iter());
        assert_eq!(list, records);
        // "c" is the string it was, not a copy.
        assert_eq!(list[1].as_ptr(), kept);
        follow_sorted(&mut list, [].iter());
        assert!(list.is_empty());
    }

    #[test]
    fn the_served_peer_slots_follow_the_rotations() {
        let mut served: BTreeMap<String, u8> = [("a".to_string(), 0), ("b".to_string(), 1)].into();
        let slots: BTreeMap<String, Slot> = [
            ("b".to_string(), Slot::FIRST),
            ("c".to_string(), Slot::SECOND),
        ]
        .into();
        follow_slots(&mut served, &slots);
        assert_eq!(
            served,
            BTreeMap::from([("b".to_string(), 0), ("c".to_string(), 1)])
        );
    }
}
