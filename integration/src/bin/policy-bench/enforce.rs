//! Target 2: policy applied → enforced on all nodes. Each sample is one `meshctl lab apply` of
//! the flip policy, alternately opening and closing [`FLIP_PORT`] on both servers to the
//! clients, while a prober per node-pair (client on n1 → server on n2, enforced by n2's
//! `to_pod`; client on n2 → server on n1, enforced by n1's) sends a new connection every
//! `interval` from inside the client's namespace. A sample is the later of the two pairs'
//! times from invoking `meshctl` to the new verdict (see [`crate::stats::enforced_after`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use testkit::netns;

use crate::lab::Lab;
use crate::manifests::{
    flip_policy, yaml_stream, BenchPod, CLIENT_N1, CLIENT_N2, FLIP_PORT, SERVER_N1, SERVER_N2,
};
use crate::prober::{probe_until, ProbeTiming};
use crate::report::{EnforceResult, EnforceSample};
use crate::stats::{enforced_after, longest_gap};
use crate::stop::{check_stop, pause, stopping};

/// The probed pairs: one enforced on each node.
const PAIRS: [(BenchPod, BenchPod); 2] = [(CLIENT_N1, SERVER_N2), (CLIENT_N2, SERVER_N1)];

/// Pause between samples: 50..250 ms, varied so that samples do not lock onto a timer of
/// the daemon.
pub(crate) fn gap(sample: usize) -> Duration {
    Duration::from_millis(50 + (sample as u64 * 37) % 200)
}

struct Target {
    netns: String,
    to: SocketAddr,
}

/// One apply of the flip policy (`allow` or not) with both probers running: per pair the time
/// to the new verdict (`None`: not seen within `timing.max_wait`) and how long `meshctl` took.
fn one_flip(
    lab: &Lab,
    targets: &[Target],
    allow: bool,
    timing: ProbeTiming,
) -> anyhow::Result<(Vec<Option<Duration>>, Duration, Duration)> {
    let yaml = yaml_stream(&[flip_policy(allow)]);
    let t0 = OnceLock::new();
    let stop = AtomicBool::new(false);
    let readies: Vec<AtomicBool> = targets.iter().map(|_| AtomicBool::new(false)).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .zip(&readies)
            .map(|(target, ready)| {
                let (t0, stop) = (&t0, &stop);
                scope.spawn(move || {
                    netns::within(&target.netns, || {
                        probe_until(target.to, allow, timing, t0, ready, stop)
                    })
                })
            })
            .collect();
        let apply = (|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !readies.iter().all(|r| r.load(Ordering::SeqCst)) {
                if Instant::now() > deadline {
                    return Err(anyhow!("probers did not start"));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let start = Instant::now();
            let _ = t0.set(start);
            lab.apply(&yaml).context("apply the flip policy")?;
            Ok((start, start.elapsed()))
        })();
        if apply.is_err() || stopping() {
            stop.store(true, Ordering::SeqCst);
            let _ = t0.set(Instant::now());
        }
        let mut per_pair = Vec::new();
        for h in handles {
            let attempts = h
                .join()
                .map_err(|_| anyhow!("prober panicked"))?
                .context("enter the client's namespace")??;
            per_pair.push(attempts);
        }
        let (start, meshctl_took) = apply?;
        let gap = per_pair
            .iter()
            .map(|a| longest_gap(a))
            .max()
            .unwrap_or_default();
        Ok((
            per_pair
                .iter()
                .map(|a| enforced_after(start, a, allow))
                .collect(),
            meshctl_took,
            gap,
        ))
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `samples` flips, opening first; before them the flip policy is applied closed and its
/// closed state confirmed by the probers.
pub(crate) fn measure(
    lab: &Lab,
    samples: usize,
    timing: ProbeTiming,
) -> anyhow::Result<EnforceResult> {
    let targets = PAIRS
        .iter()
        .map(|(client, server)| {
            Ok(Target {
                netns: lab.pod_netns(client),
                to: SocketAddr::new(lab.pod_ipv4(server)?, FLIP_PORT),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The starting state: closed on both nodes.
    let (closed, _, _) = one_flip(lab, &targets, false, timing)?;
    if closed.iter().any(Option::is_none) {
        anyhow::bail!(
            "the flip policy's closed state is not in force within {:?}",
            timing.max_wait
        );
    }
    let pids = lab.meshd_pids()?;
    let mut result = EnforceResult::default();
    for k in 0..samples {
        check_stop()?;
        pause(gap(k))?;
        let allow = k % 2 == 0;
        let before = Lab::meshd_schedstat(&pids);
        let (per_pair, meshctl_took, gap) = one_flip(lab, &targets, allow, timing)?;
        let after = Lab::meshd_schedstat(&pids);
        let all = per_pair
            .iter()
            .try_fold(Duration::ZERO, |acc, p| p.map(|d| acc.max(d)));
        let sample = EnforceSample {
            allow,
            all_nodes_ms: all.map(ms),
            per_node_ms: per_pair.iter().map(|p| p.map(ms)).collect(),
            meshctl_ms: ms(meshctl_took),
            prober_gap_ms: ms(gap),
            meshd_cpu_ms: after.0.saturating_sub(before.0) as f64 / 1e6,
            meshd_wait_ms: after.1.saturating_sub(before.1) as f64 / 1e6,
        };
        let show = |v: &[Option<f64>]| {
            v.iter()
                .map(|x| x.map_or("?".into(), |m| format!("{m:.1}")))
                .collect::<Vec<_>>()
                .join("/")
        };
        eprintln!(
            "policy-bench: flip {}/{samples} ({}): {} (per node n2/n1 {} ms; meshctl {:.1} ms; \
             meshd on CPU {:.1} ms, waiting for CPU {:.1} ms; prober gap {:.1} ms)",
            k + 1,
            if allow { "open" } else { "close" },
            sample
                .all_nodes_ms
                .map_or("not seen".into(), |m| format!("{m:.1} ms")),
            show(&sample.per_node_ms),
            sample.meshctl_ms,
            sample.meshd_cpu_ms,
            sample.meshd_wait_ms,
            sample.prober_gap_ms,
        );
        result.samples.push(sample);
        if all.is_none() {
            // The state is unknown: put it back to what the next sample expects.
            let (again, _, _) = one_flip(lab, &targets, allow, timing)?;
            if again.iter().any(Option::is_none) {
                anyhow::bail!("the flip policy does not take effect; giving up");
            }
        }
    }
    result.summarise();
    Ok(result)
}
