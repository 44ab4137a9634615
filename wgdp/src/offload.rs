//! Segmentation and coalescing of offloaded packets (pure; no I/O).
