//! The report: what each phase measured, the targets with their verdicts (pure), and
//! the text rendering.

use std::fmt::Write as _;

use serde::Serialize;

/// Cold convergence of one agent.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ColdAgent {
    pub(crate) node: String,
    /// Seconds from starting its meshd to a status listing every peer, converged.
    pub(crate) converged_s: Option<f64>,
    /// Peers in its last status (when it did not converge).
    pub(crate) peers_seen: Option<usize>,
    pub(crate) reconcile_errors: Option<u64>,
    /// Why it did not converge: its status and the last warnings of its log.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) failure: Vec<String>,
}

/// Memory and CPU of one agent.
#[derive(Debug, Default, Serialize)]
pub(crate) struct AgentCost {
    pub(crate) node: String,
    pub(crate) meshd_rss_mib: f64,
    pub(crate) datapath_rss_mib: f64,
    pub(crate) total_rss_mib: f64,
    /// meshd's CPU time per added node record (ms).
    pub(crate) meshd_cpu_ms_per_event: Option<f64>,
    /// The `meshd-wg` processes' CPU time per added node record (ms).
    pub(crate) datapath_cpu_ms_per_event: Option<f64>,
}

/// Registry writes over a window.
#[derive(Debug, Default, Serialize)]
pub(crate) struct WriteWindow {
    pub(crate) window_s: f64,
    /// Writes of the real agents' own records.
    pub(crate) agent_writes: u64,
    /// Writes of the simulated nodes' records (the harness, on their behalf).
    pub(crate) simulated_writes: u64,
    /// All writes per node per hour (nodes: simulated and real).
    pub(crate) writes_per_node_per_hour: f64,
    /// Watch events one agent receives per hour (every write reaches every watcher).
    pub(crate) watch_events_per_agent_per_hour: f64,
}

/// Every node rotating its keys once.
#[derive(Debug, Default, Serialize)]
pub(crate) struct RotationResult {
    pub(crate) duration_s: f64,
    /// Rotation steps the simulated nodes published (every agent programming them after).
    pub(crate) simulated_steps_done: u32,
    pub(crate) simulated_steps_planned: u32,
    /// Outcome of each real agent's rotation (`meshctl lab rotate-key`).
    pub(crate) real_outcomes: Vec<String>,
    /// Writes of the simulated nodes' own rotation steps.
    pub(crate) simulated_step_writes: u64,
    /// Writes of the real agents' records (their own steps only).
    pub(crate) agent_writes: u64,
    /// All of them per node (simulated and real) for one rotation each.
    pub(crate) writes_per_node_per_rotation: f64,
    /// Watch events one agent received during the rotation.
    pub(crate) watch_events_per_agent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// Pod identity distribution through the directory registry's endpoint batches.
#[derive(Debug, Default, Serialize)]
pub(crate) struct PodsResult {
    pub(crate) pods_per_node: u32,
    pub(crate) pods_written: u64,
    pub(crate) write_s: f64,
    /// Endpoint batch writes per pod creation (every node).
    pub(crate) writes_per_pod: f64,
    /// The real agents' batch writes for their own pods, and those pods.
    pub(crate) agent_batch_writes: u64,
    pub(crate) agent_pods: u64,
    pub(crate) agent_writes_per_pod: f64,
    /// Watch events one agent receives per pod creation (one per other node's batch write).
    pub(crate) watch_events_per_agent_per_pod: f64,
    /// The same, summed over every agent of the cluster.
    pub(crate) watch_events_per_pod_cluster: f64,
    /// From the first write to every real agent holding every pod (s).
    pub(crate) distributed_s: Option<f64>,
    /// Real agents' meshd + datapath RSS after the pods were distributed (max, MiB).
    pub(crate) agent_rss_mib: Option<f64>,
}

/// A target of the issue and its verdict.
#[derive(Debug, Serialize)]
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) value: Option<f64>,
    pub(crate) bar: f64,
    /// `PASS`, `FAIL` or `n/a` (not measured).
    pub(crate) verdict: &'static str,
}

/// The whole run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) nodes: u32,
    pub(crate) real_nodes: u32,
    pub(crate) cpus: usize,
    pub(crate) load_average: Option<String>,
    /// Seconds to write the N simulated records.
    pub(crate) publish_s: f64,
    pub(crate) cold: Vec<ColdAgent>,
    pub(crate) cold_convergence_s: Option<f64>,
    /// New node record to every real agent having programmed it.
    pub(crate) addition_ms_p50: Option<f64>,
    pub(crate) addition_ms_p99: Option<f64>,
    pub(crate) addition_samples: usize,
    /// How long one status query took at N (the latency's resolution), median, ms.
    pub(crate) status_query_ms: Option<f64>,
    pub(crate) agents: Vec<AgentCost>,
    pub(crate) steady: Option<WriteWindow>,
    pub(crate) rotation: Option<RotationResult>,
    pub(crate) pods: Option<PodsResult>,
    pub(crate) targets: Vec<Target>,
    /// Phases that failed, with why.
    pub(crate) errors: Vec<String>,
}

/// The targets (5,000 nodes, one run, 2 vCPU).
pub(crate) const COLD_S: f64 = 2.0;
pub(crate) const ADD_P99_MS: f64 = 200.0;
pub(crate) const RSS_MIB: f64 = 64.0;
pub(crate) const STEADY_WRITES: f64 = 0.0;
pub(crate) const WRITES_PER_ROTATION: f64 = 4.0;
/// Pod identity batched per node: at most a tenth of the one watch event per pod creation that
/// a watch of every Pod costs each agent.
pub(crate) const POD_EVENTS_PER_AGENT: f64 = 0.1;

fn target(name: &'static str, value: Option<f64>, bar: f64, failed: bool) -> Target {
    let verdict = match value {
        _ if failed => "FAIL",
        None => "n/a",
        Some(v) if v <= bar => "PASS",
        Some(_) => "FAIL",
    };
    Target {
        name,
        value,
        bar,
        verdict,
    }
}

impl Report {
    /// Sets the targets' verdicts from the measurements. A phase that ran and failed (an
    /// agent that never converged) fails its target.
    pub(crate) fn judge(&mut self) {
        let not_converged = self.cold.iter().any(|c| c.converged_s.is_none());
        let rss = self
            .agents
            .iter()
            .map(|a| a.total_rss_mib)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let steady = self.steady.as_ref().map(|s| s.agent_writes as f64);
        let rotation = self.rotation.as_ref();
        self.targets = vec![
            target(
                "cold convergence (s, slowest agent)",
                self.cold_convergence_s,
                COLD_S,
                not_converged,
            ),
            target(
                "new node programmed on every agent, p99 (ms)",
                self.addition_ms_p99,
                ADD_P99_MS,
                not_converged && self.addition_ms_p99.is_none(),
            ),
            target(
                "meshd + datapath RSS (MiB, largest agent)",
                rss,
                RSS_MIB,
                false,
            ),
            target(
                "agents' registry writes in steady state",
                steady,
                STEADY_WRITES,
                false,
            ),
            target(
                "registry writes per node per rotation",
                rotation.map(|r| r.writes_per_node_per_rotation),
                WRITES_PER_ROTATION,
                rotation.is_some_and(|r| r.error.is_some()),
            ),
        ];
        // Pod identity, when its phase ran.
        if let Some(p) = &self.pods {
            self.targets.push(target(
                "watch events per agent per pod creation",
                Some(p.watch_events_per_agent_per_pod),
                POD_EVENTS_PER_AGENT,
                false,
            ));
            self.targets.push(target(
                "meshd + datapath RSS holding every pod (MiB, largest agent)",
                p.agent_rss_mib,
                RSS_MIB,
                false,
            ));
        }
    }

    /// The targets missed.
    pub(crate) fn missed(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| t.verdict == "FAIL")
            .map(|t| match t.value {
                Some(v) => format!("{}: {v:.3} (bar {})", t.name, t.bar),
                None => format!("{}: not reached (bar {})", t.name, t.bar),
            })
            .collect()
    }

    /// The report as text.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("—".to_string(), |v| format!("{v:.1} {unit}"));
        let _ = writeln!(
            s,
            "scale-bench: {} simulated nodes + {} real agents ({} CPUs, load {})",
            self.nodes,
            self.real_nodes,
            self.cpus,
            self.load_average.as_deref().unwrap_or("?")
        );
        let _ = writeln!(s, "records written in {:.2} s", self.publish_s);
        let _ = writeln!(
            s,
            "\ncold convergence (meshd started with every record present):"
        );
        for c in &self.cold {
            match c.converged_s {
                Some(t) => {
                    let _ = writeln!(s, "  {:<4} {t:.2} s", c.node);
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  {:<4} NOT CONVERGED: {} peers programmed, {} reconcile errors",
                        c.node,
                        c.peers_seen.map_or("?".into(), |p| p.to_string()),
                        c.reconcile_errors.map_or("?".into(), |p| p.to_string())
                    );
                    for l in &c.failure {
                        let _ = writeln!(s, "       {l}");
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            "\nnew node to every agent: p50 {}, p99 {} ({} samples; one status query {})",
            opt(self.addition_ms_p50, "ms"),
            opt(self.addition_ms_p99, "ms"),
            self.addition_samples,
            opt(self.status_query_ms, "ms")
        );
        let _ = writeln!(
            s,
            "\nper agent: RSS meshd / datapath / total, CPU per added record"
        );
        for a in &self.agents {
            let _ = writeln!(
                s,
                "  {:<4} {:.1} / {:.1} / {:.1} MiB   meshd {}  datapath {}",
                a.node,
                a.meshd_rss_mib,
                a.datapath_rss_mib,
                a.total_rss_mib,
                opt(a.meshd_cpu_ms_per_event, "ms"),
                opt(a.datapath_cpu_ms_per_event, "ms")
            );
        }
        if let Some(w) = &self.steady {
            let _ = writeln!(
                s,
                "\nsteady state over {:.0} s: {} agent writes, {} simulated; {:.2} writes per node \
                 per hour, {:.1} watch events per agent per hour",
                w.window_s,
                w.agent_writes,
                w.simulated_writes,
                w.writes_per_node_per_hour,
                w.watch_events_per_agent_per_hour
            );
        }
        if let Some(r) = &self.rotation {
            let _ = writeln!(
                s,
                "\nevery node rotating once: {:.1} s; simulated steps {}/{}; real agents: {}",
                r.duration_s,
                r.simulated_steps_done,
                r.simulated_steps_planned,
                r.real_outcomes.join("; ")
            );
            let _ = writeln!(
                s,
                "  writes: {} simulated steps, {} by agents = {:.2} \
                 per node per rotation; {} watch events per agent",
                r.simulated_step_writes,
                r.agent_writes,
                r.writes_per_node_per_rotation,
                r.watch_events_per_agent
            );
            if let Some(e) = &r.error {
                let _ = writeln!(s, "  error: {e}");
            }
        }
        if let Some(p) = &self.pods {
            let _ = writeln!(
                s,
                "\npods: {} per node, {} written in {:.1} s, held by every agent after {}; \
                 {:.3} batch writes per pod creation (real agents: {} writes for {} pods, {:.3}); \
                 {:.3} watch events per agent ({:.0} cluster-wide) per pod creation; agent RSS \
                 after {}",
                p.pods_per_node,
                p.pods_written,
                p.write_s,
                opt(p.distributed_s, "s"),
                p.writes_per_pod,
                p.agent_batch_writes,
                p.agent_pods,
                p.agent_writes_per_pod,
                p.watch_events_per_agent_per_pod,
                p.watch_events_per_pod_cluster,
                opt(p.agent_rss_mib, "MiB")
            );
        }
        let _ = writeln!(s, "\ntargets:");
        for t in &self.targets {
            let v = t.value.map_or("—".into(), |v| format!("{v:.3}"));
            let _ = writeln!(s, "  {:<4} {} = {v} (bar ≤ {})", t.verdict, t.name, t.bar);
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_that_never_converged_fails_the_cold_target() {
        let mut r = Report {
            cold: vec![ColdAgent {
                node: "n1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        r.judge();
        assert_eq!(r.targets[0].verdict, "FAIL");
        assert_eq!(r.targets[2].verdict, "n/a");
        assert_eq!(r.missed().len(), 2, "{:?}", r.missed());
    }

    #[test]
    fn measured_values_are_held_to_their_bars() {
        let mut r = Report {
            cold: vec![ColdAgent {
                node: "n1".into(),
                converged_s: Some(0.5),
                ..Default::default()
            }],
            cold_convergence_s: Some(0.5),
            addition_ms_p99: Some(250.0),
            steady: Some(WriteWindow::default()),
            rotation: Some(RotationResult {
                writes_per_node_per_rotation: 4.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        r.judge();
        let v: Vec<&str> = r.targets.iter().map(|t| t.verdict).collect();
        assert_eq!(v, ["PASS", "FAIL", "n/a", "PASS", "PASS"]);
    }

    #[test]
    fn the_pod_phase_adds_its_two_targets() {
        let mut r = Report {
            pods: Some(PodsResult {
                watch_events_per_agent_per_pod: 1.0 / 30.0,
                agent_rss_mib: Some(298.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        r.judge();
        let pods: Vec<(&str, &str)> = r.targets[5..].iter().map(|t| (t.name, t.verdict)).collect();
        assert_eq!(
            pods,
            [
                ("watch events per agent per pod creation", "PASS"),
                (
                    "meshd + datapath RSS holding every pod (MiB, largest agent)",
                    "FAIL"
                ),
            ]
        );
    }
}
