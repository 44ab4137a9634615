//! The WireGuard device: finding/adopting or creating it (kernel link or the detached
//! user-space helper `meshd-wg`), configuring its key and port, reading its state and
//! applying incremental peer changes. It drives the two back ends, [`crate::kernel`] and
//! [`crate::uapi`], which share only the data in [`crate::model`] with it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

mod error;

pub use error::DeviceError;

use crate::kernel::{KernelDevice, KernelError};
use crate::links::{errno_of, is_wireguard_kind, LinkError, Links};
use crate::model::{DeviceState, PeerChange, PeerStatus};
use crate::uapi::{self, UapiError};

/// How long to wait for a freshly spawned helper to answer on its UAPI socket.
const HELPER_START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `external` mode waits for another process's device to appear.
pub const EXTERNAL_WAIT: Duration = Duration::from_secs(60);
/// How long to wait for a helper to go away after SIGTERM before SIGKILL.
const HELPER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// Which WireGuard implementation the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireguardMode {
    /// The kernel module when available, else user space.
    Auto,
    /// The kernel module only.
    Kernel,
    /// The user-space helper only.
    Userspace,
    /// User-space devices run by another process (e.g. a separate container of the same pod,
    /// so they outlive meshd's container): wait for each to appear and adopt it, never spawn
    /// a helper or create a kernel link.
    External,
}

impl FromStr for WireguardMode {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kernel" => Ok(Self::Kernel),
            "userspace" => Ok(Self::Userspace),
            "external" => Ok(Self::External),
            other => Err(DeviceError::ParseMode {
                value: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for WireguardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
            Self::External => "external",
        })
    }
}

/// Which implementation a device actually uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveMode {
    /// A kernel `wireguard` link configured over generic netlink.
    Kernel,
    /// A TUN served by the `meshd-wg` helper, configured over UAPI.
    Userspace,
}

impl fmt::Display for ActiveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kernel => "kernel",
            Self::Userspace => "userspace",
        })
    }
}

/// The live state of the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// Kernel or user space.
    pub mode: ActiveMode,
    /// The public key derived from the configured private key, if one is set.
    pub public_key: Option<[u8; 32]>,
    /// The UDP listen port (0 if not reported).
    pub listen_port: u16,
    /// The firewall mark on the device's UDP packets (0: none).
    pub fwmark: u32,
    /// The peers.
    pub peers: Vec<PeerStatus>,
}

/// How to run the user-space helper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserspaceOptions {
    /// Path of the `meshd-wg` binary.
    pub helper_binary: PathBuf,
    /// Datapath worker threads (`--threads`).
    pub threads: usize,
    /// Busy poll after sending, microseconds (`--busy-poll-us`; 0: never).
    pub busy_poll_us: u64,
    /// Where the helper's stdout/stderr go (appended); `None` discards them.
    pub log_file: Option<PathBuf>,
}

/// `meshd-wg`'s busy poll after sending unless told otherwise, microseconds (see
/// [`wgdp::DEFAULT_BUSY_POLL_US`]).
pub const DEFAULT_BUSY_POLL_US: u64 = wgdp::DEFAULT_BUSY_POLL_US;

#[derive(Debug)]
enum Backend {
    Kernel(KernelDevice),
    Userspace { socket: PathBuf },
}

/// A WireGuard device, kernel or user space.
#[derive(Debug)]
pub struct WgDevice {
    name: String,
    ifindex: u32,
    backend: Backend,
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

/// Whether creating a `wireguard` link failed because the kernel lacks the module.
fn is_unsupported(err: &LinkError) -> bool {
    match err {
        LinkError::CreateWireguard { source, .. } => {
            matches!(errno_of(source), Some(nix::libc::EOPNOTSUPP))
        }
        _ => false,
    }
}

/// Whether a UAPI socket at `path` answers a `get`.
async fn uapi_alive(path: &Path) -> bool {
    uapi::get(path).await.is_ok()
}

/// Whether the process serving the UAPI socket is in this thread's network namespace.
/// The socket path is shared by all namespaces, so a same-named device in another
/// namespace must not be adopted. Unknown (no pid, no /proc) counts as "yes".
fn served_from_this_netns(socket: &Path) -> bool {
    let Ok(pid) = uapi::peer_pid(socket) else {
        return true;
    };
    let theirs = nix::sys::stat::stat(format!("/proc/{pid}/ns/net").as_str());
    let ours = nix::sys::stat::stat("/proc/thread-self/ns/net");
    match (theirs, ours) {
        (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
        _ => true,
    }
}

impl WgDevice {
    /// Find and adopt the device `name` if it exists (never recreate it), else create it.
    /// Returns the device and whether it was adopted (true) or created (false).
    ///
    /// An existing `wireguard` link is adopted as a kernel device; an existing link
    /// whose UAPI socket `/var/run/wireguard/NAME.sock` answers is adopted as a
    /// user-space device. Otherwise `Auto` tries a kernel link and falls back to
    /// spawning the detached helper `opts.helper_binary`. `External` only ever adopts: see
    /// [`WgDevice::adopt_external`] (it waits up to [`EXTERNAL_WAIT`]).
    pub async fn ensure(
        name: &str,
        mode: WireguardMode,
        opts: &UserspaceOptions,
    ) -> Result<(WgDevice, bool), DeviceError> {
        if !valid_ifname(name) {
            return Err(DeviceError::InvalidName {
                name: name.to_string(),
            });
        }
        let lookup = |source| DeviceError::LookupLink {
            name: name.to_string(),
            source,
        };
        if mode == WireguardMode::External {
            return Ok((Self::adopt_external(name, EXTERNAL_WAIT).await?, true));
        }
        let links = Links::connect().await.map_err(lookup)?;
        let socket = uapi::socket_path(name);
        if let Some(info) = links.info(name).await.map_err(lookup)? {
            if is_wireguard_kind(info.kind.as_deref()) {
                if mode == WireguardMode::Userspace {
                    return Err(DeviceError::ModeMismatch {
                        name: name.to_string(),
                        found: ActiveMode::Kernel,
                        wanted: mode,
                    });
                }
                tracing::info!(
                    interface = name,
                    ifindex = info.ifindex,
                    "adopting kernel WireGuard device"
                );
                return Ok((Self::kernel(name, info.ifindex)?, true));
            }
            if uapi_alive(&socket).await {
                if !served_from_this_netns(&socket) {
                    return Err(DeviceError::SocketInUse {
                        name: name.to_string(),
                        path: socket,
                    });
                }
                if mode == WireguardMode::Kernel {
                    return Err(DeviceError::ModeMismatch {
                        name: name.to_string(),
                        found: ActiveMode::Userspace,
                        wanted: mode,
                    });
                }
                tracing::info!(
                    interface = name,
                    ifindex = info.ifindex,
                    "adopting user-space WireGuard device"
                );
                let dev = WgDevice {
                    name: name.to_string(),
                    ifindex: info.ifindex,
                    backend: Backend::Userspace { socket },
                };
                return Ok((dev, true));
            }
            return Err(DeviceError::LinkOccupied {
                name: name.to_string(),
                kind: info.kind.unwrap_or_else(|| "none".to_string()),
            });
        }
        match mode {
            WireguardMode::Kernel => {
                let ifindex = links.create_wireguard(name).await.map_err(|source| {
                    if is_unsupported(&source) {
                        DeviceError::KernelUnsupported {
                            name: name.to_string(),
                            source,
                        }
                    } else {
                        DeviceError::CreateKernelLink {
                            name: name.to_string(),
                            source,
                        }
                    }
                })?;
                tracing::info!(interface = name, ifindex, "created kernel WireGuard device");
                Ok((Self::kernel(name, ifindex)?, false))
            }
            WireguardMode::Auto => match links.create_wireguard(name).await {
                Ok(ifindex) => {
                    tracing::info!(interface = name, ifindex, "created kernel WireGuard device");
                    Ok((Self::kernel(name, ifindex)?, false))
                }
                Err(err) if is_unsupported(&err) => {
                    tracing::info!(interface = name, error = %err, "kernel has no WireGuard support; using the user-space helper");
                    Ok((Self::spawn_userspace(name, opts, &links).await?, false))
                }
                Err(source) => Err(DeviceError::CreateKernelLink {
                    name: name.to_string(),
                    source,
                }),
            },
            WireguardMode::Userspace => {
                Ok((Self::spawn_userspace(name, opts, &links).await?, false))
            }
            // Handled before any lookup.
            WireguardMode::External => Ok((Self::adopt_external(name, EXTERNAL_WAIT).await?, true)),
        }
    }

    /// `external` mode: waits up to `wait` for the user-space device `name` that another
    /// process serves (its link exists and its UAPI socket answers, from this network
    /// namespace) and adopts it. Never spawns a helper or creates a link, so it cannot race
    /// that process for the name. A kernel WireGuard link of that name is a mode mismatch.
    pub async fn adopt_external(name: &str, wait: Duration) -> Result<WgDevice, DeviceError> {
        let lookup = |source| DeviceError::LookupLink {
            name: name.to_string(),
            source,
        };
        let links = Links::connect().await.map_err(lookup)?;
        let socket = uapi::socket_path(name);
        let started = Instant::now();
        let mut logged = false;
        loop {
            let info = links.info(name).await.map_err(lookup)?;
            match info {
                Some(info) if is_wireguard_kind(info.kind.as_deref()) => {
                    return Err(DeviceError::ModeMismatch {
                        name: name.to_string(),
                        found: ActiveMode::Kernel,
                        wanted: WireguardMode::External,
                    });
                }
                Some(info) if uapi_alive(&socket).await => {
                    if !served_from_this_netns(&socket) {
                        return Err(DeviceError::SocketInUse {
                            name: name.to_string(),
                            path: socket,
                        });
                    }
                    tracing::info!(
                        interface = name,
                        ifindex = info.ifindex,
                        waited = ?started.elapsed(),
                        "adopting the user-space WireGuard device run by another process"
                    );
                    return Ok(WgDevice {
                        name: name.to_string(),
                        ifindex: info.ifindex,
                        backend: Backend::Userspace { socket },
                    });
                }
                // No link yet, or its helper is still starting: wait.
                _ => {}
            }
            if started.elapsed() >= wait {
                return Err(DeviceError::ExternalMissing {
                    name: name.to_string(),
                    waited: started.elapsed(),
                });
            }
            if !logged {
                tracing::info!(
                    interface = name,
                    "waiting for the user-space WireGuard device run by another process (--wireguard-mode external)"
                );
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn kernel(name: &str, ifindex: u32) -> Result<WgDevice, DeviceError> {
        let k = KernelDevice::connect(ifindex).map_err(|source| DeviceError::Kernel {
            step: "connecting",
            name: name.to_string(),
            source,
        })?;
        Ok(WgDevice {
            name: name.to_string(),
            ifindex,
            backend: Backend::Kernel(k),
        })
    }

    async fn spawn_userspace(
        name: &str,
        opts: &UserspaceOptions,
        links: &Links,
    ) -> Result<WgDevice, DeviceError> {
        let socket = uapi::socket_path(name);
        if socket.exists() {
            if uapi_alive(&socket).await {
                return Err(DeviceError::SocketInUse {
                    name: name.to_string(),
                    path: socket,
                });
            }
            tracing::warn!(path = %socket.display(), "removing stale UAPI socket");
            remove_if_exists(&socket, "removing stale UAPI socket")?;
        }
        let dir = Path::new(uapi::SOCKET_DIR);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| DeviceError::Filesystem {
                    step: "creating socket directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let (stdout, stderr) = match &opts.log_file {
            Some(path) => {
                let open_err = |source| DeviceError::Filesystem {
                    step: "opening helper log",
                    path: path.clone(),
                    source,
                };
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(open_err)?;
                let f2 = f.try_clone().map_err(open_err)?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let threads = opts.threads.max(1);
        let mut cmd = Command::new(&opts.helper_binary);
        cmd.arg("--interface")
            .arg(name)
            .arg("--threads")
            .arg(threads.to_string())
            .arg("--busy-poll-us")
            .arg(opts.busy_poll_us.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        {
            use std::os::unix::process::CommandExt;
            // Own process group: terminal signals and group kills aimed at the daemon
            // do not reach the datapath. The helper also blocks SIGHUP itself.
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(|source| DeviceError::SpawnHelper {
            name: name.to_string(),
            helper: opts.helper_binary.clone(),
            source,
        })?;
        let pid = child.id();
        tracing::info!(interface = name, pid, helper = %opts.helper_binary.display(), threads, "spawned user-space WireGuard helper");
        // Reap the helper whenever it exits so it never lingers as a zombie while we live.
        let (tx, rx) = std::sync::mpsc::channel();
        let reaper = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                let status = child.wait();
                tracing::info!(pid, ?status, "user-space WireGuard helper exited");
                let _ = tx.send(status);
            });
        if let Err(source) = reaper {
            return Err(DeviceError::SpawnHelper {
                name: name.to_string(),
                helper: opts.helper_binary.clone(),
                source,
            });
        }
        let started = Instant::now();
        loop {
            if let Ok(status) = rx.try_recv() {
                return Err(DeviceError::HelperExited {
                    name: name.to_string(),
                    status: match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    },
                });
            }
            if uapi_alive(&socket).await {
                let idx = links
                    .index_of(name)
                    .await
                    .map_err(|source| DeviceError::LookupLink {
                        name: name.to_string(),
                        source,
                    })?;
                if let Some(ifindex) = idx {
                    tracing::info!(interface = name, ifindex, pid, elapsed = ?started.elapsed(), "user-space WireGuard device up");
                    return Ok(WgDevice {
                        name: name.to_string(),
                        ifindex,
                        backend: Backend::Userspace { socket },
                    });
                }
            }
            if started.elapsed() > HELPER_START_TIMEOUT {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(DeviceError::HelperTimeout {
                    name: name.to_string(),
                    waited: HELPER_START_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Kernel or user space.
    pub fn mode(&self) -> ActiveMode {
        match self.backend {
            Backend::Kernel(_) => ActiveMode::Kernel,
            Backend::Userspace { .. } => ActiveMode::Userspace,
        }
    }

    /// The UAPI socket of a user-space device.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Userspace { socket } => Some(socket),
            Backend::Kernel(_) => None,
        }
    }

    /// The pid of the user-space helper serving this device (via `SO_PEERCRED`).
    pub fn helper_pid(&self) -> Option<i32> {
        self.socket_path().and_then(|s| uapi::peer_pid(s).ok())
    }

    fn uapi_err(&self, step: &'static str) -> impl FnOnce(UapiError) -> DeviceError + '_ {
        move |source| DeviceError::Uapi {
            step,
            name: self.name.clone(),
            source,
        }
    }

    fn kernel_err(&self, step: &'static str) -> impl FnOnce(KernelError) -> DeviceError + '_ {
        move |source| DeviceError::Kernel {
            step,
            name: self.name.clone(),
            source,
        }
    }

    async fn state(&self) -> Result<DeviceState, DeviceError> {
        match &self.backend {
            Backend::Userspace { socket } => uapi::get(socket)
                .await
                .map_err(self.uapi_err("reading state")),
            Backend::Kernel(k) => k.get().await.map_err(self.kernel_err("reading state")),
        }
    }

    /// Set private key, listen port and firewall mark (only writes what differs from the
    /// current state). A `listen_port` of 0 and a `fwmark` of `None` leave those as they are.
    pub async fn configure(
        &self,
        private_key: &[u8; 32],
        listen_port: u16,
        fwmark: Option<u32>,
    ) -> Result<(), DeviceError> {
        let cur = self.state().await?;
        // Compared clamped: the kernel reports the clamped form of the key it was given.
        let same = cur
            .private_key
            .is_some_and(|k| crate::kernel::same_private_key(&k, private_key));
        let key = (!same).then_some(private_key);
        let port = (listen_port != 0 && cur.listen_port != listen_port).then_some(listen_port);
        let mark = fwmark.filter(|m| *m != cur.fwmark);
        if key.is_none() && port.is_none() && mark.is_none() {
            return Ok(());
        }
        tracing::info!(interface = %self.name, key_changed = key.is_some(), ?port, ?mark, "configuring device");
        match &self.backend {
            Backend::Userspace { socket } => {
                uapi::set(socket, &uapi::set_device_request(key, port, mark))
                    .await
                    .map_err(self.uapi_err("setting key, listen port and fwmark"))
            }
            Backend::Kernel(k) => k
                .set_device(key, port, mark)
                .await
                .map_err(self.kernel_err("setting key, listen port and fwmark")),
        }
    }

    /// The live device state.
    pub async fn status(&self) -> Result<DeviceStatus, DeviceError> {
        let st = self.state().await?;
        let public_key = st.private_key.map(|k| {
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(k)).to_bytes()
        });
        Ok(DeviceStatus {
            name: self.name.clone(),
            ifindex: self.ifindex,
            mode: self.mode(),
            public_key,
            listen_port: st.listen_port,
            fwmark: st.fwmark,
            peers: st.peers,
        })
    }

    /// Applies peer changes incrementally, updating existing peers in place (their
    /// sessions continue): user space, one UAPI `set` transaction (see
    /// [`uapi::set_requests`]); kernel, a batch of generic netlink messages. If a key
    /// appears more than once, its last change wins (user space).
    pub async fn apply(&self, changes: &[PeerChange]) -> Result<(), DeviceError> {
        if changes.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Userspace { socket } => {
                for request in uapi::set_requests(changes) {
                    uapi::set(socket, &request)
                        .await
                        .map_err(self.uapi_err("applying peer changes"))?;
                }
                Ok(())
            }
            Backend::Kernel(k) => k
                .apply(changes)
                .await
                .map_err(self.kernel_err("applying peer changes")),
        }
    }

    /// Remove the device entirely (used by `meshd --cleanup`): user space → remove the
    /// UAPI socket and SIGTERM the helper (found with `SO_PEERCRED`), SIGKILL after 5 s;
    /// kernel → delete the link.
    pub async fn destroy(self) -> Result<(), DeviceError> {
        let destroy_err = |source| DeviceError::Destroy {
            name: self.name.clone(),
            source,
        };
        // A fresh handle: the device may outlive the runtime that created it.
        let links = Links::connect().await.map_err(destroy_err)?;
        let socket = match &self.backend {
            Backend::Kernel(_) => {
                tracing::info!(interface = %self.name, "deleting kernel WireGuard link");
                return links.delete(self.ifindex).await.map_err(destroy_err);
            }
            Backend::Userspace { socket } => socket.clone(),
        };
        let pid = uapi::peer_pid(&socket).ok().map(nix::unistd::Pid::from_raw);
        // Without its socket the helper exits by itself within ~3 s; SIGTERM is faster.
        remove_if_exists(&socket, "removing UAPI socket")?;
        if let Some(pid) = pid {
            tracing::info!(interface = %self.name, %pid, "stopping user-space WireGuard helper");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let started = Instant::now();
        let mut killed = false;
        loop {
            if links
                .info_by_index(self.ifindex)
                .await
                .map_err(destroy_err)?
                .is_none_or(|i| i.name != self.name)
            {
                return Ok(());
            }
            if started.elapsed() > HELPER_STOP_TIMEOUT {
                match (pid, killed) {
                    (Some(pid), false) => {
                        tracing::warn!(interface = %self.name, %pid, "helper ignored SIGTERM; killing it");
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        killed = true;
                    }
                    _ => {
                        return Err(DeviceError::DestroyTimeout {
                            name: self.name.clone(),
                        })
                    }
                }
            }
            if killed && started.elapsed() > 2 * HELPER_STOP_TIMEOUT {
                return Err(DeviceError::DestroyTimeout {
                    name: self.name.clone(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn remove_if_exists(path: &Path, step: &'static str) -> Result<(), DeviceError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DeviceError::Filesystem {
            step,
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parse_and_display() {
        for (s, m) in [
            ("auto", WireguardMode::Auto),
            ("kernel", WireguardMode::Kernel),
            ("userspace", WireguardMode::Userspace),
        ] {
            assert_eq!(s.parse::<WireguardMode>().expect("parse"), m);
            assert_eq!(m.to_string(), s);
        }
        let err = "Kernel"
            .parse::<WireguardMode>()
            .expect_err("case-sensitive");
        assert!(err.to_string().contains("Kernel"));
        assert!("".parse::<WireguardMode>().is_err());
        assert_eq!(ActiveMode::Kernel.to_string(), "kernel");
        assert_eq!(ActiveMode::Userspace.to_string(), "userspace");
    }

    #[test]
    fn ifname_validation() {
        assert!(valid_ifname("meshd0"));
        assert!(valid_ifname("a23456789012345"));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(".."));
    }

    #[tokio::test]
    async fn invalid_name_is_rejected_before_io() {
        let opts = UserspaceOptions {
            helper_binary: PathBuf::from("/nonexistent"),
            threads: 1,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            log_file: None,
        };
        let err = WgDevice::ensure("bad/name", WireguardMode::Auto, &opts)
            .await
            .expect_err("invalid");
        assert!(matches!(err, DeviceError::InvalidName { .. }));
    }
}
