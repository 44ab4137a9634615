//! Tests of the pure parts: the generated objects (they convert with meshd's policy compiler
//! and, judged by its reference evaluator, keep exactly the verdicts the bench relies on), the
//! enforcement-time arithmetic, the statistics and the targets' verdicts.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use meshd_policy::model::{PodKey, Protocol, World};
use meshd_policy::reference::{allowed, Endpoint};
use serde_json::Value;

use crate::manifests::*;
use crate::report::{EnforceResult, EnforceSample, PairThroughput, Report, ThroughputResult};
use crate::stats::*;

/// 10.244.K.(10+J): a made-up address for the J-th pod on node nK.
fn address_of(index: usize, pod: &BenchPod) -> IpAddr {
    let node: u8 = pod.node.trim_start_matches('n').parse().unwrap();
    IpAddr::V4(Ipv4Addr::new(10, 244, node, 10 + index as u8))
}

/// The world `apply` would give meshd: the setup objects with addresses, plus `policies`.
fn world_with(policies: &[Value]) -> World {
    let mut world = World::default();
    for doc in setup_objects() {
        match doc["kind"].as_str().unwrap() {
            "Namespace" => {
                let mut doc = doc.clone();
                let name = doc["metadata"]["name"].as_str().unwrap().to_string();
                doc["metadata"]["labels"]["kubernetes.io/metadata.name"] = name.clone().into();
                let ns: core::Namespace = serde_json::from_value(doc).unwrap();
                let ns = meshd_policy::k8s::namespace_from_k8s(&ns).unwrap();
                world.namespaces.insert(ns.name.clone(), ns);
            }
            "Pod" => {
                let mut doc = doc.clone();
                let i = PODS
                    .iter()
                    .position(|p| p.name == doc["metadata"]["name"])
                    .unwrap();
                let ip = address_of(i, &PODS[i]).to_string();
                doc["status"] = serde_json::json!({"podIP": ip, "podIPs": [{"ip": ip}],
                                                   "phase": "Running"});
                let pod: core::Pod = serde_json::from_value(doc).unwrap();
                let pod = meshd_policy::k8s::pod_from_k8s(&pod).unwrap().unwrap();
                world.pods.insert(pod.key.clone(), pod.into());
            }
            other => panic!("unexpected {other}"),
        }
    }
    for doc in policies {
        let p: networking::NetworkPolicy = serde_json::from_value(doc.clone()).unwrap();
        let p = meshd_policy::k8s::policy_from_k8s(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", doc["metadata"]["name"]));
        world.policies.insert(p.key.clone(), p);
    }
    world
}

fn endpoint(pod: &BenchPod) -> Endpoint {
    let i = PODS.iter().position(|p| p == pod).unwrap();
    Endpoint::Pod {
        pod: PodKey {
            namespace: pod.namespace.into(),
            name: pod.name.into(),
        },
        address: address_of(i, pod),
    }
}

fn tcp(world: &World, from: &BenchPod, to: &BenchPod, port: u16) -> bool {
    allowed(
        world,
        &endpoint(from),
        &endpoint(to),
        Protocol::Tcp.number(),
        port,
    )
}

#[test]
fn the_policy_set_has_exactly_n_uniquely_named_policies_over_several_namespaces() {
    for n in [3, 4, 100, 1000] {
        let set = policy_set(n);
        assert_eq!(set.len(), n);
        let names: BTreeSet<(String, String)> = set
            .iter()
            .map(|p| {
                (
                    p["metadata"]["namespace"].as_str().unwrap().to_string(),
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(names.len(), n, "names repeat");
    }
    let namespaces: BTreeSet<&str> = policy_set(1000)
        .iter()
        .map(|p| p["metadata"]["namespace"].as_str().unwrap())
        .map(|s| Box::leak(s.to_string().into_boxed_str()) as &str)
        .collect();
    assert!(
        namespaces.len() >= GENERATED_NAMESPACES + 2,
        "{namespaces:?}"
    );
}

#[test]
fn the_set_selects_the_servers_many_times_with_varied_peers() {
    let world = world_with(&policy_set(1000));
    let server = &world.pods[&PodKey {
        namespace: NS_SERVERS.into(),
        name: SERVER_N2.name.into(),
    }];
    let selecting = world
        .policies
        .values()
        .filter(|p| p.key.namespace == NS_SERVERS && p.pod_selector.matches(&server.labels))
        .count();
    assert!(
        selecting >= 300,
        "only {selecting} policies select the servers"
    );
    let text = yaml_stream(&policy_set(1000));
    for needle in [
        "ipBlock",
        "except",
        "namespaceSelector",
        "matchExpressions",
        "endPort",
        "SCTP",
        "UDP",
        "fd00:dead",
    ] {
        assert!(text.contains(needle), "no {needle} in the set");
    }
}

#[test]
fn with_the_set_the_clients_reach_the_servers_and_the_intruder_does_not() {
    let world = world_with(&policy_set(1000));
    for client in [&CLIENT_N1, &CLIENT_N2] {
        for server in [&SERVER_N1, &SERVER_N2] {
            assert!(tcp(&world, client, server, IPERF_PORT));
            assert!(tcp(&world, client, server, PROBE_PORT));
            assert!(!tcp(&world, client, server, FLIP_PORT), "flip port open");
        }
    }
    for server in [&SERVER_N1, &SERVER_N2] {
        for port in [IPERF_PORT, PROBE_PORT, FLIP_PORT] {
            assert!(
                !tcp(&world, &INTRUDER_N1, server, port),
                "intruder to {port}"
            );
        }
    }
}

#[test]
fn without_policies_everything_is_allowed() {
    let world = world_with(&[]);
    assert!(tcp(&world, &INTRUDER_N1, &SERVER_N1, PROBE_PORT));
    assert!(tcp(&world, &CLIENT_N1, &SERVER_N2, IPERF_PORT));
}

#[test]
fn the_flip_policy_opens_and_closes_only_the_flip_port_for_the_clients() {
    let mut set = policy_set(1000);
    set.push(flip_policy(true));
    let open = world_with(&set);
    set.pop();
    set.push(flip_policy(false));
    let closed = world_with(&set);
    for (client, server) in [(&CLIENT_N1, &SERVER_N2), (&CLIENT_N2, &SERVER_N1)] {
        assert!(tcp(&open, client, server, FLIP_PORT));
        assert!(!tcp(&closed, client, server, FLIP_PORT));
        assert!(tcp(&closed, client, server, IPERF_PORT));
    }
    assert!(!tcp(&open, &INTRUDER_N1, &SERVER_N1, FLIP_PORT));
    assert_eq!(
        flip_policy(true)["metadata"],
        flip_policy(false)["metadata"]
    );
}

#[test]
fn the_set_compiles_without_refusals_for_the_bench_pods() {
    let mut set = policy_set(1000);
    set.push(flip_policy(true));
    let world = world_with(&set);
    let endpoints: BTreeMap<PodKey, meshd_policy::EndpointId> = world
        .pods
        .keys()
        .enumerate()
        .map(|(i, k)| (k.clone(), meshd_policy::EndpointId(100 + i as u32)))
        .collect();
    let compiled = meshd_policy::compile(&world, &endpoints);
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors.first());
    assert!(!compiled.maps.is_empty());
}

#[test]
fn the_bench_pods_sit_on_both_nodes() {
    let nodes: BTreeSet<&str> = [CLIENT_N1, CLIENT_N2, SERVER_N1, SERVER_N2]
        .iter()
        .map(|p| p.node)
        .collect();
    assert_eq!(nodes.len(), 2);
    assert_ne!(CLIENT_N1.node, SERVER_N2.node);
    assert_ne!(CLIENT_N2.node, SERVER_N1.node);
}

#[test]
fn a_yaml_stream_separates_documents() {
    let s = yaml_stream(&[serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]);
    assert_eq!(s, "{\"a\":1}\n---\n{\"b\":2}\n");
}

fn at(t0: Instant, start_ms: u64, end_ms: u64, connected: bool) -> Attempt {
    Attempt {
        start: t0 + Duration::from_millis(start_ms),
        end: t0 + Duration::from_millis(end_ms),
        connected,
    }
}

#[test]
fn an_opening_change_counts_to_the_first_success_that_stays() {
    let t0 = Instant::now();
    let attempts = [
        at(t0, 0, 150, false),
        at(t0, 2, 152, false),
        at(t0, 4, 5, true),
        at(t0, 6, 156, false), // a failure after a success: not settled yet
        at(t0, 8, 9, true),
        at(t0, 10, 11, true),
    ];
    assert_eq!(
        enforced_after(t0, &attempts, true),
        Some(Duration::from_millis(9))
    );
    assert!(settled(t0, &attempts, true, 2));
    assert!(!settled(t0, &attempts, true, 4));
}

#[test]
fn a_closing_change_counts_to_the_send_time_of_the_first_failure_that_stays() {
    let t0 = Instant::now();
    let attempts = [
        at(t0, 6, 156, false),
        at(t0, 0, 1, true),
        at(t0, 3, 4, true),
        at(t0, 9, 159, false),
    ];
    assert_eq!(
        enforced_after(t0, &attempts, false),
        Some(Duration::from_millis(6))
    );
}

#[test]
fn attempts_before_t0_are_ignored_and_an_unsettled_series_has_no_time() {
    let t0 = Instant::now() + Duration::from_secs(1);
    let before = Attempt {
        start: t0 - Duration::from_millis(5),
        end: t0 - Duration::from_millis(4),
        connected: true,
    };
    assert_eq!(enforced_after(t0, &[before], true), None);
    let attempts = [before, at(t0, 1, 2, true), at(t0, 3, 153, false)];
    assert_eq!(enforced_after(t0, &attempts, true), None);
    assert!(!settled(t0, &attempts, true, 1));
    assert_eq!(enforced_after(t0, &[], false), None);
}

#[test]
fn medians_and_percentiles() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), Some(50.0));
    assert_eq!(percentile(&v, 99.0), Some(99.0));
    assert_eq!(percentile(&v, 100.0), Some(100.0));
    let l = Latency::of(&[Some(1.0), None, Some(3.0)]);
    assert_eq!(l.never, 1);
    assert_eq!(l.p50_ms, Some(3.0));
    assert_eq!(l.max_ms, None, "a change never seen is no finite maximum");
}

#[test]
fn the_throughput_target_is_met_at_95_percent_and_missed_below() {
    let pass = TargetCheck::judge("t", ratio(Some(9.5), Some(10.0)), 0.95, true, "x");
    assert_eq!(pass.verdict, Verdict::Pass);
    let fail = TargetCheck::judge("t", ratio(Some(9.4), Some(10.0)), 0.95, true, "x");
    assert_eq!(fail.verdict, Verdict::Fail);
    assert_eq!(
        TargetCheck::judge("t", None, 0.95, true, "x").verdict,
        Verdict::NotMeasured
    );
}

fn sample(ms: Option<f64>) -> EnforceSample {
    EnforceSample {
        allow: true,
        all_nodes_ms: ms,
        per_node_ms: vec![ms, ms],
        meshctl_ms: 5.0,
        prober_gap_ms: 2.0,
        meshd_cpu_ms: 1.0,
        meshd_wait_ms: 0.5,
    }
}

fn report_with(samples: Vec<EnforceSample>, with: f64) -> Report {
    let mut pair = PairThroughput::new("cross");
    pair.without_gbit = vec![10.0, 10.2, 9.8];
    pair.with_gbit = vec![with; 3];
    let mut e = EnforceResult {
        samples,
        ..Default::default()
    };
    e.summarise();
    let mut r = Report {
        policies: 1000,
        throughput: Some(ThroughputResult {
            pairs: vec![pair],
            ..Default::default()
        }),
        enforcement: Some(e),
        ..Default::default()
    };
    r.finish();
    r
}

#[test]
fn a_report_passes_fast_enforcement_and_fails_a_slow_or_missing_one() {
    let fast: Vec<EnforceSample> = (0..100).map(|i| sample(Some(f64::from(i)))).collect();
    let r = report_with(fast, 9.9);
    assert!(r.missed().is_empty(), "{:?}", r.missed());
    assert!(r.render().contains("PASS"));
    let mut slow: Vec<EnforceSample> = (0..100).map(|_| sample(Some(20.0))).collect();
    slow[7] = sample(Some(150.0));
    slow[8] = sample(Some(150.0));
    let r = report_with(slow, 9.9);
    assert_eq!(r.missed().len(), 1, "{:?}", r.missed());
    let mut lost: Vec<EnforceSample> = (0..100).map(|_| sample(Some(20.0))).collect();
    lost[3] = sample(None);
    lost[4] = sample(None);
    let r = report_with(lost, 5.0);
    assert_eq!(r.missed().len(), 2, "{:?}", r.missed());
    assert!(r.render().contains("FAIL"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["targets"][0]["verdict"], "fail");
}

#[test]
fn rounds_alternate_the_conditions() {
    use crate::throughput::condition;
    assert_eq!((condition(1, 0), condition(1, 1)), (false, true));
    assert_eq!((condition(2, 0), condition(2, 1)), (true, false));
    assert_eq!((condition(3, 0), condition(3, 1)), (false, true));
}

#[test]
fn the_gap_between_flips_varies_within_50_to_250_ms() {
    let gaps: BTreeSet<Duration> = (0..100).map(crate::enforce::gap).collect();
    assert!(gaps.len() > 10);
    assert!(gaps
        .iter()
        .all(|g| *g >= Duration::from_millis(50) && *g < Duration::from_millis(250)));
}

#[test]
fn a_pod_object_gives_its_ipv4() {
    let obj = serde_json::json!({"status": {"podIP": "fd00::1",
        "podIPs": [{"ip": "fd00::1"}, {"ip": "10.244.1.5"}]}});
    assert_eq!(
        crate::lab::pod_ipv4_of(&obj),
        Some("10.244.1.5".parse().unwrap())
    );
    assert_eq!(crate::lab::pod_ipv4_of(&serde_json::json!({})), None);
}

#[test]
fn probe_results_are_checked_against_expectations() {
    use crate::lab::{mismatches, ProbeDocument};
    let doc: ProbeDocument = serde_json::from_str(
        r#"{"results":[{"from":"pb-x/intruder-n1","to":"pb-b/server-n1","port":8080,
            "protocol":"TCP","family":4,"allowed":true}]}"#,
    )
    .unwrap();
    assert!(mismatches(&doc.results, &[(&INTRUDER_N1, &SERVER_N1, true)]).is_empty());
    let m = mismatches(
        &doc.results,
        &[
            (&INTRUDER_N1, &SERVER_N1, false),
            (&CLIENT_N1, &SERVER_N2, true),
        ],
    );
    assert_eq!(m.len(), 2);
    assert!(m[0].contains("allowed (want blocked)"), "{m:?}");
    assert!(m[1].contains("not probed"), "{m:?}");
}

#[test]
fn the_longest_gap_between_attempts_and_schedstat_sums() {
    let t0 = Instant::now();
    let attempts = [at(t0, 0, 1, true), at(t0, 30, 31, true), at(t0, 2, 3, true)];
    assert_eq!(longest_gap(&attempts), Duration::from_millis(28));
    assert_eq!(longest_gap(&[]), Duration::ZERO);
    assert_eq!(
        sum_schedstat(["100 20 3\n", "5 7 1\n", "garbage"]),
        (105, 27)
    );
}
