//! The host tools the lab drives and the processes it watches: `ip`, `sysctl`, `mount`,
//! `kill` run with their failures reported, the workspace binaries found next to `meshctl`,
//! and meshd's pid per node.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::state::Paths;

pub(crate) fn step(msg: impl AsRef<str>) {
    eprintln!("› {}", msg.as_ref());
}

/// Run a command; fail with its command line and stderr.
pub(crate) fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args).map(drop)
}

pub(crate) fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

pub(crate) fn sysctl(ns: &str, settings: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["sysctl", "-qw"];
    args.extend_from_slice(settings);
    in_ns(ns, &args).map(drop)
}

/// Namespaces that exist on this machine.
pub(crate) fn namespaces() -> anyhow::Result<Vec<String>> {
    Ok(run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()
        .context("locating meshctl")?
        .with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to meshctl; build the workspace first (cargo build)",
            path.display()
        );
    }
    Ok(path)
}

pub(crate) fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    Ok(())
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

pub(crate) fn meshd_pid(lab: &str, i: u32) -> Option<u32> {
    fs::read_to_string(Paths::new(lab).pidfile(i))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|pid| pid_alive(*pid))
}

pub(crate) fn kill_ns_processes(ns: &str) {
    for signal in ["-TERM", "-KILL"] {
        let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            return;
        }
        let mut args = vec![signal];
        args.extend(pids);
        let _ = run("kill", &args);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Remove a node's bpffs directory: unpinning detaches its links and frees its programs.
pub(crate) fn remove_bpffs(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: removing {}: {err}", dir.display());
        }
    }
}
