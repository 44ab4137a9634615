//! `mesh-bench`: meshd's user-space datapath against plain veth and the user-space
//! WireGuard references, in one run on one machine.
//!
//! Install what it compares against first (root; idempotent):
//!
//! ```sh
//! scripts/bench-deps.sh          # iperf3, wireguard-go, wireguard-tools; boringtun-cli into /opt/meshd-bench
//! cargo build --release --bins   # mesh-bench, meshctl, meshd, meshd-wg side by side
//! target/release/mesh-bench      # --duration-s 10 --only … --scale … --json
//! ```
//!
//! Data plane, TCP throughput (iperf3, 1 and 4 streams) and RTT (ping) for
//!
//! - `plain`: two fresh namespaces joined by a veth pair (MTU 1500);
//! - `wireguard-go`: the same plus a wireguard-go tunnel (MTU 1420), configured with `wg`;
//! - `boringtun-cli`: the same with `boringtun-cli -f --disable-drop-privileges --threads 1`;
//! - `meshd`: pod to pod across two nodes of a meshd lab (`meshctl lab up`), pod traffic
//!   steered into the tunnel by the tc eBPF redirect (the default), through whatever
//!   `meshd-wg` sits next to meshd;
//! - `meshd-routes`: the same with `--pod-steering routes` (not run by default);
//! - `meshd-wg`: meshd's datapath alone, set up exactly like wireguard-go and boringtun-cli
//!   (two namespaces over a veth, configured with `wg`): the like-for-like comparison;
//! - `plain-lab`: the meshd lab with encryption disabled, pod to pod across two nodes: the
//!   lab's own hops (pod veths, bridge), the baseline the `meshd` scenario adds to,
//!
//! then peer scale for each user-space implementation (wireguard-go, boringtun-cli,
//! meshd-wg): one device in a namespace of its own, `--peers` peers configured over its raw
//! UAPI socket, the time to add and to remove one more peer, its RSS and its idle CPU.
//! It prints both tables, meshd's ratios to the references and the targets with PASS/FAIL
//! (or JSON with `--json`). The parsing, ratios, targets and the table live in
//! `integration::bench`; this binary builds namespaces and runs processes. Everything it
//! creates is removed on exit, also on error and on SIGINT/SIGTERM.
//!
//! Exit status: 0 when every measured target is met; 1 when a target is missed (each named
//! on stderr with its measurement and bar) or the run failed; 130 when interrupted. A target
//! that was not measured (`n/a`: its scenario left out with `--only` or unable to run) does
//! not fail the run.

use std::fs::File;
use std::io::Read as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use integration::bench::{
    self, Report, ScaleResult, ScenarioResult, Targets, Userspace, BORINGTUN, MESHD, MESHD_ROUTES,
    MESHD_WG, MESHD_WG_VETH, PLAIN, PLAIN_LAB, WIREGUARD_GO,
};
use integration::LabStatus;
use nix::sys::signal::{SigSet, Signal};
use testkit::netns::{self, ChildGuard, NetnsGuard};

const IPERF_PORT: &str = "5201";
const PLAIN_A: &str = "198.18.200.1";
const PLAIN_B: &str = "198.18.200.2";
const TUN_A: &str = "10.250.0.1";
const TUN_B: &str = "10.250.0.2";
/// Where `scripts/bench-deps.sh` installs boringtun-cli unless `MESH_BENCH_DEPS` says otherwise.
const DEFAULT_DEPS_ROOT: &str = "/opt/meshd-bench";
/// Peers per UAPI request while configuring the peer-scale devices.
const CONFIGURE_BATCH: usize = 1_000;

const SCENARIOS: [&str; 7] = [
    "plain",
    WIREGUARD_GO,
    BORINGTUN,
    MESHD_WG,
    MESHD,
    "plain-lab",
    MESHD_ROUTES,
];

/// Set by the signal thread on SIGINT/SIGTERM: stop measuring, clean up, exit.
static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Debug)]
#[command(
    name = "mesh-bench",
    about = "meshd's user-space datapath against plain veth, wireguard-go and boringtun-cli: \
             throughput, RTT, peer scale, targets. Run scripts/bench-deps.sh first."
)]
struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Pings per RTT measurement.
    #[arg(long, default_value_t = 200)]
    pings: u32,
    /// Interval between pings, ms.
    #[arg(long, default_value_t = 10)]
    ping_interval_ms: u64,
    /// Rounds of the data-plane scenarios: each round runs every scenario once, in order, so
    /// that drift of the machine over minutes hits them all alike; the medians are reported,
    /// each round's numbers listed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Comma-separated data-plane scenarios: plain, wireguard-go, boringtun-cli, meshd-wg,
    /// meshd, plain-lab, meshd-routes; "none" for none.
    #[arg(
        long,
        default_value = "plain,wireguard-go,boringtun-cli,meshd-wg,meshd,plain-lab"
    )]
    only: String,
    /// Comma-separated implementations for the peer-scale runs: wireguard-go, boringtun-cli,
    /// meshd-wg; "none" for none.
    #[arg(long, default_value = "wireguard-go,boringtun-cli,meshd-wg")]
    scale: String,
    /// Peers per peer-scale device.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    peers: u32,
    /// Add/remove samples per peer-scale device (the median is reported).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    churn_samples: u32,
    /// Seconds over which idle CPU is measured with all peers configured.
    #[arg(long, default_value_t = 10)]
    idle_s: u64,
    /// Print machine-readable JSON instead of the tables.
    #[arg(long)]
    json: bool,
    /// Path to meshctl (default: next to this binary, then $PATH).
    #[arg(long)]
    meshctl: Option<PathBuf>,
    /// Path to meshd-wg for the peer-scale run (default: next to this binary, then $PATH).
    #[arg(long)]
    meshd_wg: Option<PathBuf>,
    /// Path to boringtun-cli (default: $PATH, then $MESH_BENCH_DEPS/bin, /opt/meshd-bench/bin).
    #[arg(long)]
    boringtun_cli: Option<PathBuf>,
    /// Path to wireguard-go (default: $PATH).
    #[arg(long)]
    wireguard_go: Option<PathBuf>,
}

/// Settings shared by every measurement.
struct Cfg {
    secs: u64,
    pings: u32,
    ping_interval_ms: u64,
    peers: u32,
    churn_samples: u32,
    idle: Duration,
    clk_tck: u64,
}

struct Measured {
    gbit_1: f64,
    gbit_4: f64,
    retr_1: Option<u64>,
    retr_4: Option<u64>,
    rtt_ms: f64,
}

// === stopping ===

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn check_stop() -> anyhow::Result<()> {
    if stopping() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, returning early with an error when asked to stop.
fn pause(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

/// Blocks SIGINT and SIGTERM in every thread and waits for them in one: the first sets
/// [`STOP`] (the run unwinds and its guards clean up), a second exits at once.
fn handle_signals() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if let Err(err) = set.thread_block() {
        eprintln!("mesh-bench: blocking SIGINT/SIGTERM failed ({err}); Ctrl-C will not clean up");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                if STOP.swap(true, Ordering::SeqCst) {
                    eprintln!("mesh-bench: {sig} again, exiting without cleaning up");
                    std::process::exit(130);
                }
                eprintln!("mesh-bench: {sig}, cleaning up (send it again to exit at once)");
            }
        });
    if let Err(err) = spawned {
        eprintln!("mesh-bench: no signal thread ({err})");
    }
}

// === processes ===

fn run_ok(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = netns::run(program, args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_with_stdin(program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {program}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// First line of `BIN --version`, if it prints one.
fn version_of(bin: &Path) -> Option<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| !l.trim().is_empty())?.trim();
    Some(line.to_string())
}

/// `explicit`, else the first of `dirs` holding `name`.
fn find_binary(name: &str, explicit: Option<&Path>, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("{} does not exist", p.display());
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{name} not found in {}", join_paths(dirs)))
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn exe_dir() -> Vec<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .into_iter()
        .collect()
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

fn deps_dir() -> PathBuf {
    std::env::var_os("MESH_BENCH_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DEPS_ROOT))
        .join("bin")
}

/// Where each implementation's binary is, or why it is unavailable.
fn locate(u: Userspace, args: &Args) -> anyhow::Result<PathBuf> {
    let hint = "run scripts/bench-deps.sh";
    match u {
        Userspace::WireguardGo => {
            find_binary(u.name(), args.wireguard_go.as_deref(), &path_dirs()).with_context(|| hint)
        }
        Userspace::Boringtun => {
            let mut dirs = path_dirs();
            dirs.push(deps_dir());
            find_binary(u.name(), args.boringtun_cli.as_deref(), &dirs).with_context(|| {
                format!("{hint} (installs it into {DEFAULT_DEPS_ROOT}/bin) or pass --boringtun-cli")
            })
        }
        Userspace::MeshdWg => {
            let mut dirs = exe_dir();
            dirs.extend(path_dirs());
            find_binary(u.name(), args.meshd_wg.as_deref(), &dirs)
                .context("build it (cargo build --release --bins) or pass --meshd-wg")
        }
    }
}

/// The pid of the program `ip netns exec` started as `child` (it execs; should a version
/// fork instead, its only child).
fn program_pid(child: u32) -> u32 {
    let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
    if comm.trim() != "ip" {
        return child;
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return child;
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| bench::status_field(&s, "PPid"))
                == Some(u64::from(child))
        })
        .unwrap_or(child)
}

/// A user-space WireGuard process serving one TUN. On drop: SIGTERM, SIGKILL after 2 s,
/// reaped, and its UAPI socket and log removed.
struct Daemon {
    child: Option<Child>,
    pid: u32,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let tail: Vec<&str> = s.lines().rev().take(5).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Starts `u` (binary `bin`) in namespace `ns` serving TUN `ifname` and waits until its UAPI
/// socket answers.
fn start_daemon(ns: &NetnsGuard, u: Userspace, bin: &Path, ifname: &str) -> anyhow::Result<Daemon> {
    let socket = bench::uapi_socket(ifname);
    let _ = std::fs::remove_file(&socket);
    std::fs::create_dir_all(bench::UAPI_DIR).context("creating the UAPI socket directory")?;
    let log = std::env::temp_dir().join(format!("mesh-bench-{ifname}.log"));
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(bin)
        .args(u.args(ifname))
        .env("WG_PROCESS_FOREGROUND", "1")
        .env("LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let pid = child.id();
    let mut d = Daemon {
        child: Some(child),
        pid,
        socket,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        check_stop()?;
        if std::os::unix::net::UnixStream::connect(&d.socket).is_ok() {
            break;
        }
        if let Some(Ok(Some(st))) = d.child.as_mut().map(Child::try_wait) {
            bail!(
                "{} for {ifname} exited ({st}): {}",
                u.name(),
                log_tail(&d.log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} for {ifname} did not serve {} within 10 s: {}",
                u.name(),
                d.socket.display(),
                log_tail(&d.log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    d.pid = program_pid(pid);
    Ok(d)
}

// === data plane ===

/// Waits until something listens on TCP `port` inside `ns`.
fn wait_listening(ns: &str, port: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
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
    bail!("nothing listening on port {port} in {ns}")
}

fn iperf(
    client_ns: &str,
    server: &str,
    secs: u64,
    streams: u32,
) -> anyhow::Result<bench::IperfRun> {
    let t = secs.to_string();
    let p = streams.to_string();
    let out = netns::run_in_unchecked(
        client_ns,
        &[
            "iperf3", "-c", server, "-p", IPERF_PORT, "-t", &t, "-P", &p, "-J",
        ],
    )?;
    Ok(bench::parse_iperf(&String::from_utf8_lossy(&out.stdout))?)
}

/// iperf3 1 and 4 streams plus ping, from `client_ns` to `server_addr` in `server_ns`.
fn measure(
    client_ns: &str,
    server_ns: &str,
    server_addr: &str,
    cfg: &Cfg,
) -> anyhow::Result<Measured> {
    // Connectivity (and the WireGuard handshake) first.
    netns::run_in(
        client_ns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", server_addr],
    )
    .context("warm-up ping")?;
    let server = netns::spawn_in(server_ns, &["iperf3", "-s", "-p", IPERF_PORT])?;
    let _server = ChildGuard::new(server);
    wait_listening(server_ns, IPERF_PORT, Duration::from_secs(5))?;
    let one = iperf(client_ns, server_addr, cfg.secs, 1).context("iperf3 -P 1")?;
    pause(Duration::from_millis(300))?;
    let four = iperf(client_ns, server_addr, cfg.secs, 4).context("iperf3 -P 4")?;
    check_stop()?;
    let count = cfg.pings.to_string();
    let interval = bench::ping_interval_arg(cfg.ping_interval_ms);
    let ping = netns::run_in(
        client_ns,
        &["ping", "-q", "-c", &count, "-i", &interval, server_addr],
    )
    .context("ping")?;
    let stats = bench::parse_ping(&String::from_utf8_lossy(&ping.stdout))?;
    Ok(Measured {
        gbit_1: one.gbit_s(),
        gbit_4: four.gbit_s(),
        retr_1: one.retransmits,
        retr_4: four.retransmits,
        rtt_ms: stats.avg_ms,
    })
}

/// Two namespaces joined by a veth pair with 198.18.200.1/24 ↔ .2.
struct VethPair {
    a: NetnsGuard,
    b: NetnsGuard,
}

fn veth_pair(tag: &str) -> anyhow::Result<VethPair> {
    let a = NetnsGuard::new(&netns::unique_name("mb", &format!("{tag}a")))?;
    let b = NetnsGuard::new(&netns::unique_name("mb", &format!("{tag}b")))?;
    a.run(&[
        "ip",
        "link",
        "add",
        "veth0",
        "mtu",
        "1500",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
        "mtu",
        "1500",
        "netns",
        b.name(),
    ])?;
    a.run(&[
        "ip",
        "addr",
        "add",
        &format!("{PLAIN_A}/24"),
        "dev",
        "veth0",
    ])?;
    b.run(&[
        "ip",
        "addr",
        "add",
        &format!("{PLAIN_B}/24"),
        "dev",
        "veth1",
    ])?;
    a.run(&["ip", "link", "set", "veth0", "up"])?;
    b.run(&["ip", "link", "set", "veth1", "up"])?;
    Ok(VethPair { a, b })
}

fn bench_plain(cfg: &Cfg) -> anyhow::Result<Measured> {
    let p = veth_pair("p")?;
    measure(p.a.name(), p.b.name(), PLAIN_B, cfg)
}

/// A tunnel of user-space implementation `u` over the veth pair, configured with `wg set`.
fn bench_tunnel(u: Userspace, bin: &Path, cfg: &Cfg) -> anyhow::Result<Measured> {
    let p = veth_pair(&u.tag().to_string())?;
    let pid = std::process::id();
    let if_a = format!("mb{}{pid}a", u.tag());
    let if_b = format!("mb{}{pid}b", u.tag());
    let key_a = run_ok("wg", &["genkey"])?.trim().to_string();
    let key_b = run_ok("wg", &["genkey"])?.trim().to_string();
    let pub_a = run_with_stdin("wg", &["pubkey"], &key_a)?;
    let pub_b = run_with_stdin("wg", &["pubkey"], &key_b)?;
    let _dev_a = start_daemon(&p.a, u, bin, &if_a)?;
    let _dev_b = start_daemon(&p.b, u, bin, &if_b)?;
    let setups = [
        (
            &p.a, &if_a, &key_a, "51821", &pub_b, PLAIN_B, "51822", TUN_A, TUN_B,
        ),
        (
            &p.b, &if_b, &key_b, "51822", &pub_a, PLAIN_A, "51821", TUN_B, TUN_A,
        ),
    ];
    for (ns, ifname, key, port, peer_pub, peer_ip, peer_port, addr, peer_addr) in setups {
        let endpoint = format!("{peer_ip}:{peer_port}");
        let allowed = format!("{peer_addr}/32");
        run_with_stdin(
            "ip",
            &[
                "netns",
                "exec",
                ns.name(),
                "wg",
                "set",
                ifname,
                "private-key",
                "/dev/stdin",
                "listen-port",
                port,
                "peer",
                peer_pub,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ],
            key,
        )?;
        ns.run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", ifname])?;
        ns.run(&["ip", "link", "set", ifname, "mtu", "1420", "up"])?;
    }
    measure(p.a.name(), p.b.name(), TUN_B, cfg)
}

/// Runs `meshctl lab down` on drop.
struct LabGuard {
    meshctl: PathBuf,
    name: String,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.meshctl)
            .args(["lab", "down", "--name", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn meshctl(meshctl: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(meshctl)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", meshctl.display()))?;
    if !out.status.success() {
        bail!(
            "`meshctl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn proc_ppid(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    bench::status_field(&s, "PPid")
}

/// Sum of VmRSS (KiB) of the `meshd` and `meshd-wg` processes of `node`.
fn meshd_rss(node: &integration::LabNode) -> Option<u64> {
    let is_meshd = |pid: u32| {
        proc_comm(pid)
            .map(|c| c == "meshd" || c == "meshd-wg")
            .unwrap_or(false)
    };
    let mut pids: Vec<u32> = netns::pids(&node.namespace)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|&p| is_meshd(p))
        .collect();
    if pids.is_empty() {
        // Fallback: meshd's pid from the status and its meshd-wg children.
        if let Some(m) = node.meshd_pid {
            pids.push(m);
            if let Ok(rd) = std::fs::read_dir("/proc") {
                for e in rd.flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    if is_meshd(pid) && proc_ppid(pid) == Some(m.into()) {
                        pids.push(pid);
                    }
                }
            }
        }
    }
    if pids.is_empty() {
        return None;
    }
    Some(
        pids.iter()
            .filter_map(|&p| bench::read_rss_kib(p).ok())
            .sum(),
    )
}

/// Write `n` synthetic node records into the lab's registry (random keys, pod CIDRs that no lab
/// node uses, endpoints nobody sends to: peers without traffic never handshake).
fn add_synthetic_records(registry: &Path, n: u32) -> anyhow::Result<()> {
    use base64::Engine as _;
    for k in 0..n {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        key[0] |= 1;
        let record = serde_json::json!({
            "version": 1,
            "name": format!("synthetic-{k}"),
            "publicKey": base64::engine::general_purpose::STANDARD.encode(key),
            "listenPort": 51820,
            "endpoints": [format!("198.18.0.{}", 100 + k)],
            "podCIDRs": [format!("10.244.{}.0/24", 100 + k), format!("fd00:244:0:{:x}::/64", 0x100 + k)],
        });
        std::fs::write(
            registry.join(format!("synthetic-{k}.json")),
            record.to_string(),
        )?;
    }
    Ok(())
}

/// meshd's lab, pod on node 1 to pod on node 2: the measurement, node 1's RSS and (with
/// `with_rss`) node 1's RSS once it has 100 peers.
fn bench_meshd(
    cfg: &Cfg,
    meshctl_path: &Path,
    extra: &[&str],
    with_rss: bool,
) -> anyhow::Result<(Measured, Option<u64>, Option<u64>)> {
    let name = format!(
        "mb{}{}",
        std::process::id() % 10_000,
        match extra.first() {
            None => "e",
            Some(&"--encryption") => "p",
            Some(_) => "r",
        }
    );
    let _guard = LabGuard {
        meshctl: meshctl_path.to_path_buf(),
        name: name.clone(),
    };
    let mut up = vec![
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
    ];
    up.extend_from_slice(extra);
    meshctl(meshctl_path, &up)?;
    check_stop()?;
    let json = meshctl(
        meshctl_path,
        &["lab", "status", "--name", &name, "-o", "json"],
    )?;
    let st = LabStatus::from_json(&json).context("parse lab status")?;
    if st.nodes.len() < 2 {
        bail!("lab has {} nodes, need 2", st.nodes.len());
    }
    let (n1, n2) = (&st.nodes[0], &st.nodes[1]);
    let client = st
        .pods_on(&n1.name)
        .next()
        .ok_or_else(|| anyhow!("no pod on {}", n1.name))?;
    let server = st
        .pods_on(&n2.name)
        .next()
        .ok_or_else(|| anyhow!("no pod on {}", n2.name))?;
    let addr = server
        .ipv4
        .clone()
        .or_else(|| server.ipv6.clone())
        .ok_or_else(|| anyhow!("pod {} has no address", server.name))?;
    let m = measure(&client.namespace, &server.namespace, &addr, cfg)?;
    let rss = meshd_rss(n1);
    if !with_rss {
        return Ok((m, rss, None));
    }
    // Memory with 100 peers: 99 synthetic records next to node 2.
    let raw: serde_json::Value = serde_json::from_str(&json)?;
    let registry = PathBuf::from(raw["registry_dir"].as_str().context("registry_dir")?);
    add_synthetic_records(&registry, 99)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_stop()?;
        let json = meshctl(
            meshctl_path,
            &["lab", "status", "--name", &name, "-o", "json"],
        )?;
        let st = LabStatus::from_json(&json)?;
        let peers = st.nodes.first().map_or(0, |n| n.peers.len());
        if peers >= 100 {
            break;
        }
        if Instant::now() > deadline {
            bail!("node 1 has {peers} peers, expected 100");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    pause(Duration::from_secs(2))?;
    Ok((m, rss, meshd_rss(n1)))
}

fn fill(res: &mut ScenarioResult, r: anyhow::Result<Measured>) {
    match r {
        Ok(m) => {
            res.status = "ok".into();
            res.gbit_s_1 = Some(m.gbit_1);
            res.gbit_s_4 = Some(m.gbit_4);
            res.rtt_ms = Some(m.rtt_ms);
            res.retransmits_1 = m.retr_1;
            res.retransmits_4 = m.retr_4;
        }
        Err(e) => res.status = format!("error: {e:#}"),
    }
}

fn scenario(name: &str, args: &Args, cfg: &Cfg) -> ScenarioResult {
    let mut r = ScenarioResult {
        name: match name {
            "plain" => PLAIN,
            MESHD_WG => MESHD_WG_VETH,
            "plain-lab" => PLAIN_LAB,
            other => other,
        }
        .to_string(),
        ..Default::default()
    };
    match name {
        "plain" => fill(&mut r, bench_plain(cfg)),
        WIREGUARD_GO | BORINGTUN | MESHD_WG => {
            let u = Userspace::from_name(name).unwrap_or(Userspace::WireguardGo);
            match locate(u, args) {
                Ok(bin) => {
                    r.version = version_of(&bin);
                    fill(&mut r, bench_tunnel(u, &bin, cfg));
                }
                Err(e) => r.status = format!("unavailable: {e:#}"),
            }
        }
        _ => {
            let mut dirs = exe_dir();
            dirs.extend(path_dirs());
            let meshctl_path = match find_binary("meshctl", args.meshctl.as_deref(), &dirs) {
                Ok(p) => p,
                Err(e) => {
                    r.status = format!("unavailable: {e:#} (build it or pass --meshctl)");
                    return r;
                }
            };
            // The lab runs the meshd next to meshctl, which runs the meshd-wg next to itself.
            r.version = meshctl_path
                .parent()
                .map(|d| d.join(bench::MESHD_WG))
                .filter(|p| p.is_file())
                .and_then(|p| version_of(&p));
            let routes = name == MESHD_ROUTES;
            let plain_lab = name == "plain-lab";
            let extra: &[&str] = if routes {
                &["--pod-steering", "routes"]
            } else if plain_lab {
                &["--encryption", "disabled"]
            } else {
                &[]
            };
            match bench_meshd(cfg, &meshctl_path, extra, !routes && !plain_lab) {
                Ok((m, rss, rss100)) => {
                    fill(&mut r, Ok(m));
                    r.rss_kib = rss;
                    r.rss_kib_100_peers = rss100;
                }
                Err(e) => fill(&mut r, Err(e)),
            }
        }
    }
    r
}

// === peer scale ===

/// One device of implementation `u` in a namespace of its own: configure `cfg.peers` peers
/// over raw UAPI, then RSS, idle CPU, and the time to add and remove one more peer.
fn bench_scale(u: Userspace, bin: &Path, cfg: &Cfg, r: &mut ScaleResult) -> anyhow::Result<()> {
    // Nothing but loopback and the device's TUN in here: no packet can leave.
    let ns = NetnsGuard::new(&netns::unique_name("mb", &format!("s{}", u.tag())))?;
    let ifname = format!("mbs{}{}", u.tag(), std::process::id());
    let dev = start_daemon(&ns, u, bin, &ifname)?;
    let sock = dev.socket.clone();
    ns.run(&["ip", "link", "set", &ifname, "up"])?;
    pause(Duration::from_millis(300))?;
    r.rss_kib_empty = Some(bench::read_rss_kib(dev.pid)?);
    let key = bench::synthetic_key("mesh-bench-device", std::process::id());
    bench::uapi_set(&sock, &bench::uapi_device_request(&key, 51820)).context("set key and port")?;

    let peers: Vec<bench::SyntheticPeer> = (0..cfg.peers).map(bench::synthetic_peer).collect();
    let started = Instant::now();
    for batch in peers.chunks(CONFIGURE_BATCH) {
        check_stop()?;
        bench::uapi_set(&sock, &bench::uapi_add_peers_request(batch)).context("add peers")?;
    }
    r.configure_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    let have = bench::uapi_peer_count(&bench::uapi_get(&sock)?);
    if have != peers.len() {
        bail!(
            "{} reports {have} peers after adding {}",
            u.name(),
            peers.len()
        );
    }

    pause(Duration::from_secs(2))?;
    r.rss_kib = Some(bench::read_rss_kib(dev.pid)?);
    let t0 = bench::read_cpu_ticks(dev.pid)?;
    let idle_start = Instant::now();
    pause(cfg.idle)?;
    let ticks = bench::read_cpu_ticks(dev.pid)?.saturating_sub(t0);
    let elapsed = idle_start.elapsed();
    r.idle_cpu_percent = bench::cpu_percent(ticks, cfg.clk_tck, elapsed);
    r.idle_s = Some(elapsed.as_secs_f64());

    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for k in 0..cfg.churn_samples {
        check_stop()?;
        let p = bench::synthetic_peer(cfg.peers + k);
        let req = bench::uapi_add_peers_request(std::slice::from_ref(&p));
        let t = Instant::now();
        bench::uapi_set(&sock, &req).context("add one peer")?;
        add.push(t.elapsed().as_secs_f64() * 1e3);
        let req = bench::uapi_remove_peer_request(&p.public_key);
        let t = Instant::now();
        bench::uapi_set(&sock, &req).context("remove one peer")?;
        remove.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(5));
    }
    r.add_ms = bench::spread(&add);
    r.remove_ms = bench::spread(&remove);
    drop(dev);
    drop(ns);
    Ok(())
}

fn scale(u: Userspace, args: &Args, cfg: &Cfg) -> ScaleResult {
    let mut r = ScaleResult {
        name: u.name().to_string(),
        peers: cfg.peers,
        ..Default::default()
    };
    match locate(u, args) {
        Ok(bin) => {
            r.version = version_of(&bin);
            r.status = match bench_scale(u, &bin, cfg, &mut r) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error: {e:#}"),
            };
        }
        Err(e) => r.status = format!("unavailable: {e:#}"),
    }
    r
}

// === main ===

fn list(arg: &str, allowed: &[&str], what: &str) -> anyhow::Result<Vec<String>> {
    let items: Vec<String> = arg
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty() && s != "none")
        .collect();
    for i in &items {
        if !allowed.contains(&i.as_str()) {
            bail!("unknown {what} {i:?} (want {})", allowed.join(", "));
        }
    }
    Ok(items)
}

/// `getconf CLK_TCK`, else Linux's USER_HZ of 100.
fn clock_ticks() -> u64 {
    run_ok("getconf", &["CLK_TCK"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

fn run(args: &Args) -> anyhow::Result<Report> {
    let wanted = list(&args.only, &SCENARIOS, "scenario")?;
    let impls = list(
        &args.scale,
        &[WIREGUARD_GO, BORINGTUN, bench::MESHD_WG],
        "implementation",
    )?;
    if args.peers + args.churn_samples > bench::MAX_SYNTHETIC_PEERS {
        bail!(
            "--peers + --churn-samples must stay within {}",
            bench::MAX_SYNTHETIC_PEERS
        );
    }
    let cfg = Cfg {
        secs: args.duration_s.max(1),
        pings: args.pings.max(1),
        ping_interval_ms: args.ping_interval_ms.max(2),
        peers: args.peers,
        churn_samples: args.churn_samples,
        idle: Duration::from_secs(args.idle_s.max(1)),
        clk_tck: clock_ticks(),
    };
    let mut report = Report {
        duration_s: cfg.secs,
        pings: cfg.pings,
        ping_interval_ms: cfg.ping_interval_ms,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        scale_peers: cfg.peers,
        rounds: args.rounds,
        ..Default::default()
    };
    // In a fixed order, whatever the order on the command line.
    let names: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| wanted.iter().any(|w| w == s))
        .collect();
    let mut runs: Vec<Vec<ScenarioResult>> = vec![Vec::new(); names.len()];
    for round in 1..=report.rounds {
        for (name, runs) in names.iter().zip(runs.iter_mut()) {
            check_stop()?;
            if report.rounds > 1 {
                eprintln!(
                    "mesh-bench: data plane, {name} (round {round} of {})",
                    report.rounds
                );
            } else {
                eprintln!("mesh-bench: data plane, {name}");
            }
            runs.push(scenario(name, args, &cfg));
        }
    }
    report.results = runs.into_iter().map(bench::merge_rounds).collect();
    for u in [
        Userspace::WireguardGo,
        Userspace::Boringtun,
        Userspace::MeshdWg,
    ] {
        if impls.iter().any(|i| i == u.name()) {
            check_stop()?;
            eprintln!("mesh-bench: peer scale, {} ({} peers)", u.name(), cfg.peers);
            report.peer_scale.push(scale(u, args, &cfg));
        }
    }
    check_stop()?;
    report.finish(&Targets::default());
    Ok(report)
}

/// Whether a finished run met its targets: a missed target fails the run. A target that was
/// not measured (its scenario was left out with `--only` or could not run) does not; the
/// table and the JSON say `n/a` for it.
#[derive(Debug, PartialEq)]
enum RunVerdict {
    /// No target was missed.
    Met,
    /// These targets were missed, one line each (what, measured, bar).
    Missed(Vec<String>),
}

fn run_verdict(targets: &[bench::TargetCheck]) -> RunVerdict {
    let missed: Vec<String> = targets
        .iter()
        .filter(|t| t.verdict == bench::Verdict::Fail)
        .map(|t| {
            format!(
                "{}: measured {} {}, target {} {} {}",
                t.target,
                t.measured.map_or("-".into(), |m| format!("{m:.2}")),
                t.unit,
                if t.at_least { ">=" } else { "<=" },
                t.limit,
                t.unit
            )
        })
        .collect();
    if missed.is_empty() {
        RunVerdict::Met
    } else {
        RunVerdict::Missed(missed)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !testkit::require::is_root() {
        eprintln!("mesh-bench needs root (network namespaces)");
        return ExitCode::FAILURE;
    }
    handle_signals();
    match run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("mesh-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.render());
            }
            match run_verdict(&report.targets) {
                RunVerdict::Met => ExitCode::SUCCESS,
                RunVerdict::Missed(missed) => {
                    eprintln!("mesh-bench: {} target(s) missed:", missed.len());
                    for m in missed {
                        eprintln!("  {m}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("mesh-bench: {e:#}");
            if stopping() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use integration::bench::{TargetCheck, Verdict};

    use super::*;

    fn target(name: &str, measured: Option<f64>, verdict: Verdict) -> TargetCheck {
        TargetCheck {
            target: name.into(),
            measured,
            limit: 5.0,
            at_least: true,
            unit: "x".into(),
            verdict,
        }
    }

    #[test]
    fn a_missed_target_fails_the_run_and_is_named() {
        let targets = [
            target("meshd vs wireguard-go", Some(6.0), Verdict::Pass),
            target("meshd vs boringtun-cli", Some(2.5), Verdict::Fail),
            target("meshd-wg RSS", None, Verdict::NotMeasured),
        ];
        assert_eq!(
            run_verdict(&targets),
            RunVerdict::Missed(vec![
                "meshd vs boringtun-cli: measured 2.50 x, target >= 5 x".into()
            ])
        );
    }

    #[test]
    fn met_and_unmeasured_targets_pass_the_run() {
        assert_eq!(run_verdict(&[]), RunVerdict::Met);
        let targets = [
            target("meshd vs wireguard-go", Some(6.0), Verdict::Pass),
            target("meshd-wg RSS", None, Verdict::NotMeasured),
        ];
        assert_eq!(run_verdict(&targets), RunVerdict::Met);
    }
}
