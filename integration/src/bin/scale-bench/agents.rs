//! The real agents: each lab node's meshd and its `meshd-wg` processes, their status read
//! straight from meshd's control socket (through `/proc/<pid>/root`, no process per query),
//! their memory and CPU time from `/proc`.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use integration::bench;
use integration::lab::Lab;
use serde::Deserialize;

/// Where meshd serves its control socket inside a node's mount namespace.
const CONTROL_SOCKET: &str = "run/meshd/meshd.sock";

/// One real lab node.
#[derive(Clone, Debug)]
pub(crate) struct Agent {
    pub(crate) name: String,
    /// The node's network namespace (`/run/netns/<namespace>`).
    pub(crate) namespace: String,
    pub(crate) log_file: PathBuf,
}

/// What the harness reads of a status report.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Status {
    #[serde(default)]
    pub(crate) peers: Vec<PeerName>,
    #[serde(default)]
    pub(crate) converged: bool,
    #[serde(default)]
    pub(crate) counters: Counters,
    #[serde(default)]
    pub(crate) conflicts: Vec<String>,
    /// The policy loop's report (absent when it could not start).
    #[serde(default)]
    pub(crate) policy: Option<PolicyStatus>,
}

/// What the harness reads of the policy loop's report.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PolicyStatus {
    /// Pods the node's compiler holds (its own and every other node's).
    #[serde(default)]
    pub(crate) pods_known: usize,
}

/// A peer's name in a status report.
#[derive(Debug, Deserialize)]
pub(crate) struct PeerName {
    pub(crate) name: String,
}

/// The status counters the harness reports.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Counters {
    #[serde(default)]
    pub(crate) reconciles: u64,
    #[serde(default)]
    pub(crate) reconcile_errors: u64,
}

impl Status {
    pub(crate) fn peer_names(&self) -> HashSet<&str> {
        self.peers.iter().map(|p| p.name.as_str()).collect()
    }
}

impl Agent {
    /// Every node of the lab.
    pub(crate) fn all(lab: &Lab) -> anyhow::Result<Vec<Agent>> {
        let st = lab.status_json()?;
        let nodes = st["nodes"].as_array().context("lab status has no nodes")?;
        nodes
            .iter()
            .map(|n| {
                Ok(Agent {
                    name: n["name"].as_str().context("node name")?.to_string(),
                    namespace: n["namespace"].as_str().context("namespace")?.to_string(),
                    log_file: n["log_file"].as_str().context("log_file")?.into(),
                })
            })
            .collect()
    }

    /// The pids of this node's processes called `comm` (`meshd`, `meshd-wg`): those in the
    /// node's network namespace.
    pub(crate) fn pids(&self, comm: &str) -> anyhow::Result<Vec<u32>> {
        let want = std::fs::metadata(format!("/run/netns/{}", self.namespace))
            .with_context(|| format!("node {}: network namespace", self.name))?
            .ino();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
                continue;
            };
            if c.trim_end() != comm {
                continue;
            }
            if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == want) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        Ok(pids)
    }

    /// meshd's pid.
    pub(crate) fn meshd_pid(&self) -> anyhow::Result<u32> {
        match self.pids("meshd")?.as_slice() {
            [pid] => Ok(*pid),
            [] => bail!("node {}: meshd is not running", self.name),
            many => bail!("node {}: several meshd processes {many:?}", self.name),
        }
    }

    /// meshd's status, straight from its control socket.
    pub(crate) fn status(&self) -> anyhow::Result<Status> {
        let pid = self.meshd_pid()?;
        let path = format!("/proc/{pid}/root/{CONTROL_SOCKET}");
        let mut s = UnixStream::connect(&path)
            .with_context(|| format!("node {}: connecting to {path}", self.name))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"status\n")?;
        let mut text = Vec::new();
        s.read_to_end(&mut text)
            .with_context(|| format!("node {}: reading its status", self.name))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("node {}: decoding status", self.name))
    }

    /// VmRSS (KiB) of meshd and of its `meshd-wg` processes together.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<(u64, u64)> {
        let meshd = bench::read_rss_kib(self.meshd_pid()?)?;
        let mut wg = 0;
        for pid in self.pids("meshd-wg")? {
            wg += bench::read_rss_kib(pid)?;
        }
        Ok((meshd, wg))
    }

    /// utime+stime (clock ticks) of meshd and of its `meshd-wg` processes.
    pub(crate) fn cpu_ticks(&self) -> anyhow::Result<(u64, u64)> {
        let meshd = bench::read_cpu_ticks(self.meshd_pid()?)?;
        let mut wg = 0;
        for pid in self.pids("meshd-wg")? {
            wg += bench::read_cpu_ticks(pid)?;
        }
        Ok((meshd, wg))
    }

    /// The last lines of meshd's log that carry a warning or an error (the reason a pass
    /// fails), at most `n`.
    pub(crate) fn last_errors(&self, n: usize) -> Vec<String> {
        let text = std::fs::read(&self.log_file).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let mut lines: Vec<String> = text
            .lines()
            .rev()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .take(n)
            .map(|l| l.chars().take(400).collect())
            .collect();
        lines.reverse();
        lines
    }
}

/// Runs `f` on a thread of its own with SIGINT and SIGTERM unblocked, for commands that start
/// a meshd (`lab up`, `lab start-node`): a child inherits its thread's signal mask, and the
/// signal thread of [`integration::bench::stop`] blocks both everywhere else, which would leave
/// meshd deaf to `lab stop-node`. A signal arriving while `f` runs ends the harness at once
/// (the lab stays: `meshctl lab down --name <lab>` removes it).
pub(crate) fn with_signals_unblocked<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGINT);
            set.add(nix::sys::signal::Signal::SIGTERM);
            if let Err(e) = set.thread_unblock() {
                eprintln!("scale-bench: unblocking SIGINT/SIGTERM for a child: {e}");
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Polls `agent`'s status until `done` holds, for at most `timeout`: the elapsed time at the
/// first status that satisfied it (measured from `since`), or the last status seen. Between
/// two reads it waits `every`, or as long as the last read took if that was longer, so that
/// meshd spends at most half its time answering (a status at thousands of peers is large).
pub(crate) fn wait_status(
    agent: &Agent,
    since: Instant,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut(&Status) -> bool,
) -> Result<Duration, Option<Status>> {
    let mut last = None;
    loop {
        if integration::bench::stop::stopping() {
            return Err(last);
        }
        let asked = Instant::now();
        if let Ok(st) = agent.status() {
            if done(&st) {
                return Ok(since.elapsed());
            }
            last = Some(st);
        }
        let took = asked.elapsed();
        if since.elapsed() > timeout {
            return Err(last);
        }
        std::thread::sleep(every.max(took));
    }
}
