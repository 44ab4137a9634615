//! `meshctl lab …`: the local multi-node lab (crate `meshd-lab`).

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};

use meshd_lab as lab;

use crate::cli::{LabCmd, Output};

/// Run one lab command.
pub(crate) fn run(command: LabCmd) -> anyhow::Result<ExitCode> {
    match command {
        LabCmd::Up {
            name,
            nodes,
            pods_per_node,
            wireguard_mode,
            node_modes,
            encryption,
            strict_mode,
            pod_steering,
            registry,
            apiserver,
            ipam,
            host_encryption,
            keepalive,
            key_rotation_interval,
            rotation_silence,
            guard_cluster_cidrs,
            max_nodes,
        } => lab::up(&lab::UpOptions {
            name,
            nodes,
            pods_per_node,
            wireguard_mode,
            node_modes,
            encryption,
            strict_mode,
            pod_steering,
            registry,
            apiserver,
            ipam,
            host_encryption,
            keepalive,
            key_rotation_interval,
            rotation_silence,
            guard_cluster_cidrs,
            max_nodes,
        })?,
        LabCmd::Set { name, pairs } => lab::set(&name, &pairs)?,
        LabCmd::Down { name } => lab::down(&name)?,
        LabCmd::Status { name, output, all } => match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&lab::status(&name)?)?),
            Output::Table => lab::print_status_table_listing(&name, all)?,
        },
        LabCmd::Observe { name, args } => return crate::lab_observe::run(&name, &args),
        LabCmd::Graph { name, args } => return crate::graph::run_lab(&name, &args),
        LabCmd::AddNode { name, pods } => {
            let node = lab::add_node(&name, pods)?;
            println!("{node}");
        }
        LabCmd::RemoveNode { name, node } => lab::remove_node(&name, &node)?,
        LabCmd::KillNode { name, node } => {
            let pid = lab::kill_node(&name, &node)?;
            println!("{pid}");
        }
        LabCmd::StartNode {
            name,
            node,
            cleanup,
        } => {
            let pid = lab::start_node(&name, &node, cleanup)?;
            println!("{pid}");
        }
        LabCmd::StopNode { name, node } => lab::stop_node(&name, &node)?,
        LabCmd::RotateKey {
            name,
            nodes,
            output,
        } => {
            let outcomes = lab::rotate_keys(&name, &nodes)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
                Output::Table => {
                    for (node, o) in &outcomes {
                        println!(
                            "{node}: {} {}",
                            if o.ok { "rotated" } else { "FAILED" },
                            o.message
                        );
                    }
                }
            }
            if outcomes.values().any(|o| !o.ok) {
                return Ok(ExitCode::from(1));
            }
        }
        LabCmd::Apply { name, file } => {
            for line in lab::apply(&name, &read_file(&file)?)? {
                println!("{line}");
            }
        }
        LabCmd::Delete { name, file } => {
            for line in lab::delete(&name, &read_file(&file)?)? {
                println!("{line}");
            }
        }
        LabCmd::Label {
            name,
            overwrite,
            resource,
            target,
            changes,
        } => {
            let target = label_target(&resource, &target)?;
            let changes = lab::labels::parse_changes(&changes)?;
            println!("{}", lab::label(&name, &target, &changes, overwrite)?);
        }
        LabCmd::Probe {
            name,
            port,
            protocol,
            family,
            timeout_ms,
            output,
        } => {
            let opts = lab::ProbeOptions {
                port,
                protocol,
                family,
                timeout: Duration::from_millis(timeout_ms),
            };
            let report = lab::probe(&name, &opts)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!("{}", lab::render_table(&report, &opts)),
            }
        }
        LabCmd::Serve {
            netns,
            protocol,
            port,
        } => lab::serve(&netns, &protocol, port)?,
        LabCmd::Exec {
            name,
            node,
            command,
        } => {
            let status = lab::exec(&name, &node, &command)?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The text of `-f FILE` (`-`: standard input).
fn read_file(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// `pod NS/NAME` (or `NAME` in `default`) or `namespace NAME`.
fn label_target(resource: &str, target: &str) -> anyhow::Result<lab::LabelTarget> {
    match resource {
        "pod" | "pods" | "po" => {
            let (namespace, name) = target.split_once('/').unwrap_or(("default", target));
            if namespace.is_empty() || name.is_empty() || name.contains('/') {
                bail!("{target:?}: expected NAMESPACE/NAME");
            }
            Ok(lab::LabelTarget::Pod {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        }
        _ => {
            if target.contains('/') {
                bail!("{target:?}: a namespace is named by NAME alone");
            }
            Ok(lab::LabelTarget::Namespace(target.to_string()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn label_targets_parse_like_kubectl() {
        assert_eq!(
            label_target("pod", "x/a").unwrap(),
            lab::LabelTarget::Pod {
                namespace: "x".into(),
                name: "a".into()
            }
        );
        assert_eq!(
            label_target("po", "a").unwrap(),
            lab::LabelTarget::Pod {
                namespace: "default".into(),
                name: "a".into()
            }
        );
        assert_eq!(
            label_target("namespace", "y").unwrap(),
            lab::LabelTarget::Namespace("y".into())
        );
        assert!(label_target("pod", "x/").is_err());
        assert!(label_target("pod", "x/a/b").is_err());
        assert!(label_target("ns", "x/a").is_err());
    }
}
