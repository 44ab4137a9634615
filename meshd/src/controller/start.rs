//! Start-up, in the order that makes a restart invisible to the datapath: settings, keys
//! (loaded, never regenerated over an existing file), the underlay, the guard (before any
//! peer, route or pod exists), both slot devices (adopted when they exist), this node's record
//! (its pod CIDRs claimed when `cluster-pool`), the control and health servers, the policy
//! loop ([`crate::policy`]); then the event loop, and on the way out what `--cleanup` asks for.

use std::net::IpAddr;
use std::sync::Arc;

use crate::registry::{Registry, RegistryEvent};
use anyhow::{bail, Context as _};
use ipnet::IpNet;
use keyexchange::record::SlotKey;
use keyexchange::slots::{Slot, SLOTS};
use keyexchange::{NodeRecord, PrivateKey};
use netlink::{Links, Routes, UserspaceOptions, WgDevice};
use tokio::sync::{mpsc, RwLock};

use super::args::{second_port, DaemonArgs};
use super::blocks::Blocks;
use super::claim::claim_pod_cidrs;
use super::context::{ApiServerFeed, Context, KEY_FILES};
use super::devices::{bring_up_device, cleanup, guard_interfaces, underlay};
use super::event_loop::{event_loop, Channels};
use super::key_rotation::load_rotation;
use super::publisher::Publisher;
use super::state::Live;
use crate::bpf::{self, Bpf};
use crate::control::{self, SharedStatus, StatusSummary};
use crate::rotation::Driver;

/// Live operator settings (the `meshd-config` ConfigMap): `None` until first read.
pub type SettingsFeed = tokio::sync::watch::Receiver<Option<crate::settings::Settings>>;

/// Run the daemon until SIGTERM/SIGINT. With `settings`, the ConfigMap's values override the
/// flags and are applied live whenever they change.
pub async fn run<R: Registry>(
    args: DaemonArgs,
    registry: R,
    settings: Option<SettingsFeed>,
) -> anyhow::Result<()> {
    run_with(args, registry, settings, None, None).await
}

/// [`run`], also sending every status meshd serves to `status_feed` (e.g. for the Node
/// condition), and never tunnelling the addresses `api_servers` names (host encryption).
pub async fn run_with<R: Registry>(
    args: DaemonArgs,
    registry: R,
    settings: Option<SettingsFeed>,
    status_feed: Option<tokio::sync::watch::Sender<Option<StatusSummary>>>,
    api_servers: Option<ApiServerFeed>,
) -> anyhow::Result<()> {
    // `mtu: auto` in the ConfigMap means this: `--mtu`, else derived from the underlay.
    let flag_mtu = args.mtu;
    let args = with_settings(args, settings.as_ref());
    let keys = load_keys(&args)?;
    if args.listen_port == u16::MAX {
        bail!("--listen-port 65535 leaves no port for the second key slot (the next port)");
    }
    let interfaces = interface_names(&args)?;
    let links = Links::connect().await.context("connecting to rtnetlink")?;
    let routes = Routes::connect().await.context("connecting to rtnetlink")?;
    let (underlay_if, endpoints, underlay_mtu) = underlay(&args, &links).await?;
    if args.pod_cidrs.is_empty() {
        tracing::warn!("no --pod-cidr given: this node hosts no pods and attracts no traffic");
    }
    // Strict mode first: before any peer, route or pod exists on this node.
    let bpf = start_guard(&args, (&links, &routes), &underlay_if, &interfaces).await?;
    let opts = userspace_options(&args)?;
    let auto_mtu = flag_mtu.unwrap_or_else(|| {
        netlink::wireguard_mtu(underlay_mtu, endpoints.iter().any(IpAddr::is_ipv6))
    });
    let mtu = args.mtu.unwrap_or(auto_mtu);
    let (devices, adopted) =
        bring_up_devices(&args, &opts, &links, &interfaces, &keys, mtu).await?;

    let registry = Arc::new(registry);
    let mut events = registry.watch().context("watching the registry")?;
    let mut initial = Vec::new();
    let blocks = Blocks::start(&args)?;
    let mut first = initial_record(&args, &keys, endpoints);
    if let Some(b) = &blocks {
        // node-subnet: the blocks kept from the last run; the first passes claim the rest.
        first.pod_cidrs = b.held();
    }
    let (me, resumed) =
        prepare_record(&args, &*registry, first, (&mut events, &mut initial)).await?;

    let status: SharedStatus = Arc::new(RwLock::new(None));
    let (commands_tx, commands) = mpsc::channel(16);
    let metrics = crate::metrics::Metrics::new();
    let flows = crate::flows::daemon::service(&args.flows, &args.node_name, &metrics);
    let control = tokio::spawn(control::serve_with_flows(
        args.control_socket.clone(),
        status.clone(),
        commands_tx,
        flows.clone(),
    ));
    let heartbeat: crate::health::Heartbeat = Arc::new(RwLock::new(None));
    let health = spawn_health(&args, &status, &heartbeat, &metrics);

    // Published by a task of its own, retried until it lands: an API server that never
    // answers holds up neither the start nor the loop (the record is checked here, so an
    // invalid one still stops meshd).
    me.validate().context("this node's record")?;
    let publisher = Publisher::spawn(registry.clone());
    publisher.publish(me.clone());

    let live = Live {
        encryption: args.encryption,
        strict_mode: args.strict_mode,
        keepalive: args.keepalive,
        mtu,
        listen_port: args.listen_port,
        host_encryption: args.host_encryption,
    };
    let (policy, policy_task) = start_policy(&args, &*registry).unzip();
    let flow_task = crate::flows::daemon::start(
        &args.flows,
        &args.bpf_pin_dir,
        flows.as_ref(),
        crate::flows::collector::Sources {
            policy: policy.clone(),
            status: status.clone(),
        },
    );
    let underlay_ifindex = links
        .index_of(&underlay_if)
        .await?
        .with_context(|| format!("underlay interface {underlay_if} vanished"))?;
    let ctx = Context {
        args,
        me: std::sync::RwLock::new(me),
        keys: std::sync::RwLock::new(keys),
        devices,
        interfaces,
        adopted,
        auto_mtu,
        links,
        routes,
        opts,
        status,
        bpf: tokio::sync::Mutex::new(bpf),
        underlay: underlay_if,
        underlay_ifindex,
        live: RwLock::new(live),
        heartbeat,
        metrics,
        status_feed,
        api_servers,
        policy,
        blocks: blocks.map(std::sync::Mutex::new),
    };
    let channels = Channels {
        initial,
        events,
        settings,
        commands,
    };
    // The loop answers SIGTERM between passes; one under way at thousands of peers (a drain
    // moving every pair onto the other slot) may take longer than a stop can wait.
    let result = tokio::select! {
        result = event_loop(&ctx, &publisher, channels, resumed) => result,
        () = stop_signal_then(STOP_GRACE) => {
            tracing::warn!(
                grace_ms = STOP_GRACE.as_millis() as u64,
                "the pass under way did not end within the grace after the stop signal: leaving it unfinished (the next meshd reconciles from what is there)"
            );
            Ok(())
        }
    };
    // Nothing is published after this (a --cleanup withdraw must be the last write).
    publisher.stop().await;
    control.abort();
    if let Some(t) = flow_task {
        t.abort();
    }
    if let Some(t) = policy_task {
        // The maps stay pinned as written: the next meshd reconciles against them.
        t.abort();
    }
    if let Some(h) = health {
        h.abort();
    }
    shut_down(ctx, &*registry).await;
    result
}

/// How long the pass under way may go on after SIGTERM or SIGINT before meshd stops in the
/// middle of it.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Returns `grace` after the first SIGTERM or SIGINT (never, when the handlers cannot be
/// installed: the event loop's own still stop meshd between passes). Stopping in the middle
/// of a pass is stopping at one of its awaits, where a crash may stop it too: every step is
/// ordered so that the node is safe between two of them (a peer before its route and
/// redirect, a redirect gone before its route), and the next meshd reconciles from there.
async fn stop_signal_then(grace: std::time::Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::time::sleep(grace).await;
}

/// Starts the policy loop on the registry's objects and the IPAM store. Not fatal: without
/// its object watch the node enforces no NetworkPolicy, and says so.
fn start_policy<R: Registry>(
    args: &DaemonArgs,
    registry: &R,
) -> Option<(
    crate::policy::SharedPolicyReport,
    tokio::task::JoinHandle<()>,
)> {
    let objects = match registry.watch_policy_objects(&args.node_name) {
        Ok(objects) => objects,
        Err(err) => {
            tracing::error!(error = %format!("{:#}", anyhow::Error::new(err)), "cannot watch the objects NetworkPolicy depends on: this node enforces no NetworkPolicy");
            return None;
        }
    };
    let writer = match crate::policy::datapath::DatapathWriter::open(&args.bpf_pin_dir) {
        Ok(writer) => writer,
        Err(err) => {
            tracing::error!(error = %format!("{:#}", anyhow::Error::new(err)), "cannot open the policy maps: this node enforces no NetworkPolicy");
            return None;
        }
    };
    Some(crate::policy::spawn(
        &args.node_name,
        registry.policy_source(),
        objects,
        Some(super::pods::ipam_dir(&args.state_dir)),
        writer,
    ))
}

/// On the way out: the node takes no more pods; with `--cleanup` everything meshd made goes.
async fn shut_down<R: Registry>(ctx: Context, registry: &R) {
    crate::cni_conf::remove(&ctx.args.cni.cni_conf_dir);
    if ctx.args.cleanup {
        cleanup(ctx, registry).await;
    } else {
        tracing::info!("exiting; device, peers and routes stay in place for the next meshd");
    }
}

/// Both slot devices, brought up with their keys and ports; true when the first existed.
async fn bring_up_devices(
    args: &DaemonArgs,
    opts: &UserspaceOptions,
    links: &Links,
    interfaces: &[String; 2],
    keys: &[PrivateKey; 2],
    mtu: u32,
) -> anyhow::Result<([RwLock<WgDevice>; 2], bool)> {
    let mut devices = Vec::new();
    let mut adopted = false;
    let ports = [args.listen_port, second_port(args.listen_port)];
    for (slot, port) in SLOTS.into_iter().zip(ports) {
        let (device, existed) = bring_up_device(
            args,
            opts,
            links,
            (&interfaces[slot.index()], slot),
            &keys[slot.index()],
            port,
            mtu,
            netlink::EXTERNAL_WAIT,
        )
        .await?;
        adopted |= slot == Slot::FIRST && existed;
        devices.push(RwLock::new(device));
    }
    let devices = devices
        .try_into()
        .map_err(|_| anyhow::anyhow!("two slot devices"))?;
    Ok((devices, adopted))
}

/// This node's record as it is published first: its pod CIDRs claimed (`cluster-pool`), and
/// the step of a rotation it was in the middle of when it stopped, which goes on from there.
async fn prepare_record<R: Registry>(
    args: &DaemonArgs,
    registry: &R,
    mut me: NodeRecord,
    (events, initial): (&mut mpsc::Receiver<RegistryEvent>, &mut Vec<RegistryEvent>),
) -> anyhow::Result<(NodeRecord, Option<Driver>)> {
    if me.pod_cidrs.is_empty() && !args.pool.pod_cidr_pools.is_empty() {
        me.pod_cidrs = claim_pod_cidrs(args, registry, events, initial, &me).await?;
    }
    let resumed = load_rotation(&args.state_dir).map(|saved| {
        let (driver, step) = Driver::resume(
            &saved,
            std::time::Instant::now(),
            std::time::SystemTime::now(),
        );
        tracing::info!(phase = ?saved.phase, ?step, "resuming the key rotation under way");
        me.rotation.step = step;
        driver
    });
    me.validate().context("this node's own record is invalid")?;
    Ok((me, resumed))
}

/// The flags with the ConfigMap's values, when it has been read, over them.
fn with_settings(mut args: DaemonArgs, settings: Option<&SettingsFeed>) -> DaemonArgs {
    let Some(s) = settings.and_then(|feed| feed.borrow().clone()) else {
        return args;
    };
    args.encryption = s.encryption;
    args.strict_mode = s.strict_mode;
    args.keepalive = s.keepalive;
    args.host_encryption = s.host_encryption;
    args.mtu = s.mtu.or(args.mtu);
    if s.listen_port != args.listen_port {
        tracing::info!(port = s.listen_port, "listen port from the ConfigMap");
        args.listen_port = s.listen_port;
    }
    args
}

/// Both slots' keys, loaded (or generated the first time).
fn load_keys(args: &DaemonArgs) -> anyhow::Result<[PrivateKey; 2]> {
    let mut keys = Vec::new();
    for (slot, file) in KEY_FILES.iter().enumerate() {
        let (key, origin) = keyexchange::key::load_or_generate_file(&args.state_dir, file)
            .with_context(|| format!("loading this node's WireGuard key for slot {slot}"))?;
        tracing::info!(node = %args.node_name, slot, public_key = %key.public_key(), ?origin, "key ready");
        keys.push(key);
    }
    Ok([keys[0].clone(), keys[1].clone()])
}

/// Each slot's interface name.
fn interface_names(args: &DaemonArgs) -> anyhow::Result<[String; 2]> {
    let interfaces = [
        args.interface.clone(),
        args.second_interface
            .clone()
            .unwrap_or_else(|| format!("{}b", args.interface)),
    ];
    if interfaces[1].len() > 15 || interfaces[1] == interfaces[0] {
        bail!(
            "second key slot's interface {:?} is not a valid, distinct interface name (at most 15 characters); pass --second-interface",
            interfaces[1]
        );
    }
    Ok(interfaces)
}

/// Load the tc datapath and guard the underlay and every other way out.
async fn start_guard(
    args: &DaemonArgs,
    (links, routes): (&Links, &Routes),
    underlay_if: &str,
    interfaces: &[String; 2],
) -> anyhow::Result<Bpf> {
    let clusters = if !args.cluster_cidrs.is_empty() {
        args.cluster_cidrs.clone()
    } else if args.pod_cidrs.is_empty() && !args.pool.pod_cidr_pools.is_empty() {
        args.pool.pod_cidr_pools.clone()
    } else {
        args.pod_cidrs.clone()
    };
    let mode = bpf::program_mode(args.encryption, args.strict_mode);
    let mut bpf = Bpf::start(
        &args.bpf_pin_dir,
        underlay_if,
        args.listen_port,
        mode,
        &clusters,
        &bpf::map_sizes_with_flows(
            args.max_nodes,
            super::trust::policy(args).max_pod_cidrs_per_family(),
            args.flows.flow_ring_bytes,
        ),
    )
    .context("starting the tc eBPF datapath")?;
    bpf.set_mesh_mark(args.mesh_mark)
        .context("setting the mesh mark in the tc datapath")?;
    bpf.set_second_port(second_port(args.listen_port))
        .context("setting the second slot's port in the tc datapath")?;
    // Routes towards cluster CIDRs count as ways out only once the node's own pod CIDRs are
    // known (the host routes to its pods are not); until then (CIDRs still to be claimed from
    // a pool) the default routes do, and the first pass adds the rest.
    let guarded: Vec<IpNet> = if args.pod_cidrs.is_empty() {
        Vec::new()
    } else {
        bpf.cluster_cidrs()
            .context("reading the guarded CIDRs")?
            .into_iter()
            .collect()
    };
    let guards = guard_interfaces(args, links, routes, interfaces, &guarded, &args.pod_cidrs).await;
    let anew = bpf
        .ensure_guards(&guards)
        .context("guarding the node's other ways out")?;
    tracing::info!(encryption = %args.encryption, strict = args.strict_mode, underlay = %underlay_if, others = ?anew, "underlay guarded");
    Ok(bpf)
}

/// How a user-space device is run.
fn userspace_options(args: &DaemonArgs) -> anyhow::Result<UserspaceOptions> {
    let helper = match &args.userspace.helper_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating the meshd executable")?
            .with_file_name("meshd-wg"),
    };
    Ok(UserspaceOptions {
        helper_binary: helper,
        threads: match args.userspace.wg_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            n => n,
        },
        busy_poll_us: args.userspace.wg_busy_poll_us,
        log_file: Some(args.state_dir.join("meshd-wg.log")),
    })
}

/// This node's record before any rotation or claim.
fn initial_record(args: &DaemonArgs, keys: &[PrivateKey; 2], endpoints: Vec<IpAddr>) -> NodeRecord {
    NodeRecord {
        name: args.node_name.clone(),
        public_key: keys[0].public_key(),
        listen_port: args.listen_port,
        endpoints,
        pod_cidrs: args.pod_cidrs.iter().map(IpNet::trunc).collect(),
        rotation: keyexchange::record::Rotation {
            second: Some(SlotKey {
                public_key: keys[1].public_key(),
                listen_port: second_port(args.listen_port),
            }),
            ..Default::default()
        },
    }
}

/// Serve `/healthz`, `/readyz`, `/metrics` and `/status` (`--health-listen`) and the
/// probe-only listener (`--probe-listen`) when asked to, in one task.
fn spawn_health(
    args: &DaemonArgs,
    status: &SharedStatus,
    heartbeat: &crate::health::Heartbeat,
    metrics: &crate::metrics::Metrics,
) -> Option<tokio::task::JoinHandle<()>> {
    if args.health_listen.is_none() && args.probe_listen.is_none() {
        return None;
    }
    let (full, probes) = (args.health_listen, args.probe_listen);
    let (status, heartbeat, metrics) = (status.clone(), heartbeat.clone(), metrics.clone());
    Some(tokio::spawn(async move {
        let serve_full = async {
            if let Some(addr) = full {
                let (s, h) = (status.clone(), heartbeat.clone());
                if let Err(err) = crate::health::serve(addr, s, h, metrics).await {
                    tracing::error!(%addr, %err, "health endpoints failed");
                }
            }
        };
        let serve_probes = async {
            if let Some(addr) = probes {
                let (s, h) = (status.clone(), heartbeat.clone());
                if let Err(err) = crate::health::serve_probes(addr, s, h).await {
                    tracing::error!(%addr, %err, "probe endpoints failed");
                }
            }
        };
        tokio::join!(serve_full, serve_probes);
    }))
}
