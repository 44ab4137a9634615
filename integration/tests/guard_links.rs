//! Strict mode's guard on ways out of a node other than its underlay, in the lab (root): a
//! TUN uplink (no link-layer header) carrying a more specific route to a peer's pod CIDRs, and
//! a second veth holding the default route of table 100, which an `ip rule` selects for
//! traffic from the node's pod CIDRs. meshd must find both (routes of every table, rules) and
//! guard them within a pass. After the peer's record is removed:
//! - with strict mode, nothing addressed to the peer's pods is read from the TUN (the test
//!   holds its fd) or captured on the veth's far end, and the node counts strict drops;
//! - with `--strict-mode false`, the very same packets ARE read from the TUN and captured on
//!   the veth (and counted as would-drops): the strict assertions can fail.
//!
//! Both families. Each test builds its own uniquely named lab and capture namespace and tears
//! them down on drop; traffic only goes to addresses in those namespaces.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use integration::capture::{analyse, Capture};
use integration::lab::{self, ping, pod_addrs, Lab};
use testkit::{netns, unique_name, NetnsGuard};

/// The TUN uplink meshd must guard.
const TUN: &str = "gtun0";
/// The second veth (node side) holding table 100's default route, and its far end.
const VETH: &str = "gveth0";
const VETH_FAR: &str = "gveth1";
/// The policy-routing table of the second uplink.
const TABLE: &str = "100";
/// Held by [`scenario`] for its whole run.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A node's verdict counter from `meshctl lab status -o json`.
fn counter(st: &serde_json::Value, node: &str, name: &str) -> u64 {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["counters"][name].as_u64())
        .unwrap_or_else(|| panic!("no counter {name} for {node} in {st:#}"))
}

/// `ip args…` (must succeed).
fn ip(args: &[&str]) {
    netns::run("ip", args).unwrap();
}

/// Creates a TUN (IFF_TUN | IFF_NO_PI, non-blocking) in the calling thread's netns.
#[allow(unsafe_code)]
fn open_tun(name: &str) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags: i16 = 0x0001 | 0x1000; // IFF_TUN | IFF_NO_PI
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    const TUNSETIFF: nix::libc::c_ulong = 0x400454ca;
    // SAFETY: f is an open /dev/net/tun and ifr a properly sized ifreq buffer.
    let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    f
}

/// Destination addresses of every IP packet queued on the TUN (waiting 300 ms for more).
fn read_tun(tun: &mut File) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_millis(300);
    loop {
        match tun.read(&mut buf) {
            Ok(n) if n >= 20 && buf[0] >> 4 == 4 => {
                out.push(IpAddr::from(<[u8; 4]>::try_from(&buf[16..20]).unwrap()))
            }
            Ok(n) if n >= 40 && buf[0] >> 4 == 6 => {
                out.push(IpAddr::from(<[u8; 16]>::try_from(&buf[24..40]).unwrap()))
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

/// The interfaces meshd on `node` reports guarded.
fn guarded(st: &serde_json::Value, node: &str) -> Vec<String> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["status"]["datapath"]["guarded_interfaces"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Kill `node`'s meshd and delete its record; wait until every other node dropped it.
fn withdraw_node(lab: &Lab, node: &str) {
    lab.meshctl(&["lab", "kill-node", node]).unwrap();
    std::fs::remove_file(lab.record_path(node).unwrap()).unwrap();
    lab.wait_for(
        &format!("the others to drop {node}"),
        Duration::from_secs(20),
        |s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["name"] != node)
                .all(|n| {
                    n["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().all(|p| p["name"] != node))
                })
        },
    )
    .unwrap();
}

/// What one scenario observed after the peer left.
struct Observed {
    /// Destinations read from the TUN that are the departed peer's pods.
    read_from_tun: Vec<IpAddr>,
    /// Pod packets in clear captured on the far end of the table-100 veth.
    captured_pod_packets: usize,
    /// Capture summary, for messages.
    capture: String,
    /// Growth of n1's strict drops and would-drops while the packets were sent.
    strict_drops: u64,
    would_drops: u64,
}

/// Lab of three nodes (`extra`: `meshctl lab up` options); on n1 a TUN with more specific
/// routes to n3's pod CIDRs and a veth holding table 100's default route for traffic from
/// n1's pod CIDRs. Once meshd guards both, n3 leaves; n1 (the node itself, through the TUN)
/// and n1's pod (through table 100) send to n3's pods, both families.
fn scenario(extra: &[&str]) -> Observed {
    // The two scenarios run one at a time: run side by side in one process (the suite's two
    // test threads), one of them lost its second uplink's veth or never saw it guarded.
    let _one_at_a_time = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up_with(3, 1, extra).unwrap();
    let st = lab.status().unwrap();
    let n1 = st.node("n1").unwrap().clone();
    let n3 = st.node("n3").unwrap().clone();
    let from = st.pods_on("n1").next().unwrap().clone();
    let (dst4, dst6) = pod_addrs(st.pods_on("n3").next().unwrap()).unwrap();
    assert!(ping(&from, &dst4.to_string(), 1) && ping(&from, &dst6.to_string(), 1));
    let ns = n1.namespace.as_str();

    // (a) The TUN uplink: a more specific route than the default to n3's pod CIDRs, in the
    // main table, behind meshd's own (a higher metric) until n3 leaves.
    let mut tun = testkit::netns::within(ns, || open_tun(TUN)).unwrap();
    ip(&["-n", ns, "link", "set", TUN, "up"]);
    for cidr in &n3.pod_cidrs {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        ip(&[
            "-n", ns, family, "route", "add", cidr, "dev", TUN, "metric", "4000",
        ]);
    }

    // (b) The second uplink: a veth to a namespace of the test's, table 100's default route
    // through it, and a rule sending everything from n1's pod CIDRs to table 100.
    let far = NetnsGuard::new(&unique_name("gl", "far")).unwrap();
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        VETH,
        "type",
        "veth",
        "peer",
        "name",
        VETH_FAR,
        "netns",
        far.name(),
    ]);
    ip(&["-n", ns, "addr", "add", "192.168.213.1/24", "dev", VETH]);
    ip(&[
        "-n",
        ns,
        "-6",
        "addr",
        "add",
        "fd00:213::1/64",
        "dev",
        VETH,
        "nodad",
    ]);
    ip(&["-n", ns, "link", "set", VETH, "up"]);
    ip(&[
        "-n",
        far.name(),
        "addr",
        "add",
        "192.168.213.2/24",
        "dev",
        VETH_FAR,
    ]);
    ip(&[
        "-n",
        far.name(),
        "-6",
        "addr",
        "add",
        "fd00:213::2/64",
        "dev",
        VETH_FAR,
        "nodad",
    ]);
    ip(&["-n", far.name(), "link", "set", VETH_FAR, "up"]);
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        "192.168.213.2",
        "dev",
        VETH,
        "table",
        TABLE,
    ]);
    ip(&[
        "-n",
        ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:213::2",
        "dev",
        VETH,
        "table",
        TABLE,
    ]);
    for cidr in &n1.pod_cidrs {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        ip(&[
            "-n", ns, family, "rule", "add", "from", cidr, "lookup", TABLE, "pref", "1000",
        ]);
    }

    // meshd finds both ways out at its next status tick (every second); the bound is for a
    // loaded CI machine (one run under a load of ~15 needed more than 20 s).
    lab.wait_for(
        "n1 to guard the TUN and the table-100 veth",
        Duration::from_secs(45),
        |s| {
            let g = guarded(s, "n1");
            g.iter().any(|i| i == TUN) && g.iter().any(|i| i == VETH)
        },
    )
    .unwrap();

    withdraw_node(&lab, "n3");

    let dir = tempfile::tempdir().unwrap();
    let cap = Capture::start(far.name(), VETH_FAR, &dir.path().join("veth.pcap")).unwrap();
    read_tun(&mut tun);
    let before = lab.status_json().unwrap();
    for dst in [dst4, dst6] {
        // The node's own traffic follows the TUN route ...
        let _ = netns::run_in_unchecked(
            ns,
            &["ping", "-c", "3", "-i", "0.2", "-W", "1", &dst.to_string()],
        );
        // ... the pod's follows the rule to table 100.
        let _ = ping(&from, &dst.to_string(), 3);
    }
    let read = read_tun(&mut tun);
    let after = lab.status_json().unwrap();
    let report = analyse(&cap.stop().unwrap(), &st.capture_policy()).unwrap();
    eprintln!(
        "{extra:?}: TUN read {read:?}; veth capture {}; n1 counters {} -> {}",
        report.summary(),
        before["nodes"][0]["counters"],
        after["nodes"][0]["counters"]
    );
    Observed {
        read_from_tun: read
            .into_iter()
            .filter(|d| *d == dst4 || *d == dst6)
            .collect(),
        captured_pod_packets: report.plaintext_pod_count,
        capture: report.summary(),
        strict_drops: counter(&after, "n1", "strict_drops")
            - counter(&before, "n1", "strict_drops"),
        would_drops: counter(&after, "n1", "would_drops") - counter(&before, "n1", "would_drops"),
    }
}

#[test]
fn strict_mode_guards_a_tun_uplink_and_a_policy_routing_table_after_a_peer_leaves() {
    let seen = scenario(&[]);
    assert!(
        seen.read_from_tun.is_empty(),
        "cleartext to the departed peer's pods read from the TUN: {:?}",
        seen.read_from_tun
    );
    assert_eq!(seen.captured_pod_packets, 0, "{}", seen.capture);
    // 3 echo requests per family from the node (TUN) and from the pod (table 100).
    assert!(
        seen.strict_drops >= 12,
        "strict drops grew by {} for 12 echo requests",
        seen.strict_drops
    );
}

#[test]
fn without_strict_mode_the_same_packets_leave_through_the_tun_and_table_100() {
    let seen = scenario(&["--strict-mode", "false"]);
    assert!(
        seen.read_from_tun.len() >= 6,
        "the TUN read {:?}: the node's 6 echo requests should have left through it",
        seen.read_from_tun
    );
    assert!(
        seen.read_from_tun.iter().any(IpAddr::is_ipv4)
            && seen.read_from_tun.iter().any(IpAddr::is_ipv6),
        "both families through the TUN: {:?}",
        seen.read_from_tun
    );
    assert!(seen.captured_pod_packets >= 6, "{}", seen.capture);
    assert!(
        seen.would_drops >= 12,
        "would-drops grew by {} for 12 echo requests",
        seen.would_drops
    );
    assert_eq!(seen.strict_drops, 0);
}
