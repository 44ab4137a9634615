//! Tests of the run's verdict: which targets fail the run and which, unmeasured, do not.

use integration::bench::{TargetCheck, Verdict};

use super::*;

fn target(name: &str, measured: Option<f64>, verdict: Verdict) -> TargetCheck {
    TargetCheck {
        target: name.into(),
        measured,
        limit: 5.0,
        at_least: true,
        unit: "x".into(),
        verdict,
    }
}

#[test]
fn a_missed_target_fails_the_run_and_is_named() {
    let targets = [
        target("meshd vs wireguard-go", Some(6.0), Verdict::Pass),
        target("meshd vs boringtun-cli", Some(2.5), Verdict::Fail),
        target("meshd-wg RSS", None, Verdict::NotMeasured),
    ];
    assert_eq!(
        run_verdict(&targets),
        RunVerdict::Missed(vec![
            "meshd vs boringtun-cli: measured 2.50 x, target >= 5 x".into()
        ])
    );
}

#[test]
fn met_and_unmeasured_targets_pass_the_run() {
    assert_eq!(run_verdict(&[]), RunVerdict::Met);
    let targets = [
        target("meshd vs wireguard-go", Some(6.0), Verdict::Pass),
        target("meshd-wg RSS", None, Verdict::NotMeasured),
    ];
    assert_eq!(run_verdict(&targets), RunVerdict::Met);
}
