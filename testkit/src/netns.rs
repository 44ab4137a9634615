//! Network namespaces for tests, through `ip netns` (test code may run tools; production code
//! may not): run commands inside a namespace, run a closure inside one ([`within`]), own a
//! namespace for a test's lifetime ([`NetnsGuard`]: its processes killed and the namespace
//! deleted on drop) or hundreds of them at once ([`NetnsSet`]), and own a background child
//! process ([`ChildGuard`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use nix::sched::CloneFlags;

/// Where `ip netns` keeps the namespaces it names.
pub const NETNS_DIR: &str = "/run/netns";

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
    /// A named namespace's file could not be opened (it does not exist, or no root).
    #[error("failed to open namespace {}: {cause}", path.display())]
    Open {
        /// `/run/netns/NAME`.
        path: PathBuf,
        /// The underlying I/O error.
        cause: std::io::Error,
    },
    /// Writing the commands to `ip -batch`'s standard input failed.
    #[error("failed to write to `{cmdline}`: {cause}")]
    Stdin {
        /// The full command line.
        cmdline: String,
        /// The underlying I/O error.
        cause: std::io::Error,
    },
    /// `ip` reported success but the namespace is not there.
    #[error("namespace {name} was not created")]
    NotCreated {
        /// The namespace's name.
        name: String,
    },
    /// The thread could not enter the namespace (`setns`).
    #[error("failed to enter namespace {name}: {cause}")]
    Enter {
        /// The namespace's name.
        name: String,
        /// The errno `setns` returned.
        cause: nix::errno::Errno,
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

/// Runs `ip -n NETNS ARGS…`, the words of `args` split on whitespace (an `ip` command line as a
/// test writes it, e.g. `"link set lo up"`); a non-zero exit is an error as in [`run`].
pub fn ip_n(netns: &str, args: &str) -> Result<Output> {
    let mut full = vec!["-n", netns];
    full.extend(args.split_whitespace());
    run("ip", &full)
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

/// Runs `f` on a thread of its own that has entered network namespace `name` and returns what
/// `f` returns. A namespace is entered per thread, so the caller's thread stays where it was;
/// sockets and devices `f` opens belong to `name`'s namespace and stay there when handed back
/// (a bound socket, a TUN's file). A panic in `f` (a failed assertion) is the caller's panic.
pub fn within<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new(NETNS_DIR).join(name);
    let file = File::open(&path).map_err(|cause| NetnsError::Open { path, cause })?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|cause| {
                NetnsError::Enter {
                    name: name.to_string(),
                    cause,
                }
            })?;
            Ok(f())
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
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

/// Kills (SIGKILL) every process in any of the namespaces `names`, in one scan of `/proc` (what
/// `ip netns pids` does for one namespace); errors are ignored.
pub fn kill_all_in_each(names: &[String]) {
    let wanted: HashSet<u64> = names
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new(NETNS_DIR).join(n)).ok())
        .map(|m| m.ino())
        .collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let in_wanted = std::fs::read_link(entry.path().join("ns/net"))
            .ok()
            .and_then(|link| netns_inode(&link.to_string_lossy()))
            .is_some_and(|ino| wanted.contains(&ino));
        if in_wanted {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The inode in a `/proc/PID/ns/net` link's target, `net:[INODE]`.
fn netns_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Runs `ip -force -batch -` with `lines` on its standard input (one `ip` command each).
fn ip_batch(lines: impl Iterator<Item = String>) -> Result<()> {
    let line = cmdline("ip", &["-force", "-batch", "-"]);
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|cause| NetnsError::Spawn {
            cmdline: line.clone(),
            cause,
        })?;
    let mut input = String::new();
    for l in lines {
        input.push_str(&l);
        input.push('\n');
    }
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(input.as_bytes()),
        None => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|cause| NetnsError::Spawn {
            cmdline: line.clone(),
            cause,
        })?;
    written.map_err(|cause| NetnsError::Stdin {
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
    Ok(())
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
        if Path::new(NETNS_DIR).join(name).exists() {
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

    /// [`within`] this namespace: `f` runs on a thread that has entered it.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        within(&self.0, f)
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

/// Network namespaces owned in bulk, for tests that need hundreds (a CNI scale test): one
/// `ip -batch` creates a batch, one deletes it after one `/proc` scan killed every process in
/// it. Unlike [`NetnsGuard::new`], loopback is left as the kernel creates it (down), as a
/// container runtime hands a namespace to a CNI plugin. A name is owned before it is created,
/// so a partial failure is cleaned up too; whatever is still owned is deleted on drop.
#[derive(Debug, Default)]
pub struct NetnsSet {
    names: Vec<String>,
}

impl NetnsSet {
    /// No namespaces yet.
    pub fn new() -> Self {
        NetnsSet::default()
    }

    /// Creates `names` (existing namespaces of those names are taken over: `ip -force`).
    pub fn create(&mut self, names: &[String]) -> Result<()> {
        self.names.extend(names.iter().cloned());
        ip_batch(names.iter().map(|n| format!("netns add {n}")))?;
        match names
            .iter()
            .find(|n| !Path::new(NETNS_DIR).join(n).exists())
        {
            Some(name) => Err(NetnsError::NotCreated { name: name.clone() }),
            None => Ok(()),
        }
    }

    /// Kills the processes in `names` and deletes those namespaces now; they are no longer owned.
    pub fn delete(&mut self, names: &[String]) -> Result<()> {
        let gone: HashSet<&String> = names.iter().collect();
        self.names.retain(|n| !gone.contains(n));
        kill_all_in_each(names);
        ip_batch(names.iter().map(|n| format!("netns del {n}")))
    }

    /// The namespaces still owned.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for NetnsSet {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        if !names.is_empty() {
            let _ = self.delete(&names);
        }
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
            assert!(Path::new(NETNS_DIR).join(&name).exists());
        }
        assert!(!Path::new(NETNS_DIR).join(&name).exists());
    }

    /// The network namespace the calling thread is in, as its `/proc` link (`net:[INODE]`).
    fn current_netns() -> PathBuf {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    }

    #[test]
    fn within_runs_the_closure_in_the_namespace_and_leaves_the_caller_where_it_was() {
        use std::os::unix::fs::MetadataExt as _;
        crate::require_root();
        let g = NetnsGuard::new(&unique_name("itns", "w")).unwrap();
        let before = current_netns();
        let inside = g.within(current_netns).unwrap();
        let ino = std::fs::metadata(Path::new(NETNS_DIR).join(g.name()))
            .unwrap()
            .ino();
        assert_eq!(inside, PathBuf::from(format!("net:[{ino}]")));
        assert_ne!(inside, before);
        assert_eq!(current_netns(), before, "the caller's thread moved");
        // A socket opened inside stays in the namespace: its loopback is not the caller's.
        let socket = g
            .within(|| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let outside = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        outside.send_to(b"x", ("127.0.0.1", port)).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        assert!(socket.recv(&mut [0u8; 4]).is_err(), "crossed namespaces");
    }

    #[test]
    fn netns_inode_reads_the_link() {
        assert_eq!(netns_inode("net:[4026531840]"), Some(4026531840));
        assert_eq!(netns_inode("mnt:[4026531840]"), None);
    }

    #[test]
    fn a_set_creates_in_bulk_kills_what_runs_inside_and_deletes_on_drop() {
        crate::require_tools(&["ip", "sleep"]);
        let names: Vec<String> = (0..3)
            .map(|i| unique_name("itns", &format!("s{i}")))
            .collect();
        let exists = |n: &String| Path::new(NETNS_DIR).join(n).exists();
        {
            let mut set = NetnsSet::new();
            set.create(&names).unwrap();
            assert!(names.iter().all(exists));
            assert_eq!(set.names(), &names[..]);
            let mut sleeper = spawn_in(&names[0], &["sleep", "30"]).unwrap();
            // `ip netns exec` enters the namespace after it starts: wait until it is inside.
            let inside = std::time::Instant::now();
            while pids(&names[0]).unwrap().is_empty() {
                assert!(
                    inside.elapsed() < std::time::Duration::from_secs(5),
                    "the sleeper never entered its namespace"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            set.delete(&names[..1]).unwrap();
            assert!(!exists(&names[0]));
            let status = sleeper.wait().unwrap();
            assert!(!status.success(), "the sleeper inside was not killed");
            assert_eq!(set.names(), &names[1..]);
            assert!(names[1..].iter().all(exists));
        }
        assert!(!names.iter().any(exists));
    }

    #[test]
    fn within_a_missing_namespace_is_an_error_naming_it() {
        let err = within("itns-no-such-namespace", || ()).unwrap_err();
        assert!(err.to_string().contains("itns-no-such-namespace"), "{err}");
    }

    #[test]
    #[should_panic(expected = "inside the namespace")]
    fn a_panic_within_is_the_callers_panic() {
        crate::require_root();
        let g = NetnsGuard::new(&unique_name("itns", "p")).unwrap();
        g.within(|| panic!("inside the namespace")).unwrap();
    }
}
