//! Root integration tests: real network namespaces, veths and a TUN; the BPF programs are
//! loaded, pinned under a per-test bpffs directory and attached with TCX links.
//! Namespaces are `testkit::NetnsGuard`s named with the test pid, deleted on drop even on
//! failure. Without root or `ip`/`ping` the tests fail (`testkit::require_tools`).
//! Traffic only goes to addresses inside namespaces these tests create.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::{
    fs::{File, OpenOptions},
    io::Read,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use ebpf_redirect::{remove_pins, Datapath, LinkFraming, Mode, PodSource, Verdict};
use testkit::{unique_name, NetnsGuard};

const REDIRECT: usize = Verdict::Redirect as usize;
const LOCAL: usize = Verdict::Local as usize;
const STRICT_DROP: usize = Verdict::StrictDrop as usize;
const WOULD_DROP: usize = Verdict::WouldDrop as usize;

/// The tools these tests run.
const TOOLS: &[&str] = &["ip", "ping"];

/// The test's namespaces (deleted when dropped) and its pin directory (removed on drop).
struct Guard {
    netns: Vec<NetnsGuard>,
    pin_dir: PathBuf,
}

impl Guard {
    fn new(tag: &str, ns: &[&str]) -> Self {
        let pid = std::process::id();
        Guard {
            netns: ns
                .iter()
                .map(|n| NetnsGuard::new(&unique_name("er", &format!("{tag}{n}"))).unwrap())
                .collect(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/ebpf-redirect-test-{pid}-{tag}")),
        }
    }
    fn ns(&self, i: usize) -> &str {
        self.netns[i].name()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pin_dir);
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip -n ns <args...>`
fn ipn(ns: &str, args: &str) {
    testkit::netns::ip_n(ns, args).unwrap();
}

/// Runs `f` on a fresh thread that has entered netns `ns` (setns is per thread).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    testkit::netns::within(ns, f).unwrap()
}

/// Creates a TUN (IFF_TUN | IFF_NO_PI, non-blocking) in the calling thread's netns.
fn open_tun(name: &str) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags: i16 = 0x0001 | 0x1000; // IFF_TUN | IFF_NO_PI
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    const TUNSETIFF: libc::c_ulong = 0x400454ca;
    // SAFETY: f is an open /dev/net/tun and ifr a properly sized ifreq buffer.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    f
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "if_nametoindex({name})");
    i
}

/// Reads all queued packets from the TUN; returns destination addresses of IP packets.
fn drain_tun(tun: &mut File) -> Vec<IpAddr> {
    let mut dsts = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_millis(300);
    loop {
        match tun.read(&mut buf) {
            Ok(n) if n >= 20 && buf[0] >> 4 == 4 => {
                dsts.push(IpAddr::from(<[u8; 4]>::try_from(&buf[16..20]).unwrap()))
            }
            Ok(n) if n >= 40 && buf[0] >> 4 == 6 => {
                dsts.push(IpAddr::from(<[u8; 16]>::try_from(&buf[24..40]).unwrap()))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return dsts;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("tun read: {e}"),
        }
    }
}

fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", dst,
        ])
        .output()
        .expect("ping")
        .status
        .success()
}

/// Counters after a restart/reload: nothing went down, no packet was redirected meanwhile.
fn kept<const N: usize>(before: &[u64; N], after: &[u64; N]) -> bool {
    before.iter().zip(after).all(|(b, a)| a >= b) && before[REDIRECT] == after[REDIRECT]
}

/// Pings until one succeeds (up to 5 tries): warms ARP/NDP. On a fresh veth the first IPv6
/// neighbour solicitation is often lost and only retried after 1 s.
fn wait_ping(ns: &str, dst: &str) {
    for _ in 0..5 {
        if ping(ns, dst) {
            return;
        }
    }
    panic!("{ns}: {dst} unreachable");
}

#[test]
fn redirect_to_tunnel_v4_v6_and_adopt() {
    testkit::require_tools(TOOLS);
    let g = Guard::new("r", &["node", "pod"]);
    let (node, pod) = (g.ns(0).to_string(), g.ns(1).to_string());
    run(&[
        "ip", "link", "add", "vh0", "netns", &node, "type", "veth", "peer", "name", "vp0", "netns",
        &pod,
    ]);
    ipn(&node, "addr add 10.200.0.1/24 dev vh0");
    ipn(&node, "-6 addr add fd00:200::1/64 dev vh0 nodad");
    ipn(&node, "link set vh0 up");
    ipn(&pod, "addr add 10.200.0.2/24 dev vp0");
    ipn(&pod, "-6 addr add fd00:200::2/64 dev vp0 nodad");
    ipn(&pod, "link set vp0 up");
    ipn(&pod, "route add default via 10.200.0.1");
    ipn(&pod, "-6 route add default via fd00:200::1");

    wait_ping(&pod, "10.200.0.1");
    wait_ping(&pod, "fd00:200::1");

    let (mut tun, tun_idx) = in_netns(&node, || {
        let t = open_tun("mtun0");
        (t, ifindex("mtun0"))
    });
    ipn(&node, "link set mtun0 up");

    let mut dp = Datapath::load(&g.pin_dir).expect("load");
    // The pod's own addresses, before from_pod goes on (it drops any other source).
    let vh0 = in_netns(&node, || ifindex("vh0"));
    for addr in ["10.200.0.2", "fd00:200::2"] {
        dp.add_source(PodSource {
            ifindex: vh0,
            addr: addr.parse().unwrap(),
        })
        .unwrap();
    }
    in_netns(&node, || dp.attach_from_pod("vh0")).expect("attach from_pod");
    dp.set_remote("10.99.0.0/16".parse().unwrap(), tun_idx)
        .unwrap();
    dp.set_remote("fd00:99::/64".parse().unwrap(), tun_idx)
        .unwrap();
    dp.add_local("10.200.0.1".parse().unwrap()).unwrap();

    // v4 redirect
    let c0 = dp.counters().unwrap();
    let _ = ping(&pod, "10.99.0.5"); // no reply expected: the TUN has no peer
    let c1 = dp.counters().unwrap();
    let got = drain_tun(&mut tun);
    eprintln!("v4: counters {c0:?} -> {c1:?}, tun got {got:?}");
    assert!(
        c1[REDIRECT] >= c0[REDIRECT] + 3,
        "REDIRECT did not rise by 3"
    );
    assert!(
        got.contains(&"10.99.0.5".parse().unwrap()),
        "v4 echo not on TUN"
    );

    // v6 redirect
    let _ = ping(&pod, "fd00:99::5");
    let c2 = dp.counters().unwrap();
    let got = drain_tun(&mut tun);
    eprintln!("v6: counters {c1:?} -> {c2:?}, tun got {got:?}");
    assert!(c2[REDIRECT] >= c1[REDIRECT] + 3);
    assert!(
        got.contains(&"fd00:99::5".parse().unwrap()),
        "v6 echo not on TUN"
    );

    // local destination: left to the kernel (the ping is answered by the node)
    assert!(ping(&pod, "10.200.0.1"), "ping to local address failed");
    let c3 = dp.counters().unwrap();
    assert!(c3[LOCAL] >= c2[LOCAL] + 3);

    // daemon restart: drop the handle, adopt the pins, the link is still attached and the
    // maps still hold the routes; counters were kept.
    drop(dp);
    let dp = Datapath::adopt(&g.pin_dir).expect("adopt");
    let c4 = dp.counters().unwrap();
    // (PASS may tick meanwhile: background ARP/NDP/MLD from the pod)
    assert!(
        kept(&c3, &c4),
        "counters lost across adopt: {c3:?} -> {c4:?}"
    );
    let _ = ping(&pod, "10.99.1.1");
    let c5 = dp.counters().unwrap();
    let got = drain_tun(&mut tun);
    eprintln!("after adopt: counters {c4:?} -> {c5:?}, tun got {got:?}");
    assert!(c5[REDIRECT] >= c4[REDIRECT] + 3);
    assert!(got.contains(&"10.99.1.1".parse().unwrap()));

    // upgrade: load the object again over the same pin dir: pinned maps are reused (routes
    // and counters kept), attach swaps the new program into the pinned link atomically.
    drop(dp);
    let mut dp = Datapath::load(&g.pin_dir).expect("reload");
    let c5b = dp.counters().unwrap();
    assert!(
        kept(&c5, &c5b),
        "counters lost across reload: {c5:?} -> {c5b:?}"
    );
    in_netns(&node, || dp.attach_from_pod("vh0")).expect("re-attach");
    let _ = ping(&pod, "10.99.2.2");
    let c5c = dp.counters().unwrap();
    let got = drain_tun(&mut tun);
    eprintln!("after reload+re-attach: counters {c5b:?} -> {c5c:?}, tun got {got:?}");
    // exactly 3 more: a second (duplicate) link would count twice
    assert_eq!(c5c[REDIRECT], c5b[REDIRECT] + 3);
    assert!(got.contains(&"10.99.2.2".parse().unwrap()));
    let c5 = c5c;
    dp.remove_remote("10.99.0.0/16".parse().unwrap()).unwrap();
    let _ = ping(&pod, "10.99.0.5");
    let c6 = dp.counters().unwrap();
    eprintln!("after remove_remote: counters {c5:?} -> {c6:?}");
    assert_eq!(c6[REDIRECT], c5[REDIRECT], "removed route still redirected");

    // detach: no more counting at all
    dp.detach_all().unwrap();
    assert!(!g.pin_dir.exists());
}

/// A WireGuard transport-data header (type 4, three reserved zero bytes) and some bytes.
const WG_LIKE: &[u8] = &[4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];

/// Sends one datagram from `from` to `to` and reports whether `rx` got it.
fn udp_passes(tx_ns: &str, from: SocketAddr, rx: &UdpSocket, to: SocketAddr) -> bool {
    udp_payload_passes(tx_ns, from, rx, to, b"meshd")
}

/// Like [`udp_passes`] with an explicit payload.
fn udp_payload_passes(
    tx_ns: &str,
    from: SocketAddr,
    rx: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
) -> bool {
    udp_marked_passes(tx_ns, from, rx, to, payload, None)
}

/// Like [`udp_payload_passes`], sending from a socket with `SO_MARK` `mark`.
fn udp_marked_passes(
    tx_ns: &str,
    from: SocketAddr,
    rx: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    mark: Option<u32>,
) -> bool {
    let tx = in_netns(tx_ns, || UdpSocket::bind(from).expect("bind sender"));
    if let Some(mark) = mark {
        nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::Mark, &mark).expect("SO_MARK");
    }
    tx.send_to(payload, to).expect("send");
    rx.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    match rx.recv_from(&mut buf) {
        Ok((n, _)) => &buf[..n] == payload,
        Err(_) => false,
    }
}

#[test]
fn underlay_strict_and_permissive_v4_v6() {
    testkit::require_tools(TOOLS);
    const WG: u16 = 51820;
    const MESH_MARK: u32 = 109;
    let g = Guard::new("s", &["a", "b"]);
    let (a, b) = (g.ns(0).to_string(), g.ns(1).to_string());
    run(&[
        "ip", "link", "add", "ua0", "netns", &a, "type", "veth", "peer", "name", "ub0", "netns", &b,
    ]);
    ipn(&a, "addr add 192.168.77.1/24 dev ua0");
    ipn(&a, "-6 addr add fd00:77::1/64 dev ua0 nodad");
    // "pod" addresses on the node, on lo so that ARP/NDP use the underlay address.
    ipn(&a, "addr add 10.244.1.1/32 dev lo");
    ipn(&a, "-6 addr add fd00:244::1/128 dev lo nodad");
    ipn(&a, "link set ua0 up");
    ipn(&b, "addr add 192.168.77.2/24 dev ub0");
    ipn(&b, "-6 addr add fd00:77::2/64 dev ub0 nodad");
    ipn(&b, "link set ub0 up");
    ipn(&b, "route add 10.244.0.0/16 via 192.168.77.1");
    ipn(&b, "-6 route add fd00:244::/48 via fd00:77::1");

    let mut dp = Datapath::load(&g.pin_dir).expect("load");
    dp.set_config(WG, Mode::Enforce).unwrap();
    dp.set_cluster("10.244.0.0/16".parse().unwrap()).unwrap();
    dp.set_cluster("fd00:244::/48".parse().unwrap()).unwrap();
    let framing =
        in_netns(&a, || dp.attach_underlay_egress("ua0")).expect("attach underlay_egress");
    assert_eq!(framing, LinkFraming::Ethernet, "a veth is an Ethernet link");

    for (fam, underlay_a, pod_a, peer) in [
        ("v4", "192.168.77.1", "10.244.1.1", "192.168.77.2"),
        ("v6", "fd00:77::1", "fd00:244::1", "fd00:77::2"),
    ] {
        let ip = |s: &str, p: u16| SocketAddr::new(s.parse().unwrap(), p);
        let any = if fam == "v4" { "0.0.0.0" } else { "::" };
        let rx = in_netns(&b, || UdpSocket::bind(ip(any, 9999)).unwrap());
        let rx_wg = in_netns(&b, || UdpSocket::bind(ip(any, WG)).unwrap());
        dp.set_config(WG, Mode::Enforce).unwrap();

        wait_ping(&a, peer);
        let c0 = dp.counters().unwrap();
        // node-to-node traffic (not cluster) passes and is not counted (also warms ARP/NDP)
        assert!(
            udp_passes(&a, ip(underlay_a, 0), &rx, ip(peer, 9999)),
            "{fam}: underlay traffic dropped"
        );
        let c1 = dp.counters().unwrap();
        assert_eq!(c1[STRICT_DROP], c0[STRICT_DROP]);
        // cluster source, not WireGuard: dropped
        assert!(
            !udp_passes(&a, ip(pod_a, 0), &rx, ip(peer, 9999)),
            "{fam}: plaintext cluster traffic leaked"
        );
        let c2 = dp.counters().unwrap();
        assert!(
            c2[STRICT_DROP] > c1[STRICT_DROP],
            "{fam}: STRICT_DROP did not rise"
        );
        // A WireGuard-looking payload to or from the WireGuard port is no exemption: the
        // mesh's ciphertext never carries a pod address, so this is cleartext about a pod.
        assert!(
            !udp_payload_passes(&a, ip(pod_a, 0), &rx_wg, ip(peer, WG), WG_LIKE),
            "{fam}: WireGuard-looking payload to the wg port from a pod address leaked"
        );
        assert!(
            !udp_payload_passes(&a, ip(pod_a, WG), &rx, ip(peer, 9999), WG_LIKE),
            "{fam}: WireGuard-looking payload from the wg port from a pod address leaked"
        );
        let c3 = dp.counters().unwrap();
        assert_eq!(
            c3[STRICT_DROP],
            c2[STRICT_DROP] + 2,
            "{fam}: WireGuard-looking pod packets not counted"
        );
        // plaintext that merely uses the WireGuard port is dropped too
        assert!(
            !udp_passes(&a, ip(pod_a, 0), &rx_wg, ip(peer, WG)),
            "{fam}: plaintext to the wg port leaked"
        );
        let c2 = c3;
        let c3 = dp.counters().unwrap();
        assert!(
            c3[STRICT_DROP] > c2[STRICT_DROP],
            "{fam}: wg-port plaintext not counted"
        );
        // The tunnel's own packets carry the mesh mark and come from its listen port: they
        // pass (fragments of ciphertext have no header to recognise); another mark does not,
        // nor does the mesh mark on a packet of another shape (any process with NET_ADMIN
        // can set the mark on its socket).
        dp.set_mesh_mark(MESH_MARK).unwrap();
        assert_eq!(dp.config().unwrap().mode, 0, "set_mesh_mark kept the mode");
        assert!(
            udp_marked_passes(
                &a,
                ip(pod_a, WG),
                &rx,
                ip(peer, 9999),
                b"x",
                Some(MESH_MARK)
            ),
            "{fam}: a packet with the mesh mark was dropped"
        );
        assert!(
            !udp_marked_passes(&a, ip(pod_a, WG), &rx, ip(peer, 9999), b"x", Some(7)),
            "{fam}: a packet with another mark leaked"
        );
        assert!(
            !udp_marked_passes(&a, ip(pod_a, 0), &rx, ip(peer, 9999), b"x", Some(MESH_MARK)),
            "{fam}: a marked packet from another port than the listen port leaked"
        );
        dp.set_mesh_mark(0).unwrap();
        assert!(
            !udp_marked_passes(
                &a,
                ip(pod_a, WG),
                &rx,
                ip(peer, 9999),
                b"x",
                Some(MESH_MARK)
            ),
            "{fam}: with no mesh mark configured, a marked packet leaked"
        );
        let c3 = dp.counters().unwrap();
        // permissive: passes, WOULD_DROP rises
        dp.set_config(WG, Mode::Permissive).unwrap();
        assert!(
            udp_passes(&a, ip(pod_a, 0), &rx, ip(peer, 9999)),
            "{fam}: permissive dropped"
        );
        let c4 = dp.counters().unwrap();
        assert!(
            c4[WOULD_DROP] > c3[WOULD_DROP],
            "{fam}: WOULD_DROP did not rise"
        );
        assert_eq!(c4[STRICT_DROP], c3[STRICT_DROP]);
        eprintln!("{fam}: counters {c0:?} -> {c1:?} -> {c2:?} -> {c3:?} -> {c4:?}");
    }
    dp.detach_all().unwrap();
}
