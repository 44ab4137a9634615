//! Hostile node records in a running lab (issue 19, record trust): records claiming the whole
//! address space, a loopback endpoint, or an established node's pod CIDR are refused on every
//! node, the refusals show in the status, the honest pods keep reaching each other across
//! nodes throughout (also across a meshd restart), and removing the records changes nothing.
//! Needs root (namespaces); the lab is torn down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

use integration::lab::{self, peer_names, ping, pod_addrs, Lab};
use integration::labjson::LabStatus;

/// A record as a hostile writer would put it in the registry directory.
fn hostile(name: &str, key_byte: u8, endpoints: &[&str], cidrs: &[&str]) -> String {
    // Any 32 non-zero bytes make a well-formed key.
    let key = base64::engine::general_purpose::STANDARD.encode([key_byte; 32]);
    serde_json::json!({
        "version": 1, "name": name, "publicKey": key, "listenPort": 51820,
        "endpoints": endpoints, "podCIDRs": cidrs,
    })
    .to_string()
}

/// Each node's programmed peers: name → allowed IPs, sorted.
fn peering(st: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let peers = n["status"]["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let mut ips: Vec<String> = p["allowed_ips"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|ip| ip.as_str().unwrap().to_string())
                        .collect();
                    ips.sort();
                    (p["name"].as_str().unwrap_or("?").to_string(), ips)
                })
                .collect();
            (n["name"].as_str().unwrap().to_string(), peers)
        })
        .collect()
}

/// Every node's refusals: node → refused node → field.
fn refusals(st: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, String>> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let refused = n["status"]["refused"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    (
                        r["node"].as_str().unwrap().to_string(),
                        r["field"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (n["name"].as_str().unwrap().to_string(), refused)
        })
        .collect()
}

/// Every pod reaches every pod on another node, over both families.
fn all_pods_reach_across_nodes(typed: &LabStatus, when: &str) {
    for from in &typed.pods {
        for to in typed.pods.iter().filter(|p| p.node != from.node) {
            let (a4, a6) = pod_addrs(to).unwrap();
            assert!(
                ping(from, &a4.to_string(), 2) && ping(from, &a6.to_string(), 2),
                "{when}: {} on {} cannot reach {} on {}",
                from.name,
                from.node,
                to.name,
                to.node
            );
        }
    }
}

const HOSTILE: [&str; 5] = ["evil", "evil6", "lo", "a-grab", "copycat"];

fn write_hostile_records(registry: &Path, n2_endpoint: &str) {
    let files = [
        (
            "evil",
            hostile("evil", 0x66, &["198.18.0.66"], &["0.0.0.0/0", "::/0"]),
        ),
        (
            "evil6",
            hostile("evil6", 0x67, &["fd00:198::67"], &["::/0"]),
        ),
        (
            "lo",
            hostile("lo", 0x68, &["127.0.0.1"], &["10.244.68.0/24"]),
        ),
        // n2's pod CIDR, under a name that sorts first: n2 is established, so it stays.
        (
            "a-grab",
            hostile("a-grab", 0x69, &["198.18.0.69"], &["10.244.2.0/24"]),
        ),
        // n2's address as its endpoint.
        (
            "copycat",
            hostile("copycat", 0x6a, &[n2_endpoint], &["10.244.70.0/24"]),
        ),
    ];
    for (name, body) in files {
        // Atomically, as a registry writer does: the watcher never reads half a record.
        let tmp = registry.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, registry.join(format!("{name}.json"))).unwrap();
    }
}

fn every_node_refuses_all(lab: &Lab, what: &str) -> serde_json::Value {
    lab.wait_for(what, Duration::from_secs(20), |s| {
        refusals(s)
            .values()
            .all(|r| HOSTILE.iter().all(|h| r.contains_key(*h)))
    })
    .unwrap()
}

#[test]
fn hostile_records_are_refused_and_the_honest_mesh_is_untouched() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(3, 1).unwrap();
    let raw = lab.status_json().unwrap();
    let registry = std::path::PathBuf::from(raw["registry_dir"].as_str().unwrap());
    let typed = lab.status().unwrap();
    let before = lab
        .wait_for(
            "every node to peer with both others",
            Duration::from_secs(20),
            |s| {
                ["n1", "n2", "n3"]
                    .iter()
                    .all(|n| peer_names(s, n).len() == 2)
            },
        )
        .unwrap();
    let honest = peering(&before);
    all_pods_reach_across_nodes(&typed, "before");
    let n2_endpoint = before["nodes"][1]["status"]["endpoints"][0]
        .as_str()
        .unwrap()
        .to_string();

    write_hostile_records(&registry, &n2_endpoint);
    let st = every_node_refuses_all(&lab, "every node to refuse every hostile record");
    for (node, refused) in refusals(&st) {
        assert_eq!(refused["evil"], "podCIDRs", "{node}: {refused:?}");
        assert_eq!(refused["evil6"], "podCIDRs", "{node}: {refused:?}");
        assert_eq!(refused["lo"], "endpoints", "{node}: {refused:?}");
        assert_eq!(refused["a-grab"], "podCIDRs", "{node}: {refused:?}");
        assert_eq!(refused["copycat"], "endpoints", "{node}: {refused:?}");
    }
    // The refusal names the node, the field and why; the established holder is named.
    let n1_refused = st["nodes"][0]["status"]["refused"].to_string();
    assert!(n1_refused.contains("0.0.0.0/0"), "{n1_refused}");
    assert!(
        n1_refused.contains("127.0.0.1") && n1_refused.contains("loopback"),
        "{n1_refused}"
    );
    assert!(n1_refused.contains(r#""holder":"n2""#), "{n1_refused}");
    // Also listed with the conflicts, as text, for older readers.
    let conflicts = st["nodes"][0]["status"]["conflicts"].to_string();
    assert!(
        conflicts.contains("evil") && conflicts.contains("a-grab"),
        "{conflicts}"
    );
    // Nothing the honest nodes program changed, and no hostile CIDR is steered or guarded.
    assert_eq!(peering(&st), honest);
    for n in st["nodes"].as_array().unwrap() {
        let dp = n["status"]["datapath"].to_string();
        assert!(
            !dp.contains("0.0.0.0/0") && !dp.contains("\"::/0\"") && !dp.contains("10.244.68.0/24"),
            "{}: {dp}",
            n["name"]
        );
    }
    all_pods_reach_across_nodes(&typed, "with the hostile records");

    // A restarted meshd remembers who held n2's CIDR first.
    lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    let st = lab
        .wait_for(
            "n1's restarted meshd to converge and refuse the same records",
            Duration::from_secs(30),
            |s| {
                s["nodes"][0]["status"]["converged"] == true
                    && HOSTILE.iter().all(|h| refusals(s)["n1"].contains_key(*h))
            },
        )
        .unwrap();
    assert_eq!(peering(&st), honest);
    all_pods_reach_across_nodes(&typed, "after n1's restart");

    // Removing the records: the refusals go, and nothing else changes.
    for h in HOSTILE {
        std::fs::remove_file(registry.join(format!("{h}.json"))).unwrap();
    }
    let st = lab
        .wait_for("the refusals to clear", Duration::from_secs(20), |s| {
            refusals(s).values().all(BTreeMap::is_empty)
        })
        .unwrap();
    assert_eq!(peering(&st), honest);
    all_pods_reach_across_nodes(&typed, "after the hostile records went");
}
