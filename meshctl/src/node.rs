//! Commands on this node's meshd through its control socket: `status` and `rotate-key`.

use std::path::Path;
use std::process::ExitCode;

use meshd::control;

use crate::cli::Output;

/// `meshctl status`: this node's meshd as it reports itself.
pub(crate) fn status(socket: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(control::query(socket))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_node_status(&report),
    }
    Ok(ExitCode::SUCCESS)
}

/// `meshctl rotate-key`: rotate this node's keys; exit 1 if the rotation was abandoned.
pub(crate) fn rotate_key(socket: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(control::rotate_key(socket))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
        Output::Table => {
            println!(
                "{}: {}",
                if outcome.ok { "rotated" } else { "FAILED" },
                outcome.message
            );
            for (slot, key) in outcome.public_keys.iter().enumerate() {
                println!("slot {slot} key {key}");
            }
        }
    }
    if !outcome.ok {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_node_status(s: &control::StatusReport) {
    println!("node {}  key {}", s.node, s.public_key);
    println!(
        "device {} (ifindex {}, {} mode{}), port {}, mtu {}",
        s.interface,
        s.ifindex,
        s.mode,
        if s.adopted_device { ", adopted" } else { "" },
        s.listen_port,
        s.mtu
    );
    println!(
        "endpoints {}  pod CIDRs {}",
        s.endpoints.join(" "),
        s.pod_cidrs.join(" ")
    );
    if let Some(second) = &s.second {
        println!(
            "second key slot: device {} (ifindex {}), port {}, key {}",
            second.interface, second.ifindex, second.listen_port, second.public_key
        );
    }
    let r = &s.rotation;
    println!(
        "key rotation: {}{}, {} done, {} abandoned{}",
        r.phase,
        r.slot.map_or(String::new(), |s| format!(" (slot {s})")),
        r.rotations,
        r.failures,
        r.last_error
            .as_ref()
            .map_or(String::new(), |e| format!("; last error: {e}"))
    );
    println!(
        "{:<8} {:<46} {:<24} {:<12} {:>12} {:>12}  ALLOWED IPS",
        "PEER", "KEY", "ENDPOINT", "HANDSHAKE", "RX", "TX"
    );
    for p in &s.peers {
        println!(
            "{:<8} {:<46} {:<24} {:<12} {:>12} {:>12}  {}",
            p.name.as_deref().unwrap_or("?"),
            p.public_key,
            p.endpoint.as_deref().unwrap_or("-"),
            p.last_handshake_secs_ago
                .map_or("never".into(), |a| format!("{a}s ago")),
            p.rx_bytes,
            p.tx_bytes,
            p.allowed_ips.join(" ")
        );
    }
    for c in &s.conflicts {
        println!("conflict: {c}");
    }
    for m in &s.malformed {
        println!("malformed record from {}: {}", m.node, m.error);
    }
    println!(
        "encryption {}  strict mode {}",
        s.encryption,
        if s.strict_mode { "on" } else { "off" }
    );
    match &s.datapath {
        Some(d) => {
            println!(
                "eBPF datapath ({}, {}): underlay {} {} ({}), {} remote CIDRs, {} local pods on {} interfaces",
                d.pin_dir,
                d.attach,
                d.underlay_interface,
                d.underlay_mode,
                match d.underlay_attached {
                    Some(true) => "attached",
                    Some(false) => "NOT ATTACHED",
                    None => "attachment not visible",
                },
                d.remote_cidrs.len(),
                d.local_pods,
                d.pod_interfaces
            );
            let v = &d.counters;
            println!(
                "verdicts: redirected {}  local {}  passed {}  strict drops {}  would-drops {}  spoofed {}  policy denied egress {}  policy denied ingress {}",
                v.redirected,
                v.local,
                v.passed,
                v.strict_drops,
                v.would_drops,
                v.spoofed,
                v.policy_denied_egress,
                v.policy_denied_ingress
            );
        }
        None => println!("eBPF datapath: not readable"),
    }
    let c = &s.counters;
    println!(
        "converged {}  reconciles {} (errors {})  peer ops {}  route ops {}  map ops {}  malformed records {}",
        s.converged,
        c.reconciles,
        c.reconcile_errors,
        c.peer_ops,
        c.route_ops,
        c.map_ops,
        c.malformed_records
    );
}
