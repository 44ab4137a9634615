//! `node-subnet` IPAM in the lab (`meshctl lab up --ipam node-subnet`): pods take addresses
//! from /28 and /124 blocks of the underlay subnet each meshd claims as its pods need. Pods
//! reach each other across nodes on both families only through WireGuard while the nodes'
//! own addresses in the same subnet keep talking in clear; a host of the subnet outside the
//! mesh gets no answer for a pod address; blocks are claimed as pods are added and given
//! back when they go; a removed node's blocks leave its peers. Needs root.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use integration::capture::{analyse, Capture};
use integration::lab::{self, Lab};
use integration::verify::assert_reachable_only_encrypted;
use ipnet::IpNet;

const RANGE_V4: &str = "198.18.0.0/24";
const RANGE_V6: &str = "fd00:198::1:0/112";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Node `name`'s blocks as its meshd reports them.
fn blocks_of(st: &serde_json::Value, name: &str) -> Vec<IpNet> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["status"]["pod_cidrs"].as_array())
        .map(|a| a.iter().map(|c| net(c.as_str().unwrap())).collect())
        .unwrap_or_default()
}

fn count_family(blocks: &[IpNet], v6: bool) -> usize {
    blocks
        .iter()
        .filter(|b| matches!(b, IpNet::V6(_)) == v6)
        .count()
}

/// Every allowed IP `node` programs for peer `peer`.
fn allowed_ips(st: &serde_json::Value, node: &str, peer: &str) -> Vec<String> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["peers"].as_array())
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == peer)
        .flat_map(|p| p["allowed_ips"].as_array().cloned().unwrap_or_default())
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn in_underlay(st: &serde_json::Value, cmd: &[&str]) -> bool {
    let ns = st["capture"]["namespace"].as_str().unwrap();
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn pods_in_the_node_subnet_are_reachable_only_encrypted_and_nodes_stay_in_clear() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up_with(3, 2, &["--ipam", "node-subnet"]).unwrap();
    let st = lab.status().unwrap();
    let raw = lab.status_json().unwrap();
    let ranges = [net(RANGE_V4), net(RANGE_V6)];
    let node_addrs = st.node_addrs();
    let mut all: Vec<IpNet> = Vec::new();
    for n in &st.nodes {
        let blocks = blocks_of(&raw, &n.name);
        assert_eq!(count_family(&blocks, false), 1, "{}: {blocks:?}", n.name);
        assert_eq!(count_family(&blocks, true), 1, "{}: {blocks:?}", n.name);
        for b in &blocks {
            assert!(
                ranges.iter().any(|r| r.contains(b)),
                "{b} outside {ranges:?}"
            );
            assert_eq!(b.max_prefix_len() - b.prefix_len(), 4, "{b}: blocks of 16");
            assert!(
                !node_addrs.iter().any(|a| b.contains(a)),
                "{b} holds a node address"
            );
            assert!(
                !all.iter().any(|o| o.contains(b) || b.contains(o)),
                "{b} overlaps {all:?}"
            );
        }
        all.extend(&blocks);
        for p in st.pods_on(&n.name) {
            let (a4, a6) = lab::pod_addrs(p).unwrap();
            assert!(
                blocks.iter().any(|b| b.contains(&a4)) && blocks.iter().any(|b| b.contains(&a6)),
                "{p:?} outside {blocks:?}"
            );
        }
    }
    // Pods across nodes, both families: reachable, and not one pod packet in clear.
    let dir = tempfile::tempdir().unwrap();
    assert_reachable_only_encrypted(&st, dir.path(), "node-subnet.pcap", 1 << 20);

    // The nodes' own addresses share the subnet with the pods and keep talking in clear.
    let n2 = st.node("n2").unwrap();
    let node_pcap = dir.path().join("nodes.pcap");
    let capture = Capture::start(&st.capture.namespace, &st.capture.interface, &node_pcap).unwrap();
    for dst in &n2.underlay_addresses {
        let out = lab
            .exec(
                "n1",
                &["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", dst],
            )
            .unwrap();
        assert!(out.contains(" 0% packet loss"), "n1 -> {dst}: {out}");
    }
    let file = capture.stop().unwrap();
    let nodes_report = analyse(&file, &st.capture_policy()).unwrap();
    assert!(nodes_report.is_clean(), "{}", nodes_report.summary());
    let n1 = st.node("n1").unwrap();
    for (src, dst) in n1.underlay_addresses.iter().zip(&n2.underlay_addresses) {
        let echo = format!("{src} → {dst} ICMP");
        assert!(
            nodes_report
                .non_wireguard_ip
                .iter()
                .any(|d| d.contains(&echo)),
            "n1's ping to n2 ({echo}) should cross the underlay in clear: {:?}",
            nodes_report.non_wireguard_ip
        );
    }

    // A host of the subnet outside the mesh (the lab's router) addressing a pod: no node
    // answers ARP or neighbour solicitation for it, so the pod is unreachable from there.
    let pod = st.pods_on("n2").next().unwrap();
    let (p4, p6) = lab::pod_addrs(pod).unwrap();
    for dst in [p4, p6] {
        let d = dst.to_string();
        assert!(
            !in_underlay(&raw, &["ping", "-n", "-c", "1", "-W", "1", &d]),
            "the router reached pod address {d} in clear"
        );
        let neigh = Command::new("ip")
            .args(["-n", &st.capture.namespace, "neigh", "show", &d])
            .output()
            .unwrap();
        let neigh = String::from_utf8_lossy(&neigh.stdout);
        assert!(
            !neigh.contains("lladdr"),
            "a node answered address resolution for pod address {d}: {neigh}"
        );
    }
}

/// The same through Node annotations: each meshd publishes its blocks as `meshd.io/pod-cidrs`
/// (the Nodes' `spec.podCIDRs` are not used), the peers program them, and pods reach each
/// other encrypted.
#[test]
fn on_the_kubernetes_backend_blocks_travel_as_node_annotations() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up_with(2, 1, &["--ipam", "node-subnet", "--registry", "kubernetes"]).unwrap();
    let st = lab.status().unwrap();
    let raw = lab.status_json().unwrap();
    for (node, peer) in [("n1", "n2"), ("n2", "n1")] {
        let blocks = blocks_of(&raw, peer);
        assert_eq!(blocks.len(), 2, "{peer}: {blocks:?}");
        let allowed = allowed_ips(&raw, node, peer);
        for b in &blocks {
            assert!(
                allowed.contains(&b.to_string()),
                "{node} lacks {b}: {allowed:?}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    assert_reachable_only_encrypted(&st, dir.path(), "kube.pcap", 1 << 18);
}

fn pods_yaml(from: u32, to: u32) -> String {
    (from..=to)
        .map(|k| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: extra-{k}, namespace: default}}\n\
                 spec:\n  nodeName: n1\n  containers:\n  - name: c\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn blocks_are_claimed_as_pods_come_released_when_they_go_and_leave_with_their_node() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up_with(3, 1, &["--ipam", "node-subnet"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let apply = |from: u32, to: u32| {
        let file = dir.path().join(format!("pods-{from}-{to}.yaml"));
        std::fs::write(&file, pods_yaml(from, to)).unwrap();
        lab.meshctl(&["lab", "apply", "-f", file.to_str().unwrap()])
            .unwrap();
        file
    };
    // One pod and 8 more: 9 of a /28's 13 addresses, 4 left (the headroom): one block.
    let first = apply(1, 8);
    let st = lab.status_json().unwrap();
    let before = blocks_of(&st, "n1");
    assert_eq!(count_family(&before, false), 1, "{before:?}");
    // The 10th pod leaves 3 free: n1 claims a second block of each family, and its peers
    // program it (one more allowed IP of n1's peer entry).
    let second = apply(9, 9);
    let st = lab
        .wait_for("n1 to claim a second block", Duration::from_secs(20), |s| {
            let b = blocks_of(s, "n1");
            count_family(&b, false) == 2
                && count_family(&b, true) == 2
                && b.iter()
                    .all(|x| allowed_ips(s, "n2", "n1").contains(&x.to_string()))
        })
        .unwrap();
    let grown = blocks_of(&st, "n1");
    let new_v4 = *grown
        .iter()
        .find(|b| !before.contains(b) && b.addr().is_ipv4())
        .unwrap();
    // Five more pods: 15 in all, more than one block holds. The last ones get addresses in the
    // new block, reachable from n2's pod through the tunnel.
    let third = apply(10, 14);
    let state_dir = st["nodes"][0]["state_dir"].as_str().unwrap().to_string();
    let store: Vec<IpAddr> = std::fs::read_dir(format!("{state_dir}/ipam"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    let in_new: Vec<&IpAddr> = store.iter().filter(|a| new_v4.contains(*a)).collect();
    assert!(!in_new.is_empty(), "no pod in {new_v4}: {store:?}");
    let status = lab.status().unwrap();
    let from = status.pods_on("n2").next().unwrap();
    // The applied pods answer pings (their namespace exists; the kernel answers).
    assert!(
        lab::ping(from, &in_new[0].to_string(), 2),
        "n2's pod cannot reach {} in n1's new block",
        in_new[0]
    );
    // Every extra pod goes: after the grace period n1 is back to one block of each family,
    // and its peers drop the released ones.
    for file in [&third, &second, &first] {
        lab.meshctl(&["lab", "delete", "-f", file.to_str().unwrap()])
            .unwrap();
    }
    let st = lab
        .wait_for(
            "n1 to release its empty blocks",
            Duration::from_secs(40),
            |s| {
                let b = blocks_of(s, "n1");
                count_family(&b, false) == 1
                    && count_family(&b, true) == 1
                    && !allowed_ips(s, "n2", "n1").contains(&new_v4.to_string())
            },
        )
        .unwrap();
    let left = blocks_of(&st, "n1");
    let pod = lab.status().unwrap();
    let (a4, _) = lab::pod_addrs(pod.pods_on("n1").next().unwrap()).unwrap();
    assert!(
        left.iter().any(|b| b.contains(&a4)),
        "the block in use stays: {left:?}"
    );

    // A node's removal: its blocks leave every peer's allowed IPs and routes.
    let n3 = blocks_of(&st, "n3");
    assert!(!n3.is_empty());
    lab.meshctl(&["lab", "remove-node", "n3"]).unwrap();
    lab.wait_for("n3 to leave n1's peers", Duration::from_secs(20), |s| {
        allowed_ips(s, "n1", "n3").is_empty()
    })
    .unwrap();
    let routes = lab.exec("n1", &["ip", "route", "show"]).unwrap()
        + &lab.exec("n1", &["ip", "-6", "route", "show"]).unwrap();
    for b in &n3 {
        assert!(
            !routes.contains(&b.to_string()),
            "n1 still routes n3's block {b}: {routes}"
        );
    }
}
