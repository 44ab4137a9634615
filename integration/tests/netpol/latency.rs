//! Policy change latency: from `meshctl lab apply` returning to the change being enforced on
//! every node, at a resolution of about 10 ms.
//!
//! A full `lab probe` takes as long as its timeout whenever a pair is blocked, far coarser than
//! the 100 ms target, so this measures a positive change instead: namespace x denies all
//! ingress, then a policy allowing namespace y on TCP 80 is applied while pollers inside y's
//! pods attempt connections to x's pods every ~10 ms (a refused attempt costs one 10 ms connect
//! timeout). The pairs cover both nodes as destinations (ingress is decided on the
//! destination's node), same-node and cross-node. A sample is the time until every pair has
//! connected; samples alternate IPv4 and IPv6.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use integration::lab::Lab;
use testkit::netns;

use super::cases::tcp;
use super::reachability::{any, ns, Table};
use super::runner::{LabRun, BASELINE_WINDOW, WINDOW};

/// The longest a change may take before it counts as never enforced.
pub const NEVER: Duration = Duration::from_secs(10);
/// One connection attempt's timeout, the measurement's resolution.
pub const ATTEMPT: Duration = Duration::from_millis(10);

/// The measured pairs (source in y, destination in x): x/a runs on n1 and x/b on n2, y/a on n2
/// and y/b on n1 (`model.yaml`).
pub const PAIRS: [(&str, &str); 4] = [
    ("y/b", "x/a"), // n1 → n1
    ("y/a", "x/a"), // n2 → n1
    ("y/a", "x/b"), // n2 → n2
    ("y/b", "x/b"), // n1 → n2
];

/// The network namespace of the pod holding `address`: from `lab status` when it lists the
/// pod, else the lab namespace (`<lab>-…`) that has the address.
pub fn pod_netns(lab: &Lab, address: IpAddr) -> anyhow::Result<String> {
    let text = address.to_string();
    let status = lab.status_json()?;
    for pod in status["pods"].as_array().into_iter().flatten() {
        if pod["ipv4"] == text.as_str() || pod["ipv6"] == text.as_str() {
            if let Some(ns) = pod["namespace"].as_str() {
                return Ok(ns.to_owned());
            }
        }
    }
    let list = netns::run("ip", &["netns", "list"])?;
    let prefix = format!("{}-", lab.name());
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with(&prefix) {
            continue;
        }
        let addrs = netns::run("ip", &["-n", name, "-o", "addr", "show"])?;
        let has = String::from_utf8_lossy(&addrs.stdout)
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(text.as_str()));
        if has {
            return Ok(name.to_owned());
        }
    }
    bail!("no network namespace of lab {} holds {address}", lab.name())
}

/// Polls `to` from inside `netns` once `start` arrives, until a connection succeeds (the time
/// from `start`) or `give_up` has passed (an error).
fn poller(
    netns: String,
    to: SocketAddr,
    start: mpsc::Receiver<Instant>,
    give_up: Duration,
) -> std::thread::JoinHandle<anyhow::Result<Duration>> {
    std::thread::spawn(move || {
        let name = netns.clone();
        netns::within(&name, move || {
            let t0 = start.recv().context("the measurement never started")?;
            loop {
                let attempt = Instant::now();
                if TcpStream::connect_timeout(&to, ATTEMPT).is_ok() {
                    return Ok(t0.elapsed());
                }
                if t0.elapsed() > give_up {
                    bail!("{to} still unreachable from {netns} {give_up:?} after the apply");
                }
                // A refusal comes back at once: do not spin.
                if attempt.elapsed() < ATTEMPT {
                    std::thread::sleep(ATTEMPT - attempt.elapsed());
                }
            }
        })?
    })
}

/// Everything into namespace x denied.
fn x_denied() -> Table {
    Table::all(true).peer(any(), ns("x"), false)
}

/// Namespace y admitted into x on TCP 80.
fn y_admitted() -> Table {
    x_denied().peer(ns("y"), ns("x"), true)
}

/// Takes `samples` latency samples; fails when a change is not enforced within [`NEVER`].
pub fn measure(run: &LabRun<'_>, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let lab = run.lab();
    let mut netns_of = std::collections::BTreeMap::new();
    for (from, _) in PAIRS {
        let netns = pod_netns(lab, run.address(from, 4)?)?;
        netns_of.insert(from, netns);
    }
    run.apply_fixture("apply", "latency-deny.yaml", None)?;
    for family in [4, 6] {
        run.await_table(&tcp(80, x_denied()), family, WINDOW)
            .context("the standing deny never showed")?;
    }
    let mut out = Vec::new();
    for i in 0..samples {
        let family = if i % 2 == 0 { 4 } else { 6 };
        let mut handles = Vec::new();
        let mut starts = Vec::new();
        for (from, to) in PAIRS {
            let (tx, rx) = mpsc::channel();
            let dst = SocketAddr::new(run.address(to, family)?, 80);
            handles.push((from, to, poller(netns_of[from].clone(), dst, rx, NEVER)));
            starts.push(tx);
        }
        // Let the pollers enter their namespaces before the clock starts.
        std::thread::sleep(Duration::from_millis(50));
        run.apply_fixture("apply", "latency-allow.yaml", None)?;
        let t0 = Instant::now();
        for tx in &starts {
            let _ = tx.send(t0);
        }
        let mut slowest = Duration::ZERO;
        for (from, to, handle) in handles {
            let took = handle
                .join()
                .map_err(|_| anyhow::anyhow!("the poller {from} → {to} panicked"))?
                .with_context(|| format!("sample {i}, IPv{family}, {from} → {to}"))?;
            slowest = slowest.max(took);
        }
        out.push(slowest);
        // The change itself, seen by the full probe too.
        run.await_table(&tcp(80, y_admitted()), family, WINDOW)?;
        run.apply_fixture("delete", "latency-allow.yaml", None)?;
        run.await_table(&tcp(80, x_denied()), family, NEVER)
            .context("the allow was deleted but stayed enforced")?;
    }
    run.apply_fixture("delete", "latency-deny.yaml", None)?;
    for family in [4, 6] {
        run.await_table(&tcp(80, Table::all(true)), family, BASELINE_WINDOW)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// The poller connects from inside the namespace it is given, and says when it gave up.
    #[test]
    fn a_poller_connects_from_inside_its_namespace_and_gives_up_elsewhere() {
        testkit::require_tools(&["ip"]);
        let server = netns::NetnsGuard::new(&netns::unique_name("npl", "srv")).unwrap();
        let other = netns::NetnsGuard::new(&netns::unique_name("npl", "oth")).unwrap();
        let listener = server
            .within(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let to = listener.local_addr().unwrap();

        let (tx, rx) = mpsc::channel();
        let inside = poller(server.name().to_owned(), to, rx, Duration::from_secs(5));
        tx.send(Instant::now()).unwrap();
        let took = inside.join().unwrap().unwrap();
        assert!(took < Duration::from_secs(1), "{took:?}");
        listener.accept().unwrap();

        // The same address from another namespace has no listener: refused until it gives up.
        let (tx, rx) = mpsc::channel();
        let outside = poller(other.name().to_owned(), to, rx, Duration::from_millis(200));
        tx.send(Instant::now()).unwrap();
        let err = outside.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("still unreachable"), "{err}");
    }
}
