//! `meshctl lab graph` on a live 3-node lab: every node, one healthy edge per tunnel with its
//! handshake and bytes each way, SVG as well as DOT, and a stopped node drawn from its peers'
//! view. Needs root (namespaces); the lab is unique and torn down on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use integration::lab::Lab;

/// `"a" -- "b" [...]` lines of a DOT graph.
fn edges(dot: &str) -> Vec<&str> {
    dot.lines().filter(|l| l.contains("\" -- \"")).collect()
}

#[test]
fn lab_graph_draws_every_node_and_tunnel() {
    testkit::require_root();
    testkit::require_tools(&["ip", "nsenter"]);
    let lab = Lab::up(3, 1).unwrap();
    // Every tunnel has handshaken (lab up pings between the nodes' first pods).
    lab.wait_for(
        "a handshake on every tunnel",
        Duration::from_secs(30),
        |st| {
            st["nodes"].as_array().unwrap().iter().all(|n| {
                let peers = n["peers"].as_array().unwrap();
                peers.len() == 2 && peers.iter().all(|p| p["last_handshake_secs_ago"].is_u64())
            })
        },
    )
    .unwrap();

    let out = lab.meshctl(&["lab", "graph"]).unwrap();
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(dot.starts_with("graph meshd {"), "{dot}");
    for node in ["n1", "n2", "n3"] {
        assert!(
            dot.lines().any(|l| l
                .trim_start()
                .starts_with(&format!("\"{node}\" [label=\"{node}\\n"))),
            "{node} is a node of the graph:\n{dot}"
        );
    }
    let tunnels = edges(&dot);
    assert_eq!(tunnels.len(), 3, "one edge per pair:\n{dot}");
    for edge in &tunnels {
        assert!(edge.contains("handshake "), "{edge}");
        assert!(edge.contains("s ago"), "{edge}");
        assert!(edge.contains(meshd::flows::graph::HEALTHY_COLOR), "{edge}");
        assert!(
            !edge.contains("→?") && !edge.contains(" ?\\n"),
            "bytes both ways: {edge}"
        );
    }

    let out = lab.meshctl(&["lab", "graph", "-o", "svg"]).unwrap();
    let svg = String::from_utf8(out.stdout).unwrap();
    assert!(
        svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    for node in ["n1", "n2", "n3"] {
        assert!(svg.contains(node), "{node} in the SVG");
    }

    // A stopped node still appears, from its peers' view, and is named on stderr.
    lab.meshctl(&["lab", "stop-node", "n3"]).unwrap();
    let out = lab.meshctl(&["lab", "graph"]).unwrap();
    let dot = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("n3: meshd is not answering"), "{stderr}");
    assert!(dot.contains("\"n3\" [label="), "{dot}");
    assert_eq!(
        edges(&dot).len(),
        3,
        "n3's tunnels as n1 and n2 see them:\n{dot}"
    );
}
