//! A pod of the lab, made as a container runtime makes it: a network namespace, then
//! `meshd-cni` ADD inside the node with the configuration meshd installed.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::host::{binary, in_ns, ip};
use crate::node_root::image_binary;
use crate::plan::*;
use crate::state::{load_state, Paths};
use crate::HOST_BPFFS;
use meshd::cni_conf::CONFLIST;

/// Create pod `j` on node `i` the way a container runtime does: a network namespace, then
/// `meshd-cni` invoked with the CNI environment and configuration on stdin, inside the node.
pub(crate) fn add_pod(lab: &str, i: u32, j: u32, pool: bool) -> anyhow::Result<()> {
    let paths = Paths::new(lab);
    let pod = pod_ns(lab, i, j);
    let (want4, want6) = pod_addrs(i, j);
    let (c4, c6) = node_pod_cidrs(i);
    ip(&["netns", "add", &pod])?;
    in_ns(&pod, &["ip", "link", "set", "lo", "up"])?;
    let config = plugin_config(&paths, i)?;
    let cidrs = config["podCIDRs"].to_string();
    let expected = cidrs.contains(&c4.to_string()) && cidrs.contains(&c6.to_string());
    if !pool && !expected {
        bail!(
            "node {}'s CNI configuration has pod CIDRs {cidrs}, expected {c4} and {c6}",
            node_name(i)
        );
    }
    let result = run_cni(
        &paths,
        i,
        &CniCall {
            command: "ADD",
            container_id: &pod,
            netns: &format!("/run/netns/{pod}"),
            args: &format!("K8S_POD_NAME={}", pod_name(i, j)),
        },
    )?;
    let got: Vec<&str> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    let want = [format!("{want4}/32"), format!("{want6}/128")];
    if pool {
        // Addresses come from the block meshd claimed: one per family.
        if got.len() != 2 || !got[0].ends_with("/32") || !got[1].ends_with("/128") {
            bail!("meshd-cni gave {pod} {got:?}, expected one IPv4 and one IPv6 address");
        }
    } else if got != want {
        bail!("meshd-cni gave {pod} {got:?}, the lab expected {want:?}");
    }
    Ok(())
}

/// One invocation of `meshd-cni` as a container runtime makes it.
pub(crate) struct CniCall<'a> {
    /// `ADD` or `DEL`.
    pub(crate) command: &'a str,
    /// `CNI_CONTAINERID`.
    pub(crate) container_id: &'a str,
    /// `CNI_NETNS` (a path under `/run/netns`).
    pub(crate) netns: &'a str,
    /// `CNI_ARGS` (`K=V;K=V`).
    pub(crate) args: &'a str,
}

/// Run `meshd-cni` for node `i` with the CNI environment (interface `eth0`) and the plugin
/// configuration on stdin, in the node's network namespace but the host's mount namespace
/// (pod namespaces are pinned under /run/netns after the node's private mount namespace was
/// made). With a node root the plugin is the image's, run on the host as the kubelet runs the
/// copy the DaemonSet's `install-cni` init container installs. Returns the parsed result (`null` for a DEL, which prints nothing).
pub(crate) fn run_cni(
    paths: &Paths,
    i: u32,
    call: &CniCall<'_>,
) -> anyhow::Result<serde_json::Value> {
    let plugin = match load_state(&paths.lab)?.and_then(|s| s.node_root) {
        Some(root) => image_binary(&root, "meshd-cni"),
        None => binary("meshd-cni")?,
    };
    let config = plugin_config(paths, i)?;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node_ns(&paths.lab, i)))
        .arg("--")
        .arg(&plugin)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running meshd-cni")?;
    child
        .stdin
        .take()
        .context("meshd-cni stdin")?
        .write_all(config.to_string().as_bytes())
        .context("writing the CNI configuration")?;
    let out = child.wait_with_output().context("waiting for meshd-cni")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "meshd-cni {} for {} failed: {stdout}{}",
            call.command,
            call.container_id,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if stdout.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&stdout).with_context(|| format!("meshd-cni result: {stdout}"))
}

/// The plugin configuration a runtime would hand `meshd-cni`: the first plugin of the conflist
/// meshd installed (waiting, as the kubelet does, until the node is ready and it exists), with
/// the list's name and version.
pub(crate) fn plugin_config(paths: &Paths, i: u32) -> anyhow::Result<serde_json::Value> {
    let path = paths.node_dir(i).join("cni").join(CONFLIST);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        match fs::read_to_string(&path) {
            Ok(text) => break text,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => bail!(
                "meshd on {} never became ready ({}: {e})",
                node_name(i),
                path.display()
            ),
        }
    };
    let list: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut plugin = list["plugins"][0].clone();
    plugin["cniVersion"] = list["cniVersion"].clone();
    plugin["name"] = list["name"].clone();
    // meshd names its pin directory as the node sees it; the plugin runs in the host's mount
    // namespace (see add_pod), where the node's /sys/fs/bpf is the node's bpffs directory.
    if let Some(dir) = plugin["bpfPinDir"].as_str() {
        if let Ok(rest) = Path::new(dir).strip_prefix(HOST_BPFFS) {
            plugin["bpfPinDir"] = serde_json::json!(paths.bpffs(i).join(rest));
        }
    }
    Ok(plugin)
}
