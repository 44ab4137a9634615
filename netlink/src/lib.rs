//! Kernel-facing I/O for meshd: the WireGuard device and the routes that steer traffic into it.
//!
//! This crate owns:
//! - the WireGuard device ([`WgDevice`]): adopting an existing device or creating one,
//!   either a kernel `wireguard` link (configured over generic netlink) or a TUN served
//!   by the detached user-space helper `meshd-wg` (the `wgdp` crate's binary, built on
//!   boringtun) and configured over the UAPI socket `/var/run/wireguard/NAME.sock`
//!   ([`uapi`]). The helper is its own process so the datapath survives restarts and
//!   SIGKILL of the control process;
//! - links ([`Links`]): lookup, up, MTU, addresses and underlay detection over rtnetlink;
//! - routes ([`Routes`]): the main-table routes tagged with [`MESHD_ROUTE_PROTOCOL`]; no
//!   other route is ever changed or deleted (the strict-mode guard reads every table);
//! - the pure helpers [`route_diff`] and [`wireguard_mtu`].

/// The WireGuard device: adopt or create, configure, read, apply peer changes, destroy.
pub mod device;
/// The entry point of the `uapi_answer` fuzz target (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
/// The kernel back end: generic netlink to a `wireguard` link.
pub mod kernel;
/// Links over rtnetlink: lookup, up, MTU, addresses, underlay detection.
pub mod links;
/// The data the device and its back ends share (peer configuration, changes, state).
pub mod model;
/// Main-table routes tagged with meshd's protocol.
pub mod routes;
/// The user-space back end: the UAPI socket client (the codec is `wgdp::uapi`).
pub mod uapi;

pub use device::{
    ActiveMode, DeviceError, DeviceStatus, UserspaceOptions, WgDevice, WireguardMode,
    DEFAULT_BUSY_POLL_US, EXTERNAL_WAIT,
};
pub use kernel::KernelError;
pub use links::{wireguard_mtu, LinkError, Links};
pub use model::{DeviceState, PeerChange, PeerConfig, PeerStatus};
pub use routes::{route_diff, RouteError, Routes, TableRoute, MESHD_ROUTE_PROTOCOL};
pub use uapi::UapiError;
