//! Peer scale: one device per user-space implementation, configured with many peers over its
//! raw UAPI socket, timing one more add and remove, its RSS and its idle CPU.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use integration::bench::{self, ScaleResult, Userspace};
use testkit::netns::{self, NetnsGuard};

use crate::cli::Args;
use crate::process::{locate, start_daemon, version_of};
use crate::stop::{check_stop, pause};
use crate::Cfg;

/// Peers per UAPI request while configuring the peer-scale devices.
const CONFIGURE_BATCH: usize = 1_000;

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

pub(crate) fn scale(u: Userspace, args: &Args, cfg: &Cfg) -> ScaleResult {
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
