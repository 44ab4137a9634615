//! Kubernetes labs (`lab up --registry kubernetes`): the lab's API server in the underlay
//! namespace with a Node per lab node — the real kube-apiserver
//! ([`crate::kube_apiserver::lab`]) when it is built, else (or with `--apiserver mock`) the
//! mock (`fake-apiserver`, see [`crate::apiserver`]) — and `lab set`, which changes the
//! `meshd-config` ConfigMap every meshd watches.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::host::{binary, step};
use crate::plan::*;
use crate::state::{load_state, Paths};
use meshd::registry::kube::client::client as kube_client;
use meshd::settings::CONFIG_MAP_NAME;

/// Namespace of the lab's `meshd-config` ConfigMap (as in deploy/).
pub const CONFIG_NAMESPACE: &str = "meshd-system";

/// Where the lab's mock API server listens, inside the underlay namespace.
pub(crate) const APISERVER_PORT: u16 = 6443;

/// The mock API server's request log in the lab's directory, beside `kubeconfig`.
pub const APISERVER_AUDIT_LOG: &str = "apiserver-audit.jsonl";

/// `state.apiserver` of the real kube-apiserver.
pub(crate) const REAL: &str = "kube-apiserver";
/// `state.apiserver` of the mock.
pub(crate) const MOCK: &str = "mock";

/// Which API server `lab up --apiserver CHOICE` starts: [`REAL`] or [`MOCK`]; `auto` takes the
/// real one when it can run here and says why not otherwise.
pub(crate) fn choose_apiserver(choice: &str) -> anyhow::Result<&'static str> {
    let unavailable = crate::kube_apiserver::lab::unavailable_reason;
    match choice {
        "auto" => Ok(match unavailable() {
            None => REAL,
            Some(why) => {
                step(format!(
                    "kubernetes lab on the MOCK API server (fake-apiserver): {why}"
                ));
                MOCK
            }
        }),
        REAL => match unavailable() {
            None => Ok(REAL),
            Some(why) => bail!("--apiserver kube-apiserver: {why}"),
        },
        MOCK => Ok(MOCK),
        other => bail!("--apiserver {other}: expected auto, kube-apiserver or mock"),
    }
}

/// Start the lab's API server (`which`: [`REAL`] or [`MOCK`]) in the underlay namespace on
/// the router's address, with a Node per lab node carrying its InternalIPs and pod CIDRs as
/// a cloud controller would set them.
pub(crate) fn start_apiserver(
    which: &str,
    paths: &Paths,
    nodes: u32,
    pool: bool,
) -> anyhow::Result<()> {
    if which == REAL {
        step(format!(
            "Kubernetes API server: kube-apiserver {} with etcd, deploy/'s RBAC and the lab's Nodes",
            crate::kube_apiserver::VERSION
        ));
        return crate::kube_apiserver::lab::start(paths, nodes, pool);
    }
    step("Kubernetes API server: the mock (fake-apiserver) with the lab's Nodes");
    start_mock(paths, nodes, pool)
}

/// The mock API server (a test double for faults the real one cannot produce on demand).
fn start_mock(paths: &Paths, nodes: u32, pool: bool) -> anyhow::Result<()> {
    let server = binary("fake-apiserver")?;
    let log = fs::File::create(paths.root.join("apiserver.log"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &underlay_ns(&paths.lab)])
        .arg(&server)
        .args(["--listen", &format!("{GATEWAY_V4}:{APISERVER_PORT}")])
        .arg("--kubeconfig")
        .arg(paths.kubeconfig())
        // Every request's verb, resource and client: tests check meshd's RBAC against it.
        .arg("--audit-log")
        .arg(paths.root.join(APISERVER_AUDIT_LOG));
    for i in 1..=nodes {
        let (u4, u6) = node_underlay(i);
        let (c4, c6) = node_pod_cidrs(i);
        // cluster-pool: no controller allocates spec.podCIDRs; every meshd claims its own.
        let cidrs = if pool {
            String::new()
        } else {
            format!("{c4},{c6}")
        };
        cmd.args(["--node", &format!("{}={u4},{u6}+{cidrs}", node_name(i))]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting fake-apiserver")?;
    std::mem::forget(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !paths.kubeconfig().exists() {
        if Instant::now() > deadline {
            bail!(
                "the mock API server did not start; see {}",
                paths.root.join("apiserver.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `meshctl lab set KEY=VALUE…`: change the lab's `meshd-config` ConfigMap (kubernetes labs).
/// Every meshd applies the change live.
pub fn set(lab: &str, pairs: &[(String, String)]) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    if state.registry != "kubernetes" {
        bail!("lab {lab} uses the directory registry; settings live in a ConfigMap only with `lab up --registry kubernetes`");
    }
    let paths = Paths::new(lab);
    // The API server listens inside the underlay namespace: talk to it from there.
    let ns = fs::File::open(format!("/run/netns/{}", underlay_ns(lab)))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the underlay namespace")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = kube_client(Some(&paths.kubeconfig())).await?;
        let api: Api<ConfigMap> = Api::namespaced(client, CONFIG_NAMESPACE);
        let data: std::collections::BTreeMap<String, String> = pairs.iter().cloned().collect();
        let name = CONFIG_MAP_NAME;
        if api.get_opt(name).await?.is_none() {
            let cm = ConfigMap {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(CONFIG_NAMESPACE.into()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await?;
        } else {
            let patch = serde_json::json!({ "data": data });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mock_is_chosen_by_name_and_an_unknown_server_is_refused() {
        assert_eq!(choose_apiserver("mock").ok(), Some(MOCK));
        let err = choose_apiserver("k3s").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("--apiserver k3s: expected auto, kube-apiserver or mock")
        );
    }

    #[test]
    fn auto_takes_the_real_server_exactly_when_it_can_run() {
        let auto = choose_apiserver("auto").ok();
        let real = choose_apiserver(REAL).ok();
        match crate::kube_apiserver::lab::unavailable_reason() {
            None => assert_eq!((auto, real), (Some(REAL), Some(REAL))),
            Some(_) => assert_eq!((auto, real), (Some(MOCK), None)),
        }
    }
}
