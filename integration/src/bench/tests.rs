//! Tests of the bench's parsers, UAPI requests and answers, statistics, verdicts and report.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wgdp::uapi as codec;

use super::report::check;
use super::*;

#[test]
fn parses_iperf() {
    let j = r#"{"end":{"sum_sent":{"bits_per_second":2e9,"retransmits":3},"sum_received":{"bits_per_second":1.5e9}}}"#;
    let run = parse_iperf(j).unwrap();
    assert_eq!(run.bits_per_second, 1.5e9);
    assert_eq!(run.retransmits, Some(3));
    assert!((run.gbit_s() - 1.5).abs() < 1e-12);
    // UDP-style output has only "sum".
    let j = r#"{"end":{"sum":{"bits_per_second":1e9}}}"#;
    assert_eq!(parse_iperf(j).unwrap().retransmits, None);
}

#[test]
fn iperf_errors() {
    let e = parse_iperf(r#"{"start":{},"error":"unable to connect to server"}"#).unwrap_err();
    assert!(e.to_string().contains("unable to connect"), "{e}");
    assert!(parse_iperf("").is_err());
    assert!(parse_iperf(r#"{"start":{}}"#).is_err());
    assert!(parse_iperf(r#"{"end":{}}"#).is_err());
}

#[test]
fn parses_ping() {
    let out = "PING 10.250.0.2 (10.250.0.2) 56(84) bytes of data.\n\n--- 10.250.0.2 ping statistics ---\n50 packets transmitted, 49 received, 2% packet loss, time 537ms\nrtt min/avg/max/mdev = 0.021/0.045/0.120/0.010 ms\n";
    let p = parse_ping(out).unwrap();
    assert_eq!((p.transmitted, p.received), (50, 49));
    assert!((p.avg_ms - 0.045).abs() < 1e-12);
    assert!((p.min_ms - 0.021).abs() < 1e-12);
    assert!((p.max_ms - 0.120).abs() < 1e-12);
    // With errors reported on the counts line.
    let out = "5 packets transmitted, 5 received, +1 duplicates, 0% packet loss, time 4ms\nrtt min/avg/max/mdev = 1.0/2.0/3.0/0.5 ms\n";
    assert_eq!(parse_ping(out).unwrap().avg_ms, 2.0);
}

#[test]
fn ping_errors() {
    assert!(parse_ping("nothing").is_err());
    let lost = "50 packets transmitted, 0 received, 100% packet loss, time 1000ms\n";
    assert!(parse_ping(lost)
        .unwrap_err()
        .to_string()
        .contains("no replies"));
    let bad = "3 packets transmitted, 3 received, 0% packet loss\nrtt min/avg/max/mdev = x/y ms\n";
    assert!(parse_ping(bad).is_err());
}

#[test]
fn parses_proc_status() {
    let status = "Name:\tmeshd-wg\nUmask:\t0022\nPPid:\t4242\nVmPeak:\t  123456 kB\nVmRSS:\t    8612 kB\nRssAnon:\t 3000 kB\n";
    assert_eq!(status_field(status, "VmRSS"), Some(8612));
    assert_eq!(status_field(status, "PPid"), Some(4242));
    assert_eq!(status_field(status, "Vm"), None);
    assert_eq!(status_field(status, "VmSwap"), None);
}

#[test]
fn parses_proc_stat() {
    // comm with a space and a parenthesis; utime 1500, stime 250.
    let stat = "4242 (weird) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1500 250 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
    assert_eq!(stat_cpu_ticks(stat), Some(1750));
    assert_eq!(stat_cpu_ticks("4242 (x) S 1 2"), None);
    assert_eq!(stat_cpu_ticks("garbage"), None);
}

#[test]
fn cpu_percentages() {
    assert_eq!(cpu_percent(50, 100, Duration::from_secs(10)), Some(5.0));
    assert_eq!(cpu_percent(0, 100, Duration::from_secs(10)), Some(0.0));
    assert_eq!(cpu_percent(10, 100, Duration::ZERO), None);
    assert_eq!(cpu_percent(10, 0, Duration::from_secs(1)), None);
}

#[test]
fn reads_own_process() {
    let pid = std::process::id();
    assert!(read_rss_kib(pid).unwrap() > 0);
    read_cpu_ticks(pid).unwrap();
    assert!(read_rss_kib(u32::MAX).is_err());
}

#[test]
fn spreads_and_ratios() {
    assert_eq!(spread(&[]), None);
    let s = spread(&[3.0, 1.0, 2.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    assert_eq!(spread(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
    assert_eq!(spread(&[f64::NAN, 1.0]).unwrap().median, 1.0);
    assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
    assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    assert_eq!(ratio(None, Some(1.0)), None);
    assert_eq!(
        difference(Some(0.3), Some(0.1)).map(|d| (d * 10.0).round()),
        Some(2.0)
    );
    assert_eq!(difference(None, Some(0.1)), None);
}

#[test]
fn userspace_command_lines() {
    assert_eq!(Userspace::WireguardGo.args("wg0"), ["-f", "wg0"]);
    assert_eq!(
        Userspace::Boringtun.args("wg0"),
        ["-f", "--disable-drop-privileges", "--threads", "1", "wg0"]
    );
    assert_eq!(Userspace::MeshdWg.args("wg0"), ["--interface", "wg0"]);
    for u in [
        Userspace::WireguardGo,
        Userspace::Boringtun,
        Userspace::MeshdWg,
    ] {
        assert_eq!(Userspace::from_name(u.name()), Some(u));
    }
    assert_eq!(Userspace::from_name("wg"), None);
    assert_eq!(uapi_socket("wg0"), Path::new("/var/run/wireguard/wg0.sock"));
}

#[test]
fn synthetic_peers_are_distinct() {
    let n = 5_000;
    let peers: Vec<SyntheticPeer> = (0..n).map(synthetic_peer).collect();
    let distinct = |f: fn(&SyntheticPeer) -> String| {
        peers
            .iter()
            .map(f)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert_eq!(distinct(|p| key_hex(&p.public_key)), n as usize);
    assert_eq!(distinct(|p| p.allowed_v4.clone()), n as usize);
    assert_eq!(distinct(|p| p.allowed_v6.clone()), n as usize);
    assert_eq!(distinct(|p| p.endpoint.clone()), n as usize);
    for p in &peers {
        p.allowed_v4.parse::<ipnet::Ipv4Net>().unwrap();
        p.allowed_v6.parse::<ipnet::Ipv6Net>().unwrap();
        p.endpoint.parse::<std::net::SocketAddr>().unwrap();
    }
    let last = synthetic_peer(MAX_SYNTHETIC_PEERS - 1);
    assert_eq!(last.allowed_v4, "10.255.255.0/24");
    assert_eq!(last.endpoint, "198.19.255.255:51820");
    assert_eq!(synthetic_peer(7), synthetic_peer(7));
}

#[test]
fn uapi_requests() {
    let key = [0xab; 32];
    assert_eq!(key_hex(&key), "ab".repeat(32));
    assert_eq!(
        uapi_device_request(&key, 51820),
        format!(
            "set=1\nprivate_key={}\nlisten_port=51820\n\n",
            "ab".repeat(32)
        )
    );
    let p = synthetic_peer(258);
    let req = uapi_add_peers_request(std::slice::from_ref(&p));
    // The codec writes a peer's endpoint before its allowed IPs.
    assert_eq!(
        req,
        format!(
            "set=1\npublic_key={}\nendpoint=198.19.1.2:51820\nreplace_allowed_ips=true\nallowed_ip=10.1.2.0/24\nallowed_ip=fd6d:6273:0:102::/64\n\n",
            key_hex(&p.public_key)
        )
    );
    let two = uapi_add_peers_request(&[synthetic_peer(0), synthetic_peer(1)]);
    assert_eq!(request_peer_count(&two), 2);
    assert!(two.starts_with("set=1\n") && two.ends_with("\n\n"));
    assert_eq!(
        two.matches("\n\n").count(),
        1,
        "one blank line ends the request"
    );
    assert_eq!(
        uapi_remove_peer_request(&key),
        format!("set=1\npublic_key={}\nremove=true\n\n", "ab".repeat(32))
    );
}

#[test]
fn uapi_answers() {
    assert_eq!(uapi_errno("errno=0\n\n"), Some(0));
    assert_eq!(uapi_errno("errno=-22\n\n"), Some(-22));
    assert_eq!(uapi_errno("private_key=00\nerrno=0\n\n"), Some(0));
    assert_eq!(uapi_errno(""), None);
    assert!(uapi_answer_complete("errno=0\n\n"));
    assert!(!uapi_answer_complete("errno=0\n"));
    let get = format!(
        "private_key={}\nlisten_port=1\npublic_key={}\nendpoint=1.2.3.4:5\npublic_key={}\nerrno=0\n\n",
        "aa".repeat(32),
        "bb".repeat(32),
        "cc".repeat(32)
    );
    assert_eq!(uapi_peer_count(&get), 2);
}

/// The number of peer sections of a `set=1` request, as the device reads them.
fn request_peer_count(request: &str) -> usize {
    let lines = request.strip_suffix("\n\n").unwrap_or(request).lines();
    match codec::parse_request(lines) {
        Ok(codec::Request::Set(set)) => set.peers.len(),
        other => panic!("not a set request: {other:?}"),
    }
}

/// A fake device on a socket in a temporary directory: answers `errno=0` to requests that
/// start with `set=1` or `get=1` and `errno=22` otherwise, one request per connection.
fn fake_device(dir: &Path, connections: usize) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
    let path = dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..connections {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.ends_with(b"\n\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8(req).unwrap();
            let answer = if req.starts_with("get=1") {
                format!(
                    "listen_port=1\npublic_key={}\npublic_key={}\nerrno=0\n\n",
                    "aa".repeat(32),
                    "bb".repeat(32)
                )
            } else if req.starts_with("set=1") {
                "errno=0\n\n".to_string()
            } else {
                "errno=22\n\n".to_string()
            };
            conn.write_all(answer.as_bytes()).unwrap();
            seen.push(req);
        }
        seen
    });
    (path, handle)
}

#[test]
fn uapi_client_against_fake_device() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, device) = fake_device(dir.path(), 3);
    let peers: Vec<SyntheticPeer> = (0..1_000).map(synthetic_peer).collect();
    uapi_set(&sock, &uapi_add_peers_request(&peers)).unwrap();
    assert_eq!(uapi_peer_count(&uapi_get(&sock).unwrap()), 2);
    let err = uapi_set(&sock, "bogus\n\n").unwrap_err();
    assert!(err.to_string().contains("errno=22"), "{err}");
    let seen = device.join().unwrap();
    assert_eq!(
        request_peer_count(&seen[0]),
        1_000,
        "the whole request arrived"
    );
    assert!(uapi_set(&dir.path().join("missing.sock"), "set=1\n\n").is_err());
}

fn scenario(name: &str, g1: f64, g4: f64, rtt: f64) -> ScenarioResult {
    ScenarioResult {
        name: name.into(),
        status: "ok".into(),
        gbit_s_1: Some(g1),
        gbit_s_4: Some(g4),
        rtt_ms: Some(rtt),
        ..Default::default()
    }
}

#[test]
fn rounds_merge_to_medians_of_the_successful_ones() {
    let mut failed = scenario(MESHD, 9.0, 9.0, 9.0);
    failed.status = "error: lab".into();
    let mut a = scenario(MESHD, 4.0, 5.0, 0.25);
    a.rss_kib = Some(100);
    let mut c = scenario(MESHD, 5.0, 4.0, 0.2);
    c.rss_kib = Some(300);
    let m = merge_rounds(vec![a, failed, scenario(MESHD, 4.4, 6.0, 0.18), c]);
    assert_eq!(m.status, "ok");
    assert_eq!(m.gbit_s_1, Some(4.4));
    assert_eq!(m.gbit_s_4, Some(5.0));
    assert_eq!(m.rtt_ms, Some(0.2));
    assert_eq!(
        m.rss_kib,
        Some(100),
        "lower median of the two rounds that had one"
    );
    assert_eq!(m.rounds.len(), 4);
    assert_eq!(m.rounds[1].status, "error: lab");
    // One round: as it was, nothing listed; none ok: the last, with the rounds listed.
    let one = merge_rounds(vec![scenario(PLAIN, 20.0, 30.0, 0.04)]);
    assert!(one.rounds.is_empty());
    assert_eq!(one.gbit_s_1, Some(20.0));
    let mut x = scenario(PLAIN, 1.0, 1.0, 1.0);
    x.status = "error: a".into();
    let mut y = x.clone();
    y.status = "error: b".into();
    let none = merge_rounds(vec![x, y]);
    assert_eq!(none.status, "error: b");
    assert_eq!(none.rounds.len(), 2);
}

#[test]
fn rounds_are_listed_when_there_are_several() {
    let mut r = sample_report();
    r.rounds = 2;
    r.results[0] = merge_rounds(vec![
        scenario(PLAIN, 16.0, 24.0, 0.04),
        scenario(PLAIN, 18.0, 26.0, 0.05),
    ]);
    r.finish(&Targets::default());
    let text = r.render();
    assert!(text.contains("medians of 2 rounds"), "{text}");
    assert!(text.contains("16.00 18.00;  0.040 0.050"), "{text}");
    assert_eq!(r.results[0].gbit_s_1, Some(17.0));
}

fn sample_report() -> Report {
    Report {
        duration_s: 10,
        pings: 50,
        ping_interval_ms: 10,
        cpus: 2,
        scale_peers: 5_000,
        results: vec![
            scenario(PLAIN, 16.0, 24.0, 0.04),
            scenario(WIREGUARD_GO, 0.8, 0.8, 0.5),
            scenario(BORINGTUN, 1.5, 1.2, 0.3),
            scenario(MESHD, 4.8, 6.0, 0.2),
            ScenarioResult {
                name: MESHD_ROUTES.into(),
                status: "error: lab".into(),
                ..Default::default()
            },
        ],
        peer_scale: vec![
            ScaleResult {
                name: WIREGUARD_GO.into(),
                status: "ok".into(),
                rss_kib: Some(60 * 1024),
                ..Default::default()
            },
            ScaleResult {
                name: MESHD_WG.into(),
                status: "ok".into(),
                rss_kib: Some(40 * 1024),
                add_ms: spread(&[0.1, 0.2, 0.3]),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

#[test]
fn finish_derives_ratios_and_verdicts() {
    let mut r = sample_report();
    r.finish(&Targets::default());
    let wg = r.scenario(WIREGUARD_GO).unwrap();
    assert_eq!(wg.ratio_1, Some(0.05));
    assert!((wg.added_rtt_ms.unwrap() - 0.46).abs() < 1e-9);
    assert!(
        r.results[4].ratio_1.is_none(),
        "failed scenarios get no ratios"
    );
    let c = &r.comparisons;
    assert!((c.meshd_vs_wireguard_go_1.unwrap() - 6.0).abs() < 1e-9);
    assert!((c.meshd_vs_boringtun_1.unwrap() - 3.2).abs() < 1e-9);
    assert!((c.meshd_vs_boringtun_4.unwrap() - 5.0).abs() < 1e-9);
    assert!((c.meshd_of_plain_1.unwrap() - 0.3).abs() < 1e-9);
    assert_eq!(c.ebpf_vs_routes_1, None);
    let verdicts: Vec<Verdict> = r.targets.iter().map(|t| t.verdict).collect();
    // 6x >= 5 pass; 3.2x >= 3 pass; 30% >= 25% pass; 0.16 ms <= 0.2 pass; 40 <= 48 pass;
    // the like-for-like rows were not measured in this sample.
    assert_eq!(verdicts[..5], [Verdict::Pass; 5]);
    assert_eq!(verdicts[5..], [Verdict::NotMeasured; 4]);
    assert!((r.targets[2].measured.unwrap() - 30.0).abs() < 1e-9);
    assert_eq!(r.targets[4].measured, Some(40.0));
    assert!(r.targets[4].target.contains("5000"));
}

#[test]
fn like_for_like_rows_compare_the_datapath_and_the_lab_with_their_own_baselines() {
    let mut r = sample_report();
    r.results.push(scenario(MESHD_WG_VETH, 4.16, 5.0, 0.2));
    r.results.push(scenario(PLAIN_LAB, 9.6, 15.0, 0.14));
    r.finish(&Targets::default());
    let c = &r.comparisons;
    assert!((c.datapath_of_plain_1.unwrap() - 0.26).abs() < 1e-9);
    assert!((c.lab_of_plain_lab_1.unwrap() - 0.5).abs() < 1e-9);
    assert!((c.lab_added_rtt_ms.unwrap() - 0.06).abs() < 1e-9);
    let rows: Vec<(&str, Verdict)> = r.targets[5..]
        .iter()
        .map(|t| (t.target.as_str(), t.verdict))
        .collect();
    assert_eq!(
        rows,
        [
            ("meshd-wg (veth) of plain veth, 1 stream", Verdict::Pass),
            ("meshd-wg (veth) RTT added over plain veth", Verdict::Pass),
            ("meshd lab of plain lab, 1 stream", Verdict::Pass),
            ("meshd lab RTT added over plain lab", Verdict::Pass),
        ]
    );
    assert!(r.render().contains("meshd lab of plain lab: 50.0%"));
}

#[test]
fn targets_fail_and_go_unmeasured() {
    let mut r = sample_report();
    r.results[3] = scenario(MESHD, 0.7, 0.7, 0.33);
    r.peer_scale.pop();
    r.results.remove(2); // no boringtun-cli
    r.finish(&Targets::default());
    let verdicts: Vec<Verdict> = r.targets.iter().take(5).map(|t| t.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Fail,
            Verdict::NotMeasured,
            Verdict::Fail,
            Verdict::Fail,
            Verdict::NotMeasured
        ]
    );
    // Bars are inclusive.
    assert_eq!(check("t", Some(5.0), 5.0, true, "x").verdict, Verdict::Pass);
    assert_eq!(
        check("t", Some(0.2), 0.2, false, "ms").verdict,
        Verdict::Pass
    );
    assert_eq!(
        check("t", Some(0.21), 0.2, false, "ms").verdict,
        Verdict::Fail
    );
}

#[test]
fn renders_tables() {
    let mut r = sample_report();
    r.finish(&Targets::default());
    let text = r.render();
    for needle in [
        "Data plane",
        "Peer scale (5000 peers",
        "boringtun-cli",
        "meshd / wireguard-go:   6.00x / 7.50x",
        "meshd of plain veth:    30.0% / 25.0%",
        "meshd +0.160 ms",
        "0.200 [0.10-0.30]",
        "PASS",
        "error: lab",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["targets"][0]["verdict"], "pass");
    assert_eq!(json["results"][0]["name"], PLAIN);
    assert_eq!(ping_interval_arg(10), "0.010");
}

#[test]
fn percentiles_by_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), Some(50.0));
    assert_eq!(percentile(&v, 99.0), Some(99.0));
    assert_eq!(percentile(&v, 100.0), Some(100.0));
    assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), Some(3.0));
    assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
    assert_eq!(percentile(&[], 50.0), None);
}
