//! Which stream lines `meshctl observe` shows: a [`FlowFilter`] built from its flags
//! ([`FilterFlags`], checked here with errors naming the flag and the bad value) and applied to
//! [`FlowsResponse`] lines. Pure: no I/O, and the current time is an argument.
//!
//! Every given flag must match (AND); `--pod` and `--namespace` match either end of a flow;
//! `--from` / `--to` match one end. Lost-events lines always pass: a user must see that events
//! were lost whatever the filter. `--last N` keeps the newest N matching flows (and every
//! lost-events line), in their order.

use std::collections::VecDeque;
use std::net::IpAddr;

use ipnet::IpNet;
use jiff::Timestamp;

use super::record::{Endpoint, Flow, FlowsResponse, Reason, ResponseItem, Verdict};

/// The raw values of `meshctl observe`'s filter flags, as the command line gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterFlags {
    /// `--pod NS/NAME` (`NAME` alone: namespace `default`), either end; repeatable (any).
    pub pod: Vec<String>,
    /// `--namespace NS`, either end; repeatable (any).
    pub namespace: Vec<String>,
    /// `--from POD|IP|CIDR`: the source.
    pub from: Option<String>,
    /// `--to POD|IP|CIDR`: the destination.
    pub to: Option<String>,
    /// `--verdict forwarded|dropped|audit`.
    pub verdict: Option<String>,
    /// `--reason` (kebab case, e.g. `policy-denied`).
    pub reason: Option<String>,
    /// `--port N`: either port.
    pub port: Option<String>,
    /// `--protocol tcp|udp|sctp|icmp|N`.
    pub protocol: Option<String>,
    /// `--since 5m|1h|RFC3339`.
    pub since: Option<String>,
    /// `--last N`.
    pub last: Option<String>,
}

/// A flag value that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value:?}: expected {expected}")]
pub struct FilterError {
    /// The flag, e.g. `--pod`.
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

impl FilterError {
    fn new(flag: &'static str, value: &str, expected: impl Into<String>) -> Self {
        FilterError {
            flag,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// A pod named by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PodName {
    fn matches(&self, e: Option<&Endpoint>) -> bool {
        e.is_some_and(|e| e.namespace == self.namespace && e.pod_name == self.name)
    }
}

/// What `--from` or `--to` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndMatch {
    /// A pod, by its endpoint.
    Pod(PodName),
    /// An address (or a network): the IP header's address at that end.
    Net(IpNet),
}

impl EndMatch {
    fn matches(&self, endpoint: Option<&Endpoint>, addr: IpAddr) -> bool {
        match self {
            EndMatch::Pod(p) => p.matches(endpoint),
            EndMatch::Net(net) => net.contains(&addr),
        }
    }
}

/// A checked filter: see the module docs for its meaning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Pods either end must be one of (empty: any).
    pub pods: Vec<PodName>,
    /// Namespaces either end must be in (empty: any).
    pub namespaces: Vec<String>,
    /// The source.
    pub from: Option<EndMatch>,
    /// The destination.
    pub to: Option<EndMatch>,
    /// The verdict.
    pub verdict: Option<Verdict>,
    /// The reason.
    pub reason: Option<Reason>,
    /// Either port.
    pub port: Option<u16>,
    /// IP protocol numbers, any of (`icmp` is 1 and 58).
    pub protocols: Vec<u8>,
    /// Flows at or after this time.
    pub since: Option<Timestamp>,
    /// Keep only the newest N matching flows.
    pub last: Option<usize>,
}

/// Reads `--pod`'s `NS/NAME` (`NAME` alone: `default`).
fn parse_pod(flag: &'static str, value: &str) -> Result<PodName, FilterError> {
    let (namespace, name) = value.split_once('/').unwrap_or(("default", value));
    if namespace.is_empty() || name.is_empty() || name.contains('/') || value.trim() != value {
        return Err(FilterError::new(flag, value, "NAMESPACE/NAME"));
    }
    Ok(PodName {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// Reads `--from`/`--to`: an IP, a CIDR, or a pod `NS/NAME`.
fn parse_end(flag: &'static str, value: &str) -> Result<EndMatch, FilterError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(EndMatch::Net(IpNet::from(ip)));
    }
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(EndMatch::Net(net));
    }
    let looks_like_address = value.contains(':')
        || (value.contains('/')
            && value
                .split('/')
                .next()
                .is_some_and(|a| a.chars().all(|c| c.is_ascii_digit() || c == '.')));
    if looks_like_address || !value.contains('/') {
        return Err(FilterError::new(
            flag,
            value,
            "a pod NAMESPACE/NAME, an IP address or a CIDR",
        ));
    }
    parse_pod(flag, value)
        .map(EndMatch::Pod)
        .map_err(|_| FilterError::new(flag, value, "a pod NAMESPACE/NAME, an IP address or a CIDR"))
}

fn parse_verdict(value: &str) -> Result<Verdict, FilterError> {
    match value.to_ascii_lowercase().as_str() {
        "forwarded" => Ok(Verdict::Forwarded),
        "dropped" => Ok(Verdict::Dropped),
        "audit" => Ok(Verdict::Audit),
        _ => Err(FilterError::new(
            "--verdict",
            value,
            "forwarded, dropped or audit",
        )),
    }
}

/// Every reason, for errors and tests.
pub const REASONS: [Reason; 6] = [
    Reason::ToTunnel,
    Reason::LocalDelivery,
    Reason::PolicyDenied,
    Reason::StrictMode,
    Reason::SpoofedSource,
    Reason::WouldDrop,
];

/// A reason's kebab-case name, as the JSON spells it.
pub fn reason_name(reason: Reason) -> &'static str {
    match reason {
        Reason::ToTunnel => "to-tunnel",
        Reason::LocalDelivery => "local-delivery",
        Reason::PolicyDenied => "policy-denied",
        Reason::StrictMode => "strict-mode",
        Reason::SpoofedSource => "spoofed-source",
        Reason::WouldDrop => "would-drop",
    }
}

fn parse_reason(value: &str) -> Result<Reason, FilterError> {
    REASONS
        .into_iter()
        .find(|r| reason_name(*r) == value.to_ascii_lowercase())
        .ok_or_else(|| {
            let names: Vec<&str> = REASONS.into_iter().map(reason_name).collect();
            FilterError::new("--reason", value, format!("one of {}", names.join(", ")))
        })
}

fn parse_protocol(value: &str) -> Result<Vec<u8>, FilterError> {
    match value.to_ascii_lowercase().as_str() {
        "tcp" => Ok(vec![6]),
        "udp" => Ok(vec![17]),
        "sctp" => Ok(vec![132]),
        "icmp" => Ok(vec![1, 58]),
        "icmpv4" => Ok(vec![1]),
        "icmpv6" => Ok(vec![58]),
        other => other.parse::<u8>().map(|n| vec![n]).map_err(|_| {
            FilterError::new(
                "--protocol",
                value,
                "tcp, udp, sctp, icmp or an IP protocol number 0-255",
            )
        }),
    }
}

/// Reads `--since`: a duration back from `now` (`30s`, `5m`, `1h`, `2d`) or an RFC 3339 time.
fn parse_since(value: &str, now: Timestamp) -> Result<Timestamp, FilterError> {
    let expected =
        "a duration like 30s, 5m, 1h or 2d, or an RFC 3339 time like 2026-12-06T10:00:00Z";
    if let Ok(t) = value.parse::<Timestamp>() {
        return Ok(t);
    }
    let secs = crate::controller::parse_interval(value)
        .map_err(|_| FilterError::new("--since", value, expected))?
        .as_secs();
    let span = jiff::SignedDuration::from_secs(i64::try_from(secs).unwrap_or(i64::MAX));
    Ok(now.checked_sub(span).unwrap_or(Timestamp::MIN))
}

fn parse_number<T: std::str::FromStr>(
    flag: &'static str,
    value: &str,
    expected: &str,
) -> Result<T, FilterError> {
    value
        .parse::<T>()
        .map_err(|_| FilterError::new(flag, value, expected))
}

impl FlowFilter {
    /// Checks the flags; `now` anchors a relative `--since`.
    pub fn from_flags(flags: &FilterFlags, now: Timestamp) -> Result<FlowFilter, FilterError> {
        let last = flags
            .last
            .as_deref()
            .map(|v| parse_number::<usize>("--last", v, "a number of flows"))
            .transpose()?;
        Ok(FlowFilter {
            pods: flags
                .pod
                .iter()
                .map(|p| parse_pod("--pod", p))
                .collect::<Result<_, _>>()?,
            namespaces: flags
                .namespace
                .iter()
                .map(|ns| {
                    if ns.is_empty() || ns.contains('/') {
                        Err(FilterError::new("--namespace", ns, "a namespace name"))
                    } else {
                        Ok(ns.clone())
                    }
                })
                .collect::<Result<_, _>>()?,
            from: flags
                .from
                .as_deref()
                .map(|v| parse_end("--from", v))
                .transpose()?,
            to: flags
                .to
                .as_deref()
                .map(|v| parse_end("--to", v))
                .transpose()?,
            verdict: flags.verdict.as_deref().map(parse_verdict).transpose()?,
            reason: flags.reason.as_deref().map(parse_reason).transpose()?,
            port: flags
                .port
                .as_deref()
                .map(|v| parse_number::<u16>("--port", v, "a port number 0-65535"))
                .transpose()?,
            protocols: flags
                .protocol
                .as_deref()
                .map(parse_protocol)
                .transpose()?
                .unwrap_or_default(),
            since: flags
                .since
                .as_deref()
                .map(|v| parse_since(v, now))
                .transpose()?,
            last,
        })
    }

    /// Whether a flow passes every flag but `--last`.
    pub fn matches_flow(&self, f: &Flow) -> bool {
        let (src, dst) = (f.source.as_ref(), f.destination.as_ref());
        if !self.pods.is_empty() && !self.pods.iter().any(|p| p.matches(src) || p.matches(dst)) {
            return false;
        }
        if !self.namespaces.is_empty()
            && !self.namespaces.iter().any(|ns| {
                src.is_some_and(|e| &e.namespace == ns) || dst.is_some_and(|e| &e.namespace == ns)
            })
        {
            return false;
        }
        if let Some(m) = &self.from {
            if !m.matches(src, f.ip.source) {
                return false;
            }
        }
        if let Some(m) = &self.to {
            if !m.matches(dst, f.ip.destination) {
                return false;
            }
        }
        if self.verdict.is_some_and(|v| v != f.verdict) {
            return false;
        }
        if self.reason.is_some_and(|r| r != f.reason) {
            return false;
        }
        if let Some(port) = self.port {
            let ports = f.l4.and_then(|l4| l4.ports());
            if !ports.is_some_and(|p| p.source_port == port || p.destination_port == port) {
                return false;
            }
        }
        if !self.protocols.is_empty()
            && !f
                .l4
                .is_some_and(|l4| self.protocols.contains(&l4.protocol()))
        {
            return false;
        }
        if self.since.is_some_and(|since| f.time < since) {
            return false;
        }
        true
    }

    /// Whether a line passes every flag but `--last` (lost-events lines always do).
    pub fn matches(&self, line: &impl StreamLine) -> bool {
        match &line.response().item {
            ResponseItem::Flow(f) => self.matches_flow(f),
            ResponseItem::LostEvents(_) => true,
        }
    }

    /// The matching lines of `lines`, in order, with `--last` applied.
    pub fn apply<T: StreamLine>(&self, lines: impl IntoIterator<Item = T>) -> Vec<T> {
        let mut last = LastWindow::new(self.last);
        for line in lines {
            if self.matches(&line) {
                last.push(line);
            }
        }
        last.finish()
    }
}

/// Something carrying a stream line: the line itself, or the line with the text it was read
/// from (`meshctl observe -o json` prints that text unchanged).
pub trait StreamLine {
    /// The stream line.
    fn response(&self) -> &FlowsResponse;
}

impl StreamLine for FlowsResponse {
    fn response(&self) -> &FlowsResponse {
        self
    }
}

impl<T: StreamLine + ?Sized> StreamLine for &T {
    fn response(&self) -> &FlowsResponse {
        (**self).response()
    }
}

/// `--last N` over a stream of matching lines: the newest N flows and every lost-events line,
/// in their order, with bounded memory (N flows, plus the lost-events lines).
#[derive(Debug)]
pub struct LastWindow<T = FlowsResponse> {
    limit: Option<usize>,
    kept: VecDeque<T>,
    flows: usize,
}

fn is_flow<T: StreamLine>(line: &T) -> bool {
    matches!(line.response().item, ResponseItem::Flow(_))
}

impl<T: StreamLine> LastWindow<T> {
    /// A window of `limit` flows (`None`: every line).
    pub fn new(limit: Option<usize>) -> Self {
        LastWindow {
            limit,
            kept: VecDeque::new(),
            flows: 0,
        }
    }

    /// Add a matching line, dropping the oldest flow when over the limit.
    pub fn push(&mut self, line: T) {
        let flow = is_flow(&line);
        self.kept.push_back(line);
        if !flow {
            return;
        }
        self.flows += 1;
        if let Some(limit) = self.limit {
            if self.flows > limit {
                if let Some(i) = self.kept.iter().position(is_flow) {
                    self.kept.remove(i);
                    self.flows -= 1;
                }
            }
        }
    }

    /// The kept lines, oldest first.
    pub fn finish(self) -> Vec<T> {
        self.kept.into()
    }
}

#[cfg(test)]
mod tests;
