//! `--flow-events-pair`: the cost of flow events. Pod-to-pod throughput on meshd's lab
//! (the `meshd` scenario: two nodes, tc eBPF redirect into the tunnel) with flow events off
//! (`MESHD_FLOW_EVENTS=false` for every node's meshd) and on, alternating within each round
//! so that drift of the machine hits both alike; the medians are compared, and the run fails
//! when "on" is below [`MIN_RATIO`] of "off".

use anyhow::Context as _;

use crate::cli::Args;
use crate::lab::bench_meshd;
use crate::process::{exe_dir, find_binary, path_dirs};
use crate::stop::check_stop;
use crate::Cfg;

/// The bar: throughput with flow events on, as a share of the same run's throughput off.
pub(crate) const MIN_RATIO: f64 = 0.95;

/// The pair's result: per-round 1-stream and 4-stream throughput (Gbit/s), off and on.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct FlowPair {
    pub(crate) off_gbit_1: Vec<f64>,
    pub(crate) on_gbit_1: Vec<f64>,
    pub(crate) off_gbit_4: Vec<f64>,
    pub(crate) on_gbit_4: Vec<f64>,
    pub(crate) ratio_1: f64,
    pub(crate) ratio_4: f64,
    pub(crate) passed: bool,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The verdict on medians, pure: (ratio of 1 stream, ratio of 4 streams, passed).
pub(crate) fn judge(pair: &FlowPair) -> (f64, f64, bool) {
    let ratio = |on: &[f64], off: &[f64]| {
        let off = median(off);
        if off > 0.0 {
            median(on) / off
        } else {
            0.0
        }
    };
    let r1 = ratio(&pair.on_gbit_1, &pair.off_gbit_1);
    let r4 = ratio(&pair.on_gbit_4, &pair.off_gbit_4);
    (r1, r4, r1 >= MIN_RATIO && r4 >= MIN_RATIO)
}

/// Runs the pair for `args.rounds` rounds.
pub(crate) fn run(args: &Args, cfg: &Cfg) -> anyhow::Result<FlowPair> {
    let mut dirs = exe_dir();
    dirs.extend(path_dirs());
    let meshctl = find_binary("meshctl", args.meshctl.as_deref(), &dirs)
        .context("finding meshctl (build it or pass --meshctl)")?;
    let mut pair = FlowPair::default();
    for round in 1..=args.rounds {
        // Alternate which goes first.
        let order: [bool; 2] = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            check_stop()?;
            eprintln!(
                "mesh-bench: flow events {} (round {round} of {})",
                if on { "on" } else { "off" },
                args.rounds
            );
            // Every lab node's meshd inherits this process's environment.
            std::env::set_var("MESHD_FLOW_EVENTS", if on { "true" } else { "false" });
            let measured = bench_meshd(cfg, &meshctl, &[], false);
            std::env::remove_var("MESHD_FLOW_EVENTS");
            let (m, _, _) = measured?;
            let (one, four) = if on {
                (&mut pair.on_gbit_1, &mut pair.on_gbit_4)
            } else {
                (&mut pair.off_gbit_1, &mut pair.off_gbit_4)
            };
            one.push(m.gbit_1);
            four.push(m.gbit_4);
        }
    }
    (pair.ratio_1, pair.ratio_4, pair.passed) = judge(&pair);
    Ok(pair)
}

/// The pair as a few lines of text.
pub(crate) fn render(pair: &FlowPair) -> String {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "flow events, pod to pod across two lab nodes (Gbit/s, median of {} rounds)\n\
         1 stream:  off {:.2} [{}]  on {:.2} [{}]  on/off {:.3}\n\
         4 streams: off {:.2} [{}]  on {:.2} [{}]  on/off {:.3}\n\
         target: on >= {:.0} % of off: {}\n",
        pair.off_gbit_1.len(),
        median(&pair.off_gbit_1),
        list(&pair.off_gbit_1),
        median(&pair.on_gbit_1),
        list(&pair.on_gbit_1),
        pair.ratio_1,
        median(&pair.off_gbit_4),
        list(&pair.off_gbit_4),
        median(&pair.on_gbit_4),
        list(&pair.on_gbit_4),
        pair.ratio_4,
        MIN_RATIO * 100.0,
        if pair.passed { "PASS" } else { "FAIL" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_passes_at_95_percent_of_off_and_fails_below() {
        let mut pair = FlowPair {
            off_gbit_1: vec![1.0, 2.0, 2.1],
            on_gbit_1: vec![1.8, 1.85, 0.1],
            off_gbit_4: vec![4.0],
            on_gbit_4: vec![3.9],
            ..Default::default()
        };
        let (r1, r4, passed) = judge(&pair);
        assert!((r1 - 0.9).abs() < 1e-9, "{r1}");
        assert!((r4 - 0.975).abs() < 1e-9);
        assert!(!passed);
        pair.on_gbit_1 = vec![1.9, 1.9, 1.9];
        assert!(judge(&pair).2);
        // Nothing measured off is a failure, not a division by zero.
        assert!(!judge(&FlowPair::default()).2);
    }
}
