//! The run's verdict: which targets were missed, for the exit status and stderr.

use std::fs::File;
use std::io::Read as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use integration::bench::{
    self, Report, ScaleResult, ScenarioResult, Targets, Userspace, BORINGTUN, MESHD, MESHD_ROUTES,
    MESHD_WG, MESHD_WG_VETH, PLAIN, PLAIN_LAB, WIREGUARD_GO,
};
use integration::LabStatus;
use nix::sys::signal::{SigSet, Signal};
use testkit::netns::{self, ChildGuard, NetnsGuard};

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
