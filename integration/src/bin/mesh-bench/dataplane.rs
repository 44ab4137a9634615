//! The data-plane scenarios over namespaces of their own: plain veth and the user-space tunnels
//! (wireguard-go, boringtun-cli, meshd-wg), measured with iperf3 and ping, and the dispatch of
//! every scenario by name.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use integration::bench::{
    self, ScenarioResult, Userspace, BORINGTUN, MESHD_ROUTES, MESHD_WG, MESHD_WG_VETH, PLAIN,
    PLAIN_LAB, WIREGUARD_GO,
};
use testkit::netns::{self, ChildGuard, NetnsGuard};

use crate::cli::Args;
use crate::lab::bench_meshd;
use crate::process::{
    exe_dir, find_binary, locate, path_dirs, run_ok, run_with_stdin, start_daemon, version_of,
};
use crate::stop::{check_stop, pause};
use crate::{Cfg, Measured};

const IPERF_PORT: &str = "5201";
const PLAIN_A: &str = "198.18.200.1";
const PLAIN_B: &str = "198.18.200.2";
const TUN_A: &str = "10.250.0.1";
const TUN_B: &str = "10.250.0.2";

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
pub(crate) fn measure(
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

pub(crate) fn scenario(name: &str, args: &Args, cfg: &Cfg) -> ScenarioResult {
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
