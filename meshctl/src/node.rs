//! Commands on this node's meshd through its control socket: `status` and `rotate-key`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use meshd::control;
use meshd::control::summary::{and_more, bounded, unhealthy_first, PeerCounts, LIST_LIMIT};

use crate::cli::Output;

/// `meshctl status`: this node's meshd as it reports itself. The table lists at most
/// [`LIST_LIMIT`] peers (the unhealthy first) unless `all`.
pub(crate) fn status(socket: &Path, output: Output, all: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(control::query(socket))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!(
            "{}",
            render_node_status(&report, (!all).then_some(LIST_LIMIT))
        ),
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

/// The status table: the node, then its peers counted by health and listed the unhealthy
/// first, at most `limit` of each list (every one with `None`), then the datapath and counters.
fn render_node_status(s: &control::StatusReport, limit: Option<usize>) -> String {
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(o, "node {}  key {}", s.node, s.public_key);
    let _ = writeln!(
        o,
        "device {} (ifindex {}, {} mode{}), port {}, mtu {}",
        s.interface,
        s.ifindex,
        s.mode,
        if s.adopted_device { ", adopted" } else { "" },
        s.listen_port,
        s.mtu
    );
    let _ = writeln!(
        o,
        "endpoints {}  pod CIDRs {}",
        s.endpoints.join(" "),
        s.pod_cidrs.join(" ")
    );
    if let Some(second) = &s.second {
        let _ = writeln!(
            o,
            "second key slot: device {} (ifindex {}), port {}, key {}",
            second.interface, second.ifindex, second.listen_port, second.public_key
        );
    }
    let r = &s.rotation;
    let _ = writeln!(
        o,
        "key rotation: {}{}, {} done, {} abandoned{}",
        r.phase,
        r.slot.map_or(String::new(), |s| format!(" (slot {s})")),
        r.rotations,
        r.failures,
        r.last_error
            .as_ref()
            .map_or(String::new(), |e| format!("; last error: {e}"))
    );
    let hint = "--all lists every one";
    let counts = PeerCounts::of(&s.peers);
    let _ = writeln!(
        o,
        "{counts}; {} refused, {} conflicts, {} malformed records",
        s.refused.len(),
        s.conflicts.len(),
        s.malformed.len()
    );
    let _ = writeln!(
        o,
        "{:<8} {:<46} {:<24} {:<12} {:>12} {:>12}  ALLOWED IPS",
        "PEER", "KEY", "ENDPOINT", "HANDSHAKE", "RX", "TX"
    );
    let peers = unhealthy_first(&s.peers);
    let (shown, more) = bounded(&peers, limit);
    for p in shown {
        let _ = writeln!(
            o,
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
    if let Some(line) = and_more(more, "peers", hint) {
        let _ = writeln!(o, "{line}");
    }
    let (shown, more) = bounded(&s.conflicts, limit);
    for c in shown {
        let _ = writeln!(o, "conflict: {c}");
    }
    if let Some(line) = and_more(more, "conflicts", hint) {
        let _ = writeln!(o, "{line}");
    }
    let (shown, more) = bounded(&s.malformed, limit);
    for m in shown {
        let _ = writeln!(o, "malformed record from {}: {}", m.node, m.error);
    }
    if let Some(line) = and_more(more, "malformed records", hint) {
        let _ = writeln!(o, "{line}");
    }
    let _ = writeln!(
        o,
        "encryption {}  strict mode {}",
        s.encryption,
        if s.strict_mode { "on" } else { "off" }
    );
    match &s.datapath {
        Some(d) => {
            let _ = writeln!(
        o,
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
            let _ = writeln!(
        o,
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
        None => {
            let _ = writeln!(o, "eBPF datapath: not readable");
        }
    }
    let c = &s.counters;
    let _ = writeln!(
        o,
        "converged {}  reconciles {} (errors {})  peer ops {}  route ops {}  map ops {}  malformed records {}",
        s.converged,
        c.reconciles,
        c.reconcile_errors,
        c.peer_ops,
        c.route_ops,
        c.map_ops,
        c.malformed_records
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshd::control::{PeerReport, StatusReport};

    /// A status of `n` peers: every 500th never handshook, every 250th (the others) is stale.
    fn synthetic(n: usize) -> StatusReport {
        let mut s: StatusReport = serde_json::from_value(serde_json::json!({
            "node": "n1", "public_key": "k", "mode": "kernel", "interface": "meshd0",
            "ifindex": 3, "adopted_device": false, "listen_port": 51820, "mtu": 1420,
            "endpoints": [], "pod_cidrs": [], "known_nodes": [], "peers": [],
            "conflicts": [], "malformed": [],
            "counters": serde_json::to_value(control::Counters::default()).unwrap(),
            "converged": true,
        }))
        .unwrap();
        s.peers = (0..n)
            .map(|i| PeerReport {
                name: Some(format!("p{i:05}")),
                public_key: format!("key{i:05}"),
                endpoint: Some("198.18.0.2".into()),
                allowed_ips: vec![format!("10.{}.{}.0/24", 100 + i / 256, i % 256)],
                last_handshake_unix: None,
                last_handshake_secs_ago: match i {
                    i if i % 500 == 7 => None,
                    i if i % 250 == 3 => Some(900),
                    _ => Some(10),
                },
                rx_bytes: 1,
                tx_bytes: 1,
            })
            .collect();
        s.conflicts = (0..30).map(|i| format!("conflict {i}")).collect();
        s
    }

    #[test]
    fn five_thousand_peers_print_counts_and_the_unhealthy_first_in_a_bounded_list() {
        let s = synthetic(5000);
        let table = render_node_status(&s, Some(LIST_LIMIT));
        assert!(
            table.contains(
                "5000 peers: 4970 ok, 20 stale, 10 no handshake yet; 0 refused, 30 conflicts"
            ),
            "{table}"
        );
        let peer_rows: Vec<&str> = table.lines().filter(|l| l.starts_with('p')).collect();
        assert_eq!(peer_rows.len(), LIST_LIMIT, "{table}");
        // The 10 that never handshook come first, then the stale ones.
        assert!(
            peer_rows[..10].iter().all(|l| l.contains("never")),
            "{table}"
        );
        assert!(
            peer_rows[10..].iter().all(|l| l.contains("900s ago")),
            "{table}"
        );
        assert!(table.contains("... and 4980 more peers (--all lists every one)"));
        assert!(table.contains("... and 10 more conflicts"));
        assert!(
            table.lines().count() < 60,
            "{} lines",
            table.lines().count()
        );

        let all = render_node_status(&s, None);
        assert_eq!(all.lines().filter(|l| l.starts_with('p')).count(), 5000);
        assert!(!all.contains("more peers"));
    }

    #[test]
    fn a_small_status_lists_every_peer_without_a_tail() {
        let table = render_node_status(&synthetic(3), Some(LIST_LIMIT));
        assert_eq!(table.lines().filter(|l| l.starts_with('p')).count(), 3);
        assert!(!table.contains("more peers"), "{table}");
    }
}
