//! `cni-bench`: how fast `meshd-cni` attaches pods, on a real 2-node lab.
//!
//! The plugin is invoked exactly as a container runtime invokes it (`CNI_*` environment, the
//! node's conflist configuration on stdin, inside the node's network namespace) on pod
//! namespaces the bench creates beforehand (not timed). It measures:
//!
//! - **sequential ADD**: `--pods` (500) ADDs one after the other, alternating between the two
//!   nodes (each node's /24 holds 252 pods), so the last ADDs run against stores, veth tables
//!   and BPF maps of ~250 pods; latency is from spawning the plugin to its exit;
//! - **reachable after ADD**: for every `--sample-every`-th pod (by default all 500), the time
//!   from ADD returning (and from ADD starting: the runtime's view) until the pod answers, over IPv4 and over IPv6, a probe sent from the lab pod on
//!   the *other* node through the tunnel. The probe is a UDP datagram to a closed port, resent
//!   every millisecond (both families at once) from sockets inside that pod's namespace: the
//!   new pod's kernel answers with ICMP port unreachable, which the connected socket reports as
//!   `ECONNREFUSED`, so the time is a full round trip with no process in the new pod;
//! - **sequential DEL** of all of them;
//! - **concurrent** (unless `--no-concurrent`): `--concurrent-pods` (200) ADDs on one node from
//!   `--workers` (8) runtime threads, then DELs the same way: per-call latency and pods/s.
//!
//! In the same run (unless `--no-reference`), the reference plugins `ptp` + `host-local`
//! (Debian's containernetworking-plugins, `/usr/lib/cni`; `scripts/bench-deps.sh` installs them)
//! attach `--ref-pods` (100) IPv4-only and `--ref-pods-dual` (20; each waits for duplicate
//! address detection) dual-stack pods, one after the other, in a namespace of their own that
//! stands in for a node: ADD and DEL latency, reported beside meshd's, without targets.
//!
//! Prints numbers (a table, or JSON with `--json`) and judges meshd-cni's targets (each printed
//! PASS or FAIL): sequential dual-stack ADD p50 ≤ 5 ms and p99 ≤ 10 ms over at least 100 pods,
//! DEL p99 ≤ 10 ms, every sampled pod reachable and ADD return → reachable over both families
//! p99 < 4 ms. **Exits 1 when a target fails.** Everything it creates is removed on exit. Needs
//! root.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use integration::lab::cni::{percentile, Attached, NodeCni, PodNamespaces};
use integration::lab::Lab;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "cni-bench",
    about = "meshd-cni ADD/DEL latency and time to reachable"
)]
struct Args {
    /// Sequential ADDs, alternating between the two nodes (at most 500).
    #[arg(long, default_value_t = 500)]
    pods: u32,
    /// Measure time-to-reachable for every N-th pod of the sequential run.
    #[arg(long, default_value_t = 1)]
    sample_every: u32,
    /// Skip the concurrent variant.
    #[arg(long)]
    no_concurrent: bool,
    /// ADDs in the concurrent variant (on one node, at most 250).
    #[arg(long, default_value_t = 200)]
    concurrent_pods: u32,
    /// Runtime threads in the concurrent variant.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Give up on a pod that is not reachable after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    reach_timeout_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Skip the reference plugins (ptp + host-local).
    #[arg(long)]
    no_reference: bool,
    /// Sequential IPv4-only ADDs (and DELs) of the reference plugins (at most 250).
    #[arg(long, default_value_t = 100)]
    ref_pods: u32,
    /// Sequential dual-stack ADDs (and DELs) of the reference plugins (at most 250; each
    /// waits about 2 s for duplicate address detection).
    #[arg(long, default_value_t = 20)]
    ref_pods_dual: u32,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Stats {
    n: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        let mut s = samples.to_vec();
        s.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mean = if s.is_empty() {
            0.0
        } else {
            s.iter().map(|d| ms(*d)).sum::<f64>() / s.len() as f64
        };
        Stats {
            n: s.len(),
            p50_ms: ms(percentile(&s, 50.0)),
            p90_ms: ms(percentile(&s, 90.0)),
            p99_ms: ms(percentile(&s, 99.0)),
            max_ms: ms(percentile(&s, 100.0)),
            mean_ms: mean,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    cpus: usize,
    pods: u32,
    sequential_add: Stats,
    /// The first and the last 100 sequential ADDs (empty vs ~250-pod nodes).
    sequential_add_first_100: Stats,
    sequential_add_last_100: Stats,
    sequential_del: Stats,
    reachable_v4: Stats,
    reachable_v6: Stats,
    reachable_both: Stats,
    /// From spawning the plugin until the pod answers over both families.
    add_start_to_reachable_both: Stats,
    unreachable: usize,
    concurrent: Option<Concurrent>,
    /// The reference plugins, measured in the same run.
    reference: Option<Reference>,
    /// meshd-cni's targets, judged on the sequential run.
    targets: Vec<Target>,
}

/// One target: `measured` must be at most, below or (for the sample size) at least `limit`.
#[derive(Debug, Serialize)]
struct Target {
    what: &'static str,
    limit: f64,
    /// `<=`, `<` or `>=`.
    bound: &'static str,
    measured: f64,
    pass: bool,
}

impl Target {
    fn at_most(what: &'static str, measured: f64, limit: f64) -> Target {
        Target {
            what,
            limit,
            bound: "<=",
            measured,
            pass: measured <= limit,
        }
    }

    fn below(what: &'static str, measured: f64, limit: f64) -> Target {
        Target {
            what,
            limit,
            bound: "<",
            measured,
            pass: measured < limit,
        }
    }
}

/// The targets of issue 17 on a report's sequential figures. A figure without samples fails.
fn targets(r: &Report) -> Vec<Target> {
    let sampled = |s: &Stats, v: f64| if s.n == 0 { f64::INFINITY } else { v };
    vec![
        Target {
            what: "sequential pods (the targets need 100 at least)",
            limit: 100.0,
            bound: ">=",
            measured: f64::from(r.pods),
            pass: r.pods >= 100,
        },
        Target::at_most(
            "ADD p50, sequential dual-stack (ms)",
            sampled(&r.sequential_add, r.sequential_add.p50_ms),
            5.0,
        ),
        Target::at_most(
            "ADD p99, sequential dual-stack (ms)",
            sampled(&r.sequential_add, r.sequential_add.p99_ms),
            10.0,
        ),
        Target::at_most(
            "DEL p99, sequential (ms)",
            sampled(&r.sequential_del, r.sequential_del.p99_ms),
            10.0,
        ),
        Target::at_most(
            "sampled pods not reachable in time",
            r.unreachable as f64,
            0.0,
        ),
        Target::below(
            "ADD return -> reachable, both families, p99 (ms)",
            sampled(&r.reachable_both, r.reachable_both.p99_ms),
            4.0,
        ),
    ]
}

/// The reference plugins' figures.
#[derive(Debug, Serialize)]
struct Reference {
    plugins: &'static str,
    ipv4: ReferenceRun,
    dual_stack: ReferenceRun,
}

/// Sequential ADDs then DELs of one reference configuration.
#[derive(Debug, Serialize)]
struct ReferenceRun {
    pods: u32,
    add: Stats,
    del: Stats,
}

#[derive(Debug, Serialize)]
struct Concurrent {
    pods: u32,
    workers: usize,
    add: Stats,
    add_pods_per_s: f64,
    del: Stats,
    del_pods_per_s: f64,
}

/// Time one plugin ADD.
fn timed_add(cni: &NodeCni, ns: &str) -> anyhow::Result<(Attached, Duration)> {
    let t = Instant::now();
    let pod = cni.add(ns, ns)?;
    Ok((pod, t.elapsed()))
}

/// Time one plugin DEL.
fn timed_del(cni: &NodeCni, id: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    cni.del(id)?;
    Ok(t.elapsed())
}

/// A probe request: the pod's addresses and when its ADD returned.
struct Probe {
    v4: IpAddr,
    v6: IpAddr,
    since: Instant,
    reply: mpsc::Sender<(Option<Duration>, Option<Duration>)>,
}

/// A thread living in pod namespace `ns` that answers [`Probe`]s: the time until each family
/// first round-trips (see the module doc), `None` after `timeout`.
fn prober(ns: &str, timeout: Duration) -> anyhow::Result<mpsc::Sender<Probe>> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    let (tx, rx) = mpsc::channel::<Probe>();
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    std::thread::spawn(move || {
        // This thread only: sockets made from here on belong to the pod's namespace.
        let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| "entering the prober's namespace".to_string());
        let failed = entered.is_err();
        let _ = ready_tx.send(entered);
        if failed {
            return;
        }
        for probe in rx {
            let [r4, r6] = probe_until([probe.v4, probe.v6], probe.since, timeout);
            let _ = probe.reply.send((r4, r6));
        }
    });
    ready_rx
        .recv()
        .context("the prober thread died")?
        .map(|()| tx)
}

/// Resend a datagram to each address's discard port every millisecond until its ICMP port
/// unreachable comes back (`ECONNREFUSED`): per address, the time since `since` (both
/// families probed at once).
fn probe_until(dsts: [IpAddr; 2], since: Instant, timeout: Duration) -> [Option<Duration>; 2] {
    let socket = |dst: IpAddr| -> Option<UdpSocket> {
        let bind: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let sock = UdpSocket::bind(bind).ok()?;
        sock.connect(SocketAddr::new(dst, 9)).ok()?;
        sock.set_nonblocking(true).ok()?;
        Some(sock)
    };
    let socks = dsts.map(socket);
    let mut out = [None, None];
    let refused = |r: std::io::Result<usize>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
    let mut buf = [0u8; 64];
    let mut last_send = [None::<Instant>; 2];
    while since.elapsed() < timeout && out.iter().any(Option::is_none) {
        for i in 0..2 {
            let Some(sock) = &socks[i] else { continue };
            if out[i].is_some() {
                continue;
            }
            if refused(sock.recv(&mut buf)) {
                out[i] = Some(since.elapsed());
                continue;
            }
            if last_send[i].is_none_or(|t| t.elapsed() >= Duration::from_millis(1)) {
                if refused(sock.send(b"cni-bench probe")) {
                    out[i] = Some(since.elapsed());
                }
                last_send[i] = Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !testkit::require::is_root() {
        bail!("cni-bench creates network namespaces: run it as root");
    }
    if args.pods > 500 || args.concurrent_pods > 250 {
        bail!("at most 500 sequential and 250 concurrent pods (each node's /24 holds 252)");
    }
    if args.ref_pods > 250 || args.ref_pods_dual > 250 {
        bail!("at most 250 reference pods per run (the reference /24 holds 253)");
    }
    if !args.no_reference {
        for plugin in ["ptp", "host-local"] {
            let path = Path::new(REFERENCE_PLUGIN_DIR).join(plugin);
            if !path.exists() {
                bail!(
                    "{} missing: run scripts/bench-deps.sh (Debian's containernetworking-plugins), or pass --no-reference",
                    path.display()
                );
            }
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    eprintln!("› lab up (2 nodes, 1 pod each)");
    let lab = Lab::up(2, 1)?;
    let nodes = [NodeCni::new(&lab, "n1")?, NodeCni::new(&lab, "n2")?];
    let timeout = Duration::from_millis(args.reach_timeout_ms);
    // A prober in each node's lab pod; a pod on node k is probed from the other node.
    let probers = [
        prober(&PodNamespaces::name(&lab, "n2", 1), timeout)?,
        prober(&PodNamespaces::name(&lab, "n1", 1), timeout)?,
    ];

    let mut spaces = PodNamespaces::new();
    let seq: Vec<(usize, String)> = (0..args.pods)
        .map(|k| {
            let node = (k % 2) as usize;
            let name = PodNamespaces::name(&lab, nodes[node].node(), 1000 + k);
            (node, name)
        })
        .collect();
    let names: Vec<String> = seq.iter().map(|(_, n)| n.clone()).collect();
    spaces.create(&names)?;

    eprintln!("› {} sequential ADDs", args.pods);
    let mut add = Vec::new();
    let mut attached = Vec::new();
    let (mut r4, mut r6, mut both, mut unreachable) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut from_start = Vec::new();
    for (k, (node, ns)) in seq.iter().enumerate() {
        let (pod, took) = timed_add(&nodes[*node], ns)?;
        let since = Instant::now();
        add.push(took);
        if args.sample_every > 0 && (k as u32).is_multiple_of(args.sample_every) {
            let (tx, rx) = mpsc::channel();
            probers[*node]
                .send(Probe {
                    v4: pod.addrs()[0],
                    v6: pod.addrs()[1],
                    since,
                    reply: tx,
                })
                .context("the prober thread died")?;
            match rx.recv().context("the prober thread died")? {
                (Some(a), Some(b)) => {
                    r4.push(a);
                    r6.push(b);
                    both.push(a.max(b));
                    from_start.push(took + a.max(b));
                }
                (a, b) => {
                    unreachable += 1;
                    eprintln!(
                        "  {ns} ({}, {}) not reachable within {timeout:?}: v4 {a:?} v6 {b:?}",
                        pod.ipv4, pod.ipv6
                    );
                }
            }
        }
        attached.push((*node, pod));
    }
    eprintln!("› {} sequential DELs", args.pods);
    let mut del = Vec::new();
    for (node, pod) in &attached {
        del.push(timed_del(&nodes[*node], &pod.container_id)?);
    }
    spaces.delete(&names)?;

    let concurrent = if args.no_concurrent {
        None
    } else {
        eprintln!(
            "› {} concurrent ADDs and DELs on n1 from {} threads",
            args.concurrent_pods, args.workers
        );
        let names: Vec<String> = (0..args.concurrent_pods)
            .map(|k| PodNamespaces::name(&lab, "n1", 2000 + k))
            .collect();
        spaces.create(&names)?;
        let (adds, add_wall) = parallel(&names, args.workers, |ns| timed_add(&nodes[0], ns));
        let adds: Vec<(Attached, Duration)> = adds.into_iter().collect::<anyhow::Result<_>>()?;
        let ids: Vec<String> = adds.iter().map(|(p, _)| p.container_id.clone()).collect();
        let (dels, del_wall) = parallel(&ids, args.workers, |id| timed_del(&nodes[0], id));
        let dels: Vec<Duration> = dels.into_iter().collect::<anyhow::Result<_>>()?;
        spaces.delete(&names)?;
        let n = f64::from(args.concurrent_pods);
        Some(Concurrent {
            pods: args.concurrent_pods,
            workers: args.workers,
            add: Stats::of(&adds.iter().map(|(_, d)| *d).collect::<Vec<_>>()),
            add_pods_per_s: n / add_wall.as_secs_f64(),
            del: Stats::of(&dels),
            del_pods_per_s: n / del_wall.as_secs_f64(),
        })
    };

    let reference = if args.no_reference {
        None
    } else {
        Some(reference(
            &lab,
            &mut spaces,
            args.ref_pods,
            args.ref_pods_dual,
        )?)
    };

    let mut report = Report {
        cpus,
        pods: args.pods,
        sequential_add: Stats::of(&add),
        sequential_add_first_100: Stats::of(&add[..add.len().min(100)]),
        sequential_add_last_100: Stats::of(&add[add.len().saturating_sub(100)..]),
        sequential_del: Stats::of(&del),
        reachable_v4: Stats::of(&r4),
        reachable_v6: Stats::of(&r6),
        reachable_both: Stats::of(&both),
        add_start_to_reachable_both: Stats::of(&from_start),
        unreachable,
        concurrent,
        reference,
        targets: Vec::new(),
    };
    report.targets = targets(&report);
    drop(spaces);
    drop(lab);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    verdict(&report.targets)
}

/// The bench's outcome: an error (exit status 1) when a target failed.
fn verdict(targets: &[Target]) -> anyhow::Result<()> {
    let failed = targets.iter().filter(|t| !t.pass).count();
    if failed > 0 {
        bail!("{failed} of {} targets failed", targets.len());
    }
    Ok(())
}

/// Where Debian installs the reference plugins.
const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The reference configuration: `ptp` with `host-local` addresses from one /24 (and one /64
/// when `dual`), default routes, MTU 1420 like the lab's, no masquerading.
fn reference_conf(dual: bool, data_dir: &Path) -> Value {
    let mut ranges = vec![json!([{ "subnet": "10.99.0.0/24" }])];
    let mut routes = vec![json!({ "dst": "0.0.0.0/0" })];
    if dual {
        ranges.push(json!([{ "subnet": "fd00:99::/64" }]));
        routes.push(json!({ "dst": "::/0" }));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": if dual { "ref-dual" } else { "ref-v4" },
        "type": "ptp",
        "ipMasq": false,
        "mtu": 1420,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            "dataDir": data_dir,
        },
    })
}

/// Run `ptp` once as a runtime does (in `node_ns`, `CNI_PATH` holding host-local) and time it
/// from spawn to exit. DEL passes the pod's namespace too, so ptp removes the interface.
fn reference_call(
    node_ns: &str,
    command: &str,
    id: &str,
    pod_ns: &str,
    conf: &Value,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{node_ns}"))
        .arg("--")
        .arg(Path::new(REFERENCE_PLUGIN_DIR).join("ptp"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_PATH", REFERENCE_PLUGIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ptp")?;
    let mut stdin = child.stdin.take().context("ptp stdin")?;
    stdin.write_all(conf.to_string().as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output().context("waiting for ptp")?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "ptp {command} {id} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// Sequential ADDs of `pods` pods, then their DELs, with the reference plugins.
fn reference_run(
    node_ns: &str,
    pods: &[String],
    dual: bool,
    data_dir: &Path,
) -> anyhow::Result<ReferenceRun> {
    let conf = reference_conf(dual, data_dir);
    let mut add = Vec::new();
    for ns in pods {
        add.push(reference_call(node_ns, "ADD", ns, ns, &conf)?);
    }
    let mut del = Vec::new();
    for ns in pods {
        del.push(reference_call(node_ns, "DEL", ns, ns, &conf)?);
    }
    Ok(ReferenceRun {
        pods: pods.len() as u32,
        add: Stats::of(&add),
        del: Stats::of(&del),
    })
}

/// The reference plugins in a namespace of their own standing in for a node (named like the
/// lab's pod namespaces, so `meshctl lab down` removes it too), IPv4-only then dual-stack.
fn reference(
    lab: &Lab,
    spaces: &mut PodNamespaces,
    v4_pods: u32,
    dual_pods: u32,
) -> anyhow::Result<Reference> {
    eprintln!(
        "› reference ptp + host-local: {v4_pods} IPv4-only, {dual_pods} dual-stack, sequential"
    );
    let node = PodNamespaces::name(lab, "ref", 0);
    let pods: Vec<String> = (1..=v4_pods.max(dual_pods))
        .map(|k| PodNamespaces::name(lab, "ref", k))
        .collect();
    let mut all = vec![node.clone()];
    all.extend(pods.iter().cloned());
    spaces.create(&all)?;
    let data = ReferenceData::new(lab.name())?;
    let ipv4 = reference_run(&node, &pods[..v4_pods as usize], false, &data.0.join("v4"))?;
    let dual_stack = reference_run(
        &node,
        &pods[..dual_pods as usize],
        true,
        &data.0.join("dual"),
    )?;
    spaces.delete(&all)?;
    Ok(Reference {
        plugins: "ptp + host-local (containernetworking-plugins, /usr/lib/cni)",
        ipv4,
        dual_stack,
    })
}

/// host-local's stores, removed on drop.
struct ReferenceData(PathBuf);

impl ReferenceData {
    fn new(lab: &str) -> anyhow::Result<ReferenceData> {
        let dir = std::env::temp_dir().join(format!("cni-bench-{lab}-host-local"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ReferenceData(dir))
    }
}

impl Drop for ReferenceData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `f` over `items` on `workers` threads: results in item order, and the wall time.
fn parallel<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
) -> (Vec<R>, Duration) {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                if let Ok(mut out) = out.lock() {
                    out[i] = Some(r);
                }
            });
        }
    });
    let wall = t.elapsed();
    let results = out
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    (results, wall)
}

fn row(what: &str, s: &Stats) {
    println!(
        "{what:<34} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        s.n, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.mean_ms
    );
}

fn print_table(r: &Report) {
    println!("meshd-cni on a 2-node lab, {} CPUs; milliseconds", r.cpus);
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "n", "p50", "p90", "p99", "max", "mean"
    );
    row("ADD, sequential", &r.sequential_add);
    row(
        "  first 100 (nearly empty nodes)",
        &r.sequential_add_first_100,
    );
    row(
        "  last 100 (~250 pods per node)",
        &r.sequential_add_last_100,
    );
    row("DEL, sequential", &r.sequential_del);
    row("ADD return -> reachable, IPv4", &r.reachable_v4);
    row("ADD return -> reachable, IPv6", &r.reachable_v6);
    row("ADD return -> reachable, both", &r.reachable_both);
    row(
        "ADD start -> reachable, both",
        &r.add_start_to_reachable_both,
    );
    if r.unreachable > 0 {
        println!("not reachable in time: {} sampled pods", r.unreachable);
    }
    if let Some(c) = &r.concurrent {
        row(
            &format!("ADD, {} concurrent / {} thr", c.pods, c.workers),
            &c.add,
        );
        row(
            &format!("DEL, {} concurrent / {} thr", c.pods, c.workers),
            &c.del,
        );
        println!(
            "concurrent throughput: ADD {:.1} pods/s, DEL {:.1} pods/s",
            c.add_pods_per_s, c.del_pods_per_s
        );
    }
    if let Some(reference) = &r.reference {
        println!("reference: {}", reference.plugins);
        row("ref ADD, sequential, IPv4", &reference.ipv4.add);
        row("ref DEL, sequential, IPv4", &reference.ipv4.del);
        row("ref ADD, sequential, dual-stack", &reference.dual_stack.add);
        row("ref DEL, sequential, dual-stack", &reference.dual_stack.del);
    }
    println!("meshd-cni targets:");
    for t in &r.targets {
        println!(
            "  {}  {:<50} {:>9.1} {} {}",
            if t.pass { "PASS" } else { "FAIL" },
            t.what,
            t.measured,
            t.bound,
            t.limit
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(n: usize, ms: f64) -> Stats {
        Stats {
            n,
            p50_ms: ms,
            p90_ms: ms,
            p99_ms: ms,
            max_ms: ms,
            mean_ms: ms,
        }
    }

    fn report(pods: u32, add_ms: f64, del_ms: f64, reach_ms: f64, unreachable: usize) -> Report {
        let n = pods as usize;
        Report {
            cpus: 2,
            pods,
            sequential_add: flat(n, add_ms),
            sequential_add_first_100: flat(n, add_ms),
            sequential_add_last_100: flat(n, add_ms),
            sequential_del: flat(n, del_ms),
            reachable_v4: flat(n, reach_ms),
            reachable_v6: flat(n, reach_ms),
            reachable_both: flat(n, reach_ms),
            add_start_to_reachable_both: flat(n, add_ms + reach_ms),
            unreachable,
            concurrent: None,
            reference: None,
            targets: Vec::new(),
        }
    }

    #[test]
    fn a_run_within_every_target_passes() {
        let t = targets(&report(100, 5.0, 10.0, 3.9, 0));
        assert!(t.iter().all(|t| t.pass), "{t:?}");
        assert!(verdict(&t).is_ok());
    }

    #[test]
    fn any_missed_target_fails_the_bench() {
        // One target missed at a time: exactly that one fails, and so does the bench.
        for r in [
            report(100, 5.1, 1.0, 1.0, 0),
            report(100, 1.0, 10.1, 1.0, 0),
            report(100, 1.0, 1.0, 4.0, 0),
            report(100, 1.0, 1.0, 1.0, 1),
            report(99, 1.0, 1.0, 1.0, 0),
        ] {
            let t = targets(&r);
            assert_eq!(t.iter().filter(|t| !t.pass).count(), 1, "{t:?}");
            assert!(verdict(&t).is_err(), "{t:?}");
        }
        // No samples at all is no pass.
        assert!(verdict(&targets(&report(0, 0.0, 0.0, 0.0, 0))).is_err());
    }
}
