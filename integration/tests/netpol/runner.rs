//! Runs the cases on a real lab through the lab CLI (`meshctl lab apply/delete/label/probe`):
//! applies each step, probes until the stated table appears (a bounded window: enforcement
//! lands asynchronously), records how long that took, and after each case deletes what it
//! applied, undoes its labels and waits for the all-allowed baseline.
//!
//! A pod's connection to itself is left out of every comparison, as upstream does: it never
//! leaves the pod's namespace, so no CNI sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use integration::lab::{bin, Lab};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use meshd_policy::model::Protocol;
use serde::Deserialize;

use super::cases::{Action, Case, Check};
use super::fixture;
use super::reachability::{diff, index, pod_names, Table};

/// How long a step's table may take to appear.
pub const WINDOW: Duration = Duration::from_secs(5);
/// How long the baseline may take to come back after a case.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(10);
/// How long the model's pods may take to come up and serve.
pub const STARTUP_WINDOW: Duration = Duration::from_secs(60);
/// The probe's per-connection timeout (override: `NETPOL_PROBE_TIMEOUT_MS`).
pub const PROBE_TIMEOUT_MS: u32 = 500;

/// Fails the test, naming what is missing, unless this `meshctl` has the policy lab commands
/// (`lab apply`, `lab delete`, `lab label`, `lab probe`: the lab-policy engineer's part).
pub fn require_policy_lab_cli() {
    let meshctl = bin("meshctl");
    for sub in ["apply", "delete", "label", "probe"] {
        let out = Command::new(&meshctl)
            .args(["lab", sub, "--help"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running {} (build it: cargo build --workspace --bins): {e}",
                    meshctl.display()
                )
            });
        assert!(
            out.status.success(),
            "`meshctl lab {sub}` does not exist in {}: the NetworkPolicy conformance suite drives \
             the lab through `meshctl lab apply/delete/label/probe` (contract 7), which this \
             build lacks. {}",
            meshctl.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// One `meshctl lab probe -o json` result.
#[derive(Debug, Deserialize)]
struct ProbeResult {
    from: String,
    to: String,
    port: u16,
    protocol: String,
    family: u8,
    allowed: bool,
}

/// The `meshctl lab probe -o json` document.
#[derive(Debug, Deserialize)]
struct ProbeReport {
    results: Vec<ProbeResult>,
}

/// The model's table from a `meshctl lab probe -o json` document of `protocol`/`port` over
/// `family`: pairs of other pods (the lab's own) are left out; a result of another probe or a
/// model pair missing is an error.
pub fn table_from_probe(
    json: &[u8],
    protocol: Protocol,
    port: u16,
    family: u8,
) -> anyhow::Result<Table> {
    let protocol_s = protocol.to_string();
    let report: ProbeReport = serde_json::from_slice(json).with_context(|| {
        format!(
            "lab probe output is not the contract's JSON: {}",
            String::from_utf8_lossy(json)
        )
    })?;
    let names = pod_names();
    let mut table = Table::all(false);
    let mut seen = BTreeSet::new();
    for r in report.results {
        if !(names.contains(&r.from) && names.contains(&r.to)) {
            continue;
        }
        if r.port != port || r.protocol != protocol_s || r.family != family {
            bail!("lab probe answered {r:?} to a probe of {protocol_s}/{port} IPv{family}");
        }
        table.set(index(&r.from), index(&r.to), r.allowed);
        seen.insert((r.from, r.to));
    }
    if seen.len() != names.len() * names.len() {
        bail!(
            "lab probe reported {} of the {} model pairs",
            seen.len(),
            names.len() * names.len()
        );
    }
    Ok(table)
}

/// How long one change took to show in the probes.
#[derive(Clone, Debug)]
pub struct Timing {
    /// `case step N`.
    pub what: String,
    /// From the lab command returning to the first matching table.
    pub elapsed: Duration,
    /// Probes it took.
    pub probes: u32,
}

/// What a case changed, to undo it.
#[derive(Default)]
struct Applied {
    policies: BTreeMap<String, networking::NetworkPolicy>,
    /// (kind, target, `key-`), in the order applied.
    labels: Vec<(&'static str, &'static str, String)>,
    checked: BTreeSet<(Protocol, u16)>,
}

/// A lab with the model applied.
pub struct LabRun<'a> {
    lab: &'a Lab,
    addresses: BTreeMap<(String, u8), IpAddr>,
    probe_timeout_ms: u32,
    work: tempfile::TempDir,
    /// Every step's convergence time so far.
    pub timings: Vec<Timing>,
}

impl<'a> LabRun<'a> {
    /// Applies the model (`model.yaml`) to `lab` and waits until every pod serves every port
    /// to every pod on both families.
    pub fn start(lab: &'a Lab) -> anyhow::Result<Self> {
        let probe_timeout_ms = match std::env::var("NETPOL_PROBE_TIMEOUT_MS") {
            Ok(v) => v.parse().context("NETPOL_PROBE_TIMEOUT_MS")?,
            Err(_) => PROBE_TIMEOUT_MS,
        };
        let mut run = Self {
            lab,
            addresses: BTreeMap::new(),
            probe_timeout_ms,
            work: tempfile::tempdir()?,
            timings: Vec::new(),
        };
        let model = fixture::dir().join("model.yaml");
        lab.meshctl(&["lab", "apply", "-f", &model.to_string_lossy()])?;
        run.addresses = run.await_pod_addresses()?;
        let mut window = STARTUP_WINDOW;
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            for port in [80, 81] {
                for family in [4, 6] {
                    let baseline = super::cases::tcp(port, Table::all(true));
                    let check = Check {
                        protocol,
                        ..baseline
                    };
                    run.await_table(&check, family, window)
                        .context("the model's pods never all reached each other")?;
                    window = BASELINE_WINDOW;
                }
            }
        }
        Ok(run)
    }

    /// The lab.
    pub fn lab(&self) -> &Lab {
        self.lab
    }

    /// Pod `ns/name`'s address of `family`, from its object in the registry.
    pub fn address(&self, pod: &str, family: u8) -> anyhow::Result<IpAddr> {
        self.addresses
            .get(&(pod.to_owned(), family))
            .copied()
            .with_context(|| format!("no IPv{family} address of pod {pod}"))
    }

    /// Reads the model pods' objects (contract 5: `objects/pods/<ns>/<name>.json` under the
    /// registry directory) until each has an address of both families and a node.
    fn await_pod_addresses(&self) -> anyhow::Result<BTreeMap<(String, u8), IpAddr>> {
        let status = self.lab.status_json()?;
        let registry = PathBuf::from(
            status["registry_dir"]
                .as_str()
                .context("lab status has no registry_dir")?,
        );
        let deadline = Instant::now() + STARTUP_WINDOW;
        loop {
            let mut found = BTreeMap::new();
            let mut nodes = BTreeSet::new();
            let mut missing = Vec::new();
            for pod in pod_names() {
                let path = registry.join("objects/pods").join(format!("{pod}.json"));
                let object: Option<core::Pod> = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let status = object.as_ref().and_then(|o| o.status.clone());
                let ips: Vec<IpAddr> = status
                    .and_then(|s| s.pod_ips)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|ip| ip.ip.parse().ok())
                    .collect();
                for ip in &ips {
                    found.insert((pod.clone(), if ip.is_ipv4() { 4 } else { 6 }), *ip);
                }
                if let Some(node) = object.and_then(|o| o.spec).and_then(|s| s.node_name) {
                    nodes.insert(node);
                }
                if !(ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6)) {
                    missing.push(path.display().to_string());
                }
            }
            if missing.is_empty() {
                if nodes.len() < 2 {
                    bail!("the model's pods run on {nodes:?}: the suite needs both nodes");
                }
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!(
                    "after {STARTUP_WINDOW:?} these pod objects still lack an IPv4 and an IPv6 \
                     status.podIPs: {}",
                    missing.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One `meshctl lab probe` over every pod pair.
    pub fn probe(&self, protocol: Protocol, port: u16, family: u8) -> anyhow::Result<Table> {
        let (port_s, family_s) = (port.to_string(), family.to_string());
        let protocol_s = protocol.to_string();
        let timeout = self.probe_timeout_ms.to_string();
        let out = self.lab.meshctl(&[
            "lab",
            "probe",
            "--port",
            &port_s,
            "--protocol",
            &protocol_s,
            "--family",
            &family_s,
            "--timeout-ms",
            &timeout,
            "-o",
            "json",
        ])?;
        table_from_probe(&out.stdout, protocol, port, family)
    }

    /// Probes until `check`'s table shows on `family` (loopback aside) or `window` passes;
    /// returns how long it took from now and how many probes.
    pub fn await_table(
        &self,
        check: &Check,
        family: u8,
        window: Duration,
    ) -> anyhow::Result<(Duration, u32)> {
        let started = Instant::now();
        let mut probes = 0;
        loop {
            let observed = self.probe(check.protocol, check.port, family)?;
            probes += 1;
            if check.expected.matches(&observed, true) {
                return Ok((started.elapsed(), probes));
            }
            if started.elapsed() > window {
                bail!(
                    "{}/{} IPv{family}: after {:?} and {probes} probes the table is still wrong\n{}",
                    check.protocol,
                    check.port,
                    started.elapsed(),
                    diff(&check.expected, &observed, true)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `meshctl lab apply` (or `delete`) of a rendered fixture; returns its policies.
    pub fn apply_fixture(
        &self,
        verb: &str,
        name: &str,
        family: Option<u8>,
    ) -> anyhow::Result<Vec<networking::NetworkPolicy>> {
        let text = fixture::render(&fixture::text(name)?, family, &|pod, f| {
            self.address(pod, f)
        })?;
        let path = self.work.path().join(name);
        std::fs::write(&path, &text)?;
        self.lab
            .meshctl(&["lab", verb, "-f", &path.to_string_lossy()])?;
        fixture::policies(&text)
    }

    fn act(
        &self,
        action: &Action,
        family: Option<u8>,
        applied: &mut Applied,
    ) -> anyhow::Result<()> {
        match action {
            Action::Apply(name) => {
                for p in self.apply_fixture("apply", name, family)? {
                    applied.policies.insert(fixture::policy_key(&p), p);
                }
            }
            Action::Delete(name) => {
                for p in self.apply_fixture("delete", name, family)? {
                    applied.policies.remove(&fixture::policy_key(&p));
                }
            }
            Action::LabelPod(target, label) | Action::LabelNamespace(target, label) => {
                let kind = if matches!(action, Action::LabelPod(..)) {
                    "pod"
                } else {
                    "namespace"
                };
                self.lab
                    .meshctl(&["lab", "label", "--overwrite", kind, target, label])?;
                if let Some((key, _)) = label.split_once('=') {
                    applied.labels.push((kind, target, format!("{key}-")));
                }
            }
        }
        Ok(())
    }

    /// Runs `case` (per family if it says so) and cleans up after it. `Ok` holds the failures
    /// of the case (empty: it passed); `Err` means the lab could not be brought back to the
    /// baseline, so no later case can be trusted.
    pub fn run_case(&mut self, case: &Case) -> anyhow::Result<Vec<String>> {
        let runs: Vec<Option<u8>> = if case.per_family {
            vec![Some(4), Some(6)]
        } else {
            vec![None]
        };
        let mut failures = Vec::new();
        for run in runs {
            let mut applied = Applied::default();
            if let Err(e) = self.steps(case, run, &mut applied) {
                failures.push(format!("{e:#}"));
            }
            self.clean_up(&applied)
                .with_context(|| format!("cleaning up after {}", case.name))?;
        }
        Ok(failures)
    }

    /// Runs the steps of `case`; records the convergence time of each step that changes a
    /// table (one that leaves every table as it was converges at once, which says nothing).
    fn steps(&mut self, case: &Case, run: Option<u8>, applied: &mut Applied) -> anyhow::Result<()> {
        let mut before: BTreeMap<(Protocol, u16, u8), Table> = BTreeMap::new();
        for (i, step) in case.steps.iter().enumerate() {
            let what = format!(
                "{} step {}{}",
                case.name,
                i + 1,
                run.map(|f| format!(" (IPv{f})")).unwrap_or_default()
            );
            self.act(&step.action, run, applied)
                .with_context(|| format!("{what}: {:?}", step.action))?;
            let done = Instant::now();
            let mut timed = false;
            for check in &step.checks {
                applied.checked.insert((check.protocol, check.port));
                for family in [4, 6] {
                    if run.is_some_and(|r| r != family) || !check.covers(family) {
                        continue;
                    }
                    let (_, probes) = self
                        .await_table(check, family, WINDOW)
                        .with_context(|| format!("{what}: {:?}", step.action))?;
                    let key = (check.protocol, check.port, family);
                    let changed = !before
                        .get(&key)
                        .unwrap_or(&Table::all(true))
                        .matches(&check.expected, true);
                    if changed && !timed {
                        self.timings.push(Timing {
                            what: what.clone(),
                            elapsed: done.elapsed(),
                            probes,
                        });
                        timed = true;
                    }
                    before.insert(key, check.expected.clone());
                }
            }
        }
        Ok(())
    }

    /// Deletes the case's policies, undoes its labels, and waits for everything to be allowed
    /// again on every protocol and port the case checked (and TCP 80).
    fn clean_up(&self, applied: &Applied) -> anyhow::Result<()> {
        if !applied.policies.is_empty() {
            let policies: Vec<_> = applied.policies.values().cloned().collect();
            let path = self.work.path().join("clean-up.yaml");
            std::fs::write(&path, fixture::to_yaml(&policies)?)?;
            self.lab
                .meshctl(&["lab", "delete", "-f", &path.to_string_lossy()])?;
        }
        for (kind, target, undo) in applied.labels.iter().rev() {
            self.lab
                .meshctl(&["lab", "label", "--overwrite", kind, target, undo])?;
        }
        let mut baseline = applied.checked.clone();
        baseline.insert((Protocol::Tcp, 80));
        for (protocol, port) in baseline {
            for family in [4, 6] {
                let check = Check {
                    protocol,
                    port,
                    family: None,
                    expected: Table::all(true),
                };
                self.await_table(&check, family, BASELINE_WINDOW)
                    .context("the all-allowed baseline did not come back")?;
            }
        }
        Ok(())
    }
}

/// The `q` quantile (0..=1, nearest rank) of `values`.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(skip: Option<(&str, &str)>, port: u16, denied: (&str, &str)) -> String {
        let mut results = vec![
            serde_json::json!({"from": "n1-p1", "to": "x/a", "port": port,
            "protocol": "TCP", "family": 6, "allowed": true}),
        ];
        for from in pod_names() {
            for to in pod_names() {
                if skip == Some((from.as_str(), to.as_str())) {
                    continue;
                }
                let allowed = (from.as_str(), to.as_str()) != denied;
                results.push(serde_json::json!({"from": from, "to": to, "port": port,
                    "protocol": "TCP", "family": 6, "allowed": allowed, "later": 1}));
            }
        }
        serde_json::json!({ "results": results }).to_string()
    }

    #[test]
    fn the_probe_document_becomes_the_model_table() {
        let doc = document(None, 81, ("y/a", "x/b"));
        let table = table_from_probe(doc.as_bytes(), Protocol::Tcp, 81, 6).unwrap();
        assert_eq!(table, Table::all(true).pair("y/a", "x/b", false));
        // Another probe's answer, or a missing pair, is an error.
        assert!(table_from_probe(doc.as_bytes(), Protocol::Tcp, 80, 6).is_err());
        assert!(table_from_probe(doc.as_bytes(), Protocol::Udp, 81, 6).is_err());
        assert!(table_from_probe(doc.as_bytes(), Protocol::Tcp, 81, 4).is_err());
        let short = document(Some(("z/c", "z/c")), 81, ("y/a", "x/b"));
        let err = table_from_probe(short.as_bytes(), Protocol::Tcp, 81, 6).unwrap_err();
        assert!(err.to_string().contains("80 of the 81"), "{err}");
        assert!(table_from_probe(b"[]", Protocol::Tcp, 81, 6).is_err());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let values: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(quantile(&values, 0.5), ms(50));
        assert_eq!(quantile(&values, 0.99), ms(99));
        assert_eq!(quantile(&values, 1.0), ms(100));
        assert_eq!(quantile(&[ms(7)], 0.99), ms(7));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
