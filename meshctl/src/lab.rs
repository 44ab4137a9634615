//! `meshctl lab …`: the local multi-node lab (crate `meshd-lab`).

use std::process::ExitCode;

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
            ipam,
            host_encryption,
            keepalive,
            key_rotation_interval,
            rotation_silence,
            guard_cluster_cidrs,
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
            ipam,
            host_encryption,
            keepalive,
            key_rotation_interval,
            rotation_silence,
            guard_cluster_cidrs,
        })?,
        LabCmd::Set { name, pairs } => lab::set(&name, &pairs)?,
        LabCmd::Down { name } => lab::down(&name)?,
        LabCmd::Status { name, output } => match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&lab::status(&name)?)?),
            Output::Table => lab::print_status_table(&name)?,
        },
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
