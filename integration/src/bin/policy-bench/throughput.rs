//! Target 1: TCP throughput pod to pod (iperf3, one stream) without any policy and with the
//! policy set of `--policies N` in force, alternated over rounds (without/with, then
//! with/without, …) so that drift of a shared machine hits both conditions alike. Before each
//! condition is measured, `meshctl lab probe` proves it is in force: with the set the
//! intruder is blocked and the clients are allowed, without it the intruder is allowed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use integration::bench;
use testkit::netns::{self, ChildGuard};

use crate::lab::Lab;
use crate::manifests::{
    BenchPod, CLIENT_N1, CLIENT_N2, INTRUDER_N1, IPERF_PORT, SERVER_N1, SERVER_N2,
};
use crate::report::{PairThroughput, ThroughputResult};
use crate::stop::{check_stop, pause};

/// A measured client → server pair.
pub(crate) struct Pair {
    pub(crate) label: &'static str,
    pub(crate) client: BenchPod,
    pub(crate) server: BenchPod,
}

/// Cross-node (n1 → n2) and same-node (on n2) pairs.
pub(crate) const PAIRS: [Pair; 2] = [
    Pair {
        label: "cross-node n1 -> n2",
        client: CLIENT_N1,
        server: SERVER_N2,
    },
    Pair {
        label: "same-node n2",
        client: CLIENT_N2,
        server: SERVER_N2,
    },
];

/// How long the policy set may take to be in force (1,000 policies through a debug build on
/// a loaded machine).
const IN_FORCE_WAIT: Duration = Duration::from_secs(120);

/// What the probes must show with the policy set in force.
fn expect_with() -> Vec<(&'static BenchPod, &'static BenchPod, bool)> {
    vec![
        (&INTRUDER_N1, &SERVER_N1, false),
        (&INTRUDER_N1, &SERVER_N2, false),
        (&CLIENT_N1, &SERVER_N2, true),
        (&CLIENT_N2, &SERVER_N2, true),
        (&CLIENT_N2, &SERVER_N1, true),
    ]
}

/// What the probes must show without policies.
fn expect_without() -> Vec<(&'static BenchPod, &'static BenchPod, bool)> {
    vec![
        (&INTRUDER_N1, &SERVER_N1, true),
        (&INTRUDER_N1, &SERVER_N2, true),
        (&CLIENT_N1, &SERVER_N2, true),
    ]
}

fn wait_listening(ns: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let filter = format!("sport = :{port}");
    while Instant::now() < deadline {
        check_stop()?;
        if let Ok(out) = netns::run_in(ns, &["ss", "-Hltn", &filter]) {
            if !out.stdout.is_empty() {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("iperf3 is not listening on port {port} in {ns}")
}

fn iperf(lab: &Lab, pair: &Pair, secs: u64) -> anyhow::Result<f64> {
    let addr = lab.pod_ipv4(&pair.server)?.to_string();
    let t = secs.to_string();
    let port = IPERF_PORT.to_string();
    let out = netns::run_in_unchecked(
        &lab.pod_netns(&pair.client),
        &["iperf3", "-c", &addr, "-p", &port, "-t", &t, "-J"],
    )?;
    let run = bench::parse_iperf(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("iperf3 {}", pair.label))?;
    Ok(run.gbit_s())
}

/// Puts the policy set in force (`with`) or removes it; the times from the `meshctl` call to
/// the probes agreeing and to every meshd being idle again (done compiling and writing).
pub(crate) fn switch(
    lab: &Lab,
    with: bool,
    set_yaml: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let agreed = if with {
        lab.apply(set_yaml).context("apply the policy set")?;
        lab.wait_for_verdicts(&expect_with(), t0, IN_FORCE_WAIT)?
    } else {
        lab.delete(set_yaml).context("delete the policy set")?;
        lab.wait_for_verdicts(&expect_without(), t0, IN_FORCE_WAIT)?
    };
    let idle = lab.wait_meshd_idle(t0, IN_FORCE_WAIT)?;
    Ok((agreed, idle))
}

/// The condition of round `round` (1-based) at position `pos` (0 or 1): without/with in odd
/// rounds, with/without in even ones.
pub(crate) fn condition(round: u32, pos: usize) -> bool {
    (round % 2 == 1) == (pos == 1)
}

/// Runs `rounds` rounds of both conditions; leaves the set in force when `leave_with`.
pub(crate) fn measure(
    lab: &Lab,
    set_yaml: &str,
    rounds: u32,
    secs: u64,
    leave_with: bool,
) -> anyhow::Result<ThroughputResult> {
    let mut servers = Vec::new();
    for ns in PAIRS
        .iter()
        .map(|p| lab.pod_netns(&p.server))
        .collect::<std::collections::BTreeSet<_>>()
    {
        let port = IPERF_PORT.to_string();
        servers.push(ChildGuard::new(netns::spawn_in(
            &ns,
            &["iperf3", "-s", "-p", &port],
        )?));
        wait_listening(&ns, IPERF_PORT)?;
    }
    let mut result = ThroughputResult {
        pairs: PAIRS.iter().map(|p| PairThroughput::new(p.label)).collect(),
        ..Default::default()
    };
    // Warm-up (WireGuard handshake, caches), not counted.
    for pair in &PAIRS {
        iperf(lab, pair, 1).context("warm-up")?;
    }
    let mut with_now = false;
    for round in 1..=rounds {
        for pos in 0..2 {
            check_stop()?;
            let with = condition(round, pos);
            if with != with_now {
                eprintln!(
                    "policy-bench: {} the policy set",
                    if with { "applying" } else { "deleting" }
                );
                let (agreed, idle) = switch(lab, with, set_yaml)?;
                eprintln!(
                    "policy-bench:   probes agree after {:.0} ms, meshd idle after {:.0} ms",
                    agreed.as_secs_f64() * 1e3,
                    idle.as_secs_f64() * 1e3
                );
                let times = [agreed.as_secs_f64() * 1e3, idle.as_secs_f64() * 1e3];
                if with {
                    result.set_in_force_ms.push(times);
                } else {
                    result.set_removed_ms.push(times);
                }
                with_now = with;
                pause(Duration::from_secs(1))?;
            }
            for (pair, out) in PAIRS.iter().zip(result.pairs.iter_mut()) {
                eprintln!(
                    "policy-bench: round {round}/{rounds}, {}, {} policies",
                    pair.label,
                    if with { "with" } else { "without" }
                );
                let gbit = iperf(lab, pair, secs)?;
                if with {
                    out.with_gbit.push(gbit);
                } else {
                    out.without_gbit.push(gbit);
                }
                pause(Duration::from_millis(300))?;
            }
        }
    }
    if leave_with && !with_now {
        let (agreed, idle) = switch(lab, true, set_yaml)?;
        result
            .set_in_force_ms
            .push([agreed.as_secs_f64() * 1e3, idle.as_secs_f64() * 1e3]);
    }
    result.verified = true;
    Ok(result)
}
