//! `meshctl observe` against a fake control socket: a unix listener in a temporary directory
//! that answers recorded stream lines (the daemon's side is tested in meshd).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

use meshd::flows::record::FlowsResponse;

/// A stream line: a flow between two pods (`verdict`, `reason`, `secs` past 10:00 UTC).
fn flow(secs: u32, verdict: &str, reason: &str, dst_port: u16) -> String {
    let time = format!("2026-12-06T10:{:02}:{:02}Z", secs / 60, secs % 60);
    let mut flow = serde_json::json!({
        "time": time, "verdict": verdict, "reason": reason, "event": "drop",
        "IP": {"source": "10.244.1.2", "destination": "10.244.2.3", "ipVersion": "IPv4"},
        "l4": {"TCP": {"source_port": 40000, "destination_port": dst_port}},
        "source": {"namespace": "shop", "pod_name": "web-1", "node_name": "n1"},
        "destination": {"namespace": "shop", "pod_name": "db-0", "node_name": "n2"},
        "interface": {"index": 7, "name": "msh1234"},
        "traffic_direction": "EGRESS", "trace_observation_point": "FROM_ENDPOINT",
        "packets": 1, "bytes": 60,
    });
    if reason == "policy-denied" {
        flow["egress_denied_by"] = serde_json::json!([
            {"namespace": "shop", "name": "deny-db", "kind": "NetworkPolicy"}
        ]);
        flow["drop_reason_desc"] = "POLICY_DENIED".into();
    }
    canonical(serde_json::json!({"flow": flow, "node_name": "n1", "time": time}))
}

fn lost(secs: u32, n: u64) -> String {
    let time = format!("2026-12-06T10:{:02}:{:02}Z", secs / 60, secs % 60);
    canonical(serde_json::json!({
        "lost_events": {"source": "RING_BUFFER", "num_events_lost": n},
        "node_name": "n1", "time": time,
    }))
}

/// The line as meshd writes it (and checks it is a valid stream line).
fn canonical(v: serde_json::Value) -> String {
    let line: FlowsResponse = serde_json::from_value(v).expect("a stream line");
    serde_json::to_string(&line).expect("json")
}

/// A fake meshd: answers one connection with `history`, then after `pause` with `live`, then
/// closes. The thread returns the request line it read.
struct FakeSocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    server: JoinHandle<String>,
}

fn serve(history: Vec<String>, pause: Duration, live: Vec<String>) -> FakeSocket {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meshd.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut request = String::new();
        BufReader::new(&stream)
            .read_line(&mut request)
            .expect("request");
        let mut w = &stream;
        for line in history {
            writeln!(w, "{line}").expect("write");
        }
        w.flush().expect("flush");
        if !live.is_empty() {
            std::thread::sleep(pause);
            for line in live {
                writeln!(w, "{line}").expect("write");
            }
        }
        request
    });
    FakeSocket {
        _dir: dir,
        path,
        server,
    }
}

fn meshctl(socket: &FakeSocket, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("observe")
        .arg("--socket")
        .arg(&socket.path)
        .args(args)
        .output()
        .expect("run meshctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_history_is_filtered_and_printed_as_a_table() {
    let socket = serve(
        vec![
            flow(1, "DROPPED", "policy-denied", 5432),
            lost(2, 17),
            flow(3, "FORWARDED", "to-tunnel", 5432),
            flow(4, "DROPPED", "strict-mode", 80),
        ],
        Duration::ZERO,
        vec![],
    );
    let out = meshctl(&socket, &["--verdict", "dropped", "--port", "5432"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(socket.server.join().expect("server"), "flows\n");
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 3, "header, the policy drop, the loss:\n{text}");
    assert!(rows[0].starts_with("TIME"), "{text}");
    for want in [
        "shop/web-1:40000",
        "shop/db-0:5432",
        "DROPPED",
        "policy-denied",
        "egress denied by shop/deny-db",
    ] {
        assert!(rows[1].contains(want), "{want}:\n{text}");
    }
    assert!(rows[2].contains("EVENTS LOST: 17"), "{text}");
}

#[test]
fn json_output_is_the_stream_lines_unchanged_and_last_keeps_the_newest() {
    let history = vec![
        flow(1, "DROPPED", "policy-denied", 5432),
        lost(2, 1),
        flow(3, "FORWARDED", "to-tunnel", 5432),
        flow(4, "DROPPED", "strict-mode", 80),
    ];
    let socket = serve(history.clone(), Duration::ZERO, vec![]);
    let out = meshctl(&socket, &["-o", "json", "--last", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = format!("{}\n{}\n{}\n", history[1], history[2], history[3]);
    assert_eq!(stdout(&out), want);
}

#[test]
fn a_malformed_line_is_an_error_naming_its_number() {
    let socket = serve(
        vec![
            flow(1, "DROPPED", "policy-denied", 1),
            "{\"flow\": 7}".into(),
        ],
        Duration::ZERO,
        vec![],
    );
    let out = meshctl(&socket, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("line 2 is not a flow record"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_meshd_that_refuses_flows_says_so() {
    let socket = serve(
        vec![r#"{"error":"unknown request \"flows\""}"#.into()],
        Duration::ZERO,
        vec![],
    );
    let out = meshctl(&socket, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("meshd refused the request: unknown request \"flows\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_flag_value_is_refused_naming_it_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "observe",
            "--socket",
            "/nonexistent/meshd.sock",
            "--protocol",
            "quic",
        ])
        .output()
        .expect("run meshctl");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--protocol \"quic\": expected tcp, udp, sctp, icmp"),
        "{err}"
    );
}

#[test]
fn follow_prints_the_last_of_the_history_then_live_lines() {
    let history = vec![
        flow(1, "DROPPED", "policy-denied", 5432),
        flow(2, "DROPPED", "spoofed-source", 5432),
    ];
    let live = vec![flow(9, "DROPPED", "strict-mode", 5432), lost(10, 3)];
    let socket = serve(history.clone(), Duration::from_millis(1500), live.clone());
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("observe")
        .arg("--socket")
        .arg(&socket.path)
        .args(["--follow", "--last", "1", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run meshctl");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    assert_eq!(first, history[1], "the newest of the history");
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the history is printed once the stream goes quiet, before live lines: {:?}",
        started.elapsed()
    );
    let rest: Vec<String> = lines.map(|l| l.expect("read")).collect();
    assert_eq!(rest, live, "then every live line as it comes");
    assert!(child.wait().expect("wait").success());
    assert_eq!(socket.server.join().expect("server"), "flows follow\n");
}

#[test]
fn the_documented_json_lines_are_stream_lines() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json-contract.md"),
    )
    .expect("docs/json-contract.md");
    let examples: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("{\"flow\"") || l.starts_with("{\"lost_events\""))
        .collect();
    assert_eq!(examples.len(), 2, "a flow and a lost-events notice");
    for line in examples {
        let parsed: FlowsResponse = serde_json::from_str(line).expect(line);
        let again: serde_json::Value = serde_json::to_value(&parsed).expect("json");
        let given: serde_json::Value = serde_json::from_str(line).expect(line);
        assert_eq!(again, given, "the example is exactly what meshd sends");
    }
}
