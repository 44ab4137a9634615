//! The real kube-apiserver of a kubernetes lab (`lab up --registry kubernetes`): etcd and the
//! API server in the lab's underlay namespace on the router's address (where every node
//! reaches it, as it reached the mock), detached so that they outlive `lab up` (`lab down`
//! kills every process in the namespace); `deploy/`'s Namespace, ServiceAccount and RBAC
//! (`kubectl kustomize deploy/`) applied by the admin; a Node per lab node with its
//! InternalIPs and, where the lab assigns them, `spec.podCIDRs`; and two kubeconfigs: the
//! admin's for the lab's tools (`lab set`, `audit`, tests) and meshd's, with its service
//! account's token, so the real authorizer judges every request meshd makes.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::{service_account_user, KubeApiServer, ServerConfig, StaticToken};
use crate::plan::{node_name, node_pod_cidrs, node_underlay, underlay_ns, GATEWAY_V4};
use crate::state::Paths;

/// meshd's namespace and service account in `deploy/`.
pub const MESHD_NAMESPACE: &str = "meshd-system";
/// meshd's service account in `deploy/`.
pub const MESHD_SERVICE_ACCOUNT: &str = "meshd";

/// The real server's audit log, relative to the lab's directory (beside `kubeconfig`).
pub const LAB_AUDIT_LOG: &str = "kube-apiserver/audit.jsonl";

/// Where the lab's API server listens (the mock's port too).
const PORT: u16 = 6443;

/// The kinds of `kubectl kustomize deploy/` the lab applies (the workloads stay out: the lab
/// runs meshd itself).
const RBAC_KINDS: [&str; 6] = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// The tools the real server needs besides its binary.
pub const TOOLS: [&str; 3] = ["etcd", "openssl", "kubectl"];

/// Why the real server cannot run here (its binary or a tool is missing), if it cannot.
pub fn unavailable_reason() -> Option<String> {
    if let Err(e) = super::binary() {
        return Some(e.to_string());
    }
    TOOLS
        .iter()
        .find(|t| !on_path(t))
        .map(|t| format!("{t} is not installed"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The repository's `deploy/` directory (`MESHD_DEPLOY_DIR` overrides it).
fn deploy_dir() -> PathBuf {
    std::env::var_os("MESHD_DEPLOY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"))
}

/// Starts the lab's real API server with `nodes` Nodes (with `spec.podCIDRs` unless `pool`:
/// then every meshd claims its own) and writes both kubeconfigs.
pub(crate) fn start(paths: &Paths, nodes: u32, pool: bool) -> anyhow::Result<()> {
    let meshd = StaticToken::service_account(MESHD_NAMESPACE, MESHD_SERVICE_ACCOUNT);
    let ul = underlay_ns(&paths.lab);
    let mut config = ServerConfig::loopback(paths.kube_apiserver_dir());
    config.netns = Some(ul.clone());
    config.bind = IpAddr::V4(GATEWAY_V4);
    config.port = Some(PORT);
    config.tokens.push(meshd.clone());
    let server = KubeApiServer::start(config).context("starting the lab's kube-apiserver")?;
    let admin = paths.kubeconfig();
    std::fs::copy(server.admin_kubeconfig(), &admin)
        .with_context(|| format!("writing {}", admin.display()))?;
    server
        .write_kubeconfig(&paths.meshd_kubeconfig(), &meshd.token)
        .context("writing meshd's kubeconfig")?;
    server.detach();
    apply_rbac(&ul, &admin)?;
    wait_meshd_may_list_nodes(&ul, &admin)?;
    create_nodes(&ul, &admin, nodes, pool)
}

/// `kubectl ARGS` as the admin inside namespace `ns`, `stdin` fed in; its stdout.
fn kubectl(ns: &str, kubeconfig: &Path, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "kubectl", "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes())
            .context("writing to kubectl")?;
    }
    let out = child.wait_with_output().context("waiting for kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Namespace, ServiceAccount and RBAC objects `kubectl kustomize DIR` renders.
fn render_rbac(dir: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde::Deserialize as _;
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl kustomize")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut objects = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc)
            .with_context(|| format!("kubectl kustomize {} output", dir.display()))?;
        if RBAC_KINDS.contains(&v["kind"].as_str().unwrap_or_default()) {
            objects.push(v);
        }
    }
    Ok(objects)
}

fn apply_rbac(ns: &str, admin: &Path) -> anyhow::Result<()> {
    let objects = render_rbac(&deploy_dir())?;
    if objects.is_empty() {
        bail!(
            "kubectl kustomize {} rendered no RBAC",
            deploy_dir().display()
        );
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    kubectl(ns, admin, &["apply", "-f", "-"], &list.to_string())?;
    Ok(())
}

/// The authorizer follows RBAC changes through informers: wait until it lets meshd list Nodes.
fn wait_meshd_may_list_nodes(ns: &str, admin: &Path) -> anyhow::Result<()> {
    let user = service_account_user(MESHD_NAMESPACE, MESHD_SERVICE_ACCOUNT);
    for _ in 0..100 {
        if kubectl(
            ns,
            admin,
            &["auth", "can-i", "list", "nodes", "--as", &user],
            "",
        )
        .is_ok()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{user} was never allowed to list nodes after deploy/'s RBAC was applied")
}

/// The Nodes of a lab of `nodes` nodes, as a kubelet and a node IPAM controller create them:
/// `spec.podCIDR(s)` unless `pool` (then every meshd claims its own). Their addresses are
/// status, written apart ([`node_addresses`]).
fn node_objects(nodes: u32, pool: bool) -> Vec<serde_json::Value> {
    (1..=nodes)
        .map(|i| {
            let name = node_name(i);
            let (c4, c6) = node_pod_cidrs(i);
            let mut node = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            });
            if !pool {
                node["spec"] = serde_json::json!({
                    "podCIDR": c4.to_string(),
                    "podCIDRs": [c4.to_string(), c6.to_string()],
                });
            }
            node
        })
        .collect()
}

/// The status patch giving node `i` its InternalIPs (the underlay addresses).
fn node_addresses(i: u32) -> serde_json::Value {
    let (u4, u6) = node_underlay(i);
    serde_json::json!({"status": {"addresses": [
        {"type": "InternalIP", "address": u4.to_string()},
        {"type": "InternalIP", "address": u6.to_string()},
    ]}})
}

/// Creates the lab's Nodes and writes their addresses (the status subresource).
fn create_nodes(ns: &str, admin: &Path, nodes: u32, pool: bool) -> anyhow::Result<()> {
    let list =
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": node_objects(nodes, pool)});
    kubectl(ns, admin, &["create", "-f", "-"], &list.to_string())?;
    for i in 1..=nodes {
        kubectl(
            ns,
            admin,
            &[
                "patch",
                "node",
                &node_name(i),
                "--subresource=status",
                "--type=merge",
                "-p",
                &node_addresses(i).to_string(),
            ],
            "",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_carry_their_pod_cidrs_unless_the_pool_allocates() {
        let nodes = node_objects(2, false);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1]["metadata"]["name"], json!("n2"));
        assert_eq!(
            nodes[1]["spec"],
            json!({"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24", "fd00:244:0:2::/64"]})
        );
        assert!(node_objects(1, true)[0].get("spec").is_none());
        assert_eq!(
            node_addresses(1)["status"]["addresses"],
            json!([
                {"type": "InternalIP", "address": "198.18.0.11"},
                {"type": "InternalIP", "address": "fd00:198::11"},
            ])
        );
    }
}
