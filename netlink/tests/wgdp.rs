//! Root integration tests of the wgdp datapath as `meshd-wg` runs it: two network namespaces
//! joined by a veth, a device in each (or wireguard-go in one), configured with `wg`.
//!
//! Namespaces are `wgdp-<pid>-<n>`; they, the processes in them and the UAPI sockets are
//! removed on drop, even when a test fails. Traffic only flows between namespaces the test
//! created. Without root (or without `wg`) the tests print a note and pass. The throughput
//! comparison is `#[ignore]`d: `cargo test -p netlink --release --test wgdp -- --ignored
//! --nocapture`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A unique interface name (≤ 15 chars): UAPI sockets are shared by all namespaces.
fn ifname() -> String {
    format!("wgd{}x{}", std::process::id() % 100_000, next())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn can_run(tools: &[&str]) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipping: needs root (network namespaces, TUN)");
        return false;
    }
    for t in tools {
        if !have(t) {
            println!("skipping: {t} not installed (apt-get install -y wireguard-tools wireguard-go iperf3)");
            return false;
        }
    }
    true
}

fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshd-wg"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running command")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wg_stdin(args: &[&str], input: &str) -> String {
    let mut child = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wg");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A key pair in base64 (as `wg` prints it) and hex (as the UAPI wants it).
struct Keys {
    private: String,
    public: String,
}

impl Keys {
    fn new() -> Keys {
        let private = run_ok(Command::new("wg").arg("genkey")).trim().to_string();
        let public = wg_stdin(&["pubkey"], &private);
        Keys { private, public }
    }
}

fn b64_to_hex(b64: &str) -> String {
    use base64::Engine as _;
    let v = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64");
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// A network namespace that is deleted, with every process in it killed, on drop.
struct Netns {
    name: String,
    sockets: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("wgdp-{}-{}", std::process::id(), next());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            sockets: Vec::new(),
            children: Vec::new(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn ip(&self, args: &[&str]) -> String {
        run_ok(self.cmd("ip").args(args))
    }

    fn wg(&self, args: &[&str]) -> String {
        run_ok(self.cmd("wg").args(args))
    }

    /// Starts a device `ifname` in this namespace (meshd-wg or wireguard-go) and waits for
    /// its UAPI socket. Returns its pid.
    fn start_device(&mut self, ifname: &str, kind: Impl, threads: usize) -> i32 {
        let socket = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        self.sockets.push(socket.clone());
        let mut cmd = match kind {
            Impl::Wgdp | Impl::WgdpPlain => {
                let mut c = self.cmd(helper().to_str().expect("utf-8"));
                c.args(["--interface", ifname, "--threads", &threads.to_string()]);
                if kind == Impl::WgdpPlain {
                    c.arg("--no-offloads");
                }
                c.env("RUST_LOG", "info");
                c
            }
            Impl::WireguardGo => {
                let mut c = self.cmd("wireguard-go");
                c.args(["-f", ifname]);
                c.env("LOG_LEVEL", "error");
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn device");
        let pid = i32::try_from(child.id()).expect("pid");
        self.children.push(child);
        let start = Instant::now();
        while !(socket.exists() && run(self.cmd("wg").args(["show", ifname])).status.success()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "device {ifname} did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pid
    }

    fn pids(&self) -> Vec<i32> {
        let out = run(Command::new("ip").args(["netns", "pids", &self.name]));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// (TcpInCsumErrors, UdpInCsumErrors) of the namespace.
    fn csum_errors(&self) -> (u64, u64) {
        let out = run_ok(self.cmd("nstat").args([
            "-a",
            "-s",
            "-z",
            "TcpInCsumErrors",
            "UdpInCsumErrors",
        ]));
        let get = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (get("TcpInCsumErrors"), get("UdpInCsumErrors"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Wgdp,
    /// meshd-wg with `--no-offloads`: the per-packet fallbacks.
    WgdpPlain,
    WireguardGo,
}

/// Two namespaces joined by a veth (198.18.X.1/2, fd18:X::1/2), a device in each, keyed
/// and peered with `wg`, tunnel addresses 10.X.0.1/2 and fd10:X::1/2.
struct Pair {
    a: Netns,
    b: Netns,
    ia: String,
    ib: String,
    ka: Keys,
    kb: Keys,
    pid_a: i32,
    pid_b: i32,
    net: u8,
}

impl Pair {
    fn new(kind_a: Impl, kind_b: Impl, v6_underlay: bool) -> Pair {
        Self::with_threads(kind_a, kind_b, v6_underlay, 1)
    }

    fn with_threads(kind_a: Impl, kind_b: Impl, v6_underlay: bool, threads: usize) -> Pair {
        let mut a = Netns::new();
        let mut b = Netns::new();
        let net = u8::try_from(20 + next() % 200).expect("octet");
        let (va, vb) = (format!("wgv{}a", next()), format!("wgv{}b", next()));
        run_ok(Command::new("ip").args([
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
            &b.name,
        ]));
        a.ip(&["addr", "add", &format!("198.18.{net}.1/24"), "dev", &va]);
        b.ip(&["addr", "add", &format!("198.18.{net}.2/24"), "dev", &vb]);
        a.ip(&[
            "addr",
            "add",
            &format!("fd18:{net}::1/64"),
            "dev",
            &va,
            "nodad",
        ]);
        b.ip(&[
            "addr",
            "add",
            &format!("fd18:{net}::2/64"),
            "dev",
            &vb,
            "nodad",
        ]);
        a.ip(&["link", "set", &va, "up"]);
        b.ip(&["link", "set", &vb, "up"]);
        let (ia, ib) = (ifname(), ifname());
        let pid_a = a.start_device(&ia, kind_a, threads);
        let pid_b = b.start_device(&ib, kind_b, threads);
        let (ka, kb) = (Keys::new(), Keys::new());
        let (ep_a, ep_b) = if v6_underlay {
            (
                format!("[fd18:{net}::1]:51820"),
                format!("[fd18:{net}::2]:51820"),
            )
        } else {
            (
                format!("198.18.{net}.1:51820"),
                format!("198.18.{net}.2:51820"),
            )
        };
        for (ns, ifn, me, peer, ep, peer_ip) in
            [(&a, &ia, &ka, &kb, &ep_b, 2), (&b, &ib, &kb, &ka, &ep_a, 1)]
        {
            let key_file = tempfile::NamedTempFile::new().expect("temp");
            std::fs::write(key_file.path(), &me.private).expect("key");
            ns.wg(&[
                "set",
                ifn,
                "private-key",
                key_file.path().to_str().expect("utf-8"),
                "listen-port",
                "51820",
                "peer",
                &peer.public,
                "endpoint",
                ep,
                "allowed-ips",
                &format!("10.{net}.0.{peer_ip}/32,fd10:{net}::{peer_ip}/128"),
            ]);
            let me_ip = 3 - peer_ip;
            ns.ip(&["addr", "add", &format!("10.{net}.0.{me_ip}/24"), "dev", ifn]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd10:{net}::{me_ip}/64"),
                "dev",
                ifn,
                "nodad",
            ]);
            ns.ip(&["link", "set", ifn, "mtu", "1420", "up"]);
        }
        Pair {
            a,
            b,
            ia,
            ib,
            ka,
            kb,
            pid_a,
            pid_b,
            net,
        }
    }

    fn tunnel_ip(&self, side: u8, v6: bool) -> String {
        if v6 {
            format!("fd10:{}::{side}", self.net)
        } else {
            format!("10.{}.0.{side}", self.net)
        }
    }

    /// Checksum errors counted in each namespace: (a, b).
    fn csum_errors(&self) -> ((u64, u64), (u64, u64)) {
        (self.a.csum_errors(), self.b.csum_errors())
    }

    fn ping(&self, from_a: bool, v6: bool) {
        let (ns, to) = if from_a {
            (&self.a, self.tunnel_ip(2, v6))
        } else {
            (&self.b, self.tunnel_ip(1, v6))
        };
        let out = run(ns
            .cmd("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "3", &to]));
        assert!(
            out.status.success(),
            "ping {to} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Runs iperf3 from `client_a ? a : b` to the other side; returns Gbit/s received.
    fn iperf(&self, client_a: bool, v6: bool, secs: u32, extra: &[&str]) -> f64 {
        let (client, server, to) = if client_a {
            (&self.a, &self.b, self.tunnel_ip(2, v6))
        } else {
            (&self.b, &self.a, self.tunnel_ip(1, v6))
        };
        let mut srv = server
            .cmd("iperf3")
            .args(["-s", "-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server");
        std::thread::sleep(Duration::from_millis(300));
        let out = run(client
            .cmd("iperf3")
            .args(["-c", &to, "-t", &secs.to_string(), "-J"])
            .args(extra));
        let _ = srv.kill();
        let _ = srv.wait();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "iperf3 failed: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("iperf3 json");
        let end = &v["end"];
        let bps = end["sum_received"]["bits_per_second"]
            .as_f64()
            .or_else(|| end["sum"]["bits_per_second"].as_f64())
            .unwrap_or(0.0);
        if let Some(lost) = end["sum"]["lost_percent"].as_f64() {
            println!("    udp lost {lost:.2}%");
        }
        if let Some(r) = end["sum_sent"]["retransmits"].as_u64() {
            println!("    tcp retransmits {r}");
        }
        bps / 1e9
    }
}

/// Raw UAPI exchange; returns the answer and how long it took.
fn uapi(ifname: &str, request: &str) -> (String, Duration) {
    let start = Instant::now();
    let mut s = UnixStream::connect(format!("/var/run/wireguard/{ifname}.sock")).expect("connect");
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.ends_with(b"\n\n")
            && answer
                .split(|b| *b == b'\n')
                .rev()
                .nth(2)
                .is_some_and(|l| l.starts_with(b"errno="))
        {
            break;
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        start.elapsed(),
    )
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, utime field 14, stime field 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

#[test]
fn handshake_ping_tcp_udp_both_families_without_checksum_errors() {
    if !can_run(&["wg", "iperf3", "nstat"]) {
        return;
    }
    let p = Pair::new(Impl::Wgdp, Impl::Wgdp, false);
    // One queue: one thread seals and opens.
    for pid in [p.pid_a, p.pid_b] {
        let names = thread_names(pid);
        assert!(names.iter().any(|t| t == "wgdp-io"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|t| t.starts_with("wgdp-tun") || t == "wgdp-rx"),
            "{names:?}"
        );
    }
    for v6 in [false, true] {
        p.ping(true, v6);
        p.ping(false, v6);
    }
    // `wg show` prints the right keys and a sane handshake time.
    let dump = p.a.wg(&["show", &p.ia, "dump"]);
    let mut lines = dump.lines();
    let dev: Vec<&str> = lines.next().expect("device line").split('\t').collect();
    assert_eq!(dev[0], p.ka.private, "private key");
    assert_eq!(dev[1], p.ka.public, "public key");
    assert_eq!(dev[2], "51820");
    let peer: Vec<&str> = lines.next().expect("peer line").split('\t').collect();
    assert_eq!(peer[0], p.kb.public);
    assert_eq!(peer[2], format!("198.18.{}.2:51820", p.net));
    let hs: u64 = peer[4].parse().expect("handshake time");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        hs > 0 && now.abs_diff(hs) < 60,
        "handshake {hs} vs now {now}"
    );
    let (rx, tx): (u64, u64) = (peer[5].parse().expect("rx"), peer[6].parse().expect("tx"));
    assert!(rx > 0 && tx > 0, "{dump}");
    let shown = p.a.wg(&["show", &p.ia]);
    assert!(
        shown.contains(&format!("public key: {}", p.ka.public)),
        "{shown}"
    );
    assert!(!shown.contains("years ago"), "{shown}");

    let before = p.csum_errors();
    for v6 in [false, true] {
        for client_a in [true, false] {
            let gbps = p.iperf(client_a, v6, 2, &[]);
            println!("TCP v6={v6} a->b={client_a}: {gbps:.2} Gbit/s");
            assert!(gbps > 0.01, "TCP through the tunnel: {gbps}");
            let udp = p.iperf(client_a, v6, 2, &["-u", "-b", "200M", "-l", "1200"]);
            println!("UDP v6={v6} a->b={client_a}: {udp:.2} Gbit/s");
            assert!(udp > 0.01, "UDP through the tunnel: {udp}");
        }
    }
    let after = p.csum_errors();
    assert_eq!(
        before, after,
        "checksum errors (TcpInCsumErrors, UdpInCsumErrors) a, b"
    );
}

/// Names of the threads of process `pid`.
fn thread_names(pid: i32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|t| {
            let t = t.ok()?;
            std::fs::read_to_string(t.path().join("comm"))
                .ok()
                .map(|n| n.trim().to_owned())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn two_tun_queues_carry_traffic_both_ways() {
    if !can_run(&["wg", "iperf3", "nstat"]) {
        return;
    }
    let p = Pair::with_threads(Impl::Wgdp, Impl::Wgdp, false, 2);
    // Each queue has its own reader; the receiving thread only receives.
    for pid in [p.pid_a, p.pid_b] {
        let names = thread_names(pid);
        let count = |n: &str| names.iter().filter(|t| *t == n).count();
        assert_eq!(count("wgdp-rx"), 1, "{names:?}");
        assert_eq!(count("wgdp-tun0"), 1, "{names:?}");
        assert_eq!(count("wgdp-tun1"), 1, "{names:?}");
        assert_eq!(count("wgdp-io"), 0, "{names:?}");
    }
    for v6 in [false, true] {
        p.ping(true, v6);
        p.ping(false, v6);
    }
    let before = p.csum_errors();
    for v6 in [false, true] {
        for client_a in [true, false] {
            // Several flows, so that the kernel spreads what it sends over both queues.
            let gbps = p.iperf(client_a, v6, 2, &["-P", "4"]);
            println!("TCP x4 v6={v6} a->b={client_a}: {gbps:.2} Gbit/s");
            assert!(gbps > 0.01, "TCP through the tunnel: {gbps}");
        }
    }
    let after = p.csum_errors();
    assert_eq!(
        before, after,
        "checksum errors (TcpInCsumErrors, UdpInCsumErrors) a, b"
    );
}

#[test]
fn per_packet_fallback_interoperates_with_offloads() {
    if !can_run(&["wg", "iperf3", "nstat"]) {
        return;
    }
    let p = Pair::new(Impl::Wgdp, Impl::WgdpPlain, false);
    p.ping(true, false);
    p.ping(false, true);
    let before = p.csum_errors();
    for client_a in [true, false] {
        let gbps = p.iperf(client_a, client_a, 2, &[]);
        println!("TCP offloads→plain={client_a}: {gbps:.2} Gbit/s");
        assert!(gbps > 0.01);
        let udp = p.iperf(client_a, !client_a, 2, &["-u", "-b", "100M", "-l", "1200"]);
        println!("UDP offloads→plain={client_a}: {udp:.2} Gbit/s");
        assert!(udp > 0.01);
    }
    assert_eq!(before, p.csum_errors());
}

#[test]
fn ipv6_underlay_listen_port_change_and_fwmark() {
    if !can_run(&["wg"]) {
        return;
    }
    let p = Pair::new(Impl::Wgdp, Impl::Wgdp, true);
    p.ping(true, false);
    p.ping(false, true);
    // Move b to another port and tell a; traffic continues over the rebound sockets.
    p.b.wg(&["set", &p.ib, "listen-port", "51999", "fwmark", "0x42"]);
    let shown = p.b.wg(&["show", &p.ib]);
    assert!(shown.contains("listening port: 51999"), "{shown}");
    assert!(shown.contains("fwmark: 0x42"), "{shown}");
    let ss = run_ok(p.b.cmd("ss").args(["-uanp"]));
    assert!(ss.contains(":51999"), "{ss}");
    assert!(!ss.contains(":51820 "), "old sockets closed: {ss}");
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "endpoint",
        &format!("[fd18:{}::2]:51999", p.net),
    ]);
    p.ping(true, false);
    p.ping(false, false);
    p.b.wg(&["set", &p.ib, "fwmark", "off"]);
    assert!(!p.b.wg(&["show", &p.ib]).contains("fwmark"));
}

#[test]
fn wire_compatible_with_wireguard_go_both_ways() {
    if !can_run(&["wg", "wireguard-go", "iperf3"]) {
        return;
    }
    // wireguard-go in a, wgdp in b; each side initiates once.
    let p = Pair::new(Impl::WireguardGo, Impl::Wgdp, false);
    p.ping(true, false);
    p.ping(false, true);
    let before = p.csum_errors();
    for client_a in [true, false] {
        let gbps = p.iperf(client_a, false, 2, &[]);
        println!("TCP wireguard-go a->b={client_a}: {gbps:.2} Gbit/s");
        assert!(gbps > 0.01);
        let udp = p.iperf(client_a, true, 2, &["-u", "-b", "100M", "-l", "1200"]);
        println!("UDP v6 wireguard-go a->b={client_a}: {udp:.2} Gbit/s");
        assert!(udp > 0.01);
    }
    assert_eq!(before, p.csum_errors());
    // And the other way round: wgdp initiates after wireguard-go restarts its session.
    let p = Pair::new(Impl::Wgdp, Impl::WireguardGo, false);
    p.ping(true, true);
    p.ping(false, false);
    let hs = p.a.wg(&["show", &p.ia, "latest-handshakes"]);
    assert!(hs.contains(&p.kb.public), "{hs}");
}

#[test]
fn peer_is_modified_in_place_without_losing_its_session() {
    if !can_run(&["wg"]) {
        return;
    }
    let p = Pair::new(Impl::Wgdp, Impl::Wgdp, false);
    p.ping(true, false);
    let hs_before = p.a.wg(&["show", &p.ia, "latest-handshakes"]);
    std::thread::sleep(Duration::from_millis(1100));
    // Same peer: new allowed IPs (replace), keepalive, same endpoint.
    let net = p.net;
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "persistent-keepalive",
        "15",
        "allowed-ips",
        &format!("10.{net}.0.2/32,fd10:{net}::2/128,192.0.2.0/24"),
    ]);
    let dump = p.a.wg(&["show", &p.ia, "dump"]);
    let peer: Vec<&str> = dump.lines().nth(1).expect("peer").split('\t').collect();
    let mut ips: Vec<&str> = peer[3].split(',').collect();
    ips.sort();
    assert_eq!(
        ips,
        vec![
            "10.".to_string() + &format!("{net}.0.2/32"),
            "192.0.2.0/24".into(),
            format!("fd10:{net}::2/128")
        ]
    );
    assert_eq!(peer[7], "15");
    p.ping(true, false);
    assert_eq!(
        p.a.wg(&["show", &p.ia, "latest-handshakes"]),
        hs_before,
        "the session survived the change (no new handshake)"
    );
    // Removing the route's prefix stops traffic; re-adding brings it back.
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "allowed-ips",
        &format!("fd10:{net}::2/128"),
    ]);
    let out = run(p
        .a
        .cmd("ping")
        .args(["-c", "1", "-W", "1", &p.tunnel_ip(2, false)]));
    assert!(!out.status.success(), "no allowed IP, no traffic");
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "allowed-ips",
        &format!("10.{net}.0.2/32"),
    ]);
    p.ping(true, false);
    // Remove and re-add: a new peer object, a new handshake.
    p.a.wg(&["set", &p.ia, "peer", &p.kb.public, "remove"]);
    assert!(!p.a.wg(&["show", &p.ia, "peers"]).contains(&p.kb.public));
    p.a.wg(&[
        "set",
        &p.ia,
        "peer",
        &p.kb.public,
        "endpoint",
        &format!("198.18.{net}.2:51820"),
        "allowed-ips",
        &format!("10.{net}.0.2/32"),
    ]);
    p.ping(true, false);
    let _ = (p.pid_a, p.pid_b, &p.ib);
}

#[test]
fn five_thousand_peers_then_add_and_remove_one() {
    if !can_run(&["wg"]) {
        return;
    }
    let mut ns = Netns::new();
    let ifn = ifname();
    let pid = ns.start_device(&ifn, Impl::Wgdp, 1);
    let rss0 = rss_kib(pid);
    let key = |i: u32| -> String {
        // Distinct, valid-looking public keys (any 32 bytes are accepted).
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k[31] = 0x5a;
        k.iter().map(|b| format!("{b:02x}")).collect()
    };
    let own = Keys::new();
    let mut req = format!("set=1\nprivate_key={}\n", b64_to_hex(&own.private));
    for i in 0..5000u32 {
        let (hi, lo) = (i / 250, i % 250);
        req.push_str(&format!(
            "public_key={}\nendpoint=198.18.{hi}.{lo}:51820\nreplace_allowed_ips=true\n\
             allowed_ip=10.{hi}.{lo}.0/24\nallowed_ip=fd00:{hi}:{lo}::/64\n",
            key(i)
        ));
    }
    req.push('\n');
    let (ans, bulk) = uapi(&ifn, &req);
    assert_eq!(ans, "errno=0\n\n");
    let peers = ns.wg(&["show", &ifn, "peers"]);
    assert_eq!(peers.lines().count(), 5000);
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for round in 0..5u32 {
        let k = key(100_000 + round);
        let (ans, t) = uapi(
            &ifn,
            &format!(
                "set=1\npublic_key={k}\nendpoint=192.0.2.1:51820\nallowed_ip=10.250.{round}.0/24\n\n"
            ),
        );
        assert_eq!(ans, "errno=0\n\n");
        adds.push(t);
        let (ans, t) = uapi(&ifn, &format!("set=1\npublic_key={k}\nremove=true\n\n"));
        assert_eq!(ans, "errno=0\n\n");
        removes.push(t);
    }
    adds.sort();
    removes.sort();
    let (get, t_get) = uapi(&ifn, "get=1\n\n");
    assert_eq!(get.matches("public_key=").count(), 5000);
    let rss = rss_kib(pid);
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let idle = cpu_ticks(pid) - t0;
    println!(
        "5000 peers: bulk set {bulk:?}; add one median {:?} (max {:?}); remove one median {:?} (max {:?}); \
         get {t_get:?}; RSS {rss0} KiB empty, {rss} KiB with 5000 peers; idle CPU {idle} ticks in 3 s",
        adds[2], adds[4], removes[2], removes[4]
    );
    assert!(adds[2] < Duration::from_millis(20), "add one: {adds:?}");
    assert!(
        removes[2] < Duration::from_millis(20),
        "remove one: {removes:?}"
    );
    assert!(rss < 48 * 1024, "RSS {rss} KiB");
    assert!(idle <= 3, "idle CPU {idle} ticks in 3 s");
}

#[test]
fn device_exits_on_sigterm_and_when_its_socket_is_removed() {
    if !can_run(&["wg"]) {
        return;
    }
    let mut ns = Netns::new();
    let (i1, i2) = (ifname(), ifname());
    let p1 = ns.start_device(&i1, Impl::Wgdp, 2);
    let p2 = ns.start_device(&i2, Impl::Wgdp, 1);
    // SIGHUP is ignored.
    kill(Pid::from_raw(p1), Signal::SIGHUP).expect("hup");
    std::thread::sleep(Duration::from_millis(300));
    assert!(ns.wg(&["show", &i1]).contains("interface"));
    let exited = |ns: &mut Netns, pid: i32| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            for c in &mut ns.children {
                if c.id() == u32::try_from(pid).expect("pid") {
                    if let Ok(Some(st)) = c.try_wait() {
                        return Some(st);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    };
    kill(Pid::from_raw(p1), Signal::SIGTERM).expect("term");
    let st = exited(&mut ns, p1).expect("exits on SIGTERM");
    assert!(st.success(), "{st}");
    assert!(!PathBuf::from(format!("/var/run/wireguard/{i1}.sock")).exists());
    std::fs::remove_file(format!("/var/run/wireguard/{i2}.sock")).expect("rm socket");
    let st = exited(&mut ns, p2).expect("exits without its socket");
    assert!(st.success(), "{st}");
    let links = ns.ip(&["link", "show"]);
    assert!(!links.contains(&i1) && !links.contains(&i2), "{links}");
    // A second device of the same name is refused while the first lives.
    let p3 = ns.start_device(&i1, Impl::Wgdp, 1);
    let out = run(ns
        .cmd(helper().to_str().expect("utf-8"))
        .args(["--interface", &i1]));
    assert!(
        !out.status.success(),
        "second device with the same socket refused"
    );
    assert!(ns.wg(&["show", &i1]).contains("interface"));
    let _ = p3;
}

/// One TCP stream through two devices: wgdp against wireguard-go, same run.
#[test]
#[ignore = "benchmark: cargo test -p netlink --release --test wgdp -- --ignored --nocapture"]
fn bench_one_tcp_stream_wgdp_vs_wireguard_go() {
    if !can_run(&["wg", "wireguard-go", "iperf3"]) {
        return;
    }
    let secs = std::env::var("WGDP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let threads = std::env::var("WGDP_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut results = Vec::new();
    for kind in [Impl::Wgdp, Impl::WireguardGo] {
        let p = Pair::with_threads(kind, kind, false, threads);
        p.ping(true, false);
        let gbps = p.iperf(true, false, secs, &[]);
        println!("{kind:?}: one TCP stream {gbps:.2} Gbit/s ({secs} s)");
        results.push(gbps);
    }
    println!(
        "wgdp / wireguard-go = {:.2}",
        results[0] / results[1].max(1e-9)
    );
}
