//! `meshd-cni` at scale and under faults on a real lab: the plugin is invoked exactly as a
//! container runtime invokes it (`CNI_*` environment, the node's conflist configuration on
//! stdin, inside the node's network namespace), on pod namespaces this test creates.
//!
//! - 200 concurrent ADDs on one node: every result valid, no duplicate address, every pod
//!   reachable over IPv4 and IPv6 from a pod on the other node through the tunnel; 200
//!   concurrent DELs: the IPAM store, the host veths, the pinned `from_pod` links and the BPF
//!   local-pod map are back to where they were.
//! - SIGKILL of the plugin at random points of ADD and of meshd while pods come and go, then a
//!   CNI GC listing only the pods that should exist: nothing leaks, nothing dangles, nothing is
//!   duplicated, and the surviving pods pass CHECK and carry traffic.
//!
//! - The conflist follows readiness: a node whose reconcile keeps failing (its IPAM store
//!   unreadable) loses it after the grace period, keeps it before, never gets it while
//!   restarting into the same failure, and gets it back once it converges.
//!
//! Needs root and the lab's tools; fails without them. Every namespace is removed on drop (the lab's
//! by `meshctl lab down`, the pods' by [`PodNamespaces`], whose names the lab also owns); traffic
//! only goes to addresses inside those namespaces.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration::capture::{analyse, Capture};
use integration::lab::cni::{host_veth_name, Attached, NodeCni, PodNamespaces, POD_IFNAME};
use integration::lab::{self, Lab};
use ipnet::IpNet;
use rand_core::{OsRng, RngCore};

/// Run `f` over `items` on `workers` threads; results in item order.
fn parallel<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()).max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                out.lock().unwrap()[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// One echo from namespace `from` to `dst` (a retry covers a lost first packet).
fn pings(from: &str, dst: IpAddr) -> bool {
    (0..2).any(|_| {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{from}"))
            .args(["--", "ping", "-n", "-q", "-c", "1", "-W", "2"])
            .arg(dst.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The addresses of `pods` that do not answer a ping from namespace `from`.
fn unreachable(from: &str, pods: &[Attached]) -> Vec<IpAddr> {
    let addrs: Vec<IpAddr> = pods.iter().flat_map(Attached::addrs).collect();
    let ok = parallel(&addrs, 16, |a| pings(from, *a));
    addrs
        .into_iter()
        .zip(ok)
        .filter(|(_, ok)| !ok)
        .map(|(a, _)| a)
        .collect()
}

/// The lab's pod on `node` (namespace name = container ID).
fn lab_pod(lab: &Lab, node: &str) -> String {
    PodNamespaces::name(lab, node, 1)
}

/// Check an ADD result against the spec's shape and this node's configuration.
fn assert_valid_result(cni: &NodeCni, pod: &Attached, netns: &str) {
    let r = &pod.result;
    let ctx = format!("ADD result of {}: {r:#}", pod.container_id);
    assert_eq!(r["cniVersion"], "1.1.0", "{ctx}");
    let cidrs: Vec<IpNet> = cni.config()["podCIDRs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().parse().unwrap())
        .collect();
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{ctx}");
    assert_eq!(
        ifs[0]["name"],
        host_veth_name(&pod.container_id, POD_IFNAME),
        "{ctx}"
    );
    assert_eq!(ifs[0]["mac"], "ee:ee:ee:ee:ee:ee", "{ctx}");
    assert!(ifs[0].get("sandbox").is_none(), "{ctx}");
    assert_eq!(ifs[1]["name"], POD_IFNAME, "{ctx}");
    assert_eq!(ifs[1]["sandbox"], format!("/run/netns/{netns}"), "{ctx}");
    assert_eq!(ifs[1]["mtu"], cni.config()["mtu"], "{ctx}");
    let ips = r["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{ctx}");
    for (ip, cidr, len, gw) in [
        (&ips[0], cidrs[0], 32, "169.254.1.1"),
        (&ips[1], cidrs[1], 128, "fe80::ecee:eeff:feee:eeee"),
    ] {
        let net: IpNet = ip["address"].as_str().unwrap().parse().unwrap();
        assert_eq!(net.prefix_len(), len, "{ctx}");
        assert!(cidr.contains(&net.addr()), "{ctx}");
        assert_ne!(net.addr(), cidr.network(), "{ctx}");
        assert_eq!(ip["gateway"], gw, "{ctx}");
        assert_eq!(ip["interface"], 1, "{ctx}");
        assert!(ip.get("version").is_none(), "{ctx}");
    }
    let routes: BTreeSet<(String, String)> = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["dst"].to_string(), r["gw"].to_string()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("\"0.0.0.0/0\"", "\"169.254.1.1\""),
        ("\"::/0\"", "\"fe80::ecee:eeff:feee:eeee\""),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(routes, want, "{ctx}");
}

/// The IPAM store as owner → addresses; panics on an unparseable entry.
fn ipam_by_owner(cni: &NodeCni) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for e in cni.ipam().unwrap() {
        let (id, ifname) = e
            .owner
            .unwrap_or_else(|| panic!("unparseable IPAM entry {}", e.address));
        assert_eq!(ifname, POD_IFNAME, "{id}");
        out.entry(id).or_default().push(e.address);
    }
    out
}

#[test]
fn two_hundred_concurrent_adds_are_unique_reachable_across_the_tunnel_and_fully_undone() {
    testkit::require_tools(lab::TOOLS);
    testkit::require_tool("tcpdump");
    const PODS: u32 = 200;
    let t0 = Instant::now();
    let lab = Lab::up(2, 1).unwrap();
    let cni = NodeCni::new(&lab, "n1").unwrap();
    let remote = lab_pod(&lab, "n2");

    let ipam_before = cni.ipam().unwrap();
    let veths_before = cni.host_veths().unwrap();
    let links_before = cni.pinned_pod_links().unwrap();
    let locals_before = cni.local_pods(&lab).unwrap();
    assert_eq!(locals_before, 2, "the lab's own pod, both families");

    let mut spaces = PodNamespaces::new();
    let names: Vec<String> = (1..=PODS)
        .map(|k| PodNamespaces::name(&lab, "n1", 1000 + k))
        .collect();
    spaces.create(&names).unwrap();

    // 200 ADDs at once, one thread per runtime call.
    let t_add = Instant::now();
    let results = parallel(&names, names.len(), |ns| cni.add(ns, ns));
    let add_time = t_add.elapsed();
    let pods: Vec<Attached> = results.into_iter().collect::<anyhow::Result<_>>().unwrap();
    for (pod, ns) in pods.iter().zip(&names) {
        assert_valid_result(&cni, pod, ns);
    }
    let mut seen = HashSet::new();
    for e in &ipam_before {
        seen.insert(e.address);
    }
    for a in pods.iter().flat_map(Attached::addrs) {
        assert!(seen.insert(a), "address {a} handed out twice");
    }
    // The store holds exactly the results, each pod one address per family.
    let store = ipam_by_owner(&cni);
    for pod in &pods {
        let mut want = pod.addrs().to_vec();
        want.sort();
        assert_eq!(store.get(&pod.container_id), Some(&want));
    }
    assert_eq!(store.len(), PODS as usize + 1, "{store:?}");
    let want_veths: BTreeSet<String> = veths_before
        .iter()
        .cloned()
        .chain(pods.iter().map(|p| p.host_veth.clone()))
        .collect();
    assert_eq!(cni.host_veths().unwrap(), want_veths);
    assert_eq!(cni.pinned_pod_links().unwrap(), want_veths);
    cni.wait_local_pods(
        &lab,
        locals_before + 2 * u64::from(PODS),
        Duration::from_secs(10),
    )
    .unwrap();

    // Every pod answers a pod on the other node, both families, through the tunnel: the
    // underlay carries only WireGuard meanwhile.
    let st = lab.status().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cap = Capture::start(
        &st.capture.namespace,
        &st.capture.interface,
        &dir.path().join("cni-scale.pcap"),
    )
    .unwrap();
    let t_ping = Instant::now();
    let lost = unreachable(&remote, &pods);
    assert!(lost.is_empty(), "unreachable from n2: {lost:?}");
    let ping_time = t_ping.elapsed();
    let report = analyse(&cap.stop().unwrap(), &st.capture_policy()).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    // (tcpdump on a loaded 2-vCPU machine does not see every packet: no exact count.)
    assert!(report.wireguard_packets > 0, "{}", report.summary());

    // DEL of all 200 at once.
    let t_del = Instant::now();
    let dels = parallel(&pods, pods.len(), |p| cni.del(&p.container_id));
    let del_time = t_del.elapsed();
    for r in dels {
        r.unwrap();
    }
    // DEL is idempotent: again, now with nothing left to undo.
    for p in &pods[..5] {
        cni.del(&p.container_id).unwrap();
    }
    assert_eq!(cni.ipam().unwrap(), ipam_before, "every address free again");
    assert!(cni.ipam_strays().unwrap().is_empty());
    assert_eq!(cni.host_veths().unwrap(), veths_before, "no host veth left");
    assert_eq!(cni.pinned_pod_links().unwrap(), links_before);
    // DEL itself empties the map (meshd's 30 s resync is only the backstop).
    cni.wait_local_pods(&lab, locals_before, Duration::from_secs(5))
        .unwrap();
    // The pod namespaces are empty again: their eth0 went with the host veth.
    let left = cni.host_veths().unwrap();
    assert!(pods.iter().all(|p| !left.contains(&p.host_veth)));
    drop(spaces);
    eprintln!(
        "200 concurrent ADDs {add_time:.2?}, 400 pings {ping_time:.2?}, 200 concurrent DELs {del_time:.2?}, total {:.2?}",
        t0.elapsed()
    );
}

/// Whether any live (non-zombie) process is in process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp …
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string()
    })
}

/// Wait until no process of the given process groups is left (children of killed plugins).
fn wait_groups_gone(pgids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pgids.iter().any(|g| group_alive(*g)) {
        assert!(
            Instant::now() < deadline,
            "orphaned plugin children still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_of_plugin_and_meshd_then_gc_reclaims_everything_and_survivors_work() {
    testkit::require_tools(lab::TOOLS);
    let t0 = Instant::now();
    let lab = Lab::up(2, 1).unwrap();
    let cni = NodeCni::new(&lab, "n1").unwrap();
    let remote = lab_pod(&lab, "n2");
    let mut spaces = PodNamespaces::new();
    let ns = |k: u32| PodNamespaces::name(&lab, "n1", k);

    // Pods that should survive everything (their wall time calibrates the kill delays).
    let keep_names: Vec<String> = (1001..=1008).map(ns).collect();
    spaces.create(&keep_names).unwrap();
    let t = Instant::now();
    let mut survivors: BTreeMap<String, Attached> = parallel(&keep_names, 8, |n| cni.add(n, n))
        .into_iter()
        .map(|r| {
            let p = r.unwrap();
            (p.container_id.clone(), p)
        })
        .collect();
    let span = t.elapsed().max(Duration::from_millis(20)) * 3 / 2;
    // Two complete attachments the runtime will have forgotten (not in the GC's valid list).
    let forgotten: Vec<String> = (1301..=1302).map(ns).collect();
    spaces.create(&forgotten).unwrap();
    for n in &forgotten {
        cni.add(n, n).unwrap();
    }

    // 40 ADDs in waves of 8, each SIGKILLed after a random delay spanning a whole ADD under
    // the same load: some die before allocating, some between the two families, some while
    // creating or configuring the veth or attaching from_pod, some finish first.
    let victims: Vec<String> = (1101..=1140).map(ns).collect();
    spaces.create(&victims).unwrap();
    let mut outcomes = Vec::new();
    // A calibration slowed by a passing stall can make every delay outlast its ADD: a wave in
    // which nothing was killed halves the span for the next one.
    let mut span = span;
    for wave in victims.chunks(8) {
        let results = parallel(wave, wave.len(), |n| {
            let delay = span.mul_f64(f64::from(OsRng.next_u32()) / f64::from(u32::MAX));
            let mut child = cni.spawn("ADD", n, Some(n)).unwrap();
            let pgid = child.id();
            std::thread::sleep(delay);
            let _ = child.kill();
            let status = child.wait().unwrap();
            (pgid, status.success())
        });
        if results.iter().all(|(_, ok)| *ok) {
            span /= 2;
        }
        outcomes.extend(results);
    }
    let pgids: Vec<u32> = outcomes.iter().map(|(g, _)| *g).collect();
    wait_groups_gone(&pgids);
    let finished = outcomes.iter().filter(|(_, ok)| *ok).count();
    let store = ipam_by_owner(&cni);
    let veths = cni.host_veths().unwrap();
    let half = victims
        .iter()
        .filter(|v| store.get(*v).is_some_and(|a| a.len() == 1))
        .count();
    let with_veth = victims
        .iter()
        .filter(|v| veths.contains(&host_veth_name(v, POD_IFNAME)))
        .count();
    eprintln!(
        "plugin SIGKILL, last wave over {span:.0?}: {} of {} ADDs killed, {finished} finished first; \
         left behind: {} with addresses ({half} with one family only), {with_veth} host veths",
        victims.len() - finished,
        victims.len(),
        victims.iter().filter(|v| store.contains_key(*v)).count(),
    );
    assert!(
        finished < victims.len(),
        "no ADD was killed: the delays are too long"
    );
    // No duplicate, even among half-done ADDs: every address file names one owner, and no
    // survivor lost or shares its addresses.
    for p in survivors.values() {
        let mut want = p.addrs().to_vec();
        want.sort();
        assert_eq!(store.get(&p.container_id), Some(&want));
    }

    // meshd SIGKILLed while pods are being added and deleted, then started again.
    let more: Vec<String> = (1201..=1216).map(ns).collect();
    spaces.create(&more).unwrap();
    let gone: Vec<String> = survivors.keys().take(2).cloned().collect();
    let (added, deleted) = std::thread::scope(|s| {
        let adds = s.spawn(|| parallel(&more, 8, |n| cni.add(n, n)));
        let dels = s.spawn(|| parallel(&gone, 2, |id| cni.del(id)));
        lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
        (adds.join().unwrap(), dels.join().unwrap())
    });
    for r in deleted {
        r.unwrap();
    }
    for id in &gone {
        survivors.remove(id);
    }
    for r in added {
        let p = r.unwrap();
        survivors.insert(p.container_id.clone(), p);
    }
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    lab.wait_for("meshd on n1 back", Duration::from_secs(30), |s| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "n1" && n["running"] == true && n["status"]["converged"] == true)
    })
    .unwrap();

    // Half the victims' sandboxes are already gone (their pod ends went with them, the host
    // veths too, but not their addresses, map entries or pinned links); half still exist.
    spaces.delete(&victims[..victims.len() / 2]).unwrap();

    // The runtime's GC: only the lab's pod and the survivors are valid.
    let mut valid: Vec<String> = survivors.keys().cloned().collect();
    valid.push(lab_pod(&lab, "n1"));
    cni.gc(&valid).unwrap();

    let store = ipam_by_owner(&cni);
    assert_eq!(
        store.keys().cloned().collect::<BTreeSet<_>>(),
        valid.iter().cloned().collect::<BTreeSet<_>>(),
        "GC left exactly the valid attachments"
    );
    let mut seen = HashSet::new();
    for (id, addrs) in &store {
        assert_eq!(addrs.len(), 2, "{id}: {addrs:?}");
        assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{id}: {addrs:?}");
        for a in addrs {
            assert!(seen.insert(*a), "{a} is held twice");
        }
    }
    for p in survivors.values() {
        let mut want = p.addrs().to_vec();
        want.sort();
        assert_eq!(store.get(&p.container_id), Some(&want));
    }
    assert!(
        cni.ipam_strays().unwrap().is_empty(),
        "{:?}",
        cni.ipam_strays()
    );
    let want_veths: BTreeSet<String> = valid
        .iter()
        .map(|id| host_veth_name(id, POD_IFNAME))
        .collect();
    assert_eq!(
        cni.host_veths().unwrap(),
        want_veths,
        "no dangling host veth"
    );
    assert_eq!(
        cni.pinned_pod_links().unwrap(),
        want_veths,
        "no dangling link"
    );
    cni.wait_local_pods(&lab, 2 * valid.len() as u64, Duration::from_secs(5))
        .unwrap();

    // The survivors are intact and carry traffic across the tunnel.
    for p in survivors.values() {
        cni.check(p, &p.container_id).unwrap();
    }
    let alive: Vec<Attached> = survivors.values().cloned().collect();
    let lost = unreachable(&remote, &alive);
    assert!(lost.is_empty(), "unreachable from n2: {lost:?}");

    // And everything this test made goes away cleanly.
    for p in survivors.values() {
        cni.del(&p.container_id).unwrap();
    }
    assert_eq!(
        ipam_by_owner(&cni).keys().cloned().collect::<Vec<_>>(),
        vec![lab_pod(&lab, "n1")]
    );
    assert_eq!(
        cni.host_veths().unwrap(),
        BTreeSet::from([host_veth_name(&lab_pod(&lab, "n1"), POD_IFNAME)])
    );
    cni.wait_local_pods(&lab, 2, Duration::from_secs(5))
        .unwrap();
    drop(spaces);
    eprintln!("faults and GC: {:.2?}", t0.elapsed());
}

/// The conflist meshd installs on a lab node.
fn conflist(lab: &Lab, node: &str) -> std::path::PathBuf {
    let st = lab.status_json().unwrap();
    let n = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap();
    let state = std::path::PathBuf::from(n["state_dir"].as_str().unwrap());
    state
        .parent()
        .unwrap()
        .join("cni")
        .join(meshd::cni_conf::CONFLIST)
}

fn wait_until(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn the_conflist_goes_when_the_mesh_keeps_failing_and_comes_back_when_it_converges() {
    testkit::require_tools(lab::TOOLS);
    let lab = Lab::up(2, 1).unwrap();
    let conf = conflist(&lab, "n1");
    assert!(conf.exists(), "a converged node has its conflist");
    let st = lab.status_json().unwrap();
    let state = std::path::PathBuf::from(st["nodes"][0]["state_dir"].as_str().unwrap());
    let (ipam, parked) = (state.join("ipam"), state.join("ipam.parked"));
    let from = lab_pod(&lab, "n1");
    let to: IpAddr = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "n2")
        .and_then(|p| p["ipv4"].as_str())
        .unwrap()
        .parse()
        .unwrap();

    // The IPAM store becomes unreadable: every reconcile pass fails from the next one on (the
    // next event, or the 30 s resync).
    std::fs::rename(&ipam, &parked).unwrap();
    std::fs::write(&ipam, "not a directory").unwrap();
    let converged = || lab.status_json().unwrap()["nodes"][0]["status"]["converged"] == true;
    wait_until("a failing pass", Duration::from_secs(40), || !converged());
    let failing = Instant::now();
    assert!(
        conf.exists(),
        "removed on the first failed pass: the node would flap"
    );
    wait_until("the conflist to go", Duration::from_secs(15), || {
        !conf.exists()
    });
    let gone = failing.elapsed();
    assert!(
        gone >= Duration::from_secs(8),
        "removed {gone:?} after the first failure, within the 10 s grace"
    );
    assert!(
        !converged(),
        "status says converged while reconciling fails"
    );
    // Pods already there keep their tunnel: only new pods are refused.
    assert!(pings(&from, to), "the existing pod lost its traffic");

    // A meshd restarting into the same failure never installs it.
    lab.meshctl(&["lab", "kill-node", "n1"]).unwrap();
    lab.meshctl(&["lab", "start-node", "n1"]).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !conf.exists(),
        "installed by a meshd that has not converged"
    );

    std::fs::remove_file(&ipam).unwrap();
    std::fs::rename(&parked, &ipam).unwrap();
    let back = wait_until("the conflist to come back", Duration::from_secs(15), || {
        conf.exists()
    });
    eprintln!("conflist back {back:?} after the store was repaired");
    assert!(pings(&from, to));
}
