//! `mesh-bench`: data-plane benchmark. In one run on one machine it measures TCP
//! throughput (iperf3, 1 and 4 streams) and RTT (ping) for
//!
//! - `plain`: two fresh namespaces joined by a veth pair (MTU 1500);
//! - `wireguard-go`: the same plus a wireguard-go tunnel (MTU 1420);
//! - `meshd`: pod to pod across two nodes of a meshd lab (`meshctl lab up`), pod traffic
//!   steered into the tunnel by the tc eBPF redirect (the default);
//! - `meshd-routes`: the same with `--pod-steering routes` (the kernel's routes via the
//!   WireGuard device), for the eBPF-versus-routes ratio,
//!
//! and prints a table (or JSON with `--json`) with ratios to plain veth and
//! meshd's resident memory on node 1. Everything it creates is removed on exit.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use integration::netns::{self, ChildGuard, NetnsGuard};
use integration::LabStatus;
use serde::Serialize;

const IPERF_PORT: &str = "5201";
const PLAIN_A: &str = "198.18.200.1";
const PLAIN_B: &str = "198.18.200.2";
const TUN_A: &str = "10.250.0.1";
const TUN_B: &str = "10.250.0.2";

#[derive(Parser, Debug)]
#[command(
    name = "mesh-bench",
    about = "Throughput/RTT: plain veth vs wireguard-go vs meshd"
)]
struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Comma-separated scenarios to run: plain, wireguard-go, meshd, meshd-routes.
    #[arg(long, default_value = "plain,wireguard-go,meshd,meshd-routes")]
    only: String,
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Path to meshctl (default: next to this binary, then $PATH).
    #[arg(long)]
    meshctl: Option<PathBuf>,
}

/// One scenario's numbers.
#[derive(Debug, Clone, Default, Serialize)]
struct ScenarioResult {
    name: String,
    /// "ok", or "unavailable: …" / "error: …".
    status: String,
    gbit_s_1: Option<f64>,
    gbit_s_4: Option<f64>,
    rtt_ms: Option<f64>,
    ratio_1: Option<f64>,
    ratio_4: Option<f64>,
    ratio_rtt: Option<f64>,
    /// Resident memory of meshd + meshd-wg on node 1, KiB.
    rss_kib: Option<u64>,
    /// The same with 100 peers programmed (99 synthetic records added), KiB.
    rss_kib_100_peers: Option<u64>,
    /// Retransmits reported by iperf3 (1 / 4 streams).
    retransmits_1: Option<u64>,
    retransmits_4: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    duration_s: u64,
    cpus: usize,
    results: Vec<ScenarioResult>,
}

struct Measured {
    gbit_1: f64,
    gbit_4: f64,
    retr_1: Option<u64>,
    retr_4: Option<u64>,
    rtt_ms: f64,
}

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

/// Waits until something listens on TCP `port` inside `ns`.
fn wait_listening(ns: &str, port: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let filter = format!("sport = :{port}");
    while Instant::now() < deadline {
        if let Ok(out) = netns::run_in(ns, &["ss", "-Hltn", &filter]) {
            if !out.stdout.is_empty() {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on port {port} in {ns}")
}

/// Parses iperf3 -J output: (bits/s received, retransmits).
fn parse_iperf(json: &str) -> anyhow::Result<(f64, Option<u64>)> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let end = v
        .get("end")
        .ok_or_else(|| anyhow!("iperf3 JSON has no end"))?;
    let bps = end
        .pointer("/sum_received/bits_per_second")
        .or_else(|| end.pointer("/sum/bits_per_second"))
        .and_then(|b| b.as_f64())
        .ok_or_else(|| anyhow!("iperf3 JSON has no bits_per_second"))?;
    let retr = end
        .pointer("/sum_sent/retransmits")
        .and_then(|r| r.as_u64());
    Ok((bps, retr))
}

/// Parses `ping -q` output: average RTT in ms.
fn parse_ping(out: &str) -> anyhow::Result<f64> {
    let line = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .ok_or_else(|| anyhow!("no rtt line in ping output: {out}"))?;
    let nums = line
        .split('=')
        .nth(1)
        .ok_or_else(|| anyhow!("bad rtt line {line}"))?;
    nums.trim()
        .split('/')
        .nth(1)
        .ok_or_else(|| anyhow!("bad rtt line {line}"))?
        .trim()
        .parse()
        .with_context(|| format!("bad rtt line {line}"))
}

fn iperf(
    client_ns: &str,
    server: &str,
    secs: u64,
    streams: u32,
) -> anyhow::Result<(f64, Option<u64>)> {
    let t = secs.to_string();
    let p = streams.to_string();
    let out = netns::run_in_unchecked(
        client_ns,
        &[
            "iperf3", "-c", server, "-p", IPERF_PORT, "-t", &t, "-P", &p, "-J",
        ],
    )?;
    let (bps, retr) = parse_iperf(&String::from_utf8_lossy(&out.stdout))?;
    Ok((bps / 1e9, retr))
}

/// iperf3 1 and 4 streams plus ping, from `client_ns` to `server_addr` in `server_ns`.
fn measure(
    client_ns: &str,
    server_ns: &str,
    server_addr: &str,
    secs: u64,
) -> anyhow::Result<Measured> {
    // Connectivity (and WireGuard handshake) first.
    netns::run_in(
        client_ns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", server_addr],
    )
    .context("warm-up ping")?;
    let server = netns::spawn_in(server_ns, &["iperf3", "-s", "-p", IPERF_PORT])?;
    let _server = ChildGuard::new(server);
    wait_listening(server_ns, IPERF_PORT, Duration::from_secs(5))?;
    let (gbit_1, retr_1) = iperf(client_ns, server_addr, secs, 1).context("iperf3 -P 1")?;
    std::thread::sleep(Duration::from_millis(300));
    let (gbit_4, retr_4) = iperf(client_ns, server_addr, secs, 4).context("iperf3 -P 4")?;
    let ping = netns::run_in(
        client_ns,
        &["ping", "-q", "-c", "50", "-i", "0.02", server_addr],
    )
    .context("ping")?;
    let rtt_ms = parse_ping(&String::from_utf8_lossy(&ping.stdout))?;
    Ok(Measured {
        gbit_1,
        gbit_4,
        retr_1,
        retr_4,
        rtt_ms,
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

fn bench_plain(secs: u64) -> anyhow::Result<Measured> {
    let p = veth_pair("p")?;
    measure(p.a.name(), p.b.name(), PLAIN_B, secs)
}

/// A wireguard-go process; killed on drop, and its UAPI socket removed.
struct WgGo {
    child: ChildGuard,
    sock: PathBuf,
}

impl Drop for WgGo {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn start_wireguard_go(ns: &NetnsGuard, ifname: &str) -> anyhow::Result<WgGo> {
    let sock = Path::new("/var/run/wireguard").join(format!("{ifname}.sock"));
    let _ = std::fs::remove_file(&sock);
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "wireguard-go", "-f", ifname])
        .env("WG_PROCESS_FOREGROUND", "1")
        .env("LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn wireguard-go")?;
    let mut guard = ChildGuard::new(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        if let Some(c) = guard.child_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("wireguard-go for {ifname} exited: {st}");
            }
        }
        if Instant::now() > deadline {
            bail!(
                "wireguard-go for {ifname} did not create {}",
                sock.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(WgGo { child: guard, sock })
}

fn bench_wireguard_go(secs: u64) -> anyhow::Result<Measured> {
    let p = veth_pair("w")?;
    let pid = std::process::id();
    let if_a = format!("wgb{pid}a");
    let if_b = format!("wgb{pid}b");
    let key_a = run_ok("wg", &["genkey"])?.trim().to_string();
    let key_b = run_ok("wg", &["genkey"])?.trim().to_string();
    let pub_a = run_with_stdin("wg", &["pubkey"], &key_a)?;
    let pub_b = run_with_stdin("wg", &["pubkey"], &key_b)?;
    let wg_a = start_wireguard_go(&p.a, &if_a)?;
    let wg_b = start_wireguard_go(&p.b, &if_b)?;
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
    let m = measure(p.a.name(), p.b.name(), TUN_B, secs);
    drop(wg_a);
    drop(wg_b);
    m
}

fn find_meshctl(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        bail!("{} does not exist", p.display());
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let cand = dir.join("meshctl");
            if cand.exists() {
                return Ok(cand);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("meshctl");
            if cand.exists() {
                return Ok(cand);
            }
        }
    }
    bail!("meshctl not found (next to mesh-bench or on $PATH; use --meshctl)")
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

fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
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
                    if is_meshd(pid) && proc_status_field(pid, "PPid") == Some(m.into()) {
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
            .filter_map(|&p| proc_status_field(p, "VmRSS"))
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

fn bench_meshd(
    secs: u64,
    meshctl_arg: Option<&Path>,
    extra: &[&str],
    with_rss: bool,
) -> Result<(Measured, Option<u64>, Option<u64>), String> {
    let meshctl_path = find_meshctl(meshctl_arg).map_err(|e| format!("unavailable: {e:#}"))?;
    let name = format!(
        "mb{}{}",
        std::process::id() % 10_000,
        if extra.is_empty() { "e" } else { "r" }
    );
    let guard = LabGuard {
        meshctl: meshctl_path.clone(),
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
    meshctl(&meshctl_path, &up).map_err(|e| format!("unavailable: {e:#}"))?;
    let run = || -> anyhow::Result<(Measured, Option<u64>, Option<u64>)> {
        let json = meshctl(
            &meshctl_path,
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
        let m = measure(&client.namespace, &server.namespace, &addr, secs)?;
        let rss = meshd_rss(n1);
        if !with_rss {
            return Ok((m, rss, None));
        }
        // Memory with 100 peers: 99 synthetic records next to node 2.
        let raw: serde_json::Value = serde_json::from_str(&json)?;
        let registry = PathBuf::from(raw["registry_dir"].as_str().context("registry_dir")?);
        add_synthetic_records(&registry, 99)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let json = meshctl(
                &meshctl_path,
                &["lab", "status", "--name", &name, "-o", "json"],
            )?;
            let st = LabStatus::from_json(&json)?;
            if st.nodes[0].peers.len() >= 100 {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("node 1 has {} peers, expected 100", st.nodes[0].peers.len());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        Ok((m, rss, meshd_rss(n1)))
    };
    let r = run().map_err(|e| format!("error: {e:#}"));
    drop(guard);
    r
}

fn fill(res: &mut ScenarioResult, r: Result<Measured, String>) {
    match r {
        Ok(m) => {
            res.status = "ok".into();
            res.gbit_s_1 = Some(m.gbit_1);
            res.gbit_s_4 = Some(m.gbit_4);
            res.rtt_ms = Some(m.rtt_ms);
            res.retransmits_1 = m.retr_1;
            res.retransmits_4 = m.retr_4;
        }
        Err(e) => res.status = e,
    }
}

fn ratio(x: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => Some(x / b),
        _ => None,
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_table(report: &Report) {
    println!(
        "mesh-bench: iperf3 {} s per run, ping -c 50 -i 0.02, {} CPUs",
        report.duration_s, report.cpus
    );
    println!(
        "{:<14} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>10} {:>13}  status",
        "scenario",
        "1s Gbit/s",
        "4s Gbit/s",
        "RTT ms",
        "x1s",
        "x4s",
        "xRTT",
        "RSS MiB",
        "RSS@100 peers"
    );
    for r in &report.results {
        println!(
            "{:<14} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>10} {:>13}  {}",
            r.name,
            fmt_opt(r.gbit_s_1, 2),
            fmt_opt(r.gbit_s_4, 2),
            fmt_opt(r.rtt_ms, 3),
            fmt_opt(r.ratio_1, 2),
            fmt_opt(r.ratio_4, 2),
            fmt_opt(r.ratio_rtt, 2),
            fmt_opt(r.rss_kib.map(|k| k as f64 / 1024.0), 1),
            fmt_opt(r.rss_kib_100_peers.map(|k| k as f64 / 1024.0), 1),
            r.status
        );
    }
    let find = |n: &str| {
        report
            .results
            .iter()
            .find(|r| r.name == n && r.status == "ok")
    };
    if let (Some(e), Some(r)) = (find("meshd"), find("meshd-routes")) {
        println!(
            "eBPF redirect / route steering: {} (1 stream), {} (4 streams), RTT {}",
            fmt_opt(ratio(e.gbit_s_1, r.gbit_s_1), 2),
            fmt_opt(ratio(e.gbit_s_4, r.gbit_s_4), 2),
            fmt_opt(ratio(e.rtt_ms, r.rtt_ms), 2)
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !netns::is_root() {
        bail!("mesh-bench needs root (network namespaces)");
    }
    let wanted: Vec<String> = args
        .only
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for w in &wanted {
        if !["plain", "wireguard-go", "meshd", "meshd-routes"].contains(&w.as_str()) {
            bail!("unknown scenario {w:?} (want plain, wireguard-go, meshd, meshd-routes)");
        }
    }
    let secs = args.duration_s.max(1);
    let mut results = Vec::new();
    if wanted.iter().any(|w| w == "plain") {
        let mut r = ScenarioResult {
            name: "plain veth".into(),
            ..Default::default()
        };
        fill(
            &mut r,
            bench_plain(secs).map_err(|e| format!("error: {e:#}")),
        );
        results.push(r);
    }
    if wanted.iter().any(|w| w == "wireguard-go") {
        let mut r = ScenarioResult {
            name: "wireguard-go".into(),
            ..Default::default()
        };
        fill(
            &mut r,
            bench_wireguard_go(secs).map_err(|e| format!("error: {e:#}")),
        );
        results.push(r);
    }
    if wanted.iter().any(|w| w == "meshd") {
        let mut r = ScenarioResult {
            name: "meshd".into(),
            ..Default::default()
        };
        match bench_meshd(secs, args.meshctl.as_deref(), &[], true) {
            Ok((m, rss, rss100)) => {
                fill(&mut r, Ok(m));
                r.rss_kib = rss;
                r.rss_kib_100_peers = rss100;
            }
            Err(e) => fill(&mut r, Err(e)),
        }
        results.push(r);
    }
    if wanted.iter().any(|w| w == "meshd-routes") {
        let mut r = ScenarioResult {
            name: "meshd-routes".into(),
            ..Default::default()
        };
        match bench_meshd(
            secs,
            args.meshctl.as_deref(),
            &["--pod-steering", "routes"],
            false,
        ) {
            Ok((m, rss, _)) => {
                fill(&mut r, Ok(m));
                r.rss_kib = rss;
            }
            Err(e) => fill(&mut r, Err(e)),
        }
        results.push(r);
    }
    let plain = results
        .iter()
        .find(|r| r.name == "plain veth" && r.status == "ok")
        .cloned();
    if let Some(p) = plain {
        for r in &mut results {
            r.ratio_1 = ratio(r.gbit_s_1, p.gbit_s_1);
            r.ratio_4 = ratio(r.gbit_s_4, p.gbit_s_4);
            r.ratio_rtt = ratio(r.rtt_ms, p.rtt_ms);
        }
    }
    let report = Report {
        duration_s: secs,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping() {
        let out = "--- x ping statistics ---\n50 packets transmitted, 50 received, 0% packet loss, time 1000ms\nrtt min/avg/max/mdev = 0.021/0.045/0.120/0.010 ms\n";
        assert!((parse_ping(out).unwrap() - 0.045).abs() < 1e-9);
        assert!(parse_ping("nothing").is_err());
    }

    #[test]
    fn parses_iperf() {
        let j = r#"{"end":{"sum_sent":{"bits_per_second":2e9,"retransmits":3},"sum_received":{"bits_per_second":1.5e9}}}"#;
        let (bps, retr) = parse_iperf(j).unwrap();
        assert_eq!(bps, 1.5e9);
        assert_eq!(retr, Some(3));
        assert!(parse_iperf(r#"{"error":"unable to connect"}"#).is_err());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
