//! NetworkPolicy conformance: the upstream Kubernetes e2e suite
//! (`test/e2e/network/netpol/network_policy.go`) re-encoded as meshd lab tests, plus endPort,
//! dual-stack ipBlock and implied-policyTypes cases upstream lacks. `docs/policy-conformance.md`
//! maps every upstream case to its test here.
//!
//! Two halves, over one list of cases:
//! * `offline::<case>` (no root): every case's hand-written truth tables against the reference
//!   evaluator on the fixtures, parsed by `meshd_policy::k8s` into the upstream model.
//! * `lab_conformance_suite` (root): one two-node lab with the nine model pods, every case in
//!   sequence (apply, probe until the stated table shows, clean up, wait for the baseline), on
//!   IPv4 and IPv6, then the policy change latency. Every failing case is reported by name at
//!   the end; the lab is torn down on drop, also on a panic. `NETPOL_CASES=a,b` runs only some
//!   cases; `NETPOL_PROBE_TIMEOUT_MS` sets the probe's connection timeout.
#![allow(clippy::unwrap_used, missing_docs)]

mod netpol;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use integration::lab::{self, Lab};
use netpol::cases::{self, Case};
use netpol::runner::{quantile, require_policy_lab_cli, LabRun};

/// Declares every case once: an offline test per case (named after it) and the list the lab
/// suite runs.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        /// Every case, in the order the lab runs them.
        fn all_cases() -> Vec<Case> {
            vec![$(cases::$case()),*]
        }

        mod offline {
            $(
                #[test]
                fn $case() {
                    let case = super::cases::$case();
                    assert_eq!(case.name, stringify!($case));
                    super::netpol::offline::prove(&case);
                }
            )*
        }
    };
}

cases! {
    // network_policy.go, "NetworkPolicy between server and client", in upstream's order.
    default_deny_ingress,
    default_deny_all,
    pod_selector,
    ingress_for_a_target,
    ingress_from_all_namespaces,
    namespace_selector,
    pod_selector_match_expressions,
    namespace_selector_match_expressions,
    pod_or_namespace_selector,
    pod_and_namespace_selector,
    multiple_pod_and_namespace_selectors,
    any_pod_selectors,
    pod_in_other_namespace,
    ports,
    stacked_policies,
    allow_all,
    named_port_ingress,
    named_port_ingress_from_namespace,
    named_port_egress,
    policy_update,
    namespace_relabel,
    pod_relabel,
    deny_ingress_from_other_namespaces,
    deny_ingress_to_updated_pod,
    deny_egress_pod_selector,
    deny_egress_namespace,
    ingress_and_egress_together,
    client_side_egress_deny,
    egress_to_pod_in_other_namespace,
    ingress_any_port_on_protocol,
    ingress_allow_all_precedence,
    egress_allow_all_precedence,
    delete_stops_enforcement,
    egress_to_cidr,
    cidr_except,
    overlapping_cidr_and_except,
    ingress_egress_independent,
    sctp_not_tcp,
    sctp_policy_isolates,
    udp_only_not_tcp,
    default_namespace_label_match_labels,
    default_namespace_label_match_expressions,
    // "... using UDP".
    udp_default_deny_ingress,
    udp_ports,
    udp_pod_in_other_namespace,
    // "... using SCTP".
    sctp_default_deny_ingress,
    sctp_ports,
    sctp_pod_in_other_namespace,
    // meshd additions.
    end_port_ingress,
    end_port_egress,
    dual_stack_ipblock,
    ingress_cidr_except,
    implied_policy_types,
}

/// Fixtures the cases do not name but the suite uses.
const OTHER_FIXTURES: [&str; 3] = ["model.yaml", "latency-deny.yaml", "latency-allow.yaml"];

#[test]
fn case_names_are_unique() {
    let mut names: Vec<_> = all_cases().iter().map(|c| c.name).collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n);
}

#[test]
fn every_fixture_is_used_and_converts() {
    let used: std::collections::BTreeSet<&str> = all_cases()
        .iter()
        .flat_map(cases::fixtures)
        .chain(OTHER_FIXTURES)
        .collect();
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(netpol::fixture::dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name.ends_with(".yaml"), "{name}: fixtures are YAML");
        on_disk.push(name);
    }
    for name in &on_disk {
        assert!(
            used.contains(name.as_str()),
            "fixture {name} is used by no case"
        );
        for family in [4, 6] {
            let text = netpol::offline::rendered(name, Some(family)).unwrap();
            for object in netpol::fixture::parse(&text).unwrap() {
                if let netpol::fixture::Object::Policy(p) = object {
                    meshd_policy::k8s::policy_from_k8s(&p)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
        }
    }
    for name in used {
        assert!(
            on_disk.iter().any(|n| n == name),
            "fixture {name} is missing"
        );
    }
}

/// `model.yaml` is the model the offline proof uses (`meshd_policy::e2e_model`): same
/// namespaces and labels (the namespace-name label added as the API server does), same pods,
/// labels and named ports; addresses left to the lab's CNI; pods on both lab nodes.
#[test]
fn the_model_fixture_is_the_e2e_model() {
    use meshd_policy::k8s;
    let world = meshd_policy::e2e_model::world();
    let text = netpol::fixture::text("model.yaml").unwrap();
    let mut namespaces = 0;
    let mut pods = 0;
    let mut nodes = std::collections::BTreeSet::new();
    for object in netpol::fixture::parse(&text).unwrap() {
        match object {
            netpol::fixture::Object::Namespace(n) => {
                let n = k8s::namespace_from_k8s(&n).unwrap();
                assert_eq!(world.namespaces[&n.name], n);
                namespaces += 1;
            }
            netpol::fixture::Object::Pod(p) => {
                assert!(p.status.is_none(), "the lab's CNI gives the addresses");
                let p = k8s::pod_from_k8s(&p).unwrap().unwrap();
                let model = &world.pods[&p.key];
                assert_eq!(p.labels, model.labels, "{}", p.key);
                assert_eq!(p.named_ports, model.named_ports, "{}", p.key);
                nodes.insert(p.node);
                pods += 1;
            }
            netpol::fixture::Object::Policy(_) => panic!("model.yaml holds no policy"),
        }
    }
    assert_eq!((namespaces, pods), (3, 9));
    assert_eq!(nodes, ["n1".into(), "n2".into()].into());
}

/// The cases `NETPOL_CASES` (comma-separated names) selects, else all.
fn selected_cases() -> Vec<Case> {
    let all = all_cases();
    let Ok(filter) = std::env::var("NETPOL_CASES") else {
        return all;
    };
    let wanted: Vec<&str> = filter.split(',').map(str::trim).collect();
    for w in &wanted {
        assert!(
            all.iter().any(|c| c.name == *w),
            "NETPOL_CASES names {w:?}, which is no case"
        );
    }
    all.into_iter()
        .filter(|c| wanted.contains(&c.name))
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn lab_conformance_suite() {
    testkit::require_tools(lab::TOOLS);
    require_policy_lab_cli();
    let started = Instant::now();
    let cases = selected_cases();
    // Two nodes; the lab's own pod per node stays out of the tables.
    let lab = Lab::up(2, 1).unwrap();
    let mut run = LabRun::start(&lab).unwrap();
    println!("model up after {:?}", started.elapsed());
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut aborted = None;
    for (i, case) in cases.iter().enumerate() {
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| run.run_case(case)));
        match outcome {
            Ok(Ok(errors)) => {
                let verdict = if errors.is_empty() { "ok" } else { "FAILED" };
                println!("{:<45} {verdict} in {:?}", case.name, t.elapsed());
                for e in errors {
                    println!("{e}");
                    failures.push((case.name.to_owned(), format!("({})\n{e}", case.upstream)));
                }
            }
            Ok(Err(e)) => {
                failures.push((case.name.to_owned(), format!("{e:#}")));
                aborted = Some((i, format!("{e:#}")));
                break;
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push((case.name.to_owned(), format!("panicked: {message}")));
                aborted = Some((i, message));
                break;
            }
        }
    }
    if let Some((i, why)) = &aborted {
        let rest: Vec<&str> = cases[i + 1..].iter().map(|c| c.name).collect();
        println!(
            "stopped after {}: the lab could not be brought back ({why}); not run: {}",
            cases[*i].name,
            rest.join(", ")
        );
    }

    let times: Vec<Duration> = run.timings.iter().map(|t| t.elapsed).collect();
    println!(
        "apply → table on every node, {} changes (resolution: one full probe): p50 {}, p99 {}, \
         max {}",
        times.len(),
        ms(quantile(&times, 0.5)),
        ms(quantile(&times, 0.99)),
        ms(quantile(&times, 1.0))
    );
    for t in &run.timings {
        println!("  {:<60} {} ({} probes)", t.what, ms(t.elapsed), t.probes);
    }

    if aborted.is_none() {
        match netpol::latency::measure(&run, 20) {
            Ok(samples) => println!(
                "policy change latency, apply → enforced on both nodes ({} samples, IPv4 and \
                 IPv6, {} resolution): p50 {}, p99 {}, max {} (target p99 ≤ 100 ms)",
                samples.len(),
                ms(netpol::latency::ATTEMPT),
                ms(quantile(&samples, 0.5)),
                ms(quantile(&samples, 0.99)),
                ms(quantile(&samples, 1.0))
            ),
            Err(e) => failures.push(("policy_change_latency".to_owned(), format!("{e:#}"))),
        }
    }
    println!("suite took {:?}", started.elapsed());
    let names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        failures.is_empty(),
        "{} failing: {}\n\n{}",
        failures.len(),
        names.join(", "),
        failures
            .iter()
            .map(|(n, e)| format!("== {n}\n{e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
