//! Driving a lab node's `meshd-cni` exactly as a container runtime does, for tests and
//! benchmarks that create pods of their own: the `CNI_*` environment, the node's plugin
//! configuration on stdin, run inside the node's network namespace (and the host's mount
//! namespace, like `meshctl lab`'s own pods). Plus read-only views of what the plugin leaves
//! behind: the node's IPAM store, its host veths and the pinned `from_pod` links.
//!
//! Pod namespaces made with [`PodNamespaces`] are named `<lab>-<node>-p<N>`, so `meshctl lab
//! down` removes them too should a drop guard never run.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use testkit::NetnsSet;

use super::{bin, Lab};

/// The interface name every pod of these helpers gets (`CNI_IFNAME`).
pub const POD_IFNAME: &str = "eth0";
/// The host's bpffs mount point; a lab node's `/sys/fs/bpf` is a directory below it.
const HOST_BPFFS: &str = "/sys/fs/bpf";
/// File name of the conflist meshd installs.
const CONFLIST: &str = "10-meshd.conflist";

/// The host-side veth name meshd-cni gives `(container_id, ifname)`: `mshd` and 8 hex digits
/// of SHA-256 over the container ID, a NUL and the interface name (the plugin's rule).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let d = h.finalize();
    format!("mshd{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// What one plugin invocation printed and how it exited.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output (the result or error JSON).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl PluginOutput {
    /// Whether the plugin exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The output as an error unless the plugin succeeded.
    pub fn ok(self, what: &str) -> anyhow::Result<PluginOutput> {
        if self.success() {
            Ok(self)
        } else {
            bail!(
                "meshd-cni {what} failed (exit {:?}): {}{}",
                self.code,
                self.stdout,
                self.stderr
            )
        }
    }
}

/// A pod attached by ADD, as its result describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The host-side veth (`interfaces[0].name`).
    pub host_veth: String,
    /// The IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The IPv6 address.
    pub ipv6: Ipv6Addr,
    /// The whole ADD result.
    pub result: Value,
}

impl Attached {
    /// Decode an ADD result.
    pub fn from_result(container_id: &str, stdout: &str) -> anyhow::Result<Attached> {
        let result: Value = serde_json::from_str(stdout)
            .with_context(|| format!("ADD result of {container_id} is not JSON: {stdout}"))?;
        let host_veth = result["interfaces"][0]["name"]
            .as_str()
            .with_context(|| format!("ADD result of {container_id} has no host interface"))?
            .to_string();
        let mut v4 = None;
        let mut v6 = None;
        for ip in result["ips"].as_array().into_iter().flatten() {
            let addr = ip["address"].as_str().unwrap_or_default();
            let host = addr.split('/').next().unwrap_or_default();
            match host.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if v4.is_none() => v4 = Some(a),
                Ok(IpAddr::V6(a)) if v6.is_none() => v6 = Some(a),
                _ => bail!("ADD result of {container_id}: unexpected address {addr:?}"),
            }
        }
        Ok(Attached {
            container_id: container_id.to_string(),
            host_veth,
            ipv4: v4.with_context(|| format!("ADD result of {container_id} has no IPv4"))?,
            ipv6: v6.with_context(|| format!("ADD result of {container_id} has no IPv6"))?,
            result,
        })
    }

    /// Both addresses.
    pub fn addrs(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }
}

/// One allocation in a node's IPAM store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpamEntry {
    /// The allocated address.
    pub address: IpAddr,
    /// `(container ID, interface)`, or `None` when the file does not parse.
    pub owner: Option<(String, String)>,
}

/// A lab node's CNI plugin, configured the way `meshctl lab` configures it for its own pods.
#[derive(Debug, Clone)]
pub struct NodeCni {
    node: String,
    namespace: String,
    plugin: PathBuf,
    config: Value,
    ipam_dir: PathBuf,
    pin_dir: PathBuf,
}

impl NodeCni {
    /// The plugin of `node`: reads the conflist meshd installed in the node's CNI directory
    /// (waiting up to 30 s for it, as a kubelet would) and turns its first plugin into the
    /// plugin's stdin configuration, with `bpfPinDir` rewritten from the node's view
    /// (`/sys/fs/bpf/…`) to the host's (the plugin runs in the host's mount namespace).
    pub fn new(lab: &Lab, node: &str) -> anyhow::Result<NodeCni> {
        let st = lab.status_json()?;
        let n = st["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == node)
            .with_context(|| format!("lab {} has no node {node}", lab.name()))?;
        let field = |k: &str| -> anyhow::Result<String> {
            n[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("lab status: node {node} has no {k}"))
        };
        let namespace = field("namespace")?;
        let state_dir = PathBuf::from(field("state_dir")?);
        let pin_dir = PathBuf::from(field("bpf_pin_dir")?);
        let node_dir = state_dir
            .parent()
            .context("the node's state directory has no parent")?;
        let path = node_dir.join("cni").join(CONFLIST);
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            match std::fs::read_to_string(&path) {
                Ok(text) => break text,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => bail!("{}: {e} (is meshd on {node} ready?)", path.display()),
            }
        };
        let list: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut config = list["plugins"][0].clone();
        config["cniVersion"] = list["cniVersion"].clone();
        config["name"] = list["name"].clone();
        if let Some(dir) = config["bpfPinDir"].as_str() {
            let node_bpffs = pin_dir
                .parent()
                .context("the node's pin directory has no parent")?;
            if let Ok(rest) = Path::new(dir).strip_prefix(HOST_BPFFS) {
                config["bpfPinDir"] = serde_json::json!(node_bpffs.join(rest));
            }
        }
        let ipam_dir = PathBuf::from(
            config["ipamDir"]
                .as_str()
                .with_context(|| format!("{} has no ipamDir", path.display()))?,
        );
        let plugin = bin("meshd-cni");
        if !plugin.exists() {
            bail!(
                "{} missing: build the workspace's binaries",
                plugin.display()
            );
        }
        Ok(NodeCni {
            node: node.to_string(),
            namespace,
            plugin,
            config,
            ipam_dir,
            pin_dir,
        })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's network namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The plugin configuration handed to the plugin on stdin.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// The node's IPAM store.
    pub fn ipam_dir(&self) -> &Path {
        &self.ipam_dir
    }

    /// The node's pinned tc datapath, as the host sees it.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The runtime's command line for `command` on `container_id`: `nsenter` into the node's
    /// network namespace (which execs the plugin in place, so the child is the plugin), in a
    /// process group of its own (so stray `ip` children of a killed plugin can be waited for).
    pub fn command(&self, command: &str, container_id: &str, netns: Option<&str>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.namespace))
            .arg("--")
            .arg(&self.plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", POD_IFNAME)
            .env(
                "CNI_PATH",
                self.plugin.parent().unwrap_or(Path::new("/")).as_os_str(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(ns) = netns {
            cmd.env("CNI_NETNS", format!("/run/netns/{ns}"));
        }
        cmd
    }

    /// Start `command` with `config` on stdin (stdin is written and closed before returning).
    pub fn spawn_with(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&str>,
        config: &Value,
    ) -> anyhow::Result<Child> {
        let mut child = self
            .command(command, container_id, netns)
            .spawn()
            .context("starting meshd-cni")?;
        let mut stdin = child.stdin.take().context("meshd-cni stdin")?;
        // The configuration fits a pipe buffer: this never waits for the plugin.
        stdin
            .write_all(config.to_string().as_bytes())
            .context("writing the CNI configuration")?;
        drop(stdin);
        Ok(child)
    }

    /// Start `command` with the node's configuration.
    pub fn spawn(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&str>,
    ) -> anyhow::Result<Child> {
        self.spawn_with(command, container_id, netns, &self.config)
    }

    /// Run `command` with `config` on stdin to completion.
    pub fn run_with(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&str>,
        config: &Value,
    ) -> anyhow::Result<PluginOutput> {
        let out = self
            .spawn_with(command, container_id, netns, config)?
            .wait_with_output()
            .context("waiting for meshd-cni")?;
        Ok(PluginOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Run `command` with the node's configuration to completion.
    pub fn run(
        &self,
        command: &str,
        container_id: &str,
        netns: Option<&str>,
    ) -> anyhow::Result<PluginOutput> {
        self.run_with(command, container_id, netns, &self.config)
    }

    /// ADD `container_id` in pod namespace `netns`.
    pub fn add(&self, container_id: &str, netns: &str) -> anyhow::Result<Attached> {
        let out = self
            .run("ADD", container_id, Some(netns))?
            .ok(&format!("ADD {container_id}"))?;
        Attached::from_result(container_id, &out.stdout)
    }

    /// DEL `container_id` (without `CNI_NETNS`, as after the sandbox is gone).
    pub fn del(&self, container_id: &str) -> anyhow::Result<()> {
        self.run("DEL", container_id, None)?
            .ok(&format!("DEL {container_id}"))
            .map(drop)
    }

    /// CHECK `container_id` in `netns` against its ADD result (`prevResult`).
    pub fn check(&self, pod: &Attached, netns: &str) -> anyhow::Result<()> {
        let mut config = self.config.clone();
        config["prevResult"] = pod.result.clone();
        self.run_with("CHECK", &pod.container_id, Some(netns), &config)?
            .ok(&format!("CHECK {}", pod.container_id))
            .map(drop)
    }

    /// GC keeping only `valid` (container IDs, all on [`POD_IFNAME`]).
    pub fn gc(&self, valid: &[String]) -> anyhow::Result<()> {
        let mut config = self.config.clone();
        config["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|id| serde_json::json!({"containerID": id, "ifname": POD_IFNAME}))
            .collect();
        self.run_with("GC", "", None, &config)?.ok("GC").map(drop)
    }

    /// Every allocation in the IPAM store (one file per address, `container\nifname\n`).
    pub fn ipam(&self) -> anyhow::Result<Vec<IpamEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.ipam_dir)
            .with_context(|| format!("reading {}", self.ipam_dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(address) = name.parse::<IpAddr>() else {
                continue;
            };
            let owner = std::fs::read_to_string(entry.path()).ok().and_then(|t| {
                let (c, i) = t.strip_suffix('\n')?.split_once('\n')?;
                Some((c.to_string(), i.to_string()))
            });
            out.push(IpamEntry { address, owner });
        }
        out.sort();
        Ok(out)
    }

    /// Files in the IPAM store that are not allocations (other than its lock): leftovers.
    pub fn ipam_strays(&self) -> anyhow::Result<Vec<String>> {
        use std::os::unix::fs::DirEntryExt as _;
        let mut live = BTreeSet::new();
        let mut others = Vec::new();
        for entry in std::fs::read_dir(&self.ipam_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<IpAddr>().is_ok() {
                live.insert(entry.ino());
            } else if name != ".lock" {
                others.push((entry.ino(), name));
            }
        }
        // An owner's index link is no stray while an address shares its file.
        Ok(others
            .into_iter()
            .filter(|(ino, name)| {
                !(name.starts_with(meshd_cni::ipam::INDEX_PREFIX) && live.contains(ino))
            })
            .map(|(_, name)| name)
            .collect())
    }

    /// The host veths (`mshd*`) in the node's network namespace.
    pub fn host_veths(&self) -> anyhow::Result<BTreeSet<String>> {
        let out = testkit::netns::run("ip", &["-n", &self.namespace, "-j", "link", "show"])?;
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).context("ip -j link")?;
        Ok(links
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("mshd"))
            .map(str::to_string)
            .collect())
    }

    /// Interfaces with a pinned `from_pod` link (`link_ingress_<ifname>` in the pin directory).
    pub fn pinned_pod_links(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(&self.pin_dir)
            .with_context(|| format!("reading {}", self.pin_dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(ifname) = name.strip_prefix("link_ingress_") {
                out.insert(ifname.to_string());
            }
        }
        Ok(out)
    }

    /// The number of local pod addresses in the node's BPF map, as meshd reports it
    /// (`meshctl status -o json` inside the node → `datapath.local_pods`).
    pub fn local_pods(&self, lab: &Lab) -> anyhow::Result<u64> {
        let text = lab.exec(&self.node, &["meshctl", "status", "-o", "json"])?;
        let st: Value = serde_json::from_str(&text).context("meshctl status -o json")?;
        st["datapath"]["local_pods"]
            .as_u64()
            .with_context(|| format!("no datapath.local_pods in {st}"))
    }

    /// Poll [`NodeCni::local_pods`] until it is `want` (meshd refreshes it every second).
    pub fn wait_local_pods(&self, lab: &Lab, want: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.local_pods(lab);
            if matches!(got, Ok(n) if n == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: local-pod map holds {got:?} addresses after {timeout:?}, want {want}",
                    self.node
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Pod network namespaces created in bulk and all deleted on drop ([`testkit::NetnsSet`]),
/// named so that `meshctl lab down` owns them too.
#[derive(Debug, Default)]
pub struct PodNamespaces {
    set: NetnsSet,
}

impl PodNamespaces {
    /// No namespaces yet.
    pub fn new() -> PodNamespaces {
        PodNamespaces::default()
    }

    /// The pod namespace name `<lab>-<node>-p<index>` (a name `meshctl lab down` also owns).
    pub fn name(lab: &Lab, node: &str, index: u32) -> String {
        format!("{}-{node}-p{index}", lab.name())
    }

    /// Create `names` (owned first, so a partial failure is still cleaned up).
    pub fn create(&mut self, names: &[String]) -> anyhow::Result<()> {
        Ok(self.set.create(names)?)
    }

    /// Delete some of them now.
    pub fn delete(&mut self, names: &[String]) -> anyhow::Result<()> {
        Ok(self.set.delete(names)?)
    }

    /// The namespaces still owned.
    pub fn names(&self) -> &[String] {
        self.set.names()
    }
}

/// Percentile `p` (0–100, nearest rank) of sorted `samples`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_name_is_the_plugins() {
        let n = host_veth_name("abc", "eth0");
        assert_eq!(n.len(), 12);
        assert!(n.starts_with("mshd"));
        assert_ne!(n, host_veth_name("abc", "eth1"));
    }

    #[test]
    fn attached_decodes_a_result() {
        let r = r#"{"cniVersion":"1.1.0","interfaces":[{"name":"mshd01020304"},{"name":"eth0","sandbox":"/run/netns/x"}],
            "ips":[{"address":"10.244.1.3/32","interface":1},{"address":"fd00:244:0:1::3/128","interface":1}]}"#;
        let a = Attached::from_result("x", r).unwrap();
        assert_eq!(a.host_veth, "mshd01020304");
        assert_eq!(a.ipv4, Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(a.ipv6, "fd00:244:0:1::3".parse::<Ipv6Addr>().unwrap());
        assert!(Attached::from_result("x", "{}").is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
