//! The datapath's memory footprint: glibc malloc tuned for a process whose peer table is
//! built and reported by a few large UAPI exchanges, and free memory handed back after them.
//!
//! Measured (release, one device, a `set` of 5,000 peers with three allowed IPs each then a
//! `get`, RssAnon): 9.8 MiB with glibc's defaults, where every UAPI connection thread may get
//! an arena of its own and the freed request and answer stay in them; 7.4 MiB with the
//! parameters below; the peers themselves (the peer table, the by-index and allowed-IP maps)
//! were about 3 MiB of it. Since the allowed IPs are hash maps per prefix length and the peer
//! table a set keyed by each peer's own key, a never-handshaken peer with four allowed IPs was
//! 516 bytes in 2 allocations (`tests/peer_footprint.rs`), 392 since its held-packet queue and
//! traffic counters are created by its first traffic, the allowed-IP maps hold 4-byte slots
//! instead of `Arc`s and the by-index table is keyed by the peer's own index; meshd-wg in the 5,000-node
//! scale-bench: [heap] 2.1 MiB (4.4 before), RSS 6.8 MiB (9.1 before); 6.2-6.4 MiB since its
//! log filter links no regex engine (issue 20, docs/image.md: the rest is glibc's text, the
//! binary's and the peers).

/// A UAPI request or answer at least this large is followed by [`release_free`]: a `set` or
/// `get` of a few hundred peers. Small exchanges (one peer, a keepalive change) skip it.
pub const LARGE_EXCHANGE: usize = 64 * 1024;

/// Tunes glibc's malloc; call first in `main`, before any thread exists. At most two arenas
/// (the datapath threads' few allocations are served from their thread caches), blocks of
/// 128 KiB and more mapped on their own and returned to the kernel when freed (glibc would
/// otherwise raise that threshold after the first large free, up to 32 MiB), a heap's free
/// top returned above 128 KiB. Other C libraries: nothing to do. `GLIBC_TUNABLES` naming any
/// `glibc.malloc.` tunable replaces all of this (for measuring other settings).
pub fn tune_malloc() {
    const KIB: libc::c_int = 1024;
    if std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|v| v.to_string_lossy().contains("glibc.malloc."))
    {
        return;
    }
    crate::sys::malloc_params(&[
        (libc::M_ARENA_MAX, 2),
        (libc::M_MMAP_THRESHOLD, 128 * KIB),
        (libc::M_TRIM_THRESHOLD, 128 * KIB),
    ]);
}

/// Returns the free memory of every arena to the kernel, not only a heap's free top: after a
/// large exchange the freed request lies between the peers it created.
pub fn release_free() {
    crate::sys::malloc_trim();
}
