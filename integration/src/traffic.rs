//! Traffic generators and sinks, run inside pod namespaces by the `lab-traffic`
//! binary (which is a thin CLI over these functions).
//!
//! - TCP: [`tcp_send`] streams a deterministic [`Pattern`] that embeds a marker
//!   string (so a capture can search for it), [`tcp_sink`] reads each connection
//!   to EOF and replies with a [`Digest`] (byte count + SHA-256) that the sender
//!   verifies with [`verify`].
//! - UDP: [`udp_send`] sends sequence-numbered, timestamped datagrams on a fixed
//!   deadline schedule; [`udp_sink`] feeds them to [`UdpStats`] which reports
//!   loss, duplicates, reordering and the largest arrival gap.
//!
//! Sinks print `listening on ADDR` on stderr once bound (the binary does), so a
//! harness can wait for readiness.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Marker used when the caller gives an empty one.
pub const DEFAULT_MARKER: &str = "meshd-lab-marker";
/// Size of the UDP datagram header: u64 sequence + u64 send time (ns), big-endian.
pub const UDP_HEADER_LEN: usize = 16;
/// How long [`tcp_send`] keeps retrying to connect.
pub const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// Errors from the traffic functions.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// An I/O operation failed.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        cause: std::io::Error,
    },
    /// Nothing happened before the deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The peer's reply could not be understood.
    #[error("bad reply from sink: {0}")]
    BadReply(String),
    /// The sink's digest differs from what was sent.
    #[error("verification failed: {0}")]
    Mismatch(String),
}

/// Result alias for this module.
pub type Result<T, E = TrafficError> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrafficError {
    let context = context.into();
    move |cause| TrafficError::Io { context, cause }
}

/// Byte count and SHA-256 (lower-case hex) of a byte stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Number of bytes.
    pub bytes: u64,
    /// SHA-256 as lower-case hex.
    pub sha256: String,
}

impl Digest {
    /// Digest of a byte slice.
    pub fn of(data: &[u8]) -> Digest {
        let mut h = Hasher::default();
        h.update(data);
        h.finish()
    }
}

/// Incremental [`Digest`] computation.
#[derive(Debug, Clone, Default)]
pub struct Hasher {
    bytes: u64,
    sha: Sha256,
}

impl Hasher {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.sha.update(data);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        let out = self.sha.finalize();
        let mut hex = String::with_capacity(64);
        for b in out {
            hex.push_str(&format!("{b:02x}"));
        }
        Digest {
            bytes: self.bytes,
            sha256: hex,
        }
    }
}

/// Checks that what the sink received equals what was sent.
pub fn verify(sent: &Digest, received: &Digest) -> Result<()> {
    if sent.bytes != received.bytes {
        return Err(TrafficError::Mismatch(format!(
            "sent {} bytes, sink received {}",
            sent.bytes, received.bytes
        )));
    }
    if !sent.sha256.eq_ignore_ascii_case(&received.sha256) {
        return Err(TrafficError::Mismatch(format!(
            "sha256 differs: sent {}, sink received {}",
            sent.sha256, received.sha256
        )));
    }
    Ok(())
}

/// Deterministic payload generator: the repeated block `MARKER-<16 hex digits
/// of the block index>\n`, so every few dozen bytes contain the whole marker.
#[derive(Debug, Clone)]
pub struct Pattern {
    marker: Vec<u8>,
    block: Vec<u8>,
    index: u64,
    pos: usize,
}

impl Pattern {
    /// A generator for `marker` ([`DEFAULT_MARKER`] if empty).
    pub fn new(marker: &str) -> Pattern {
        let marker = if marker.is_empty() {
            DEFAULT_MARKER
        } else {
            marker
        };
        let mut p = Pattern {
            marker: marker.as_bytes().to_vec(),
            block: Vec::new(),
            index: 0,
            pos: 0,
        };
        p.make_block();
        p
    }

    fn make_block(&mut self) {
        self.block.clear();
        self.block.extend_from_slice(&self.marker);
        self.block
            .extend_from_slice(format!("-{:016x}\n", self.index).as_bytes());
        self.pos = 0;
    }

    /// Fills `buf` with the next bytes of the pattern.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut off = 0;
        while off < buf.len() {
            if self.pos == self.block.len() {
                self.index += 1;
                self.make_block();
            }
            let n = (self.block.len() - self.pos).min(buf.len() - off);
            buf[off..off + n].copy_from_slice(&self.block[self.pos..self.pos + n]);
            off += n;
            self.pos += n;
        }
    }

    /// The first `len` bytes of the pattern for `marker` (for tests and small sends).
    pub fn bytes(marker: &str, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Pattern::new(marker).fill(&mut v);
        v
    }
}

/// Summary printed by the TCP sink.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TcpSinkReport {
    /// Connections served.
    pub connections: usize,
    /// Total bytes received.
    pub total_bytes: u64,
    /// Per-connection digests, in order.
    pub digests: Vec<Digest>,
}

/// Binds `addr` for [`tcp_sink`].
pub fn tcp_listen(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(io(format!("bind tcp {addr}")))
}

/// Accepts `count` connections on `listener` (all within `timeout`), and for
/// each reads to EOF, replies `{"bytes":N,"sha256":"hex"}\n` and closes.
pub fn tcp_sink(listener: &TcpListener, count: usize, timeout: Duration) -> Result<TcpSinkReport> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(io("set listener non-blocking"))?;
    let mut report = TcpSinkReport::default();
    while report.connections < count {
        let (stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    return Err(TrafficError::Timeout(format!(
                        "accepted {} of {count} connections",
                        report.connections
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(io("accept")(e)),
        };
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let digest = serve_connection(stream, remaining)?;
        report.connections += 1;
        report.total_bytes += digest.bytes;
        report.digests.push(digest);
    }
    Ok(report)
}

fn serve_connection(mut stream: TcpStream, timeout: Duration) -> Result<Digest> {
    stream
        .set_nonblocking(false)
        .map_err(io("set stream blocking"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("set read timeout"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("set write timeout"))?;
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("read from sender")(e)),
        }
    }
    let digest = h.finish();
    let mut line =
        serde_json::to_string(&digest).map_err(|e| TrafficError::BadReply(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(io("write reply"))?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(digest)
}

/// Result of [`tcp_send`], printed as JSON by the binary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TcpSendReport {
    /// Whether the sink received exactly what was sent.
    pub ok: bool,
    /// Bytes sent.
    pub bytes: u64,
    /// Seconds from connect to reply.
    pub secs: f64,
    /// Throughput in Mbit/s (bytes·8 / secs / 1e6).
    pub mbit_s: f64,
    /// SHA-256 of what was sent.
    pub sha256: String,
    /// What the sink said it received.
    pub received: Digest,
    /// Why `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the sink's reply arrived (UNIX milliseconds, wall clock shared by every namespace).
    #[serde(default)]
    pub ended_unix_ms: u64,
    /// Whether the stream ended because the stop file appeared (not at its byte count).
    #[serde(default)]
    pub stopped_by_file: bool,
}

/// Connects to `to`, retrying for up to [`CONNECT_RETRY`].
pub fn connect_retry(to: SocketAddr, retry_for: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + retry_for;
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(io(format!("connect to {to}"))(e)),
        }
    }
}

/// Sends `bytes` bytes of the [`Pattern`] for `marker` to the sink at `to`,
/// shuts down writing, reads the sink's [`Digest`] and verifies it.
/// A mismatch is reported as `ok: false` (not an `Err`); I/O failures are errors.
pub fn tcp_send(
    to: SocketAddr,
    bytes: u64,
    marker: &str,
    timeout: Duration,
) -> Result<TcpSendReport> {
    tcp_send_paced(to, bytes, marker, timeout, None)
}

/// Like [`tcp_send`], at most `rate` bytes per second (one long-lived connection that spans,
/// say, a datapath change).
pub fn tcp_send_paced(
    to: SocketAddr,
    bytes: u64,
    marker: &str,
    timeout: Duration,
    rate: Option<u64>,
) -> Result<TcpSendReport> {
    tcp_send_until(to, bytes, marker, timeout, rate, None)
}

/// Like [`tcp_send_paced`], ending early (before `bytes`) once the file `stop` exists: one
/// connection that carries data for as long as its caller needs, e.g. until after the last of
/// several datapath changes.
pub fn tcp_send_until(
    to: SocketAddr,
    bytes: u64,
    marker: &str,
    timeout: Duration,
    rate: Option<u64>,
    stop: Option<&std::path::Path>,
) -> Result<TcpSendReport> {
    let mut stream = connect_retry(to, CONNECT_RETRY)?;
    let start = Instant::now();
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("set write timeout"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("set read timeout"))?;
    let mut pattern = Pattern::new(marker);
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    let mut stopped_by_file = false;
    while left > 0 {
        if stop.is_some_and(|p| p.exists()) {
            stopped_by_file = true;
            break;
        }
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        stream
            .write_all(&buf[..n])
            .map_err(io(format!("send to {to}")))?;
        left -= n as u64;
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64((bytes - left) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(io("shutdown write"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(io("read sink reply"))?;
    let secs = start.elapsed().as_secs_f64();
    let ended_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let bytes = bytes - left;
    let received: Digest = serde_json::from_str(line.trim())
        .map_err(|e| TrafficError::BadReply(format!("{e}: {:?}", line.trim())))?;
    let sent = hasher.finish();
    let check = verify(&sent, &received);
    Ok(TcpSendReport {
        ok: check.is_ok(),
        bytes,
        secs,
        mbit_s: if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        },
        sha256: sent.sha256,
        received,
        error: check.err().map(|e| e.to_string()),
        ended_unix_ms,
        stopped_by_file,
    })
}

/// Encodes a UDP probe: `seq` and `sent_ns` big-endian, then `marker` repeated
/// to fill `size` bytes (at least [`UDP_HEADER_LEN`]).
pub fn encode_datagram(seq: u64, sent_ns: u64, size: usize, marker: &[u8]) -> Vec<u8> {
    let size = size.max(UDP_HEADER_LEN);
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&sent_ns.to_be_bytes());
    if marker.is_empty() {
        v.resize(size, 0);
    } else {
        while v.len() < size {
            let n = (size - v.len()).min(marker.len());
            v.extend_from_slice(&marker[..n]);
        }
    }
    v
}

/// Decodes a UDP probe into `(seq, sent_ns)`; `None` if too short.
pub fn decode_datagram(d: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(d.get(0..8)?.try_into().ok()?);
    let ns = u64::from_be_bytes(d.get(8..16)?.try_into().ok()?);
    Some((seq, ns))
}

/// Wall-clock nanoseconds since the Unix epoch (shared by all namespaces of a host).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Result of [`udp_sink`], printed as JSON by the binary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpSinkReport {
    /// Datagrams received (including duplicates).
    pub received: u64,
    /// Highest sequence number seen (0 if none).
    pub highest_seq: u64,
    /// Sequence numbers in `0..=highest_seq` never received.
    pub lost: u64,
    /// Datagrams whose sequence number had already been received.
    pub duplicates: u64,
    /// Datagrams arriving after a higher sequence number (not duplicates).
    pub reordered: u64,
    /// Largest interval between consecutive arrivals, in ms (receiver monotonic clock).
    pub max_gap_ms: f64,
    /// Datagrams too short to carry a header.
    pub malformed: u64,
    /// Largest one-way delay seen, in ms (sender and receiver share the host clock).
    pub max_latency_ms: f64,
    /// The first runs of lost sequence numbers (at most [`MAX_LOST_RUNS`]), to find when a
    /// loss happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_runs: Vec<LostRun>,
}

/// How many runs of lost datagrams a [`UdpSinkReport`] names.
pub const MAX_LOST_RUNS: usize = 16;

/// A run of consecutive lost sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRun {
    /// The first lost sequence number.
    pub first: u64,
    /// How many in a row were lost.
    pub count: u64,
    /// When the datagram before the run was sent (wall clock, ns since the epoch; 0 when
    /// unknown): the loss began just after it.
    pub after_sent_ns: u64,
}

/// Accumulates UDP probe arrivals.
#[derive(Debug, Clone, Default)]
pub struct UdpStats {
    /// Sequence number → when it was sent (wall clock ns, 0 when unknown).
    seen: HashMap<u64, u64>,
    received: u64,
    highest: Option<u64>,
    duplicates: u64,
    reordered: u64,
    malformed: u64,
    last_arrival: Option<Instant>,
    max_gap: Duration,
    max_latency_ns: u64,
}

impl UdpStats {
    /// Records a datagram `seq` that arrived at `arrival` and was sent at `sent_ns`
    /// (wall clock; pass 0 to ignore latency).
    pub fn record(&mut self, seq: u64, sent_ns: u64, arrival: Instant) {
        self.received += 1;
        if let Some(prev) = self.last_arrival {
            let gap = arrival.saturating_duration_since(prev);
            if gap > self.max_gap {
                self.max_gap = gap;
            }
        }
        self.last_arrival = Some(arrival);
        if sent_ns > 0 {
            let lat = now_ns().saturating_sub(sent_ns);
            // Ignore absurd values (clock steps).
            if lat < 60_000_000_000 {
                self.max_latency_ns = self.max_latency_ns.max(lat);
            }
        }
        if self.seen.insert(seq, sent_ns).is_some() {
            self.duplicates += 1;
            return;
        }
        match self.highest {
            Some(h) if seq < h => self.reordered += 1,
            Some(h) if seq <= h => {}
            _ => self.highest = Some(seq),
        }
    }

    /// Records a raw datagram (decoding the header).
    pub fn record_datagram(&mut self, d: &[u8], arrival: Instant) {
        match decode_datagram(d) {
            Some((seq, ns)) => self.record(seq, ns, arrival),
            None => self.malformed += 1,
        }
    }

    /// Whether any valid datagram was seen.
    pub fn seen_any(&self) -> bool {
        self.received > 0
    }

    /// When the last datagram arrived.
    pub fn last_arrival(&self) -> Option<Instant> {
        self.last_arrival
    }

    /// The report so far.
    pub fn report(&self) -> UdpSinkReport {
        let highest = self.highest.unwrap_or(0);
        let unique = self.seen.len() as u64;
        UdpSinkReport {
            received: self.received,
            highest_seq: highest,
            lost: match self.highest {
                Some(h) => (h + 1).saturating_sub(unique),
                None => 0,
            },
            duplicates: self.duplicates,
            reordered: self.reordered,
            max_gap_ms: self.max_gap.as_secs_f64() * 1000.0,
            malformed: self.malformed,
            max_latency_ms: self.max_latency_ns as f64 / 1e6,
            lost_runs: self.lost_runs(),
        }
    }

    fn lost_runs(&self) -> Vec<LostRun> {
        let Some(highest) = self.highest else {
            return Vec::new();
        };
        if (highest + 1) as usize == self.seen.len() {
            return Vec::new();
        }
        let mut runs: Vec<LostRun> = Vec::new();
        for seq in 0..highest {
            if self.seen.contains_key(&seq) {
                continue;
            }
            if let Some(r) = runs.last_mut().filter(|r| r.first + r.count == seq) {
                r.count += 1;
                continue;
            }
            if runs.len() == MAX_LOST_RUNS {
                break;
            }
            runs.push(LostRun {
                first: seq,
                count: 1,
                after_sent_ns: seq
                    .checked_sub(1)
                    .and_then(|p| self.seen.get(&p).copied())
                    .unwrap_or(0),
            });
        }
        runs
    }
}

/// Binds `addr` for [`udp_sink`].
pub fn udp_bind(addr: SocketAddr) -> Result<UdpSocket> {
    UdpSocket::bind(addr).map_err(io(format!("bind udp {addr}")))
}

/// Receives probes on `socket` for `duration`, or until no datagram has arrived
/// for `idle_exit` once traffic was seen.
pub fn udp_sink(
    socket: &UdpSocket,
    duration: Duration,
    idle_exit: Option<Duration>,
) -> Result<UdpSinkReport> {
    let start = Instant::now();
    let end = start + duration;
    let mut stats = UdpStats::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let (Some(idle), Some(last)) = (idle_exit, stats.last_arrival()) {
            if now.saturating_duration_since(last) >= idle {
                break;
            }
        }
        let wait = (end - now)
            .min(Duration::from_millis(50))
            .max(Duration::from_millis(1));
        socket
            .set_read_timeout(Some(wait))
            .map_err(io("set udp read timeout"))?;
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => stats.record_datagram(&buf[..n], Instant::now()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // ICMP errors reported on the socket are not fatal for a sink.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(io("udp recv")(e)),
        }
    }
    Ok(stats.report())
}

/// Result of [`udp_send`], printed as JSON by the binary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpSendReport {
    /// Datagrams handed to the kernel successfully.
    pub sent: u64,
    /// Sends that failed (ENOBUFS, EHOSTUNREACH, ECONNREFUSED…).
    pub send_errors: u64,
    /// The last send error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Parameters of [`udp_send`].
#[derive(Debug, Clone)]
pub struct UdpSendConfig {
    /// Destination.
    pub to: SocketAddr,
    /// Interval between datagrams.
    pub interval: Duration,
    /// How long to send.
    pub duration: Duration,
    /// Datagram size in bytes (at least [`UDP_HEADER_LEN`]).
    pub size: usize,
    /// Padding pattern (may be empty: zero padding).
    pub marker: Vec<u8>,
}

/// Sends datagram `i` at `start + i·interval` (deadline schedule, no drift)
/// until `duration` has passed. Send errors are counted, not fatal.
pub fn udp_send(cfg: &UdpSendConfig) -> Result<UdpSendReport> {
    let bind: SocketAddr = if cfg.to.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).map_err(io(format!("bind udp {bind}")))?;
    let interval = cfg.interval.max(Duration::from_micros(1));
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut report = UdpSendReport::default();
    let mut seq: u64 = 0;
    loop {
        let due = start + interval.saturating_mul(u32::try_from(seq).unwrap_or(u32::MAX));
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let d = encode_datagram(seq, now_ns(), cfg.size, &cfg.marker);
        match sock.send_to(&d, cfg.to) {
            Ok(_) => report.sent += 1,
            Err(e) => {
                report.send_errors += 1;
                report.last_error = Some(e.to_string());
            }
        }
        seq += 1;
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
