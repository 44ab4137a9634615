//! `meshctl lab probe`: from every applied Pod to every applied Pod (itself included), a real
//! connection attempt from inside the source Pod's network namespace to the destination's
//! address of one family, all pairs at once (threads that enter the source's namespace), so a
//! round takes about one timeout.
//!
//! Allowed means the destination's server answered: TCP connected, UDP echoed the probe's
//! token, SCTP answered the probe INIT with an INIT ACK (raw IP protocol 132, see
//! [`crate::sctp`]). Anything else — a timeout, a refused connection, an ICMP error — is
//! blocked, so a port nobody serves shows blocked. The JSON document is a contract (see
//! `docs/json-contract.md`).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use socket2::Domain;

use crate::apply::AppliedPod;
use crate::host::require_root;
use crate::object_store::ObjectStore;
use crate::objects::Kind;
use crate::sctp;
use crate::serve::{enter_netns, raw_sctp_socket};
use crate::state::{load_state, Paths};

/// At most this many probes run at once.
const MAX_CONCURRENT: usize = 512;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Destination port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// 4 or 6.
    pub family: u8,
    /// How long to wait for an answer.
    pub timeout: Duration,
}

/// One probe's verdict (an entry of the `lab probe -o json` document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Source Pod, `namespace/name`.
    pub from: String,
    /// Destination Pod, `namespace/name`.
    pub to: String,
    /// Destination port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// 4 or 6.
    pub family: u8,
    /// Whether the destination's server answered.
    pub allowed: bool,
}

/// The `lab probe -o json` document: every pair, sorted by `from` then `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The verdicts.
    pub results: Vec<ProbeResult>,
}

/// A Pod to probe from and to.
struct Endpoint {
    /// `namespace/name`.
    id: String,
    /// Its network namespace.
    netns: PathBuf,
    /// Its address of the probed family.
    address: IpAddr,
}

/// `meshctl lab probe`.
pub fn probe(lab: &str, opts: &ProbeOptions) -> anyhow::Result<ProbeReport> {
    require_root()?;
    if !matches!(opts.protocol.as_str(), "TCP" | "UDP" | "SCTP") {
        bail!("--protocol {}: expected TCP, UDP or SCTP", opts.protocol);
    }
    if !matches!(opts.family, 4 | 6) {
        bail!("--family {}: expected 4 or 6", opts.family);
    }
    load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let paths = Paths::new(lab);
    let endpoints = endpoints(&paths, opts.family)?;
    let pairs: Vec<(&Endpoint, &Endpoint)> = endpoints
        .iter()
        .flat_map(|a| endpoints.iter().map(move |b| (a, b)))
        .collect();
    let seeds = RandomState::new();
    let mut results = Vec::with_capacity(pairs.len());
    for (c, chunk) in pairs.chunks(MAX_CONCURRENT).enumerate() {
        let verdicts: Vec<anyhow::Result<bool>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(k, (from, to))| {
                    let token = (seeds.hash_one((c, k)) as u32).max(1);
                    scope.spawn(move || probe_one(from, to, opts, token))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("probe thread panicked")))
                })
                .collect()
        });
        for ((from, to), verdict) in chunk.iter().zip(verdicts) {
            let allowed = verdict.with_context(|| format!("probing {} from {}", to.id, from.id))?;
            results.push(ProbeResult {
                from: from.id.clone(),
                to: to.id.clone(),
                port: opts.port,
                protocol: opts.protocol.clone(),
                family: opts.family,
                allowed,
            });
        }
    }
    results.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    Ok(ProbeReport { results })
}

/// Every Pod object of the lab with the namespace `apply` made for it and its address of
/// `family`; an error names a Pod that has neither.
fn endpoints(paths: &Paths, family: u8) -> anyhow::Result<Vec<Endpoint>> {
    let store = ObjectStore::new(paths);
    let mut out = Vec::new();
    for (reference, value) in store.list(Kind::Pod)? {
        let id = format!("{}/{}", reference.namespace, reference.name);
        let applied = AppliedPod::load(paths, &reference.namespace, &reference.name)?
            .with_context(|| {
                format!("Pod {id} was not made by `lab apply` in lab {}", paths.lab)
            })?;
        let netns = applied.netns_path();
        if !netns.exists() {
            bail!(
                "Pod {id}: its network namespace {} is missing",
                netns.display()
            );
        }
        let address = value["status"]["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["ip"].as_str()?.parse::<IpAddr>().ok())
            .find(|a| a.is_ipv4() == (family == 4))
            .with_context(|| format!("Pod {id} has no IPv{family} address in status.podIPs"))?;
        out.push(Endpoint { id, netns, address });
    }
    Ok(out)
}

/// One probe, in a thread of its own (it enters the source's namespace).
fn probe_one(
    from: &Endpoint,
    to: &Endpoint,
    opts: &ProbeOptions,
    token: u32,
) -> anyhow::Result<bool> {
    enter_netns(&from.netns)?;
    let deadline = Instant::now() + opts.timeout;
    let dst = SocketAddr::new(to.address, opts.port);
    Ok(match opts.protocol.as_str() {
        "TCP" => TcpStream::connect_timeout(&dst, opts.timeout).is_ok(),
        "UDP" => probe_udp(dst, token, deadline)?,
        _ => probe_sctp(dst, token, deadline)?,
    })
}

/// How often a datagram probe is sent again while no answer came (a first packet may wait for
/// a WireGuard handshake).
fn resend_interval(deadline: Instant) -> Duration {
    (deadline.saturating_duration_since(Instant::now()) / 4).max(Duration::from_millis(50))
}

fn probe_udp(dst: SocketAddr, token: u32, deadline: Instant) -> anyhow::Result<bool> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(bind).context("binding a UDP socket")?;
    socket.connect(dst).context("connecting a UDP socket")?;
    let message = format!("meshd-lab probe {token:08x}");
    let interval = resend_interval(deadline);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if socket.send(message.as_bytes()).is_err() {
            // An ICMP error of an earlier send (port unreachable): nobody answers.
            return Ok(false);
        }
        let resend = (Instant::now() + interval).min(deadline);
        while let Some(left) = resend
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut buf) {
                Ok(n) if &buf[..n] == message.as_bytes() => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(false),
                Err(_) => break,
            }
        }
    }
    Ok(false)
}

fn probe_sctp(dst: SocketAddr, token: u32, deadline: Instant) -> anyhow::Result<bool> {
    let ipv4 = dst.is_ipv4();
    let socket = raw_sctp_socket(if ipv4 { Domain::IPV4 } else { Domain::IPV6 })?;
    let src_port = 32768 + (token % 28000) as u16;
    let init = sctp::encode(&sctp::Probe {
        src_port,
        dst_port: dst.port(),
        token,
        answer: false,
    });
    let to = SocketAddr::new(dst.ip(), 0);
    let interval = resend_interval(deadline);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        socket
            .send_to(&init, to)
            .with_context(|| format!("sending an SCTP probe to {}", dst.ip()))?;
        let resend = (Instant::now() + interval).min(deadline);
        while let Some(left) = resend
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            socket.set_read_timeout(Some(left))?;
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                break;
            };
            if from.ip() != dst.ip() {
                continue;
            }
            let packet = if ipv4 {
                match sctp::strip_ipv4_header(&buf[..n]) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                &buf[..n]
            };
            let answered = sctp::decode(packet).is_some_and(|p| {
                p.answer && p.token == token && p.src_port == dst.port() && p.dst_port == src_port
            });
            if answered {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The truth table of a report: a header line naming port, protocol and family, then one row
/// per source and one column per destination, `.` allowed, `X` blocked.
pub fn render_table(report: &ProbeReport, opts: &ProbeOptions) -> String {
    let mut pods: Vec<&str> = report.results.iter().map(|r| r.from.as_str()).collect();
    pods.dedup();
    let width = pods.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
    let mut out = format!(
        "{}/{} IPv{} (rows: from, columns: to; . allowed, X blocked)\n",
        opts.protocol, opts.port, opts.family
    );
    out.push_str(&format!("{:width$}", "-"));
    for to in &pods {
        out.push_str(&format!(" {to:width$}"));
    }
    out.push('\n');
    for from in &pods {
        out.push_str(&format!("{from:width$}"));
        for to in &pods {
            let verdict = report
                .results
                .iter()
                .find(|r| r.from == *from && r.to == *to)
                .map_or("?", |r| if r.allowed { "." } else { "X" });
            out.push_str(&format!(" {verdict:width$}"));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_header_and_one_row_and_column_per_pod() {
        let pods = ["x/a", "x/b", "y/a"];
        let mut results = Vec::new();
        for from in pods {
            for to in pods {
                results.push(ProbeResult {
                    from: from.into(),
                    to: to.into(),
                    port: 80,
                    protocol: "TCP".into(),
                    family: 4,
                    allowed: !(from == "y/a" && to == "x/b"),
                });
            }
        }
        let opts = ProbeOptions {
            port: 80,
            protocol: "TCP".into(),
            family: 4,
            timeout: Duration::from_secs(1),
        };
        let table = render_table(&ProbeReport { results }, &opts);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TCP/80 IPv4"), "{table}");
        assert_eq!(lines[1], "-   x/a x/b y/a");
        assert_eq!(lines[2], "x/a .   .   .");
        assert_eq!(lines[4], "y/a .   X   .");
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn the_json_document_has_the_contract_fields() {
        let report = ProbeReport {
            results: vec![ProbeResult {
                from: "x/a".into(),
                to: "y/b".into(),
                port: 80,
                protocol: "TCP".into(),
                family: 4,
                allowed: true,
            }],
        };
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({"results":[{"from":"x/a","to":"y/b","port":80,"protocol":"TCP","family":4,"allowed":true}]})
        );
    }
}
