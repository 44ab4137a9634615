//! The pure arithmetic of a run: medians and percentiles, when a policy change took effect
//! according to a series of connection attempts, and the targets of issue 18 with their
//! verdicts. No I/O.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Throughput with the policy set, as a share of throughput without it, at least this.
pub(crate) const THROUGHPUT_RATIO_TARGET: f64 = 0.95;
/// Policy applied → enforced on all nodes, p99 at most this many milliseconds.
pub(crate) const ENFORCE_P99_TARGET_MS: f64 = 100.0;

/// Median of `values` (mean of the middle two for an even count); `None` when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Nearest-rank percentile `p` (0..=100) of `values`; `None` when empty. Infinite values
/// (a change never seen) sort last.
pub(crate) fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// p50/p90/p99/max of a latency series in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub(crate) n: usize,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    /// Samples whose change was never seen within the wait (counted as infinitely late).
    pub(crate) never: usize,
}

impl Latency {
    /// Summary of `samples` (milliseconds; `None` = the change was never seen).
    pub(crate) fn of(samples: &[Option<f64>]) -> Latency {
        let v: Vec<f64> = samples.iter().map(|s| s.unwrap_or(f64::INFINITY)).collect();
        let finite = |x: Option<f64>| x.filter(|x| x.is_finite());
        Latency {
            n: samples.len(),
            p50_ms: finite(percentile(&v, 50.0)),
            p90_ms: finite(percentile(&v, 90.0)),
            p99_ms: finite(percentile(&v, 99.0)),
            max_ms: finite(percentile(&v, 100.0)),
            never: samples.iter().filter(|s| s.is_none()).count(),
        }
    }
}

/// One connection attempt of the enforcement prober.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// When the SYN was sent.
    pub(crate) start: Instant,
    /// When the outcome was known (connected, refused or timed out).
    pub(crate) end: Instant,
    /// Whether it connected.
    pub(crate) connected: bool,
}

/// When the change to `want` (connected or not) took effect, measured from `t0` (the moment
/// `meshctl lab apply` was invoked): the first attempt started after `t0` from which on every
/// attempt has the new outcome. For an opening change that is the moment it connected (the
/// "first success"); for a closing change the moment its SYN was sent (its failure is only
/// known after the attempt's timeout, and a SYN sent before the change would have passed).
/// `None` when the attempts never settled on `want`.
pub(crate) fn enforced_after(t0: Instant, attempts: &[Attempt], want: bool) -> Option<Duration> {
    let mut after: Vec<&Attempt> = attempts.iter().filter(|a| a.start >= t0).collect();
    after.sort_by_key(|a| a.start);
    let last_other = after.iter().rposition(|a| a.connected != want);
    let first = match last_other {
        Some(i) => after.get(i + 1)?,
        None => after.first()?,
    };
    let at = if want { first.end } else { first.start };
    Some(at.saturating_duration_since(t0))
}

/// Whether the prober can stop: the last `settle` attempts (by start, after `t0`) all had the
/// outcome `want`.
pub(crate) fn settled(t0: Instant, attempts: &[Attempt], want: bool, settle: usize) -> bool {
    let mut after: Vec<&Attempt> = attempts.iter().filter(|a| a.start >= t0).collect();
    if after.len() < settle.max(1) {
        return false;
    }
    after.sort_by_key(|a| a.start);
    after[after.len() - settle.max(1)..]
        .iter()
        .all(|a| a.connected == want)
}

/// A target's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Pass,
    Fail,
    /// Not measured (its part was not run or could not run).
    #[serde(rename = "n/a")]
    NotMeasured,
}

impl Verdict {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotMeasured => "n/a",
        }
    }
}

/// One target, what was measured and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TargetCheck {
    pub(crate) target: String,
    pub(crate) measured: Option<f64>,
    pub(crate) limit: f64,
    pub(crate) at_least: bool,
    pub(crate) unit: String,
    pub(crate) verdict: Verdict,
}

impl TargetCheck {
    /// Judges `measured` against `limit` (`at_least`: measured ≥ limit passes, else ≤).
    pub(crate) fn judge(
        target: &str,
        measured: Option<f64>,
        limit: f64,
        at_least: bool,
        unit: &str,
    ) -> TargetCheck {
        let verdict = match measured {
            None => Verdict::NotMeasured,
            Some(m) if m.is_nan() => Verdict::Fail,
            Some(m) if (at_least && m >= limit) || (!at_least && m <= limit) => Verdict::Pass,
            Some(_) => Verdict::Fail,
        };
        TargetCheck {
            target: target.into(),
            measured,
            limit,
            at_least,
            unit: unit.into(),
            verdict,
        }
    }

    /// One line for stderr: what, measured, bar.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}: measured {} {}, target {} {} {}",
            self.target,
            self.measured.map_or("-".into(), |m| format!("{m:.3}")),
            self.unit,
            if self.at_least { ">=" } else { "<=" },
            self.limit,
            self.unit
        )
    }
}

/// `with / without`, when both are known and `without` is positive.
pub(crate) fn ratio(with: Option<f64>, without: Option<f64>) -> Option<f64> {
    match (with, without) {
        (Some(w), Some(b)) if b > 0.0 => Some(w / b),
        _ => None,
    }
}

/// The longest pause between consecutive attempt starts (sorted): a prober that was not
/// scheduled for a while shows it here, and its sample is then late by up to that much.
pub(crate) fn longest_gap(attempts: &[Attempt]) -> Duration {
    let mut starts: Vec<Instant> = attempts.iter().map(|a| a.start).collect();
    starts.sort();
    starts
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or(Duration::ZERO)
}

/// Sums `/proc/<pid>/task/*/schedstat` lines ("on-CPU ns, run-queue wait ns, slices") into
/// (on-CPU, waiting) nanoseconds.
pub(crate) fn sum_schedstat<'a>(lines: impl IntoIterator<Item = &'a str>) -> (u64, u64) {
    lines.into_iter().fold((0, 0), |(cpu, wait), line| {
        let mut f = line
            .split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(0));
        (cpu + f.next().unwrap_or(0), wait + f.next().unwrap_or(0))
    })
}
