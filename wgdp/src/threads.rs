//! The device's threads: one TUN reader per queue (TUN → seal → UDP), one UDP receiver
//! (UDP → open → TUN), and the timer thread (per-peer deadlines). Each blocks in `poll`
//! (or on a condition variable) when idle, so an idle device uses no CPU.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use wgdp_offload::vnet::{TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};

use crate::datapath::{tick, Outbox, RxCtx, TxCtx, HEADROOM, MAX_PACKET};
use crate::device::{lock, Core};
use crate::sys::RecvBatch;
use crate::tun::Tun;

/// Messages per `recvmmsg`.
const RX_SLOTS: usize = 8;
/// Sealed datagrams after which the TUN reader sends without waiting for the queue to drain.
const TX_BATCH: usize = 32;
/// `recvmmsg` calls on one socket before the others get a turn.
const RX_ROUNDS: usize = 16;

/// What the threads share.
pub struct Runtime {
    /// State, timers, counters.
    pub core: Arc<Core>,
    /// The TUN.
    pub tun: Tun,
    /// Set when the device shuts down.
    pub stop: AtomicBool,
    /// Readable once the device shuts down (never reset).
    pub stop_fd: EventFd,
    /// Readable after the sockets were replaced.
    pub rebind_fd: Arc<EventFd>,
}

impl Runtime {
    /// Asks every thread to finish.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stop_fd.write(1);
        let _guard = lock(&self.core.timers);
        self.core.timers_changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Waits until one of `fds` is readable (or the device stops); returns which are.
fn wait_readable(fds: &[BorrowedFd<'_>], timeout: PollTimeout) -> Vec<bool> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    match poll(&mut pfds, timeout) {
        Ok(_) => pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect(),
        Err(_) => vec![false; fds.len()],
    }
}

/// TUN queue `q` → peers.
pub fn tun_reader(rt: &Runtime, q: usize) {
    let core = &*rt.core;
    let vnet = rt.tun.vnet_hdr();
    let mut buf = vec![0u8; MAX_PACKET + 64];
    let mut tx = TxCtx::new(vnet);
    let mut sockets = None;
    while !rt.stopping() {
        match rt.tun.read(q, &mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let st = core.read();
                if !same(&sockets, &st.sockets) {
                    tx.outbox.flush(core, sockets.as_deref());
                    sockets = st.sockets.clone();
                }
                tx.handle_tun_read(core, &st, &buf[..n], sockets.as_deref());
                drop(st);
                if tx.outbox.len() >= TX_BATCH || tx.outbox.room() < HEADROOM {
                    tx.outbox.flush(core, sockets.as_deref());
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                tx.outbox.flush(core, sockets.as_deref());
                // Sockets replaced by a rebind must close now, not at the next packet.
                sockets = None;
                wait_readable(&[rt.tun.queue(q), rt.stop_fd.as_fd()], PollTimeout::NONE);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::error!(%err, queue = q, "TUN read failed; stopping this queue");
                return;
            }
        }
    }
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Sockets → TUN.
pub fn udp_receiver(rt: &Runtime) {
    let core = &*rt.core;
    let off = rt.tun.offloads();
    let tso = off & (TUN_F_TSO4 | TUN_F_TSO6) == (TUN_F_TSO4 | TUN_F_TSO6);
    let uso = off & (TUN_F_USO4 | TUN_F_USO6) == (TUN_F_USO4 | TUN_F_USO6);
    let mut rx = RxCtx::new(rt.tun.vnet_hdr(), tso, uso);
    let mut batch = RecvBatch::new(RX_SLOTS, MAX_PACKET);
    while !rt.stopping() {
        let Some(sockets) = core.read().sockets.clone() else {
            return;
        };
        let mut fds: Vec<BorrowedFd<'_>> = sockets.fds().collect();
        let n_sock = fds.len();
        fds.push(rt.rebind_fd.as_fd());
        fds.push(rt.stop_fd.as_fd());
        let ready = wait_readable(&fds, PollTimeout::NONE);
        if ready.get(n_sock).copied().unwrap_or(false) {
            let _ = rt.rebind_fd.read();
            continue;
        }
        for (i, fd) in fds.iter().take(n_sock).enumerate() {
            if !ready.get(i).copied().unwrap_or(false) {
                continue;
            }
            for _ in 0..RX_ROUNDS {
                match batch.recv(*fd) {
                    Ok(_) if batch.is_empty() => break,
                    Ok(_) => {
                        let st = core.read();
                        for m in 0..batch.len() {
                            let Some(msg) = batch.get(m) else { continue };
                            let Some(from) = msg.from else { continue };
                            let seg = msg.segment.unwrap_or(msg.data.len()).max(1);
                            for d in msg.data.chunks(seg) {
                                rx.handle_datagram(core, &st, from, d);
                            }
                        }
                        drop(st);
                        rx.flush(core, Some(&rt.tun), Some(&sockets));
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        // ICMP errors surface here (ECONNREFUSED…); they are not fatal.
                        tracing::trace!(%err, "UDP receive error");
                        break;
                    }
                }
            }
        }
    }
}

/// Per-peer deadlines.
pub fn timer_thread(rt: &Runtime) {
    let core = &*rt.core;
    let mut due = Vec::new();
    let mut outbox = Outbox::new(256 * 1024);
    loop {
        {
            let mut q = lock(&core.timers);
            loop {
                if rt.stopping() {
                    return;
                }
                let now = Instant::now();
                q.pop_expired(now, &mut due);
                if !due.is_empty() {
                    break;
                }
                q = match q.next_deadline() {
                    Some(at) => {
                        core.timers_changed
                            .wait_timeout(q, at.saturating_duration_since(now))
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0
                    }
                    None => core
                        .timers_changed
                        .wait(q)
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                };
            }
        }
        let st = core.read();
        for idx in due.drain(..) {
            if let Some(peer) = st.by_index.get(&idx) {
                if outbox.room() < 4096 {
                    outbox.flush(core, st.sockets.as_deref());
                }
                tick(core, &st, peer, &mut outbox);
            }
        }
        let sockets = st.sockets.clone();
        drop(st);
        outbox.flush(core, sockets.as_deref());
    }
}
