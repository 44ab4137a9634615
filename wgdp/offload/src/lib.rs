//! Pure packet logic for wgdp's TUN offloads: the virtio-net header the TUN prepends with
//! `IFF_VNET_HDR`, segmentation of the TSO/USO super-packets the kernel hands us into
//! wire-sized IP packets with complete checksums, and GRO-style coalescing of decrypted TCP
//! (and UDP) packets back into super-packets for one write to the TUN.
//!
//! This crate owns the byte-level formats only (virtio 1.x `virtio_net_hdr` without
//! `num_buffers`, IPv4 per RFC 791, IPv6 per RFC 8200, TCP per RFC 9293, UDP per RFC 768 and
//! the Internet checksum per RFC 1071). It does no I/O, holds no file descriptors, and never
//! panics on any input: malformed packets are either passed through untouched or rejected
//! with an [`OffloadError`]. Opening the TUN, `TUNSETOFFLOAD`, sockets and WireGuard itself
//! are the datapath's (`wgdp`) business.
//!
//! Modules:
//! * [`vnet`]: [`VnetHdr`], the 10-byte virtio-net header, and the kernel constants for it
//!   (`VIRTIO_NET_HDR_*`, `TUN_F_*`).
//! * [`checksum`]: the Internet checksum and the TCP/UDP pseudo-header sums.
//! * [`InPlaceSegments`]: one TUN read → wire-ready IP packets, one at a time, made inside
//!   the read's own buffer (headers rewritten in front of each payload, no payload copied);
//!   [`segment()`](segment()) is the same written back to back into a caller-owned buffer.
//! * [`Coalescer`]: decrypted IP packets → TUN writes, merging in-order TCP segments of a
//!   flow (and equal-sized UDP datagrams) into one GSO super-packet.
//!
//! Buffers are the caller's or are kept inside a [`Coalescer`] and reused, so steady-state
//! operation allocates nothing per packet.
//!
//! Use per TUN queue, reusing the buffers:
//! ```
//! use wgdp_offload::{segment_frame, Coalescer, VNET_HDR_LEN};
//!
//! let (mut out, mut ranges) = (Vec::new(), Vec::new());
//! let mut gro = Coalescer::new();
//! # let tun_read = [0u8; VNET_HDR_LEN + 20];
//! # let decrypted: Vec<&[u8]> = vec![&[0u8; 20]];
//! // TUN → wire, for each read (virtio-net header + IP packet):
//! match segment_frame(&tun_read, &mut out, &mut ranges) {
//!     Ok(()) => {
//!         for r in &ranges {
//!             let _packet = &mut out[r.clone()]; // encrypt in place and send
//!         }
//!     }
//!     Err(_e) => { /* malformed: count it and drop the read */ }
//! }
//! // Wire → TUN, for each receive batch:
//! for pkt in decrypted {
//!     gro.push(pkt);
//! }
//! gro.flush(&mut |frame| {
//!     let _ = frame; // write(tun_fd, frame): virtio-net header + IP packet
//! });
//! ```
#![forbid(unsafe_code)]

pub mod checksum;
mod coalesce;
mod error;
mod ip;
mod segment;
pub mod vnet;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use coalesce::{Coalescer, MAX_COALESCED_LEN, MAX_UDP_COALESCED_SEGMENTS};
pub use error::OffloadError;
pub use segment::{segment, segment_frame, InPlaceSegments, MAX_SEGMENTS};
pub use vnet::{VnetHdr, VNET_HDR_LEN};
