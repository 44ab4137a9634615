//! Source validation in the lab (issue 18): a pod that takes its neighbour pod's address, or
//! its node's, and sends from it to a pod on another node. Before `from_pod` checked sources
//! such packets were redirected into the tunnel, accepted by the peer (the neighbour's
//! address is in the sending node's pod CIDR, the node's address among its allowed IPs) and
//! delivered; now they reach nothing, both families, and `spoofed` counts them in the lab's
//! status and the node's. The control shows the path would deliver them: with a source entry
//! for the stolen address the same packet arrives. The daemon's backstop then removes that
//! stale entry and restores a pod's missing one (what an upgrade needs for older pods).
//! Needs root; the lab is uniquely named and torn down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ebpf_redirect::{Datapath, PodSource};
use integration::lab::{self, pod_addrs, Lab};
use integration::labjson::LabPod;
use testkit::netns;

const PORT: u16 = 7799;

/// A node's verdict counter from `meshctl lab status -o json` (read from the pinned maps).
fn counter(st: &serde_json::Value, node: &str, name: &str) -> u64 {
    lab_node(st, node)["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} for {node} in {st:#}"))
}

fn lab_node<'a>(st: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no node {node} in {st:#}"))
}

/// The destination pod's listeners, one per family.
struct Listener([UdpSocket; 2]);

impl Listener {
    fn open(ns: &str, addrs: [IpAddr; 2]) -> Self {
        netns::within(ns, || {
            let socks = addrs.map(|a| UdpSocket::bind(SocketAddr::new(a, PORT)).unwrap());
            for s in &socks {
                s.set_read_timeout(Some(Duration::from_millis(800)))
                    .unwrap();
            }
            Listener(socks)
        })
        .unwrap()
    }

    /// Whether a datagram from `from` arrives (others are skipped).
    fn got_from(&self, from: IpAddr) -> bool {
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = self.0[usize::from(from.is_ipv6())].recv_from(&mut buf) {
            if peer.ip() == from {
                return true;
            }
        }
        false
    }
}

/// Sends one datagram from `from` (an address in pod `pod`) to `to`.
fn send(pod: &LabPod, from: IpAddr, to: IpAddr) {
    netns::within(&pod.namespace, || {
        let tx = UdpSocket::bind(SocketAddr::new(from, 0)).unwrap();
        tx.send_to(b"spoof?", SocketAddr::new(to, PORT)).unwrap();
    })
    .unwrap();
}

/// Sends from `from` until a datagram arrives (a few tries: the first packets of a fresh
/// path may wait on neighbour resolution).
fn delivered(pod: &LabPod, from: IpAddr, to: IpAddr, listener: &Listener) -> bool {
    (0..4).any(|_| {
        send(pod, from, to);
        listener.got_from(from)
    })
}

/// Adds `addr` to the pod's interface (the spoofer takes an address that is not its own).
fn take_address(pod: &LabPod, addr: IpAddr) {
    let (prefix, extra) = if addr.is_ipv4() {
        ("32", "")
    } else {
        ("128", "nodad")
    };
    let mut args = vec![
        "ip".to_string(),
        "addr".into(),
        "add".into(),
        format!("{addr}/{prefix}"),
        "dev".into(),
        pod.interface.clone(),
    ];
    if !extra.is_empty() {
        args.push(extra.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    netns::run_in(&pod.namespace, &args).unwrap();
}

/// The ifindex of the pod's host veth (the peer of its interface), in its node's namespace.
fn host_ifindex(pod: &LabPod) -> u32 {
    let path = format!("/sys/class/net/{}/iflink", pod.interface);
    let out = netns::run_in(&pod.namespace, &["cat", &path]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_pod_spoofing_its_neighbour_or_its_node_reaches_no_pod_on_another_node_and_is_counted() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 2).unwrap();
    let st = lab.status().unwrap();
    let raw = lab.status_json().unwrap();
    let on_n1: Vec<LabPod> = st.pods_on("n1").cloned().collect();
    let (spoofer, neighbour) = (&on_n1[0], &on_n1[1]);
    let dst = st.pods_on("n2").next().unwrap().clone();
    let (d4, d6) = pod_addrs(&dst).unwrap();
    let to = |a: IpAddr| if a.is_ipv4() { d4 } else { d6 };
    let listener = Listener::open(&dst.namespace, [d4, d6]);
    let (own4, own6) = pod_addrs(spoofer).unwrap();
    let (n4, n6) = pod_addrs(neighbour).unwrap();
    let node_addrs: Vec<IpAddr> = st
        .node("n1")
        .unwrap()
        .underlay_addresses
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert!(
        !node_addrs.is_empty(),
        "n1 has no underlay address: {raw:#}"
    );

    // The pod's own traffic crosses to n2, both families.
    for own in [own4, own6] {
        assert!(
            delivered(spoofer, own, to(own), &listener),
            "own {own} not delivered"
        );
    }
    // Its neighbour's addresses and its node's: never delivered, each packet counted.
    for stolen in [n4, n6].into_iter().chain(node_addrs.iter().copied()) {
        take_address(spoofer, stolen);
        let before = counter(&lab.status_json().unwrap(), "n1", "spoofed");
        for _ in 0..3 {
            send(spoofer, stolen, to(stolen));
        }
        assert!(
            !listener.got_from(stolen),
            "n2's pod got a packet from {stolen}"
        );
        let after = counter(&lab.status_json().unwrap(), "n1", "spoofed");
        eprintln!("from {stolen}: spoofed {before} -> {after}");
        assert!(
            after >= before + 3,
            "3 packets from {stolen}, spoofed {before} -> {after}"
        );
    }
    // The spoofer's own traffic still flows.
    for own in [own4, own6] {
        assert!(
            delivered(spoofer, own, to(own), &listener),
            "own {own} after spoofing"
        );
    }
    // The node's status shows the counter (its report is refreshed every second) and the
    // entries (2 pods x 2 families).
    let spoofed_now = counter(&lab.status_json().unwrap(), "n1", "spoofed");
    assert!(
        spoofed_now >= 3 * (2 + node_addrs.len() as u64),
        "{spoofed_now}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status: serde_json::Value = serde_json::from_str(
            &lab.exec("n1", &["meshctl", "status", "-o", "json"])
                .unwrap(),
        )
        .unwrap();
        let shown = status["datapath"]["counters"]["spoofed"].as_u64().unwrap();
        if shown >= spoofed_now {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "n1's status shows spoofed {shown} < {spoofed_now}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let dp = &status["datapath"];
    assert_eq!(dp["counters"]["policy_denied_egress"], 0, "{status:#}");
    assert_eq!(dp["counters"]["policy_denied_ingress"], 0, "{status:#}");
    assert_eq!(dp["pod_sources"], 4, "{status:#}");
    let table = lab.exec("n1", &["meshctl", "status"]).unwrap();
    assert!(table.contains("spoofed"), "{table}");

    // Control: with a source entry for the stolen address the path delivers it, as it did
    // before source validation. The daemon's backstop takes the stale entry away again, and
    // puts back a pod's entry that went missing (as for pods older than source validation).
    let pin_dir = PathBuf::from(lab_node(&raw, "n1")["bpf_pin_dir"].as_str().unwrap());
    let mut dp = Datapath::adopt(&pin_dir).unwrap();
    let ifindex = host_ifindex(spoofer);
    let stale = PodSource { ifindex, addr: n4 };
    let own = PodSource {
        ifindex,
        addr: own6,
    };
    dp.add_source(stale).unwrap();
    assert!(
        delivered(spoofer, n4, d4, &listener),
        "with an entry for {n4} the spoofed packet is not delivered: the control failed"
    );
    dp.remove_source(own).unwrap();
    assert!(
        !delivered(spoofer, own6, d6, &listener),
        "{own6} delivered without its entry"
    );
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let sources = dp.sources().unwrap();
        if !sources.contains(&stale) && sources.contains(&own) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backstop did not fix the source map: {sources:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !delivered(spoofer, n4, d4, &listener),
        "{n4} delivered after the backstop"
    );
    assert!(
        delivered(spoofer, own6, d6, &listener),
        "{own6} not delivered after the backstop"
    );
}
