//! What the root tests of netlink's device, link and route API share: network namespaces
//! (a [`testkit::NetnsGuard`] that also removes the UAPI sockets of the devices created in
//! it), running async code inside a namespace, keys from `wg`, and the `meshd-wg` binary.
//!
//! Namespaces are `nltest-<pid>-<n>`; they and the processes inside them are removed even
//! when a test fails. Traffic only flows between namespaces the test created.

// Each test file uses only some of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ipnet::IpNet;
use netlink::{uapi, UserspaceOptions};
use testkit::NetnsGuard;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn next() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A unique interface name (≤ 15 chars): the socket path is shared by all namespaces.
pub fn ifname() -> String {
    format!("nlt{}x{}", std::process::id() % 100_000, next())
}

/// `meshd-wg` (the `wgdp` crate's binary) in this build's target directory, beside the test
/// executable's `deps/`. `cargo test -p wgdp -p netlink` builds it; before
/// `cargo test -p netlink` alone, run `cargo build -p wgdp --bin meshd-wg`.
pub fn helper() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("test executable's directory");
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target directory")
    } else {
        dir
    };
    let path = dir.join("meshd-wg");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p wgdp --bin meshd-wg` (or test with `cargo test -p wgdp -p netlink`)",
        path.display()
    );
    path
}

pub fn opts(log_dir: &tempfile::TempDir) -> UserspaceOptions {
    UserspaceOptions {
        helper_binary: helper(),
        threads: 1,
        busy_poll_us: netlink::DEFAULT_BUSY_POLL_US,
        log_file: Some(log_dir.path().join("meshd-wg.log")),
    }
}

pub fn b64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

pub fn unb64(s: &str) -> [u8; 32] {
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("base64");
    v.try_into().expect("32 bytes")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running command")
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn genkey() -> ([u8; 32], [u8; 32]) {
    let private = run_ok(Command::new("wg").arg("genkey"));
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    {
        use std::io::Write;
        let mut stdin = pubkey.stdin.take().expect("stdin");
        stdin.write_all(private.as_bytes()).expect("write key");
    }
    let out = pubkey.wait_with_output().expect("wg pubkey");
    (
        unb64(&private),
        unb64(&String::from_utf8_lossy(&out.stdout)),
    )
}

/// A network namespace (a [`NetnsGuard`]) that also removes the UAPI sockets of the devices
/// created in it: on drop its processes are killed, the sockets removed and the namespace
/// deleted.
pub struct Netns {
    sockets: Vec<PathBuf>,
    // Dropped last, after `Drop::drop` stopped the devices.
    guard: NetnsGuard,
}

impl Netns {
    pub fn new() -> Netns {
        let guard = NetnsGuard::new(&testkit::unique_name("nltest", &next().to_string()))
            .expect("creating a network namespace");
        Netns {
            sockets: Vec::new(),
            guard,
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.guard.name()
    }

    /// Remember a device name so its UAPI socket is removed on drop.
    pub fn track(&mut self, ifname: &str) {
        self.sockets.push(uapi::socket_path(ifname));
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(), program]);
        c
    }

    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(self.cmd("ip").args(args))
    }

    pub fn pids(&self) -> Vec<i32> {
        testkit::netns::pids(self.name()).unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        testkit::netns::kill_all_in(self.name());
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// Runs `f` on a fresh thread whose network namespace is `ns`, on a current-thread
/// tokio runtime (so every netlink socket and spawned helper lives in `ns`).
pub fn in_netns<F, Fut, T>(ns: &Netns, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{}", ns.name());
    let joined = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .join();
    match joined {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

pub fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; a zombie ('Z') has exited.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub async fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses `wg show IF dump` into (listen port, [(peer, endpoint, allowed ips, keepalive)]).
pub fn wg_dump(ns: &Netns, ifname: &str) -> (String, Vec<Vec<String>>) {
    let out = run_ok(ns.cmd("wg").args(["show", ifname, "dump"]));
    let mut lines = out.lines();
    let dev: Vec<String> = lines
        .next()
        .expect("device line")
        .split('\t')
        .map(str::to_string)
        .collect();
    let peers = lines
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    (dev[2].clone(), peers)
}
