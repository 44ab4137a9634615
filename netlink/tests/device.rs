//! Root tests of [`netlink::WgDevice`] on user-space devices served by `meshd-wg`: create,
//! configure, apply peer changes and destroy; adoption after the spawner is killed; refusing
//! a same-named device of another namespace, foreign links and stale sockets; two devices
//! handshaking over a veth; `external` mode.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{
    b64, genkey, helper, ifname, in_netns, net, next, opts, pid_alive, run, run_ok, unb64,
    wait_until, wg_dump, Netns,
};
use netlink::{
    uapi, ActiveMode, DeviceError, Links, PeerChange, PeerConfig, Routes, UserspaceOptions,
    WgDevice, WireguardMode,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn auto_creates_userspace_device_configures_applies_and_destroys() {
    testkit::require_tools(&["wg", "ip"]);
    let mut ns = Netns::new();
    let name = ifname();
    ns.track(&name);
    let logs = tempfile::tempdir().expect("tempdir");
    let opts = opts(&logs);
    let (private, public) = genkey();
    let (_, peer_a) = genkey();
    let (_, peer_b) = genkey();

    let n = name.clone();
    let (dev, helper_pid) = in_netns(&ns, move || async move {
        let (dev, adopted) = WgDevice::ensure(&n, WireguardMode::Auto, &opts)
            .await
            .expect("ensure");
        assert!(!adopted, "a fresh device is created, not adopted");
        assert_eq!(dev.mode(), ActiveMode::Userspace);
        assert_eq!(dev.name(), n);
        let links = Links::connect().await.expect("links");
        assert_eq!(
            links.index_of(&n).await.expect("index"),
            Some(dev.ifindex())
        );
        let pid = dev.helper_pid().expect("helper pid");
        (dev, pid)
    });
    assert!(pid_alive(helper_pid));
    let shown = run_ok(ns.cmd("wg").args(["show", &name]));
    assert!(shown.contains(&format!("interface: {name}")), "{shown}");

    let ns_dev = std::sync::Arc::new(dev);
    let d = ns_dev.clone();
    in_netns(&ns, move || async move {
        d.configure(&private, 51901, None).await.expect("configure");
        let st = d.status().await.expect("status");
        assert_eq!(
            st.public_key,
            Some(public),
            "public key derived like wg pubkey"
        );
        assert_eq!(st.listen_port, 51901);
        assert_eq!(st.mode, ActiveMode::Userspace);
        assert_eq!(st.ifindex, d.ifindex());
        assert!(st.peers.is_empty());
        // Configuring the same values again is a no-op.
        d.configure(&private, 51901, None)
            .await
            .expect("configure again");

        d.apply(&[
            PeerChange::Upsert(PeerConfig {
                public_key: peer_a,
                endpoint: Some("[fd00:99::2]:51820".parse().expect("ep")),
                allowed_ips: vec![net("10.50.1.0/24"), net("fd50:1::/64")],
                persistent_keepalive: None,
            }),
            PeerChange::Upsert(PeerConfig {
                public_key: peer_b,
                endpoint: Some("192.0.2.20:51820".parse().expect("ep")),
                allowed_ips: vec![net("10.50.2.0/24"), net("10.50.3.0/24")],
                persistent_keepalive: Some(25),
            }),
        ])
        .await
        .expect("apply upserts");
        let st = d.status().await.expect("status");
        assert_eq!(st.peers.len(), 2);
        let a = st
            .peers
            .iter()
            .find(|p| p.public_key == peer_a)
            .expect("peer a");
        assert_eq!(a.endpoint, Some("[fd00:99::2]:51820".parse().expect("ep")));
        assert_eq!(a.persistent_keepalive, None);
        assert_eq!(a.last_handshake, None);

        // Upsert replaces the allowed IPs of B; A is untouched; then A is removed.
        d.apply(&[PeerChange::Upsert(PeerConfig {
            public_key: peer_b,
            endpoint: Some("192.0.2.20:51820".parse().expect("ep")),
            allowed_ips: vec![net("10.50.2.0/24"), net("fd50:2::/64")],
            persistent_keepalive: Some(25),
        })])
        .await
        .expect("apply update");
        assert_eq!(d.status().await.expect("status").peers.len(), 2);
        d.apply(&[PeerChange::Remove(peer_a)])
            .await
            .expect("apply remove");
        let st = d.status().await.expect("status");
        assert_eq!(st.peers.len(), 1, "{st:?}");
        let b = &st.peers[0];
        assert_eq!(b.public_key, peer_b);
        let mut ips = b.allowed_ips.clone();
        ips.sort();
        assert_eq!(ips, vec![net("10.50.2.0/24"), net("fd50:2::/64")]);
        assert_eq!(b.persistent_keepalive, Some(25));
        assert_eq!(b.endpoint, Some("192.0.2.20:51820".parse().expect("ep")));
    });

    let (port, peers) = wg_dump(&ns, &name);
    assert_eq!(port, "51901");
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0][0], b64(&peer_b));
    assert_eq!(peers[0][2], "192.0.2.20:51820");
    let mut dumped: Vec<&str> = peers[0][3].split(',').collect();
    dumped.sort();
    assert_eq!(dumped, vec!["10.50.2.0/24", "fd50:2::/64"]);
    assert_eq!(peers[0][7], "25");

    let dev = std::sync::Arc::try_unwrap(ns_dev).expect("sole owner");
    let n = name.clone();
    in_netns(&ns, move || async move {
        dev.destroy().await.expect("destroy");
        let links = Links::connect().await.expect("links");
        assert_eq!(links.index_of(&n).await.expect("index"), None);
        assert!(!uapi::socket_path(&n).exists(), "socket removed");
        wait_until("helper exit", Duration::from_secs(5), || {
            !pid_alive(helper_pid)
        })
        .await;
    });
}

/// Run only as a child process of `helper_survives_sigkill_of_spawner_and_is_adopted`:

#[test]
#[ignore = "child process of helper_survives_sigkill_of_spawner_and_is_adopted"]
fn spawner_child_process() {
    let (Ok(name), Ok(helper), Ok(peer)) = (
        std::env::var("NLTEST_IFNAME"),
        std::env::var("NLTEST_HELPER"),
        std::env::var("NLTEST_PEER"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opts = UserspaceOptions {
            helper_binary: helper.into(),
            threads: 1,
            busy_poll_us: netlink::DEFAULT_BUSY_POLL_US,
            log_file: None,
        };
        let (dev, adopted) = WgDevice::ensure(&name, WireguardMode::Userspace, &opts)
            .await
            .expect("ensure");
        assert!(!adopted);
        let peer_config = PeerChange::Upsert(PeerConfig {
            public_key: unb64(&peer),
            endpoint: None,
            allowed_ips: vec![net("10.60.0.0/24")],
            persistent_keepalive: None,
        });
        // The datapath keeps peers added before its private key.
        dev.apply(std::slice::from_ref(&peer_config))
            .await
            .expect("peer before the key");
        dev.configure(&[7u8; 32], 0, None).await.expect("configure");
        dev.apply(&[PeerChange::Upsert(PeerConfig {
            public_key: unb64(&peer),
            endpoint: None,
            allowed_ips: vec![net("10.60.0.0/24")],
            persistent_keepalive: None,
        })])
        .await
        .expect("apply");
        println!(
            "NLTEST_READY {} {}",
            dev.helper_pid().expect("pid"),
            dev.ifindex()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

#[test]
fn helper_survives_sigkill_of_spawner_and_is_adopted() {
    testkit::require_tools(&["wg", "ip"]);
    let mut ns = Netns::new();
    let name = ifname();
    ns.track(&name);
    let (_, peer) = genkey();
    let exe = std::env::current_exe().expect("current exe");
    let mut child = ns
        .cmd(exe.to_str().expect("utf-8 path"))
        .args([
            "--exact",
            "spawner_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NLTEST_IFNAME", &name)
        .env("NLTEST_HELPER", helper())
        .env("NLTEST_PEER", b64(&peer))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut ready = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        // libtest prints "test NAME ... " without a newline first.
        if let Some((_, rest)) = line.split_once("NLTEST_READY ") {
            let mut it = rest.split_whitespace();
            let pid: i32 = it.next().and_then(|p| p.parse().ok()).expect("pid");
            let idx: u32 = it.next().and_then(|p| p.parse().ok()).expect("ifindex");
            ready = Some((pid, idx));
            break;
        }
    }
    let (helper_pid, ifindex) = ready.expect("child reported readiness");
    assert_ne!(helper_pid, child.id() as i32);

    // SIGKILL the process that spawned the helper.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill child");
    let status = child.wait().expect("wait child");
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(pid_alive(helper_pid), "helper survived its spawner");

    let logs = tempfile::tempdir().expect("tempdir");
    let opts = opts(&logs);
    let n = name.clone();
    in_netns(&ns, move || async move {
        let (dev, adopted) = WgDevice::ensure(&n, WireguardMode::Auto, &opts)
            .await
            .expect("ensure adopts");
        assert!(adopted, "existing device adopted");
        assert_eq!(dev.ifindex(), ifindex);
        assert_eq!(dev.mode(), ActiveMode::Userspace);
        assert_eq!(dev.helper_pid(), Some(helper_pid), "no respawn");
        let st = dev.status().await.expect("status");
        assert_eq!(st.peers.len(), 1);
        assert_eq!(st.peers[0].public_key, peer);
        assert_eq!(st.peers[0].allowed_ips, vec![net("10.60.0.0/24")]);

        // Kernel mode must not adopt a user-space device.
        let err = WgDevice::ensure(&n, WireguardMode::Kernel, &opts)
            .await
            .expect_err("mode mismatch");
        assert!(matches!(err, DeviceError::ModeMismatch { .. }), "{err}");

        dev.destroy().await.expect("destroy");
        let links = Links::connect().await.expect("links");
        assert_eq!(links.index_of(&n).await.expect("index"), None);
        assert!(!uapi::socket_path(&n).exists());
    });
}

#[test]
fn same_name_in_another_netns_is_refused() {
    testkit::require_tools(&["ip"]);
    let mut a = Netns::new();
    let b = Netns::new();
    let name = ifname();
    a.track(&name);
    // Link of the same name in b, while a's helper serves the shared socket path.
    b.ip(&["tuntap", "add", "dev", &name, "mode", "tun"]);
    let logs = tempfile::tempdir().expect("tempdir");
    let (o1, o2) = (opts(&logs), opts(&logs));
    let n = name.clone();
    let dev = in_netns(&a, move || async move {
        WgDevice::ensure(&n, WireguardMode::Userspace, &o1)
            .await
            .expect("ensure")
            .0
    });
    let n = name.clone();
    in_netns(&b, move || async move {
        for n in [n.clone(), n] {
            let err = WgDevice::ensure(&n, WireguardMode::Auto, &o2)
                .await
                .expect_err("other namespace's device");
            assert!(matches!(err, DeviceError::SocketInUse { .. }), "{err}");
        }
    });
    b.ip(&["link", "del", &name]);
    let n = name.clone();
    let o3 = opts(&logs);
    in_netns(&b, move || async move {
        let err = WgDevice::ensure(&n, WireguardMode::Userspace, &o3)
            .await
            .expect_err("socket path taken");
        assert!(matches!(err, DeviceError::SocketInUse { .. }), "{err}");
    });
    in_netns(
        &a,
        move || async move { dev.destroy().await.expect("destroy") },
    );
}

#[test]
fn ensure_refuses_foreign_links_clears_stale_sockets_and_reports_missing_kernel_support() {
    testkit::require_tools(&["ip"]);
    let mut ns = Netns::new();
    let occupied = ifname();
    let stale = ifname();
    let kernel = ifname();
    for n in [&occupied, &stale, &kernel] {
        ns.track(n);
    }
    // A persistent TUN nobody serves (no UAPI socket).
    ns.ip(&["tuntap", "add", "dev", &occupied, "mode", "tun"]);
    // A socket file nobody listens on.
    std::fs::create_dir_all(uapi::SOCKET_DIR).expect("socket dir");
    drop(std::os::unix::net::UnixListener::bind(uapi::socket_path(&stale)).expect("bind"));
    assert!(uapi::socket_path(&stale).exists());
    let kernel_supported = run(ns
        .cmd("ip")
        .args(["link", "add", "nlprobe", "type", "wireguard"]))
    .status
    .success();

    let logs = tempfile::tempdir().expect("tempdir");
    let opts = opts(&logs);
    in_netns(&ns, move || async move {
        let err = WgDevice::ensure(&occupied, WireguardMode::Auto, &opts)
            .await
            .expect_err("dummy link is not adoptable");
        assert!(matches!(err, DeviceError::LinkOccupied { .. }), "{err}");
        let links = Links::connect().await.expect("links");
        assert!(
            links.index_of(&occupied).await.expect("index").is_some(),
            "left alone"
        );

        let (dev, adopted) = WgDevice::ensure(&stale, WireguardMode::Userspace, &opts)
            .await
            .expect("stale socket replaced");
        assert!(!adopted);
        dev.destroy().await.expect("destroy");

        if kernel_supported {
            println!("kernel has WireGuard; skipping the unsupported-kernel check");
        } else {
            let err = WgDevice::ensure(&kernel, WireguardMode::Kernel, &opts)
                .await
                .expect_err("no kernel module");
            assert!(
                matches!(err, DeviceError::KernelUnsupported { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("no WireGuard support"), "{err}");
        }
    });
}

#[test]
fn two_userspace_devices_handshake_over_veth() {
    testkit::require_tools(&["wg", "ip", "ping"]);
    let mut a = Netns::new();
    let mut b = Netns::new();
    let (ia, ib) = (ifname(), ifname());
    a.track(&ia);
    b.track(&ib);
    let veth_a = format!("nlv{}", next());
    let veth_b = format!("nlv{}", next());
    run_ok(Command::new("ip").args([
        "link",
        "add",
        &veth_a,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &veth_b,
        "netns",
        b.name(),
    ]));
    a.ip(&["addr", "add", "198.18.9.1/24", "dev", &veth_a]);
    b.ip(&["addr", "add", "198.18.9.2/24", "dev", &veth_b]);
    a.ip(&["link", "set", &veth_a, "up"]);
    b.ip(&["link", "set", &veth_b, "up"]);

    let (priv_a, pub_a) = genkey();
    let (priv_b, pub_b) = genkey();
    let logs = tempfile::tempdir().expect("tempdir");

    let setup = |ns: &Netns,
                 name: String,
                 private: [u8; 32],
                 peer: [u8; 32],
                 endpoint: &str,
                 peer_tunnel_ip: &str| {
        let opts = opts(&logs);
        let endpoint: std::net::SocketAddr = endpoint.parse().expect("ep");
        let peer_net = net(peer_tunnel_ip);
        in_netns(ns, move || async move {
            let (dev, _) = WgDevice::ensure(&name, WireguardMode::Auto, &opts)
                .await
                .expect("ensure");
            dev.configure(&private, 51820, None)
                .await
                .expect("configure");
            dev.apply(
                &[PeerConfig {
                    public_key: peer,
                    endpoint: Some(endpoint),
                    allowed_ips: vec![peer_net],
                    persistent_keepalive: None,
                }]
                .map(PeerChange::Upsert),
            )
            .await
            .expect("apply");
            let links = Links::connect().await.expect("links");
            links.set_up(dev.ifindex()).await.expect("up");
            Routes::connect()
                .await
                .expect("routes")
                .add(peer_net, dev.ifindex())
                .await
                .expect("route");
            dev
        })
    };
    let dev_a = setup(
        &a,
        ia.clone(),
        priv_a,
        pub_b,
        "198.18.9.2:51820",
        "10.99.0.2/32",
    );
    let dev_b = setup(
        &b,
        ib.clone(),
        priv_b,
        pub_a,
        "198.18.9.1:51820",
        "10.99.0.1/32",
    );
    a.ip(&["addr", "add", "10.99.0.1/32", "dev", &ia]);
    b.ip(&["addr", "add", "10.99.0.2/32", "dev", &ib]);

    let ping = run(a
        .cmd("ping")
        .args(["-c", "5", "-i", "0.2", "-W", "2", "10.99.0.2"]));
    assert!(
        ping.status.success(),
        "ping through the tunnel failed: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let hs = run_ok(a.cmd("wg").args(["show", &ia, "latest-handshakes"]));
    let ts: u64 = hs
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .expect("handshake timestamp");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(ts > 0 && now.abs_diff(ts) < 120, "recent handshake: {hs}");

    in_netns(&a, move || async move {
        let st = dev_a.status().await.expect("status");
        let p = &st.peers[0];
        assert_eq!(p.public_key, pub_b);
        let when = p.last_handshake.expect("handshake recorded");
        assert!(
            SystemTime::now().duration_since(when).unwrap_or_default() < Duration::from_secs(120)
        );
        assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
        dev_a.destroy().await.expect("destroy a");
    });
    in_netns(&b, move || async move {
        dev_b.destroy().await.expect("destroy b");
    });
}

#[test]
fn external_mode_waits_for_and_adopts_a_device_run_by_another_process() {
    testkit::require_tools(&["ip"]);
    let mut ns = Netns::new();
    let name = ifname();
    ns.track(&name);
    let logs = tempfile::tempdir().expect("tempdir");
    let opts = opts(&logs);

    // Nothing runs the device: external mode creates nothing and says so after its wait.
    let n = name.clone();
    in_netns(&ns, move || async move {
        let err = WgDevice::adopt_external(&n, Duration::from_millis(600))
            .await
            .expect_err("nothing to adopt");
        assert!(matches!(err, DeviceError::ExternalMissing { .. }), "{err}");
        let links = Links::connect().await.expect("links");
        assert_eq!(links.index_of(&n).await.expect("index"), None);
    });
    assert!(ns.pids().is_empty(), "external mode spawned a helper");

    // meshd starts first (the race of two containers): it waits, and the other container's
    // helper comes up a second later; meshd adopts it instead of failing on, or taking, the name.
    let helper_cmd = {
        let mut c = ns.cmd(helper().to_str().expect("utf-8 path"));
        c.args(["--interface", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let starter = std::thread::spawn(move || {
        let mut helper_cmd = helper_cmd;
        std::thread::sleep(Duration::from_secs(1));
        helper_cmd
            .spawn()
            .expect("start the other process's helper")
    });
    let n = name.clone();
    let started = Instant::now();
    let ifindex = in_netns(&ns, move || async move {
        let (dev, adopted) = WgDevice::ensure(&n, WireguardMode::External, &opts)
            .await
            .expect("external mode adopts the device once it appears");
        assert!(adopted);
        assert_eq!(dev.mode(), ActiveMode::Userspace);
        dev.status().await.expect("its UAPI answers");
        dev.ifindex()
    });
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited");
    let mut other = starter.join().expect("starter thread");
    assert_eq!(
        ns.pids().len(),
        1,
        "only the other process's helper runs: meshd spawned none"
    );
    assert_eq!(
        ns.ip(&["-o", "link", "show", &name])
            .split(':')
            .next()
            .and_then(|i| i.trim().parse::<u32>().ok()),
        Some(ifindex)
    );
    let _ = other.kill();
    let _ = other.wait();
}
