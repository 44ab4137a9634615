//! What a run found, its targets and its printed forms: the table (with PASS/FAIL per target)
//! and the JSON document of `-o json`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{
    median, percentile, ratio, Latency, TargetCheck, ENFORCE_P99_TARGET_MS, THROUGHPUT_RATIO_TARGET,
};

/// One pair's throughput per round in both conditions.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PairThroughput {
    pub(crate) pair: String,
    pub(crate) without_gbit: Vec<f64>,
    pub(crate) with_gbit: Vec<f64>,
    pub(crate) median_without_gbit: Option<f64>,
    pub(crate) median_with_gbit: Option<f64>,
    /// Median with / median without.
    pub(crate) ratio: Option<f64>,
}

impl PairThroughput {
    pub(crate) fn new(pair: &str) -> Self {
        PairThroughput {
            pair: pair.into(),
            ..Default::default()
        }
    }

    fn summarise(&mut self) {
        self.median_without_gbit = median(&self.without_gbit);
        self.median_with_gbit = median(&self.with_gbit);
        self.ratio = ratio(self.median_with_gbit, self.median_without_gbit);
    }
}

/// Target 1's measurements.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ThroughputResult {
    pub(crate) pairs: Vec<PairThroughput>,
    /// Each apply of the whole set: `meshctl lab apply` invoked → [the probes agree (coarse: a
    /// probe round takes its 300 ms timeout), every meshd idle again].
    pub(crate) set_in_force_ms: Vec<[f64; 2]>,
    /// Each delete of the whole set, the same way.
    pub(crate) set_removed_ms: Vec<[f64; 2]>,
    /// The probes confirmed each condition before it was measured.
    pub(crate) verified: bool,
}

/// One flip of the enforcement measurement.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EnforceSample {
    /// Opening (true) or closing.
    pub(crate) allow: bool,
    /// The later of the nodes; `None`: not seen in time.
    pub(crate) all_nodes_ms: Option<f64>,
    /// Per probed pair: enforced on n2, enforced on n1.
    pub(crate) per_node_ms: Vec<Option<f64>>,
    /// How long `meshctl lab apply` itself ran.
    pub(crate) meshctl_ms: f64,
    /// The longest pause between two attempts of a prober (it was not scheduled meanwhile).
    pub(crate) prober_gap_ms: f64,
    /// CPU both meshd used from just before the flip until it was seen and the probers
    /// drained (`/proc/<pid>/task/*/schedstat`).
    pub(crate) meshd_cpu_ms: f64,
    /// Time meshd's threads were runnable but waited for a CPU over the same span.
    pub(crate) meshd_wait_ms: f64,
}

/// Target 2's measurements.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct EnforceResult {
    pub(crate) samples: Vec<EnforceSample>,
    pub(crate) all: Option<Latency>,
    pub(crate) opening: Option<Latency>,
    pub(crate) closing: Option<Latency>,
    pub(crate) meshctl: Option<Latency>,
    /// meshd's CPU per flip (both nodes).
    pub(crate) meshd_cpu: Option<Latency>,
    /// meshd's run-queue wait per flip (both nodes).
    pub(crate) meshd_wait: Option<Latency>,
    /// The probers' longest pause per flip.
    pub(crate) prober_gap: Option<Latency>,
    /// p99 of all samples, infinite when one was never seen (for the target).
    #[serde(skip)]
    pub(crate) p99_for_target: Option<f64>,
}

impl EnforceResult {
    pub(crate) fn summarise(&mut self) {
        let of = |f: &dyn Fn(&EnforceSample) -> bool| {
            let v: Vec<Option<f64>> = self
                .samples
                .iter()
                .filter(|s| f(s))
                .map(|s| s.all_nodes_ms)
                .collect();
            Latency::of(&v)
        };
        self.all = Some(of(&|_| true));
        self.opening = Some(of(&|s| s.allow));
        self.closing = Some(of(&|s| !s.allow));
        let m: Vec<Option<f64>> = self.samples.iter().map(|s| Some(s.meshctl_ms)).collect();
        self.meshctl = Some(Latency::of(&m));
        let of_field = |f: fn(&EnforceSample) -> f64| {
            Some(Latency::of(
                &self.samples.iter().map(|s| Some(f(s))).collect::<Vec<_>>(),
            ))
        };
        self.meshd_cpu = of_field(|s| s.meshd_cpu_ms);
        self.meshd_wait = of_field(|s| s.meshd_wait_ms);
        self.prober_gap = of_field(|s| s.prober_gap_ms);
        let v: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.all_nodes_ms.unwrap_or(f64::INFINITY))
            .collect();
        self.p99_for_target = percentile(&v, 99.0);
    }
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) lab: String,
    pub(crate) cpus: usize,
    pub(crate) load_average_start: Option<String>,
    pub(crate) load_average_end: Option<String>,
    pub(crate) policies: usize,
    pub(crate) rounds: u32,
    pub(crate) iperf_seconds: u64,
    pub(crate) probe_interval_ms: f64,
    pub(crate) probe_timeout_ms: f64,
    pub(crate) throughput: Option<ThroughputResult>,
    pub(crate) enforcement: Option<EnforceResult>,
    /// Each node's policy loop with the set in force (from `meshctl status -o json`).
    pub(crate) policy_status: Vec<serde_json::Value>,
    pub(crate) targets: Vec<TargetCheck>,
}

impl Report {
    /// Medians, ratios and the targets' verdicts.
    pub(crate) fn finish(&mut self) {
        let mut targets = Vec::new();
        if let Some(t) = self.throughput.as_mut() {
            for p in &mut t.pairs {
                p.summarise();
            }
        }
        let pairs = self.throughput.as_ref().map(|t| t.pairs.clone());
        for p in pairs.unwrap_or_default() {
            targets.push(TargetCheck::judge(
                &format!(
                    "throughput with {} policies / without, {}",
                    self.policies, p.pair
                ),
                p.ratio,
                THROUGHPUT_RATIO_TARGET,
                true,
                "x",
            ));
        }
        if self.throughput.is_none() {
            targets.push(TargetCheck::judge(
                "throughput with policies / without",
                None,
                THROUGHPUT_RATIO_TARGET,
                true,
                "x",
            ));
        }
        targets.push(TargetCheck::judge(
            "policy applied -> enforced on all nodes, p99",
            self.enforcement.as_ref().and_then(|e| e.p99_for_target),
            ENFORCE_P99_TARGET_MS,
            false,
            "ms",
        ));
        self.targets = targets;
    }

    /// The failed targets, one line each.
    pub(crate) fn missed(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| t.verdict == crate::stats::Verdict::Fail)
            .map(TargetCheck::describe)
            .collect()
    }

    /// The table.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let f = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            s,
            "policy-bench: lab {}, {} CPUs, load {} -> {}, {} policies",
            self.lab,
            self.cpus,
            self.load_average_start.as_deref().unwrap_or("?"),
            self.load_average_end.as_deref().unwrap_or("?"),
            self.policies
        );
        if let Some(t) = &self.throughput {
            let _ = writeln!(
                s,
                "\nThroughput, TCP 1 stream, {} s per run, {} rounds (medians; per round in brackets)",
                self.iperf_seconds, self.rounds
            );
            let _ = writeln!(
                s,
                "{:<22} {:>14} {:>14} {:>8}",
                "pair", "without Gbit/s", "with Gbit/s", "ratio"
            );
            for p in &t.pairs {
                let _ = writeln!(
                    s,
                    "{:<22} {:>14} {:>14} {:>8}",
                    p.pair,
                    f(p.median_without_gbit, 2),
                    f(p.median_with_gbit, 2),
                    f(p.ratio, 3)
                );
                let list = |v: &[f64]| {
                    v.iter()
                        .map(|x| format!("{x:.2}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let _ = writeln!(
                    s,
                    "{:<22} [{}] / [{}]",
                    "",
                    list(&p.without_gbit),
                    list(&p.with_gbit)
                );
            }
            let times = |v: &[[f64; 2]]| {
                v.iter()
                    .map(|[agreed, idle]| format!("{agreed:.0}/{idle:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "policy set apply -> probes agree/meshd idle: {} ms; delete: {} ms",
                times(&t.set_in_force_ms),
                times(&t.set_removed_ms)
            );
        }
        for p in &self.policy_status {
            let _ = writeln!(
                s,
                "{}'s policy loop with the set: {} policies, {} pods, {} local endpoints, {} map \
                 entries, {} refused, last batch {} ops in {} us",
                p["node"].as_str().unwrap_or("?"),
                p["policies"],
                p["pods_known"],
                p["local_endpoints"],
                p["map_entries"],
                p["refused"],
                p["last_apply_ops"],
                p["last_apply_micros"]
            );
        }
        if let Some(e) = &self.enforcement {
            let _ = writeln!(
                s,
                "\nApply -> enforced on all nodes, ms from invoking meshctl (new connection every {} ms, {} ms timeout; later node)",
                self.probe_interval_ms, self.probe_timeout_ms
            );
            let _ = writeln!(
                s,
                "{:<22} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6}",
                "", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "never"
            );
            for (name, l) in [
                ("all flips", &e.all),
                ("opening", &e.opening),
                ("closing", &e.closing),
                ("meshctl apply itself", &e.meshctl),
                ("meshd on CPU", &e.meshd_cpu),
                ("meshd waiting for CPU", &e.meshd_wait),
                ("prober's longest gap", &e.prober_gap),
            ] {
                if let Some(l) = l {
                    let _ = writeln!(
                        s,
                        "{:<22} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6}",
                        name,
                        l.n,
                        f(l.p50_ms, 1),
                        f(l.p90_ms, 1),
                        f(l.p99_ms, 1),
                        f(l.max_ms, 1),
                        l.never
                    );
                }
            }
        }
        let _ = writeln!(s, "\nTargets (issue 18)");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "{:<5} {:<60} {:>10} {} {} {}",
                t.verdict.label(),
                t.target,
                f(t.measured, 3),
                if t.at_least { ">=" } else { "<=" },
                t.limit,
                t.unit
            );
        }
        s
    }
}
