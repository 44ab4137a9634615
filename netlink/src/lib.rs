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
//!   other route is ever listed or deleted;
//! - the pure helpers [`route_diff`] and [`wireguard_mtu`].

pub mod device;
pub mod kernel;
pub mod links;
pub mod routes;
pub mod uapi;

pub use device::{
    ActiveMode, DeviceError, DeviceStatus, PeerChange, PeerConfig, PeerStatus, UserspaceOptions,
    WgDevice, WireguardMode, DEFAULT_BUSY_POLL_US, EXTERNAL_WAIT,
};
pub use kernel::KernelError;
pub use links::{wireguard_mtu, LinkError, Links};
pub use routes::{route_diff, RouteError, Routes, MESHD_ROUTE_PROTOCOL};
pub use uapi::UapiError;
