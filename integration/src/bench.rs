//! The parts of `mesh-bench` that need no namespace and no root, one module each:
//! `measure` parses iperf3, ping and `/proc` output and takes medians and ratios; `uapi`
//! names the user-space WireGuard implementations under test and writes the raw UAPI requests
//! of the peer-scale runs (with a small blocking UAPI client, both written and read with
//! wgdp's UAPI codec); `report` holds the results, the targets meshd's user-space datapath is
//! held to and their verdicts; `render` prints the report with its tables. Everything public is
//! re-exported here, so callers name it `integration::bench::…`.
//!
//! The binary (`src/bin/mesh-bench`) builds the namespaces, starts and stops the
//! processes and feeds what it measured through these functions.

use std::path::PathBuf;

use wgdp::uapi::{self as codec, AnswerError};

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
    #[error("talking to the UAPI socket {}", path.display())]
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

mod measure;
mod render;
mod report;
pub mod stop;
mod uapi;

pub use measure::*;
pub use report::*;
pub use uapi::*;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
