//! The offline proof of the cases' expectations, without root or a lab: every fixture is parsed
//! with `meshd_policy::k8s` into the upstream model's world (`meshd_policy::e2e_model`), every
//! pair is judged by the reference evaluator (`meshd_policy::reference::allowed`), and the
//! result must equal the table the case states by hand — loopback pairs included, since the
//! API's semantics say what they are even where a datapath never sees them.
//!
//! A mismatch means the expectation or the reference evaluator is wrong; the lab suite then
//! checks the same expectations against the datapath.

use std::net::IpAddr;

use anyhow::Context as _;
use meshd_policy::e2e_model;
use meshd_policy::k8s;
use meshd_policy::model::{PodKey, World};
use meshd_policy::reference;

use super::cases::{fixtures, Action, Case};
use super::fixture;
use super::reachability::{diff, index, pod_names, Table, N};

/// A pod's address of `family` in the model (`10.0.0.i`, `fd00::i`).
pub fn model_address(world: &World, pod: &str, family: u8) -> anyhow::Result<IpAddr> {
    let (ns, name) = pod.split_once('/').context("pod is not ns/name")?;
    world
        .pods
        .get(&PodKey::new(ns, name))
        .with_context(|| format!("no pod {pod} in the model"))?
        .addresses
        .iter()
        .copied()
        .find(|a| {
            if family == 4 {
                a.is_ipv4()
            } else {
                a.is_ipv6()
            }
        })
        .with_context(|| format!("{pod} has no IPv{family} address"))
}

/// A fixture rendered for `family` with the model's addresses.
pub fn rendered(name: &str, family: Option<u8>) -> anyhow::Result<String> {
    let world = e2e_model::world();
    fixture::render(&fixture::text(name)?, family, &|pod, f| {
        model_address(&world, pod, f)
    })
}

/// Applies one action of a case to the model world.
fn act(world: &mut World, action: &Action, family: Option<u8>) -> anyhow::Result<()> {
    match action {
        Action::Apply(name) => {
            for p in fixture::policies(&rendered(name, family)?)? {
                let policy = k8s::policy_from_k8s(&p).with_context(|| format!("in {name}"))?;
                world.policies.insert(policy.key.clone(), policy);
            }
        }
        Action::Delete(name) => {
            for p in fixture::policies(&rendered(name, family)?)? {
                let policy = k8s::policy_from_k8s(&p).with_context(|| format!("in {name}"))?;
                world.policies.remove(&policy.key);
            }
        }
        Action::LabelPod(pod, label) => {
            let (ns, name) = pod.split_once('/').context("pod is not ns/name")?;
            let mut held = world
                .pods
                .get_mut(&PodKey::new(ns, name))
                .with_context(|| format!("no pod {pod}"))?;
            let mut relabelled = held.labels.to_labels();
            relabel(&mut relabelled, label);
            held.labels = relabelled.into();
        }
        Action::LabelNamespace(ns, label) => {
            let labels = &mut world
                .namespaces
                .get_mut(*ns)
                .with_context(|| format!("no namespace {ns}"))?
                .labels;
            relabel(labels, label);
        }
    }
    Ok(())
}

fn relabel(labels: &mut std::collections::BTreeMap<String, String>, label: &str) {
    match label.split_once('=') {
        Some((k, v)) => {
            labels.insert(k.to_owned(), v.to_owned());
        }
        None => {
            labels.remove(label.trim_end_matches('-'));
        }
    }
}

/// The reference evaluator's table of `world` for one protocol, port and family.
pub fn reference_table(
    world: &World,
    protocol: meshd_policy::model::Protocol,
    port: u16,
    family: u8,
) -> Table {
    let names = pod_names();
    let mut table = Table::all(false);
    for from in &names {
        for to in &names {
            let endpoint = |pod: &String| {
                let (ns, name) = pod.split_once('/').unwrap_or_default();
                e2e_model::endpoint(world, &PodKey::new(ns, name), family)
            };
            let verdict = reference::allowed(
                world,
                &endpoint(from),
                &endpoint(to),
                protocol.number(),
                port,
            );
            table.set(index(from), index(to), verdict);
        }
    }
    debug_assert_eq!(names.len(), N);
    table
}

/// Every disagreement between `case`'s stated tables and the reference evaluator, as readable
/// reports (empty: the case's expectations are the API's semantics).
pub fn disagreements(case: &Case) -> anyhow::Result<Vec<String>> {
    let runs: Vec<Option<u8>> = if case.per_family {
        vec![Some(4), Some(6)]
    } else {
        vec![None]
    };
    let mut out = Vec::new();
    for run in runs {
        let mut world = e2e_model::world();
        for (i, step) in case.steps.iter().enumerate() {
            act(&mut world, &step.action, run)
                .with_context(|| format!("{} step {}: {:?}", case.name, i + 1, step.action))?;
            for check in &step.checks {
                for family in [4, 6] {
                    if run.is_some_and(|r| r != family) || !check.covers(family) {
                        continue;
                    }
                    let observed = reference_table(&world, check.protocol, check.port, family);
                    if !check.expected.matches(&observed, false) {
                        out.push(format!(
                            "{} step {} ({:?}), {}/{} IPv{family}: the case states the left table, \
                             the reference evaluator gives the middle one\n{}",
                            case.name,
                            i + 1,
                            step.action,
                            check.protocol,
                            check.port,
                            diff(&check.expected, &observed, false)
                        ));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Fails (with every table that differs) unless the reference agrees with `case` everywhere.
pub fn prove(case: &Case) {
    assert!(
        !case.steps.is_empty() && case.steps.iter().all(|s| !s.checks.is_empty()),
        "{}: every case has steps and every step checks something",
        case.name
    );
    for name in fixtures(case) {
        assert!(
            fixture::dir().join(name).is_file(),
            "{}: fixture {name} is missing",
            case.name
        );
    }
    let wrong = disagreements(case).unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
    assert!(
        wrong.is_empty(),
        "{} (upstream: {})\n{}",
        case.name,
        case.upstream,
        wrong.join("\n")
    );
}
