//! Pod identity distribution through the directory registry: `pods_per_node` Pods on every
//! simulated node, each one file under `objects/pods/<namespace>/` as the registry stores them
//! today (one write per pod, one watch event per pod to every agent), and the agents' memory
//! once they hold them all.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use integration::bench::stop::{check_stop, pause};
use serde_json::json;

use crate::phases::Run;
use crate::report::PodsResult;
use crate::sim;
use crate::writes::{existing, WriteCounter};

/// The namespace of the simulated pods.
const NAMESPACE: &str = "scale-bench";
/// How long the agents get to take in the pods before their memory is read.
const SETTLE: Duration = Duration::from_secs(10);

/// Pod `j` of simulated node `i`, as `kubectl get -o json` prints one.
fn pod(i: u32, j: u32, capacity: u32) -> serde_json::Value {
    let ips: Vec<String> = sim::pod_ips(i, j, capacity)
        .iter()
        .map(ToString::to_string)
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{}-p{j}", sim::name(i)),
            "namespace": NAMESPACE,
            "uid": format!("00000000-0000-4000-8000-{i:06}{j:06}"),
            "labels": {"app": format!("app{}", j % 10), "node": sim::name(i)},
        },
        "spec": {
            "nodeName": sim::name(i),
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}],
        },
        "status": {
            "phase": "Running",
            "podIP": ips[0],
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        },
    })
}

/// Writes `pods_per_node` pods for every simulated node and measures what it cost.
pub(crate) fn pods(run: &Run<'_>, pods_per_node: u32) -> anyhow::Result<PodsResult> {
    let objects = run.registry.join("objects");
    let ns_dir = existing(&objects.join("namespaces"))?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}});
    sim::write_atomic(&ns_dir, &format!("{NAMESPACE}.json"), &ns.to_string())?;
    let dir = existing(&objects.join("pods").join(NAMESPACE))?;
    let counter = WriteCounter::start(std::slice::from_ref(&dir))?;
    let t = Instant::now();
    let mut written = 0u64;
    for n in &run.sims {
        check_stop()?;
        for j in 0..pods_per_node {
            write_pod(&dir, n.index, j, run.capacity)?;
            written += 1;
        }
    }
    let write_s = t.elapsed().as_secs_f64();
    pause(SETTLE)?;
    let writes = counter.snapshot().total_since(&Default::default());
    let mut rss = None::<f64>;
    for a in &run.agents {
        let (m, w) = a.rss_kib()?;
        let mib = (m + w) as f64 / 1024.0;
        rss = Some(rss.map_or(mib, |r| r.max(mib)));
    }
    let per_pod = writes as f64 / written.max(1) as f64;
    Ok(PodsResult {
        pods_per_node,
        pods_written: written,
        write_s,
        writes_per_pod: per_pod,
        // Every agent of the cluster (simulated nodes included) watches every pod file.
        watch_events_per_pod_cluster: per_pod * (run.sims.len() + run.agents.len()) as f64,
        agent_rss_mib: rss,
    })
}

fn write_pod(dir: &Path, i: u32, j: u32, capacity: u32) -> anyhow::Result<()> {
    let p = pod(i, j, capacity);
    let name = p["metadata"]["name"]
        .as_str()
        .context("pod name")?
        .to_string();
    sim::write_atomic(dir, &format!("{name}.json"), &p.to_string())?;
    Ok(())
}
