//! A running meshd lab, driven through `meshctl` exactly as a person would, for tests and tools.
//!
//! [`Lab::up`] picks a name unique to this process, so concurrent tests never share
//! namespaces; dropping the [`Lab`] runs `meshctl lab down`, also when a test fails.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::labjson::{LabPod, LabStatus};
use testkit::netns;

pub mod cni;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The host tools a lab runs (`meshctl lab` and this harness), root aside. A lab test states
/// them with `testkit::require_tools(lab::TOOLS)` and fails without them.
pub const TOOLS: &[&str] = &["ip", "nsenter", "sysctl", "ping"];

/// The directory holding the workspace's binaries (`meshctl`, `meshd`, `lab-traffic`…): the
/// directory of the running executable, or its parent when that is cargo's `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A lab brought up by this process.
#[derive(Debug)]
pub struct Lab {
    name: String,
    meshctl: PathBuf,
}

impl Lab {
    /// A name no other lab of this machine uses: `t` + pid + counter, at most 8 characters.
    pub fn unique_name() -> String {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        format!("t{:04x}{:x}", std::process::id() & 0xffff, n % 0x100)
    }

    /// Bring up a lab with `nodes` nodes and `pods` pods per node.
    pub fn up(nodes: u32, pods: u32) -> anyhow::Result<Lab> {
        Self::up_named(&Self::unique_name(), nodes, pods)
    }

    /// Bring up a lab with extra `meshctl lab up` options (e.g. `--encryption permissive`).
    pub fn up_with(nodes: u32, pods: u32, extra: &[&str]) -> anyhow::Result<Lab> {
        Self::up_named_with(&Self::unique_name(), nodes, pods, extra)
    }

    /// Bring up a lab with a given name.
    pub fn up_named(name: &str, nodes: u32, pods: u32) -> anyhow::Result<Lab> {
        Self::up_named_with(name, nodes, pods, &[])
    }

    /// Bring up a lab whose nodes run meshd, meshctl, meshd-cni and meshd-wg from `root`, an
    /// unpacked container image (`MESHD_LAB_NODE_ROOT`), with extra `meshctl lab up` options.
    pub fn up_in_root(nodes: u32, pods: u32, root: &Path, extra: &[&str]) -> anyhow::Result<Lab> {
        Self::up_inner(&Self::unique_name(), nodes, pods, extra, Some(root))
    }

    /// Bring up a lab with a given name and extra `meshctl lab up` options.
    pub fn up_named_with(name: &str, nodes: u32, pods: u32, extra: &[&str]) -> anyhow::Result<Lab> {
        Self::up_inner(name, nodes, pods, extra, None)
    }

    fn up_inner(
        name: &str,
        nodes: u32,
        pods: u32,
        extra: &[&str],
        node_root: Option<&Path>,
    ) -> anyhow::Result<Lab> {
        let meshctl = bin("meshctl");
        if !meshctl.exists() {
            bail!(
                "{} missing: run `cargo build --workspace --bins` first",
                meshctl.display()
            );
        }
        let lab = Lab {
            name: name.to_string(),
            meshctl,
        };
        let (n, p) = (nodes.to_string(), pods.to_string());
        let mut args = vec!["lab", "up", "--nodes", &n, "--pods-per-node", &p];
        args.extend_from_slice(extra);
        match node_root {
            Some(root) => lab.meshctl_env(&args, &[(meshd_lab::node_root::NODE_ROOT_ENV, root)])?,
            None => lab.meshctl(&args)?,
        };
        Ok(lab)
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `meshctl lab <sub> --name NAME <rest>`; fails on a non-zero exit.
    pub fn meshctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.meshctl_env(args, &[])
    }

    /// [`Lab::meshctl`] with extra environment variables.
    pub fn meshctl_env(&self, args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<Output> {
        let mut full: Vec<&str> = args.to_vec();
        // `--name` goes right after the lab subcommand (before any `--`).
        if full.first() == Some(&"lab") && full.len() >= 2 {
            full.splice(2..2, ["--name", self.name.as_str()]);
        }
        let out = Command::new(&self.meshctl)
            .args(&full)
            .envs(env.iter().copied())
            .output()
            .with_context(|| format!("running meshctl {}", full.join(" ")))?;
        if !out.status.success() {
            bail!(
                "meshctl {} failed ({}): {}{}",
                full.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// `meshctl lab status -o json`, parsed.
    pub fn status(&self) -> anyhow::Result<LabStatus> {
        let out = self.meshctl(&["lab", "status", "-o", "json"])?;
        LabStatus::from_json(&String::from_utf8_lossy(&out.stdout)).context("parsing lab status")
    }

    /// The raw status JSON, for checks on fields the typed view leaves out.
    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.meshctl(&["lab", "status", "-o", "json"])?;
        serde_json::from_slice(&out.stdout).context("parsing lab status")
    }

    /// The file holding `node`'s record in the lab's directory registry.
    pub fn record_path(&self, node: &str) -> anyhow::Result<PathBuf> {
        let st = self.status_json()?;
        let dir = st["registry_dir"]
            .as_str()
            .context("lab status has no registry_dir")?;
        Ok(PathBuf::from(dir).join(format!("{node}.json")))
    }

    /// Run a command inside node `node` (network + mount namespace).
    pub fn exec(&self, node: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["lab", "exec", node, "--"];
        args.extend_from_slice(cmd);
        let out = self.meshctl(&args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `meshctl audit --cluster` against a kubernetes lab, run inside the lab's underlay
    /// namespace (where its API server and every node's status endpoint are reachable):
    /// (exit code, report).
    pub fn audit_cluster(&self) -> anyhow::Result<(i32, serde_json::Value)> {
        let st = self.status_json()?;
        let kubeconfig = st["kubeconfig"]
            .as_str()
            .context("not a kubernetes lab: no kubeconfig")?;
        let ul = st["capture"]["namespace"]
            .as_str()
            .context("capture namespace")?;
        let out = Command::new("ip")
            .args(["netns", "exec", ul])
            .arg(&self.meshctl)
            .args([
                "audit",
                "--cluster",
                "--kubeconfig",
                kubeconfig,
                "-o",
                "json",
            ])
            .output()
            .context("running meshctl audit")?;
        let report = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("audit output: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((out.status.code().unwrap_or(-1), report))
    }

    /// Poll `check` on the lab status until it returns true or `timeout` passes.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status_json()?;
            if check(&st) {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}; last status: {st:#}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(&self.meshctl)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// Ping `dst` from pod `from` (`count` echoes); true when every echo came back.
pub fn ping(from: &LabPod, dst: &str, count: u32) -> bool {
    netns::run_in_unchecked(
        &from.namespace,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "2",
            dst,
        ],
    )
    .map(|o| o.status.success())
    .unwrap_or(false)
}

/// The addresses of a pod (IPv4, IPv6).
pub fn pod_addrs(pod: &LabPod) -> anyhow::Result<(IpAddr, IpAddr)> {
    let v4 = pod.ipv4.as_deref().context("pod has no IPv4")?.parse()?;
    let v6 = pod.ipv6.as_deref().context("pod has no IPv6")?.parse()?;
    Ok((v4, v6))
}

/// `addr:port` with brackets for IPv6.
pub fn sockaddr(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// Peers of `node` in a raw status document, as node names.
pub fn peer_names(status: &serde_json::Value, node: &str) -> Vec<String> {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["name"] == node)
        .flat_map(|n| n["peers"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_lab_names_and_distinct() {
        let a = Lab::unique_name();
        let b = Lab::unique_name();
        assert_ne!(a, b);
        for n in [a, b] {
            assert!(n.len() <= 8 && n.starts_with('t'), "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{n}"
            );
        }
    }

    #[test]
    fn peer_names_reads_the_contract() {
        let st = serde_json::json!({"nodes":[{"name":"n1","peers":[{"name":"n2"},{"name":"n3"}]},{"name":"n2","peers":[]}]});
        assert_eq!(peer_names(&st, "n1"), vec!["n2", "n3"]);
        assert!(peer_names(&st, "n2").is_empty());
    }
}
