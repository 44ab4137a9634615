//! meshd's user-space WireGuard datapath.
//!
//! Owns the packet path of the user-space device: the TUN (with virtio-net headers and
//! segmentation offloads), the UDP sockets (GSO/GRO, batched), the peer table, timers and
//! the cross-platform UAPI socket. The WireGuard protocol itself (handshakes, cookies,
//! replay protection, the AEAD, the protocol timers) is boringtun's noise state machine
//! (`defguard_boringtun::noise`); nothing here reimplements it. Packet segmentation and
//! coalescing are `wgdp-offload`'s.
//!
//! Threads: one TUN reader per queue (segment, seal, send in GSO trains), one UDP receiver
//! (GRO batches, open, coalesce, write to the TUN), one timer thread (per-peer deadlines;
//! idle peers have none), the UAPI server and the main thread (signals, socket watch). The
//! two directions run on different cores; several TUN queues (`threads`) spread sealing.
//!
//! The `meshd-wg` binary (`src/bin/meshd-wg.rs`) runs one device ([`run`]); meshd spawns it
//! (or adopts one run by another process) and configures it over UAPI. [`uapi`] is the
//! workspace's one codec of that protocol: this crate's server, netlink's client and
//! mesh-bench's client all write and read it there.
//!
//! Drop counters (per reason) are not in the UAPI `get` (`wg` rejects unknown keys): they are
//! logged at debug level every 10 s when they changed, and at info level on `SIGUSR1`.
//!
//! Must not: reimplement protocol or crypto, scan all peers on a packet or a single-peer
//! change, or hold per-peer buffers for idle peers.

/// The allowed-IPs trie: which peer a destination belongs to.
pub mod allowed_ips;
/// Budgets against floods: handshakes per source, bytes of held packets.
pub mod budget;
/// The UAPI socket: binding it and serving `get`/`set` on it.
pub mod control;
#[cfg(test)]
mod crossing_tests;
/// Per-packet work: sealing towards peers, opening from them.
pub mod datapath;
/// The device core: peers, keys and the application of a UAPI `set`.
pub mod device;
#[cfg(test)]
mod forged_tests;
/// Entry points for the fuzz targets.
pub mod fuzzing;
/// glibc malloc tuning and returning free memory after large UAPI exchanges.
pub mod memory;
/// The peers by public key.
pub mod peer_table;
/// Drop counters per reason.
pub mod stats;
mod sys;
/// The I/O, timer and TUN reader threads.
pub mod threads;
/// Per-peer protocol deadlines.
pub mod timers;
/// The TUN device, with virtio-net headers and offloads.
pub mod tun;
/// The UAPI codec (pure): requests and answers, both directions.
pub mod uapi;
/// The UDP sockets, with GSO/GRO and batching.
pub mod udp;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub use device::Core;

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core dump of it is
/// written, and no process without `CAP_SYS_PTRACE` may attach to it or read its memory, so
/// the keys it holds never land in a core file. `meshd-wg` calls it first.
pub fn forbid_core_dumps() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}
pub use tun::Tun;
pub use udp::Sockets;

/// `meshd-wg`'s busy poll after sending unless told otherwise, microseconds: on the 2-vCPU
/// virtual machines this was measured on, a reply that comes back within it saves a thread
/// wake-up (see BENCHMARKS.md); the poll never takes more than a tenth of a core.
pub const DEFAULT_BUSY_POLL_US: u64 = 50;

/// How the device is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The TUN interface name (also names the UAPI socket).
    pub interface: String,
    /// TUN queues, each with its own sealing thread (at least 1).
    pub threads: usize,
    /// Use the TUN's virtio-net header with TSO/USO and UDP GSO/GRO (`false`: plain
    /// per-packet I/O everywhere, for troubleshooting and tests of the fallbacks).
    pub offloads: bool,
    /// Longest busy poll of the I/O thread after it sent something, before it sleeps
    /// (zero: never); capped at a tenth of a core over time.
    pub busy_poll: std::time::Duration,
    /// Budgets against floods (handshakes per source, bytes of held packets).
    pub budgets: budget::Budgets,
}

/// Errors of running a device.
#[derive(Debug, thiserror::Error)]
pub enum WgdpError {
    /// Setting up signal handling failed.
    #[error("setting up signal handling")]
    Signals(#[source] nix::Error),
    /// Creating an eventfd failed.
    #[error("creating an eventfd")]
    EventFd(#[source] nix::Error),
    /// Creating the TUN failed.
    #[error(transparent)]
    Tun(#[from] tun::TunError),
    /// Binding the UDP sockets failed.
    #[error(transparent)]
    Udp(#[from] udp::UdpError),
    /// Binding the UAPI socket failed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// Datapath threads panicked (the device was stopped).
    #[error("datapath threads panicked: {0}")]
    Panicked(String),
    /// Starting a thread failed.
    #[error("starting thread {name}")]
    Thread {
        /// The thread's name.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the device until `SIGTERM`/`SIGINT`, until its UAPI socket is removed or replaced,
/// or until its TUN fails. `SIGHUP` is ignored; `SIGUSR1` logs the drop counters.
///
/// Blocks those signals in the calling thread (before any other thread starts, so all
/// inherit the mask) and takes them through a signalfd.
pub fn run(cfg: &Config) -> Result<(), WgdpError> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        mask.add(s);
    }
    mask.thread_block().map_err(WgdpError::Signals)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(WgdpError::Signals)?;

    control::UapiSocket::check_free(&cfg.interface)?;
    let tun = Tun::create(&cfg.interface, cfg.threads, cfg.offloads)?;
    let sockets = Sockets::bind(0, 0, cfg.offloads)?;
    tracing::info!(port = sockets.port(), gso = sockets.gso(), "listening");
    let efd = || {
        EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(WgdpError::EventFd)
    };
    let rebind_fd = Arc::new(efd()?);
    let rb = rebind_fd.clone();
    let core = Arc::new(Core::with_budgets(
        Some(Arc::new(sockets)),
        Box::new(move || {
            let _ = rb.write(1);
        }),
        cfg.budgets,
    ));
    let uapi = Arc::new(control::UapiSocket::bind(tun.name())?);
    let txq = (0..tun.queues())
        .map(|_| std::sync::Mutex::new(threads::TxQueue::new(tun.vnet_hdr())))
        .collect();
    let rt = Arc::new(threads::Runtime {
        core,
        txq,
        tun,
        stop: Default::default(),
        stop_fd: efd()?,
        rebind_fd,
        busy_poll: cfg.busy_poll,
    });

    let mut handles = Vec::new();
    let mut spawn = |name: String, f: Box<dyn FnOnce() + Send>| -> Result<(), WgdpError> {
        let r = rt.clone();
        let h = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // A thread that ends (a fatal TUN error) or panics takes the device down
                // instead of leaving it half-working.
                let _guard = StopOnDrop(r);
                f();
            })
            .map_err(|source| WgdpError::Thread { name, source })?;
        handles.push(h);
        Ok(())
    };
    let started = (|| {
        // A single queue is read by the I/O thread, which also receives; with more, every
        // queue has its own reader and the I/O thread only receives.
        let first = usize::from(rt.io_reads_tun());
        for q in first..rt.tun.queues() {
            let r = rt.clone();
            spawn(
                format!("wgdp-tun{q}"),
                Box::new(move || threads::tun_reader(&r, q)),
            )?;
        }
        let r = rt.clone();
        let name = if rt.io_reads_tun() {
            "wgdp-io"
        } else {
            "wgdp-rx"
        };
        spawn(name.into(), Box::new(move || threads::io_thread(&r)))?;
        let r = rt.clone();
        spawn(
            "wgdp-timers".into(),
            Box::new(move || threads::timer_thread(&r)),
        )?;
        let r = rt.clone();
        let u = uapi.clone();
        spawn("wgdp-uapi".into(), Box::new(move || u.serve(&r)))?;
        Ok(())
    })();
    if let Err(e) = started {
        rt.shutdown();
        uapi.remove();
        return Err(e);
    }
    tracing::info!(interface = %rt.tun.name(), socket = %uapi.path.display(), "device up");

    let mut last_log = Instant::now();
    let mut logged_total = 0;
    loop {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&signals),
            PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(1000u16));
        let mut stop = false;
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) {
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    tracing::info!(signal = info.ssi_signo, "stopping on signal");
                    stop = true;
                }
                Ok(Signal::SIGUSR1) => {
                    tracing::info!(drops = %rt.core.stats, "drop counters");
                }
                _ => tracing::debug!(signal = info.ssi_signo, "ignoring signal"),
            }
        }
        if !uapi.still_ours() {
            tracing::info!(path = %uapi.path.display(), "UAPI socket removed; stopping");
            stop = true;
        }
        if rt.stop.load(Ordering::SeqCst) {
            stop = true;
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            let total = rt.core.stats.total();
            if total != logged_total {
                logged_total = total;
                tracing::debug!(drops = %rt.core.stats, "drop counters");
            }
        }
        if stop {
            break;
        }
    }
    rt.shutdown();
    uapi.remove();
    let mut panicked = Vec::new();
    for h in handles {
        let name = h.thread().name().unwrap_or("?").to_string();
        if h.join().is_err() {
            panicked.push(name);
        }
    }
    tracing::info!(interface = %rt.tun.name(), drops = %rt.core.stats, "device stopped");
    if panicked.is_empty() {
        Ok(())
    } else {
        Err(WgdpError::Panicked(panicked.join(", ")))
    }
}

/// Stops the device when dropped (at the end of a thread, or while it unwinds).
struct StopOnDrop(Arc<threads::Runtime>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.0.stop.swap(true, Ordering::SeqCst) {
            tracing::error!(
                thread = std::thread::current().name().unwrap_or("?"),
                "datapath thread ended; stopping the device"
            );
        }
    }
}
