//! The Grafana dashboard in `deploy/dashboards/`: it parses, its panels cover what issue 22
//! asks for, every PromQL query names only metrics meshd exports (read from meshd's own
//! metrics rendering), and its kustomize component renders a ConfigMap Grafana's sidecar picks
//! up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .expect("deploy/")
}

fn dashboard_text() -> String {
    std::fs::read_to_string(deploy_dir().join("dashboards/meshd.json")).expect("meshd.json")
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&dashboard_text()).expect("the dashboard is JSON")
}

/// The sample names meshd's `/metrics` can carry: every family's `# TYPE` line, expanded the
/// way the text format names samples (`_total` for counters, `_bucket`/`_sum`/`_count` for
/// histograms).
fn exported_names() -> BTreeSet<String> {
    let text = meshd::metrics::Metrics::new().render(None);
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    assert!(
        names.contains("meshd_peers") && names.contains("meshd_reconcile_duration_seconds_bucket"),
        "meshd's families were read: {names:?}"
    );
    names
}

/// Metric names in a PromQL expression: every identifier starting `meshd_` outside string
/// literals (label names and functions never start so).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut outside = String::new();
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => {
                quote = Some(c);
                outside.push(' ');
            }
            None => outside.push(c),
        }
    }
    for word in outside.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with("meshd_") {
            names.insert(word.to_string());
        }
    }
    names
}

/// Every query of the dashboard: panel targets (rows' nested panels too) and template variables.
fn queries(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(nested) = p["panels"].as_array() {
            panels.extend(nested);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a PromQL target");
            out.push((
                p["title"].as_str().unwrap_or("?").to_string(),
                expr.to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("a variable query");
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

#[test]
fn every_query_names_only_metrics_meshd_exports() {
    let exported = exported_names();
    let d = dashboard();
    let queries = queries(&d);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut unknown = Vec::new();
    for (panel, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{panel}: {expr} queries no meshd metric");
        for n in names {
            if !exported.contains(&n) {
                unknown.push(format!("{panel}: {n}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics meshd does not export:\n  {}\nexported: {exported:?}",
        unknown.join("\n  ")
    );
}

#[test]
fn the_panels_cover_flows_and_the_existing_metrics() {
    let d = dashboard();
    let used: BTreeSet<String> = queries(&d)
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    for name in [
        // Flows (issue 22).
        "meshd_flow_drops_total",
        "meshd_flow_forwarded_packets_total",
        "meshd_flow_forwarded_bytes_total",
        "meshd_flows_total",
        "meshd_flow_events_lost_total",
        // The mesh and the daemon.
        "meshd_peers",
        "meshd_peer_last_handshake_age_seconds",
        "meshd_reconcile_duration_seconds_bucket",
        "meshd_datapath_verdicts_total",
    ] {
        assert!(used.contains(name), "no panel queries {name}");
    }
    let drops = queries(&d).into_iter().find(|(_, e)| {
        e.contains("meshd_flow_drops_total") && e.contains("by (reason, direction)")
    });
    assert!(drops.is_some(), "drops are shown by reason and direction");
}

#[test]
fn panels_are_well_formed_and_use_the_datasource_variable() {
    let d = dashboard();
    assert_eq!(d["uid"], "meshd-overview");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("a numeric id")),
            "ids are unique"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(
                p["gridPos"][key].is_u64(),
                "{} has gridPos.{key}",
                p["title"]
            );
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }
}

#[test]
fn the_promql_scanner_ignores_labels_strings_and_functions() {
    assert_eq!(
        metric_names(r#"sum by (reason) (rate(meshd_a_total{x="meshd_not"}[5m])) / meshd_b"#),
        ["meshd_a_total", "meshd_b"].map(String::from).into()
    );
}

#[test]
fn the_component_renders_a_configmap_for_grafanas_sidecar() {
    testkit::require_tool("kubectl");
    let deploy = deploy_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    // kustomize takes no absolute roots: point at deploy/ relatively.
    let up = dir
        .path()
        .canonicalize()
        .unwrap()
        .components()
        .count()
        .saturating_sub(1);
    let rel = format!(
        "{}{}",
        "../".repeat(up),
        deploy.display().to_string().trim_start_matches('/')
    );
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {rel}/overlays/encrypted\ncomponents:\n  - {rel}/dashboards\n"
        ),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir.path())
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let dashboards: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .filter(|v| v["kind"] == "ConfigMap" && v["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 1, "one dashboard ConfigMap");
    let cm = &dashboards[0];
    assert_eq!(cm["metadata"]["namespace"], "meshd-system");
    assert_eq!(
        cm["data"]["meshd.json"].as_str(),
        Some(dashboard_text().as_str())
    );
}
