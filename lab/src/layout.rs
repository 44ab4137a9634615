//! Building and tearing down a lab: `lab up` (the underlay switch and router, every node's
//! namespaces and mounts, then waiting for the mesh to converge) and `lab down` (every
//! namespace, process, mount, pinned program and file the lab made).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::apply::stop_all_servers;
use crate::host::{
    binary, in_ns, ip, kill_ns_processes, meshd_pid, namespaces, remove_bpffs, require_root, run,
    step, sysctl,
};
use crate::kubernetes::{choose_apiserver, start_apiserver};
use crate::nodes::add_node_inner;
use crate::plan::*;
use crate::state::{load_state, save_state, LabState, Paths, UpOptions};
use crate::status::{allocated_addrs, node_status, print_table};
use crate::HOST_BPFFS;
use meshd::bpf::ensure_bpffs;

/// `meshctl lab up`.
pub fn up(opts: &UpOptions) -> anyhow::Result<()> {
    check_name(&opts.name)?;
    check_range("nodes", opts.nodes, MAX_NODES)?;
    check_range("pods per node", opts.pods_per_node, MAX_PODS)?;
    require_root()?;
    if let Some(state) = load_state(&opts.name)? {
        eprintln!(
            "lab {} is already up with {} nodes; `meshctl lab down --name {}` first to rebuild it",
            state.name,
            state.nodes.len(),
            state.name
        );
        return print_table(&state);
    }
    let stray: Vec<String> = namespaces()?
        .into_iter()
        .filter(|ns| owns_namespace(&opts.name, ns))
        .collect();
    if !stray.is_empty() {
        bail!(
            "namespaces {} exist but lab {} has no state; remove them with `meshctl lab down --name {}` or pick another --name",
            stray.join(", "),
            opts.name,
            opts.name
        );
    }
    let node_root = crate::node_root::from_env()?;
    if node_root.is_none() {
        for bin in ["meshd", "meshd-wg", "meshd-cni"] {
            binary(bin)?;
        }
    }
    if !matches!(opts.ipam.as_str(), "node" | "cluster-pool" | "node-subnet") {
        bail!(
            "--ipam {}: expected node, cluster-pool or node-subnet",
            opts.ipam
        );
    }
    let apiserver = if opts.registry == "kubernetes" {
        choose_apiserver(&opts.apiserver)?.to_string()
    } else {
        String::new()
    };
    let started = Instant::now();
    let mut state = LabState {
        name: opts.name.clone(),
        wireguard_mode: opts.wireguard_mode.clone(),
        encryption: opts.encryption.clone(),
        strict_mode: opts.strict_mode,
        pod_steering: opts.pod_steering.clone(),
        registry: opts.registry.clone(),
        apiserver,
        ipam: opts.ipam.clone(),
        host_encryption: opts.host_encryption,
        keepalive: opts.keepalive,
        key_rotation_interval: opts.key_rotation_interval.clone(),
        rotation_silence: opts.rotation_silence.clone(),
        guard_cluster_cidrs: opts.guard_cluster_cidrs,
        max_nodes: opts.max_nodes,
        node_root,
        nodes: Vec::new(),
    };
    let result = build(&mut state, opts);
    if let Err(err) = result {
        eprintln!("lab up failed: {err:#}; cleaning up");
        let _ = down(&opts.name);
        return Err(err);
    }
    step(format!(
        "lab {} up in {:.1}s: {} nodes, {} pods",
        state.name,
        started.elapsed().as_secs_f64(),
        state.nodes.len(),
        state.nodes.iter().map(|n| n.pods).sum::<u32>()
    ));
    print_table(&state)
}

pub(crate) fn build(state: &mut LabState, opts: &UpOptions) -> anyhow::Result<()> {
    let paths = Paths::new(&state.name);
    fs::create_dir_all(paths.registry())
        .with_context(|| format!("creating {}", paths.registry().display()))?;
    save_state(state)?;
    step("underlay: switch and router");
    make_underlay(&state.name)?;
    make_mount_dir(&paths)?;
    ensure_bpffs(&Path::new(HOST_BPFFS).join("meshd-lab"))?;
    if state.registry == "kubernetes" {
        start_apiserver(
            &state.apiserver,
            &paths,
            opts.nodes,
            // Both self-allocating modes: no spec.podCIDRs on the Nodes.
            opts.ipam != "node",
        )?;
    }
    for i in 1..=opts.nodes {
        step(format!(
            "node {}: namespace, underlay link, meshd ({} pods)",
            node_name(i),
            opts.pods_per_node
        ));
        let mode = opts
            .node_modes
            .iter()
            .find(|(n, _)| *n == i)
            .map(|(_, m)| m.clone());
        add_node_inner(state, i, opts.pods_per_node, mode)?;
    }
    step("waiting for every node to program every peer");
    wait_converged(state, Duration::from_secs(60))?;
    step("first packets across the mesh (WireGuard handshakes)");
    warm_up(state);
    // meshd refreshes its served status every second: let the handshakes show.
    std::thread::sleep(Duration::from_millis(1200));
    Ok(())
}

pub(crate) fn make_underlay(lab: &str) -> anyhow::Result<()> {
    let ul = underlay_ns(lab);
    ip(&["netns", "add", &ul])?;
    in_ns(&ul, &["ip", "link", "set", "lo", "up"])?;
    in_ns(&ul, &["ip", "link", "add", "br0", "type", "bridge"])?;
    sysctl(&ul, &["net.ipv6.conf.br0.accept_dad=0"])?;
    // The underlay is a switch: frames it bridges skip iptables (where br_netfilter is
    // loaded these sysctls exist per namespace, on by default; `-e`: absent is fine).
    sysctl(
        &ul,
        &[
            "-e",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ],
    )?;
    in_ns(
        &ul,
        &[
            "ip",
            "addr",
            "add",
            &format!("{GATEWAY_V4}/24"),
            "dev",
            "br0",
        ],
    )?;
    in_ns(
        &ul,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ],
    )?;
    in_ns(&ul, &["ip", "link", "set", "br0", "up"])?;
    Ok(())
}

pub(crate) fn make_mount_dir(paths: &Paths) -> anyhow::Result<()> {
    let dir = paths.mnt_dir();
    fs::create_dir_all(&dir)?;
    let d = dir.to_string_lossy().into_owned();
    // Mount namespaces can only be pinned under a private mount.
    run("mount", &["--bind", &d, &d])?;
    run("mount", &["--make-private", &d])?;
    // Mount points the nodes' private mounts cover (empty directories on the host).
    fs::create_dir_all("/run/wireguard")?;
    fs::create_dir_all("/run/meshd")?;
    Ok(())
}

/// Node `i`'s namespaces: its network namespace with the underlay link to the switch and the
/// default routes via the router, its bpffs directory, and its pinned private mount namespace
/// (own `/run/wireguard`, `/run/meshd`, `/sys` and `/sys/fs/bpf`), and in it, with a node root,
/// that root made the node's container root ([`crate::node_root::mount_script`]).
pub(crate) fn make_node(paths: &Paths, i: u32, node_root: Option<&Path>) -> anyhow::Result<()> {
    let lab = paths.lab.as_str();
    let ns = node_ns(lab, i);
    let ul = underlay_ns(lab);
    let (v4, v6) = node_underlay(i);
    ip(&["netns", "add", &ns])?;
    sysctl(
        &ns,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    )?;
    in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
    let port = node_name(i);
    ip(&[
        "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
    in_ns(
        &ns,
        &["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"],
    )?;
    in_ns(
        &ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    )?;
    in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
    in_ns(
        &ns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V4.to_string(),
        ],
    )?;
    in_ns(
        &ns,
        &[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V6.to_string(),
        ],
    )?;

    // The node's bpffs: a directory of the host's, which the node sees as /sys/fs/bpf.
    let bpffs = paths.bpffs(i);
    fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
    // The node's private mount namespace.
    let mnt = paths.mnt(i);
    fs::write(&mnt, b"").with_context(|| format!("creating {}", mnt.display()))?;
    let m = mnt.to_string_lossy().into_owned();
    run(
        "unshare",
        &[&format!("--mount={m}"), "--propagation", "private", "true"],
    )?;
    run(
        "nsenter",
        &[
            &format!("--mount={m}"),
            &format!("--net=/run/netns/{ns}"),
            "--",
            "sh",
            "-c",
            &format!(
                "mount -t tmpfs -o mode=0755 meshd-lab /run/wireguard && \
                 mount -t tmpfs -o mode=0755 meshd-lab /run/meshd && \
                 mkdir /run/meshd/.bpffs && mount --bind {} /run/meshd/.bpffs && \
                 umount -l /sys && mount -t sysfs sysfs /sys && \
                 mount --move /run/meshd/.bpffs /sys/fs/bpf && rmdir /run/meshd/.bpffs",
                bpffs.display()
            ),
        ],
    )?;
    if let Some(root) = node_root {
        run(
            "nsenter",
            &[
                &format!("--mount={m}"),
                "--",
                "sh",
                "-c",
                &crate::node_root::mount_script(root),
            ],
        )?;
    }
    Ok(())
}

/// Wait until every node's meshd has programmed a peer for every other node.
pub(crate) fn wait_converged(state: &LabState, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let want = state.nodes.len().saturating_sub(1);
    loop {
        let mut pending = Vec::new();
        for n in &state.nodes {
            match node_status(&state.name, n.index) {
                // Encryption disabled: no peers, plain routes to every node it knows. (Read
                // through Display, which holds whether the field is a string or an enum.)
                Ok(s) if s.converged && s.encryption == meshd::mode::Encryption::Disabled => {
                    if s.known_nodes.len() < state.nodes.len() {
                        pending.push(format!(
                            "{} ({}/{} nodes known)",
                            s.node,
                            s.known_nodes.len(),
                            state.nodes.len()
                        ));
                    }
                }
                Ok(s) if s.converged && s.peers.len() == want => {}
                Ok(s) => pending.push(format!("{} ({}/{want} peers)", s.node, s.peers.len())),
                Err(_) => {
                    if meshd_pid(&state.name, n.index).is_none() {
                        bail!(
                            "meshd on {} exited; see {}",
                            node_name(n.index),
                            Paths::new(&state.name).log(n.index).display()
                        );
                    }
                    pending.push(format!("{} (starting)", node_name(n.index)));
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "mesh did not converge in {timeout:?}: waiting for {}",
                pending.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One ping from the first pod of each node to the first pod of every other node, both families.
pub(crate) fn warm_up(state: &LabState) {
    for a in &state.nodes {
        for b in &state.nodes {
            if a.index == b.index || a.pods == 0 || b.pods == 0 {
                continue;
            }
            let (d4, d6) = if state.meshd_allocates() {
                allocated_addrs(&Paths::new(&state.name), &state.name, b.index, 1)
            } else {
                let (d4, d6) = pod_addrs(b.index, 1);
                (d4.to_string(), d6.to_string())
            };
            for dst in [d4, d6] {
                let _ = in_ns(
                    &pod_ns(&state.name, a.index, 1),
                    &["ping", "-c", "1", "-W", "2", &dst],
                );
            }
        }
    }
}

/// `meshctl lab down`: remove every namespace, process, mount and file of the lab.
pub fn down(lab: &str) -> anyhow::Result<()> {
    check_name(lab)?;
    require_root()?;
    let paths = Paths::new(lab);
    let ours: Vec<String> = namespaces()?
        .into_iter()
        .filter(|ns| owns_namespace(lab, ns))
        .collect();
    if ours.is_empty() && !paths.root.exists() {
        eprintln!("lab {lab} is not up; nothing to do");
        return Ok(());
    }
    // The port servers of applied Pods first (they are in the Pods' namespaces, which the
    // loop below also empties, but their pids are known).
    stop_all_servers(lab);
    step(format!("stopping processes in {} namespaces", ours.len()));
    for ns in &ours {
        kill_ns_processes(ns);
    }
    for ns in &ours {
        if let Err(err) = ip(&["netns", "del", ns]) {
            eprintln!("warning: {err:#}");
        }
    }
    if let Ok(entries) = fs::read_dir(paths.mnt_dir()) {
        for entry in entries.flatten() {
            let _ = run("umount", &[&entry.path().to_string_lossy()]);
        }
    }
    let _ = run("umount", &[&paths.mnt_dir().to_string_lossy()]);
    // The nodes' pinned programs, maps and links (meshd was killed, not cleaned up).
    let bpffs_root = Path::new(HOST_BPFFS).join("meshd-lab");
    if let Ok(entries) = fs::read_dir(&bpffs_root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name
                .strip_prefix(&format!("{lab}-n"))
                .is_some_and(|i| i.parse::<u32>().is_ok())
            {
                remove_bpffs(&entry.path());
            }
        }
    }
    if paths.root.exists() {
        fs::remove_dir_all(&paths.root)
            .with_context(|| format!("removing {}", paths.root.display()))?;
    }
    step(format!("lab {lab} is down"));
    Ok(())
}
