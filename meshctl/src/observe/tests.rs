//! Reading stream lines and `--follow`'s history.

use meshd::flows::filter::{FilterFlags, FlowFilter};
use meshd::flows::record::{FlowsResponse, LostEvents, LostEventsSource, ResponseItem};

use std::time::Duration;

use super::*;

/// A lost-events line on `node` at `secs` past 10:00 (enough to test ordering and passing).
fn line(node: &str, secs: i64) -> Received {
    let base: jiff::Timestamp = "2026-12-06T10:00:00Z".parse().expect("time");
    let line = FlowsResponse {
        item: ResponseItem::LostEvents(LostEvents {
            source: LostEventsSource::RingBuffer,
            num_events_lost: 1,
        }),
        node_name: node.into(),
        time: base
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .expect("time"),
    };
    Received {
        text: serde_json::to_string(&line).expect("json"),
        line,
    }
}

#[test]
fn a_malformed_line_is_an_error_naming_its_number() {
    let err = parse_line("meshd", 3, "{\"flow\": 1}").expect_err("malformed");
    let text = err.to_string();
    assert!(
        text.starts_with("meshd: line 3 is not a flow record"),
        "{text}"
    );
    assert!(matches!(err, ObserveError::Malformed { number: 3, .. }));
}

#[test]
fn the_daemons_error_answer_is_reported_as_a_refusal() {
    let err =
        parse_line("meshd", 1, r#"{"error":"unknown request \"flows\""}"#).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "meshd: meshd refused the request: unknown request \"flows\""
    );
}

#[test]
fn follow_holds_the_history_until_quiet_then_passes_lines_through() {
    let filter = FlowFilter::from_flags(
        &FilterFlags {
            last: Some("1".into()),
            ..Default::default()
        },
        jiff::Timestamp::now(),
    )
    .expect("filter");
    let mut state = FollowState::new(filter);
    // Lost-events lines always pass --last, so the history is kept whole and merged by time.
    assert!(state.line(line("n2", 2)).is_empty());
    assert!(state.line(line("n1", 1)).is_empty());
    assert!(state.line(line("n1", 3)).is_empty());
    let history = state.quiet(Duration::ZERO);
    let order: Vec<(String, i64)> = history
        .iter()
        .map(|l| (l.line.node_name.clone(), l.line.time.as_second() % 60))
        .collect();
    assert_eq!(
        order,
        vec![("n1".into(), 1), ("n2".into(), 2), ("n1".into(), 3)]
    );
    assert!(
        state.quiet(Duration::ZERO).is_empty(),
        "the history is printed once"
    );
    assert_eq!(state.line(line("n2", 0)), vec![line("n2", 0)]);
}

#[test]
fn the_table_printer_writes_its_header_once_before_the_first_line() {
    let mut out = Vec::new();
    let mut printer = Printer::new(&mut out, Output::Table);
    printer.print(&[]).expect("print");
    printer.print(&[line("n1", 1)]).expect("print");
    printer.print(&[line("n1", 2)]).expect("print");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(text.matches("TIME").count(), 1, "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[test]
fn json_output_is_the_text_as_read_unknown_fields_included() {
    let text = r#"{"lost_events":{"source":"RING_BUFFER","num_events_lost":2,"newer":1},"node_name":"n1","time":"2026-12-06T10:00:00Z","cluster":"c"}"#;
    let received = parse_line("meshd", 1, text).expect("a newer meshd's line still parses");
    let mut out = Vec::new();
    Printer::new(&mut out, Output::Json)
        .print(&[received])
        .expect("print");
    assert_eq!(String::from_utf8(out).expect("utf-8"), format!("{text}\n"));
}

#[test]
fn follow_waits_for_a_first_line_before_the_history_can_end() {
    let filter =
        FlowFilter::from_flags(&FilterFlags::default(), jiff::Timestamp::now()).expect("filter");
    let mut state = FollowState::new(filter);
    // Quiet before anything arrived (observers still starting): still the history.
    assert!(state.quiet(Duration::from_millis(300)).is_empty());
    assert!(state.line(line("n1", 5)).is_empty(), "held as history");
    assert!(state.line(line("n2", 4)).is_empty(), "held as history");
    assert_eq!(
        state.quiet(Duration::from_millis(600)),
        vec![line("n2", 4), line("n1", 5)]
    );
    assert_eq!(state.line(line("n1", 1)), vec![line("n1", 1)], "live");

    // Nothing at all within the grace: the history is empty, live lines pass.
    let mut idle = FollowState::new(
        FlowFilter::from_flags(&FilterFlags::default(), jiff::Timestamp::now()).expect("filter"),
    );
    assert!(idle.quiet(HISTORY_GRACE).is_empty());
    assert_eq!(idle.line(line("n1", 1)), vec![line("n1", 1)]);
}

#[test]
fn the_history_is_ordered_by_time_before_last_applies() {
    let got = last_by_time(vec![line("n1", 3), line("n1", 1), line("n1", 2)], None);
    assert_eq!(got, vec![line("n1", 1), line("n1", 2), line("n1", 3)]);
}
