//! The parts of `mesh-bench` that need no namespace and no root: parsing iperf3, ping and
//! `/proc` output, the raw UAPI requests of the peer-scale runs (and a small blocking UAPI
//! client, both written and read with wgdp's UAPI codec), medians and ratios, the targets meshd's user-space datapath is held to, and the
//! report with its table.
//!
//! The binary (`src/bin/mesh-bench.rs`) builds the namespaces, starts and stops the
//! processes and feeds what it measured through these functions.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use wgdp::uapi::{self as codec, AnswerError, Key, PeerUpdate, SetRequest};

/// Scenario name of two namespaces joined by a plain veth pair.
pub const PLAIN: &str = "plain veth";
/// Scenario and implementation name of wireguard-go.
pub const WIREGUARD_GO: &str = "wireguard-go";
/// Scenario and implementation name of boringtun-cli.
pub const BORINGTUN: &str = "boringtun-cli";
/// Scenario name of meshd's lab, pod to pod across two nodes (eBPF steering).
pub const MESHD: &str = "meshd";
/// Scenario name of meshd's lab with route steering.
pub const MESHD_ROUTES: &str = "meshd-routes";
/// Implementation name of meshd's user-space datapath process.
pub const MESHD_WG: &str = "meshd-wg";
/// Scenario name of meshd's datapath alone over the references' veth (`--only meshd-wg`).
pub const MESHD_WG_VETH: &str = "meshd-wg (veth)";
/// Scenario name of meshd's lab with encryption disabled, pod to pod across two nodes
/// (`--only plain-lab`): the lab's own hops, the baseline of the `meshd` scenario.
pub const PLAIN_LAB: &str = "plain lab";

/// Where user-space WireGuard implementations put their UAPI sockets.
pub const UAPI_DIR: &str = codec::SOCKET_DIR;

/// Errors of the parsers and of the UAPI client.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// iperf3's JSON was unusable or reported an error.
    #[error("iperf3: {0}")]
    Iperf(String),
    /// ping printed no usable summary.
    #[error("ping: {0}")]
    Ping(String),
    /// A `/proc` file could not be read or lacked the wanted field.
    #[error("{path}: {what}")]
    Proc {
        /// The file.
        path: String,
        /// What went wrong.
        what: String,
    },
    /// Talking to a UAPI socket failed.
    #[error("UAPI {}: {source}", path.display())]
    UapiIo {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The device refused a request (non-zero errno) or answered without an errno.
    #[error("UAPI {}: device answered {answer:?}", path.display())]
    UapiRefused {
        /// The socket.
        path: PathBuf,
        /// The last lines of the answer, values withheld but the errno's.
        answer: String,
    },
    /// The device's answer to `get` could not be read.
    #[error("UAPI {}: unreadable answer", path.display())]
    UapiAnswer {
        /// The socket.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: AnswerError,
    },
}

// === iperf3 ===

/// One iperf3 client run, from its `-J` output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IperfRun {
    /// Received rate (the sum over streams), bits per second.
    pub bits_per_second: f64,
    /// TCP retransmits of the sender, when reported.
    pub retransmits: Option<u64>,
}

impl IperfRun {
    /// The received rate in Gbit/s.
    pub fn gbit_s(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// Parses `iperf3 -J` client output: the receiver's rate and the sender's retransmits.
pub fn parse_iperf(json: &str) -> Result<IperfRun, BenchError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        let head: String = json.chars().take(200).collect();
        BenchError::Iperf(format!("not JSON ({e}): {head:?}"))
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(BenchError::Iperf(e.to_string()));
    }
    let end = v
        .get("end")
        .ok_or_else(|| BenchError::Iperf("no \"end\" section".into()))?;
    let bits_per_second = end
        .pointer("/sum_received/bits_per_second")
        .or_else(|| end.pointer("/sum/bits_per_second"))
        .and_then(|b| b.as_f64())
        .ok_or_else(|| BenchError::Iperf("no bits_per_second".into()))?;
    let retransmits = end
        .pointer("/sum_sent/retransmits")
        .and_then(|r| r.as_u64());
    Ok(IperfRun {
        bits_per_second,
        retransmits,
    })
}

// === ping ===

/// The summary of a `ping -q` run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Replies received.
    pub received: u32,
    /// Minimum RTT, ms.
    pub min_ms: f64,
    /// Average RTT, ms.
    pub avg_ms: f64,
    /// Maximum RTT, ms.
    pub max_ms: f64,
}

/// Parses iputils `ping` output (the `packets transmitted` and `rtt min/avg/max/mdev` lines).
pub fn parse_ping(out: &str) -> Result<PingStats, BenchError> {
    let counts = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| BenchError::Ping(format!("no statistics in {out:?}")))?;
    let count_before = |word: &str| -> Option<u32> {
        counts
            .split(',')
            .find(|part| part.contains(word))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let transmitted = count_before("transmitted")
        .ok_or_else(|| BenchError::Ping(format!("bad line {counts:?}")))?;
    let received =
        count_before("received").ok_or_else(|| BenchError::Ping(format!("bad line {counts:?}")))?;
    if received == 0 {
        return Err(BenchError::Ping(format!("no replies ({transmitted} sent)")));
    }
    let rtt = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .ok_or_else(|| BenchError::Ping(format!("no rtt line in {out:?}")))?;
    let nums: Vec<f64> = rtt
        .split('=')
        .nth(1)
        .map(|s| {
            s.trim()
                .trim_end_matches("ms")
                .trim()
                .split('/')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if nums.len() < 3 {
        return Err(BenchError::Ping(format!("bad rtt line {rtt:?}")));
    }
    Ok(PingStats {
        transmitted,
        received,
        min_ms: nums[0],
        avg_ms: nums[1],
        max_ms: nums[2],
    })
}

// === /proc ===

/// The first number of a `Name:  value …` line of `/proc/PID/status` (`VmRSS` is in KiB).
pub fn status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime (clock ticks, all threads) from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may contain spaces and parentheses, so
/// fields are counted after its last `)`: field 3 (state) is the first there, utime and stime
/// are fields 14 and 15.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU use in percent of one core: `ticks` clock ticks spent over `elapsed`.
pub fn cpu_percent(ticks: u64, ticks_per_second: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    if ticks_per_second == 0 || secs <= 0.0 {
        return None;
    }
    Some(ticks as f64 / ticks_per_second as f64 / secs * 100.0)
}

fn read_proc(pid: u32, file: &str) -> Result<String, BenchError> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).map_err(|e| BenchError::Proc {
        what: e.to_string(),
        path,
    })
}

/// VmRSS of process `pid`, KiB.
pub fn read_rss_kib(pid: u32) -> Result<u64, BenchError> {
    let s = read_proc(pid, "status")?;
    status_field(&s, "VmRSS").ok_or_else(|| BenchError::Proc {
        path: format!("/proc/{pid}/status"),
        what: "no VmRSS".into(),
    })
}

/// utime + stime of process `pid` (all its threads), clock ticks.
pub fn read_cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let s = read_proc(pid, "stat")?;
    stat_cpu_ticks(&s).ok_or_else(|| BenchError::Proc {
        path: format!("/proc/{pid}/stat"),
        what: "no utime/stime".into(),
    })
}

// === statistics ===

/// Median, minimum and maximum of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// The [`Spread`] of `values` (NaNs ignored); `None` when there are none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// `x / base`, when both are known and `base` is positive.
pub fn ratio(x: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => Some(x / b),
        _ => None,
    }
}

/// `x - base`, when both are known.
pub fn difference(x: Option<f64>, base: Option<f64>) -> Option<f64> {
    Some(x? - base?)
}

// === user-space WireGuard implementations and their UAPI ===

/// The user-space WireGuard implementations the bench starts itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Userspace {
    /// wireguard-go (Debian's package).
    WireguardGo,
    /// boringtun-cli (`cargo install boringtun-cli`), with one thread: its best setting here.
    Boringtun,
    /// meshd's datapath process, `meshd-wg`.
    MeshdWg,
}

impl Userspace {
    /// Its name in the report, which is also its binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Userspace::WireguardGo => WIREGUARD_GO,
            Userspace::Boringtun => BORINGTUN,
            Userspace::MeshdWg => MESHD_WG,
        }
    }

    /// One letter for namespace and interface names.
    pub fn tag(self) -> char {
        match self {
            Userspace::WireguardGo => 'g',
            Userspace::Boringtun => 'b',
            Userspace::MeshdWg => 'm',
        }
    }

    /// The arguments that run it in the foreground serving TUN `ifname`.
    pub fn args(self, ifname: &str) -> Vec<String> {
        let a: Vec<&str> = match self {
            Userspace::WireguardGo => vec!["-f", ifname],
            Userspace::Boringtun => {
                vec!["-f", "--disable-drop-privileges", "--threads", "1", ifname]
            }
            Userspace::MeshdWg => vec!["--interface", ifname],
        };
        a.into_iter().map(String::from).collect()
    }

    /// Parses a name as given on the command line.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Userspace::WireguardGo,
            Userspace::Boringtun,
            Userspace::MeshdWg,
        ]
        .into_iter()
        .find(|u| u.name() == name)
    }
}

/// The UAPI socket of interface `ifname`.
pub fn uapi_socket(ifname: &str) -> PathBuf {
    codec::socket_path(ifname)
}

/// Lower-case hex, as UAPI wants keys.
pub fn key_hex(key: &[u8; 32]) -> String {
    Key(*key).to_hex()
}

/// A deterministic 32-byte key: SHA-256 of `label/index`.
pub fn synthetic_key(label: &str, index: u32) -> [u8; 32] {
    Sha256::digest(format!("{label}/{index}").as_bytes()).into()
}

/// Highest peer index [`synthetic_peer`] keeps distinct.
pub const MAX_SYNTHETIC_PEERS: u32 = 65_536;

/// A peer of the peer-scale runs: its own IPv4 /24 and IPv6 /64 and an endpoint. The devices
/// live in namespaces with nothing but loopback and their TUN, and peers without traffic never
/// handshake, so nothing is ever sent to these addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticPeer {
    /// Its public key.
    pub public_key: [u8; 32],
    /// Its IPv4 allowed IP (`10.H.L.0/24`).
    pub allowed_v4: String,
    /// Its IPv6 allowed IP (`fd6d:6273:0:I::/64`).
    pub allowed_v6: String,
    /// Its endpoint (`198.19.H.L:51820`).
    pub endpoint: String,
}

/// Peer number `i` (distinct for `i` below [`MAX_SYNTHETIC_PEERS`]).
pub fn synthetic_peer(i: u32) -> SyntheticPeer {
    let (hi, lo) = ((i >> 8) & 0xff, i & 0xff);
    SyntheticPeer {
        public_key: synthetic_key("mesh-bench-peer", i),
        allowed_v4: format!("10.{hi}.{lo}.0/24"),
        allowed_v6: format!("fd6d:6273:0:{:x}::/64", i & 0xffff),
        endpoint: format!("198.19.{hi}.{lo}:51820"),
    }
}

/// `set=1` of a device's private key and listen port.
pub fn uapi_device_request(private_key: &[u8; 32], listen_port: u16) -> String {
    set_request(&SetRequest {
        private_key: Some(Some(Key(*private_key))),
        listen_port: Some(listen_port),
        ..SetRequest::default()
    })
}

/// `set=1` adding (or updating) `peers`, each with its two allowed IPs and endpoint.
pub fn uapi_add_peers_request(peers: &[SyntheticPeer]) -> String {
    set_request(&SetRequest {
        peers: peers.iter().map(SyntheticPeer::update).collect(),
        ..SetRequest::default()
    })
}

/// `set=1` removing the peer with `public_key`.
pub fn uapi_remove_peer_request(public_key: &[u8; 32]) -> String {
    set_request(&SetRequest {
        peers: vec![PeerUpdate {
            remove: true,
            ..PeerUpdate::new(Key(*public_key))
        }],
        ..SetRequest::default()
    })
}

fn set_request(req: &SetRequest) -> String {
    let mut text = String::new();
    codec::write_set(req, &mut text);
    text
}

impl SyntheticPeer {
    /// Its `set` section: endpoint, then its allowed IPs replacing any others.
    fn update(&self) -> PeerUpdate {
        // `synthetic_peer` formats all three from numbers; they always parse.
        let net = |s: &str| s.parse().expect("synthetic_peer writes valid networks");
        PeerUpdate {
            endpoint: Some(
                self.endpoint
                    .parse()
                    .expect("synthetic_peer writes a valid endpoint"),
            ),
            replace_allowed_ips: true,
            allowed_ips: vec![net(&self.allowed_v4), net(&self.allowed_v6)],
            ..PeerUpdate::new(Key(self.public_key))
        }
    }
}

/// True once a UAPI answer is complete (its `errno=N` line and the empty line after it).
pub fn uapi_answer_complete(answer: &str) -> bool {
    codec::answer_complete(answer.as_bytes())
}

/// The errno of a UAPI answer (`None` when it has none).
pub fn uapi_errno(answer: &str) -> Option<i64> {
    codec::answer_errno(answer).map(i64::from)
}

/// The number of peers in a `get=1` answer (0 when it cannot be read; [`uapi_get`] only
/// returns answers that can).
pub fn uapi_peer_count(answer: &str) -> usize {
    codec::parse_get_answer(answer).map_or(0, |info| info.peers.len())
}

/// Sends one request on a fresh connection to `socket` and reads the answer up to its
/// `errno=N` and empty line (or until the device closes the connection).
pub fn uapi_exchange(socket: &Path, request: &str) -> Result<String, BenchError> {
    let io = |source| BenchError::UapiIo {
        path: socket.to_path_buf(),
        source,
    };
    let mut conn = UnixStream::connect(socket).map_err(io)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    conn.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::with_capacity(64);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if codec::answer_complete(&answer) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn refused(socket: &Path, answer: &str) -> BenchError {
    let tail: Vec<String> = answer
        .lines()
        .rev()
        .take(3)
        .map(codec::loggable_answer_line)
        .collect();
    BenchError::UapiRefused {
        path: socket.to_path_buf(),
        answer: tail.into_iter().rev().collect::<Vec<_>>().join("\\n"),
    }
}

/// A `set=1` request; an answer other than `errno=0` is an error.
pub fn uapi_set(socket: &Path, request: &str) -> Result<(), BenchError> {
    let answer = uapi_exchange(socket, request)?;
    codec::parse_set_answer(&answer).map_err(|_| refused(socket, &answer))
}

/// A `get=1` request: the whole answer, once the codec has read it without error.
pub fn uapi_get(socket: &Path) -> Result<String, BenchError> {
    let mut request = String::new();
    codec::write_request(&codec::Request::Get, &mut request);
    let answer = uapi_exchange(socket, &request)?;
    match codec::parse_get_answer(&answer) {
        Ok(_) => Ok(answer),
        Err(AnswerError::Errno(_) | AnswerError::MissingErrno) => Err(refused(socket, &answer)),
        Err(source) => Err(BenchError::UapiAnswer {
            path: socket.to_path_buf(),
            source,
        }),
    }
}

// === report ===

/// Throughput and RTT of one data-plane scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioResult {
    /// Scenario name ([`PLAIN`], [`WIREGUARD_GO`], …).
    pub name: String,
    /// `--version` of the tunnel implementation, when it has one.
    pub version: Option<String>,
    /// "ok", or "unavailable: …" / "error: …".
    pub status: String,
    /// iperf3 TCP, 1 stream, Gbit/s.
    pub gbit_s_1: Option<f64>,
    /// iperf3 TCP, 4 streams, Gbit/s.
    pub gbit_s_4: Option<f64>,
    /// Average ping RTT, ms.
    pub rtt_ms: Option<f64>,
    /// RTT added over plain veth, ms.
    pub added_rtt_ms: Option<f64>,
    /// 1-stream throughput relative to plain veth.
    pub ratio_1: Option<f64>,
    /// 4-stream throughput relative to plain veth.
    pub ratio_4: Option<f64>,
    /// RTT relative to plain veth.
    pub ratio_rtt: Option<f64>,
    /// Resident memory of meshd + meshd-wg on node 1, KiB (meshd scenarios).
    pub rss_kib: Option<u64>,
    /// The same with 100 peers programmed (99 synthetic records added), KiB.
    pub rss_kib_100_peers: Option<u64>,
    /// Retransmits reported by iperf3, 1 stream.
    pub retransmits_1: Option<u64>,
    /// Retransmits reported by iperf3, 4 streams.
    pub retransmits_4: Option<u64>,
    /// With `--rounds N` > 1: each round's own numbers (the fields above are their medians).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<Round>,
}

/// One round of a data-plane scenario (`--rounds`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    /// "ok", or why the round failed.
    pub status: String,
    /// iperf3 TCP, 1 stream, Gbit/s.
    pub gbit_s_1: Option<f64>,
    /// iperf3 TCP, 4 streams, Gbit/s.
    pub gbit_s_4: Option<f64>,
    /// Average ping RTT, ms.
    pub rtt_ms: Option<f64>,
}

fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    spread(&v).map(|s| s.median)
}

fn median_u64(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    let mut v: Vec<u64> = values.flatten().collect();
    v.sort_unstable();
    // The lower median; none of an empty list.
    v.len()
        .checked_sub(1)
        .and_then(|last| v.get(last / 2))
        .copied()
}

/// One scenario's result from the results of its rounds (in order): each number is the
/// median over the rounds that succeeded, and every round is listed in
/// [`ScenarioResult::rounds`]. One round is returned as it is; if none succeeded, the last.
pub fn merge_rounds(mut rounds: Vec<ScenarioResult>) -> ScenarioResult {
    if rounds.len() <= 1 {
        return rounds.pop().unwrap_or_default();
    }
    let listed: Vec<Round> = rounds
        .iter()
        .map(|r| Round {
            status: r.status.clone(),
            gbit_s_1: r.gbit_s_1,
            gbit_s_4: r.gbit_s_4,
            rtt_ms: r.rtt_ms,
        })
        .collect();
    let ok: Vec<&ScenarioResult> = rounds.iter().filter(|r| r.status == "ok").collect();
    let Some(first) = ok.first() else {
        let mut last = rounds.pop().unwrap_or_default();
        last.rounds = listed;
        return last;
    };
    ScenarioResult {
        name: first.name.clone(),
        version: first.version.clone(),
        status: "ok".into(),
        gbit_s_1: median_of(ok.iter().map(|r| r.gbit_s_1)),
        gbit_s_4: median_of(ok.iter().map(|r| r.gbit_s_4)),
        rtt_ms: median_of(ok.iter().map(|r| r.rtt_ms)),
        rss_kib: median_u64(ok.iter().map(|r| r.rss_kib)),
        rss_kib_100_peers: median_u64(ok.iter().map(|r| r.rss_kib_100_peers)),
        retransmits_1: median_u64(ok.iter().map(|r| r.retransmits_1)),
        retransmits_4: median_u64(ok.iter().map(|r| r.retransmits_4)),
        rounds: listed,
        ..Default::default()
    }
}

/// One implementation's peer-scale numbers: one device, `peers` peers, no traffic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleResult {
    /// Implementation name ([`WIREGUARD_GO`], [`BORINGTUN`], [`MESHD_WG`]).
    pub name: String,
    /// Its `--version`, when it has one.
    pub version: Option<String>,
    /// "ok", or "unavailable: …" / "error: …".
    pub status: String,
    /// Peers configured.
    pub peers: u32,
    /// Wall time to configure all of them over raw UAPI (batches of 1,000), ms.
    pub configure_ms: Option<f64>,
    /// Adding one peer with `peers` present, raw UAPI `set=1`, ms.
    pub add_ms: Option<Spread>,
    /// Removing one peer with `peers` present, raw UAPI `set=1`, ms.
    pub remove_ms: Option<Spread>,
    /// VmRSS of the process before any peer was configured, KiB.
    pub rss_kib_empty: Option<u64>,
    /// VmRSS of the process with `peers` peers, KiB.
    pub rss_kib: Option<u64>,
    /// CPU of the process (all threads) while idle with `peers` peers, % of one core.
    pub idle_cpu_percent: Option<f64>,
    /// Seconds over which the idle CPU was taken.
    pub idle_s: Option<f64>,
}

/// How meshd compares with the references, from the data-plane scenarios.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparisons {
    /// meshd / wireguard-go, 1 stream.
    pub meshd_vs_wireguard_go_1: Option<f64>,
    /// meshd / wireguard-go, 4 streams.
    pub meshd_vs_wireguard_go_4: Option<f64>,
    /// meshd / boringtun-cli, 1 stream.
    pub meshd_vs_boringtun_1: Option<f64>,
    /// meshd / boringtun-cli, 4 streams.
    pub meshd_vs_boringtun_4: Option<f64>,
    /// meshd / plain veth, 1 stream.
    pub meshd_of_plain_1: Option<f64>,
    /// meshd / plain veth, 4 streams.
    pub meshd_of_plain_4: Option<f64>,
    /// meshd (eBPF steering) / meshd (route steering), 1 stream.
    pub ebpf_vs_routes_1: Option<f64>,
    /// meshd (eBPF steering) / meshd (route steering), 4 streams.
    pub ebpf_vs_routes_4: Option<f64>,
    /// meshd-wg over the references' veth / wireguard-go, 1 stream.
    pub datapath_vs_wireguard_go_1: Option<f64>,
    /// meshd-wg over the references' veth / boringtun-cli, 1 stream.
    pub datapath_vs_boringtun_1: Option<f64>,
    /// meshd-wg over the references' veth / plain veth, 1 stream.
    pub datapath_of_plain_1: Option<f64>,
    /// meshd-wg over the references' veth / plain veth, 4 streams.
    pub datapath_of_plain_4: Option<f64>,
    /// meshd's lab / the same lab with encryption disabled, 1 stream.
    pub lab_of_plain_lab_1: Option<f64>,
    /// meshd's lab / the same lab with encryption disabled, 4 streams.
    pub lab_of_plain_lab_4: Option<f64>,
    /// RTT meshd's lab adds over the same lab with encryption disabled, ms.
    pub lab_added_rtt_ms: Option<f64>,
}

/// The bars meshd's user-space datapath is held to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Targets {
    /// meshd at least this many times wireguard-go's 1-stream throughput.
    pub min_vs_wireguard_go: f64,
    /// meshd at least this many times boringtun-cli's 1-stream throughput.
    pub min_vs_boringtun: f64,
    /// meshd at least this fraction of plain veth's 1-stream throughput.
    pub min_of_plain: f64,
    /// meshd adds at most this RTT over plain veth, ms.
    pub max_added_rtt_ms: f64,
    /// meshd-wg's RSS at most this many MiB with the peer-scale peer count.
    pub max_rss_mib: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            min_vs_wireguard_go: 5.0,
            min_vs_boringtun: 3.0,
            min_of_plain: 0.25,
            max_added_rtt_ms: 0.2,
            max_rss_mib: 48.0,
        }
    }
}

/// The outcome of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Met.
    Pass,
    /// Missed.
    Fail,
    /// An input was not measured (scenario skipped or failed).
    NotMeasured,
}

impl Verdict {
    /// PASS, FAIL or n/a.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotMeasured => "n/a",
        }
    }
}

/// One target, the value measured for it and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is held to the bar.
    pub target: String,
    /// The measured value, in the unit of `limit`.
    pub measured: Option<f64>,
    /// The bar.
    pub limit: f64,
    /// True: `measured >= limit` passes; false: `measured <= limit` passes.
    pub at_least: bool,
    /// Unit of `measured` and `limit` ("x", "%", "ms", "MiB").
    pub unit: String,
    /// The outcome.
    pub verdict: Verdict,
}

fn check(
    target: &str,
    measured: Option<f64>,
    limit: f64,
    at_least: bool,
    unit: &str,
) -> TargetCheck {
    let verdict = match measured {
        None => Verdict::NotMeasured,
        Some(m) if (at_least && m >= limit) || (!at_least && m <= limit) => Verdict::Pass,
        Some(_) => Verdict::Fail,
    };
    TargetCheck {
        target: target.to_string(),
        measured,
        limit,
        at_least,
        unit: unit.to_string(),
        verdict,
    }
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Seconds per iperf3 run.
    pub duration_s: u64,
    /// Pings per RTT measurement.
    pub pings: u32,
    /// Interval between pings, ms.
    pub ping_interval_ms: u64,
    /// Rounds of the data-plane scenarios (each round runs every scenario once, in order);
    /// with more than one the reported numbers are medians.
    pub rounds: u32,
    /// CPUs of the machine.
    pub cpus: usize,
    /// `/proc/loadavg` when the run started.
    pub load_average: Option<String>,
    /// The data-plane scenarios.
    pub results: Vec<ScenarioResult>,
    /// Peers configured in the peer-scale runs.
    pub scale_peers: u32,
    /// The peer-scale runs.
    pub peer_scale: Vec<ScaleResult>,
    /// meshd against the references.
    pub comparisons: Comparisons,
    /// The targets, with verdicts.
    pub targets: Vec<TargetCheck>,
}

impl Report {
    /// The data-plane scenario `name`, if it ran successfully.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioResult> {
        self.results
            .iter()
            .find(|r| r.name == name && r.status == "ok")
    }

    /// The peer-scale run of `name`, if it ran successfully.
    pub fn scale(&self, name: &str) -> Option<&ScaleResult> {
        self.peer_scale
            .iter()
            .find(|r| r.name == name && r.status == "ok")
    }

    /// Fills in everything derived: ratios and added RTT against plain veth, the
    /// comparisons, and the target verdicts.
    pub fn finish(&mut self, targets: &Targets) {
        let plain = self.scenario(PLAIN).cloned();
        for r in &mut self.results {
            if r.status != "ok" {
                continue;
            }
            let p = plain.as_ref();
            r.ratio_1 = ratio(r.gbit_s_1, p.and_then(|p| p.gbit_s_1));
            r.ratio_4 = ratio(r.gbit_s_4, p.and_then(|p| p.gbit_s_4));
            r.ratio_rtt = ratio(r.rtt_ms, p.and_then(|p| p.rtt_ms));
            r.added_rtt_ms = difference(r.rtt_ms, p.and_then(|p| p.rtt_ms));
        }
        let get =
            |name: &str, f: fn(&ScenarioResult) -> Option<f64>| self.scenario(name).and_then(f);
        let one = |r: &ScenarioResult| r.gbit_s_1;
        let four = |r: &ScenarioResult| r.gbit_s_4;
        let comparisons = Comparisons {
            meshd_vs_wireguard_go_1: ratio(get(MESHD, one), get(WIREGUARD_GO, one)),
            meshd_vs_wireguard_go_4: ratio(get(MESHD, four), get(WIREGUARD_GO, four)),
            meshd_vs_boringtun_1: ratio(get(MESHD, one), get(BORINGTUN, one)),
            meshd_vs_boringtun_4: ratio(get(MESHD, four), get(BORINGTUN, four)),
            meshd_of_plain_1: ratio(get(MESHD, one), get(PLAIN, one)),
            meshd_of_plain_4: ratio(get(MESHD, four), get(PLAIN, four)),
            ebpf_vs_routes_1: ratio(get(MESHD, one), get(MESHD_ROUTES, one)),
            ebpf_vs_routes_4: ratio(get(MESHD, four), get(MESHD_ROUTES, four)),
            datapath_vs_wireguard_go_1: ratio(get(MESHD_WG_VETH, one), get(WIREGUARD_GO, one)),
            datapath_vs_boringtun_1: ratio(get(MESHD_WG_VETH, one), get(BORINGTUN, one)),
            datapath_of_plain_1: ratio(get(MESHD_WG_VETH, one), get(PLAIN, one)),
            datapath_of_plain_4: ratio(get(MESHD_WG_VETH, four), get(PLAIN, four)),
            lab_of_plain_lab_1: ratio(get(MESHD, one), get(PLAIN_LAB, one)),
            lab_of_plain_lab_4: ratio(get(MESHD, four), get(PLAIN_LAB, four)),
            lab_added_rtt_ms: difference(get(MESHD, |r| r.rtt_ms), get(PLAIN_LAB, |r| r.rtt_ms)),
        };
        let added_rtt = get(MESHD, |r| r.added_rtt_ms);
        let datapath_added_rtt = get(MESHD_WG_VETH, |r| r.added_rtt_ms);
        let rss_mib = self
            .scale(MESHD_WG)
            .and_then(|s| s.rss_kib)
            .map(|k| k as f64 / 1024.0);
        self.comparisons = comparisons;
        let c = &self.comparisons;
        self.targets = vec![
            check(
                "meshd vs wireguard-go, 1 stream",
                c.meshd_vs_wireguard_go_1,
                targets.min_vs_wireguard_go,
                true,
                "x",
            ),
            check(
                "meshd vs boringtun-cli, 1 stream",
                c.meshd_vs_boringtun_1,
                targets.min_vs_boringtun,
                true,
                "x",
            ),
            check(
                "meshd of plain veth, 1 stream",
                c.meshd_of_plain_1.map(|f| f * 100.0),
                targets.min_of_plain * 100.0,
                true,
                "%",
            ),
            check(
                "meshd RTT added over plain veth",
                added_rtt,
                targets.max_added_rtt_ms,
                false,
                "ms",
            ),
            check(
                &format!("meshd-wg RSS with {} peers", self.scale_peers),
                rss_mib,
                targets.max_rss_mib,
                false,
                "MiB",
            ),
            // Like for like: the datapath over the references' veth, and the lab against
            // itself unencrypted.
            check(
                "meshd-wg (veth) of plain veth, 1 stream",
                c.datapath_of_plain_1.map(|f| f * 100.0),
                targets.min_of_plain * 100.0,
                true,
                "%",
            ),
            check(
                "meshd-wg (veth) RTT added over plain veth",
                datapath_added_rtt,
                targets.max_added_rtt_ms,
                false,
                "ms",
            ),
            check(
                "meshd lab of plain lab, 1 stream",
                c.lab_of_plain_lab_1.map(|f| f * 100.0),
                targets.min_of_plain * 100.0,
                true,
                "%",
            ),
            check(
                "meshd lab RTT added over plain lab",
                c.lab_added_rtt_ms,
                targets.max_added_rtt_ms,
                false,
                "ms",
            ),
        ];
    }

    /// The human-readable report: both tables, the comparisons and the targets.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mesh-bench: iperf3 TCP {} s per run; ping -c {} -i {}; {} CPUs; load average {}",
            self.duration_s,
            self.pings,
            ping_interval_arg(self.ping_interval_ms),
            self.cpus,
            self.load_average.as_deref().unwrap_or("?")
        );
        if !self.results.is_empty() {
            let rounds = if self.rounds > 1 {
                format!(
                    "; medians of {} rounds, each running every scenario once",
                    self.rounds
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "\nData plane (pod to pod; plain and references: two namespaces over a veth{rounds}):"
            );
            let _ = writeln!(
                s,
                "{:<14} {:>9} {:>9} {:>8} {:>8} {:>6} {:>6} {:>13} {:>8} {:>10}  status",
                "scenario",
                "1s Gbit/s",
                "4s Gbit/s",
                "RTT ms",
                "+RTT ms",
                "x1s",
                "x4s",
                "retr 1/4",
                "RSS MiB",
                "RSS@100 pr"
            );
            for r in &self.results {
                let retr = match (r.retransmits_1, r.retransmits_4) {
                    (None, None) => "-".to_string(),
                    (a, b) => format!(
                        "{}/{}",
                        a.map_or("-".into(), |v| v.to_string()),
                        b.map_or("-".into(), |v| v.to_string())
                    ),
                };
                let _ = writeln!(
                    s,
                    "{:<14} {:>9} {:>9} {:>8} {:>8} {:>6} {:>6} {:>13} {:>8} {:>10}  {}{}",
                    r.name,
                    opt(r.gbit_s_1, 2),
                    opt(r.gbit_s_4, 2),
                    opt(r.rtt_ms, 3),
                    opt(r.added_rtt_ms, 3),
                    opt(r.ratio_1, 3),
                    opt(r.ratio_4, 3),
                    retr,
                    opt(kib_to_mib(r.rss_kib), 1),
                    opt(kib_to_mib(r.rss_kib_100_peers), 1),
                    r.status,
                    r.version
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default()
                );
            }
            if self.results.iter().any(|r| !r.rounds.is_empty()) {
                let _ = writeln!(s, "\nRounds (1 stream Gbit/s; RTT ms; in the order run):");
                for r in self.results.iter().filter(|r| !r.rounds.is_empty()) {
                    let each = |f: fn(&Round) -> Option<f64>, digits: usize| {
                        r.rounds
                            .iter()
                            .map(|x| match f(x) {
                                Some(v) if x.status == "ok" => format!("{v:.digits$}"),
                                _ => "-".into(),
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    let _ = writeln!(
                        s,
                        "  {:<14} {};  {}",
                        r.name,
                        each(|x| x.gbit_s_1, 2),
                        each(|x| x.rtt_ms, 3)
                    );
                }
            }
        }
        if !self.peer_scale.is_empty() {
            let _ = writeln!(
                s,
                "\nPeer scale ({} peers, one device in its own namespace, no traffic; raw UAPI, median [min-max]):",
                self.scale_peers
            );
            let _ = writeln!(
                s,
                "{:<14} {:>12} {:>20} {:>20} {:>10} {:>9} {:>10}  status",
                "impl",
                "configure ms",
                "add one ms",
                "remove one ms",
                "RSS@0 MiB",
                "RSS MiB",
                "idle CPU %"
            );
            for r in &self.peer_scale {
                let _ = writeln!(
                    s,
                    "{:<14} {:>12} {:>20} {:>20} {:>10} {:>9} {:>10}  {}{}",
                    r.name,
                    opt(r.configure_ms, 0),
                    spread_text(r.add_ms),
                    spread_text(r.remove_ms),
                    opt(kib_to_mib(r.rss_kib_empty), 1),
                    opt(kib_to_mib(r.rss_kib), 1),
                    opt(r.idle_cpu_percent, 2),
                    r.status,
                    r.version
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default()
                );
            }
        }
        let c = &self.comparisons;
        let _ = writeln!(s, "\nmeshd against the references (1 stream / 4 streams):");
        let _ = writeln!(
            s,
            "  meshd / wireguard-go:   {} / {}",
            times(c.meshd_vs_wireguard_go_1),
            times(c.meshd_vs_wireguard_go_4)
        );
        let _ = writeln!(
            s,
            "  meshd / boringtun-cli:  {} / {}",
            times(c.meshd_vs_boringtun_1),
            times(c.meshd_vs_boringtun_4)
        );
        let _ = writeln!(
            s,
            "  meshd of plain veth:    {} / {}",
            percent(c.meshd_of_plain_1),
            percent(c.meshd_of_plain_4)
        );
        let added: Vec<String> = self
            .results
            .iter()
            .filter(|r| r.name != PLAIN)
            .filter_map(|r| r.added_rtt_ms.map(|a| format!("{} {a:+.3} ms", r.name)))
            .collect();
        if !added.is_empty() {
            let _ = writeln!(s, "  RTT added over plain:   {}", added.join(", "));
        }
        if c.datapath_of_plain_1.is_some() {
            let _ = writeln!(
                s,
                "  meshd-wg over the references' veth: {} / {} of plain veth; {} wireguard-go, {} boringtun-cli (1 stream)",
                percent(c.datapath_of_plain_1),
                percent(c.datapath_of_plain_4),
                times(c.datapath_vs_wireguard_go_1),
                times(c.datapath_vs_boringtun_1)
            );
        }
        if c.lab_of_plain_lab_1.is_some() {
            let _ = writeln!(
                s,
                "  meshd lab of plain lab: {} / {}; RTT added over plain lab {}",
                percent(c.lab_of_plain_lab_1),
                percent(c.lab_of_plain_lab_4),
                c.lab_added_rtt_ms
                    .map_or("-".into(), |a| format!("{a:+.3} ms"))
            );
        }
        if c.ebpf_vs_routes_1.is_some() {
            let _ = writeln!(
                s,
                "  eBPF redirect / routes: {} / {}",
                times(c.ebpf_vs_routes_1),
                times(c.ebpf_vs_routes_4)
            );
        }
        let _ = writeln!(s, "\nTargets:");
        for t in &self.targets {
            let bar = format!(
                "{} {}{}",
                if t.at_least { ">=" } else { "<=" },
                number(t.limit),
                t.unit
            );
            let measured = t
                .measured
                .map(|m| format!("{}{}", number(m), t.unit))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "  {:<36} {:>9} {:>12}  {}",
                t.target,
                bar,
                measured,
                t.verdict.label()
            );
        }
        s
    }
}

/// `ping -i` argument for an interval in ms (seconds, as ping wants it).
pub fn ping_interval_arg(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

fn kib_to_mib(k: Option<u64>) -> Option<f64> {
    k.map(|k| k as f64 / 1024.0)
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

fn number(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn times(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
}

fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn spread_text(s: Option<Spread>) -> String {
    s.map(|s| format!("{:.3} [{:.2}-{:.2}]", s.median, s.min, s.max))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_iperf() {
        let j = r#"{"end":{"sum_sent":{"bits_per_second":2e9,"retransmits":3},"sum_received":{"bits_per_second":1.5e9}}}"#;
        let run = parse_iperf(j).unwrap();
        assert_eq!(run.bits_per_second, 1.5e9);
        assert_eq!(run.retransmits, Some(3));
        assert!((run.gbit_s() - 1.5).abs() < 1e-12);
        // UDP-style output has only "sum".
        let j = r#"{"end":{"sum":{"bits_per_second":1e9}}}"#;
        assert_eq!(parse_iperf(j).unwrap().retransmits, None);
    }

    #[test]
    fn iperf_errors() {
        let e = parse_iperf(r#"{"start":{},"error":"unable to connect to server"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"), "{e}");
        assert!(parse_iperf("").is_err());
        assert!(parse_iperf(r#"{"start":{}}"#).is_err());
        assert!(parse_iperf(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn parses_ping() {
        let out = "PING 10.250.0.2 (10.250.0.2) 56(84) bytes of data.\n\n--- 10.250.0.2 ping statistics ---\n50 packets transmitted, 49 received, 2% packet loss, time 537ms\nrtt min/avg/max/mdev = 0.021/0.045/0.120/0.010 ms\n";
        let p = parse_ping(out).unwrap();
        assert_eq!((p.transmitted, p.received), (50, 49));
        assert!((p.avg_ms - 0.045).abs() < 1e-12);
        assert!((p.min_ms - 0.021).abs() < 1e-12);
        assert!((p.max_ms - 0.120).abs() < 1e-12);
        // With errors reported on the counts line.
        let out = "5 packets transmitted, 5 received, +1 duplicates, 0% packet loss, time 4ms\nrtt min/avg/max/mdev = 1.0/2.0/3.0/0.5 ms\n";
        assert_eq!(parse_ping(out).unwrap().avg_ms, 2.0);
    }

    #[test]
    fn ping_errors() {
        assert!(parse_ping("nothing").is_err());
        let lost = "50 packets transmitted, 0 received, 100% packet loss, time 1000ms\n";
        assert!(parse_ping(lost)
            .unwrap_err()
            .to_string()
            .contains("no replies"));
        let bad =
            "3 packets transmitted, 3 received, 0% packet loss\nrtt min/avg/max/mdev = x/y ms\n";
        assert!(parse_ping(bad).is_err());
    }

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tmeshd-wg\nUmask:\t0022\nPPid:\t4242\nVmPeak:\t  123456 kB\nVmRSS:\t    8612 kB\nRssAnon:\t 3000 kB\n";
        assert_eq!(status_field(status, "VmRSS"), Some(8612));
        assert_eq!(status_field(status, "PPid"), Some(4242));
        assert_eq!(status_field(status, "Vm"), None);
        assert_eq!(status_field(status, "VmSwap"), None);
    }

    #[test]
    fn parses_proc_stat() {
        // comm with a space and a parenthesis; utime 1500, stime 250.
        let stat = "4242 (weird) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1500 250 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(1750));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn cpu_percentages() {
        assert_eq!(cpu_percent(50, 100, Duration::from_secs(10)), Some(5.0));
        assert_eq!(cpu_percent(0, 100, Duration::from_secs(10)), Some(0.0));
        assert_eq!(cpu_percent(10, 100, Duration::ZERO), None);
        assert_eq!(cpu_percent(10, 0, Duration::from_secs(1)), None);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(read_rss_kib(pid).unwrap() > 0);
        read_cpu_ticks(pid).unwrap();
        assert!(read_rss_kib(u32::MAX).is_err());
    }

    #[test]
    fn spreads_and_ratios() {
        assert_eq!(spread(&[]), None);
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(spread(&[f64::NAN, 1.0]).unwrap().median, 1.0);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(
            difference(Some(0.3), Some(0.1)).map(|d| (d * 10.0).round()),
            Some(2.0)
        );
        assert_eq!(difference(None, Some(0.1)), None);
    }

    #[test]
    fn userspace_command_lines() {
        assert_eq!(Userspace::WireguardGo.args("wg0"), ["-f", "wg0"]);
        assert_eq!(
            Userspace::Boringtun.args("wg0"),
            ["-f", "--disable-drop-privileges", "--threads", "1", "wg0"]
        );
        assert_eq!(Userspace::MeshdWg.args("wg0"), ["--interface", "wg0"]);
        for u in [
            Userspace::WireguardGo,
            Userspace::Boringtun,
            Userspace::MeshdWg,
        ] {
            assert_eq!(Userspace::from_name(u.name()), Some(u));
        }
        assert_eq!(Userspace::from_name("wg"), None);
        assert_eq!(uapi_socket("wg0"), Path::new("/var/run/wireguard/wg0.sock"));
    }

    #[test]
    fn synthetic_peers_are_distinct() {
        let n = 5_000;
        let peers: Vec<SyntheticPeer> = (0..n).map(synthetic_peer).collect();
        let distinct = |f: fn(&SyntheticPeer) -> String| {
            peers
                .iter()
                .map(f)
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        assert_eq!(distinct(|p| key_hex(&p.public_key)), n as usize);
        assert_eq!(distinct(|p| p.allowed_v4.clone()), n as usize);
        assert_eq!(distinct(|p| p.allowed_v6.clone()), n as usize);
        assert_eq!(distinct(|p| p.endpoint.clone()), n as usize);
        for p in &peers {
            p.allowed_v4.parse::<ipnet::Ipv4Net>().unwrap();
            p.allowed_v6.parse::<ipnet::Ipv6Net>().unwrap();
            p.endpoint.parse::<std::net::SocketAddr>().unwrap();
        }
        let last = synthetic_peer(MAX_SYNTHETIC_PEERS - 1);
        assert_eq!(last.allowed_v4, "10.255.255.0/24");
        assert_eq!(last.endpoint, "198.19.255.255:51820");
        assert_eq!(synthetic_peer(7), synthetic_peer(7));
    }

    #[test]
    fn uapi_requests() {
        let key = [0xab; 32];
        assert_eq!(key_hex(&key), "ab".repeat(32));
        assert_eq!(
            uapi_device_request(&key, 51820),
            format!(
                "set=1\nprivate_key={}\nlisten_port=51820\n\n",
                "ab".repeat(32)
            )
        );
        let p = synthetic_peer(258);
        let req = uapi_add_peers_request(std::slice::from_ref(&p));
        // The codec writes a peer's endpoint before its allowed IPs.
        assert_eq!(
            req,
            format!(
                "set=1\npublic_key={}\nendpoint=198.19.1.2:51820\nreplace_allowed_ips=true\nallowed_ip=10.1.2.0/24\nallowed_ip=fd6d:6273:0:102::/64\n\n",
                key_hex(&p.public_key)
            )
        );
        let two = uapi_add_peers_request(&[synthetic_peer(0), synthetic_peer(1)]);
        assert_eq!(request_peer_count(&two), 2);
        assert!(two.starts_with("set=1\n") && two.ends_with("\n\n"));
        assert_eq!(
            two.matches("\n\n").count(),
            1,
            "one blank line ends the request"
        );
        assert_eq!(
            uapi_remove_peer_request(&key),
            format!("set=1\npublic_key={}\nremove=true\n\n", "ab".repeat(32))
        );
    }

    #[test]
    fn uapi_answers() {
        assert_eq!(uapi_errno("errno=0\n\n"), Some(0));
        assert_eq!(uapi_errno("errno=-22\n\n"), Some(-22));
        assert_eq!(uapi_errno("private_key=00\nerrno=0\n\n"), Some(0));
        assert_eq!(uapi_errno(""), None);
        assert!(uapi_answer_complete("errno=0\n\n"));
        assert!(!uapi_answer_complete("errno=0\n"));
        let get = format!(
            "private_key={}\nlisten_port=1\npublic_key={}\nendpoint=1.2.3.4:5\npublic_key={}\nerrno=0\n\n",
            "aa".repeat(32),
            "bb".repeat(32),
            "cc".repeat(32)
        );
        assert_eq!(uapi_peer_count(&get), 2);
    }

    /// The number of peer sections of a `set=1` request, as the device reads them.
    fn request_peer_count(request: &str) -> usize {
        let lines = request.strip_suffix("\n\n").unwrap_or(request).lines();
        match codec::parse_request(lines) {
            Ok(codec::Request::Set(set)) => set.peers.len(),
            other => panic!("not a set request: {other:?}"),
        }
    }

    /// A fake device on a socket in a temporary directory: answers `errno=0` to requests that
    /// start with `set=1` or `get=1` and `errno=22` otherwise, one request per connection.
    fn fake_device(
        dir: &Path,
        connections: usize,
    ) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let path = dir.join("fake.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..connections {
                let (mut conn, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.ends_with(b"\n\n") {
                    let n = conn.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let req = String::from_utf8(req).unwrap();
                let answer = if req.starts_with("get=1") {
                    format!(
                        "listen_port=1\npublic_key={}\npublic_key={}\nerrno=0\n\n",
                        "aa".repeat(32),
                        "bb".repeat(32)
                    )
                } else if req.starts_with("set=1") {
                    "errno=0\n\n".to_string()
                } else {
                    "errno=22\n\n".to_string()
                };
                conn.write_all(answer.as_bytes()).unwrap();
                seen.push(req);
            }
            seen
        });
        (path, handle)
    }

    #[test]
    fn uapi_client_against_fake_device() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, device) = fake_device(dir.path(), 3);
        let peers: Vec<SyntheticPeer> = (0..1_000).map(synthetic_peer).collect();
        uapi_set(&sock, &uapi_add_peers_request(&peers)).unwrap();
        assert_eq!(uapi_peer_count(&uapi_get(&sock).unwrap()), 2);
        let err = uapi_set(&sock, "bogus\n\n").unwrap_err();
        assert!(err.to_string().contains("errno=22"), "{err}");
        let seen = device.join().unwrap();
        assert_eq!(
            request_peer_count(&seen[0]),
            1_000,
            "the whole request arrived"
        );
        assert!(uapi_set(&dir.path().join("missing.sock"), "set=1\n\n").is_err());
    }

    fn scenario(name: &str, g1: f64, g4: f64, rtt: f64) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            status: "ok".into(),
            gbit_s_1: Some(g1),
            gbit_s_4: Some(g4),
            rtt_ms: Some(rtt),
            ..Default::default()
        }
    }

    #[test]
    fn rounds_merge_to_medians_of_the_successful_ones() {
        let mut failed = scenario(MESHD, 9.0, 9.0, 9.0);
        failed.status = "error: lab".into();
        let mut a = scenario(MESHD, 4.0, 5.0, 0.25);
        a.rss_kib = Some(100);
        let mut c = scenario(MESHD, 5.0, 4.0, 0.2);
        c.rss_kib = Some(300);
        let m = merge_rounds(vec![a, failed, scenario(MESHD, 4.4, 6.0, 0.18), c]);
        assert_eq!(m.status, "ok");
        assert_eq!(m.gbit_s_1, Some(4.4));
        assert_eq!(m.gbit_s_4, Some(5.0));
        assert_eq!(m.rtt_ms, Some(0.2));
        assert_eq!(
            m.rss_kib,
            Some(100),
            "lower median of the two rounds that had one"
        );
        assert_eq!(m.rounds.len(), 4);
        assert_eq!(m.rounds[1].status, "error: lab");
        // One round: as it was, nothing listed; none ok: the last, with the rounds listed.
        let one = merge_rounds(vec![scenario(PLAIN, 20.0, 30.0, 0.04)]);
        assert!(one.rounds.is_empty());
        assert_eq!(one.gbit_s_1, Some(20.0));
        let mut x = scenario(PLAIN, 1.0, 1.0, 1.0);
        x.status = "error: a".into();
        let mut y = x.clone();
        y.status = "error: b".into();
        let none = merge_rounds(vec![x, y]);
        assert_eq!(none.status, "error: b");
        assert_eq!(none.rounds.len(), 2);
    }

    #[test]
    fn rounds_are_listed_when_there_are_several() {
        let mut r = sample_report();
        r.rounds = 2;
        r.results[0] = merge_rounds(vec![
            scenario(PLAIN, 16.0, 24.0, 0.04),
            scenario(PLAIN, 18.0, 26.0, 0.05),
        ]);
        r.finish(&Targets::default());
        let text = r.render();
        assert!(text.contains("medians of 2 rounds"), "{text}");
        assert!(text.contains("16.00 18.00;  0.040 0.050"), "{text}");
        assert_eq!(r.results[0].gbit_s_1, Some(17.0));
    }

    fn sample_report() -> Report {
        Report {
            duration_s: 10,
            pings: 50,
            ping_interval_ms: 10,
            cpus: 2,
            scale_peers: 5_000,
            results: vec![
                scenario(PLAIN, 16.0, 24.0, 0.04),
                scenario(WIREGUARD_GO, 0.8, 0.8, 0.5),
                scenario(BORINGTUN, 1.5, 1.2, 0.3),
                scenario(MESHD, 4.8, 6.0, 0.2),
                ScenarioResult {
                    name: MESHD_ROUTES.into(),
                    status: "error: lab".into(),
                    ..Default::default()
                },
            ],
            peer_scale: vec![
                ScaleResult {
                    name: WIREGUARD_GO.into(),
                    status: "ok".into(),
                    rss_kib: Some(60 * 1024),
                    ..Default::default()
                },
                ScaleResult {
                    name: MESHD_WG.into(),
                    status: "ok".into(),
                    rss_kib: Some(40 * 1024),
                    add_ms: spread(&[0.1, 0.2, 0.3]),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn finish_derives_ratios_and_verdicts() {
        let mut r = sample_report();
        r.finish(&Targets::default());
        let wg = r.scenario(WIREGUARD_GO).unwrap();
        assert_eq!(wg.ratio_1, Some(0.05));
        assert!((wg.added_rtt_ms.unwrap() - 0.46).abs() < 1e-9);
        assert!(
            r.results[4].ratio_1.is_none(),
            "failed scenarios get no ratios"
        );
        let c = &r.comparisons;
        assert!((c.meshd_vs_wireguard_go_1.unwrap() - 6.0).abs() < 1e-9);
        assert!((c.meshd_vs_boringtun_1.unwrap() - 3.2).abs() < 1e-9);
        assert!((c.meshd_vs_boringtun_4.unwrap() - 5.0).abs() < 1e-9);
        assert!((c.meshd_of_plain_1.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(c.ebpf_vs_routes_1, None);
        let verdicts: Vec<Verdict> = r.targets.iter().map(|t| t.verdict).collect();
        // 6x >= 5 pass; 3.2x >= 3 pass; 30% >= 25% pass; 0.16 ms <= 0.2 pass; 40 <= 48 pass;
        // the like-for-like rows were not measured in this sample.
        assert_eq!(verdicts[..5], [Verdict::Pass; 5]);
        assert_eq!(verdicts[5..], [Verdict::NotMeasured; 4]);
        assert!((r.targets[2].measured.unwrap() - 30.0).abs() < 1e-9);
        assert_eq!(r.targets[4].measured, Some(40.0));
        assert!(r.targets[4].target.contains("5000"));
    }

    #[test]
    fn like_for_like_rows_compare_the_datapath_and_the_lab_with_their_own_baselines() {
        let mut r = sample_report();
        r.results.push(scenario(MESHD_WG_VETH, 4.16, 5.0, 0.2));
        r.results.push(scenario(PLAIN_LAB, 9.6, 15.0, 0.14));
        r.finish(&Targets::default());
        let c = &r.comparisons;
        assert!((c.datapath_of_plain_1.unwrap() - 0.26).abs() < 1e-9);
        assert!((c.lab_of_plain_lab_1.unwrap() - 0.5).abs() < 1e-9);
        assert!((c.lab_added_rtt_ms.unwrap() - 0.06).abs() < 1e-9);
        let rows: Vec<(&str, Verdict)> = r.targets[5..]
            .iter()
            .map(|t| (t.target.as_str(), t.verdict))
            .collect();
        assert_eq!(
            rows,
            [
                ("meshd-wg (veth) of plain veth, 1 stream", Verdict::Pass),
                ("meshd-wg (veth) RTT added over plain veth", Verdict::Pass),
                ("meshd lab of plain lab, 1 stream", Verdict::Pass),
                ("meshd lab RTT added over plain lab", Verdict::Pass),
            ]
        );
        assert!(r.render().contains("meshd lab of plain lab: 50.0%"));
    }

    #[test]
    fn targets_fail_and_go_unmeasured() {
        let mut r = sample_report();
        r.results[3] = scenario(MESHD, 0.7, 0.7, 0.33);
        r.peer_scale.pop();
        r.results.remove(2); // no boringtun-cli
        r.finish(&Targets::default());
        let verdicts: Vec<Verdict> = r.targets.iter().take(5).map(|t| t.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Fail,
                Verdict::NotMeasured,
                Verdict::Fail,
                Verdict::Fail,
                Verdict::NotMeasured
            ]
        );
        // Bars are inclusive.
        assert_eq!(check("t", Some(5.0), 5.0, true, "x").verdict, Verdict::Pass);
        assert_eq!(
            check("t", Some(0.2), 0.2, false, "ms").verdict,
            Verdict::Pass
        );
        assert_eq!(
            check("t", Some(0.21), 0.2, false, "ms").verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn renders_tables() {
        let mut r = sample_report();
        r.finish(&Targets::default());
        let text = r.render();
        for needle in [
            "Data plane",
            "Peer scale (5000 peers",
            "boringtun-cli",
            "meshd / wireguard-go:   6.00x / 7.50x",
            "meshd of plain veth:    30.0% / 25.0%",
            "meshd +0.160 ms",
            "0.200 [0.10-0.30]",
            "PASS",
            "error: lab",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        assert!(!text.contains("FAIL"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["targets"][0]["verdict"], "pass");
        assert_eq!(json["results"][0]["name"], PLAIN);
        assert_eq!(ping_interval_arg(10), "0.010");
    }
}
