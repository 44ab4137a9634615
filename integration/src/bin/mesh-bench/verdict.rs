//! The run's verdict: which targets were missed, for the exit status and stderr.

use integration::bench;

/// Whether a finished run met its targets: a missed target fails the run. A target that was
/// not measured (its scenario was left out with `--only` or could not run) does not; the
/// table and the JSON say `n/a` for it.
#[derive(Debug, PartialEq)]
pub(crate) enum RunVerdict {
    /// No target was missed.
    Met,
    /// These targets were missed, one line each (what, measured, bar).
    Missed(Vec<String>),
}

pub(crate) fn run_verdict(targets: &[bench::TargetCheck]) -> RunVerdict {
    let missed: Vec<String> = targets
        .iter()
        .filter(|t| t.verdict == bench::Verdict::Fail)
        .map(|t| {
            format!(
                "{}: measured {} {}, target {} {} {}",
                t.target,
                t.measured.map_or("-".into(), |m| format!("{m:.2}")),
                t.unit,
                if t.at_least { ">=" } else { "<=" },
                t.limit,
                t.unit
            )
        })
        .collect();
    if missed.is_empty() {
        RunVerdict::Met
    } else {
        RunVerdict::Missed(missed)
    }
}
