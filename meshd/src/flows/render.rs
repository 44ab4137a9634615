//! How `meshctl observe` prints stream lines: a readable table, one line per flow (like
//! `hubble observe`'s), or `-o json`, the stream line's JSON unchanged, one object per line.
//! Pure: text in, text out.
//!
//! Table columns: the time (UTC, milliseconds), the observing node, source and destination
//! (a pod as `NS/NAME`, else its address, with the port), the protocol, the verdict, meshd's
//! reason, then the details: the direction and the denying policies of a policy drop, the
//! peer node of a tunnelled flow, ICMP type and code, packets and bytes of an aggregate. A
//! lost-events notice is a line of its own, `EVENTS LOST`.

use std::net::IpAddr;

use jiff::Timestamp;

use super::filter::reason_name;
use super::record::{
    Endpoint, EventKind, Flow, FlowsResponse, LostEventsSource, PolicyRef, ResponseItem,
    TrafficDirection, Verdict, L4,
};

/// The table's header line.
pub fn header() -> String {
    format!(
        "{:<19} {:<8} {:<30} {:<30} {:<7} {:<9} {:<14} DETAILS",
        "TIME", "NODE", "SOURCE", "DESTINATION", "PROTO", "VERDICT", "REASON"
    )
}

/// A stream line as a table row (no trailing newline).
pub fn table_line(line: &FlowsResponse) -> String {
    match &line.item {
        ResponseItem::Flow(f) => flow_row(f, &line.node_name),
        ResponseItem::LostEvents(lost) => format!(
            "{:<19} {:<8} EVENTS LOST: {} {}",
            time(line.time),
            line.node_name,
            lost.num_events_lost,
            match lost.source {
                LostEventsSource::RingBuffer => "(the datapath's ring buffer was full)",
                LostEventsSource::ObserverQueue => "(this observer was too slow)",
            }
        ),
    }
}

/// A stream line's own JSON, on one line: what `-o json` prints for a line it holds no text of
/// (`meshctl observe` prints the text it read, unchanged, so that fields it does not know
/// survive).
pub fn json_line(line: &FlowsResponse) -> String {
    // The record is plain data (strings, numbers, enums): serializing it cannot fail.
    serde_json::to_string(line).unwrap_or_default()
}

/// `Dec 06 10:00:00.500`, in UTC.
fn time(t: Timestamp) -> String {
    t.strftime("%b %d %H:%M:%S%.3f").to_string()
}

fn flow_row(f: &Flow, node: &str) -> String {
    let ports = f.l4.and_then(|l4| l4.ports());
    let src = end(f.source.as_ref(), f.ip.source, ports.map(|p| p.source_port));
    let dst = end(
        f.destination.as_ref(),
        f.ip.destination,
        ports.map(|p| p.destination_port),
    );
    let mut row = format!(
        "{:<19} {:<8} {:<30} {:<30} {:<7} {:<9} {:<14}",
        time(f.time),
        node,
        src,
        dst,
        protocol(f.l4),
        verdict(f.verdict),
        reason_name(f.reason),
    );
    let details = details(f);
    if details.is_empty() {
        row.truncate(row.trim_end().len());
    } else {
        row.push(' ');
        row.push_str(&details);
    }
    row
}

/// A pod as `NS/NAME:PORT`, else the address (`[v6]:PORT`).
fn end(endpoint: Option<&Endpoint>, addr: IpAddr, port: Option<u16>) -> String {
    let base = match endpoint {
        Some(e) => format!("{}/{}", e.namespace, e.pod_name),
        None => match (addr, port) {
            (IpAddr::V6(a), Some(_)) => format!("[{a}]"),
            _ => addr.to_string(),
        },
    };
    match port {
        Some(p) => format!("{base}:{p}"),
        None => base,
    }
}

fn protocol(l4: Option<L4>) -> String {
    match l4 {
        Some(L4::Tcp(_)) => "TCP".into(),
        Some(L4::Udp(_)) => "UDP".into(),
        Some(L4::Sctp(_)) => "SCTP".into(),
        Some(L4::IcmpV4(_)) => "ICMPv4".into(),
        Some(L4::IcmpV6(_)) => "ICMPv6".into(),
        Some(L4::Other { protocol }) => format!("proto {protocol}"),
        None => "-".into(),
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Forwarded => "FORWARDED",
        Verdict::Dropped => "DROPPED",
        Verdict::Audit => "AUDIT",
    }
}

fn policies(list: &[PolicyRef]) -> String {
    list.iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect::<Vec<_>>()
        .join(",")
}

fn details(f: &Flow) -> String {
    let mut parts: Vec<String> = Vec::new();
    let denied = match f.traffic_direction {
        TrafficDirection::Egress => (!f.egress_denied_by.is_empty())
            .then(|| format!("egress denied by {}", policies(&f.egress_denied_by))),
        TrafficDirection::Ingress => (!f.ingress_denied_by.is_empty())
            .then(|| format!("ingress denied by {}", policies(&f.ingress_denied_by))),
    };
    match denied {
        Some(d) => parts.push(d),
        None if f.verdict != Verdict::Forwarded => parts.push(
            match f.traffic_direction {
                TrafficDirection::Egress => "egress",
                TrafficDirection::Ingress => "ingress",
            }
            .to_string(),
        ),
        None => {}
    }
    if let Some(peer) = &f.peer_node {
        parts.push(format!("to node {peer}"));
    }
    if let Some(L4::IcmpV4(i) | L4::IcmpV6(i)) = f.l4 {
        parts.push(format!("type {} code {}", i.kind, i.code));
    }
    if f.event == EventKind::Aggregate {
        parts.push(format!("{} packets {} bytes", f.packets, f.bytes));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests;
