//! Map capacity in a running lab (issue 20): every meshd is started with a deliberately small
//! `--max-nodes 3` (per-node maps of 3 × 4 pod CIDRs per family), then 20 more well-formed
//! records are written into the directory registry. Each node keeps its established peer,
//! takes newcomers up to the maps' room (by name) and refuses only the rest, reported as
//! `refused` with field `capacity`; passes keep converging (no "No space left on device"), the
//! CNI configuration stays, and the pods keep reaching each other across nodes.
//! Needs root (namespaces); the lab is torn down on drop. The simulated nodes' endpoints are
//! never reached (no handshake): they only fill the maps.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use base64::Engine as _;

use integration::lab::{self, peer_names, ping, pod_addrs, Lab};

/// A simulated node's record: dual-stack pod CIDRs inside the lab's pools.
fn simulated(i: u32) -> String {
    let key = base64::engine::general_purpose::STANDARD.encode([0x40 + i as u8; 32]);
    serde_json::json!({
        "version": 1, "name": format!("sim{i:02}"), "publicKey": key, "listenPort": 51820,
        "endpoints": [format!("198.18.100.{}", i + 1)],
        "podCIDRs": [format!("10.244.{}.0/24", 100 + i), format!("fd00:244:0:{:x}::/64", 100 + i)],
    })
    .to_string()
}

fn refused_for_capacity(st: &serde_json::Value, node: usize) -> Vec<String> {
    st["nodes"][node]["status"]["refused"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| r["field"] == "capacity")
        .map(|r| r["node"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_full_map_refuses_only_the_newcomers_that_do_not_fit() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up_with(2, 1, &["--max-nodes", "3"]).unwrap();
    let raw = lab.status_json().unwrap();
    let registry = std::path::PathBuf::from(raw["registry_dir"].as_str().unwrap());
    lab.wait_for("n1 and n2 to peer", Duration::from_secs(20), |s| {
        peer_names(s, "n1") == ["n2"] && peer_names(s, "n2") == ["n1"]
    })
    .unwrap();
    let errors_before: Vec<u64> = (0..2)
        .map(|n| {
            raw["nodes"][n]["status"]["counters"]["reconcile_errors"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();

    for i in 0..20 {
        let tmp = registry.join(format!(".sim{i:02}.tmp"));
        std::fs::write(&tmp, simulated(i)).unwrap();
        std::fs::rename(&tmp, registry.join(format!("sim{i:02}.json"))).unwrap();
    }
    // Room for 12 pod CIDRs per family (the configured cluster CIDRs have their own slack):
    // the established peer and the first 11 newcomers by name; the other 9 are refused.
    let st = lab
        .wait_for(
            "both nodes to fill their maps",
            Duration::from_secs(30),
            |s| (0..2).all(|n| refused_for_capacity(s, n).len() == 9),
        )
        .unwrap();
    let expected: Vec<String> = (11..20).map(|i| format!("sim{i:02}")).collect();
    for (n, other) in [(0usize, "n2"), (1, "n1")] {
        let name = format!("n{}", n + 1);
        assert_eq!(refused_for_capacity(&st, n), expected, "{name}");
        let peers = peer_names(&st, &name);
        assert_eq!(peers.len(), 12, "{name}: {peers:?}");
        assert!(
            peers.iter().any(|p| p == other),
            "{name} lost its established peer"
        );
        let reason = st["nodes"][n]["status"]["refused"].to_string();
        assert!(reason.contains("--max-nodes"), "{reason}");
    }

    // Passes keep converging and the node keeps taking pods, well past --cni-unready-after.
    std::thread::sleep(Duration::from_secs(12));
    let st = lab.status_json().unwrap();
    for n in 0..2 {
        let status = &st["nodes"][n]["status"];
        assert_eq!(status["converged"], true, "n{}: {status}", n + 1);
        assert_eq!(
            status["counters"]["reconcile_errors"].as_u64().unwrap_or(0),
            errors_before[n],
            "n{}: a pass failed",
            n + 1
        );
        let conflist = std::path::Path::new("/run/meshd-lab")
            .join(lab.name())
            .join(format!("n{}", n + 1))
            .join("cni/10-meshd.conflist");
        assert!(conflist.exists(), "{} was withdrawn", conflist.display());
    }
    let typed = lab.status().unwrap();
    for from in &typed.pods {
        for to in typed.pods.iter().filter(|p| p.node != from.node) {
            let (a4, a6) = pod_addrs(to).unwrap();
            assert!(
                ping(from, &a4.to_string(), 2) && ping(from, &a6.to_string(), 2),
                "{} cannot reach {} with full maps",
                from.name,
                to.name
            );
        }
    }

    // Records going away make room: the refused newcomers are taken in.
    for i in 0..9 {
        std::fs::remove_file(registry.join(format!("sim{i:02}.json"))).unwrap();
    }
    lab.wait_for(
        "the refused newcomers to be taken in",
        Duration::from_secs(30),
        |s| (0..2).all(|n| refused_for_capacity(s, n).is_empty()),
    )
    .unwrap();
}
