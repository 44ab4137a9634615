//! A node's life: adding one (at `lab up` or later with `add-node`), starting its meshd (and
//! its `meshd-wg` devices in `external` mode), stopping, killing and removing it.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::apply::remove_applied_pods_of;
use crate::host::{
    ip, kill_ns_processes, meshd_pid, pid_alive, remove_bpffs, require_root, run, step,
};
use crate::kubernetes::CONFIG_NAMESPACE;
use crate::layout::{make_node, wait_converged};
use crate::node_root::node_command;
use crate::plan::*;
use crate::pods::add_pod;
use crate::state::{load_state, save_state, LabState, NodeState, Paths};
use crate::LISTEN_PORT;
use meshd::settings::CONFIG_MAP_NAME;

/// Create node `i` with `pods` pods and start its meshd.
pub(crate) fn add_node_inner(
    state: &mut LabState,
    i: u32,
    pods: u32,
    mode: Option<String>,
) -> anyhow::Result<()> {
    let lab = state.name.clone();
    let paths = Paths::new(&lab);
    state.nodes.push(NodeState {
        index: i,
        pods,
        wireguard_mode: mode,
    });
    save_state(state)?;
    make_node(&paths, i, state.node_root.as_deref())?;
    fs::create_dir_all(paths.node_dir(i))?;
    start_meshd(state, i)?;
    for j in 1..=pods {
        add_pod(&lab, i, j, state.meshd_allocates())?;
    }
    Ok(())
}

/// Start (or restart) node `i`'s meshd in its namespaces.
pub(crate) fn start_meshd(state: &LabState, i: u32) -> anyhow::Result<u32> {
    start_meshd_with(state, i, &[])
}

pub(crate) fn start_meshd_with(state: &LabState, i: u32, extra: &[&str]) -> anyhow::Result<u32> {
    let lab = state.name.as_str();
    let mode = state.mode_of(i);
    let paths = Paths::new(lab);
    let meshd = node_command(state.node_root.as_deref(), "meshd")?;
    let (c4, c6) = node_pod_cidrs(i);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log(i))
        .with_context(|| format!("opening {}", paths.log(i).display()))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--mount={}", paths.mnt(i).display()))
        .arg(format!("--net=/run/netns/{}", node_ns(lab, i)))
        .arg("--")
        .args(&meshd)
        .args(["--node-name", &node_name(i)])
        .arg("--state-dir")
        .arg(paths.node_dir(i).join("state"))
        .args(registry_args(state, &paths))
        // As in the DaemonSet: Events about this meshd are recorded on its Pod, in the
        // ConfigMap's namespace.
        .args(if state.registry == "kubernetes" {
            vec!["--pod-name".to_string(), format!("meshd-{}", node_name(i))]
        } else {
            Vec::new()
        })
        .arg("--cni-conf-dir")
        .arg(paths.node_dir(i).join("cni"))
        .args(["--underlay-interface", "eth0"])
        .args(["--listen-port", &LISTEN_PORT.to_string()])
        .args(["--wireguard-mode", &mode])
        .args(["--encryption", &state.encryption])
        .args(["--strict-mode", &state.strict_mode.to_string()])
        .args(["--pod-steering", &state.pod_steering])
        .args(["--host-encryption", &state.host_encryption.to_string()])
        .args(
            state
                .keepalive
                .map(|k| vec!["--keepalive".to_string(), k.to_string()])
                .unwrap_or_default(),
        )
        .args(
            state
                .key_rotation_interval
                .as_ref()
                .map(|k| vec!["--key-rotation-interval".to_string(), k.clone()])
                .unwrap_or_default(),
        )
        .args(
            state
                .rotation_silence
                .as_ref()
                .map(|k| vec!["--rotation-silence".to_string(), k.clone()])
                .unwrap_or_default(),
        )
        // Health, metrics and /status on the node's address, as the DaemonSet does.
        .args(["--health-listen", "0.0.0.0:9108"])
        .args(extra)
        .args(if state.ipam == "node-subnet" {
            vec![
                "--ipam".to_string(),
                "node-subnet".to_string(),
                "--pod-range-v4".to_string(),
                NODE_SUBNET_POD_RANGE_V4.to_string(),
                "--pod-range-v6".to_string(),
                NODE_SUBNET_POD_RANGE_V6.to_string(),
                // Empty blocks go back quickly, so tests see a release.
                "--pod-block-release-after".to_string(),
                "10s".to_string(),
            ]
        } else if state.ipam == "cluster-pool" {
            vec![
                "--pod-cidr-pool".to_string(),
                CLUSTER_V4.to_string(),
                "--pod-cidr-pool".to_string(),
                CLUSTER_V6.to_string(),
            ]
        } else if state.registry == "kubernetes" {
            // As on a real cluster: meshd takes them from its Node's spec.podCIDRs, which
            // the lab's API server holds (start_apiserver).
            Vec::new()
        } else {
            vec![
                "--pod-cidr".to_string(),
                c4.to_string(),
                "--pod-cidr".to_string(),
                c6.to_string(),
            ]
        })
        .args(
            state
                .max_nodes
                .map(|n| vec!["--max-nodes".to_string(), n.to_string()])
                .unwrap_or_default(),
        )
        .args(if state.guard_cluster_cidrs {
            &["--cluster-cidr", CLUSTER_V4, "--cluster-cidr", CLUSTER_V6][..]
        } else {
            &[][..]
        })
        .env(
            "RUST_LOG",
            std::env::var("MESHD_LAB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().context("starting meshd")?;
    // nsenter execs meshd in place: the child's pid is meshd's.
    let pid = child.id();
    fs::write(paths.pidfile(i), pid.to_string())?;
    // Not waited for: meshd outlives meshctl and is reparented to init.
    std::mem::forget(child);
    if mode == "external" {
        // Started after meshd, as a pod's containers may be: meshd waits for them.
        std::thread::sleep(Duration::from_millis(500));
        start_external_devices(&paths, lab, i, state.node_root.as_deref())?;
    }
    Ok(pid)
}

/// `--wireguard-mode external`: node `i`'s two user-space devices run by `meshd-wg` processes
/// of their own, as the `wireguard` containers of deploy/components/userspace-wireguard run
/// them: started by the lab (once; a restarted meshd adopts them), never by meshd.
pub(crate) fn start_external_devices(
    paths: &Paths,
    lab: &str,
    i: u32,
    node_root: Option<&Path>,
) -> anyhow::Result<()> {
    let helper = node_command(node_root, "meshd-wg")?;
    for device in ["meshd0", "meshd0b"] {
        let present = Command::new("ip")
            .args(["-n", &node_ns(lab, i), "link", "show", device])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if present {
            continue;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.node_dir(i).join(format!("{device}-wg.log")))?;
        let child = Command::new("nsenter")
            .arg(format!("--mount={}", paths.mnt(i).display()))
            .arg(format!("--net=/run/netns/{}", node_ns(lab, i)))
            .arg("--")
            .args(&helper)
            .args(["--interface", device])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting meshd-wg for {device}"))?;
        // Like meshd: outlives meshctl; `lab down` kills every process in the namespace.
        std::mem::forget(child);
    }
    Ok(())
}

pub(crate) fn registry_args(state: &LabState, paths: &Paths) -> Vec<String> {
    if state.registry == "kubernetes" {
        vec![
            "--registry".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            // On the real API server meshd is its service account, bound by deploy/'s RBAC.
            if state.apiserver == crate::kubernetes::REAL {
                paths.meshd_kubeconfig()
            } else {
                paths.kubeconfig()
            }
            .to_string_lossy()
            .into_owned(),
            "--config-map".into(),
            format!("{CONFIG_NAMESPACE}/{}", CONFIG_MAP_NAME),
        ]
    } else {
        vec![
            "--registry-dir".into(),
            paths.registry().to_string_lossy().into_owned(),
        ]
    }
}

/// `meshctl lab add-node`: one more node, programmed by the others without restart.
pub fn add_node(lab: &str, pods: u32) -> anyhow::Result<String> {
    require_root()?;
    check_range("pods per node", pods, MAX_PODS)?;
    let mut state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    if state.registry == "kubernetes" {
        bail!("add-node is not supported for kubernetes labs yet (their Nodes are created at `lab up`)");
    }
    let i = state.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
    check_range("nodes", i, MAX_NODES)?;
    step(format!(
        "node {}: namespace, underlay link, meshd ({pods} pods)",
        node_name(i)
    ));
    add_node_inner(&mut state, i, pods, None)?;
    step("waiting for every node to program every peer");
    wait_converged(&state, Duration::from_secs(60))?;
    Ok(node_name(i))
}

pub(crate) fn node_index(state: &LabState, node: &str) -> anyhow::Result<u32> {
    state
        .nodes
        .iter()
        .map(|n| n.index)
        .find(|i| node_name(*i) == node)
        .with_context(|| format!("lab {} has no node {node}", state.name))
}

/// `meshctl lab remove-node`: delete a node as an operator deletes a Node: its record goes
/// away, and every other node removes its peer and routes.
pub fn remove_node(lab: &str, node: &str) -> anyhow::Result<()> {
    require_root()?;
    let mut state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    let paths = Paths::new(lab);
    let pods = state
        .nodes
        .iter()
        .find(|n| n.index == i)
        .map_or(0, |n| n.pods);
    // Applied Pods bound to the node go with it, as the pod GC deletes a gone Node's Pods.
    remove_applied_pods_of(&paths, i)?;
    let mut spaces: Vec<String> = (1..=pods).map(|j| pod_ns(lab, i, j)).collect();
    spaces.push(node_ns(lab, i));
    for ns in &spaces {
        kill_ns_processes(ns);
        let _ = ip(&["netns", "del", ns]);
    }
    let _ = fs::remove_file(paths.registry().join(format!("{node}.json")));
    let _ = run("umount", &[&paths.mnt(i).to_string_lossy()]);
    let _ = fs::remove_file(paths.mnt(i));
    let _ = fs::remove_dir_all(paths.node_dir(i));
    remove_bpffs(&paths.bpffs(i));
    state.nodes.retain(|n| n.index != i);
    save_state(&state)?;
    step(format!("node {node} removed"));
    Ok(())
}

/// `meshctl lab kill-node`: SIGKILL a node's meshd (its datapath keeps running).
pub fn kill_node(lab: &str, node: &str) -> anyhow::Result<u32> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    let pid = meshd_pid(lab, i).with_context(|| format!("meshd on {node} is not running"))?;
    run("kill", &["-KILL", &pid.to_string()])?;
    // SIGKILL is delivered at once but the process takes a moment to be torn
    // down; return only when it is gone so that a following start-node sees it so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        if Instant::now() > deadline {
            bail!("meshd on {node} (pid {pid}) still exists 10 s after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// `meshctl lab start-node`: start a node's meshd again (after kill-node).
pub fn start_node(lab: &str, node: &str, cleanup: bool) -> anyhow::Result<u32> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    if let Some(pid) = meshd_pid(lab, i) {
        bail!("meshd on {node} is already running (pid {pid})");
    }
    start_meshd_with(&state, i, if cleanup { &["--cleanup"] } else { &[] })
}

/// `meshctl lab stop-node`: SIGTERM a node's meshd and wait until it has exited.
pub fn stop_node(lab: &str, node: &str) -> anyhow::Result<()> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let i = node_index(&state, node)?;
    let pid = meshd_pid(lab, i).with_context(|| format!("meshd on {node} is not running"))?;
    run("kill", &["-TERM", &pid.to_string()])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_alive(pid) {
        if Instant::now() > deadline {
            bail!("meshd on {node} (pid {pid}) did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
