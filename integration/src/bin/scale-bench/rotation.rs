//! Every node rotating its keys once, counting the registry writes it takes.
//!
//! First the real agents rotate (`meshctl lab rotate-key`) while the harness acknowledges each
//! of their steps in every simulated node's record, as every other node's meshd would; then
//! the simulated nodes rotate together, step by step (drain slot 0, replace its key, drain
//! slot 1, replace, lift), each step waiting until every real agent acknowledged it in its own
//! record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use integration::bench::stop::{check_stop, pause};
use keyexchange::NodeRecord;

use crate::phases::Run;
use crate::report::RotationResult;
use crate::sim;

/// Steps of one rotation of both slots.
const STEPS: u32 = 5;
/// How long every real agent may take to acknowledge one simulated step.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// First serial of the simulated nodes' rotation.
const FIRST_SERIAL: u64 = 1_000;

/// A real agent's record as it stands in the registry.
fn agent_record(run: &Run<'_>, name: &str) -> anyhow::Result<NodeRecord> {
    let path = run.registry.join(format!("{name}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    NodeRecord::from_json(name, &text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The real agents rotate; the simulated nodes acknowledge their steps. Returns the ack
/// writes and the agents' outcomes.
fn rotate_real(run: &mut Run<'_>) -> anyhow::Result<(u64, Vec<String>)> {
    let done = AtomicBool::new(false);
    let acks = AtomicU64::new(0);
    let names = run.agent_names();
    let outcome = std::thread::scope(|s| -> anyhow::Result<Vec<String>> {
        let (done, acks) = (&done, &acks);
        let run_ref = &mut *run;
        let (lab, sims, registry, capacity) = (
            run_ref.lab,
            &mut run_ref.sims,
            run_ref.registry,
            run_ref.capacity,
        );
        let agents_view: Vec<String> = names.clone();
        let acker = s.spawn(move || -> anyhow::Result<()> {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            while !done.load(Ordering::SeqCst) {
                for name in &agents_view {
                    let path = registry.join(format!("{name}.json"));
                    let Ok(text) = std::fs::read_to_string(&path) else {
                        continue;
                    };
                    let Ok(rec) = NodeRecord::from_json(name, &text) else {
                        continue;
                    };
                    let Some(step) = rec.rotation.step else {
                        continue;
                    };
                    if seen.get(name) == Some(&step.serial) {
                        continue;
                    }
                    seen.insert(name.clone(), step.serial);
                    for n in sims.iter_mut() {
                        n.acks.insert(name.clone(), step.serial);
                        sim::publish(registry, n, capacity)?;
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        let out = lab.meshctl(&["lab", "rotate-key", "-o", "json"]);
        done.store(true, Ordering::SeqCst);
        acker
            .join()
            .map_err(|_| anyhow::anyhow!("the ack thread panicked"))??;
        let text = match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => return Ok(vec![format!("rotate-key failed: {e:#}")]),
        };
        let v: serde_json::Value = serde_json::from_str(&text).context("rotate-key output")?;
        Ok(v.as_object()
            .into_iter()
            .flatten()
            .map(|(node, o)| {
                format!(
                    "{node} {} ({})",
                    if o["ok"] == true { "ok" } else { "ABANDONED" },
                    o["message"].as_str().unwrap_or("")
                )
            })
            .collect())
    })?;
    Ok((acks.load(Ordering::SeqCst), outcome))
}

/// The simulated nodes rotate together; returns the steps completed.
fn rotate_simulated(run: &mut Run<'_>, step_writes: &mut u64) -> anyhow::Result<u32> {
    let names = run.agent_names();
    for k in 1..=STEPS {
        check_stop()?;
        let serial = FIRST_SERIAL + u64::from(k);
        for n in run.sims.iter_mut() {
            n.rotation_step(k, serial);
            sim::publish(run.registry, n, run.capacity)?;
            *step_writes += 1;
        }
        if k == STEPS {
            return Ok(k);
        }
        let t = Instant::now();
        loop {
            let mut missing = Vec::new();
            for a in &names {
                let rec = agent_record(run, a)?;
                let behind = run
                    .sims
                    .iter()
                    .filter(|n| rec.rotation.acks.get(&n.name()).copied().unwrap_or(0) < serial)
                    .count();
                if behind > 0 {
                    missing.push(format!("{a}: {behind} not acknowledged"));
                }
            }
            if missing.is_empty() {
                break;
            }
            if t.elapsed() > ACK_TIMEOUT {
                bail!(
                    "step {k} of the simulated rotation (serial {serial}) not acknowledged within \
                     {ACK_TIMEOUT:?}: {}",
                    missing.join(", ")
                );
            }
            pause(Duration::from_millis(50))?;
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
    let (acks, outcomes) = rotate_real(run)?;
    r.simulated_ack_writes = acks;
    r.real_outcomes = outcomes;
    let mut step_writes = 0;
    match rotate_simulated(run, &mut step_writes) {
        Ok(k) => r.simulated_steps_done = k,
        Err(e) => r.error = Some(format!("{e:#}")),
    }
    r.simulated_step_writes = step_writes;
    // Let the agents' acknowledgements of the last steps land.
    pause(Duration::from_secs(2))?;
    r.duration_s = t.elapsed().as_secs_f64();
    let after = run.counter.snapshot();
    let (agent, _) = after.since(&before, &run.agent_names());
    r.agent_writes = agent;
    let total = r.simulated_step_writes + r.simulated_ack_writes + agent;
    r.writes_per_node_per_rotation = total as f64 / (run.sims.len() + run.agents.len()) as f64;
    r.watch_events_per_agent = after.total_since(&before);
    Ok(r)
}
