//! Long-lived flows for the established-connection checks of `netpol_semantics.rs` (which
//! includes this file with `#[path]`; the conformance suite does not use it): line-echo TCP
//! listeners run by threads of the test process, and [`Flow`]s — a TCP connection or a connected
//! UDP socket opened inside a pod's network namespace, sending every [`TICK`] and recording its
//! echoes, ending as failed when an echo is missing for [`ECHO_TIMEOUT`].

use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use testkit::netns;

/// How often a long-lived connection sends a line.
pub const TICK: Duration = Duration::from_millis(50);
/// A connection whose echo takes longer than this is cut.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(1);

/// Line-echo listeners on some addresses, served by threads of this process until dropped.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    /// Listens on every `(netns, address)` given.
    pub fn start(on: &[(String, SocketAddr)]) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (ns, addr) in on {
            let listener = netns::within(ns, || TcpListener::bind(addr))?
                .with_context(|| format!("listening on {addr} in {ns}"))?;
            listener.set_nonblocking(true)?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || accept_loop(&listener, &stop)));
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &Arc<AtomicBool>) {
    let mut echoes = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = stop.clone();
                echoes.push(std::thread::spawn(move || echo(stream, &stop)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => break,
        }
    }
    for t in echoes {
        let _ = t.join();
    }
}

/// Echoes every line of `stream` until it ends, fails, or `stop`.
fn echo(stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            // A timeout keeps the partial line in `line` and tries again.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// What a long-lived flow has seen.
#[derive(Default)]
struct FlowState {
    echoes: AtomicU64,
    last_echo: Mutex<Option<Instant>>,
    failed: Mutex<Option<(Instant, String)>>,
}

/// A long-lived flow from a pod: a TCP connection sending a line every [`TICK`] and reading it
/// back (the first echo missing for [`ECHO_TIMEOUT`], or any error, ends it as failed), or a
/// connected UDP socket sending a datagram every [`TICK`] to the lab's UDP echo server (no echo
/// for [`ECHO_TIMEOUT`] ends it as failed).
pub struct Flow {
    /// What the flow is, for messages.
    pub name: String,
    state: Arc<FlowState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Flow {
    /// Connects from inside `ns` to `to`.
    pub fn open(name: String, ns: &str, to: SocketAddr) -> anyhow::Result<Self> {
        let stream = netns::within(ns, || TcpStream::connect_timeout(&to, ECHO_TIMEOUT))?
            .with_context(|| format!("{name}: connecting"))?;
        stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let state = Arc::new(FlowState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || drive(stream, &state, &stop))
        };
        Ok(Self {
            name,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Sends datagrams from inside `ns` to `to`.
    pub fn open_udp(name: String, ns: &str, to: SocketAddr) -> anyhow::Result<Self> {
        let local: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = netns::within(ns, || UdpSocket::bind(local))?
            .with_context(|| format!("{name}: binding"))?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(TICK))?;
        let state = Arc::new(FlowState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || drive_udp(&socket, &state, &stop))
        };
        Ok(Self {
            name,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub fn echoes(&self) -> u64 {
        self.state.echoes.load(Ordering::SeqCst)
    }

    pub fn last_echo(&self) -> Option<Instant> {
        *self.state.last_echo.lock().unwrap()
    }

    pub fn failed(&self) -> Option<(Instant, String)> {
        self.state.failed.lock().unwrap().clone()
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn drive(stream: TcpStream, state: &FlowState, stop: &AtomicBool) {
    let fail = |why: String| *state.failed.lock().unwrap() = Some((Instant::now(), why));
    let Ok(mut writer) = stream.try_clone() else {
        return fail("cloning the socket".to_owned());
    };
    let mut reader = BufReader::new(stream);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let sent = format!("line {n}\n");
        if let Err(e) = writer.write_all(sent.as_bytes()) {
            return fail(format!("write: {e}"));
        }
        let mut got = String::new();
        match reader.read_line(&mut got) {
            Ok(0) => return fail("closed by the peer".to_owned()),
            Ok(_) if got == sent => {}
            Ok(_) => return fail(format!("echo {got:?} for {sent:?}")),
            Err(e) => return fail(format!("read: {e}")),
        }
        *state.last_echo.lock().unwrap() = Some(Instant::now());
        state.echoes.fetch_add(1, Ordering::SeqCst);
        n += 1;
        std::thread::sleep(TICK);
    }
}

fn drive_udp(socket: &UdpSocket, state: &FlowState, stop: &AtomicBool) {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let sent = format!("datagram {n}");
        n += 1;
        // A refused send (an ICMP error of an earlier one) is one more datagram not echoed.
        let _ = socket.send(sent.as_bytes());
        let tick = Instant::now();
        // Take every echo in the tick; a late echo of an earlier datagram counts too.
        while tick.elapsed() < TICK {
            if let Ok(len) = socket.recv(&mut buf) {
                if buf[..len].starts_with(b"datagram ") {
                    *state.last_echo.lock().unwrap() = Some(Instant::now());
                    state.echoes.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let last = state.last_echo.lock().unwrap().unwrap_or(started);
        if last.elapsed() > ECHO_TIMEOUT {
            *state.failed.lock().unwrap() =
                Some((Instant::now(), format!("no echo for {ECHO_TIMEOUT:?}")));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow counts the echoes of a live server, and fails once echoes stop: a TCP peer that
    /// accepts and never echoes (the read times out), a UDP port nobody serves.
    #[test]
    fn flows_count_echoes_and_fail_when_echoes_stop() {
        testkit::require_tools(&["ip"]);
        let ns = netns::NetnsGuard::new(&netns::unique_name("nps", "flw")).unwrap();
        let echoing: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let _servers = EchoServers::start(&[(ns.name().to_owned(), echoing)]).unwrap();
        let mute_addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let _mute_listener = ns.within(|| TcpListener::bind(mute_addr)).unwrap().unwrap();

        let live = Flow::open("live".to_owned(), ns.name(), echoing).unwrap();
        let mute = Flow::open("mute".to_owned(), ns.name(), mute_addr).unwrap();
        let unserved = "127.0.0.1:7100".parse().unwrap();
        let udp = Flow::open_udp("udp".to_owned(), ns.name(), unserved).unwrap();
        std::thread::sleep(ECHO_TIMEOUT + Duration::from_millis(500));

        assert!(live.failed().is_none(), "{:?}", live.failed());
        assert!(live.echoes() >= 10, "{} echoes", live.echoes());
        assert!(live.last_echo().unwrap().elapsed() < ECHO_TIMEOUT / 2);
        let (_, why) = mute.failed().expect("a flow without echoes failed");
        assert!(why.starts_with("read:"), "{why}");
        assert_eq!(mute.echoes(), 0);
        let (_, why) = udp.failed().expect("a UDP flow without echoes failed");
        assert!(why.starts_with("no echo"), "{why}");
        assert_eq!(udp.echoes(), 0);
    }
}
