//! The daemon's policy loop in the lab (directory registry): Pod and Namespace objects written
//! under the registry directory (contract 5) for the lab's real pods (made by `meshd-cni` ADD)
//! make each pod an endpoint of its own node (its address owned in that node's IPAM store, its
//! host veth found), known to every node; a malformed NetworkPolicy file is refused alone,
//! named in every node's status, while a good one next to it is taken. A hostile endpoint batch
//! (a node claiming another node's pod address and another node's pod) is refused on the node
//! that reads it, where it claimed nothing. Needs root; each lab is uniquely named and torn down
//! on drop.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use integration::lab::{self, Lab};
use serde_json::{json, Value};

/// Writes `value` as the contract says: a dotfile in the same directory, then a rename.
fn write_object(path: &Path, value: &Value) {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, serde_json::to_vec(value).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The lab pod on node `node`.
fn st_pods(pods: &[integration::LabPod], node: &str) -> integration::LabPod {
    pods.iter().find(|p| p.node == node).unwrap().clone()
}

fn policies(node: &Value) -> &Value {
    &node["status"]["policy"]
}

#[test]
fn lab_pods_written_as_objects_become_endpoints_of_their_nodes() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    let st = lab.status().unwrap();
    let st_before = st.pods.clone();
    let js = lab.status_json().unwrap();
    let objects = Path::new(js["registry_dir"].as_str().unwrap()).join("objects");
    write_object(
        &objects.join("namespaces/x.json"),
        &json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "x"}}}),
    );
    for pod in &st.pods {
        write_object(
            &objects.join(format!("pods/x/{}.json", pod.name)),
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": "x", "labels": {"pod": pod.name}},
                "spec": {"nodeName": pod.node, "containers": [{"name": "c", "image": "x",
                    "ports": [{"name": "serve-80", "containerPort": 80}]}]},
                "status": {"phase": "Running", "podIP": pod.ipv4,
                    "podIPs": [{"ip": pod.ipv4}, {"ip": pod.ipv6}]}}),
        );
    }
    let pods = st.pods.len();
    lab.wait_for(
        "every node to know every pod and its own pod as an endpoint",
        Duration::from_secs(20),
        |s| {
            s["nodes"].as_array().unwrap().iter().all(|n| {
                let p = policies(n);
                p["source"] == "directory"
                    && p["synced"] == true
                    && p["pods_known"] == pods
                    && p["namespaces"] == 1
                    && p["local_endpoints"] == 1
            })
        },
    )
    .unwrap();

    // A policy with a protocol the API does not have, next to a good one.
    let bad = objects.join("networkpolicies/x/bad.json");
    write_object(
        &bad,
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "bad", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}}),
    );
    write_object(
        &objects.join("networkpolicies/x/deny.json"),
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    let st = lab
        .wait_for(
            "the good policy taken and the bad one refused on every node",
            Duration::from_secs(20),
            |s| {
                s["nodes"].as_array().unwrap().iter().all(|n| {
                    let p = policies(n);
                    p["policies"] == 1 && p["malformed"].as_array().is_some_and(|m| m.len() == 1)
                })
            },
        )
        .unwrap();
    for n in st["nodes"].as_array().unwrap() {
        let refused = &policies(n)["malformed"][0];
        assert_eq!(refused["object"], "NetworkPolicy x/bad", "{n:#}");
        let error = refused["error"].as_str().unwrap();
        assert!(
            error.contains(&bad.display().to_string())
                && error.contains("spec.ingress[0].ports[0].protocol"),
            "{error}"
        );
        assert!(policies(n)["malformed_total"].as_u64().unwrap() >= 1);
    }

    // n2's batch rewritten by someone else: a pod with n1's pod's address, and n1's pod under
    // n2's name with an address of n2's own. n1 refuses both claims (the address alone, the
    // pod until n1 lets go of it); n2 ignores its own batch in the watch.
    let on = |node: &str| st_pods(&st_before, node);
    let (a1, a2) = (on("n1"), on("n2"));
    let a1_v4 = a1.ipv4.clone().unwrap();
    let n2_v4: std::net::Ipv4Addr = a2.ipv4.as_deref().unwrap().parse().unwrap();
    let spare = std::net::Ipv4Addr::from(u32::from(n2_v4) + 77);
    write_object(
        &objects.join("endpoints/n2.json"),
        &json!({"v": 1, "node": "n2", "labels": [{"pod": "evil"}], "pods": [
            {"ns": "x", "name": "evil", "l": 0, "ips": [a1_v4]},
            {"ns": "x", "name": a1.name, "l": 0, "ips": [spare.to_string()]},
        ]}),
    );
    let st = lab
        .wait_for(
            "n1 to refuse n2's hostile batch",
            Duration::from_secs(20),
            |s| {
                let n1 = s["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["name"] == "n1");
                n1.is_some_and(|n| {
                    policies(n)["malformed"]
                        .as_array()
                        .is_some_and(|m| m.len() == 3)
                })
            },
        )
        .unwrap();
    for n in st["nodes"].as_array().unwrap() {
        let malformed = policies(n)["malformed"].as_array().unwrap();
        if n["name"] != "n1" {
            assert_eq!(malformed.len(), 1, "n2 ignores its own batch: {n:#}");
            continue;
        }
        let batch: Vec<&str> = malformed
            .iter()
            .filter(|m| m["object"] == "endpoint batch of node n2")
            .map(|m| m["error"].as_str().unwrap())
            .collect();
        assert_eq!(batch.len(), 2, "{malformed:#?}");
        assert!(
            batch
                .iter()
                .any(|e| e.contains(&a1_v4) && e.contains("outside")),
            "{batch:?}"
        );
        assert!(
            batch.iter().any(|e| e.contains("held by node \"n1\"")),
            "{batch:?}"
        );
        // n1's pod stays n1's endpoint; n2's batch now holds only "evil", left without an
        // address (n2's real pod went with the batch that was overwritten).
        assert_eq!(policies(n)["local_endpoints"], 1, "{n:#}");
        assert_eq!(policies(n)["pods_known"], 2, "{n:#}");
    }

    // Removing the pod objects: no pod known, no endpoint left (n2 publishes its batch again:
    // its own pods changed).
    std::fs::remove_dir_all(objects.join("pods/x")).unwrap();
    lab.wait_for(
        "the pods gone from every node",
        Duration::from_secs(20),
        |s| {
            s["nodes"].as_array().unwrap().iter().all(|n| {
                let p = policies(n);
                p["pods_known"] == 0 && p["local_endpoints"] == 0
            })
        },
    )
    .unwrap();
}
