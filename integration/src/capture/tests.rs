//! Tests of the capture analysis: which packets are flagged as plaintext leaks, and a live capture
//! in a namespace.

use super::*;
use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapPacket, PcapWriter};

const N1: [u8; 4] = [198, 18, 0, 11];
const N2: [u8; 4] = [198, 18, 0, 12];
const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn policy() -> CapturePolicy {
    CapturePolicy {
        pod_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
        node_addrs: vec![
            IpAddr::from(N1),
            IpAddr::from(N2),
            "fd00:198::11".parse().unwrap(),
            "fd00:198::12".parse().unwrap(),
        ],
        wireguard_port: 51820,
        markers: vec![b"SECRET-MARKER-42".to_vec()],
    }
}

fn udp4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC1, MAC2)
        .ipv4(src, dst, 64)
        .udp(sp, dp);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

fn tcp4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC1, MAC2)
        .ipv4(src, dst, 64)
        .tcp(40000, 5201, 1, 65535);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp6(src: &str, dst: &str, sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
    let s: std::net::Ipv6Addr = src.parse().unwrap();
    let d: std::net::Ipv6Addr = dst.parse().unwrap();
    let b = PacketBuilder::ethernet2(MAC1, MAC2)
        .ipv6(s.octets(), d.octets(), 64)
        .udp(sp, dp);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn arp() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&[0xff; 6]);
    v.extend_from_slice(&MAC1);
    v.extend_from_slice(&[0x08, 0x06]);
    // htype 1, ptype ipv4, hlen 6, plen 4, op 1
    v.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&MAC1);
    v.extend_from_slice(&N1);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&N2);
    v
}

fn wg(kind: u8, len: usize) -> Vec<u8> {
    let mut p = vec![kind, 0, 0, 0];
    p.extend((0..len).map(|i| (i * 7 + 3) as u8));
    p
}

fn write_pcap(frames: &[Vec<u8>]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let mut w = PcapWriter::new(f.reopen().unwrap()).unwrap();
    for (i, fr) in frames.iter().enumerate() {
        let pkt = PcapPacket::new(Duration::from_millis(i as u64), fr.len() as u32, fr);
        w.write_packet(&pkt).unwrap();
    }
    drop(w);
    f
}

#[test]
fn wireguard_only_is_clean() {
    let frames = vec![
        udp4(N1, N2, 51820, 51820, &wg(1, 144)),
        udp4(N2, N1, 51820, 51820, &wg(2, 88)),
        udp4(N1, N2, 51820, 51820, &wg(4, 300)),
        udp6("fd00:198::11", "fd00:198::12", 40000, 51820, &wg(4, 100)),
        arp(),
    ];
    let f = write_pcap(&frames);
    let r = analyse(f.path(), &policy()).unwrap();
    assert!(r.is_clean(), "{}", r.summary());
    assert_eq!(r.packets, 5);
    assert_eq!(r.ip_packets, 4);
    assert_eq!(r.non_ip_packets, 1);
    assert_eq!(r.wireguard_packets, 4);
    assert_eq!(r.wireguard_by_type.get(&4), Some(&2));
    assert_eq!(r.non_wireguard_ip_count, 0);
    assert!(!r.truncated);
}

#[test]
fn plaintext_pod_packets_flagged() {
    let frames = vec![
        udp4(N1, N2, 51820, 51820, &wg(4, 64)),
        tcp4([10, 244, 1, 2], [10, 244, 2, 2], b"hello"),
        udp6("fd00:244:1::2", "fd00:244:2::2", 1000, 2000, b"x"),
    ];
    let f = write_pcap(&frames);
    let r = analyse(f.path(), &policy()).unwrap();
    assert!(!r.is_clean());
    assert_eq!(r.plaintext_pod_count, 2, "{}", r.summary());
    assert!(r.plaintext_pod_packets[0].contains("10.244.1.2 → 10.244.2.2 TCP"));
    assert!(r.plaintext_pod_packets[1].contains("fd00:244:1::2"));
    assert_eq!(r.wireguard_packets, 1);
}

#[test]
fn marker_in_non_pod_udp_flagged() {
    let mut payload = b"prefix..".to_vec();
    payload.extend_from_slice(b"SECRET-MARKER-42");
    let frames = vec![udp4(N1, N2, 40000, 9999, &payload)];
    let f = write_pcap(&frames);
    let r = analyse(f.path(), &policy()).unwrap();
    assert_eq!(r.plaintext_pod_count, 0);
    assert_eq!(r.marker_hit_count, 1);
    assert!(r.marker_hits[0].starts_with("#1 "), "{:?}", r.marker_hits);
    assert!(!r.is_clean());
    assert_eq!(r.non_wireguard_ip_count, 1);
}

#[test]
fn non_wireguard_between_nodes_is_informational() {
    // Right port, wrong shape; wrong port, right shape; not between nodes.
    let frames = vec![
        udp4(N1, N2, 51820, 51820, b"\x04\x01\x00\x00junk"),
        udp4(N1, N2, 1234, 5678, &wg(4, 10)),
        udp4(N1, [8, 8, 8, 8], 51820, 51820, &wg(4, 10)),
    ];
    let f = write_pcap(&frames);
    let r = analyse(f.path(), &policy()).unwrap();
    assert!(r.is_clean());
    assert_eq!(r.wireguard_packets, 0);
    assert_eq!(r.non_wireguard_ip_count, 3);
}

#[test]
fn arp_only_ignored() {
    let f = write_pcap(&[arp(), arp()]);
    let r = analyse(f.path(), &policy()).unwrap();
    assert!(r.is_clean());
    assert_eq!(r.packets, 2);
    assert_eq!(r.ip_packets, 0);
    assert_eq!(r.non_ip_packets, 2);
}

#[test]
fn descriptions_capped_counts_exact() {
    let frames: Vec<_> = (0..120)
        .map(|_| tcp4([10, 244, 1, 2], [10, 244, 2, 2], b"x"))
        .collect();
    let f = write_pcap(&frames);
    let r = analyse(f.path(), &policy()).unwrap();
    assert_eq!(r.plaintext_pod_count, 120);
    assert_eq!(r.plaintext_pod_packets.len(), MAX_DESCRIPTIONS);
}

#[test]
fn ip_in_ip_pod_packet_flagged() {
    let inner = {
        let b = PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64).udp(1, 2);
        let mut v = Vec::new();
        b.write(&mut v, b"inner").unwrap();
        v
    };
    let b = PacketBuilder::ethernet2(MAC1, MAC2).ipv4(N1, N2, 64);
    let mut frame = Vec::new();
    b.write(&mut frame, etherparse::IpNumber::IPV4, &inner)
        .unwrap();
    let f = write_pcap(&[frame]);
    let r = analyse(f.path(), &policy()).unwrap();
    assert_eq!(r.plaintext_pod_count, 1, "{}", r.summary());
}

#[test]
fn truncated_file_is_reported() {
    let f = write_pcap(&[udp4(N1, N2, 51820, 51820, &wg(4, 64)), arp()]);
    let len = std::fs::metadata(f.path()).unwrap().len();
    let g = std::fs::OpenOptions::new()
        .write(true)
        .open(f.path())
        .unwrap();
    g.set_len(len - 5).unwrap();
    let r = analyse(f.path(), &policy()).unwrap();
    assert!(r.truncated);
    assert_eq!(r.packets, 1);
}

#[test]
fn contains_works() {
    assert!(contains(b"abcdef", b"cde"));
    assert!(contains(b"abcdef", b"abcdef"));
    assert!(!contains(b"abc", b"abcd"));
    assert!(!contains(b"abcabd", b"abe"));
    assert!(contains(b"abc", b""));
}

#[test]
fn wireguard_shape() {
    assert!(is_wireguard_payload(&[1, 0, 0, 0, 9]));
    assert!(is_wireguard_payload(&[4, 0, 0, 0]));
    assert!(!is_wireguard_payload(&[5, 0, 0, 0]));
    assert!(!is_wireguard_payload(&[4, 0, 1, 0]));
    assert!(!is_wireguard_payload(&[4, 0, 0]));
}

#[test]
fn live_capture_on_loopback_namespace() {
    testkit::require_tools(&["tcpdump", "ping"]);
    let ns = testkit::NetnsGuard::new(&testkit::unique_name("itcap", "a")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lo.pcap");
    let cap = Capture::start(ns.name(), "lo", &path).unwrap();
    ns.run(&[
        "ping",
        "-c",
        "2",
        "-i",
        "0.05",
        "-p",
        "deadbeefcafe",
        "127.0.0.1",
    ])
    .unwrap();
    let p = cap.stop().unwrap();
    let mut pol = policy();
    let r = analyse(&p, &pol).unwrap();
    assert!(r.packets >= 4, "{}", r.summary());
    assert!(r.is_clean(), "{}", r.summary());
    pol.pod_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    pol.markers = vec![vec![0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe]];
    let r = analyse(&p, &pol).unwrap();
    assert!(r.plaintext_pod_count >= 4, "{}", r.summary());
    assert!(r.marker_hit_count >= 4, "{}", r.summary());
}
