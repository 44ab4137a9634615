//! Every node rotating its keys once, counting the registry writes it takes.
//!
//! First the real agents rotate (`meshctl lab rotate-key`): they prove their peers' readiness
//! from their own devices, so nobody writes for them (simulated peers never handshake, so
//! they are excused as silent). Then the simulated nodes rotate together, step by step as
//! meshd does (drain slot 0, replace its key, drain slot 1, its new key with the drain
//! lifted), and every real agent must still program all of them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use integration::bench::stop::{check_stop, pause};

use crate::agents::wait_status;
use crate::phases::Run;
use crate::report::RotationResult;
use crate::sim;

/// Steps (record writes) of one rotation of both slots.
const STEPS: u32 = 4;
/// Time between two steps of the simulated rotation (a real node waits at least a second
/// with a slot drained before replacing its key).
const STEP_PAUSE: Duration = Duration::from_secs(2);
/// How long every real agent may take to program every rotated simulated node.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// First serial of the simulated nodes' rotation.
const FIRST_SERIAL: u64 = 1_000;

/// The real agents rotate (`meshctl lab rotate-key`, all at once); nobody writes for them.
/// Returns the agents' outcomes, each with the time the rotation of every agent took.
fn rotate_real(run: &Run<'_>) -> Vec<String> {
    let t = Instant::now();
    let result = run.lab.meshctl(&["lab", "rotate-key", "-o", "json"]);
    let took = t.elapsed().as_secs_f64();
    let text = match result {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => return vec![format!("rotate-key failed after {took:.1} s: {e:#}")],
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return vec![format!("rotate-key said: {text}")];
    };
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(node, o)| {
            format!(
                "{node} {} in {took:.1} s ({})",
                if o["ok"] == true { "ok" } else { "ABANDONED" },
                o["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The simulated nodes rotate together, one step every [`STEP_PAUSE`]; after the last, every
/// real agent must still program every simulated node (a step it missed or refused, key
/// continuity for instance, would leave that node out). Returns the steps completed.
fn rotate_simulated(run: &mut Run<'_>, step_writes: &mut u64) -> anyhow::Result<u32> {
    for k in 1..=STEPS {
        check_stop()?;
        let serial = FIRST_SERIAL + u64::from(k);
        for n in run.sims.iter_mut() {
            n.rotation_step(k, serial);
            sim::publish(run.registry, n, run.capacity)?;
            *step_writes += 1;
        }
        pause(STEP_PAUSE)?;
    }
    let expected: HashSet<String> = run.sims.iter().map(sim::SimNode::name).collect();
    for agent in &run.agents {
        let programmed = wait_status(agent, Instant::now(), SETTLE_TIMEOUT, STEP_PAUSE, |st| {
            let have = st.peer_names();
            st.conflicts.is_empty() && expected.iter().all(|n| have.contains(n.as_str()))
        });
        if let Err(last) = programmed {
            let missing = last.map_or(expected.len(), |st| {
                let have = st.peer_names();
                expected
                    .iter()
                    .filter(|n| !have.contains(n.as_str()))
                    .count()
            });
            bail!(
                "{}: {missing} simulated nodes not programmed {SETTLE_TIMEOUT:?} after their \
                 rotation",
                agent.name
            );
        }
    }
    Ok(STEPS)
}

/// Every node rotates once (see the module docs).
pub(crate) fn rotation(run: &mut Run<'_>) -> anyhow::Result<RotationResult> {
    let before = run.counter.snapshot();
    let t = Instant::now();
    let mut r = RotationResult {
        simulated_steps_planned: STEPS,
        ..Default::default()
    };
    r.real_outcomes = rotate_real(run);
    let mut step_writes = 0;
    match rotate_simulated(run, &mut step_writes) {
        Ok(k) => r.simulated_steps_done = k,
        Err(e) => r.error = Some(format!("{e:#}")),
    }
    r.simulated_step_writes = step_writes;
    r.duration_s = t.elapsed().as_secs_f64();
    let after = run.counter.snapshot();
    let (agent, _) = after.since(&before, &run.agent_names());
    r.agent_writes = agent;
    let total = r.simulated_step_writes + agent;
    r.writes_per_node_per_rotation = total as f64 / (run.sims.len() + run.agents.len()) as f64;
    r.watch_events_per_agent = after.total_since(&before);
    Ok(r)
}
