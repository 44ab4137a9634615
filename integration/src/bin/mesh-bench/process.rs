//! The programs a run starts: finding the binaries (meshctl, meshd-wg, wireguard-go,
//! boringtun-cli), running commands, and the user-space WireGuard daemons under test.

use std::fs::File;
use std::io::Read as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use integration::bench::{self, Userspace};
use nix::sys::signal::Signal;
use testkit::netns::{self, NetnsGuard};

use crate::cli::Args;
use crate::stop::check_stop;

/// Where `scripts/bench-deps.sh` installs boringtun-cli unless `MESH_BENCH_DEPS` says otherwise.
const DEFAULT_DEPS_ROOT: &str = "/opt/meshd-bench";

pub(crate) fn run_ok(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = netns::run(program, args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn run_with_stdin(program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
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
pub(crate) fn version_of(bin: &Path) -> Option<String> {
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
pub(crate) fn find_binary(
    name: &str,
    explicit: Option<&Path>,
    dirs: &[PathBuf],
) -> anyhow::Result<PathBuf> {
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

pub(crate) fn exe_dir() -> Vec<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .into_iter()
        .collect()
}

pub(crate) fn path_dirs() -> Vec<PathBuf> {
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
pub(crate) fn locate(u: Userspace, args: &Args) -> anyhow::Result<PathBuf> {
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
pub(crate) struct Daemon {
    pub(crate) child: Option<Child>,
    pub(crate) pid: u32,
    pub(crate) socket: PathBuf,
    pub(crate) log: PathBuf,
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
pub(crate) fn start_daemon(
    ns: &NetnsGuard,
    u: Userspace,
    bin: &Path,
    ifname: &str,
) -> anyhow::Result<Daemon> {
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
