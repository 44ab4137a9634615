//! What can go wrong adopting, creating, configuring, reading or removing a device; each
//! variant names its step and keeps its cause.

use std::path::PathBuf;
use std::time::Duration;

use super::{ActiveMode, WireguardMode};
use crate::kernel::KernelError;
use crate::links::LinkError;
use crate::uapi::UapiError;

/// Errors of device operations.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A `--wireguard-mode` value that is not `auto`, `kernel`, `userspace` or `external`.
    #[error("unknown WireGuard mode {value:?} (expected auto, kernel, userspace or external)")]
    ParseMode {
        /// The rejected value.
        value: String,
    },
    /// The interface name is not a valid Linux interface name.
    #[error("invalid interface name {name:?} (1-15 characters, no '/', ':' or whitespace)")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// Looking up the link failed.
    #[error("looking up link {name}")]
    LookupLink {
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: LinkError,
    },
    /// `external` mode: no live user-space device appeared in time.
    #[error("user-space WireGuard device {name} (run by another process, --wireguard-mode external) did not appear within {waited:?}: is its meshd-wg running in this network namespace?")]
    ExternalMissing {
        /// The interface name.
        name: String,
        /// How long meshd waited.
        waited: Duration,
    },
    /// The existing device is of a different kind than the one requested.
    #[error("device {name} exists as a {found} device but {wanted} mode was requested")]
    ModeMismatch {
        /// The interface name.
        name: String,
        /// What was found.
        found: ActiveMode,
        /// What was requested.
        wanted: WireguardMode,
    },
    /// A link with the name exists but is not a WireGuard device meshd can adopt.
    #[error("link {name} exists but is neither a kernel WireGuard link nor a live user-space device (kind {kind})")]
    LinkOccupied {
        /// The interface name.
        name: String,
        /// The link's kind.
        kind: String,
    },
    /// Kernel mode was requested but the kernel has no WireGuard support.
    #[error("creating kernel WireGuard link {name}: the kernel has no WireGuard support (use --wireguard-mode userspace or auto)")]
    KernelUnsupported {
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: LinkError,
    },
    /// Creating the kernel link failed.
    #[error("creating kernel WireGuard link {name}")]
    CreateKernelLink {
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: LinkError,
    },
    /// A generic netlink operation on a kernel device failed.
    #[error("{step} on kernel WireGuard device {name}")]
    Kernel {
        /// What was being done.
        step: &'static str,
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: KernelError,
    },
    /// A UAPI operation on a user-space device failed.
    #[error("{step} on user-space WireGuard device {name}")]
    Uapi {
        /// What was being done.
        step: &'static str,
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: UapiError,
    },
    /// The UAPI socket is served by a live device in another network namespace.
    #[error("UAPI socket {} is served by a live device in another network namespace; interface names must be unique per machine ({name})", path.display())]
    SocketInUse {
        /// The interface name.
        name: String,
        /// The socket path.
        path: PathBuf,
    },
    /// A filesystem step (socket directory, stale socket, log file) failed.
    #[error("{step} {}", path.display())]
    Filesystem {
        /// What was being done.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Starting the helper failed.
    #[error("spawning user-space helper {} for {name}", helper.display())]
    SpawnHelper {
        /// The interface name.
        name: String,
        /// The helper binary.
        helper: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The helper exited before its device came up.
    #[error("user-space helper for {name} exited during start-up ({status}); see its log")]
    HelperExited {
        /// The interface name.
        name: String,
        /// The exit status.
        status: String,
    },
    /// The helper's device did not come up in time.
    #[error("user-space helper for {name} did not bring up its device within {waited:?}")]
    HelperTimeout {
        /// The interface name.
        name: String,
        /// How long was waited.
        waited: Duration,
    },
    /// Deleting the device failed.
    #[error("removing device {name}")]
    Destroy {
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: LinkError,
    },
    /// The device was still there after stopping its helper.
    #[error("user-space device {name} still exists after killing its helper")]
    DestroyTimeout {
        /// The interface name.
        name: String,
    },
}
