//! `cluster-pool` IPAM in the lab: every meshd claims its own pod CIDRs out of the cluster
//! pools through the registry; the claims are disjoint, pods get addresses from them and reach
//! each other only through WireGuard, and a restarted meshd keeps its claim. Needs root.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use integration::lab::{self, Lab};
use integration::verify::assert_reachable_only_encrypted;
use ipnet::IpNet;

#[test]
fn nodes_claim_disjoint_blocks_from_the_pool_and_keep_them_across_restarts() {
    claims(&["--ipam", "cluster-pool"]);
}

/// The same through Node annotations: the Nodes have no `spec.podCIDRs` (no controller
/// allocates them), so every meshd publishes its claim as `meshd.io/pod-cidrs`.
#[test]
fn on_the_kubernetes_backend_claims_travel_as_node_annotations() {
    claims(&["--ipam", "cluster-pool", "--registry", "kubernetes"]);
}

fn claims(extra: &[&str]) {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up_with(3, 2, extra).unwrap();
    let st = lab.status().unwrap();
    let pools: [IpNet; 2] = [
        "10.244.0.0/16".parse().unwrap(),
        "fd00:244::/48".parse().unwrap(),
    ];
    let mut all: Vec<IpNet> = Vec::new();
    for n in &st.nodes {
        let cidrs: Vec<IpNet> = n.pod_cidrs.iter().map(|c| c.parse().unwrap()).collect();
        assert_eq!(cidrs.len(), 2, "{}: {cidrs:?}", n.name);
        assert!(
            pools[0].contains(&cidrs[0]) && cidrs[0].prefix_len() == 24,
            "{cidrs:?}"
        );
        assert!(
            pools[1].contains(&cidrs[1]) && cidrs[1].prefix_len() == 64,
            "{cidrs:?}"
        );
        for c in &cidrs {
            assert!(
                !all.iter().any(|o| o.contains(c) || c.contains(o)),
                "{c} of {} overlaps another node's {all:?}",
                n.name
            );
        }
        all.extend(cidrs.iter().copied());
        for p in st.pods_on(&n.name) {
            let a4: std::net::IpAddr = p.ipv4.as_deref().unwrap().parse().unwrap();
            let a6: std::net::IpAddr = p.ipv6.as_deref().unwrap().parse().unwrap();
            assert!(cidrs[0].contains(&a4) && cidrs[1].contains(&a6), "{p:?}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    assert_reachable_only_encrypted(&st, dir.path(), "pool.pcap", 1 << 20);

    if extra.contains(&"kubernetes") {
        // The cluster audit reads the claims from the Node annotations and passes.
        let (code, report) = lab.audit_cluster().unwrap();
        assert_eq!(code, 0, "{report:#}");
        assert_eq!(report["nodes"], 3);
    }

    // A restarted meshd keeps its block (its pods' addresses stay valid).
    let before = st.node("n2").unwrap().pod_cidrs.clone();
    lab.meshctl(&["lab", "kill-node", "n2"]).unwrap();
    lab.meshctl(&["lab", "start-node", "n2"]).unwrap();
    let after = lab
        .wait_for("n2 to converge again", Duration::from_secs(20), |s| {
            s["nodes"][1]["status"]["converged"] == true
        })
        .unwrap();
    let cidrs: Vec<String> = after["nodes"][1]["status"]["pod_cidrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cidrs, before);
}
