//! `meshctl graph` and `meshctl lab graph`: the mesh as a graph (`meshd::flows::graph`) from
//! this node's status or every lab node's, printed as DOT or rendered to SVG: by Graphviz's
//! `dot` when it is installed, else by the `layout-rs` crate.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{anyhow, bail, Context as _};
use meshd::control::{self, StatusReport};
use meshd::flows::graph::mesh_dot;

use crate::cli::{GraphArgs, GraphOutput};

/// `meshctl graph`: this node and its peers.
pub(crate) fn run_node(args: &GraphArgs, socket: &Path) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(control::query(socket))?;
    print(args, &[report])
}

/// `meshctl lab graph`: every lab node that answers.
pub(crate) fn run_lab(name: &str, args: &GraphArgs) -> anyhow::Result<ExitCode> {
    let status = meshd_lab::status(name)?;
    let mut reports: Vec<StatusReport> = Vec::new();
    for node in status.nodes {
        match node.status {
            Some(s) => reports.push(s),
            None => eprintln!(
                "meshctl: {}: meshd is not answering, drawn from its peers' view",
                node.name
            ),
        }
    }
    print(args, &reports)
}

fn print(args: &GraphArgs, reports: &[StatusReport]) -> anyhow::Result<ExitCode> {
    let dot = mesh_dot(reports);
    let text = match args.output {
        GraphOutput::Dot => dot,
        GraphOutput::Svg => to_svg(&dot)?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// SVG of a DOT graph: Graphviz's `dot` when it is on the PATH, else `layout-rs`.
fn to_svg(dot: &str) -> anyhow::Result<String> {
    match graphviz_svg(dot) {
        Some(svg) => svg,
        None => layout_svg(dot),
    }
}

/// `dot -Tsvg`, or `None` when `dot` is not installed.
fn graphviz_svg(dot: &str) -> Option<anyhow::Result<String>> {
    let mut child = match Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(anyhow!(e).context("running dot"))),
    };
    Some((|| {
        child
            .stdin
            .take()
            .context("dot's stdin")?
            .write_all(dot.as_bytes())
            .context("writing to dot")?;
        let out = child.wait_with_output().context("running dot")?;
        if !out.status.success() {
            bail!(
                "dot -Tsvg failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8(out.stdout).context("dot's SVG is not UTF-8")
    })())
}

/// The SVG of a mesh with no node.
const EMPTY_SVG: &str =
    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"0\" height=\"0\"></svg>\n";

/// SVG laid out by the `layout-rs` crate.
pub(crate) fn layout_svg(dot: &str) -> anyhow::Result<String> {
    let mut parser = layout::gv::DotParser::new(dot);
    let graph = parser
        .process()
        .map_err(|e| anyhow!("the graph's DOT does not parse: {e}"))?;
    let mut builder = layout::gv::GraphBuilder::new();
    builder.visit_graph(&graph);
    let mut visual = builder.get();
    if visual.num_nodes() == 0 {
        // layout-rs cannot lay out an empty graph (it panics): an empty picture.
        return Ok(EMPTY_SVG.to_string());
    }
    let mut svg = layout::backends::svg::SVGWriter::new();
    visual.do_it(false, false, false, &mut svg);
    Ok(svg.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_rs_parses_and_renders_the_mesh_dot() {
        let mut report: StatusReport = serde_json::from_value(serde_json::json!({
            "node": "n1", "public_key": "k", "mode": "kernel", "interface": "meshd0",
            "ifindex": 3, "adopted_device": false, "listen_port": 51820, "mtu": 1420,
            "endpoints": ["198.18.0.11"], "pod_cidrs": ["10.244.1.0/24"], "known_nodes": [],
            "peers": [], "conflicts": [], "malformed": [],
            "counters": serde_json::to_value(control::Counters::default()).expect("json"),
            "converged": true,
        }))
        .expect("a status");
        for (name, ago) in [("n2", Some(3)), ("n3", Some(900)), ("n4", None)] {
            report.peers.push(control::PeerReport {
                name: Some(name.into()),
                public_key: format!("key-{name}"),
                endpoint: Some("198.18.0.12:51820".into()),
                allowed_ips: vec!["10.244.2.0/24".into()],
                last_handshake_unix: None,
                last_handshake_secs_ago: ago,
                rx_bytes: 4096,
                tx_bytes: 10,
            });
        }
        let svg = layout_svg(&mesh_dot(&[report])).expect("svg");
        assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "n1",
            "n2",
            "n3",
            "n4",
            "handshake 3s ago",
            "no handshake yet",
        ] {
            assert!(svg.contains(text), "{text} in the SVG");
        }
        // Stale and never-handshook tunnels are dashed; the healthy one is not.
        assert!(svg.contains("stroke-dasharray"), "dashed edges");
    }

    #[test]
    fn an_empty_mesh_renders() {
        let svg = layout_svg(&mesh_dot(&[])).expect("svg");
        assert!(svg.contains("</svg>"));
    }
}
