//! The node-local control socket: meshd serves its status as JSON, `meshctl status` reads it,
//! and `meshctl rotate-key` asks for a key rotation through it.
//!
//! Protocol: a client connects to the unix socket, writes one line and reads one JSON document
//! until EOF. `status` answers a [`StatusReport`]; `rotate-key` starts a key rotation (or joins
//! the one under way) and answers a [`RotateOutcome`] when it ends. The socket is created mode
//! 0600: status includes nothing secret, but only root should be able to reach the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use netlink::ActiveMode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::RwLock;

use crate::mode::Encryption;

/// How long `meshctl status` waits for meshd's answer.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long `meshctl rotate-key` waits for the rotation to end.
pub const ROTATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Longest request line the daemon reads (the requests are single words); a longer line is
/// answered with an error and the connection closed, without reading the rest.
pub const MAX_REQUEST_LINE: usize = 256;

/// How long a client may take to send its request line before it is dropped.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a refused client's connection stays open for it to read why.
const ERROR_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Clients served at once; a connection beyond them is closed at once (the requests are
/// answered in microseconds, only `rotate-key` waits, and only one rotation runs).
pub const MAX_CLIENTS: usize = 32;

/// A request the daemon's loop carries out.
#[derive(Debug)]
pub enum Command {
    /// Rotate this node's keys; the answer comes when the rotation ends.
    RotateKey(tokio::sync::oneshot::Sender<Result<String, String>>),
}

/// The answer to `rotate-key`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotateOutcome {
    /// Whether both keys were replaced.
    pub ok: bool,
    /// What happened (or why the rotation was abandoned).
    pub message: String,
    /// The node's public keys after the rotation (slot 0, slot 1).
    #[serde(default)]
    pub public_keys: Vec<String>,
}

/// This node's second key slot (its peers as [`PeerReport`]s, or in the daemon as
/// [`ServedPeer`]s).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotReport<P = PeerReport> {
    /// Its WireGuard interface.
    pub interface: String,
    /// Its interface index.
    pub ifindex: u32,
    /// Its public key (base64).
    pub public_key: String,
    /// Its UDP listen port.
    pub listen_port: u16,
    /// Peers as programmed on its device.
    pub peers: Vec<P>,
}

/// Key rotation: where it stands and how it went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotationReport {
    /// Where the rotation stands.
    pub phase: RotationPhase,
    /// The slot being drained or replaced.
    pub slot: Option<u8>,
    /// The serial of the step published now.
    pub serial: Option<u64>,
    /// Peers the step waits for.
    pub pending: Vec<String>,
    /// Silent peers (no handshake within `--rotation-silence`) the rotation goes on without.
    #[serde(default)]
    pub excused: Vec<String>,
    /// Rotations finished (both keys replaced) since meshd started.
    pub rotations: u64,
    /// Rotations abandoned since meshd started.
    pub failures: u64,
    /// When the last rotation ended (UNIX seconds).
    pub last_unix: Option<u64>,
    /// Why the last rotation was abandoned, if it was.
    pub last_error: Option<String>,
    /// The slot (0 or 1) each peer node's traffic uses now.
    pub peer_slots: std::collections::BTreeMap<String, u8>,
    /// The schedule (`--key-rotation-interval`, seconds), if any.
    pub interval_secs: Option<u64>,
}

/// Where a key rotation stands, as the status names it (the slot is reported beside it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationPhase {
    /// No rotation under way.
    #[default]
    Idle,
    /// Waiting to drain a slot.
    Waiting,
    /// A slot is drained; waiting for every peer's acknowledgement.
    Draining,
    /// A slot's key was replaced; waiting for every peer to program it.
    Replaced,
}

impl RotationPhase {
    /// Its name in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationPhase::Idle => "idle",
            RotationPhase::Waiting => "waiting",
            RotationPhase::Draining => "draining",
            RotationPhase::Replaced => "replaced",
        }
    }
}

impl std::fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub mod flows_stream;
mod request;
mod served;
mod served_peer;
pub use flows_stream::FlowsService;
pub use request::{error_body, parse_request, Request, UnknownRequest};
pub use served::{status_changed, KEEP_WHILE_POLLED_WITHIN};
pub use served_peer::{ServedPeer, ServedStatus, StatusSummary};

/// Default path of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/meshd/meshd.sock";

/// Errors of the control socket. Each names its step and carries the cause as its source
/// (print with `{:#}` to see it).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Creating the socket's directory failed.
    #[error("creating control socket directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Binding the socket failed.
    #[error("binding control socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Connecting to the daemon failed.
    #[error("connecting to meshd at {path} (is meshd running on this node?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Talking to the daemon failed.
    #[error("reading status from {path}")]
    Exchange {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The daemon's answer was not a status report.
    #[error("meshd at {path} sent an unreadable status")]
    Decode {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// One peer as the device has it programmed, with its live counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerReport {
    /// The peer's node name, when the registry knows it.
    pub name: Option<String>,
    /// The peer's WireGuard public key (base64).
    pub public_key: String,
    /// The endpoint the device sends to.
    pub endpoint: Option<String>,
    /// AllowedIPs (the peer's pod CIDRs).
    pub allowed_ips: Vec<String>,
    /// Last handshake as UNIX seconds, if any.
    pub last_handshake_unix: Option<u64>,
    /// Seconds since the last handshake, if any.
    pub last_handshake_secs_ago: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// Monotonic counters of the daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Registry records skipped because they were malformed.
    pub malformed_records: u64,
    /// Reconcile passes run.
    pub reconciles: u64,
    /// Reconcile passes that failed (retried).
    pub reconcile_errors: u64,
    /// Peer operations applied (add, update, remove).
    pub peer_ops: u64,
    /// Route operations applied.
    pub route_ops: u64,
    /// Times the WireGuard device had vanished (its process died) and was brought back.
    #[serde(default)]
    pub device_restores: u64,
    /// eBPF map and attachment operations applied (redirects, local pods, pod links).
    #[serde(default)]
    pub map_ops: u64,
}

/// A malformed record the daemon skipped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MalformedReport {
    /// The node whose record is malformed.
    pub node: String,
    /// What was wrong with it.
    pub error: String,
}

/// Everything `meshctl status` shows about one node (its peers as [`PeerReport`]s, or in the
/// daemon as [`ServedPeer`]s: [`ServedStatus`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(bound(deserialize = "P: Deserialize<'de>"))]
pub struct StatusReport<P = PeerReport> {
    /// This node's name.
    pub node: String,
    /// This node's public key (base64).
    pub public_key: String,
    /// The WireGuard device's implementation (`kernel` or `userspace`).
    #[serde(with = "crate::mode::device_mode_name")]
    pub mode: ActiveMode,
    /// The WireGuard interface name.
    pub interface: String,
    /// Its interface index.
    pub ifindex: u32,
    /// Whether meshd adopted an existing device on start (vs creating it).
    pub adopted_device: bool,
    /// The UDP listen port.
    pub listen_port: u16,
    /// The WireGuard interface MTU.
    pub mtu: u32,
    /// Underlay endpoints this node publishes.
    pub endpoints: Vec<String>,
    /// This node's pod CIDRs.
    pub pod_cidrs: Vec<String>,
    /// Nodes known from the registry (including this one).
    pub known_nodes: Vec<String>,
    /// Peers as programmed on the device.
    pub peers: Vec<P>,
    /// Current conflicts (peers deliberately not programmed).
    pub conflicts: Vec<String>,
    /// Records currently skipped as malformed.
    pub malformed: Vec<MalformedReport>,
    /// Counters.
    pub counters: Counters,
    /// Whether the last reconcile converged without error.
    pub converged: bool,
    /// The encryption setting in force (`enabled`, `permissive` or `disabled`; a meshd older
    /// than the setting did not report it and was `enabled`).
    #[serde(default)]
    pub encryption: Encryption,
    /// Whether strict mode is on.
    #[serde(default)]
    pub strict_mode: bool,
    /// Whether node-to-node (host) encryption is on.
    #[serde(default)]
    pub host_encryption: bool,
    /// Peer node addresses whose host traffic goes through the tunnel now (host encryption:
    /// only peers whose tunnel is proven up).
    #[serde(default)]
    pub encrypted_hosts: Vec<String>,
    /// The tc eBPF datapath and its verdict counters (absent when it could not be read).
    #[serde(default)]
    pub datapath: Option<crate::bpf::DatapathReport>,
    /// When the older of this node's two private keys was written (UNIX seconds; the key
    /// files' mtimes).
    #[serde(default)]
    pub key_created_unix: Option<u64>,
    /// The second key slot (absent from a meshd without one).
    #[serde(default)]
    pub second: Option<SlotReport<P>>,
    /// Key rotation.
    #[serde(default)]
    pub rotation: RotationReport,
    /// When cleartext towards pod CIDRs was last attempted (the strict-drop and would-drop
    /// counters grew), as this meshd saw it.
    #[serde(default)]
    pub cleartext: CleartextReport,
    /// NetworkPolicy: what the policy loop knows and wrote (absent from a meshd without it,
    /// or when it could not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyReport>,
    /// Records this node refuses (record trust: hostile or contested claims); each is also
    /// listed, as text, in `conflicts`. Absent when none is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusalReport>,
}

/// A record this node refuses (see `docs/registry.md`, "Record trust").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefusalReport {
    /// The refused node.
    pub node: String,
    /// The record field at fault (`podCIDRs`, `endpoints`, `publicKey`, `secondKey`).
    pub field: String,
    /// Why, naming the value (and, for a conflict, the other node's claim).
    pub reason: String,
    /// For a conflict: the node that keeps the contested claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// When the strict-drop and would-drop counters last grew. They count from when the datapath
/// was loaded (across meshd restarts); this says when, so that an audit can tell cleartext
/// attempted an hour ago from cleartext attempted last month.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CleartextReport {
    /// When this meshd began watching the counters (UNIX seconds).
    pub watched_since_unix: Option<u64>,
    /// The last time it saw either counter grow (UNIX seconds); `None`: not since
    /// `watched_since_unix` (whatever they hold happened before).
    pub last_unix: Option<u64>,
}

impl CleartextReport {
    /// A report for a meshd that starts watching at `now_unix`.
    pub fn watching_from(now_unix: u64) -> CleartextReport {
        CleartextReport {
            watched_since_unix: Some(now_unix),
            last_unix: None,
        }
    }

    /// Takes a reading of the two counters' sum (`previous`: the last reading, updated).
    /// A sum lower than before means the maps were recreated: it becomes the new baseline.
    pub fn observe(&mut self, previous: &mut Option<u64>, total: u64, now_unix: u64) {
        if previous.is_some_and(|p| total > p) {
            self.last_unix = Some(now_unix);
        }
        *previous = Some(total);
    }
}

/// The status the daemon currently serves; updated after every reconcile.
pub type SharedStatus = Arc<RwLock<Option<ServedStatus>>>;

/// Bind the control socket (replacing a stale one) and serve status until the task is dropped.
pub async fn serve(
    path: PathBuf,
    status: SharedStatus,
    commands: tokio::sync::mpsc::Sender<Command>,
) -> Result<(), ControlError> {
    serve_with_flows(path, status, commands, None).await
}

/// [`serve`], with `flows` requests served from `flows` (without: answered with an error).
pub async fn serve_with_flows(
    path: PathBuf,
    status: SharedStatus,
    commands: tokio::sync::mpsc::Sender<Command>,
    flows: Option<FlowsService>,
) -> Result<(), ControlError> {
    let listener = bind(&path)?;
    tracing::info!(socket = %path.display(), "control socket listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let serialised = served::Serialised::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(%err, "control socket accept failed");
                // Out of descriptors (EMFILE) stays so until clients leave: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                max = MAX_CLIENTS,
                "control socket: too many clients at once, closing the new connection"
            );
            drop(stream);
            continue;
        };
        let status = status.clone();
        let commands = commands.clone();
        let flows = flows.clone();
        let serialised = serialised.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, status, serialised, commands, flows).await {
                tracing::debug!(%err, "control client went away");
            }
            drop(slot);
        });
    }
}

/// Why a client's request line was not read.
#[derive(Debug, thiserror::Error)]
enum RequestLineError {
    #[error("request line longer than {MAX_REQUEST_LINE} bytes")]
    TooLong,
    #[error("no request line within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("reading the request line")]
    Read(#[source] std::io::Error),
}

/// Reads one request line of at most [`MAX_REQUEST_LINE`] bytes within [`REQUEST_TIMEOUT`]
/// (EOF ends a line too). Never reads more than the limit, whatever the client sends.
async fn read_request_line(
    read: impl tokio::io::AsyncRead + Unpin,
) -> Result<String, RequestLineError> {
    let limit = u64::try_from(MAX_REQUEST_LINE).unwrap_or(u64::MAX) + 1;
    let mut bytes = Vec::new();
    let mut reader = BufReader::new(read.take(limit));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut bytes))
        .await
        .map_err(|_| RequestLineError::Timeout)?
        .map_err(RequestLineError::Read)?;
    if bytes.len() > MAX_REQUEST_LINE {
        return Err(RequestLineError::TooLong);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // A socket file left by a previous (killed) meshd is stale: nobody can be listening on it
    // because only one meshd runs per node.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ControlError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

async fn answer(
    stream: UnixStream,
    status: SharedStatus,
    serialised: served::Serialised,
    commands: tokio::sync::mpsc::Sender<Command>,
    flows: Option<FlowsService>,
) -> std::io::Result<()> {
    let (mut read, mut write) = stream.into_split();
    let line = match read_request_line(&mut read).await {
        Ok(line) => line,
        Err(err) => {
            tracing::warn!(%err, "control socket: refusing a client");
            let body = error_body(&err.to_string());
            // Best effort: a client that stopped reading gets nothing.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                write.write_all(body.as_bytes()).await?;
                write.shutdown().await
            })
            .await;
            // Closing with unread bytes queued resets the connection, and the client would
            // lose the answer: leave it a moment to read it (not reading anything more).
            tokio::time::sleep(ERROR_LINGER).await;
            return Ok(());
        }
    };
    let body: Arc<Vec<u8>> = match parse_request(&line) {
        Ok(Request::Flows { follow }) => match &flows {
            Some(service) => return flows_stream::answer(service, follow, read, write).await,
            None => Arc::new(
                error_body("flow events are off on this node (meshd --flow-events=false)").into(),
            ),
        },
        Ok(Request::Status { pretty }) => match status.read().await.as_ref() {
            Some(report) if pretty => {
                Arc::new(serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?)
            }
            Some(report) => serialised.compact(report).map_err(std::io::Error::other)?,
            None => Arc::new(br#"{"error":"meshd is starting"}"#.to_vec()),
        },
        Ok(Request::RotateKey) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let outcome = match commands.send(Command::RotateKey(tx)).await {
                Err(_) => Err("meshd is shutting down".to_string()),
                Ok(()) => rx
                    .await
                    .unwrap_or_else(|_| Err("meshd stopped during the rotation".into())),
            };
            let public_keys = status.read().await.as_ref().map_or_else(Vec::new, |s| {
                std::iter::once(s.public_key.clone())
                    .chain(s.second.as_ref().map(|k| k.public_key.clone()))
                    .collect()
            });
            let (ok, message) = match outcome {
                Ok(m) => (true, m),
                Err(m) => (false, m),
            };
            Arc::new(
                serde_json::to_vec_pretty(&RotateOutcome {
                    ok,
                    message,
                    public_keys,
                })
                .map_err(std::io::Error::other)?,
            )
        }
        Err(unknown) => Arc::new(error_body(&unknown.to_string()).into()),
    };
    // A client that never reads its answer does not hold a slot for ever.
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        write.write_all(&body).await?;
        write.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not read"))?
}

/// Send `request` (one line) to the meshd behind `path` and decode its JSON answer, waiting
/// at most `timeout` (`late` says what a timeout means).
async fn ask<T: serde::de::DeserializeOwned>(
    path: &Path,
    request: &str,
    timeout: std::time::Duration,
    late: &str,
) -> Result<T, ControlError> {
    let exchange = |source| ControlError::Exchange {
        path: path.to_path_buf(),
        source,
    };
    let body = tokio::time::timeout(timeout, async {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ControlError::Connect {
                    path: path.to_path_buf(),
                    source,
                })?;
        stream
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(exchange)?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.map_err(exchange)?;
        Ok::<_, ControlError>(body)
    })
    .await
    .map_err(|_| exchange(std::io::Error::new(std::io::ErrorKind::TimedOut, late)))??;
    serde_json::from_str(&body).map_err(|source| ControlError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Ask the meshd behind `path` for its status.
pub async fn query(path: &Path) -> Result<StatusReport, ControlError> {
    // A meshd that is stopped (SIGSTOP, a debugger) still accepts connections in the
    // kernel: without a deadline its status would be awaited forever.
    ask(
        path,
        "status",
        QUERY_TIMEOUT,
        &format!("no answer within {QUERY_TIMEOUT:?}"),
    )
    .await
}

/// Ask the meshd behind `path` to rotate its keys, and wait (up to [`ROTATE_TIMEOUT`]) for the
/// rotation to end.
pub async fn rotate_key(path: &Path) -> Result<RotateOutcome, ControlError> {
    ask(
        path,
        "rotate-key",
        ROTATE_TIMEOUT,
        &format!(
            "the rotation did not end within {} s (meshd keeps at it; see `meshctl status`)",
            ROTATE_TIMEOUT.as_secs()
        ),
    )
    .await
}

/// Status at scale: peers by health, unhealthy first, bounded lists (for the table renderers).
pub mod summary;

/// The control socket's limits against stuck and hostile clients.
#[cfg(test)]
mod limits_tests;

/// A status report for tests of the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::tests::sample;
}

#[cfg(test)]
mod tests;
