//! What the device tests of `meshd-wg` share: network namespaces (a [`testkit::NetnsGuard`]
//! that also stops the devices started in it), pairs of namespaces joined by a veth with a
//! device in each (or wireguard-go in one) configured with `wg`, and raw UAPI exchanges.
//!
//! Namespaces are `wgdp-<pid>-<n>`; they, the processes in them and the UAPI sockets are
//! removed on drop, even when a test fails. Traffic only flows between namespaces the test
//! created.

// Each test file uses only some of these helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::NetnsGuard;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn next() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A unique interface name (≤ 15 chars): UAPI sockets are shared by all namespaces.
pub fn ifname() -> String {
    format!("wgd{}x{}", std::process::id() % 100_000, next())
}

pub fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshd-wg"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running command")
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wg_stdin(args: &[&str], input: &str) -> String {
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
pub struct Keys {
    pub private: String,
    pub public: String,
}

impl Keys {
    pub fn new() -> Keys {
        let private = run_ok(Command::new("wg").arg("genkey")).trim().to_string();
        let public = wg_stdin(&["pubkey"], &private);
        Keys { private, public }
    }
}

pub fn b64_to_hex(b64: &str) -> String {
    use base64::Engine as _;
    let v = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64");
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// A network namespace (a [`NetnsGuard`]) that also owns the devices started in it: their
/// processes are killed and reaped and their UAPI sockets removed on drop, then the
/// namespace is deleted.
pub struct Netns {
    /// The devices' UAPI sockets, removed on drop.
    pub sockets: Vec<PathBuf>,
    /// The processes started with [`Netns::start_device`].
    pub children: Vec<Child>,
    // Dropped last, after `Drop::drop` stopped the devices.
    guard: NetnsGuard,
}

impl Netns {
    pub fn new() -> Netns {
        let guard = NetnsGuard::new(&testkit::unique_name("wgdp", &next().to_string()))
            .expect("creating a network namespace");
        Netns {
            sockets: Vec::new(),
            children: Vec::new(),
            guard,
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.guard.name()
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(), program]);
        c
    }

    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(self.cmd("ip").args(args))
    }

    pub fn wg(&self, args: &[&str]) -> String {
        run_ok(self.cmd("wg").args(args))
    }

    /// Starts a device `ifname` in this namespace (meshd-wg or wireguard-go) and waits for
    /// its UAPI socket. Returns its pid.
    pub fn start_device(&mut self, ifname: &str, kind: Impl, threads: usize) -> i32 {
        self.start_device_with(ifname, kind, threads, &DeviceOptions::default())
    }

    /// The same with `opts` (extra meshd-wg flags, its log in a file).
    pub fn start_device_with(
        &mut self,
        ifname: &str,
        kind: Impl,
        threads: usize,
        opts: &DeviceOptions,
    ) -> i32 {
        let socket = wgdp::uapi::socket_path(ifname);
        self.sockets.push(socket.clone());
        let mut stderr = Stdio::inherit();
        let mut cmd = match kind {
            Impl::Wgdp | Impl::WgdpPlain => {
                let mut c = self.cmd(helper().to_str().expect("utf-8"));
                c.args(["--interface", ifname, "--threads", &threads.to_string()]);
                if kind == Impl::WgdpPlain {
                    c.arg("--no-offloads");
                }
                c.args(&opts.extra_args);
                c.env("RUST_LOG", "info");
                if let Some(dir) = &opts.log_dir {
                    let file = std::fs::File::create(device_log(dir, ifname)).expect("log file");
                    stderr = Stdio::from(file);
                }
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
            .stderr(stderr)
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

    pub fn pids(&self) -> Vec<i32> {
        testkit::netns::pids(self.name()).unwrap_or_default()
    }

    /// (TcpInCsumErrors, UdpInCsumErrors) of the namespace.
    pub fn csum_errors(&self) -> (u64, u64) {
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
        testkit::netns::kill_all_in(self.name());
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
    }
}

/// How meshd-wg devices are started beyond their kind and queues.
#[derive(Debug, Default, Clone)]
pub struct DeviceOptions {
    /// Extra command-line flags.
    pub extra_args: Vec<String>,
    /// Where their logs go (`<dir>/<ifname>.log`); `None`: the test's stderr.
    pub log_dir: Option<PathBuf>,
}

/// The log file of device `ifname` started with `log_dir`.
pub fn device_log(dir: &std::path::Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.log"))
}

/// Asks meshd-wg `pid` to log its drop counters (`SIGUSR1`) and reads counter `name` from
/// its log `log` (0 when the counter is not shown, i.e. zero).
pub fn drop_counter(pid: i32, log: &std::path::Path, name: &str) -> u64 {
    let before = std::fs::read_to_string(log).unwrap_or_default().len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("SIGUSR1");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let fresh = text.get(before..).unwrap_or("");
        if let Some(line) = fresh.lines().find(|l| l.contains("drop counters")) {
            let key = format!("{name}=");
            return line
                .split(|c: char| c.is_whitespace() || c == '"')
                .find_map(|w| w.strip_prefix(&key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no drop counters logged in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Wgdp,
    /// meshd-wg with `--no-offloads`: the per-packet fallbacks.
    WgdpPlain,
    WireguardGo,
}

/// Two namespaces joined by a veth (198.18.X.1/2, fd18:X::1/2), a device in each, keyed
/// and peered with `wg`, tunnel addresses 10.X.0.1/2 and fd10:X::1/2.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub ia: String,
    pub ib: String,
    pub ka: Keys,
    pub kb: Keys,
    pub pid_a: i32,
    pub pid_b: i32,
    pub net: u8,
}

impl Pair {
    pub fn new(kind_a: Impl, kind_b: Impl, v6_underlay: bool) -> Pair {
        Self::with_threads(kind_a, kind_b, v6_underlay, 1)
    }

    pub fn with_threads(kind_a: Impl, kind_b: Impl, v6_underlay: bool, threads: usize) -> Pair {
        Self::with_options(
            kind_a,
            kind_b,
            v6_underlay,
            threads,
            &DeviceOptions::default(),
        )
    }

    /// The same with devices started with `opts`.
    pub fn with_options(
        kind_a: Impl,
        kind_b: Impl,
        v6_underlay: bool,
        threads: usize,
        opts: &DeviceOptions,
    ) -> Pair {
        let mut a = Netns::new();
        let mut b = Netns::new();
        let net = u8::try_from(20 + next() % 200).expect("octet");
        let (va, vb) = (format!("wgv{}a", next()), format!("wgv{}b", next()));
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &va,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            b.name(),
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
        let pid_a = a.start_device_with(&ia, kind_a, threads, opts);
        let pid_b = b.start_device_with(&ib, kind_b, threads, opts);
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

    pub fn tunnel_ip(&self, side: u8, v6: bool) -> String {
        if v6 {
            format!("fd10:{}::{side}", self.net)
        } else {
            format!("10.{}.0.{side}", self.net)
        }
    }

    /// Checksum errors counted in each namespace: (a, b).
    pub fn csum_errors(&self) -> ((u64, u64), (u64, u64)) {
        (self.a.csum_errors(), self.b.csum_errors())
    }

    pub fn ping(&self, from_a: bool, v6: bool) {
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
    pub fn iperf(&self, client_a: bool, v6: bool, secs: u32, extra: &[&str]) -> f64 {
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
pub fn uapi(ifname: &str, request: &str) -> (String, Duration) {
    let start = Instant::now();
    let mut s = UnixStream::connect(wgdp::uapi::socket_path(ifname)).expect("connect");
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if wgdp::uapi::answer_complete(&answer) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        start.elapsed(),
    )
}

pub fn rss_kib(pid: i32) -> u64 {
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
pub fn cpu_ticks(pid: i32) -> u64 {
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

/// Names of the threads of process `pid`.
pub fn thread_names(pid: i32) -> Vec<String> {
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
