//! Root test of source validation in `from_pod`: real namespaces, one node and three pods
//! behind host veths, the programs loaded under a per-test bpffs directory. A pod that takes
//! its neighbour's address or the node's and sends from it reaches nothing and `Spoofed`
//! counts it, IPv4 and IPv6; its own traffic and IPv6 neighbour discovery still work; a veth
//! without source entries drops its pod's IP packets (fail closed). Traffic only goes to
//! addresses inside the namespaces the test creates.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ebpf_redirect::{remove_pins, Datapath, PodSource, Verdict};
use testkit::{unique_name, NetnsGuard};

const SPOOFED: usize = Verdict::Spoofed as usize;
const PORT: u16 = 7777;

struct Guard {
    netns: Vec<NetnsGuard>,
    pin_dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pin_dir);
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ipn(ns: &str, args: &str) {
    testkit::netns::ip_n(ns, args).unwrap();
}

fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    testkit::netns::within(ns, f).unwrap()
}

fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst])
        .output()
        .expect("ping")
        .status
        .success()
}

fn wait_ping(ns: &str, dst: &str) {
    for _ in 0..5 {
        if ping(ns, dst) {
            return;
        }
    }
    panic!("{ns}: {dst} unreachable");
}

/// Pod `i`'s addresses (`i` in 1..=3): 10.210.i.2 and fd00:210:i::2.
fn pod_addrs(i: u8) -> [IpAddr; 2] {
    [
        format!("10.210.{i}.2").parse().unwrap(),
        format!("fd00:210:{i}::2").parse().unwrap(),
    ]
}

/// The node's own address (on its `lo`), per family.
const NODE_ADDRS: [&str; 2] = ["10.210.99.1", "fd00:210:99::1"];

/// The destination pod's listeners, one per family.
struct Listener([UdpSocket; 2]);

impl Listener {
    fn open(ns: &str, addrs: [IpAddr; 2]) -> Self {
        in_netns(ns, || {
            let v4 = UdpSocket::bind(SocketAddr::new(addrs[0], PORT)).unwrap();
            let v6 = UdpSocket::bind(SocketAddr::new(addrs[1], PORT)).unwrap();
            for s in [&v4, &v6] {
                s.set_read_timeout(Some(Duration::from_millis(700)))
                    .unwrap();
            }
            Listener([v4, v6])
        })
    }

    /// Whether a datagram from `from` arrives (anything else that arrives is skipped).
    fn got_from(&self, from: IpAddr) -> bool {
        let sock = &self.0[usize::from(from.is_ipv6())];
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            if peer.ip() == from {
                return true;
            }
        }
        false
    }
}

/// Sends one datagram from `from` (an address of `ns`) to `to`.
fn send(ns: &str, from: IpAddr, to: IpAddr) {
    in_netns(ns, || {
        let tx = UdpSocket::bind(SocketAddr::new(from, 0)).unwrap();
        tx.send_to(b"meshd", SocketAddr::new(to, PORT)).unwrap();
    });
}

fn spoofed(dp: &Datapath) -> u64 {
    dp.counters().unwrap()[SPOOFED]
}

#[test]
fn spoofed_sources_are_dropped_and_counted_own_traffic_and_nd_pass() {
    testkit::require_tools(&["ip", "ping"]);
    let pid = std::process::id();
    let g = Guard {
        netns: ["node", "a", "b", "c"]
            .iter()
            .map(|n| NetnsGuard::new(&unique_name("es", n)).unwrap())
            .collect(),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/ebpf-redirect-test-{pid}-src")),
    };
    let node = g.netns[0].name().to_string();
    let pods: Vec<String> = g.netns[1..].iter().map(|n| n.name().to_string()).collect();
    // Routing alone would let the spoofed packets through: no reverse-path filter.
    for key in ["all", "default"] {
        run(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{key}.rp_filter=0"),
        ]);
    }
    run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    ipn(&node, "link set lo up");
    ipn(&node, &format!("addr add {}/32 dev lo", NODE_ADDRS[0]));
    ipn(
        &node,
        &format!("-6 addr add {}/128 dev lo nodad", NODE_ADDRS[1]),
    );
    for (i, pod) in (1u8..).zip(&pods) {
        let host = format!("vh{i}");
        run(&[
            "ip", "link", "add", &host, "netns", &node, "type", "veth", "peer", "name", "vp0",
            "netns", pod,
        ]);
        ipn(&node, &format!("addr add 10.210.{i}.1/24 dev {host}"));
        ipn(
            &node,
            &format!("-6 addr add fd00:210:{i}::1/64 dev {host} nodad"),
        );
        ipn(&node, &format!("-6 addr add fe80::1/64 dev {host} nodad"));
        ipn(&node, &format!("link set {host} up"));
        run(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{host}.rp_filter=0"),
        ]);
        ipn(pod, "link set lo up");
        ipn(pod, &format!("addr add 10.210.{i}.2/24 dev vp0"));
        ipn(
            pod,
            &format!("-6 addr add fd00:210:{i}::2/64 dev vp0 nodad"),
        );
        ipn(pod, "link set vp0 up");
        ipn(pod, &format!("route add default via 10.210.{i}.1"));
        ipn(pod, &format!("-6 route add default via fd00:210:{i}::1"));
    }

    let mut dp = Datapath::load(&g.pin_dir).expect("load");
    for (i, _) in (1u8..).zip(&pods) {
        let host = format!("vh{i}");
        let ifindex = in_netns(&node, || {
            nix::net::if_::if_nametoindex(host.as_str()).unwrap()
        });
        for addr in pod_addrs(i) {
            dp.add_source(PodSource { ifindex, addr }).unwrap();
        }
        in_netns(&node, || {
            dp.attach_to_pod(&host).unwrap();
            dp.attach_from_pod(&host).unwrap();
            assert!(dp.to_pod_attached(&host).unwrap(), "to_pod not on {host}");
            assert_eq!(dp.from_pod_attached(&host).unwrap(), Some(true));
        });
    }
    assert_eq!(dp.sources().unwrap().len(), 6, "{:?}", dp.sources());

    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    // Own traffic flows; neighbour discovery (global and link-local sources) works: the
    // pods' neighbour tables start empty.
    for pod in &pods {
        wait_ping(pod, "10.210.99.1");
        wait_ping(pod, "fd00:210:99::1");
        wait_ping(pod, "fe80::1%vp0");
    }
    let listener = Listener::open(c, pod_addrs(3));
    for own in pod_addrs(1) {
        let to = pod_addrs(3)[usize::from(own.is_ipv6())];
        send(a, own, to);
        assert!(listener.got_from(own), "a's own {own} did not reach c");
    }

    // a takes its neighbour b's addresses, then the node's, and sends from them to c.
    let [b4, b6] = pod_addrs(2);
    ipn(a, &format!("addr add {b4}/32 dev vp0"));
    ipn(a, &format!("-6 addr add {b6}/128 dev vp0 nodad"));
    ipn(a, &format!("addr add {}/32 dev vp0", NODE_ADDRS[0]));
    ipn(
        a,
        &format!("-6 addr add {}/128 dev vp0 nodad", NODE_ADDRS[1]),
    );
    let node_addrs: Vec<IpAddr> = NODE_ADDRS.iter().map(|a| a.parse().unwrap()).collect();
    for stolen in [b4, b6, node_addrs[0], node_addrs[1]] {
        let to = pod_addrs(3)[usize::from(stolen.is_ipv6())];
        let before = spoofed(&dp);
        send(a, stolen, to);
        assert!(!listener.got_from(stolen), "c got a's packet from {stolen}");
        let after = spoofed(&dp);
        eprintln!("from {stolen}: spoofed {before} -> {after}");
        assert!(
            after > before,
            "spoofed did not count the packet from {stolen}"
        );
    }
    // ... and its own addresses still work.
    for own in pod_addrs(1) {
        let to = pod_addrs(3)[usize::from(own.is_ipv6())];
        send(a, own, to);
        assert!(
            listener.got_from(own),
            "a's own {own} did not reach c after spoofing"
        );
    }

    // A veth without entries: fail closed for IP, link-local IPv6 still passes.
    let vh2 = in_netns(&node, || nix::net::if_::if_nametoindex("vh2").unwrap());
    for addr in pod_addrs(2) {
        dp.remove_source(PodSource { ifindex: vh2, addr }).unwrap();
    }
    for own in pod_addrs(2) {
        let to = pod_addrs(3)[usize::from(own.is_ipv6())];
        let before = spoofed(&dp);
        send(b, own, to);
        assert!(
            !listener.got_from(own),
            "b without entries reached c from {own}"
        );
        assert!(spoofed(&dp) > before);
    }
    assert!(ping(b, "fe80::1%vp0"), "link-local ping from b failed");

    // Detaching removes both filters and their records.
    in_netns(&node, || {
        dp.detach_to_pod("vh1").unwrap();
        dp.detach_from_pod("vh1").unwrap();
        assert!(!dp.to_pod_attached("vh1").unwrap());
        assert_eq!(dp.from_pod_attached("vh1").unwrap(), Some(false));
    });
    assert!(!g.pin_dir.join("link_egress_vh1").exists());
    assert!(!g.pin_dir.join("link_ingress_vh1").exists());
    let records = g.pin_dir.join("link_egress_vh3");
    assert!(records.exists(), "to_pod's record for vh3");
    in_netns(&node, || dp.detach_all()).unwrap();
    assert!(!g.pin_dir.exists());
}
