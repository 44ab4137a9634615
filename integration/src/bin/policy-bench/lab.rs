//! The lab a run measures: bringing it up (2 nodes) and down (a guard, whatever way the run
//! ends), running `meshctl`, applying and deleting objects through `meshctl lab apply/delete
//! -f -`, the pods' addresses (from their objects in the registry directory) and checking with
//! `meshctl lab probe` that the policy set is in force.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;

use crate::manifests::{BenchPod, PROBE_PORT};
use crate::stop::check_stop;

/// The window over which a meshd counts as idle.
const IDLE_WINDOW: Duration = Duration::from_millis(500);
/// CPU clock ticks (usually 10 ms each) all meshd together may use in [`IDLE_WINDOW`] and
/// still count as idle.
const IDLE_TICKS: u64 = 2;

/// A running lab; `meshctl lab down` on drop.
pub(crate) struct Lab {
    pub(crate) meshctl: PathBuf,
    pub(crate) name: String,
    pub(crate) registry_dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        eprintln!("policy-bench: lab down ({})", self.name);
        let _ = Command::new(&self.meshctl)
            .args(["lab", "down", "--name", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `meshctl ARGS` with `input` on stdin; its stdout, or an error with its stderr.
pub(crate) fn meshctl(
    meshctl: &Path,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
    let mut child = Command::new(meshctl)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", meshctl.display()))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
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

impl Lab {
    /// `meshctl lab up --nodes 2` under `name`; the guard exists before `up` runs, so a
    /// half-built lab is removed too.
    pub(crate) fn up(meshctl_path: &Path, name: &str) -> anyhow::Result<Lab> {
        let mut lab = Lab {
            meshctl: meshctl_path.to_path_buf(),
            name: name.to_string(),
            registry_dir: PathBuf::new(),
        };
        lab.run(
            &[
                "lab",
                "up",
                "--name",
                name,
                "--nodes",
                "2",
                "--pods-per-node",
                "1",
            ],
            None,
        )?;
        let status: serde_json::Value =
            serde_json::from_str(&lab.run(&["lab", "status", "--name", name, "-o", "json"], None)?)
                .context("parse lab status")?;
        lab.registry_dir = PathBuf::from(
            status["registry_dir"]
                .as_str()
                .ok_or_else(|| anyhow!("lab status has no registry_dir"))?,
        );
        Ok(lab)
    }

    pub(crate) fn run(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        meshctl(&self.meshctl, args, input)
    }

    /// `meshctl lab apply -f -` of `yaml`.
    pub(crate) fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        self.run(
            &["lab", "apply", "--name", &self.name, "-f", "-"],
            Some(yaml),
        )
        .map(drop)
    }

    /// `meshctl lab delete -f -` of `yaml`.
    pub(crate) fn delete(&self, yaml: &str) -> anyhow::Result<()> {
        self.run(
            &["lab", "delete", "--name", &self.name, "-f", "-"],
            Some(yaml),
        )
        .map(drop)
    }

    /// The `policy` object of `meshctl status -o json` on `node` (what its policy loop knows
    /// and when it last wrote the maps); `Null` when meshd has none.
    pub(crate) fn node_policy(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let meshctl = self.meshctl.to_string_lossy().into_owned();
        let out = self.run(
            &[
                "lab", "exec", "--name", &self.name, node, "--", &meshctl, "status", "-o", "json",
            ],
            None,
        )?;
        let status: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("parse {node}'s status"))?;
        Ok(status["policy"].clone())
    }

    /// The pids of the nodes' meshd processes.
    pub(crate) fn meshd_pids(&self) -> anyhow::Result<Vec<u32>> {
        let json = self.run(&["lab", "status", "--name", &self.name, "-o", "json"], None)?;
        let status = integration::LabStatus::from_json(&json).context("parse lab status")?;
        Ok(status.nodes.iter().filter_map(|n| n.meshd_pid).collect())
    }

    /// On-CPU and run-queue-wait nanoseconds of every thread of every meshd so far
    /// (`/proc/<pid>/task/*/schedstat`): over a flip, the wait says how long the daemons were
    /// ready to run but had no CPU.
    pub(crate) fn meshd_schedstat(pids: &[u32]) -> (u64, u64) {
        let mut texts = Vec::new();
        for pid in pids {
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for task in tasks.flatten() {
                    if let Ok(t) = std::fs::read_to_string(task.path().join("schedstat")) {
                        texts.push(t);
                    }
                }
            }
        }
        crate::stats::sum_schedstat(texts.iter().map(String::as_str))
    }

    /// Waits until every meshd has used at most [`IDLE_TICKS`] clock ticks of CPU over a
    /// [`IDLE_WINDOW`] (done compiling and writing), at most `max`; the time it took from
    /// `since`. On a shared 2-core machine a daemon still busy with a change would take CPU from
    /// what is measured next.
    pub(crate) fn wait_meshd_idle(
        &self,
        since: Instant,
        max: Duration,
    ) -> anyhow::Result<Duration> {
        let pids = self.meshd_pids()?;
        let ticks = || -> u64 {
            pids.iter()
                .filter_map(|&p| integration::bench::read_cpu_ticks(p).ok())
                .sum()
        };
        let mut before = ticks();
        loop {
            crate::stop::pause(IDLE_WINDOW)?;
            let now = ticks();
            let busy = now.saturating_sub(before);
            if busy <= IDLE_TICKS {
                return Ok(since.elapsed().saturating_sub(IDLE_WINDOW));
            }
            if since.elapsed() > max {
                bail!("meshd still busy after {max:?} ({busy} ticks in the last {IDLE_WINDOW:?})");
            }
            before = now;
        }
    }

    /// The network namespace `apply` made for `pod`.
    pub(crate) fn pod_netns(&self, pod: &BenchPod) -> String {
        format!("{}-pod-{}.{}", self.name, pod.namespace, pod.name)
    }

    /// `pod`'s IPv4 address, from its object's `status.podIPs`.
    pub(crate) fn pod_ipv4(&self, pod: &BenchPod) -> anyhow::Result<IpAddr> {
        let path = self
            .registry_dir
            .join("objects/pods")
            .join(pod.namespace)
            .join(format!("{}.json", pod.name));
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let obj: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        pod_ipv4_of(&obj).ok_or_else(|| anyhow!("{} has no IPv4 in status.podIPs", path.display()))
    }

    /// One `meshctl lab probe` round on TCP [`PROBE_PORT`], IPv4.
    pub(crate) fn probe(&self, timeout_ms: u64) -> anyhow::Result<Vec<ProbeResult>> {
        let t = timeout_ms.to_string();
        let port = PROBE_PORT.to_string();
        let out = self.run(
            &[
                "lab",
                "probe",
                "--name",
                &self.name,
                "--port",
                &port,
                "--family",
                "4",
                "--timeout-ms",
                &t,
                "-o",
                "json",
            ],
            None,
        )?;
        let doc: ProbeDocument = serde_json::from_str(&out).context("parse lab probe JSON")?;
        Ok(doc.results)
    }

    /// Probes until every `(from, to, allowed)` in `expect` holds (or `wait` passes); the time
    /// it took from `since`.
    pub(crate) fn wait_for_verdicts(
        &self,
        expect: &[(&BenchPod, &BenchPod, bool)],
        since: Instant,
        wait: Duration,
    ) -> anyhow::Result<Duration> {
        let mut last = Vec::new();
        while since.elapsed() < wait {
            check_stop()?;
            let results = self.probe(300)?;
            last = mismatches(&results, expect);
            if last.is_empty() {
                return Ok(since.elapsed());
            }
        }
        bail!(
            "the policies are not in force after {:?}: {}",
            wait,
            last.join(", ")
        )
    }
}

/// `status.podIPs[].ip` (else `status.podIP`) of a Pod object that is IPv4.
pub(crate) fn pod_ipv4_of(obj: &serde_json::Value) -> Option<IpAddr> {
    let status = &obj["status"];
    status["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["ip"].as_str())
        .chain(status["podIP"].as_str())
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4)
}

/// `meshctl lab probe -o json`.
#[derive(Debug, Deserialize)]
pub(crate) struct ProbeDocument {
    pub(crate) results: Vec<ProbeResult>,
}

/// One pair's verdict.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ProbeResult {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) allowed: bool,
}

/// The expectations `results` contradicts (or lacks), one line each.
pub(crate) fn mismatches(
    results: &[ProbeResult],
    expect: &[(&BenchPod, &BenchPod, bool)],
) -> Vec<String> {
    expect
        .iter()
        .filter_map(|(from, to, allowed)| {
            let (f, t) = (from.key(), to.key());
            match results.iter().find(|r| r.from == f && r.to == t) {
                Some(r) if r.allowed == *allowed => None,
                Some(r) => Some(format!(
                    "{f} -> {t} {} (want {})",
                    verdict_word(r.allowed),
                    verdict_word(*allowed)
                )),
                None => Some(format!("{f} -> {t} not probed")),
            }
        })
        .collect()
}

fn verdict_word(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "blocked"
    }
}
