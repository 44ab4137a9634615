//! Root test: resizing the per-node maps (`REMOTE_*`, `CLUSTER_*`) for another `--max-nodes`
//! while cluster traffic flows leaves no window in strict mode. The new maps are filled from
//! the old pins before the new `underlay_egress` is swapped in, so not one cleartext packet
//! from a (learned) peer pod CIDR reaches the wire during the reload. Without that order the
//! new program runs on an empty `CLUSTER_*` map and the packets sent meanwhile leak.
//! Traffic only goes to addresses inside the namespaces this test creates.
#![allow(clippy::unwrap_used)]

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use ebpf_redirect::{remove_pins, Datapath, MapSizes, Mode, CLUSTER_LEARNED};
use testkit::{unique_name, NetnsGuard};

struct Guard {
    netns: Vec<NetnsGuard>,
    pin_dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pin_dir);
    }
}

fn ipn(ns: &str, args: &str) {
    testkit::netns::ip_n(ns, args).unwrap();
}

fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    testkit::netns::within(ns, f).unwrap()
}

fn wait_ping(ns: &str, dst: &str) {
    for _ in 0..5 {
        let ok = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", dst,
            ])
            .output()
            .expect("ping")
            .status
            .success();
        if ok {
            return;
        }
    }
    panic!("{ns}: {dst} unreachable");
}

#[test]
fn resizing_the_per_node_maps_under_traffic_leaks_no_cleartext() {
    testkit::require_tools(&["ip", "ping"]);
    let pid = std::process::id();
    let g = Guard {
        netns: ["a", "b"]
            .iter()
            .map(|n| NetnsGuard::new(&unique_name("er", &format!("rz{n}"))).unwrap())
            .collect(),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/ebpf-redirect-test-{pid}-resize")),
    };
    let (a, b) = (g.netns[0].name().to_string(), g.netns[1].name().to_string());
    let out = Command::new("ip")
        .args([
            "link", "add", "ra0", "netns", &a, "type", "veth", "peer", "name", "rb0", "netns", &b,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ipn(&a, "addr add 192.168.78.1/24 dev ra0");
    ipn(&a, "-6 addr add fd00:78::1/64 dev ra0 nodad");
    // Pod addresses of a peer's CIDR, on lo so that ARP/NDP use the underlay address.
    ipn(&a, "addr add 10.245.1.1/32 dev lo");
    ipn(&a, "-6 addr add fd00:245:1::1/128 dev lo nodad");
    ipn(&a, "link set ra0 up");
    ipn(&b, "addr add 192.168.78.2/24 dev rb0");
    ipn(&b, "-6 addr add fd00:78::2/64 dev rb0 nodad");
    ipn(&b, "link set rb0 up");

    // Sized for 4 nodes: the peer's pod CIDRs are *learned* entries (no configured cluster
    // CIDR covers them), so only the carried-over entries guard them after the resize.
    let small = MapSizes::for_nodes(4, 4);
    let mut dp = Datapath::load_sized(&g.pin_dir, &small).expect("load");
    dp.set_config(51820, Mode::Enforce).unwrap();
    dp.set_cluster_marked("10.245.1.0/24".parse().unwrap(), CLUSTER_LEARNED)
        .unwrap();
    dp.set_cluster_marked("fd00:245:1::/64".parse().unwrap(), CLUSTER_LEARNED)
        .unwrap();
    dp.set_remote("10.245.2.0/24".parse().unwrap(), 7).unwrap();
    in_netns(&a, || dp.attach_underlay_egress("ra0")).expect("attach");
    wait_ping(&a, "192.168.78.2");
    wait_ping(&a, "fd00:78::2");

    let addr = |s: &str, p: u16| SocketAddr::new(s.parse().unwrap(), p);
    let rx4 = in_netns(&b, || UdpSocket::bind(addr("0.0.0.0", 9998)).unwrap());
    let rx6 = in_netns(&b, || UdpSocket::bind(addr("::", 9997)).unwrap());
    let tx4 = in_netns(&a, || UdpSocket::bind(addr("10.245.1.1", 0)).unwrap());
    let tx6 = in_netns(&a, || UdpSocket::bind(addr("fd00:245:1::1", 0)).unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for rx in [rx4, rx6] {
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (received, stop) = (received.clone(), stop.clone());
        receivers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if rx.recv_from(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = tx4.send_to(b"clear", addr("192.168.78.2", 9998));
                let _ = tx6.send_to(b"clear", addr("fd00:78::2", 9997));
                sent.fetch_add(2, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));

    // The resize: another node count, then the new program swapped in at once.
    let large = MapSizes::for_nodes(64, 4);
    let mut dp = Datapath::load_sized(&g.pin_dir, &large).expect("reload resized");
    in_netns(&a, || dp.attach_underlay_egress("ra0")).expect("swap in the new program");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    for r in receivers {
        r.join().unwrap();
    }

    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 100, "the sender sent only {sent} packets");
    assert_eq!(
        received.load(Ordering::Relaxed),
        0,
        "cleartext from a learned pod CIDR reached the wire during the resize ({sent} sent)"
    );
    assert_eq!(dp.max_entries("CLUSTER_V4").unwrap(), large.cluster_cidrs);
    assert_eq!(dp.max_entries("REMOTE_V6").unwrap(), large.remote_cidrs);
    let mut resized: Vec<_> = dp
        .resized()
        .iter()
        .map(|r| (r.map, r.carried, r.dropped))
        .collect();
    resized.sort();
    assert_eq!(
        resized,
        [
            ("CLUSTER_V4", 1, 0),
            ("CLUSTER_V6", 1, 0),
            ("REMOTE_V4", 1, 0),
            ("REMOTE_V6", 0, 0)
        ]
    );
    assert_eq!(
        dp.remotes().unwrap().len(),
        1,
        "the redirect was carried over"
    );
    // Learning leaves an exact prefix that is there as it is (a configured one stays
    // configured) and adds a new one.
    assert!(!dp.learn_cluster("10.245.1.0/24".parse().unwrap()).unwrap());
    dp.set_cluster("10.245.4.0/24".parse().unwrap()).unwrap();
    assert!(!dp.learn_cluster("10.245.4.0/24".parse().unwrap()).unwrap());
    assert!(dp.cluster_entries().unwrap().contains(&(
        "10.245.4.0/24".parse().unwrap(),
        ebpf_redirect::CLUSTER_CONFIGURED
    )));
    assert!(dp.learn_cluster("10.245.3.0/24".parse().unwrap()).unwrap());
    for c in ["10.245.3.0/24", "10.245.4.0/24"] {
        dp.remove_cluster(c.parse().unwrap()).unwrap();
    }
    assert!(dp.counters().unwrap()[ebpf_redirect::Verdict::StrictDrop as usize] > 0);

    // Shrinking below the contents: configured entries first, the rest reported as dropped.
    dp.set_cluster("10.0.0.0/8".parse().unwrap()).unwrap();
    for i in 0..4u8 {
        dp.set_remote(format!("10.246.{i}.0/24").parse().unwrap(), 7)
            .unwrap();
    }
    let tiny = MapSizes {
        remote_cidrs: 2,
        cluster_cidrs: 1,
        ..large
    };
    let dp = Datapath::load_sized(&g.pin_dir, &tiny).expect("reload shrunk");
    let remote_v4 = dp.resized().iter().find(|r| r.map == "REMOTE_V4").unwrap();
    assert_eq!((remote_v4.carried, remote_v4.dropped), (2, 3));
    let cluster_v4 = dp.resized().iter().find(|r| r.map == "CLUSTER_V4").unwrap();
    assert_eq!((cluster_v4.carried, cluster_v4.dropped), (1, 1));
    assert_eq!(
        dp.clusters().unwrap()[0],
        "10.0.0.0/8".parse::<ebpf_redirect::IpNet>().unwrap(),
        "the configured cluster CIDR went in first"
    );
}
