//! The connection attempts of the enforcement measurement: from inside a source pod's network
//! namespace, a new non-blocking TCP connect to the destination every `interval`, each given
//! up after `timeout`, many in flight at once, each outcome recorded with when it was sent and
//! when it was known. Closed with SO_LINGER 0 (a reset, no TIME_WAIT pile-up over thousands
//! of attempts).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::socket::{
    connect, getpeername, getsockopt, setsockopt, socket, sockopt, AddressFamily, SockFlag,
    SockType, SockaddrStorage,
};

use crate::stats::{settled, Attempt};

/// How one prober runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeTiming {
    /// A new attempt this often.
    pub(crate) interval: Duration,
    /// An attempt not connected after this long failed.
    pub(crate) timeout: Duration,
    /// Stop once this many attempts in a row had the wanted outcome.
    pub(crate) settle: usize,
    /// Give up this long after `t0`.
    pub(crate) max_wait: Duration,
}

/// How often in-flight attempts are checked.
const TICK: Duration = Duration::from_micros(200);

fn start_connect(to: SocketAddr) -> anyhow::Result<OwnedFd> {
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket")?;
    setsockopt(
        &fd,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .context("SO_LINGER")?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e).context("connect"),
    }
}

/// `Some(true)` connected, `Some(false)` failed (refused, unreachable), `None` still going.
fn outcome(fd: &OwnedFd) -> Option<bool> {
    match getsockopt(fd, sockopt::SocketError) {
        Ok(0) => {}
        Ok(_) | Err(_) => return Some(false),
    }
    match getpeername::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(_) => Some(true),
        Err(_) => None,
    }
}

/// Runs attempts to `to` (in the calling thread's network namespace) from the moment `t0` is
/// set until they settle on `want`, `stop` is set or `max_wait` has passed since `t0`; returns
/// every attempt started after `t0`, those in flight at the end included. `ready` is set once the thread runs (before `t0`).
pub(crate) fn probe_until(
    to: SocketAddr,
    want: bool,
    timing: ProbeTiming,
    t0: &OnceLock<Instant>,
    ready: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Attempt>> {
    ready.store(true, Ordering::SeqCst);
    let t0 = loop {
        if let Some(t) = t0.get() {
            break *t;
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        std::thread::sleep(TICK);
    };
    let mut done: Vec<Attempt> = Vec::new();
    let mut in_flight: Vec<(Instant, OwnedFd)> = Vec::new();
    let mut next = Instant::now().max(t0);
    // Once settled (or out of time), no new attempts: the ones in flight finish, so that an
    // attempt sent earlier whose outcome is known later is not left out.
    let mut draining = false;
    loop {
        let now = Instant::now();
        if !draining && now >= next {
            in_flight.push((Instant::now(), start_connect(to)?));
            next += timing.interval;
            if next < now {
                next = now + timing.interval;
            }
        }
        let now = Instant::now();
        in_flight.retain(|(start, fd)| {
            let verdict = match outcome(fd) {
                Some(v) => Some(v),
                None if now.duration_since(*start) >= timing.timeout => Some(false),
                None => None,
            };
            match verdict {
                Some(connected) => {
                    done.push(Attempt {
                        start: *start,
                        end: now,
                        connected,
                    });
                    false
                }
                None => true,
            }
        });
        if stop.load(Ordering::SeqCst) {
            return Ok(done);
        }
        draining = draining
            || settled(t0, &done, want, timing.settle)
            || now.duration_since(t0) > timing.max_wait;
        if draining && in_flight.is_empty() {
            return Ok(done);
        }
        std::thread::sleep(TICK);
    }
}
