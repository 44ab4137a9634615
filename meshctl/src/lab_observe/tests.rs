//! `lab observe`'s merging, filtering and following, with shell commands standing in for the
//! nodes' `meshctl observe -o json` (no lab needed).

use std::process::{Command, Stdio};

use clap::Parser as _;

use super::*;
use crate::cli::{Cli, Cmd, LabCmd};

/// A stream line from `node` at second `secs` past 10:00 (a lost-events notice: it always
/// passes the filter, so the order is what is tested).
fn line(node: &str, secs: u32) -> String {
    format!(
        r#"{{"lost_events":{{"source":"RING_BUFFER","num_events_lost":{secs}}},"node_name":"{node}","time":"2026-12-06T10:00:{secs:02}Z"}}"#
    )
}

/// A flow line from `node` at second `secs` with `verdict`.
fn flow(node: &str, secs: u32, verdict: &str) -> String {
    format!(
        r#"{{"flow":{{"time":"2026-12-06T10:00:{secs:02}Z","verdict":"{verdict}","reason":"to-tunnel","event":"first-packet","IP":{{"source":"10.244.1.2","destination":"10.244.2.3","ipVersion":"IPv4"}},"interface":{{"index":1}},"traffic_direction":"EGRESS","trace_observation_point":"FROM_ENDPOINT","packets":1,"bytes":60}},"node_name":"{node}","time":"2026-12-06T10:00:{secs:02}Z"}}"#
    )
}

/// A fake node: prints `lines`, optionally sleeping `pause` before the last one, then exits
/// with `code`.
fn node(name: &str, lines: &[String], pause: Option<&str>, code: u8) -> lab::NodeObserver {
    let mut script = String::new();
    for (i, l) in lines.iter().enumerate() {
        if i + 1 == lines.len() {
            if let Some(p) = pause {
                script.push_str(&format!("sleep {p}; "));
            }
        }
        script.push_str(&format!("printf '%s\\n' '{l}'; "));
    }
    script.push_str(&format!("exit {code}"));
    let mut command = Command::new("sh");
    command
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    lab::NodeObserver {
        node: name.into(),
        command,
    }
}

fn args(flags: &[&str]) -> ObserveArgs {
    let mut argv = vec!["meshctl", "lab", "observe"];
    argv.extend_from_slice(flags);
    match Cli::try_parse_from(argv).expect("flags").command {
        Cmd::Lab {
            command: LabCmd::Observe { args, .. },
        } => args,
        other => panic!("{other:?}"),
    }
}

fn run(observers: Vec<lab::NodeObserver>, flags: &[&str]) -> anyhow::Result<Vec<String>> {
    let args = args(flags);
    let filter = FlowFilter::from_flags(&args.filter_flags(), jiff::Timestamp::now())?;
    let mut out = Vec::new();
    observe_nodes(observers, &args, filter, &mut out)?;
    Ok(String::from_utf8(out)?
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn histories_merge_by_time_then_filter_and_last_apply() {
    let n1 = vec![
        flow("n1", 1, "FORWARDED"),
        flow("n1", 4, "DROPPED"),
        line("n1", 6),
    ];
    let n2 = vec![
        flow("n2", 2, "DROPPED"),
        flow("n2", 3, "FORWARDED"),
        flow("n2", 5, "DROPPED"),
    ];
    let got = run(
        vec![node("n1", &n1, None, 0), node("n2", &n2, None, 0)],
        &["-o", "json"],
    )
    .expect("observe");
    assert_eq!(
        got,
        vec![
            n1[0].clone(),
            n2[0].clone(),
            n2[1].clone(),
            n1[1].clone(),
            n2[2].clone(),
            n1[2].clone()
        ]
    );
    let got = run(
        vec![node("n1", &n1, None, 0), node("n2", &n2, None, 0)],
        &["-o", "json", "--verdict", "dropped", "--last", "2"],
    )
    .expect("observe");
    assert_eq!(got, vec![n1[1].clone(), n2[2].clone(), n1[2].clone()]);
}

#[test]
fn a_failing_node_is_left_out_and_all_failing_is_an_error() {
    let n1 = vec![line("n1", 1)];
    let got = run(
        vec![node("n1", &n1, None, 0), node("n2", &[], None, 2)],
        &["-o", "json"],
    )
    .expect("n1's flows");
    assert_eq!(got, n1);
    let err = run(
        vec![node("n1", &[], None, 2), node("n2", &[], None, 2)],
        &["-o", "json"],
    )
    .expect_err("no node");
    let text = format!("{err:#}");
    assert!(text.contains("node n1: meshctl observe failed"), "{text}");
    assert!(text.contains("node n2: meshctl observe failed"), "{text}");
}

#[test]
fn a_malformed_line_names_its_node_and_number() {
    let err = run(
        vec![node("n1", &[line("n1", 1), "{".into()], None, 0)],
        &["-o", "json"],
    )
    .expect_err("malformed");
    let text = format!("{err:#}");
    assert!(
        text.contains("node n1: line 2 is not a flow record"),
        "{text}"
    );
}

#[test]
fn follow_merges_the_histories_then_interleaves_live_lines() {
    // History: n1@3, n2@1 (merged: n2@1, n1@3); live, after a pause: n2@9, then n1@7 later.
    let n1 = vec![line("n1", 3), line("n1", 7)];
    let n2 = vec![line("n2", 1), line("n2", 9)];
    let got = run(
        vec![
            node("n1", &n1, Some("1.2"), 0),
            node("n2", &n2, Some("0.6"), 0),
        ],
        &["--follow", "-o", "json"],
    )
    .expect("observe");
    assert_eq!(
        got,
        vec![n2[0].clone(), n1[0].clone(), n2[1].clone(), n1[1].clone()],
        "live lines come as they arrive, not by time"
    );
}
