//! meshd's user-space WireGuard datapath.
//!
//! Owns the packet path of the user-space device: the TUN (with virtio-net headers and
//! segmentation offloads), the UDP sockets (GSO/GRO, batched), the peer table, timers and
//! the cross-platform UAPI socket. The WireGuard protocol itself (handshakes, cookies,
//! replay protection, the AEAD) is boringtun's noise state machine; nothing here
//! reimplements it.
