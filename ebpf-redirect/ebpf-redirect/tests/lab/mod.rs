//! The lab the policy tests share: a node namespace routing between pod namespaces A and B,
//! each joined by a veth whose host end carries `from_pod` (tc ingress, attached by the loader)
//! and `to_pod` (tc egress), TCP and UDP echo servers in both pods, and
//! helpers to write policy entries and to probe traffic. Namespaces are
//! `testkit::NetnsGuard`s named with the test pid; traffic only goes to addresses in them.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use ebpf_redirect::{
    remove_pins, Datapath, IsolationKey, IsolationValue, PeerKeyV4, PeerKeyV6, PodSource, PortKey,
    RuleBits, Verdict,
};
use ipnet::IpNet;
use testkit::{unique_name, NetnsGuard};

pub const TOOLS: &[&str] = &["ip", "ping", "tc", "sysctl"];
pub const EGRESS_DENIED: usize = Verdict::PolicyDeniedEgress as usize;
pub const INGRESS_DENIED: usize = Verdict::PolicyDeniedIngress as usize;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;
/// Ports the pods serve (TCP echo and UDP echo on each).
pub const PORTS: &[u16] = &[80, 81, 82, 8085, 8096];

/// Runs a command; its failure (with stderr) fails the test.
pub fn run(args: &[&str]) {
    testkit::netns::run(args[0], &args[1..]).unwrap();
}

/// `ip -n ns <args...>`
pub fn ipn(ns: &str, args: &str) {
    testkit::netns::ip_n(ns, args).unwrap();
}

pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    testkit::netns::within(ns, f).unwrap()
}

/// One address family's addresses in the lab.
#[derive(Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub a: IpAddr,
    pub b: IpAddr,
    /// The node's address on A's link.
    pub node_a: IpAddr,
}

pub const V4: Family = Family {
    name: "v4",
    a: IpAddr::V4(std::net::Ipv4Addr::new(10, 210, 1, 2)),
    b: IpAddr::V4(std::net::Ipv4Addr::new(10, 210, 2, 2)),
    node_a: IpAddr::V4(std::net::Ipv4Addr::new(10, 210, 1, 1)),
};
pub const V6: Family = Family {
    name: "v6",
    a: IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x210, 1, 0, 0, 0, 0, 2)),
    b: IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x210, 2, 0, 0, 0, 0, 2)),
    node_a: IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x210, 1, 0, 0, 0, 0, 1)),
};

/// The lab: namespaces node, a, b; the datapath loaded, both programs on both host veths.
pub struct Lab {
    pub netns: Vec<NetnsGuard>,
    pub pin_dir: PathBuf,
    pub dp: Datapath,
    /// Endpoint ids (host veth ifindexes) of A and B.
    pub ep_a: u32,
    pub ep_b: u32,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.netns {
            testkit::netns::kill_all_in(ns.name());
        }
        let _ = remove_pins(&self.pin_dir);
    }
}

impl Lab {
    pub fn new(tag: &str) -> Self {
        testkit::require_root();
        testkit::require_tools(TOOLS);
        let netns: Vec<NetnsGuard> = ["n", "a", "b"]
            .iter()
            .map(|n| NetnsGuard::new(&unique_name("pl", &format!("{tag}{n}"))).unwrap())
            .collect();
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/ebpf-redirect-policy-{}-{tag}",
            std::process::id()
        ));
        let node = netns[0].name().to_string();
        run(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        for (i, pod) in [(1, netns[1].name()), (2, netns[2].name())] {
            let host = format!("h{i}");
            run(&[
                "ip", "link", "add", &host, "netns", &node, "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ]);
            ipn(&node, &format!("addr add 10.210.{i}.1/24 dev {host}"));
            ipn(
                &node,
                &format!("-6 addr add fd00:210:{i}::1/64 dev {host} nodad"),
            );
            ipn(&node, &format!("link set {host} up"));
            ipn(pod, &format!("addr add 10.210.{i}.2/24 dev eth0"));
            ipn(
                pod,
                &format!("-6 addr add fd00:210:{i}::2/64 dev eth0 nodad"),
            );
            ipn(pod, "link set eth0 up");
            ipn(pod, &format!("route add default via 10.210.{i}.1"));
            ipn(pod, &format!("-6 route add default via fd00:210:{i}::1"));
        }
        let mut lab = Lab {
            dp: Datapath::load(&pin_dir).expect("load"),
            pin_dir,
            ep_a: in_netns(&node, || nix::net::if_::if_nametoindex("h1").unwrap()),
            ep_b: in_netns(&node, || nix::net::if_::if_nametoindex("h2").unwrap()),
            netns,
        };
        for fam in [V4, V6] {
            lab.wait_ping(lab.a(), fam.b);
            lab.wait_ping(lab.b(), fam.a);
        }
        for (i, (host, endpoint)) in [("h1", lab.ep_a), ("h2", lab.ep_b)].into_iter().enumerate() {
            // The pod's own addresses first: from_pod drops any other source.
            let i = i + 1;
            for addr in [format!("10.210.{i}.2"), format!("fd00:210:{i}::2")] {
                lab.dp
                    .add_source(PodSource {
                        ifindex: endpoint,
                        addr: addr.parse().unwrap(),
                    })
                    .expect("add source");
            }
            in_netns(&node, || lab.dp.attach_to_pod(host)).expect("attach to_pod");
            in_netns(&node, || lab.dp.attach_from_pod(host)).expect("attach from_pod");
        }
        for ns in [lab.a().to_string(), lab.b().to_string()] {
            for &port in PORTS {
                serve(&ns, port);
            }
        }
        lab
    }

    pub fn node(&self) -> &str {
        self.netns[0].name()
    }
    pub fn a(&self) -> &str {
        self.netns[1].name()
    }
    pub fn b(&self) -> &str {
        self.netns[2].name()
    }

    pub fn wait_ping(&self, ns: &str, dst: IpAddr) {
        for _ in 0..5 {
            if ping(ns, dst) {
                return;
            }
        }
        panic!("{ns}: {dst} unreachable");
    }

    pub fn counters(&self) -> [u64; ebpf_redirect::VERDICT_COUNT as usize] {
        self.dp.counters().unwrap()
    }

    pub fn isolate(&mut self, endpoint: u32, direction: u8) {
        self.dp
            .policy_isolation_upsert(
                &IsolationKey {
                    endpoint,
                    direction,
                    reserved: [0; 3],
                },
                &IsolationValue { rules: 1 },
            )
            .unwrap();
    }

    pub fn open(&mut self, endpoint: u32, direction: u8) {
        self.dp
            .policy_isolation_delete(&IsolationKey {
                endpoint,
                direction,
                reserved: [0; 3],
            })
            .unwrap();
    }

    /// Sets the rule bits of `peer` (a prefix) at `endpoint`/`direction`.
    pub fn peer(&mut self, endpoint: u32, direction: u8, peer: &str, bits: u64) {
        let net: IpNet = peer.parse().unwrap();
        let prefix_len = 64 + u32::from(net.prefix_len());
        match net {
            IpNet::V4(n) => self.dp.policy_peer_v4_upsert(
                &PeerKeyV4 {
                    prefix_len,
                    endpoint,
                    direction,
                    reserved: [0; 3],
                    address: n.network().octets(),
                },
                &RuleBits { bits },
            ),
            IpNet::V6(n) => self.dp.policy_peer_v6_upsert(
                &PeerKeyV6 {
                    prefix_len,
                    endpoint,
                    direction,
                    reserved: [0; 3],
                    address: n.network().octets(),
                },
                &RuleBits { bits },
            ),
        }
        .unwrap();
    }

    /// The port key of `protocol`/`port` whose prefix covers `port_bits` bits of the port
    /// (16: exactly `port`; `None`: every protocol and port).
    pub fn port_key(endpoint: u32, direction: u8, proto_port: Option<(u8, u16, u32)>) -> PortKey {
        let (protocol, port, port_bits) =
            proto_port.map_or((0, 0, None), |(p, n, b)| (p, n, Some(b)));
        PortKey {
            prefix_len: port_bits.map_or(40, |b| 48 + b),
            endpoint,
            direction,
            protocol,
            port: port.to_be_bytes(),
        }
    }

    pub fn port(
        &mut self,
        endpoint: u32,
        direction: u8,
        proto_port: Option<(u8, u16, u32)>,
        bits: u64,
    ) {
        let key = Self::port_key(endpoint, direction, proto_port);
        self.dp
            .policy_port_upsert(&key, &RuleBits { bits })
            .unwrap();
    }

    pub fn unport(&mut self, endpoint: u32, direction: u8, proto_port: Option<(u8, u16, u32)>) {
        let key = Self::port_key(endpoint, direction, proto_port);
        self.dp.policy_port_delete(&key).unwrap();
    }

    /// Allows `endpoint`/`direction` to/from `peer` on TCP and UDP `port` (rule bit 0).
    pub fn allow(&mut self, endpoint: u32, direction: u8, peer: IpAddr, port: u16) {
        self.peer(endpoint, direction, &host_prefix(peer), 1);
        self.port(endpoint, direction, Some((TCP, port, 16)), 1);
        self.port(endpoint, direction, Some((UDP, port, 16)), 1);
    }
}

pub fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

pub fn any(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// TCP and UDP echo servers on `port` (both families) in `ns`, for the rest of the test.
pub fn serve(ns: &str, port: u16) {
    let (tcp, udp) = in_netns(ns, || {
        let tcp = TcpListener::bind(SocketAddr::new("::".parse().unwrap(), port)).unwrap();
        let udp = UdpSocket::bind(SocketAddr::new("::".parse().unwrap(), port)).unwrap();
        (tcp, udp)
    });
    std::thread::spawn(move || {
        for stream in tcp.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

pub fn ping(ns: &str, dst: IpAddr) -> bool {
    ping_target(ns, &dst.to_string())
}

/// One ping to `target` (an address, or `fe80::…%dev`) from `ns`: whether it was answered.
pub fn ping_target(ns: &str, target: &str) -> bool {
    testkit::netns::run_in_unchecked(ns, &["ping", "-c", "1", "-W", "1", target])
        .unwrap()
        .status
        .success()
}

pub const WAIT: Duration = Duration::from_millis(700);

/// A TCP connection from `ns` to `dst:port` that has echoed one message.
pub fn tcp_connect(ns: &str, dst: IpAddr, port: u16) -> Option<TcpStream> {
    let mut s = in_netns(ns, || {
        TcpStream::connect_timeout(&SocketAddr::new(dst, port), WAIT)
    })
    .ok()?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    echoes(&mut s).then_some(s)
}

/// Whether `s` echoes a message within the timeout.
pub fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"meshd").is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"meshd"
}

pub fn tcp_ok(ns: &str, dst: IpAddr, port: u16) -> bool {
    tcp_connect(ns, dst, port).is_some()
}

pub fn udp_ok(ns: &str, dst: IpAddr, port: u16) -> bool {
    let s = in_netns(ns, || {
        UdpSocket::bind(SocketAddr::new(any(dst), 0)).unwrap()
    });
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.send_to(b"meshd", SocketAddr::new(dst, port)).unwrap();
    let mut buf = [0u8; 16];
    matches!(s.recv_from(&mut buf), Ok((5, _)))
}
