//! Network namespaces for tests, through `ip netns` (test code may run tools; production code
//! may not): run commands inside a namespace, own a namespace for a test's lifetime (its
//! processes killed and the namespace deleted on drop), and own a background child process.

use std::process::{Child, Command, Output, Stdio};

/// Errors from the namespace helpers.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The command could not be started at all (binary missing, permissions…).
    #[error("failed to start `{cmdline}`: {cause}")]
    Spawn {
        /// The full command line.
        cmdline: String,
        /// The underlying I/O error.
        cause: std::io::Error,
    },
    /// The command ran and exited unsuccessfully.
    #[error("`{cmdline}` failed ({status}): {stderr}")]
    Failed {
        /// The full command line.
        cmdline: String,
        /// The exit status, as text.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

fn cmdline(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs `program args…` to completion, capturing stdout and stderr; a non-zero
/// exit is an error carrying the command line and stderr.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let line = cmdline(program, args);
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|cause| NetnsError::Spawn {
            cmdline: line.clone(),
            cause,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            cmdline: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

fn netns_args<'a>(netns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["netns", "exec", netns];
    v.extend_from_slice(args);
    v
}

/// Runs `ip netns exec NETNS args…` to completion, capturing its output.
/// A non-zero exit status is an error that includes the command line and stderr.
pub fn run_in(netns: &str, args: &[&str]) -> Result<Output> {
    run("ip", &netns_args(netns, args))
}

/// Like [`run_in`] but returns the output even when the command fails
/// (only a failure to start is an error).
pub fn run_in_unchecked(netns: &str, args: &[&str]) -> Result<Output> {
    let full = netns_args(netns, args);
    Command::new("ip")
        .args(&full)
        .stdin(Stdio::null())
        .output()
        .map_err(|cause| NetnsError::Spawn {
            cmdline: cmdline("ip", &full),
            cause,
        })
}

/// Starts `ip netns exec NETNS args…` in the background with stdout and stderr
/// piped and stdin closed. The caller owns (and must reap) the child.
pub fn spawn_in(netns: &str, args: &[&str]) -> Result<Child> {
    let full = netns_args(netns, args);
    Command::new("ip")
        .args(&full)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|cause| NetnsError::Spawn {
            cmdline: cmdline("ip", &full),
            cause,
        })
}

/// PIDs of the processes living in network namespace `name` (`ip netns pids`).
pub fn pids(name: &str) -> Result<Vec<i32>> {
    let out = run("ip", &["netns", "pids", name])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kills (SIGKILL) every process in namespace `name`; errors are ignored.
pub fn kill_all_in(name: &str) {
    if let Ok(list) = pids(name) {
        for pid in list {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A unique, short namespace name: `PREFIX-PID-SUFFIX`.
pub fn unique_name(prefix: &str, suffix: &str) -> String {
    format!("{prefix}-{}-{suffix}", std::process::id())
}

/// Owns a network namespace: created by [`NetnsGuard::new`], and on drop its
/// processes are killed and the namespace deleted.
#[derive(Debug)]
pub struct NetnsGuard(String);

impl NetnsGuard {
    /// `ip netns add NAME` (an existing stale namespace of that name is removed first),
    /// and brings its loopback up.
    pub fn new(name: &str) -> Result<Self> {
        if std::path::Path::new("/var/run/netns").join(name).exists() {
            kill_all_in(name);
            let _ = run("ip", &["netns", "del", name]);
        }
        run("ip", &["netns", "add", name])?;
        let guard = NetnsGuard(name.to_string());
        run_in(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(guard)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// [`run_in`] this namespace.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        run_in(&self.0, args)
    }

    /// [`spawn_in`] this namespace.
    pub fn spawn(&self, args: &[&str]) -> Result<Child> {
        spawn_in(&self.0, args)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        kill_all_in(&self.0);
        // Give killed processes a moment to release the namespace.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// Kills and reaps a child on drop (for background processes like iperf3 servers).
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Wraps `child`.
    pub fn new(child: Child) -> Self {
        ChildGuard(Some(child))
    }

    /// Mutable access to the child, if still owned.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    /// Takes the child out so it is no longer killed on drop.
    pub fn take(&mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_joins() {
        assert_eq!(cmdline("ip", &["a", "b"]), "ip a b");
    }

    #[test]
    fn run_reports_failure_with_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn unique_name_has_pid() {
        assert!(unique_name("t", "x").contains(&std::process::id().to_string()));
    }

    #[test]
    fn guard_creates_and_deletes() {
        crate::require_root();
        let name = unique_name("itns", "g");
        {
            let g = NetnsGuard::new(&name).unwrap();
            let out = g.run(&["ip", "link", "show", "lo"]).unwrap();
            assert!(String::from_utf8_lossy(&out.stdout).contains("UP"));
            assert!(std::path::Path::new("/var/run/netns").join(&name).exists());
        }
        assert!(!std::path::Path::new("/var/run/netns").join(&name).exists());
    }
}
