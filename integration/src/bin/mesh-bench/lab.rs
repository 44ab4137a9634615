//! The scenarios on meshd's lab (`meshctl lab up`): pod to pod across two nodes, with eBPF or
//! route steering or with encryption disabled, and meshd's own RSS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use integration::bench;
use integration::LabStatus;
use testkit::netns::{self};

use crate::dataplane::measure;
use crate::stop::{check_stop, pause};
use crate::{Cfg, Measured};

/// Runs `meshctl lab down` on drop.
struct LabGuard {
    meshctl: PathBuf,
    name: String,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.meshctl)
            .args(["lab", "down", "--name", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub(crate) fn meshctl(meshctl: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(meshctl)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", meshctl.display()))?;
    if !out.status.success() {
        bail!(
            "`meshctl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn proc_ppid(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    bench::status_field(&s, "PPid")
}

/// Sum of VmRSS (KiB) of the `meshd` and `meshd-wg` processes of `node`.
fn meshd_rss(node: &integration::LabNode) -> Option<u64> {
    let is_meshd = |pid: u32| {
        proc_comm(pid)
            .map(|c| c == "meshd" || c == "meshd-wg")
            .unwrap_or(false)
    };
    let mut pids: Vec<u32> = netns::pids(&node.namespace)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|&p| is_meshd(p))
        .collect();
    if pids.is_empty() {
        // Fallback: meshd's pid from the status and its meshd-wg children.
        if let Some(m) = node.meshd_pid {
            pids.push(m);
            if let Ok(rd) = std::fs::read_dir("/proc") {
                for e in rd.flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    if is_meshd(pid) && proc_ppid(pid) == Some(m.into()) {
                        pids.push(pid);
                    }
                }
            }
        }
    }
    if pids.is_empty() {
        return None;
    }
    Some(
        pids.iter()
            .filter_map(|&p| bench::read_rss_kib(p).ok())
            .sum(),
    )
}

/// Write `n` synthetic node records into the lab's registry (random keys, pod CIDRs that no lab
/// node uses, endpoints nobody sends to: peers without traffic never handshake).
fn add_synthetic_records(registry: &Path, n: u32) -> anyhow::Result<()> {
    use base64::Engine as _;
    for k in 0..n {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        key[0] |= 1;
        let record = serde_json::json!({
            "version": 1,
            "name": format!("synthetic-{k}"),
            "publicKey": base64::engine::general_purpose::STANDARD.encode(key),
            "listenPort": 51820,
            "endpoints": [format!("198.18.0.{}", 100 + k)],
            "podCIDRs": [format!("10.244.{}.0/24", 100 + k), format!("fd00:244:0:{:x}::/64", 0x100 + k)],
        });
        std::fs::write(
            registry.join(format!("synthetic-{k}.json")),
            record.to_string(),
        )?;
    }
    Ok(())
}

/// meshd's lab, pod on node 1 to pod on node 2: the measurement, node 1's RSS and (with
/// `with_rss`) node 1's RSS once it has 100 peers.
pub(crate) fn bench_meshd(
    cfg: &Cfg,
    meshctl_path: &Path,
    extra: &[&str],
    with_rss: bool,
) -> anyhow::Result<(Measured, Option<u64>, Option<u64>)> {
    let name = format!(
        "mb{}{}",
        std::process::id() % 10_000,
        match extra.first() {
            None => "e",
            Some(&"--encryption") => "p",
            Some(_) => "r",
        }
    );
    let _guard = LabGuard {
        meshctl: meshctl_path.to_path_buf(),
        name: name.clone(),
    };
    let mut up = vec![
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
    ];
    up.extend_from_slice(extra);
    meshctl(meshctl_path, &up)?;
    check_stop()?;
    let json = meshctl(
        meshctl_path,
        &["lab", "status", "--name", &name, "-o", "json"],
    )?;
    let st = LabStatus::from_json(&json).context("parse lab status")?;
    if st.nodes.len() < 2 {
        bail!("lab has {} nodes, need 2", st.nodes.len());
    }
    let (n1, n2) = (&st.nodes[0], &st.nodes[1]);
    let client = st
        .pods_on(&n1.name)
        .next()
        .ok_or_else(|| anyhow!("no pod on {}", n1.name))?;
    let server = st
        .pods_on(&n2.name)
        .next()
        .ok_or_else(|| anyhow!("no pod on {}", n2.name))?;
    let addr = server
        .ipv4
        .clone()
        .or_else(|| server.ipv6.clone())
        .ok_or_else(|| anyhow!("pod {} has no address", server.name))?;
    let m = measure(&client.namespace, &server.namespace, &addr, cfg)?;
    let rss = meshd_rss(n1);
    if !with_rss {
        return Ok((m, rss, None));
    }
    // Memory with 100 peers: 99 synthetic records next to node 2.
    let raw: serde_json::Value = serde_json::from_str(&json)?;
    let registry = PathBuf::from(raw["registry_dir"].as_str().context("registry_dir")?);
    add_synthetic_records(&registry, 99)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_stop()?;
        let json = meshctl(
            meshctl_path,
            &["lab", "status", "--name", &name, "-o", "json"],
        )?;
        let st = LabStatus::from_json(&json)?;
        let peers = st.nodes.first().map_or(0, |n| n.peers.len());
        if peers >= 100 {
            break;
        }
        if Instant::now() > deadline {
            bail!("node 1 has {peers} peers, expected 100");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    pause(Duration::from_secs(2))?;
    Ok((m, rss, meshd_rss(n1)))
}
