//! Root tests of the datapath as `meshd-wg` runs it, end to end: two namespaces joined by a
//! veth, a device in each (or wireguard-go in one), configured with `wg`; ping, TCP and UDP
//! through the tunnel, both families, with and without offloads, one or two TUN queues.
//!
//! The throughput comparison is `#[ignore]`d: `cargo test -p wgdp --release --test traffic --
//! --ignored --nocapture`.

mod common;

use std::time::SystemTime;

use common::{run_ok, thread_names, Impl, Pair};

#[test]
fn handshake_ping_tcp_udp_both_families_without_checksum_errors() {
    testkit::require_tools(&["wg", "iperf3", "nstat", "ip"]);
    let p = Pair::new(Impl::Wgdp, Impl::Wgdp, false);
    // One queue: one thread seals and opens.
    for pid in [p.pid_a, p.pid_b] {
        let names = thread_names(pid);
        assert!(names.iter().any(|t| t == "wgdp-io"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|t| t.starts_with("wgdp-tun") || t == "wgdp-rx"),
            "{names:?}"
        );
    }
    for v6 in [false, true] {
        p.ping(true, v6);
        p.ping(false, v6);
    }
    // `wg show` prints the right keys and a sane handshake time.
    let dump = p.a.wg(&["show", &p.ia, "dump"]);
    let mut lines = dump.lines();
    let dev: Vec<&str> = lines.next().expect("device line").split('\t').collect();
    assert_eq!(dev[0], p.ka.private, "private key");
    assert_eq!(dev[1], p.ka.public, "public key");
    assert_eq!(dev[2], "51820");
    let peer: Vec<&str> = lines.next().expect("peer line").split('\t').collect();
    assert_eq!(peer[0], p.kb.public);
    assert_eq!(peer[2], format!("198.18.{}.2:51820", p.net));
    let hs: u64 = peer[4].parse().expect("handshake time");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        hs > 0 && now.abs_diff(hs) < 60,
        "handshake {hs} vs now {now}"
    );
    let (rx, tx): (u64, u64) = (peer[5].parse().expect("rx"), peer[6].parse().expect("tx"));
    assert!(rx > 0 && tx > 0, "{dump}");
    let shown = p.a.wg(&["show", &p.ia]);
    assert!(
        shown.contains(&format!("public key: {}", p.ka.public)),
        "{shown}"
    );
    assert!(!shown.contains("years ago"), "{shown}");

    let before = p.csum_errors();
    for v6 in [false, true] {
        for client_a in [true, false] {
            let gbps = p.iperf(client_a, v6, 2, &[]);
            println!("TCP v6={v6} a->b={client_a}: {gbps:.2} Gbit/s");
            assert!(gbps > 0.01, "TCP through the tunnel: {gbps}");
            let udp = p.iperf(client_a, v6, 2, &["-u", "-b", "200M", "-l", "1200"]);
            println!("UDP v6={v6} a->b={client_a}: {udp:.2} Gbit/s");
            assert!(udp > 0.01, "UDP through the tunnel: {udp}");
        }
    }
    let after = p.csum_errors();
    assert_eq!(
        before, after,
        "checksum errors (TcpInCsumErrors, UdpInCsumErrors) a, b"
    );
}

#[test]
fn two_tun_queues_carry_traffic_both_ways() {
    testkit::require_tools(&["wg", "iperf3", "nstat", "ip"]);
    let p = Pair::with_threads(Impl::Wgdp, Impl::Wgdp, false, 2);
    // Each queue has its own reader; the receiving thread only receives.
    for pid in [p.pid_a, p.pid_b] {
        let names = thread_names(pid);
        let count = |n: &str| names.iter().filter(|t| *t == n).count();
        assert_eq!(count("wgdp-rx"), 1, "{names:?}");
        assert_eq!(count("wgdp-tun0"), 1, "{names:?}");
        assert_eq!(count("wgdp-tun1"), 1, "{names:?}");
        assert_eq!(count("wgdp-io"), 0, "{names:?}");
    }
    for v6 in [false, true] {
        p.ping(true, v6);
        p.ping(false, v6);
    }
    let before = p.csum_errors();
    for v6 in [false, true] {
        for client_a in [true, false] {
            // Several flows, so that the kernel spreads what it sends over both queues.
            let gbps = p.iperf(client_a, v6, 2, &["-P", "4"]);
            println!("TCP x4 v6={v6} a->b={client_a}: {gbps:.2} Gbit/s");
            assert!(gbps > 0.01, "TCP through the tunnel: {gbps}");
        }
    }
    let after = p.csum_errors();
    assert_eq!(
        before, after,
        "checksum errors (TcpInCsumErrors, UdpInCsumErrors) a, b"
    );
}

#[test]
fn per_packet_fallback_interoperates_with_offloads() {
    testkit::require_tools(&["wg", "iperf3", "nstat", "ip"]);
    let p = Pair::new(Impl::Wgdp, Impl::WgdpPlain, false);
    p.ping(true, false);
    p.ping(false, true);
    let before = p.csum_errors();
    for client_a in [true, false] {
        let gbps = p.iperf(client_a, client_a, 2, &[]);
        println!("TCP offloads→plain={client_a}: {gbps:.2} Gbit/s");
        assert!(gbps > 0.01);
        let udp = p.iperf(client_a, !client_a, 2, &["-u", "-b", "100M", "-l", "1200"]);
        println!("UDP offloads→plain={client_a}: {udp:.2} Gbit/s");
        assert!(udp > 0.01);
    }
    assert_eq!(before, p.csum_errors());
}

#[test]
fn ipv6_underlay_listen_port_change_and_fwmark() {
    testkit::require_tools(&["wg", "ss", "ip"]);
    let p = Pair::new(Impl::Wgdp, Impl::Wgdp, true);
    p.ping(true, false);
    p.ping(false, true);
    // Move b to another port and tell a; traffic continues over the rebound sockets.
    p.b.wg(&["set", &p.ib, "listen-port", "51999", "fwmark", "0x42"]);
    let shown = p.b.wg(&["show", &p.ib]);
    assert!(shown.contains("listening port: 51999"), "{shown}");
    assert!(shown.contains("fwmark: 0x42"), "{shown}");
    let ss = run_ok(p.b.cmd("ss").args(["-uanp"]));
    assert!(ss.contains(":51999"), "{ss}");
    assert!(!ss.contains(":51820 "), "old sockets closed: {ss}");
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "endpoint",
        &format!("[fd18:{}::2]:51999", p.net),
    ]);
    p.ping(true, false);
    p.ping(false, false);
    p.b.wg(&["set", &p.ib, "fwmark", "off"]);
    assert!(!p.b.wg(&["show", &p.ib]).contains("fwmark"));
}

#[test]
fn wire_compatible_with_wireguard_go_both_ways() {
    testkit::require_tools(&["wg", "wireguard-go", "iperf3", "nstat", "ip"]);
    // wireguard-go in a, wgdp in b; each side initiates once.
    let p = Pair::new(Impl::WireguardGo, Impl::Wgdp, false);
    p.ping(true, false);
    p.ping(false, true);
    let before = p.csum_errors();
    for client_a in [true, false] {
        let gbps = p.iperf(client_a, false, 2, &[]);
        println!("TCP wireguard-go a->b={client_a}: {gbps:.2} Gbit/s");
        assert!(gbps > 0.01);
        let udp = p.iperf(client_a, true, 2, &["-u", "-b", "100M", "-l", "1200"]);
        println!("UDP v6 wireguard-go a->b={client_a}: {udp:.2} Gbit/s");
        assert!(udp > 0.01);
    }
    assert_eq!(before, p.csum_errors());
    // And the other way round: wgdp initiates after wireguard-go restarts its session.
    let p = Pair::new(Impl::Wgdp, Impl::WireguardGo, false);
    p.ping(true, true);
    p.ping(false, false);
    let hs = p.a.wg(&["show", &p.ia, "latest-handshakes"]);
    assert!(hs.contains(&p.kb.public), "{hs}");
}

#[test]
#[ignore = "benchmark: cargo test -p wgdp --release --test traffic -- --ignored --nocapture"]
fn bench_one_tcp_stream_wgdp_vs_wireguard_go() {
    testkit::require_tools(&["wg", "wireguard-go", "iperf3", "nstat", "ip"]);
    let secs = std::env::var("WGDP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let threads = std::env::var("WGDP_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut results = Vec::new();
    for kind in [Impl::Wgdp, Impl::WireguardGo] {
        let p = Pair::with_threads(kind, kind, false, threads);
        p.ping(true, false);
        let gbps = p.iperf(true, false, secs, &[]);
        println!("{kind:?}: one TCP stream {gbps:.2} Gbit/s ({secs} s)");
        results.push(gbps);
    }
    println!(
        "wgdp / wireguard-go = {:.2}",
        results[0] / results[1].max(1e-9)
    );
}
