//! The device's threads: the I/O thread (the UDP sockets → open → TUN, and, on a device with
//! one TUN queue, that queue → seal → UDP), a reader for every other TUN queue, and the timer
//! thread (per-peer deadlines). Each blocks in `epoll`/`poll` (or on a condition variable)
//! when idle, so an idle device uses no CPU.
//!
//! After a wake-up that sent something, the I/O thread busy-polls for a short while before it
//! sleeps ([`BusyPoll`]): a reply that comes back within that window is picked up without a
//! thread wake-up, which on virtual machines (a halted vCPU woken by an IPI) costs tens of
//! microseconds. A token bucket caps the polling at a tenth of a core.
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
use std::time::{Duration, Instant};

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
    /// Longest busy poll of the I/O thread before it sleeps (zero: never).
    pub busy_poll: Duration,
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
/// all of it. Also returns how many bytes the reads returned.
fn drain(rt: &Runtime, q: usize, txq: &mut TxQueue, budget: usize) -> (Drained, usize) {
    let core = &*rt.core;
    let TxQueue { buf, tx, sockets } = txq;
    let mut reads = 0;
    let mut bytes = 0;
    let end = loop {
        if reads >= budget {
            break Drained::Budget;
        }
        match rt.tun.read(q, buf) {
            Ok(0) => reads += 1,
            Ok(n) => {
                reads += 1;
                bytes += n;
                let st = core.read();
                if !same(sockets, &st.sockets) {
                    tx.outbox.flush(core, sockets.as_deref());
                    *sockets = st.sockets.clone();
                }
                tx.handle_tun_read(core, &st, &mut buf[..n], sockets.as_deref());
                drop(st);
                // The first packet leaves at once: a lone packet (a ping, a request, the reply
                // a TUN write produced) must not wait for the read that finds the queue empty.
                // Later packets are batched, and a GSO train the next read can still fill
                // waits for it (a 64 KiB read seals to more than one train holds: sent read
                // by read, every read would cost a second, short train). So does the first
                // read's, once it filled a train (bulk, not a lone packet).
                if tx.outbox.room() < HEADROOM {
                    tx.outbox.flush(core, sockets.as_deref());
                } else if reads == 1 {
                    if tx.outbox.flush_filled(core, sockets.as_deref()) == 0 {
                        tx.outbox.flush(core, sockets.as_deref());
                    }
                } else if tx.outbox.len() >= TX_BATCH {
                    tx.outbox.flush_filled(core, sockets.as_deref());
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
    (end, bytes)
}

/// TUN queue `q` → peers (every queue but a single one, which [`io_thread`] reads).
pub fn tun_reader(rt: &Runtime, q: usize) {
    while !rt.stopping() {
        let end = match rt.txq.get(q) {
            Some(m) => drain(rt, q, &mut lock(m), usize::MAX).0,
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
            if let (Drained::Failed(err), _) = drain(rt, q, &mut txq, PICKUP_BUDGET) {
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
    let mut busy = BusyPoll::new(rt.busy_poll, Instant::now());
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
        // Whether packets went out since the thread last slept: a reply may be on its way.
        let mut sent = false;
        while !rt.stopping() {
            let mut handled = 0usize;
            let polled = if sent && busy.enabled() && busy.light() {
                busy.poll(|| epoll.wait(&mut events, EpollTimeout::ZERO))
            } else {
                Ok(0)
            };
            let n = match polled {
                Ok(0) => {
                    sent = false;
                    epoll.wait(&mut events, EpollTimeout::NONE)
                }
                other => other,
            };
            let n = match n {
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
                            handled += receive(rt, *fd, &sockets, &mut rx, &mut batch);
                        }
                    }
                }
            }
            if tun_ready {
                if let Some(m) = rt.txq.first() {
                    let (end, bytes) = drain(rt, 0, &mut lock(m), TUN_BUDGET);
                    if let Drained::Failed(err) = end {
                        tracing::error!(%err, queue = 0, "TUN read failed; stopping");
                        return;
                    }
                    sent |= bytes > 0;
                    handled += bytes;
                }
            }
            if busy.enabled() {
                busy.handled(handled, Instant::now());
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
/// each datagram and writing what it carried to the TUN. Returns the bytes received.
fn receive(
    rt: &Runtime,
    fd: BorrowedFd<'_>,
    sockets: &Arc<Sockets>,
    rx: &mut RxCtx,
    batch: &mut RecvBatch,
) -> usize {
    let core = &*rt.core;
    let mut bytes = 0;
    for _ in 0..RX_ROUNDS {
        match batch.recv(fd) {
            Ok(_) if batch.is_empty() => break,
            Ok(_) => {
                let st = core.read();
                for m in 0..batch.len() {
                    let Some(msg) = batch.get(m) else { continue };
                    let Some(from) = msg.from else { continue };
                    bytes += msg.data.len();
                    rx.handle_message(core, &st, from, msg.data, msg.segment);
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
    bytes
}

/// Share of one core the busy polls of a thread may use, over time: 1/`BUSY_SHARE`.
const BUSY_SHARE: u32 = 10;
/// Bytes handled (read from the TUN and received) in the current and the previous
/// [`BUSY_WINDOW`] above which the I/O thread does not poll: bulk traffic keeps it busy
/// anyway, and polling would take CPU from the work.
const BUSY_MAX_BYTES: usize = 32 * 1024;
/// The window over which the traffic is weighed.
const BUSY_WINDOW: Duration = Duration::from_millis(1);
/// Polling time a thread may save up while it does not poll.
const BUSY_BURST: Duration = Duration::from_millis(2);

/// The I/O thread's busy polling: before it sleeps after sending, it polls (`epoll_wait`
/// with a zero timeout, yielding the CPU to anything else runnable between polls) for at
/// most `max`, as long as its polling budget allows. The budget is a token bucket that
/// fills at a tenth of wall time up to [`BUSY_BURST`], and every poll spends what it took,
/// so polling never uses more than a tenth of a core whatever the traffic; an idle device
/// does not wake up at all, so it does not poll.
#[derive(Debug)]
pub struct BusyPoll {
    max: Duration,
    tokens: Duration,
    filled: Instant,
    /// Start of the current traffic window, the bytes handled in it and in the one before.
    window: Instant,
    bytes: usize,
    prev_bytes: usize,
}

impl BusyPoll {
    /// Polls of at most `max` (zero: never poll); the bucket starts full.
    pub fn new(max: Duration, now: Instant) -> Self {
        BusyPoll {
            max,
            tokens: BUSY_BURST,
            filled: now,
            window: now,
            bytes: 0,
            prev_bytes: 0,
        }
    }

    /// Whether it polls at all (`--busy-poll-us` above zero): when not, the I/O thread skips
    /// it entirely, traffic accounting included.
    pub fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// Records `bytes` of traffic handled at `now`.
    pub fn handled(&mut self, bytes: usize, now: Instant) {
        let age = now.saturating_duration_since(self.window);
        if age >= BUSY_WINDOW {
            // The window just ended counts as the previous one only if it was the last.
            self.prev_bytes = if age < 2 * BUSY_WINDOW { self.bytes } else { 0 };
            self.bytes = 0;
            self.window = now;
        }
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Whether the traffic is light enough to poll: at most [`BUSY_MAX_BYTES`] in this
    /// window and the one before.
    pub fn light(&self) -> bool {
        self.bytes.saturating_add(self.prev_bytes) <= BUSY_MAX_BYTES
    }

    /// How long the next poll may last at `now`.
    pub fn allowance(&mut self, now: Instant) -> Duration {
        let earned = now.saturating_duration_since(self.filled) / BUSY_SHARE;
        self.tokens = (self.tokens + earned).min(BUSY_BURST);
        self.filled = now;
        self.tokens.min(self.max)
    }

    /// Records a poll that took `spent`.
    pub fn spent(&mut self, spent: Duration) {
        self.tokens = self.tokens.saturating_sub(spent);
    }

    /// Calls `ready` (a non-blocking readiness check returning how many events are ready)
    /// until it reports some, fails, or the allowance is used up; returns its last answer.
    /// With no allowance it does not call `ready` and answers `Ok(0)`: the caller's blocking
    /// wait then returns at once anyway if something is ready.
    fn poll(&mut self, mut ready: impl FnMut() -> nix::Result<usize>) -> nix::Result<usize> {
        let start = Instant::now();
        let allowed = self.allowance(start);
        if allowed.is_zero() {
            return Ok(0);
        }
        let r = loop {
            match ready() {
                Ok(0) if start.elapsed() < allowed => std::thread::yield_now(),
                other => break other,
            }
        };
        self.spent(start.elapsed());
        r
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn busy_polling_is_capped_at_a_tenth_of_the_time() {
        let t0 = Instant::now();
        let mut b = BusyPoll::new(Duration::from_micros(50), t0);
        // A full bucket allows the longest poll.
        assert_eq!(b.allowance(t0), Duration::from_micros(50));
        // Polls that all run to the end: the burst runs out, then each millisecond earns
        // 100 us of polling.
        let mut now = t0;
        let mut total = Duration::ZERO;
        for _ in 0..1_000 {
            now += Duration::from_micros(100);
            let a = b.allowance(now);
            b.spent(a);
            total += a;
        }
        // 100 ms of wall time: at most the burst plus a tenth of it.
        assert!(total <= BUSY_BURST + 10 * MS, "{total:?}");
        assert!(total >= 10 * MS, "{total:?}");
        // After a quiet second the bucket is full again, but never above the burst.
        now += Duration::from_secs(1);
        assert_eq!(b.allowance(now), Duration::from_micros(50));
        assert_eq!(b.tokens, BUSY_BURST);
    }

    #[test]
    fn bulk_traffic_does_not_poll_light_traffic_does() {
        let t0 = Instant::now();
        let mut b = BusyPoll::new(Duration::from_micros(50), t0);
        assert!(b.light());
        // A ping every 10 ms: light.
        for i in 0..10u32 {
            b.handled(200, t0 + i * 10 * MS);
            assert!(b.light());
        }
        // 64 KiB reads every 100 us: bulk, also right after a window turns.
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..100u32 {
            b.handled(64 * 1024, t1 + i * Duration::from_micros(100));
            assert!(!b.light(), "{i}");
        }
        let after = t1 + 100 * Duration::from_micros(100);
        b.handled(100, after + Duration::from_micros(300));
        assert!(!b.light(), "the previous window was bulk");
        // Quiet for a while: light again.
        b.handled(100, after + 5 * MS);
        assert!(b.light());
    }

    #[test]
    fn zero_means_no_polling() {
        let t0 = Instant::now();
        let mut b = BusyPoll::new(Duration::ZERO, t0);
        assert!(!b.enabled());
        let mut calls = 0;
        assert_eq!(
            b.poll(|| {
                calls += 1;
                Ok(0)
            }),
            Ok(0)
        );
        assert_eq!(calls, 0, "no check at all: the blocking wait follows");
    }

    #[test]
    fn a_poll_stops_at_the_first_event() {
        let mut b = BusyPoll::new(Duration::from_secs(5), Instant::now());
        let mut calls = 0;
        let r = b.poll(|| {
            calls += 1;
            Ok(usize::from(calls == 3))
        });
        assert_eq!((r, calls), (Ok(1), 3));
        // A poll bounded by its allowance ends without events.
        let mut short = BusyPoll::new(Duration::from_micros(200), Instant::now());
        let start = Instant::now();
        assert_eq!(short.poll(|| Ok(0)), Ok(0));
        assert!(start.elapsed() >= Duration::from_micros(200));
    }
}
