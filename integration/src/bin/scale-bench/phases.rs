//! The measurements, in the order a run takes them: cold convergence, one new node at a time
//! (latency, then CPU time per event), memory, and the steady-state write count.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use integration::bench::{self, stop::check_stop, stop::pause};
use integration::lab::Lab;

use crate::agents::{wait_status, with_signals_unblocked, Agent, Status};
use crate::report::{AgentCost, ColdAgent, Report, WriteWindow};
use crate::sim::{self, SimNode};
use crate::writes::WriteCounter;

/// Most consecutive additions that may time out before the latency phase gives up.
const MAX_MISSED_ADDITIONS: u32 = 3;

/// Everything the phases share.
pub(crate) struct Run<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) agents: Vec<Agent>,
    pub(crate) registry: &'a Path,
    pub(crate) sims: Vec<SimNode>,
    /// Simulated nodes the address plan is sized for (all that will ever be added).
    pub(crate) capacity: u32,
    pub(crate) counter: WriteCounter,
    pub(crate) clk_tck: u64,
}

impl Run<'_> {
    /// Every node name an agent must peer with: all simulated ones and the other agents.
    fn expected(&self, agent: &Agent) -> HashSet<String> {
        self.sims
            .iter()
            .map(SimNode::name)
            .chain(self.agents.iter().map(|a| a.name.clone()))
            .filter(|n| *n != agent.name)
            .collect()
    }

    /// Adds simulated node `i` (published at once).
    fn add(&mut self, i: u32) -> anyhow::Result<()> {
        let n = SimNode::new(i);
        sim::publish(self.registry, &n, self.capacity).context("writing a record")?;
        self.sims.push(n);
        Ok(())
    }

    pub(crate) fn agent_names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.name.clone()).collect()
    }
}

/// Whether `st` programs every name of `expected` and its last pass converged.
fn complete(st: &Status, expected: &HashSet<String>) -> bool {
    let have = st.peer_names();
    st.converged && expected.iter().all(|n| have.contains(n.as_str()))
}

/// Cold convergence: every agent's meshd stopped, the N records written, every meshd
/// started again; the time until each reports all N peers programmed.
pub(crate) fn cold(
    run: &mut Run<'_>,
    nodes: u32,
    timeout: Duration,
    r: &mut Report,
) -> anyhow::Result<()> {
    for a in &run.agents {
        run.lab.meshctl(&["lab", "stop-node", &a.name])?;
    }
    let started = Instant::now();
    for i in 0..nodes {
        if i % 1_000 == 0 {
            check_stop()?;
        }
        run.add(i)?;
    }
    r.publish_s = started.elapsed().as_secs_f64();
    let mut starts = Vec::new();
    for a in &run.agents {
        let lab = run.lab;
        with_signals_unblocked(|| lab.meshctl(&["lab", "start-node", &a.name]))?;
        starts.push(Instant::now());
    }
    let run = &*run;
    r.cold = std::thread::scope(|s| {
        let handles: Vec<_> = run
            .agents
            .iter()
            .zip(starts)
            .map(|(a, t0)| {
                s.spawn(move || {
                    let expected = run.expected(a);
                    let every = Duration::from_millis(20);
                    let mut c = ColdAgent {
                        node: a.name.clone(),
                        ..Default::default()
                    };
                    match wait_status(a, t0, timeout, every, |st| complete(st, &expected)) {
                        Ok(t) => c.converged_s = Some(t.as_secs_f64()),
                        Err(last) => {
                            if let Some(st) = last {
                                c.peers_seen = Some(st.peers.len());
                                c.reconcile_errors = Some(st.counters.reconcile_errors);
                                c.failure.push(format!(
                                    "status: converged {}, {} of {} peers programmed, {} of {} \
                                     passes failed, {} conflicts",
                                    st.converged,
                                    st.peers.len(),
                                    expected.len(),
                                    st.counters.reconcile_errors,
                                    st.counters.reconciles,
                                    st.conflicts.len()
                                ));
                            }
                            c.failure.extend(a.last_errors(3));
                        }
                    }
                    c
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    r.cold_convergence_s = if r.cold.iter().all(|c| c.converged_s.is_some()) {
        r.cold.iter().filter_map(|c| c.converged_s).reduce(f64::max)
    } else {
        None
    };
    Ok(())
}

/// One new node at a time: the time from its record's rename to every agent's status
/// listing it (the slowest agent), `samples` times; then as many again without watching, for
/// the CPU time per event; then the RSS.
pub(crate) fn additions(
    run: &mut Run<'_>,
    samples: u32,
    poll: Duration,
    timeout: Duration,
    r: &mut Report,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        run.agents[0].status()?;
        query.push(t.elapsed().as_secs_f64() * 1e3);
    }
    r.status_query_ms = bench::spread(&query).map(|s| s.median);

    let mut latencies = Vec::new();
    let mut missed = 0;
    for _ in 0..samples {
        check_stop()?;
        let i = run.sims.len() as u32;
        run.add(i)?;
        let t0 = Instant::now();
        let name = sim::name(i);
        let agents = &run.agents;
        let slowest = std::thread::scope(|s| {
            let hs: Vec<_> = agents
                .iter()
                .map(|a| {
                    let name = &name;
                    s.spawn(move || {
                        wait_status(a, t0, timeout, poll, |st| {
                            st.peers.iter().any(|p| p.name == *name)
                        })
                        .ok()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().ok().flatten())
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().max())
        });
        match slowest {
            Some(t) => {
                missed = 0;
                latencies.push(t.as_secs_f64() * 1e3);
            }
            None => {
                missed += 1;
                r.errors.push(format!(
                    "record {name} not programmed on every agent within {timeout:?}"
                ));
                if missed >= MAX_MISSED_ADDITIONS {
                    r.errors.push("latency phase abandoned".into());
                    break;
                }
            }
        }
        pause(Duration::from_millis(50))?;
    }
    r.addition_samples = latencies.len();
    r.addition_ms_p50 = bench::percentile(&latencies, 50.0);
    r.addition_ms_p99 = bench::percentile(&latencies, 99.0);

    // CPU per event: the same additions, 100 ms apart, nobody reading the status meanwhile;
    // then one status read a second until the last is programmed everywhere (counted: each
    // read costs meshd a little too).
    pause(Duration::from_secs(1))?;
    let before: Vec<_> = run
        .agents
        .iter()
        .map(Agent::cpu_ticks)
        .collect::<Result<_, _>>()?;
    for _ in 0..samples {
        check_stop()?;
        let i = run.sims.len() as u32;
        run.add(i)?;
        pause(Duration::from_millis(100))?;
    }
    let last = sim::name(run.sims.len() as u32 - 1);
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let programmed: Vec<bool> = run
        .agents
        .iter()
        .map(|a| {
            wait_status(a, t0, timeout, second, |st| {
                st.peers.iter().any(|p| p.name == last)
            })
            .is_ok()
        })
        .collect();
    let after: Vec<_> = run
        .agents
        .iter()
        .map(Agent::cpu_ticks)
        .collect::<Result<_, _>>()?;
    let per_event = |d: u64| d as f64 * 1e3 / run.clk_tck as f64 / f64::from(samples);
    for (((a, b), e), programmed) in run.agents.iter().zip(before).zip(after).zip(programmed) {
        let (meshd, wg) = a.rss_kib()?;
        r.agents.push(AgentCost {
            node: a.name.clone(),
            meshd_rss_mib: meshd as f64 / 1024.0,
            datapath_rss_mib: wg as f64 / 1024.0,
            total_rss_mib: (meshd + wg) as f64 / 1024.0,
            meshd_cpu_ms_per_event: programmed.then(|| per_event(e.0.saturating_sub(b.0))),
            datapath_cpu_ms_per_event: programmed.then(|| per_event(e.1.saturating_sub(b.1))),
        });
        if !programmed {
            r.errors.push(format!(
                "{}: the CPU-time additions were not all programmed within {timeout:?}",
                a.name
            ));
        }
    }
    Ok(())
}

/// Registry writes over `window` with nothing changing.
pub(crate) fn steady(run: &Run<'_>, window: Duration, r: &mut Report) -> anyhow::Result<()> {
    let before = run.counter.snapshot();
    let t = Instant::now();
    pause(window)?;
    let after = run.counter.snapshot();
    let secs = t.elapsed().as_secs_f64();
    let (agent, other) = after.since(&before, &run.agent_names());
    let nodes = (run.sims.len() + run.agents.len()) as f64;
    let per_hour = (agent + other) as f64 * 3600.0 / secs;
    r.steady = Some(WriteWindow {
        window_s: secs,
        agent_writes: agent,
        simulated_writes: other,
        writes_per_node_per_hour: per_hour / nodes,
        watch_events_per_agent_per_hour: per_hour,
    });
    Ok(())
}
