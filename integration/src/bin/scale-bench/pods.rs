//! Pod identity distribution through the directory registry, the way meshd distributes it:
//! each node's meshd publishes its own pods as one endpoint batch
//! (`objects/endpoints/<node>.json`, `meshd::policy::endpoint_batch`) and every agent follows
//! the batches, not the pods.
//!
//! * Every simulated node stands for its own meshd: its `pods_per_node` pods are published as
//!   its batch, one write (what a real agent's coalescing makes of a burst of pod starts). The
//!   batch is written here from the documented format (docs/policy.md), not with meshd's own
//!   encoder: the agents read it as any other node's.
//! * Every real agent gets `pods_per_node` Pod objects of its own node, written together into
//!   `objects/pods/` as the API server would hold them (a directory has no field selector:
//!   each agent reads the pod files and keeps its own node's): what is measured there is the
//!   real agents' coalescing, the batch writes their pods cost.
//!
//! Reported: batch writes per pod creation (all nodes, and the real agents' own), watch events
//! per pod creation for one agent (one per batch write of another node), the time until every
//! real agent holds every pod, and the agents' memory then.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use integration::bench::stop::{check_stop, pause};
use serde_json::json;

use crate::agents::wait_status;
use crate::phases::Run;
use crate::report::PodsResult;
use crate::sim;
use crate::writes::{existing, WriteCounter};

/// The namespace of the benchmark's pods.
const NAMESPACE: &str = "scale-bench";
/// How long the agents get to take in every pod.
const DISTRIBUTED: Duration = Duration::from_secs(300);
/// How long the agents' batch writes get to settle after their pods were written.
const SETTLE: Duration = Duration::from_secs(3);

/// Pod `j` of node `node`: its name and labels (the label set is one of ten per node).
struct Pod {
    name: String,
    node: String,
    app: u32,
    addresses: Vec<std::net::IpAddr>,
}

fn pod(node: &str, j: u32, addresses: Vec<std::net::IpAddr>) -> Pod {
    Pod {
        name: format!("{node}-p{j}"),
        node: node.to_owned(),
        app: j % 10,
        addresses,
    }
}

fn labels(node: &str, app: u32) -> serde_json::Value {
    json!({"app": format!("app{app}"), "node": node})
}

/// The Pod object of `pod`, as `kubectl get -o json` prints one.
fn pod_object(pod: &Pod) -> serde_json::Value {
    let ips: Vec<String> = pod.addresses.iter().map(ToString::to_string).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": NAMESPACE, "labels": labels(&pod.node, pod.app)},
        "spec": {
            "nodeName": pod.node,
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}],
        },
        "status": {
            "phase": "Running",
            "podIP": ips.first(),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        },
    })
}

/// Node `node`'s endpoint batch holding `pods` (format version 1: a table of label sets, each
/// pod naming its entry).
fn batch(node: &str, pods: &[Pod]) -> String {
    json!({
        "v": 1,
        "node": node,
        "labels": (0..10).map(|app| labels(node, app)).collect::<Vec<_>>(),
        "pods": pods.iter().map(|p| json!({
            "ns": NAMESPACE,
            "name": p.name,
            "l": p.app,
            "ips": p.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Addresses for pod `j` of a real agent: host `200 + j` of its first IPv4 pod CIDR (the
/// lab's CNI allocates from the start of the block; nothing is sent to them).
fn agent_pod_ips(registry: &Path, node: &str, j: u32) -> anyhow::Result<Vec<std::net::IpAddr>> {
    let text = std::fs::read_to_string(registry.join(format!("{node}.json")))
        .with_context(|| format!("reading {node}'s record"))?;
    let record = keyexchange::NodeRecord::from_json(node, &text)?;
    let v4 = record
        .pod_cidrs
        .iter()
        .find_map(|c| match c {
            ipnet::IpNet::V4(n) => Some(*n),
            ipnet::IpNet::V6(_) => None,
        })
        .with_context(|| format!("{node} has no IPv4 pod CIDR"))?;
    let host = u32::from(v4.network()) + 200 + j;
    anyhow::ensure!(
        v4.contains(&std::net::Ipv4Addr::from(host)),
        "{node}'s block is too small"
    );
    Ok(vec![std::net::Ipv4Addr::from(host).into()])
}

/// Publishes `pods_per_node` pods for every node and measures what it cost.
pub(crate) fn pods(run: &Run<'_>, pods_per_node: u32) -> anyhow::Result<PodsResult> {
    let objects = run.registry.join("objects");
    let ns_dir = existing(&objects.join("namespaces"))?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}});
    sim::write_atomic(&ns_dir, &format!("{NAMESPACE}.json"), &ns.to_string())?;
    let pod_dir = existing(&objects.join("pods").join(NAMESPACE))?;
    let batch_dir = existing(&objects.join("endpoints"))?;
    let counter = WriteCounter::start(&[batch_dir.clone(), pod_dir.clone()])?;
    let t = Instant::now();
    // The real agents' own pods, all at once, then the simulated nodes' batches.
    let mut agent_pods = 0u64;
    for a in &run.agents {
        for j in 0..pods_per_node {
            let p = pod(&a.name, j, agent_pod_ips(run.registry, &a.name, j)?);
            let object = pod_object(&p);
            sim::write_atomic(&pod_dir, &format!("{}.json", p.name), &object.to_string())?;
            agent_pods += 1;
        }
    }
    for n in &run.sims {
        check_stop()?;
        let name = n.name();
        let pods: Vec<Pod> = (0..pods_per_node)
            .map(|j| pod(&name, j, sim::pod_ips(n.index, j, run.capacity)))
            .collect();
        let content = batch(&name, &pods);
        sim::write_atomic(&batch_dir, &format!("{name}.json"), &content)?;
    }
    let write_s = t.elapsed().as_secs_f64();
    let sim_pods = u64::from(pods_per_node) * run.sims.len() as u64;
    let total = (sim_pods + agent_pods) as usize;
    let mut distributed_s = None::<f64>;
    for a in &run.agents {
        let held =
            |st: &crate::agents::Status| st.policy.as_ref().is_some_and(|p| p.pods_known >= total);
        match wait_status(a, t, DISTRIBUTED, Duration::from_millis(500), held) {
            Ok(took) => {
                let s = took.as_secs_f64();
                distributed_s = Some(distributed_s.map_or(s, |d| d.max(s)));
            }
            Err(last) => {
                let known = last.and_then(|st| st.policy).map(|p| p.pods_known);
                anyhow::bail!(
                    "node {} holds {known:?} pods of {total} after {} s",
                    a.name,
                    DISTRIBUTED.as_secs()
                );
            }
        }
    }
    pause(SETTLE)?;
    let counts = counter.snapshot();
    let agent_names: Vec<String> = run.agents.iter().map(|a| a.name.clone()).collect();
    // Files of the first directory (the batches) are keyed by name, the pods' `1/<name>`.
    let batches = crate::writes::Counts(
        counts
            .0
            .iter()
            .filter(|(k, _)| !k.starts_with("1/"))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    );
    let (agent_batch_writes, sim_batch_writes) = batches.since(&Default::default(), &agent_names);
    let batch_writes = agent_batch_writes + sim_batch_writes;
    let created = (sim_pods + agent_pods).max(1) as f64;
    let mut rss = None::<f64>;
    for a in &run.agents {
        let (m, w) = a.rss_kib()?;
        let mib = (m + w) as f64 / 1024.0;
        rss = Some(rss.map_or(mib, |r| r.max(mib)));
    }
    let writes_per_pod = batch_writes as f64 / created;
    Ok(PodsResult {
        pods_per_node,
        pods_written: sim_pods + agent_pods,
        write_s,
        writes_per_pod,
        agent_batch_writes,
        agent_pods,
        agent_writes_per_pod: agent_batch_writes as f64 / agent_pods.max(1) as f64,
        // One inotify event (or Kubernetes watch event) per batch write to every agent.
        watch_events_per_agent_per_pod: writes_per_pod,
        watch_events_per_pod_cluster: writes_per_pod * (run.sims.len() + run.agents.len()) as f64,
        distributed_s,
        agent_rss_mib: rss,
    })
}
