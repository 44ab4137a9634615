//! Tests of the traffic generators and sinks: codecs, loss, duplicate and reorder statistics, and
//! TCP and UDP runs over loopback.

use super::*;

fn loopbacks() -> Vec<SocketAddr> {
    let mut v = vec!["127.0.0.1:0".parse().unwrap()];
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        v.push("[::1]:0".parse().unwrap());
    }
    v
}

#[test]
fn pattern_is_deterministic_and_contains_marker() {
    let a = Pattern::bytes("MRK", 1000);
    let mut p = Pattern::new("MRK");
    let mut b = vec![0u8; 1000];
    // Fill in odd-sized pieces: same result.
    let (x, y) = b.split_at_mut(7);
    p.fill(x);
    p.fill(y);
    assert_eq!(a, b);
    let s = String::from_utf8(a).unwrap();
    assert!(s.starts_with("MRK-0000000000000000\nMRK-0000000000000001\n"));
    assert!(s.matches("MRK").count() >= 40);
    assert!(String::from_utf8(Pattern::bytes("", 40))
        .unwrap()
        .contains(DEFAULT_MARKER));
}

#[test]
fn digest_known_value() {
    assert_eq!(
        Digest::of(b"abc").sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn corrupted_byte_detected() {
    let data = Pattern::bytes("m", 10_000);
    let sent = Digest::of(&data);
    let mut bad = data.clone();
    bad[4321] ^= 0x01;
    assert!(verify(&sent, &Digest::of(&data)).is_ok());
    let err = verify(&sent, &Digest::of(&bad)).unwrap_err();
    assert!(matches!(err, TrafficError::Mismatch(_)));
    let short = Digest::of(&data[..9_999]);
    assert!(verify(&sent, &short)
        .unwrap_err()
        .to_string()
        .contains("bytes"));
}

#[test]
fn tcp_round_trip_verifies() {
    for addr in loopbacks() {
        let l = tcp_listen(addr).unwrap();
        let to = l.local_addr().unwrap();
        let sink = std::thread::spawn(move || tcp_sink(&l, 2, Duration::from_secs(20)));
        let r1 = tcp_send(to, 3_000_001, "hello-marker", Duration::from_secs(20)).unwrap();
        assert!(r1.ok, "{r1:?}");
        assert_eq!(r1.received.bytes, 3_000_001);
        let r2 = tcp_send(to, 0, "x", Duration::from_secs(20)).unwrap();
        assert!(r2.ok, "{r2:?}");
        let s = sink.join().unwrap().unwrap();
        assert_eq!(s.connections, 2);
        assert_eq!(s.total_bytes, 3_000_001);
        assert_eq!(s.digests[0].sha256, r1.sha256);
    }
}

#[test]
fn tcp_send_detects_lying_sink() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).unwrap();
        data[0] ^= 0xff;
        let mut line = serde_json::to_string(&Digest::of(&data)).unwrap();
        line.push('\n');
        s.write_all(line.as_bytes()).unwrap();
    });
    let r = tcp_send(to, 5000, "m", Duration::from_secs(10)).unwrap();
    fake.join().unwrap();
    assert!(!r.ok);
    assert!(r.error.unwrap().contains("sha256"));
}

#[test]
fn tcp_sink_times_out_without_connections() {
    let l = tcp_listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let e = tcp_sink(&l, 1, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, TrafficError::Timeout(_)));
}

#[test]
fn datagram_codec() {
    let d = encode_datagram(7, 99, 40, b"abc");
    assert_eq!(d.len(), 40);
    assert_eq!(decode_datagram(&d), Some((7, 99)));
    assert_eq!(&d[16..19], b"abc");
    assert_eq!(encode_datagram(1, 2, 3, b"").len(), UDP_HEADER_LEN);
    assert_eq!(decode_datagram(&[0; 15]), None);
}

#[test]
fn stats_loss_duplicates_reorder_gap() {
    let mut s = UdpStats::default();
    let t0 = Instant::now();
    for (i, seq) in [0u64, 1, 3, 2, 5, 5, 9].iter().enumerate() {
        let gap = if i == 4 { 50 } else { 1 };
        let at = t0 + Duration::from_millis(i as u64 * 10 + gap);
        s.record(*seq, 0, at);
    }
    s.record_datagram(&[1, 2, 3], t0 + Duration::from_millis(100));
    let r = s.report();
    assert_eq!(r.received, 7);
    assert_eq!(r.highest_seq, 9);
    // 0..=9 is 10 seqs; unique received: 0,1,2,3,5,9 = 6.
    assert_eq!(r.lost, 4);
    assert_eq!(r.duplicates, 1);
    assert_eq!(r.reordered, 1);
    assert_eq!(r.malformed, 1);
    assert!((r.max_gap_ms - 59.0).abs() < 0.5, "{}", r.max_gap_ms);
    // Lost: 4 (after 3), then 6, 7, 8 (after 5).
    let runs: Vec<(u64, u64)> = r.lost_runs.iter().map(|l| (l.first, l.count)).collect();
    assert_eq!(runs, vec![(4, 1), (6, 3)]);
}

#[test]
fn lost_runs_name_when_the_loss_began_and_are_capped() {
    let mut s = UdpStats::default();
    let t0 = Instant::now();
    // Every third datagram is lost: 2, 5, 8, ...
    for seq in 0..100u64 {
        if seq % 3 != 2 {
            s.record(seq, 1_000 + seq, t0);
        }
    }
    let r = s.report();
    assert_eq!(r.lost_runs.len(), MAX_LOST_RUNS);
    assert_eq!(r.lost_runs[0].first, 2);
    assert_eq!(r.lost_runs[0].after_sent_ns, 1_001);
    assert_eq!(r.lost_runs[1].first, 5);
    assert!(s.clone().report().lost > MAX_LOST_RUNS as u64);
}

#[test]
fn empty_stats() {
    let r = UdpStats::default().report();
    assert_eq!(r.received, 0);
    assert_eq!(r.lost, 0);
    assert_eq!(r.max_gap_ms, 0.0);
}

#[test]
fn udp_stream_over_loopback_with_skips() {
    for addr in loopbacks() {
        let sock = udp_bind(addr).unwrap();
        let to = sock.local_addr().unwrap();
        let sink = std::thread::spawn(move || {
            udp_sink(&sock, Duration::from_secs(10), Some(Duration::from_secs(1)))
        });
        let tx = UdpSocket::bind(if to.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })
        .unwrap();
        // Seqs 0..20 with 4, 5 and 11 skipped, 7 sent twice.
        for seq in (0u64..20).filter(|s| ![4, 5, 11].contains(s)) {
            let d = encode_datagram(seq, now_ns(), 64, b"mk");
            tx.send_to(&d, to).unwrap();
            if seq == 7 {
                tx.send_to(&d, to).unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let r = sink.join().unwrap().unwrap();
        assert_eq!(r.highest_seq, 19, "{r:?}");
        assert_eq!(r.lost, 3, "{r:?}");
        assert_eq!(r.duplicates, 1, "{r:?}");
        assert_eq!(r.received, 18, "{r:?}");
    }
}

#[test]
fn udp_send_schedule_and_sink() {
    let sock = udp_bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = sock.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        udp_sink(&sock, Duration::from_secs(5), Some(Duration::from_secs(1)))
    });
    let start = Instant::now();
    let r = udp_send(&UdpSendConfig {
        to,
        interval: Duration::from_millis(5),
        duration: Duration::from_millis(500),
        size: 100,
        marker: b"MARK".to_vec(),
    })
    .unwrap();
    let took = start.elapsed();
    assert_eq!(r.sent, 100, "{r:?}");
    assert_eq!(r.send_errors, 0);
    assert!(took < Duration::from_secs(3), "{took:?}");
    let s = sink.join().unwrap().unwrap();
    assert_eq!(s.received, 100, "{s:?}");
    assert_eq!(s.lost, 0);
    assert_eq!(s.highest_seq, 99);
}

#[test]
fn udp_send_errors_are_counted() {
    // Sending to a port-0 destination fails on every datagram.
    let r = udp_send(&UdpSendConfig {
        to: "127.0.0.1:0".parse().unwrap(),
        interval: Duration::from_millis(1),
        duration: Duration::from_millis(20),
        size: 16,
        marker: Vec::new(),
    })
    .unwrap();
    assert_eq!(r.sent, 0);
    assert!(r.send_errors > 0);
    assert!(r.last_error.is_some());
}
