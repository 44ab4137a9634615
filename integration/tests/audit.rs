//! `meshctl audit` against real labs: it passes a healthy mesh with per-pair evidence from an
//! underlay capture, and it fails — naming the node or pair — when something is wrong,
//! including evidence that catches a canary crossing in clear. Needs root.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;
use std::time::Duration;

use integration::lab::{self, bin, Lab};

/// Run `meshctl audit --lab NAME -o json [extra]`: (exit code, report).
fn audit(lab: &Lab, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(bin("meshctl"))
        .args(["audit", "--lab", lab.name(), "-o", "json"])
        .args(extra)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit output: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

fn failed(report: &serde_json::Value) -> Vec<(String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false)
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_string(),
                f["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn withdraw(lab: &Lab, node: &str) {
    lab.meshctl(&["lab", "kill-node", node]).unwrap();
    let st = lab.status_json().unwrap();
    let registry = st["registry_dir"].as_str().unwrap();
    std::fs::remove_file(format!("{registry}/{node}.json")).unwrap();
    lab.wait_for(
        "the others to drop the node",
        Duration::from_secs(20),
        |s| {
            s["nodes"][0]["peers"]
                .as_array()
                .is_some_and(|p| p.len() == 1)
        },
    )
    .unwrap();
}

#[test]
fn a_healthy_lab_passes_with_evidence_for_every_pair() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up(3, 1).unwrap();
    let (code, report) = audit(&lab, &["--evidence"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["verdict"], "pass");
    let evidence: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "evidence")
        .collect();
    assert_eq!(evidence.len(), 6, "one per ordered pair: {report:#}");
    assert!(evidence.iter().all(|f| f["ok"] == true), "{report:#}");
    // Every ordered pair's peer check is there.
    let peers = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "peer" && f["ok"] == true)
        .count();
    assert_eq!(peers, 6);
    // The table says the same.
    let out = Command::new(bin("meshctl"))
        .args(["audit", "--lab", lab.name()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: pass"));
}

#[test]
fn findings_name_the_node_or_pair_and_evidence_catches_a_canary_in_clear() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    let lab = Lab::up_with(3, 1, &["--encryption", "permissive"]).unwrap();
    let (code, report) = audit(&lab, &["--evidence"]);
    assert_eq!(code, 1, "{report:#}");
    let f = failed(&report);
    for n in ["n1", "n2", "n3"] {
        assert!(f.contains(&("encryption".into(), n.into())), "{f:?}");
    }
    assert!(
        !f.iter().any(|(c, _)| c == "evidence"),
        "all peers present: still encrypted: {f:?}"
    );

    // n3 leaves without its pods: permissive mode lets n1's canary to n3's pod out in clear,
    // and the evidence check sees it.
    withdraw(&lab, "n3");
    let (code, report) = audit(&lab, &["--evidence"]);
    assert_eq!(code, 1, "{report:#}");
    let f = failed(&report);
    for want in [
        ("status", "n3"),
        ("peer", "n1->n3"),
        ("evidence", "n1->n3"),
        ("evidence", "n2->n3"),
    ] {
        assert!(
            f.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing: {f:?}"
        );
    }
    let n1n3 = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["check"] == "evidence" && x["subject"] == "n1->n3")
        .unwrap();
    assert!(
        n1n3["seen"]
            .as_str()
            .unwrap()
            .contains("canary in clear: YES"),
        "{n1n3}"
    );
    assert!(!n1n3["fix"].as_str().unwrap().is_empty());

    // The canaries in clear were would-drops, and meshd noted when: an audit whose window
    // reaches back to them finds them, one whose window ends after them does not, and one
    // over all time does.
    let plaintext = |report: &serde_json::Value| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["check"] == "plaintext" && x["subject"] == "n1")
            .unwrap()
            .clone()
    };
    // (That audit read the statuses before it sent its canaries.)
    let st = lab
        .wait_for("n1 to note the would-drops", Duration::from_secs(10), |s| {
            s["nodes"][0]["status"]["cleartext"]["last_unix"].is_u64()
        })
        .unwrap();
    let (_, report) = audit(&lab, &[]);
    let p = plaintext(&report);
    assert_eq!(p["ok"], false, "{p}");
    assert!(p["seen"].as_str().unwrap().contains("s ago"), "{p}");
    let since = st["nodes"][0]["status"]["cleartext"]["watched_since_unix"].as_u64();
    assert!(since.is_some(), "{}", st["nodes"][0]["status"]["cleartext"]);
    std::thread::sleep(Duration::from_secs(4));
    let (_, later) = audit(&lab, &["--plaintext-window", "2s"]);
    assert_eq!(plaintext(&later)["ok"], true, "{}", plaintext(&later));
    let (_, ever) = audit(&lab, &["--plaintext-window", "0"]);
    assert_eq!(plaintext(&ever)["ok"], false, "{}", plaintext(&ever));
}
