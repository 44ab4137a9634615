//! Root tests of the guard on a link without a link-layer header: a node whose cluster
//! traffic leaves through a TUN device (the test holds the TUN's fd and reads what the kernel
//! sends), so the guard must find the IP header at byte 0 (`underlay_egress_ip`, chosen from
//! the link type when attaching). The same packets are read from the TUN in permissive mode,
//! so the strict assertions can fail. Also the mesh mark: it exempts only the tunnel's shape
//! (UDP from the listen port). Namespaces are `testkit::NetnsGuard`s named with the test pid,
//! deleted on drop; traffic only goes to addresses of the namespace the test creates.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::{
    fs::{File, OpenOptions},
    io::Read,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::PathBuf,
    time::{Duration, Instant},
};

use ebpf_redirect::{remove_pins, Datapath, LinkFraming, Mode, Verdict};
use testkit::{unique_name, NetnsGuard};

const STRICT_DROP: usize = Verdict::StrictDrop as usize;
const WOULD_DROP: usize = Verdict::WouldDrop as usize;
const WG: u16 = 51820;
const MESH_MARK: u32 = 109;

/// The test's namespace (deleted when dropped) and its pin directory (removed on drop).
struct Fixture {
    netns: NetnsGuard,
    pin_dir: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        Fixture {
            netns: NetnsGuard::new(&unique_name("eg", tag)).unwrap(),
            pin_dir: PathBuf::from(format!(
                "/sys/fs/bpf/ebpf-redirect-guard-test-{}-{tag}",
                std::process::id()
            )),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pin_dir);
    }
}

/// `ip -n ns <args...>`, which must succeed.
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

/// A UDP datagram read from the TUN: source and destination address and port.
#[derive(Debug, PartialEq, Eq)]
struct Datagram {
    src: SocketAddr,
    dst: SocketAddr,
}

/// Reads every queued packet from the TUN (waiting up to 300 ms for more); returns the UDP
/// datagrams among them (not fragments).
fn read_tun(tun: &mut File) -> Vec<Datagram> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_millis(300);
    loop {
        match tun.read(&mut buf) {
            Ok(n) if n >= 28 && buf[0] >> 4 == 4 && buf[9] == 17 => {
                let l4 = usize::from(buf[0] & 0x0f) * 4;
                let src: [u8; 4] = buf[12..16].try_into().unwrap();
                let dst: [u8; 4] = buf[16..20].try_into().unwrap();
                out.push(Datagram {
                    src: SocketAddr::new(
                        IpAddr::from(src),
                        u16::from_be_bytes([buf[l4], buf[l4 + 1]]),
                    ),
                    dst: SocketAddr::new(
                        IpAddr::from(dst),
                        u16::from_be_bytes([buf[l4 + 2], buf[l4 + 3]]),
                    ),
                });
            }
            Ok(n) if n >= 48 && buf[0] >> 4 == 6 && buf[6] == 17 => {
                let src: [u8; 16] = buf[8..24].try_into().unwrap();
                let dst: [u8; 16] = buf[24..40].try_into().unwrap();
                out.push(Datagram {
                    src: SocketAddr::new(IpAddr::from(src), u16::from_be_bytes([buf[40], buf[41]])),
                    dst: SocketAddr::new(IpAddr::from(dst), u16::from_be_bytes([buf[42], buf[43]])),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return out;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("tun read: {e}"),
        }
    }
}

/// Sends one datagram from `from` (marked with `mark`) to `to` in `ns`; returns whether the
/// TUN delivered it to its reader.
fn reaches_tun(
    ns: &str,
    tun: &mut File,
    from: SocketAddr,
    to: SocketAddr,
    mark: Option<u32>,
) -> bool {
    read_tun(tun); // whatever the kernel sent meanwhile (router solicitations)
    let sent = in_netns(ns, || {
        let tx = UdpSocket::bind(from).expect("bind sender");
        if let Some(mark) = mark {
            nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::Mark, &mark)
                .expect("SO_MARK");
        }
        let _ = tx.send_to(b"meshd", to);
        tx.local_addr().unwrap()
    });
    read_tun(tun).iter().any(|d| d.src == sent && d.dst == to)
}

#[test]
fn guard_on_a_tun_uplink_reads_the_ip_header_at_byte_zero_v4_v6() {
    testkit::require_root();
    testkit::require_tool("ip");
    let fx = Fixture::new("tun");
    let ns = fx.netns.name().to_string();
    let mut tun = in_netns(&ns, || open_tun("gt0"));
    ipn(&ns, "link set lo up");
    ipn(&ns, "link set gt0 up");
    ipn(&ns, "addr add 192.168.78.1/24 dev gt0");
    ipn(&ns, "-6 addr add fd00:78::1/64 dev gt0 nodad");
    // The node's "pod" addresses (on lo) and the cluster reachable only through the TUN.
    ipn(&ns, "addr add 10.244.1.1/32 dev lo");
    ipn(&ns, "-6 addr add fd00:244:0:1::1/128 dev lo nodad");
    ipn(&ns, "route add 10.244.0.0/16 dev gt0");
    ipn(&ns, "-6 route add fd00:244::/48 dev gt0");

    let mut dp = Datapath::load(&fx.pin_dir).expect("load");
    dp.set_config(WG, Mode::Enforce).unwrap();
    dp.set_mesh_mark(MESH_MARK).unwrap();
    dp.set_cluster("10.244.0.0/16".parse().unwrap()).unwrap();
    dp.set_cluster("fd00:244::/48".parse().unwrap()).unwrap();
    let framing = in_netns(&ns, || dp.attach_underlay_egress("gt0")).expect("attach guard");
    assert_eq!(framing, LinkFraming::Ip, "a TUN has no link-layer header");

    let sa = |s: &str, p: u16| SocketAddr::new(s.parse().unwrap(), p);
    for (fam, node, pod, other_node, remote_pod) in [
        (
            "v4",
            "192.168.78.1",
            "10.244.1.1",
            "192.168.78.9",
            "10.244.2.5",
        ),
        (
            "v6",
            "fd00:78::1",
            "fd00:244:0:1::1",
            "fd00:78::9",
            "fd00:244:0:2::5",
        ),
    ] {
        dp.set_config(WG, Mode::Enforce).unwrap();
        // Node-to-node traffic is no cluster traffic: it reaches the TUN, uncounted.
        let c0 = dp.counters().unwrap();
        assert!(
            reaches_tun(&ns, &mut tun, sa(node, 0), sa(other_node, 9999), None),
            "{fam}: node traffic through the TUN was dropped"
        );
        let c1 = dp.counters().unwrap();
        assert_eq!(
            c1[STRICT_DROP], c0[STRICT_DROP],
            "{fam}: node traffic counted"
        );

        // To a remote pod (a departed peer's CIDR) and from a pod address: dropped, counted.
        assert!(
            !reaches_tun(&ns, &mut tun, sa(node, 0), sa(remote_pod, 9999), None),
            "{fam}: cleartext to a pod CIDR leaked through the TUN"
        );
        assert!(
            !reaches_tun(&ns, &mut tun, sa(pod, 0), sa(other_node, 9999), None),
            "{fam}: cleartext from a pod address leaked through the TUN"
        );
        let c2 = dp.counters().unwrap();
        assert_eq!(
            c2[STRICT_DROP],
            c1[STRICT_DROP] + 2,
            "{fam}: the TUN's cluster packets were not counted as strict drops"
        );

        // The mesh mark exempts the tunnel's shape only: UDP from the listen port.
        assert!(
            reaches_tun(
                &ns,
                &mut tun,
                sa(pod, WG),
                sa(other_node, 9999),
                Some(MESH_MARK)
            ),
            "{fam}: the tunnel's own (marked, listen-port) packet was dropped"
        );
        assert!(
            !reaches_tun(
                &ns,
                &mut tun,
                sa(pod, 0),
                sa(other_node, 9999),
                Some(MESH_MARK)
            ),
            "{fam}: a marked packet from another port passed as the tunnel's"
        );

        // Permissive: the very packets strict mode dropped are read from the TUN, counted.
        dp.set_config(WG, Mode::Permissive).unwrap();
        let c3 = dp.counters().unwrap();
        assert!(
            reaches_tun(&ns, &mut tun, sa(node, 0), sa(remote_pod, 9999), None),
            "{fam}: permissive: the packet to a pod CIDR did not reach the TUN"
        );
        assert!(
            reaches_tun(&ns, &mut tun, sa(pod, 0), sa(other_node, 9999), None),
            "{fam}: permissive: the packet from a pod address did not reach the TUN"
        );
        let c4 = dp.counters().unwrap();
        assert_eq!(c4[WOULD_DROP], c3[WOULD_DROP] + 2, "{fam}: WOULD_DROP");
        assert_eq!(
            c4[STRICT_DROP], c3[STRICT_DROP],
            "{fam}: permissive dropped"
        );
        eprintln!("{fam}: counters {c0:?} -> {c2:?} -> {c4:?}");
    }
    dp.detach_all().unwrap();
}
