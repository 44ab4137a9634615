//! The device's threads: the I/O thread (the UDP sockets → open → TUN, and, on a device with
//! one TUN queue, that queue → seal → UDP), a reader for every other TUN queue, and the timer
//! thread (per-peer deadlines). Each blocks in `epoll`/`poll` (or on a condition variable)
//! when idle, so an idle device uses no CPU.
//!
//! With one queue (the default) both directions share one thread because a round trip then
//! costs fewer thread wake-ups: the reply a TUN write produces (a ping's, a TCP ACK) is read
//! by the thread that wrote the request, and no second thread is woken (often on another CPU)
//! to find it already taken. On the 2-vCPU machines this was measured on, that was worth about
//! 0.06 ms of RTT at the same throughput. With more queues (`--threads N`, for nodes with cores
//! to spare) every queue has its own reader and the I/O thread only receives, so opening and
//! sealing run on different cores.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use wgdp_offload::vnet::{TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};

use crate::datapath::{tick, Outbox, RxCtx, TxCtx, HEADROOM, MAX_PACKET};
use crate::device::{lock, Core};
use crate::sys::RecvBatch;
use crate::tun::Tun;
use crate::udp::Sockets;

/// Messages per `recvmmsg`.
const RX_SLOTS: usize = 8;
/// Sealed datagrams after which the TUN reader sends without waiting for the queue to drain.
const TX_BATCH: usize = 32;
/// `recvmmsg` calls on one socket before the others (and TUN queue 0) get a turn.
const RX_ROUNDS: usize = 16;
/// TUN reads of queue 0 by the I/O thread before the sockets get a turn.
const TUN_BUDGET: usize = 64;
/// TUN reads the I/O thread does on a further queue after its own TUN writes.
const PICKUP_BUDGET: usize = 8;
/// The I/O thread picks up replies from further queues only after writing at most this many
/// packets to the TUN: a lone request (a ping, an RPC) whose reply would otherwise wait for
/// the wake-up of the queue's thread. After bigger batches (bulk traffic) the queue threads
/// are awake and busy anyway.
const PICKUP_AFTER: u64 = 2;

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
    /// The sending side of each TUN queue (one per queue).
    pub txq: Vec<Mutex<TxQueue>>,
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

    /// Whether the I/O thread reads TUN queue 0 itself: when it is the only queue.
    pub fn io_reads_tun(&self) -> bool {
        self.txq.len() == 1
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

/// The sending side of one TUN queue: its read buffer, its sealing context and the sockets
/// it sends with. Whoever holds it (the queue's own thread, or the receive thread picking up
/// what its TUN writes just produced) reads the queue and sends everything it read before
/// letting go, so the packets of a queue leave in the order they were read.
pub struct TxQueue {
    buf: Vec<u8>,
    tx: TxCtx,
    sockets: Option<Arc<Sockets>>,
}

impl std::fmt::Debug for TxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxQueue").field("tx", &self.tx).finish()
    }
}

impl TxQueue {
    /// A queue sender for a TUN with (`vnet`) or without virtio-net headers.
    pub fn new(vnet: bool) -> Self {
        TxQueue {
            buf: vec![0u8; MAX_PACKET + 64],
            tx: TxCtx::new(vnet),
            sockets: None,
        }
    }
}

/// How a [`drain`] ended.
enum Drained {
    /// The queue is empty (everything read was sent).
    Empty,
    /// `budget` reads were done (everything read was sent); more may wait.
    Budget,
    /// The TUN failed.
    Failed(io::Error),
}

/// Reads TUN queue `q` until it is empty or `budget` packets were read, sealing and sending
/// all of it.
fn drain(rt: &Runtime, q: usize, txq: &mut TxQueue, budget: usize) -> Drained {
    let core = &*rt.core;
    let TxQueue { buf, tx, sockets } = txq;
    let mut reads = 0;
    let end = loop {
        if reads >= budget {
            break Drained::Budget;
        }
        match rt.tun.read(q, buf) {
            Ok(0) => reads += 1,
            Ok(n) => {
                reads += 1;
                let st = core.read();
                if !same(sockets, &st.sockets) {
                    tx.outbox.flush(core, sockets.as_deref());
                    *sockets = st.sockets.clone();
                }
                tx.handle_tun_read(core, &st, &mut buf[..n], sockets.as_deref());
                drop(st);
                // The first packet leaves at once: a lone packet (a ping, a request, the reply
                // a TUN write produced) must not wait for the read that finds the queue empty.
                // Later packets are batched.
                if reads == 1 || tx.outbox.len() >= TX_BATCH || tx.outbox.room() < HEADROOM {
                    tx.outbox.flush(core, sockets.as_deref());
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break Drained::Empty,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => break Drained::Failed(err),
        }
    };
    tx.outbox.flush(core, sockets.as_deref());
    // Sockets replaced by a rebind must close now, not at the next packet.
    *sockets = None;
    end
}

/// TUN queue `q` → peers (every queue but a single one, which [`io_thread`] reads).
pub fn tun_reader(rt: &Runtime, q: usize) {
    while !rt.stopping() {
        let end = match rt.txq.get(q) {
            Some(m) => drain(rt, q, &mut lock(m), usize::MAX),
            None => return,
        };
        if let Drained::Failed(err) = end {
            tracing::error!(%err, queue = q, "TUN read failed; stopping this queue");
            return;
        }
        wait_readable(&[rt.tun.queue(q), rt.stop_fd.as_fd()], PollTimeout::NONE);
    }
}

/// Called by the I/O thread after it wrote to the TUN, on a device with several queues: what
/// those writes produced at once (a ping's reply, TCP ACKs) is usually waiting in a TUN queue
/// already, and is sent from here rather than after that queue's thread's wake-up. Queues
/// busy with their own thread are left to it. (With one queue the I/O thread reads it anyway:
/// its next `epoll_wait` returns at once if the writes left something there, and sleeps
/// without a read that finds nothing if they did not.)
fn pick_up_replies(rt: &Runtime) {
    for (q, m) in rt.txq.iter().enumerate() {
        if let Ok(mut txq) = m.try_lock() {
            if let Drained::Failed(err) = drain(rt, q, &mut txq, PICKUP_BUDGET) {
                tracing::trace!(%err, queue = q, "TUN read failed");
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

/// Sockets → TUN, and (with a single queue) TUN queue 0 → peers.
///
/// It waits in `epoll` rather than `poll`: the registrations stay in place between
/// wake-ups, so a wake-up does not add itself to (and remove itself from) the wait queue of
/// every socket, the TUN queue and the event fds each time.
pub fn io_thread(rt: &Runtime) {
    let core = &*rt.core;
    let off = rt.tun.offloads();
    let tso = off & (TUN_F_TSO4 | TUN_F_TSO6) == (TUN_F_TSO4 | TUN_F_TSO6);
    let uso = off & (TUN_F_USO4 | TUN_F_USO6) == (TUN_F_USO4 | TUN_F_USO6);
    let mut rx = RxCtx::new(rt.tun.vnet_hdr(), tso, uso);
    let mut batch = RecvBatch::new(RX_SLOTS, MAX_PACKET);
    let mut events = [EpollEvent::empty(); 8];
    'sockets: while !rt.stopping() {
        let Some(sockets) = core.read().sockets.clone() else {
            return;
        };
        let fds: Vec<BorrowedFd<'_>> = sockets.fds().collect();
        // A fresh epoll set for each set of sockets: replaced sockets leave it by closing.
        let epoll = match io_epoll(rt, &fds) {
            Ok(e) => e,
            Err(err) => {
                tracing::error!(%err, "setting up epoll failed; stopping");
                return;
            }
        };
        while !rt.stopping() {
            let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    tracing::error!(%err, "epoll_wait failed; stopping");
                    return;
                }
            };
            let mut tun_ready = false;
            for ev in events.iter().take(n) {
                match ev.data() {
                    TOKEN_STOP => return,
                    TOKEN_REBIND => {
                        let _ = rt.rebind_fd.read();
                        continue 'sockets;
                    }
                    TOKEN_TUN => tun_ready = true,
                    i => {
                        let fd = usize::try_from(i).ok().and_then(|i| fds.get(i));
                        if let Some(fd) = fd {
                            receive(rt, *fd, &sockets, &mut rx, &mut batch);
                        }
                    }
                }
            }
            if tun_ready {
                if let Some(m) = rt.txq.first() {
                    if let Drained::Failed(err) = drain(rt, 0, &mut lock(m), TUN_BUDGET) {
                        tracing::error!(%err, queue = 0, "TUN read failed; stopping");
                        return;
                    }
                }
            }
        }
    }
}

/// `epoll` tokens of the I/O thread's event fds and TUN queue (sockets are 0, 1).
const TOKEN_REBIND: u64 = 100;
const TOKEN_STOP: u64 = 101;
const TOKEN_TUN: u64 = 102;

/// The I/O thread's `epoll` set: `sockets` (token = index), the event fds and, if it reads
/// it, TUN queue 0.
fn io_epoll(rt: &Runtime, sockets: &[BorrowedFd<'_>]) -> nix::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let add =
        |fd: BorrowedFd<'_>, token: u64| epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token));
    for (i, fd) in (0u64..).zip(sockets) {
        add(*fd, i)?;
    }
    add(rt.rebind_fd.as_fd(), TOKEN_REBIND)?;
    add(rt.stop_fd.as_fd(), TOKEN_STOP)?;
    if rt.io_reads_tun() {
        add(rt.tun.queue(0), TOKEN_TUN)?;
    }
    Ok(epoll)
}

/// Receives from one socket until it is empty or [`RX_ROUNDS`] batches were taken, opening
/// each datagram and writing what it carried to the TUN.
fn receive(
    rt: &Runtime,
    fd: BorrowedFd<'_>,
    sockets: &Arc<Sockets>,
    rx: &mut RxCtx,
    batch: &mut RecvBatch,
) {
    let core = &*rt.core;
    for _ in 0..RX_ROUNDS {
        match batch.recv(fd) {
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
                rx.flush(core, Some(&rt.tun), Some(sockets));
                if rx.delivered > 0 && rx.delivered <= PICKUP_AFTER && !rt.io_reads_tun() {
                    pick_up_replies(rt);
                }
                if batch.len() < RX_SLOTS {
                    // The queue was empty: back to `epoll`, which returns at once if more
                    // came meanwhile, instead of a receive that finds nothing (a syscall saved
                    // on every wake-up at low rates).
                    break;
                }
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
