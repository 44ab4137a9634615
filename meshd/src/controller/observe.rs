//! Reads what the node holds now, as far as a pass changes it: the slot devices (peers, MTU),
//! meshd's routes (main table, plain, host encryption's table and rule), the eBPF maps and
//! attachments, the IPAM store's pods and the interfaces the guard must sit on. I/O only: no
//! decision and no change here.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use ipnet::IpNet;
use keyexchange::slots::SLOTS;
use keyexchange::PublicKey;
use netlink::DeviceStatus;

use super::args::PodSteering;
use super::context::Context;
use super::devices::current_guard_interfaces;
use super::plan::{AllowedIps, Observed, ObservedDevice, ObservedPeer};
use super::pods::{self, Pods};
use super::{HOST_RULE_PRIORITY, HOST_TABLE};

/// One observation of the node, with the facts the desired state depends on.
pub(super) struct Observation {
    /// What a pass can change.
    pub observed: Observed,
    /// The IPAM store's pods.
    pub pods: Pods,
    /// The source entries the pods' existing veths should have.
    pub pod_sources: std::collections::BTreeMap<String, BTreeSet<ebpf_redirect::PodSource>>,
    /// The interfaces the guard must sit on besides the underlay.
    pub guard_interfaces: BTreeSet<String>,
}

/// Observe the node; `devices` are both slot devices' status as just read.
pub(super) async fn observe(
    ctx: &Context,
    devices: &[DeviceStatus; 2],
) -> anyhow::Result<Observation> {
    let mut observed_devices: [ObservedDevice; 2] = Default::default();
    let mut routes = BTreeSet::new();
    for slot in SLOTS {
        let ifindex = ctx.device(slot).read().await.ifindex();
        for dst in ctx.routes.list(ifindex).await.context("listing routes")? {
            routes.insert((dst.trunc(), ifindex));
        }
        observed_devices[slot.index()] = ObservedDevice {
            ifindex,
            mtu: ctx.links.mtu(ifindex).await.ok(),
            peers: programmed(&devices[slot.index()].peers),
        };
    }
    let plain_routes: BTreeMap<IpNet, std::net::IpAddr> = ctx
        .routes
        .list_via(ctx.underlay_ifindex)
        .await
        .context("listing plain routes")?
        .into_iter()
        .collect();
    let host_routes = ctx
        .routes
        .list_hosts_in(HOST_TABLE)
        .await
        .context("listing host-encryption routes")?
        .into_iter()
        .collect();
    let mark_rule = ctx
        .routes
        .mark_rule_present(ctx.args.mesh_mark, HOST_TABLE, HOST_RULE_PRIORITY)
        .await
        .context("reading the host-encryption rule")?;
    // Read once: the ways out are decided from the guarded CIDRs too.
    let guarded_cidrs = ctx.bpf.lock().await.cluster_cidrs()?;
    let guards = current_guard_interfaces(ctx, Some(&guarded_cidrs)).await;
    let bpf = ctx.bpf.lock().await;
    let ebpf_steering = ctx.args.pod_steering == PodSteering::Ebpf;
    // The pod maps before the store: an ADD landing in between is in both (`pods::read_after`).
    let ((local_pods, pod_sources), pods) = pods::read_after(&ctx.args.state_dir, || {
        let sources = if ebpf_steering {
            bpf.pod_sources()?
        } else {
            BTreeSet::new()
        };
        Ok((bpf.locals()?, sources))
    })?;
    let observed = Observed {
        devices: observed_devices,
        routes,
        plain_routes,
        host_routes,
        mark_rule,
        redirects: bpf.remotes().context("reading redirects")?,
        guarded_cidrs,
        guard_mode: bpf.mode(),
        local_pods,
        from_pod_done: if ebpf_steering {
            bpf.from_pod_done(&pods.veths)?
        } else {
            BTreeSet::new()
        },
        to_pod_done: if ebpf_steering {
            bpf.to_pod_done(&pods.veths)?
        } else {
            BTreeSet::new()
        },
        pod_sources,
        stale_links: if ebpf_steering {
            bpf.stale_links()?
        } else {
            BTreeSet::new()
        },
        guarded_interfaces: bpf.guarded_interfaces(&guards)?,
    };
    Ok(Observation {
        observed,
        pod_sources: pods.sources(),
        pods,
        guard_interfaces: guards,
    })
}

/// A device's peers in keyexchange's terms.
pub(super) fn programmed(peers: &[netlink::PeerStatus]) -> BTreeMap<PublicKey, ObservedPeer> {
    peers
        .iter()
        .map(|p| {
            let peer = ObservedPeer {
                endpoint: p.endpoint,
                allowed_ips: AllowedIps::from_slice(&p.allowed_ips),
                keepalive: p.persistent_keepalive,
            };
            (PublicKey::from_bytes(p.public_key), peer)
        })
        .collect()
}
