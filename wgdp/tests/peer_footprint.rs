//! What a configured, never-handshaken peer costs in heap: the peer table of a full mesh of
//! 5,000 nodes (meshd's scale target) is built with one `set`, as meshd builds it, and the
//! bytes that stay allocated are counted by a counting global allocator. The only test in
//! this binary, so no other test allocates while it counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use wgdp::uapi::{self, Key, Request};
use wgdp::Core;

/// The system allocator, counting the bytes and blocks currently allocated.
struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const PEERS: u32 = 5_000;

fn key(i: u32) -> Key {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k[31] = 0x40;
    Key(k)
}

/// A `set` of `PEERS` peers as meshd writes it for a dual-stack full mesh: an endpoint,
/// keepalive off, and four allowed IPs (the pod CIDRs and the node's addresses).
fn mesh_set() -> String {
    let mut s = format!(
        "set=1\nprivate_key={}\nlisten_port=0\n",
        key(u32::MAX).to_hex()
    );
    for i in 0..PEERS {
        let (hi, lo) = (i >> 8, i & 0xff);
        s.push_str(&format!(
            "public_key={}\nendpoint=198.19.{hi}.{lo}:51820\npersistent_keepalive_interval=0\n\
             replace_allowed_ips=true\nallowed_ip=10.{}.{}.0/24\nallowed_ip=fd00:244:0:{:x}::/64\n\
             allowed_ip=198.19.{hi}.{lo}/32\nallowed_ip=2001:db8:5ca1::{:x}/128\n",
            key(i).to_hex(),
            64 + hi,
            lo,
            0x8000 + i,
            i
        ));
    }
    s
}

#[test]
fn a_never_handshaken_peer_costs_little_heap() {
    let text = mesh_set();
    let lines: Vec<&str> = text.lines().collect();
    let Ok(Request::Set(req)) = uapi::parse_request(lines.iter().copied()) else {
        panic!("the generated set does not parse");
    };
    let core = Core::new(None, Box::new(|| {}));
    let (bytes0, blocks0) = (
        BYTES.load(Ordering::Relaxed),
        BLOCKS.load(Ordering::Relaxed),
    );
    core.apply(&req).expect("set applies");
    let bytes = BYTES.load(Ordering::Relaxed) - bytes0;
    let blocks = BLOCKS.load(Ordering::Relaxed) - blocks0;
    let per_peer = bytes / PEERS as usize;
    println!(
        "{PEERS} peers: {bytes} bytes in {blocks} blocks, {per_peer} bytes per peer, {} blocks per peer",
        blocks as f64 / f64::from(PEERS)
    );
    assert_eq!(core.read().peers.len(), PEERS as usize);
    // 392 bytes in 2 allocations (516 before the held queue and the traffic counters were
    // created lazily and the maps held slots; 847 in 10 with the allowed-IP trie and an inline
    // preshared key): the peer (184), its list of allowed IPs (72), and its share of the
    // by-key, by-index, by-slot and allowed-IP maps (136, hash tables at 5,000 / 8,192 load).
    assert!(per_peer <= 400, "{per_peer} bytes per peer");
    assert!(
        blocks <= 3 * PEERS as usize,
        "{blocks} allocations for {PEERS} peers"
    );
}
