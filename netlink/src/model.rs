//! The data both device back ends (`kernel` and `uapi`) and
//! the device itself (`device`) speak: the wanted configuration of a peer and the
//! changes to apply, and the state read back from a device. Plain data, no I/O; it depends
//! on no other module of this crate, so the device modules form no cycle.

use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

/// The wanted configuration of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// Where to send the peer's packets, if known.
    pub endpoint: Option<SocketAddr>,
    /// The networks routed to (and accepted from) the peer.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive interval in seconds; `None` turns it off.
    pub persistent_keepalive: Option<u16>,
}

/// One incremental peer change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// Add or update one peer, replacing its allowed IPs; other peers are untouched.
    Upsert(PeerConfig),
    /// Remove the peer with this public key.
    Remove([u8; 32]),
}

/// The live state of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// The current endpoint (configured or learned from roaming).
    pub endpoint: Option<SocketAddr>,
    /// The peer's allowed IPs.
    pub allowed_ips: Vec<IpNet>,
    /// When the last handshake completed; `None` if never.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
}

impl PeerStatus {
    /// A peer known only by its key: no endpoint, no allowed IPs, no handshake, no traffic.
    pub fn new(public_key: [u8; 32]) -> Self {
        PeerStatus {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
        }
    }
}

/// The device state read back from either back end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The device's private key, if set.
    pub private_key: Option<[u8; 32]>,
    /// The UDP listen port (0 when the device did not report one).
    pub listen_port: u16,
    /// The firewall mark on the device's UDP packets (0: none).
    pub fwmark: u32,
    /// The peers, in the order the device reported them.
    pub peers: Vec<PeerStatus>,
}
