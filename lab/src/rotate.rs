//! `lab rotate-key`: rotate the keys of several nodes at once, each through `meshctl rotate-key`
//! run inside the node against its own control socket.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::Context as _;

use crate::node_root::chroot_command;
use crate::nodes::node_index;
use crate::plan::*;
use crate::state::{load_state, Paths};
use meshd::control::RotateOutcome;

/// Rotate the keys of `nodes` (all when empty) at once, each through its own control socket;
/// the outcome per node.
pub fn rotate_keys(lab: &str, nodes: &[String]) -> anyhow::Result<BTreeMap<String, RotateOutcome>> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let chosen: Vec<u32> = if nodes.is_empty() {
        state.nodes.iter().map(|n| n.index).collect()
    } else {
        nodes
            .iter()
            .map(|n| node_index(&state, n))
            .collect::<anyhow::Result<_>>()?
    };
    // The node's meshctl: this one, or the image's with a node root.
    let meshctl = match &state.node_root {
        Some(root) => chroot_command(root, "meshctl"),
        None => vec![std::env::current_exe()
            .context("locating meshctl")?
            .into_os_string()],
    };
    let handles: Vec<_> = chosen
        .into_iter()
        .map(|i| {
            let paths = Paths::new(lab);
            let ns = node_ns(lab, i);
            let meshctl = meshctl.clone();
            std::thread::spawn(move || -> anyhow::Result<(String, RotateOutcome)> {
                let out = Command::new("nsenter")
                    .arg(format!("--mount={}", paths.mnt(i).display()))
                    .arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .args(&meshctl)
                    .args(["rotate-key", "-o", "json"])
                    .stdin(Stdio::null())
                    .output()
                    .context("running meshctl rotate-key in the node")?;
                let text = String::from_utf8_lossy(&out.stdout);
                let outcome = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "node {}: no outcome from meshd: {}",
                        node_name(i),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                })?;
                Ok((node_name(i), outcome))
            })
        })
        .collect();
    let mut out = BTreeMap::new();
    for h in handles {
        let (node, outcome) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a rotation thread panicked"))??;
        out.insert(node, outcome);
    }
    Ok(out)
}
