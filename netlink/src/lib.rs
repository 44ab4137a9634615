//! Kernel-facing I/O for meshd: the WireGuard device and the routes that steer traffic into it.
