//! The slot devices and the node's ways out: bringing a device up (adopting it when it
//! exists), healing one that vanished, keeping its listen port and firewall mark, finding the
//! underlay and the interfaces the guard must sit on, and `--cleanup`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::registry::Registry;
use anyhow::{bail, Context as _};
use ipnet::IpNet;
use keyexchange::slots::{Slot, SLOTS};
use keyexchange::PrivateKey;
use netlink::{DeviceStatus, Links, Routes, UserspaceOptions, WgDevice, WireguardMode};

use super::args::{second_port, DaemonArgs};
use super::context::Context;
use super::guard;
use super::{HOST_RULE_PRIORITY, HOST_TABLE};

/// How long healing waits for an external device to come back before the pass fails and is
/// retried (start-up waits [`netlink::EXTERNAL_WAIT`]): the loop stays responsive meanwhile.
const EXTERNAL_HEAL_WAIT: Duration = Duration::from_secs(2);

/// Adopt (or create) the device and make sure key, port, MTU and link state are right. An
/// external device (`--wireguard-mode external`) is waited for up to `external_wait`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn bring_up_device(
    args: &DaemonArgs,
    opts: &UserspaceOptions,
    links: &Links,
    (interface, slot): (&str, Slot),
    private_key: &PrivateKey,
    port: u16,
    mtu: u32,
    external_wait: Duration,
) -> anyhow::Result<(WgDevice, bool)> {
    let mut opts = opts.clone();
    if slot != Slot::FIRST {
        opts.log_file = Some(
            args.state_dir
                .join(format!("meshd-wg-{}.log", u8::from(slot) + 1)),
        );
    }
    let ensured = if args.wireguard_mode == WireguardMode::External {
        WgDevice::adopt_external(interface, external_wait)
            .await
            .map(|d| (d, true))
    } else {
        WgDevice::ensure(interface, args.wireguard_mode, &opts).await
    };
    let (device, adopted) =
        ensured.with_context(|| format!("setting up WireGuard device {interface}"))?;
    tracing::info!(%interface, %slot, mode = %device.mode(), adopted, "device ready");
    device
        .configure(&private_key.to_bytes(), port, Some(args.mesh_mark))
        .await
        .with_context(|| format!("configuring key, listen port and fwmark of {interface}"))?;
    links.set_mtu(device.ifindex(), mtu).await?;
    links.set_up(device.ifindex()).await?;
    relax_rp_filter(&args.proc_sys_net, interface);
    Ok((device, adopted))
}

/// A peer's packets may arrive on either slot's device while this node routes its CIDRs via
/// the other (for a moment while a slot drains): reverse-path filtering would drop them, so
/// the device gets an effective `rp_filter` of 0 (see [`crate::rpfilter`]).
fn relax_rp_filter(proc_sys_net: &std::path::Path, interface: &str) {
    match crate::rpfilter::apply(proc_sys_net, &[interface]) {
        Ok(writes) => {
            if writes.iter().any(|(name, _)| name == "all") {
                let raised: Vec<&(String, u8)> = writes
                    .iter()
                    .filter(|(name, _)| name != "all" && name != interface)
                    .collect();
                tracing::info!(
                    ?raised,
                    "net.ipv4.conf.all.rp_filter moved onto every other interface and default (their filtering is unchanged), then set to 0, so that {interface} is not filtered"
                );
            }
        }
        Err(err) => tracing::warn!(
            error = %err,
            "could not take {interface} out of reverse-path filtering: packets a peer sends on the other key slot during a rotation may be dropped (in a pod, mount the host's /proc/sys/net and pass --proc-sys-net)"
        ),
    }
}

/// The device stopped answering: bring it back (adopting it if it is in fact alive). Its peers,
/// routes and redirects are restored by the reconcile pass that follows; meanwhile redirects to
/// the vanished device drop, and strict mode drops whatever the kernel routes elsewhere.
pub(super) async fn heal_device(ctx: &Context, slot: Slot) -> anyhow::Result<()> {
    let mut device = ctx.device(slot).write().await;
    if device.status().await.is_ok() {
        return Ok(());
    }
    let interface = &ctx.interfaces[slot.index()];
    tracing::warn!(%interface, "WireGuard device is gone or not answering; bringing it back");
    let port = ctx
        .me()
        .slot(slot)
        .map_or(ctx.args.listen_port, |k| k.listen_port);
    let (fresh, adopted) = bring_up_device(
        &ctx.args,
        &ctx.opts,
        &ctx.links,
        (interface, slot),
        &ctx.key(slot),
        port,
        ctx.live.read().await.mtu,
        EXTERNAL_HEAL_WAIT,
    )
    .await?;
    tracing::info!(
        ifindex = fresh.ifindex(),
        adopted,
        "WireGuard device restored"
    );
    *device = fresh;
    Ok(())
}

pub(super) async fn underlay(
    args: &DaemonArgs,
    links: &Links,
) -> anyhow::Result<(String, Vec<IpAddr>, u32)> {
    let (ifname, mtu) = match &args.underlay_interface {
        Some(name) => {
            let idx = links
                .index_of(name)
                .await?
                .with_context(|| format!("underlay interface {name} does not exist"))?;
            (name.clone(), links.mtu(idx).await?)
        }
        None => match links.underlay().await? {
            Some((_, name, mtu)) => (name, mtu),
            None => bail!("no underlay interface found; pass --underlay-interface"),
        },
    };
    let endpoints = if args.endpoints.is_empty() {
        let found = links.addresses(&ifname).await?;
        if found.is_empty() {
            bail!("underlay interface {ifname} has no global address; pass --endpoint");
        }
        found
    } else {
        args.endpoints.clone()
    };
    tracing::info!(underlay = %ifname, mtu, ?endpoints, "underlay");
    Ok((ifname, endpoints, mtu))
}

/// The interfaces the guard sits on besides the underlay: the `--guard-interface`s and every
/// way out of the node [`guard::ways_out`] finds in the routes of every table and the
/// policy-routing rules (`guarded` are the guarded CIDRs, `own_pod_cidrs` this node's), never
/// meshd's own devices or the loopback. A failed dump is logged and falls back to the main
/// table's default routes.
pub(super) async fn guard_interfaces(
    args: &DaemonArgs,
    links: &Links,
    routes: &Routes,
    own: &[String; 2],
    guarded: &[IpNet],
    own_pod_cidrs: &[IpNet],
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = args.guard_interfaces.iter().cloned().collect();
    match ways_out(links, routes, guarded, own_pod_cidrs).await {
        Ok(names) => out.extend(names),
        Err(err) => {
            tracing::warn!(err = format!("{err:#}"), "reading the routes and rules for the guard failed; guarding the main table's default routes");
            match links.default_route_interfaces().await {
                Ok(names) => out.extend(names),
                Err(err) => tracing::warn!(%err, "listing the default routes' interfaces failed"),
            }
        }
    }
    out.retain(|i| !own.contains(i) && i != LOOPBACK);
    out
}

/// The loopback: never a way out.
const LOOPBACK: &str = "lo";

/// Names of the interfaces [`guard::ways_out`] picks from the routes and rules now.
async fn ways_out(
    links: &Links,
    routes: &Routes,
    guarded: &[IpNet],
    own_pod_cidrs: &[IpNet],
) -> anyhow::Result<Vec<String>> {
    let table_routes = routes.table_routes().await?;
    let rule_tables = routes.rule_tables().await?;
    let oifs = guard::ways_out(&guard::RoutingView {
        routes: &table_routes,
        rule_tables: &rule_tables,
        guarded,
        own_pod_cidrs,
    });
    let mut names = Vec::new();
    for oif in oifs {
        if let Some(info) = links.info_by_index(oif).await? {
            names.push(info.name);
        }
    }
    Ok(names)
}

/// [`guard_interfaces`] with what the daemon holds now: the guarded CIDRs of the datapath's
/// map (configured and learned; `known`, when the caller knows them, else read from the map)
/// and this node's pod CIDRs.
pub(super) async fn current_guard_interfaces(
    ctx: &Context,
    known: Option<&BTreeSet<IpNet>>,
) -> BTreeSet<String> {
    let guarded: Vec<IpNet> = match known {
        Some(cidrs) => cidrs.iter().copied().collect(),
        None => match ctx.bpf.lock().await.cluster_cidrs() {
            Ok(cidrs) => cidrs.into_iter().collect(),
            Err(err) => {
                tracing::warn!(%err, "reading the guarded CIDRs failed");
                Vec::new()
            }
        },
    };
    let own_pod_cidrs = ctx.me().pod_cidrs;
    guard_interfaces(
        &ctx.args,
        &ctx.links,
        &ctx.routes,
        &ctx.interfaces,
        &guarded,
        &own_pod_cidrs,
    )
    .await
}

/// Bring both devices' listen ports and firewall mark to the settings, and the record and the
/// underlay guard's ports to the devices'. Returns both devices' status as read afterwards.
/// This happens before the pass observes the node: the guard must pass the new ports before
/// peers learn them.
pub(super) async fn ensure_ports(
    ctx: &Context,
    listen_port: u16,
) -> anyhow::Result<([DeviceStatus; 2], bool)> {
    let ports = [listen_port, second_port(listen_port)];
    let mut devs = Vec::new();
    for slot in SLOTS {
        let device = ctx.device(slot).read().await;
        let port = ports[slot.index()];
        let mut dev = device.status().await.context("reading device")?;
        if dev.listen_port != port || dev.fwmark != ctx.args.mesh_mark {
            device
                .configure(&ctx.key(slot).to_bytes(), port, Some(ctx.args.mesh_mark))
                .await
                .context("setting the listen port and fwmark")?;
            if dev.listen_port != port {
                tracing::info!(
                    %slot,
                    from = dev.listen_port,
                    to = port,
                    "listen port changed live"
                );
            }
            dev = device.status().await.context("reading device")?;
        }
        devs.push(dev);
    }
    let second = devs.pop().context("two devices")?;
    let first = devs.pop().context("two devices")?;
    let me = ctx.me();
    let republish = me.listen_port != first.listen_port
        || me.rotation.second.map(|k| k.listen_port) != Some(second.listen_port);
    if republish {
        // Peers learn the new ports from the record, and at once from this node's next
        // authenticated packet (WireGuard roaming).
        let mut bpf = ctx.bpf.lock().await;
        bpf.set_port(first.listen_port)?;
        bpf.set_second_port(second.listen_port)?;
        let (p0, p1) = (first.listen_port, second.listen_port);
        ctx.update_me(|m| {
            m.listen_port = p0;
            if let Some(s) = m.rotation.second.as_mut() {
                s.listen_port = p1;
            }
        });
    }
    Ok(([first, second], republish))
}

pub(super) async fn cleanup<R: Registry>(ctx: Context, registry: &R) {
    tracing::info!("--cleanup: withdrawing record, removing routes, device and tc programs");
    if let Err(err) = registry.withdraw(&ctx.me().name).await {
        tracing::warn!(%err, "withdrawing record failed");
    }
    let [device, second] = ctx.devices;
    let (device, second) = (device.into_inner(), second.into_inner());
    for i in [device.ifindex(), second.ifindex()] {
        if let Ok(present) = ctx.routes.list(i).await {
            for dst in present {
                if let Err(err) = ctx.routes.del(dst, i).await {
                    tracing::warn!(%err, %dst, "removing route failed");
                }
            }
        }
    }
    if let Ok(hosts) = ctx.routes.list_hosts_in(HOST_TABLE).await {
        for (ip, oif) in hosts {
            if let Err(err) = ctx.routes.del_host_in(ip, oif, HOST_TABLE).await {
                tracing::warn!(%err, %ip, "removing host route failed");
            }
        }
    }
    if let Err(err) = ctx
        .routes
        .remove_mark_rule(ctx.args.mesh_mark, HOST_TABLE, HOST_RULE_PRIORITY)
        .await
    {
        tracing::warn!(%err, "removing the host-encryption rule failed");
    }
    for d in [device, second] {
        if let Err(err) = d.destroy().await {
            tracing::warn!(%err, "removing device failed");
        }
    }
    // Last: the underlay guard stays until nothing routes pod traffic any more.
    ctx.bpf.into_inner().cleanup();
    let _ = std::fs::remove_file(&ctx.args.control_socket);
}

/// Bring back every slot device that stopped answering; counts each restore.
pub(super) async fn heal_devices(
    ctx: &Context,
    counters: &mut crate::control::Counters,
) -> anyhow::Result<()> {
    for slot in SLOTS {
        if ctx.device(slot).read().await.status().await.is_err() {
            counters.device_restores += 1;
            heal_device(ctx, slot).await?;
        }
    }
    Ok(())
}
