//! `lab apply`, `lab delete` and `lab label`: Kubernetes objects in a lab without an API
//! server. Objects go to the lab's directory registry (see [`crate::object_store`]), where
//! meshd reads them. A Pod is also made for real the first time it is applied, as a kubelet
//! would: a network namespace on its node, `meshd-cni` ADD, one server process per
//! `containers[].ports` entry (see [`crate::serve`]), then the Pod object with `spec.nodeName`
//! and the addresses the CNI gave it in `status.podIPs`. What runs for a Pod is recorded in
//! `<lab>/applied-pods/<namespace>.<name>.json`, so `delete` and `lab down` stop it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1 as core;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::host::{in_ns, ip, pid_alive, require_root};
use crate::labels::{apply_changes, LabelChange};
use crate::object_store::ObjectStore;
use crate::objects::{namespace_object, parse_documents, served_ports, Kind, LabObject, ObjectRef};
use crate::plan::{applied_pod_ns, node_name, node_underlay};
use crate::pods::{run_cni, CniCall};
use crate::state::{load_state, LabState, Paths};
use meshd::cni_conf::CONFLIST;
use meshd_policy::model::NAMESPACE_NAME_LABEL;

/// What the lab runs for an applied Pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AppliedPod {
    /// The Pod's namespace.
    pub(crate) namespace: String,
    /// The Pod's name.
    pub(crate) name: String,
    /// Its node's index.
    pub(crate) node: u32,
    /// Its network namespace (under `/run/netns`), also its CNI container id.
    pub(crate) netns: String,
    /// Its port servers.
    pub(crate) servers: Vec<PortServer>,
}

/// One running port server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PortServer {
    /// `TCP`, `UDP` or `SCTP`.
    pub(crate) protocol: String,
    /// The port.
    pub(crate) port: u16,
    /// The server's pid.
    pub(crate) pid: u32,
}

impl AppliedPod {
    fn path(paths: &Paths, namespace: &str, name: &str) -> PathBuf {
        paths
            .root
            .join("applied-pods")
            .join(format!("{namespace}.{name}.json"))
    }

    /// Where its port servers log.
    fn log_path(paths: &Paths, namespace: &str, name: &str) -> PathBuf {
        Self::path(paths, namespace, name).with_extension("log")
    }

    /// The record of Pod `namespace/name`, if `apply` made it.
    pub(crate) fn load(paths: &Paths, namespace: &str, name: &str) -> anyhow::Result<Option<Self>> {
        let path = Self::path(paths, namespace, name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, paths: &Paths) -> anyhow::Result<()> {
        let path = Self::path(paths, &self.namespace, &self.name);
        let dir = path.parent().context("applied-pods directory")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".{}.{}.tmp", self.namespace, self.name));
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The pinned network namespace.
    pub(crate) fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// kubectl's name of a kind in its output (`pod/a created`).
fn kubectl_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => "namespace",
        Kind::Pod => "pod",
        Kind::NetworkPolicy => "networkpolicy.networking.k8s.io",
    }
}

fn kubectl_name(object: &ObjectRef) -> String {
    if object.namespace.is_empty() {
        format!("{}/{}", kubectl_kind(object.kind), object.name)
    } else {
        format!(
            "{}/{} (namespace {})",
            kubectl_kind(object.kind),
            object.name,
            object.namespace
        )
    }
}

fn lab_state(lab: &str) -> anyhow::Result<LabState> {
    require_root()?;
    load_state(lab)?.with_context(|| format!("lab {lab} is not up"))
}

/// `meshctl lab apply -f`: apply every object of `text` (multi-document YAML), all or none:
/// nothing is applied when a document is invalid. Returns one line per object, as kubectl
/// prints them (`created`, `configured`, `unchanged`).
pub fn apply(lab: &str, text: &str) -> anyhow::Result<Vec<String>> {
    let state = lab_state(lab)?;
    let paths = Paths::new(lab);
    let store = ObjectStore::new(&paths);
    let objects = parse_documents(text)?;
    if state.registry == "kubernetes" {
        eprintln!(
            "warning: lab {lab}'s meshd reads the mock API server, not the registry directory the objects go to"
        );
    }
    // Every check before the first write.
    let mut placements = BTreeMap::new();
    let mut next = AppliedPod::count(&paths)?;
    for object in &objects {
        let LabObject::Pod(pod) = object else {
            continue;
        };
        let reference = object.reference();
        let existing = store.read(&reference)?;
        let wanted = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let node = match (&existing, wanted) {
            (Some(old), wanted) => {
                let old_node = old["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut new_spec = serde_json::to_value(&pod.spec)?;
                if wanted.is_none() {
                    new_spec["nodeName"] = json!(old_node);
                }
                if new_spec != old["spec"] {
                    bail!("{reference}: spec: a Pod's spec cannot change once it is created (only its labels); delete it first");
                }
                node_index_of(&state, &old_node)
                    .with_context(|| format!("{reference}: its node {old_node} is gone"))?
            }
            (None, Some(name)) => node_index_of(&state, &name).with_context(|| {
                format!(
                    "{reference}: spec.nodeName: lab {lab} has no node {name:?} (nodes: {})",
                    node_names(&state).join(", ")
                )
            })?,
            (None, None) => {
                let nodes: Vec<u32> = state.nodes.iter().map(|n| n.index).collect();
                if nodes.is_empty() {
                    bail!("lab {lab} has no node to run {reference} on");
                }
                next += 1;
                nodes[(next - 1) % nodes.len()]
            }
        };
        placements.insert(reference, node);
    }

    let mut report = Vec::new();
    // Namespaces first (also those Pods and policies need), then Pods, then policies.
    let mut namespaces: BTreeMap<String, Value> = BTreeMap::new();
    for object in &objects {
        let reference = object.reference();
        match object {
            LabObject::Namespace(_) => {
                namespaces.insert(reference.name.clone(), object.to_json());
            }
            _ => {
                let implicit = ObjectRef {
                    kind: Kind::Namespace,
                    namespace: String::new(),
                    name: reference.namespace.clone(),
                };
                if !namespaces.contains_key(&implicit.name) && store.read(&implicit)?.is_none() {
                    namespaces.insert(
                        implicit.name.clone(),
                        json!(namespace_object(&implicit.name)),
                    );
                }
            }
        }
    }
    for (name, value) in &namespaces {
        let reference = ObjectRef {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.clone(),
        };
        report.push(write_object(&store, &reference, value)?);
    }
    for object in &objects {
        let LabObject::Pod(pod) = object else {
            continue;
        };
        let reference = object.reference();
        let node = placements[&reference];
        match store.read(&reference)? {
            Some(mut old) => {
                // Only the labels (and annotations) of a running Pod change.
                old["metadata"]["labels"] = json!(pod.metadata.labels.clone().unwrap_or_default());
                old["metadata"]["annotations"] =
                    json!(pod.metadata.annotations.clone().unwrap_or_default());
                report.push(write_object(&store, &reference, &tidy(old))?);
            }
            None => {
                let value = create_pod(&state, &paths, pod, node)?;
                store.write(&reference, &value)?;
                report.push(format!(
                    "{} created on {}",
                    kubectl_name(&reference),
                    node_name(node)
                ));
            }
        }
    }
    for object in &objects {
        if let LabObject::NetworkPolicy(_) = object {
            report.push(write_object(
                &store,
                &object.reference(),
                &object.to_json(),
            )?);
        }
    }
    Ok(report)
}

/// Empty label and annotation maps are left out, as the API server prints them.
fn tidy(mut value: Value) -> Value {
    if let Some(meta) = value["metadata"].as_object_mut() {
        for key in ["labels", "annotations"] {
            if meta
                .get(key)
                .and_then(Value::as_object)
                .is_some_and(|m| m.is_empty())
            {
                meta.remove(key);
            }
        }
    }
    value
}

fn write_object(
    store: &ObjectStore,
    reference: &ObjectRef,
    value: &Value,
) -> anyhow::Result<String> {
    let existed = store.read(reference)?.is_some();
    let wrote = store.write(reference, value)?;
    let verb = match (existed, wrote) {
        (false, _) => "created",
        (true, true) => "configured",
        (true, false) => "unchanged",
    };
    Ok(format!("{} {verb}", kubectl_name(reference)))
}

fn node_index_of(state: &LabState, name: &str) -> Option<u32> {
    state
        .nodes
        .iter()
        .map(|n| n.index)
        .find(|i| node_name(*i) == name)
}

fn node_names(state: &LabState) -> Vec<String> {
    state.nodes.iter().map(|n| node_name(n.index)).collect()
}

impl AppliedPod {
    /// How many Pods `apply` made (round-robin placement goes on from there).
    fn count(paths: &Paths) -> anyhow::Result<usize> {
        Ok(Self::all(paths)?.len())
    }

    /// Every Pod `apply` made in the lab.
    pub(crate) fn all(paths: &Paths) -> anyhow::Result<Vec<Self>> {
        let dir = paths.root.join("applied-pods");
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') || !file.ends_with(".json") {
                continue;
            }
            let text = fs::read_to_string(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            out.push(
                serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", entry.path().display()))?,
            );
        }
        Ok(out)
    }
}

/// Make Pod `pod` on node `i`: its network namespace, `meshd-cni` ADD, its port servers. Returns
/// the Pod object to store (with `spec.nodeName` and `status`). On failure, whatever was made
/// is removed again.
fn create_pod(state: &LabState, paths: &Paths, pod: &core::Pod, i: u32) -> anyhow::Result<Value> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut applied = AppliedPod {
        namespace: namespace.clone(),
        name: name.clone(),
        node: i,
        netns: applied_pod_ns(&state.name, &namespace, &name),
        servers: Vec::new(),
    };
    applied.save(paths)?;
    match start_pod(paths, pod, &mut applied) {
        Ok(addresses) => {
            let mut value = json!(pod);
            value["spec"]["nodeName"] = json!(node_name(i));
            let (host_ip, _) = node_underlay(i);
            value["status"] = json!({
                "phase": "Running",
                "hostIP": host_ip.to_string(),
                "podIP": addresses.first().cloned().unwrap_or_default(),
                "podIPs": addresses.iter().map(|a| json!({"ip": a})).collect::<Vec<_>>(),
            });
            Ok(value)
        }
        Err(err) => {
            teardown_pod(paths, &applied);
            Err(err.context(format!(
                "creating Pod {namespace}/{name} on {}",
                node_name(i)
            )))
        }
    }
}

/// The namespace, the CNI ADD and the servers of `applied`; the pod's addresses.
fn start_pod(
    paths: &Paths,
    pod: &core::Pod,
    applied: &mut AppliedPod,
) -> anyhow::Result<Vec<String>> {
    ip(&["netns", "add", &applied.netns])?;
    in_ns(&applied.netns, &["ip", "link", "set", "lo", "up"])?;
    let result = run_cni(
        paths,
        applied.node,
        &CniCall {
            command: "ADD",
            container_id: &applied.netns,
            netns: &applied.netns_path().to_string_lossy(),
            args: &format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                applied.namespace, applied.name
            ),
        },
    )?;
    let addresses: Vec<String> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect();
    if addresses.is_empty() {
        bail!("meshd-cni gave no address: {result}");
    }
    let log = AppliedPod::log_path(paths, &applied.namespace, &applied.name);
    for port in served_ports(pod) {
        let pid = start_server(applied, &port.protocol, port.port, &log)?;
        applied.servers.push(PortServer {
            protocol: port.protocol,
            port: port.port,
            pid,
        });
        applied.save(paths)?;
    }
    Ok(addresses)
}

/// Start `meshctl lab serve` for one port in the pod and wait until it is ready; its pid.
fn start_server(
    applied: &AppliedPod,
    protocol: &str,
    port: u16,
    log_path: &Path,
) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("locating meshctl")?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut child = Command::new(exe)
        .args(["lab", "serve", "--netns"])
        .arg(applied.netns_path())
        .args(["--protocol", protocol, "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting a port server")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("port server stdout")?;
    // The server prints `ready` once bound, then nothing more.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "the {protocol}/{port} server of Pod {}/{} did not start (see {})",
            applied.namespace,
            applied.name,
            log_path.display()
        );
    }
    // Not waited for: the server outlives meshctl and is reparented to init.
    std::mem::forget(child);
    Ok(pid)
}

/// Stop everything `apply` made for a Pod: its servers, its CNI attachment (when the node
/// still runs), its network namespace and its record.
pub(crate) fn teardown_pod(paths: &Paths, applied: &AppliedPod) {
    for server in &applied.servers {
        stop_server(server.pid);
    }
    let conflist = paths.node_dir(applied.node).join("cni").join(CONFLIST);
    if conflist.exists() && applied.netns_path().exists() {
        let del = run_cni(
            paths,
            applied.node,
            &CniCall {
                command: "DEL",
                container_id: &applied.netns,
                netns: &applied.netns_path().to_string_lossy(),
                args: &format!(
                    "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                    applied.namespace, applied.name
                ),
            },
        );
        if let Err(err) = del {
            eprintln!("warning: {err:#}");
        }
    }
    if applied.netns_path().exists() {
        if let Err(err) = ip(&["netns", "del", &applied.netns]) {
            eprintln!("warning: {err:#}");
        }
    }
    let _ = fs::remove_file(AppliedPod::path(paths, &applied.namespace, &applied.name));
    let _ = fs::remove_file(AppliedPod::log_path(
        paths,
        &applied.namespace,
        &applied.name,
    ));
}

/// SIGTERM, then SIGKILL, a port server (only if the pid still is one: pids are reused).
fn stop_server(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let is_server = || {
        pid_alive(pid)
            && fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"serve"))
    };
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        if !is_server() {
            return;
        }
        let _ = kill(Pid::from_raw(raw), signal);
        let deadline = Instant::now() + Duration::from_millis(500);
        while is_server() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `meshctl lab delete -f`: delete every object of `text` (checked as `apply` checks it).
/// A Pod is stopped (servers, CNI DEL, namespace); a Namespace takes its Pods and policies
/// with it, as the API server does. Objects that do not exist are reported and skipped.
pub fn delete(lab: &str, text: &str) -> anyhow::Result<Vec<String>> {
    lab_state(lab)?;
    let paths = Paths::new(lab);
    let store = ObjectStore::new(&paths);
    let objects = parse_documents(text)?;
    let mut report = Vec::new();
    // Policies, then Pods, then Namespaces (with what is left in them).
    let mut order: Vec<ObjectRef> = objects.iter().map(LabObject::reference).collect();
    order.sort_by_key(|r| match r.kind {
        Kind::NetworkPolicy => 0,
        Kind::Pod => 1,
        Kind::Namespace => 2,
    });
    for reference in order {
        let found = match reference.kind {
            Kind::NetworkPolicy => store.remove(&reference)?,
            Kind::Pod => delete_pod(&paths, &store, &reference)?,
            Kind::Namespace => {
                for kind in [Kind::NetworkPolicy, Kind::Pod] {
                    for (inner, _) in store.list(kind)? {
                        if inner.namespace == reference.name {
                            if kind == Kind::Pod {
                                delete_pod(&paths, &store, &inner)?;
                            } else {
                                store.remove(&inner)?;
                            }
                            report.push(format!("{} deleted", kubectl_name(&inner)));
                        }
                    }
                }
                store.remove(&reference)?
            }
        };
        if found {
            report.push(format!("{} deleted", kubectl_name(&reference)));
        } else {
            report.push(format!("{} not found", kubectl_name(&reference)));
        }
    }
    Ok(report)
}

fn delete_pod(paths: &Paths, store: &ObjectStore, reference: &ObjectRef) -> anyhow::Result<bool> {
    let applied = AppliedPod::load(paths, &reference.namespace, &reference.name)?;
    if let Some(applied) = &applied {
        teardown_pod(paths, applied);
    }
    Ok(store.remove(reference)? || applied.is_some())
}

/// What `meshctl lab label` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelTarget {
    /// `pod NS/NAME`.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// `namespace NAME`.
    Namespace(String),
}

/// `meshctl lab label`: change an object's labels as `kubectl label` does and rewrite its
/// file atomically. Returns kubectl's line (`pod/a labeled`, `... not labeled`).
pub fn label(
    lab: &str,
    target: &LabelTarget,
    changes: &[LabelChange],
    overwrite: bool,
) -> anyhow::Result<String> {
    lab_state(lab)?;
    let store = ObjectStore::new(&Paths::new(lab));
    let reference = match target {
        LabelTarget::Pod { namespace, name } => ObjectRef {
            kind: Kind::Pod,
            namespace: namespace.clone(),
            name: name.clone(),
        },
        LabelTarget::Namespace(name) => ObjectRef {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.clone(),
        },
    };
    let mut value = store
        .read(&reference)?
        .with_context(|| format!("{reference} not found in lab {lab}"))?;
    let labels: BTreeMap<String, String> =
        serde_json::from_value(value["metadata"]["labels"].clone()).unwrap_or_default();
    let protected = (reference.kind == Kind::Namespace)
        .then_some((NAMESPACE_NAME_LABEL, reference.name.as_str()));
    let new = apply_changes(&labels, changes, overwrite, protected)
        .with_context(|| format!("labelling {reference}"))?;
    if new == labels {
        return Ok(format!("{} not labeled", kubectl_name(&reference)));
    }
    value["metadata"]["labels"] = json!(new);
    store.write(&reference, &tidy(value))?;
    Ok(format!("{} labeled", kubectl_name(&reference)))
}

/// `lab down`'s part: stop every applied Pod's servers (their namespaces, records and objects
/// go with the lab's). Best effort.
pub(crate) fn stop_all_servers(lab: &str) {
    let paths = Paths::new(lab);
    for applied in AppliedPod::all(&paths).unwrap_or_default() {
        for server in &applied.servers {
            stop_server(server.pid);
        }
    }
}

/// `lab remove-node`'s part: the applied Pods on node `i` are stopped and their objects deleted.
pub(crate) fn remove_applied_pods_of(paths: &Paths, i: u32) -> anyhow::Result<()> {
    let store = ObjectStore::new(paths);
    for applied in AppliedPod::all(paths)? {
        if applied.node == i {
            teardown_pod(paths, &applied);
            store.remove(&ObjectRef {
                kind: Kind::Pod,
                namespace: applied.namespace.clone(),
                name: applied.name.clone(),
            })?;
        }
    }
    Ok(())
}
