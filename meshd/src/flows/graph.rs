//! The mesh as a graph (`meshctl graph`, `meshctl lab graph`), like Kilo's `kgctl graph`:
//! Graphviz DOT built from one or more nodes' status reports. Pure.
//!
//! Every reporting node is a box (its name, WireGuard mode and pod CIDRs); a peer that did not
//! report (`meshctl graph` on one node) is a box with its endpoint and allowed IPs. Every
//! tunnel is one undirected edge labelled with its last handshake and the bytes each way
//! (`a→b`: what `a` sent to `b`, from `a`'s report, else what `b` received from `a`). A
//! healthy tunnel (a handshake within WireGuard's 180 s window) is a thick green line, a stale
//! one dashed red, one that never handshook dashed grey.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::audit::HANDSHAKE_WINDOW;
use crate::control::summary::PeerHealth;
use crate::control::{PeerReport, StatusReport};

/// Colour of a healthy tunnel.
pub const HEALTHY_COLOR: &str = "#2e7d32";
/// Colour of a stale tunnel.
pub const STALE_COLOR: &str = "#c62828";
/// Colour of a tunnel that never handshook.
pub const NO_HANDSHAKE_COLOR: &str = "#9e9e9e";

/// A peer's name in the graph: its node name, else its public key.
fn peer_id(p: &PeerReport) -> String {
    p.name.clone().unwrap_or_else(|| p.public_key.clone())
}

/// A tunnel between `a` and `b` (`a < b`) as the reports show it.
#[derive(Debug, Default)]
struct Tunnel {
    /// Seconds since the last handshake, the most recent either end reports.
    handshake_ago: Option<u64>,
    /// Bytes `a` sent to `b`.
    a_to_b: Option<u64>,
    /// Bytes `b` sent to `a`.
    b_to_a: Option<u64>,
}

/// A DOT string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Bytes as `812 B`, `1.2 KiB`, `3.4 MiB`, ….
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The graph of the mesh as `reports` show it, in DOT.
pub fn mesh_dot(reports: &[StatusReport]) -> String {
    let reporting: BTreeMap<&str, &StatusReport> =
        reports.iter().map(|r| (r.node.as_str(), r)).collect();
    // Peers that did not report themselves, with what is known of them.
    let mut others: BTreeMap<String, &PeerReport> = BTreeMap::new();
    // (from, to) -> bytes, as the sender counted them and as the receiver did.
    let mut sent: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut received: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut tunnels: BTreeMap<(String, String), Tunnel> = BTreeMap::new();
    for r in reports {
        for p in &r.peers {
            let id = peer_id(p);
            if !reporting.contains_key(id.as_str()) {
                others.entry(id.clone()).or_insert(p);
            }
            sent.insert((r.node.clone(), id.clone()), p.tx_bytes);
            received.insert((id.clone(), r.node.clone()), p.rx_bytes);
            let key = if r.node < id {
                (r.node.clone(), id)
            } else {
                (id, r.node.clone())
            };
            let t = tunnels.entry(key).or_default();
            t.handshake_ago = match (t.handshake_ago, p.last_handshake_secs_ago) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    let bytes = |from: &str, to: &str| {
        let k = (from.to_string(), to.to_string());
        sent.get(&k).or_else(|| received.get(&k)).copied()
    };
    for ((a, b), t) in &mut tunnels {
        t.a_to_b = bytes(a, b);
        t.b_to_a = bytes(b, a);
    }

    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(o, "graph meshd {{");
    let _ = writeln!(o, "  node [shape=box];");
    for (name, r) in &reporting {
        let mut label = format!("{name}\n{} mode", r.mode);
        if !r.endpoints.is_empty() {
            let _ = write!(label, "\n{}", r.endpoints.join(" "));
        }
        if !r.pod_cidrs.is_empty() {
            let _ = write!(label, "\n{}", r.pod_cidrs.join(" "));
        }
        let _ = writeln!(o, "  {} [label={}];", quote(name), quote(&label));
    }
    for (id, p) in &others {
        let mut label = id.clone();
        if let Some(endpoint) = &p.endpoint {
            let _ = write!(label, "\n{endpoint}");
        }
        if !p.allowed_ips.is_empty() {
            let _ = write!(label, "\n{}", p.allowed_ips.join(" "));
        }
        let _ = writeln!(
            o,
            "  {} [label={}, color={}];",
            quote(id),
            quote(&label),
            quote(NO_HANDSHAKE_COLOR)
        );
    }
    for ((a, b), t) in &tunnels {
        let health = match t.handshake_ago {
            None => PeerHealth::NoHandshake,
            Some(ago) if ago >= HANDSHAKE_WINDOW.as_secs() => PeerHealth::Stale,
            Some(_) => PeerHealth::Ok,
        };
        let handshake = match t.handshake_ago {
            Some(ago) => format!("handshake {ago}s ago"),
            None => "no handshake yet".to_string(),
        };
        let bytes = |n: Option<u64>| n.map_or("?".to_string(), human_bytes);
        let label = format!(
            "{handshake}\n{a}→{b} {}\n{b}→{a} {}",
            bytes(t.a_to_b),
            bytes(t.b_to_a)
        );
        let style = match health {
            PeerHealth::Ok => format!("color={}, penwidth=2", quote(HEALTHY_COLOR)),
            PeerHealth::Stale => format!("color={}, style=dashed", quote(STALE_COLOR)),
            PeerHealth::NoHandshake => {
                format!("color={}, style=dashed", quote(NO_HANDSHAKE_COLOR))
            }
        };
        let _ = writeln!(
            o,
            "  {} -- {} [label={}, {style}];",
            quote(a),
            quote(b),
            quote(&label)
        );
    }
    let _ = writeln!(o, "}}");
    out
}

#[cfg(test)]
mod tests;
