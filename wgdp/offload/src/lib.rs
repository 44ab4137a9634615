//! Pure packet logic for the user-space datapath: the virtio-net header the TUN prepends
//! with `IFF_VNET_HDR`, segmentation of TSO/USO super-packets into wire-sized IP packets,
//! and coalescing of received TCP segments back into super-packets. No I/O.
