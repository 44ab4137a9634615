//! Stopping a bench early: the SIGINT/SIGTERM flag every wait of `mesh-bench` and
//! `policy-bench` checks, so that a run cleans up and exits 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{SigSet, Signal};

/// Set by the signal thread on SIGINT/SIGTERM: stop measuring, clean up, exit.
static STOP: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// An "interrupted" error once SIGINT or SIGTERM arrived.
pub fn check_stop() -> anyhow::Result<()> {
    if stopping() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, returning early with an error when asked to stop.
pub fn pause(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

/// Blocks SIGINT and SIGTERM in every thread and waits for them in one: the first sets
/// [`STOP`] (the run unwinds and its guards clean up), a second exits at once.
pub fn handle_signals(program: &'static str) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if let Err(err) = set.thread_block() {
        eprintln!("{program}: blocking SIGINT/SIGTERM failed ({err}); Ctrl-C will not clean up");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                if STOP.swap(true, Ordering::SeqCst) {
                    eprintln!("{program}: {sig} again, exiting without cleaning up");
                    std::process::exit(130);
                }
                eprintln!("{program}: {sig}, cleaning up (send it again to exit at once)");
            }
        });
    if let Err(err) = spawned {
        eprintln!("{program}: no signal thread ({err})");
    }
}
