//! Root integration tests of NetworkPolicy enforcement in the tc programs: a node namespace
//! with two pod namespaces (A, B), each joined to the node by a veth whose host end carries
//! `from_pod` (tc ingress, attached by the loader) and `to_pod` (tc egress, attached here with
//! `tc`), the node routing between them. The policy maps are written through `Datapath`, as
//! the daemon does, and real TCP, UDP and ICMP traffic checks the verdicts, IPv4 and IPv6.
//! Namespaces are `testkit::NetnsGuard`s named with the test pid; traffic only goes to
//! addresses in them. `unsafe` only for the raw-socket and `IP_OPTIONS` system calls of the
//! SCTP and IPv4-options checks.
#![allow(unsafe_code, clippy::unwrap_used)]

mod lab;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use ebpf_redirect::{remove_pins, Datapath, IsolationKey, IsolationValue};
use ebpf_redirect_common::{DIRECTION_EGRESS, DIRECTION_INGRESS};
use lab::*;

#[test]
fn egress_isolation_denies_counts_and_admits_peer_port_and_ranges() {
    let mut lab = Lab::new("e");
    let (a, ep_a) = (lab.a().to_string(), lab.ep_a);
    for fam in [V4, V6] {
        let f = fam.name;
        assert!(tcp_ok(&a, fam.b, 80), "{f}: open A→B:80 refused");
        lab.isolate(ep_a, DIRECTION_EGRESS);
        let c0 = lab.counters();
        assert!(
            !tcp_ok(&a, fam.b, 80),
            "{f}: isolated egress let TCP through"
        );
        assert!(
            !udp_ok(&a, fam.b, 80),
            "{f}: isolated egress let UDP through"
        );
        assert!(!ping(&a, fam.b), "{f}: isolated egress let ICMP through");
        let c1 = lab.counters();
        assert!(
            c1[EGRESS_DENIED] >= c0[EGRESS_DENIED] + 3,
            "{f}: {c0:?} -> {c1:?}"
        );
        assert_eq!(c1[INGRESS_DENIED], c0[INGRESS_DENIED], "{f}");

        // Peer B and TCP/UDP 80 exactly: 80 passes, 81 not; a peer without port bits neither.
        lab.allow(ep_a, DIRECTION_EGRESS, fam.b, 80);
        assert!(tcp_ok(&a, fam.b, 80), "{f}: allowed TCP 80 refused");
        assert!(udp_ok(&a, fam.b, 80), "{f}: allowed UDP 80 refused");
        assert!(
            !tcp_ok(&a, fam.b, 81),
            "{f}: TCP 81 admitted by a rule for 80"
        );
        assert!(!ping(&a, fam.b), "{f}: ICMP admitted by a TCP/UDP rule");
        // A range 8080-8095 as one prefix (12 bits of the port).
        lab.port(ep_a, DIRECTION_EGRESS, Some((TCP, 8080, 12)), 1);
        assert!(tcp_ok(&a, fam.b, 8085), "{f}: 8085 in 8080-8095 refused");
        assert!(
            !tcp_ok(&a, fam.b, 8096),
            "{f}: 8096 outside 8080-8095 admitted"
        );
        // Port bits for a rule whose peer bits do not match: refused.
        lab.port(ep_a, DIRECTION_EGRESS, Some((TCP, 81, 16)), 2);
        assert!(!tcp_ok(&a, fam.b, 81), "{f}: port bit 2 matched peer bit 1");
        // Every protocol and port (prefix 40): ICMP too.
        lab.port(ep_a, DIRECTION_EGRESS, None, 1);
        assert!(ping(&a, fam.b), "{f}: all-ports rule refused ICMP");
        lab.unport(ep_a, DIRECTION_EGRESS, None);
        lab.open(ep_a, DIRECTION_EGRESS);
    }
}

#[test]
fn replies_pass_when_the_reverse_direction_is_isolated() {
    let mut lab = Lab::new("r");
    let (a, b) = (lab.a().to_string(), lab.b().to_string());
    let (ep_a, ep_b) = (lab.ep_a, lab.ep_b);
    // A admits nothing in; B sends nothing out on its own.
    lab.isolate(ep_a, DIRECTION_INGRESS);
    lab.isolate(ep_b, DIRECTION_EGRESS);
    for fam in [V4, V6] {
        let f = fam.name;
        assert!(tcp_ok(&a, fam.b, 80), "{f}: TCP reply dropped");
        assert!(udp_ok(&a, fam.b, 81), "{f}: UDP reply dropped");
        assert!(ping(&a, fam.b), "{f}: echo reply dropped");
        let c0 = lab.counters();
        assert!(!tcp_ok(&b, fam.a, 80), "{f}: B opened a connection to A");
        let c1 = lab.counters();
        assert!(
            c1[EGRESS_DENIED] > c0[EGRESS_DENIED],
            "{f}: {c0:?} -> {c1:?}"
        );
    }
}

#[test]
fn same_node_traffic_needs_egress_and_ingress() {
    let mut lab = Lab::new("s");
    let a = lab.a().to_string();
    let (ep_a, ep_b) = (lab.ep_a, lab.ep_b);
    for fam in [V4, V6] {
        let f = fam.name;
        lab.isolate(ep_a, DIRECTION_EGRESS);
        lab.allow(ep_a, DIRECTION_EGRESS, fam.b, 80);
        lab.isolate(ep_b, DIRECTION_INGRESS);
        let c0 = lab.counters();
        assert!(!tcp_ok(&a, fam.b, 80), "{f}: B's ingress was skipped");
        let c1 = lab.counters();
        assert!(
            c1[INGRESS_DENIED] > c0[INGRESS_DENIED],
            "{f}: {c0:?} -> {c1:?}"
        );
        // A's egress admitted (and tracked) the attempt; B's ingress tracked nothing.
        let family = if fam.b.is_ipv4() { 4 } else { 6 };
        let tracked = |lab: &Lab, endpoint: u32| {
            lab.dp.conntrack_entries().unwrap().iter().any(|(k, _)| {
                k.endpoint == endpoint
                    && k.family == family
                    && k.protocol == TCP
                    && k.dst_port == 80u16.to_be_bytes()
            })
        };
        assert!(tracked(&lab, ep_a), "{f}: A's egress refused");
        assert!(!tracked(&lab, ep_b), "{f}: B's ingress admitted");
        lab.allow(ep_b, DIRECTION_INGRESS, fam.a, 80);
        assert!(tcp_ok(&a, fam.b, 80), "{f}: both sides allow, refused");
        // A's egress no longer admits 80 (a new connection: another source port).
        lab.port(ep_a, DIRECTION_EGRESS, Some((TCP, 80, 16)), 0);
        let c2 = lab.counters();
        assert!(!tcp_ok(&a, fam.b, 80), "{f}: A's egress was skipped");
        let c3 = lab.counters();
        assert!(
            c3[EGRESS_DENIED] > c2[EGRESS_DENIED],
            "{f}: {c2:?} -> {c3:?}"
        );
        lab.open(ep_a, DIRECTION_EGRESS);
        lab.open(ep_b, DIRECTION_INGRESS);
    }
}

#[test]
fn neighbour_discovery_passes_with_everything_isolated() {
    let mut lab = Lab::new("n");
    let (a, node) = (lab.a().to_string(), lab.node().to_string());
    let (ep_a, ep_b) = (lab.ep_a, lab.ep_b);
    for (ep, dir) in [
        (ep_a, DIRECTION_EGRESS),
        (ep_a, DIRECTION_INGRESS),
        (ep_b, DIRECTION_EGRESS),
        (ep_b, DIRECTION_INGRESS),
    ] {
        lab.isolate(ep, dir);
    }
    // A may ping B (ICMPv6 only), B may be pinged by A; nothing admits the node's address.
    lab.peer(ep_a, DIRECTION_EGRESS, &host_prefix(V6.b), 1);
    lab.port(ep_a, DIRECTION_EGRESS, Some((ICMPV6, 0, 0)), 1);
    lab.peer(ep_b, DIRECTION_INGRESS, &host_prefix(V6.a), 1);
    lab.port(ep_b, DIRECTION_INGRESS, Some((ICMPV6, 0, 0)), 1);
    // Forget every neighbour: the pings below must resolve them again, through the programs.
    for ns in [&a, lab.b(), &node] {
        ipn(ns, "-6 neigh flush all");
    }
    assert!(
        ping(&a, V6.b),
        "ping6 A→B failed: neighbour discovery blocked"
    );
    let neigh = testkit::netns::run_in(&a, &["ip", "-6", "neigh", "show", "dev", "eth0"]).unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    assert!(
        neigh.contains("fe80::") || neigh.contains("fd00:210:1::1"),
        "A resolved no neighbour: {neigh}"
    );
    // The policy is in force: the node's address is not admitted, nor TCP to B.
    assert!(!ping(&a, V6.node_a), "isolated egress let A ping the node");
    assert!(!tcp_ok(&a, V6.b, 80), "isolated egress let TCP through");

    // A link-local peer: A may ping fe80::/10; the node's link-local address on A's link is
    // resolved by neighbour discovery through the isolated programs.
    let out = testkit::netns::run_in(
        &node,
        &[
            "ip", "-6", "-o", "addr", "show", "dev", "h1", "scope", "link",
        ],
    )
    .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let link_local = out
        .split_whitespace()
        .find(|w| w.starts_with("fe80::"))
        .and_then(|w| w.split('/').next())
        .unwrap_or_else(|| panic!("no link-local address on h1: {out}"))
        .to_string();
    let target = format!("{link_local}%eth0");
    let ping_ll = || ping_target(&a, &target);
    assert!(
        !ping_ll(),
        "isolated egress let A ping a link-local peer it does not admit"
    );
    lab.peer(ep_a, DIRECTION_EGRESS, "fe80::/10", 1);
    ipn(&a, "-6 neigh flush all");
    ipn(&node, "-6 neigh flush all");
    assert!(ping_ll(), "ping6 to the node's link-local address failed");
}

#[test]
fn the_node_reaches_its_pods_through_deny_all() {
    let mut lab = Lab::new("h");
    let (node, b) = (lab.node().to_string(), lab.b().to_string());
    let ep_a = lab.ep_a;
    lab.isolate(ep_a, DIRECTION_INGRESS);
    lab.isolate(ep_a, DIRECTION_EGRESS);
    for fam in [V4, V6] {
        let f = fam.name;
        let c0 = lab.counters();
        // The node's own packets have skb->ingress_ifindex == 0 in to_pod on this kernel:
        // they pass A's deny-all ingress, and their replies pass A's deny-all egress.
        assert!(ping(&node, fam.a), "{f}: node could not ping A");
        assert!(tcp_ok(&node, fam.a, 80), "{f}: node could not reach A:80");
        assert!(
            udp_ok(&node, fam.a, 81),
            "{f}: node could not reach A:81/udp"
        );
        let c1 = lab.counters();
        // (A's egress counter may tick meanwhile: A's own MLD reports are refused.)
        assert_eq!(
            c1[INGRESS_DENIED], c0[INGRESS_DENIED],
            "{f}: {c0:?} -> {c1:?}"
        );
        // Forwarded packets (from B) are no host packets.
        assert!(!tcp_ok(&b, fam.a, 80), "{f}: B passed A's deny-all ingress");
        let c2 = lab.counters();
        assert!(
            c2[INGRESS_DENIED] > c1[INGRESS_DENIED],
            "{f}: {c1:?} -> {c2:?}"
        );
    }
    assert!(
        lab.dp
            .conntrack_entries()
            .unwrap()
            .iter()
            .any(|(k, v)| k.endpoint == ep_a
                && v.flags & ebpf_redirect_common::conntrack::CT_FLAG_HOST != 0),
        "no host-opened entry tracked at A"
    );
}

#[test]
fn a_policy_change_cuts_established_connections_no_longer_allowed() {
    let mut lab = Lab::new("c");
    let a = lab.a().to_string();
    let (ep_a, ep_b) = (lab.ep_a, lab.ep_b);
    for fam in [V4, V6] {
        let f = fam.name;
        lab.isolate(ep_a, DIRECTION_EGRESS);
        lab.isolate(ep_b, DIRECTION_INGRESS);
        for port in [80, 81, 82] {
            lab.allow(ep_a, DIRECTION_EGRESS, fam.b, port);
            lab.allow(ep_b, DIRECTION_INGRESS, fam.a, port);
        }
        let mut c80 = tcp_connect(&a, fam.b, 80).expect("80");
        let mut c81 = tcp_connect(&a, fam.b, 81).expect("81");
        let mut c82 = tcp_connect(&a, fam.b, 82).expect("82");
        // A's egress drops 81, B's ingress drops 82. Until the change is announced the
        // established connections keep their verdict.
        lab.unport(ep_a, DIRECTION_EGRESS, Some((TCP, 81, 16)));
        lab.unport(ep_b, DIRECTION_INGRESS, Some((TCP, 82, 16)));
        assert!(echoes(&mut c81), "{f}: 81 cut before policy_changed");
        let gen = lab.dp.policy_generation().unwrap();
        lab.dp.policy_changed().unwrap();
        assert_eq!(lab.dp.policy_generation().unwrap(), gen + 1);
        let c0 = lab.counters();
        assert!(echoes(&mut c80), "{f}: still-allowed connection cut");
        assert!(
            !echoes(&mut c81),
            "{f}: connection A's egress no longer allows kept"
        );
        assert!(
            !echoes(&mut c82),
            "{f}: connection B's ingress no longer allows kept"
        );
        let c1 = lab.counters();
        assert!(
            c1[EGRESS_DENIED] > c0[EGRESS_DENIED],
            "{f}: {c0:?} -> {c1:?}"
        );
        assert!(
            c1[INGRESS_DENIED] > c0[INGRESS_DENIED],
            "{f}: {c0:?} -> {c1:?}"
        );
        // New connections follow the new policy too; 80 still opens.
        assert!(tcp_ok(&a, fam.b, 80), "{f}: 80 refused after the change");
        assert!(!tcp_ok(&a, fam.b, 81), "{f}: 81 opened after the change");
        lab.open(ep_a, DIRECTION_EGRESS);
        lab.open(ep_b, DIRECTION_INGRESS);
    }
}

#[test]
fn a_related_icmp_error_passes_an_isolated_ingress() {
    let mut lab = Lab::new("i");
    let a = lab.a().to_string();
    let ep_a = lab.ep_a;
    lab.isolate(ep_a, DIRECTION_INGRESS);
    for fam in [V4, V6] {
        let f = fam.name;
        let c0 = lab.counters();
        // UDP to a closed port of B: B answers port unreachable, which must reach A.
        let s = in_netns(&a, || {
            UdpSocket::bind(SocketAddr::new(any(fam.b), 0)).unwrap()
        });
        s.connect(SocketAddr::new(fam.b, 9)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"meshd").unwrap();
        let err = s
            .recv(&mut [0u8; 16])
            .expect_err("a reply from a closed port");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{f}: no port unreachable reached A ({err})"
        );
        let c1 = lab.counters();
        assert_eq!(
            c1[INGRESS_DENIED], c0[INGRESS_DENIED],
            "{f}: {c0:?} -> {c1:?}"
        );
        // The isolation is in force for unrelated traffic from B.
        assert!(!tcp_ok(lab.b(), fam.a, 80), "{f}: B reached A");
    }
}

#[test]
fn load_sized_replaces_pins_of_another_size_and_keeps_the_rest() {
    testkit::require_root();
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/ebpf-redirect-policy-{}-sizes",
        std::process::id()
    ));
    struct Pins(PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = remove_pins(&self.0);
        }
    }
    let _pins = Pins(pin_dir.clone());
    let max_entries = |name: &str| {
        aya::maps::MapData::from_pin(pin_dir.join(name))
            .unwrap()
            .info()
            .unwrap()
            .max_entries()
    };
    let key = IsolationKey {
        endpoint: 7,
        direction: DIRECTION_INGRESS,
        reserved: [0; 3],
    };
    let mut dp = Datapath::load(&pin_dir).expect("load");
    assert_eq!(
        max_entries("CONNTRACK"),
        ebpf_redirect_common::MAX_CONNTRACK
    );
    assert_eq!(max_entries("VERDICTS"), ebpf_redirect::VERDICT_COUNT);
    dp.policy_isolation_upsert(&key, &IsolationValue { rules: 3 })
        .unwrap();
    dp.policy_changed().unwrap();
    drop(dp);
    let sizes = ebpf_redirect::MapSizes {
        conntrack: 4096,
        ..Default::default()
    };
    let mut dp = Datapath::load_sized(&pin_dir, &sizes).expect("load_sized");
    assert_eq!(max_entries("CONNTRACK"), 4096);
    // Maps of the same size are reused with their contents.
    assert_eq!(dp.policy_generation().unwrap(), 1);
    dp.policy_isolation_delete(&key).unwrap();
    // Deleting what is absent is no error.
    dp.policy_isolation_delete(&key).unwrap();
}

/// A raw IP socket of protocol `proto` in `ns` for `family`'s addresses.
fn raw_socket(ns: &str, v4: bool, proto: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    in_netns(ns, || {
        // SAFETY: plain socket(2); the result is checked before it is wrapped.
        let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor owned by nothing else.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    })
}

/// Sends an SCTP common header with an INIT chunk from A to `dst:port` on a raw socket and
/// reports whether B's raw SCTP socket received it.
fn sctp_passes(a: &str, b: &str, dst: IpAddr, port: u16) -> bool {
    use std::os::fd::AsRawFd;
    let rx = raw_socket(b, dst.is_ipv4(), 132);
    let tx = raw_socket(a, dst.is_ipv4(), 132);
    let mut packet = vec![0x30, 0x39];
    packet.extend_from_slice(&port.to_be_bytes());
    packet.extend_from_slice(&[0; 8]); // verification tag, checksum
    packet.extend_from_slice(&[
        1, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 1,
    ]);
    let dst = nix::sys::socket::SockaddrStorage::from(SocketAddr::new(dst, 0));
    nix::sys::socket::sendto(
        tx.as_raw_fd(),
        &packet,
        &dst,
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("send SCTP");
    let deadline = std::time::Instant::now() + WAIT;
    let mut buf = [0u8; 256];
    while std::time::Instant::now() < deadline {
        // SAFETY: buf is a valid writable buffer of the given length.
        let n = unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            let n = n as usize;
            // IPv4 raw sockets deliver the IP header, IPv6 ones do not.
            let l4 = if buf[0] >> 4 == 4 && n >= 20 {
                usize::from(buf[0] & 0xf) * 4
            } else {
                0
            };
            if n >= l4 + 4 && buf[l4 + 2..l4 + 4] == port.to_be_bytes() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// UDP with IPv4 options (IHL 6): the ports are read after the options.
fn udp_with_ip_options_ok(ns: &str, dst: IpAddr, port: u16) -> bool {
    use std::os::fd::AsRawFd;
    let s = in_netns(ns, || UdpSocket::bind("0.0.0.0:0").unwrap());
    let options = [1u8, 1, 1, 0]; // NOP NOP NOP EOL: one more 32-bit word
                                  // SAFETY: setsockopt with a valid buffer and its length on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            options.as_ptr().cast(),
            options.len() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.send_to(b"meshd", SocketAddr::new(dst, port)).unwrap();
    let mut buf = [0u8; 16];
    matches!(s.recv_from(&mut buf), Ok((5, _)))
}

#[test]
fn ports_are_read_after_ipv4_options_and_for_sctp() {
    let mut lab = Lab::new("o");
    let (a, b) = (lab.a().to_string(), lab.b().to_string());
    let ep_a = lab.ep_a;
    lab.isolate(ep_a, DIRECTION_EGRESS);
    lab.allow(ep_a, DIRECTION_EGRESS, V4.b, 80);
    assert!(
        udp_with_ip_options_ok(&a, V4.b, 80),
        "UDP 80 with IP options refused"
    );
    assert!(
        !udp_with_ip_options_ok(&a, V4.b, 81),
        "UDP 81 with IP options admitted"
    );
    for fam in [V4, V6] {
        let f = fam.name;
        lab.peer(ep_a, DIRECTION_EGRESS, &host_prefix(fam.b), 1);
        lab.port(ep_a, DIRECTION_EGRESS, Some((132, 80, 16)), 1);
        assert!(sctp_passes(&a, &b, fam.b, 80), "{f}: SCTP 80 refused");
        assert!(!sctp_passes(&a, &b, fam.b, 81), "{f}: SCTP 81 admitted");
    }
}
