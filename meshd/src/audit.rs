//! The compliance audit: from what every node publishes and what every node's meshd reports,
//! one finding per check, per node and per ordered pair of nodes. Pure: the views are
//! gathered elsewhere (the lab's status, or a cluster's Nodes and each node's status), so every
//! check is unit-tested without a mesh.
//!
//! Checks, in order: `status` (the node's meshd answered), `key` (a valid published key that the
//! device uses), `encryption` (encryption enabled, strict mode on, the underlay guard attached
//! and enforcing), `converged`, `plaintext` (no strict drops or would-drops: cleartext was never
//! attempted, or it needs explaining), `key-age` (within the rotation policy), `peer` (A has B
//! programmed with B's key, endpoint and pod CIDRs), `handshake` (an active pair handshook within
//! WireGuard's 180 s rejection window), `settings` (every node agrees on port, MTU and
//! encryption), and, with evidence, `evidence` (canary traffic from a pod on A to a pod on B
//! crossed the underlay only as WireGuard).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ebpf_redirect::Mode;
use serde::{Deserialize, Serialize};

use crate::control::StatusReport;
use crate::mode::Encryption;

/// WireGuard rejects a session this old (REJECT_AFTER_TIME): a fresh handshake is younger.
pub const HANDSHAKE_WINDOW: Duration = Duration::from_secs(180);

/// What one node publishes, and what its meshd reports (when it answered).
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// The public key the registry holds for it (base64), if any.
    pub published_key: Option<String>,
    /// Its underlay addresses.
    pub endpoints: Vec<IpAddr>,
    /// Its pod CIDRs.
    pub pod_cidrs: Vec<String>,
    /// Its meshd's status; `None` when it could not be read.
    pub status: Option<StatusReport>,
    /// Why the status could not be read.
    pub status_error: Option<String>,
}

/// The audit's policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Keys older than this are a finding.
    pub max_key_age: Duration,
    /// Cleartext attempted within this long is a finding (zero: at any time since the
    /// datapath was loaded).
    pub plaintext_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_key_age: Duration::from_secs(90 * 24 * 3600),
            plaintext_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// The `plaintext` check: whether the `drops` (strict) and `would` (would-drops) all lie
/// outside `window` before `now_unix`, as `seen` dates them, and what was seen.
fn plaintext_outcome(
    drops: u64,
    would: u64,
    seen: &crate::control::CleartextReport,
    window: Duration,
    now_unix: u64,
) -> (bool, String) {
    let counts = format!("{drops} strict drops, {would} would-drops since the datapath was loaded");
    if drops == 0 && would == 0 {
        return (true, counts);
    }
    let ago = |t: u64| now_unix.saturating_sub(t);
    let outside = |t: u64| !window.is_zero() && ago(t) > window.as_secs();
    match (seen.last_unix, seen.watched_since_unix) {
        (Some(last), _) => (
            outside(last),
            format!("{counts}; the last {} s ago", ago(last)),
        ),
        (None, Some(since)) => (
            outside(since),
            format!(
                "{counts}; none since meshd started watching {} s ago",
                ago(since)
            ),
        ),
        (None, None) => (false, format!("{counts}; when is unknown (an older meshd)")),
    }
}

/// One check's outcome for one node or pair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Finding {
    /// The check (`key`, `peer`, …).
    pub check: String,
    /// The node (`n1`) or ordered pair (`n1->n2`), or `cluster`.
    pub subject: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was expected.
    pub expected: String,
    /// What was seen.
    pub seen: String,
    /// How to fix it (empty when it passed).
    pub fix: String,
}

/// The whole audit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// `pass`, `findings` or `could-not-audit`.
    pub verdict: String,
    /// Nodes audited.
    pub nodes: usize,
    /// Every check's outcome.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The exit code a CI job or cron gates on: 0 pass, 1 findings, 2 could not audit.
    pub fn exit_code(&self) -> u8 {
        match self.verdict.as_str() {
            "pass" => 0,
            "findings" => 1,
            _ => 2,
        }
    }
}

struct Out(Vec<Finding>);

impl Out {
    fn check(
        &mut self,
        check: &str,
        subject: &str,
        ok: bool,
        expected: impl Into<String>,
        seen: impl Into<String>,
        fix: &str,
    ) {
        self.0.push(Finding {
            check: check.into(),
            subject: subject.into(),
            ok,
            expected: expected.into(),
            seen: seen.into(),
            fix: if ok { String::new() } else { fix.into() },
        });
    }
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// Audit `nodes` at time `now_unix` (seconds).
pub fn audit(nodes: &[NodeView], policy: &Policy, now_unix: u64) -> Report {
    let mut out = Out(Vec::new());
    for n in nodes {
        let name = n.name.as_str();
        let Some(s) = &n.status else {
            out.check(
                "status",
                name,
                false,
                "meshd answers on the node",
                n.status_error.clone().unwrap_or_else(|| "no answer".into()),
                "start meshd on the node (its datapath keeps running meanwhile) and check its log",
            );
            continue;
        };
        out.check("status", name, true, "meshd answers", "answered", "");
        let key_ok = n.published_key.as_deref() == Some(s.public_key.as_str())
            && s.public_key.parse::<keyexchange::PublicKey>().is_ok();
        out.check(
            "key",
            name,
            key_ok,
            format!("published key = device key {}", s.public_key),
            format!("published {}", n.published_key.as_deref().unwrap_or("nothing")),
            "restart meshd on the node: it republishes its record; check for another writer of that record",
        );
        let guard = s.datapath.as_ref();
        let enc_ok = s.encryption == Encryption::Enabled
            && s.strict_mode
            && guard.is_some_and(|d| d.underlay_mode == Mode::Enforce)
            && guard.is_some_and(|d| d.underlay_attached != Some(false));
        out.check(
            "encryption",
            name,
            enc_ok,
            "encryption enabled, strict mode on, underlay guard attached and enforcing",
            format!(
                "encryption {}, strict mode {}, guard {}",
                s.encryption,
                s.strict_mode,
                guard.map_or("unreadable".to_string(), |d| format!(
                    "{} ({})",
                    d.underlay_mode,
                    match d.underlay_attached {
                        Some(true) => "attached",
                        Some(false) => "NOT attached",
                        None => "attachment not visible",
                    }
                ))
            ),
            "set encryption: enabled and strict-mode: \"true\" in meshd-config (or the flags)",
        );
        out.check(
            "converged",
            name,
            s.converged,
            "last reconcile converged",
            if s.converged {
                "converged"
            } else {
                "not converged"
            },
            "see `meshctl status` on the node and its log for the failing operation",
        );
        let (drops, would) = guard.map_or((0, 0), |d| {
            (d.counters.strict_drops, d.counters.would_drops)
        });
        let (ok, seen) = plaintext_outcome(
            drops,
            would,
            &s.cleartext,
            policy.plaintext_window,
            now_unix,
        );
        out.check(
            "plaintext",
            name,
            ok,
            if policy.plaintext_window.is_zero() {
                "no cleartext pod traffic ever attempted on the underlay".to_string()
            } else {
                format!(
                    "no cleartext pod traffic attempted on the underlay within the last {} s",
                    policy.plaintext_window.as_secs()
                )
            },
            seen,
            "cleartext was attempted towards pod CIDRs without a peer (a node leaving or not \
             running meshd): explain it, or find the node and bring its meshd up",
        );
        match s.key_created_unix {
            Some(created) => {
                let age = now_unix.saturating_sub(created);
                out.check(
                    "key-age",
                    name,
                    age <= policy.max_key_age.as_secs(),
                    format!("at most {} s", policy.max_key_age.as_secs()),
                    format!("{age} s"),
                    "rotate the node's key (`meshctl rotate-key` on the node)",
                );
            }
            None => out.check(
                "key-age",
                name,
                false,
                "a known key age",
                "unknown",
                "upgrade meshd on the node (it reports the key's age)",
            ),
        }
    }
    // Every ordered pair.
    for a in nodes {
        let Some(sa) = &a.status else { continue };
        for b in nodes.iter().filter(|b| b.name != a.name) {
            let pair = format!("{}->{}", a.name, b.name);
            let Some(key) = &b.published_key else {
                out.check(
                    "peer",
                    &pair,
                    false,
                    format!("{} has a published key", b.name),
                    "no key published",
                    "start meshd on the peer so that it publishes its record",
                );
                continue;
            };
            let Some(p) = sa.peers.iter().find(|p| &p.public_key == key) else {
                out.check(
                    "peer",
                    &pair,
                    false,
                    format!("peer with key {key}"),
                    "not programmed",
                    "check both records for conflicts (`meshctl status` lists them) and the log",
                );
                continue;
            };
            // The peer's own port, as its meshd reports it (the same everywhere unless a
            // listen-port change is rolling out).
            let port = b.status.as_ref().map_or(sa.listen_port, |s| s.listen_port);
            let endpoint_ok = p.endpoint.as_ref().is_some_and(|e| {
                b.endpoints
                    .iter()
                    .any(|ip| *e == std::net::SocketAddr::new(*ip, port).to_string())
            });
            // Pod CIDRs, plus the node's own addresses (accepted from the tunnel for
            // node-to-node encryption).
            let mut want = set(&b.pod_cidrs);
            want.extend(
                b.endpoints
                    .iter()
                    .map(|ip| ipnet::IpNet::from(*ip).to_string()),
            );
            let cidrs_ok = set(&p.allowed_ips) == want;
            out.check(
                "peer",
                &pair,
                endpoint_ok && cidrs_ok,
                format!("endpoint one of {:?} port {port}, AllowedIPs {want:?}", b.endpoints),
                format!(
                    "endpoint {}, AllowedIPs {:?}",
                    p.endpoint.as_deref().unwrap_or("none"),
                    p.allowed_ips
                ),
                "let meshd reconcile (it corrects drift within 30 s); if it persists, check the peer's record",
            );
            // The second key slot (key rotation): the peer's second key on this node's second
            // device, with the same AllowedIPs.
            if let (Some(a2), Some(b2)) = (
                &sa.second,
                b.status.as_ref().and_then(|s| s.second.as_ref()),
            ) {
                let p2 = a2.peers.iter().find(|p| p.public_key == b2.public_key);
                let ok = p2.is_some_and(|p| {
                    set(&p.allowed_ips) == want
                        && p.endpoint.as_ref().is_some_and(|e| {
                            e.parse::<std::net::SocketAddr>()
                                .is_ok_and(|e| e.port() == b2.listen_port)
                        })
                });
                out.check(
                    "peer-slot-1",
                    &pair,
                    ok,
                    format!(
                        "peer with key {} on port {} on {}, AllowedIPs {want:?}",
                        b2.public_key, b2.listen_port, a2.interface
                    ),
                    p2.map_or("not programmed".into(), |p| {
                        format!(
                            "endpoint {}, AllowedIPs {:?}",
                            p.endpoint.as_deref().unwrap_or("none"),
                            p.allowed_ips
                        )
                    }),
                    "let meshd reconcile; if it persists, check the peer's record (secondKey, secondPort)",
                );
            }
            let active = p.tx_bytes > 0 || p.rx_bytes > 0;
            if active {
                let fresh = p
                    .last_handshake_secs_ago
                    .is_some_and(|s| s < HANDSHAKE_WINDOW.as_secs());
                out.check(
                    "handshake",
                    &pair,
                    fresh,
                    format!("a handshake within {} s", HANDSHAKE_WINDOW.as_secs()),
                    p.last_handshake_secs_ago
                        .map_or("never".into(), |s| format!("{s} s ago")),
                    "check UDP reachability of the peer's endpoint and that both sides hold each other's current key",
                );
            }
        }
    }
    // Settings agree.
    let answered: Vec<&StatusReport> = nodes.iter().filter_map(|n| n.status.as_ref()).collect();
    let settings: [(&str, Setting); 3] = [
        ("listen port", |s| s.listen_port.to_string()),
        ("mtu", |s| s.mtu.to_string()),
        ("encryption", |s| s.encryption.to_string()),
    ];
    for (what, value) in settings {
        let by_node: Vec<(&str, String)> = answered
            .iter()
            .map(|s| (s.node.as_str(), value(s)))
            .collect();
        let values: BTreeSet<&str> = by_node.iter().map(|(_, v)| v.as_str()).collect();
        out.check(
            "settings",
            "cluster",
            values.len() <= 1,
            format!("one {what} on every node"),
            setting_seen(what, &by_node),
            "make every node use the same meshd-config (or flags) and restart the odd ones out",
        );
    }
    let verdict = if nodes.is_empty() || answered.is_empty() {
        "could-not-audit"
    } else if out.0.iter().all(|f| f.ok) {
        "pass"
    } else {
        "findings"
    };
    Report {
        verdict: verdict.into(),
        nodes: nodes.len(),
        findings: out.0,
    }
}

/// Reads one setting off a node's status.
type Setting = fn(&StatusReport) -> String;

/// What the `settings` check saw of one setting (`what`, e.g. `listen port`), from each
/// answering node's value: `listen port 51820` when they agree, `listen port 51820 on n1, n3;
/// 51821 on n2` when they do not (values in order, nodes in the order given).
pub fn setting_seen(what: &str, by_node: &[(&str, String)]) -> String {
    let mut nodes_by_value: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, value) in by_node {
        nodes_by_value.entry(value).or_default().push(node);
    }
    match nodes_by_value.len() {
        0 => format!("no node reported its {what}"),
        1 => format!("{what} {}", by_node[0].1),
        _ => {
            let groups: Vec<String> = nodes_by_value
                .iter()
                .map(|(value, nodes)| format!("{value} on {}", nodes.join(", ")))
                .collect();
            format!("{what} {}", groups.join("; "))
        }
    }
}

/// Add an evidence finding for a pair.
pub fn evidence(report: &mut Report, pair: &str, ok: bool, seen: String) {
    report.findings.push(Finding {
        check: "evidence".into(),
        subject: pair.into(),
        ok,
        expected: "the canary crossed the underlay only as WireGuard".into(),
        seen,
        fix: if ok {
            String::new()
        } else {
            "a pod packet or the canary crossed in clear: check strict mode and the peer on both nodes now".into()
        },
    });
    if !ok && report.verdict == "pass" {
        report.verdict = "findings".into();
    }
}

/// The human table: one line per check and subject.
pub fn table(report: &Report) -> String {
    table_bounded(report, None)
}

/// The human table, readable at scale: with `limit` and more findings than that, the counts
/// per check first, then at most `limit` findings, the failed ones first; `None` (or few
/// findings) lists every finding in order, as [`table`] does.
pub fn table_bounded(report: &Report, limit: Option<usize>) -> String {
    let mut s = String::new();
    let mut findings: Vec<&Finding> = report.findings.iter().collect();
    let mut left_out = 0;
    if let Some(limit) = limit.filter(|l| findings.len() > *l) {
        let mut per_check: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for f in &findings {
            let e = per_check.entry(f.check.as_str()).or_default();
            if f.ok {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        s.push_str(&format!("{:<11} {:>8} {:>8}\n", "CHECK", "OK", "FAILED"));
        for (check, (ok, failed)) in per_check {
            s.push_str(&format!("{check:<11} {ok:>8} {failed:>8}\n"));
        }
        // Stable: the failed ones first, each group in the audit's order.
        findings.sort_by_key(|f| f.ok);
        left_out = findings.len() - limit;
        findings.truncate(limit);
    }
    s.push_str(&format!(
        "{:<11} {:<10} {:<6} DETAIL\n",
        "CHECK", "SUBJECT", "RESULT"
    ));
    for f in findings {
        let detail = if f.ok {
            f.seen.clone()
        } else {
            format!("expected {}; saw {}. Fix: {}", f.expected, f.seen, f.fix)
        };
        s.push_str(&format!(
            "{:<11} {:<10} {:<6} {}\n",
            f.check,
            f.subject,
            if f.ok { "ok" } else { "FAIL" },
            detail
        ));
    }
    if left_out > 0 {
        s.push_str(&format!(
            "... and {left_out} more findings (--all lists every one)\n"
        ));
    }
    let failed = report.findings.iter().filter(|f| !f.ok).count();
    s.push_str(&format!(
        "verdict: {} ({} nodes, {} checks, {} failed)\n",
        report.verdict,
        report.nodes,
        report.findings.len(),
        failed
    ));
    s
}

#[cfg(test)]
mod tests;
