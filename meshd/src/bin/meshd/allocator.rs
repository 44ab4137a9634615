//! meshd's memory allocator: mimalloc, with freed memory returned to the kernel at once;
//! `MESHD_ALLOCATOR=glibc` chooses glibc's malloc instead (tuned and trimmed by `meshd.rs`),
//! without a rebuild.
//!
//! Measured with `scale-bench --nodes 5000 --pods-per-node 0`, release, the same build with
//! each allocator in turn (see the CHANGELOG of issue 20 for the figures): glibc's malloc,
//! even with two arenas and a trimmer thread, keeps the holes a records pass or a status
//! refresh leaves between blocks that stay (its [heap] was ≈ 45 MiB against ≈ 31 MiB in use);
//! mimalloc allocates each size class from pages of its own and, with `purge_delay` 0, gives a
//! page back as soon as it is empty. Its default delay (10 ms, and ten times that for whole
//! arenas) left meshd at twice the RSS. `MIMALLOC_PURGE_DELAY` in the environment replaces the
//! delay set here (for measuring other settings).
//!
//! The choice is made once, at the first allocation (before `main`'s first line, from the
//! environment as the C library holds it), and never changes: every block is freed by the
//! allocator that gave it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

/// The choice not made yet.
const UNDECIDED: u8 = 0;
/// glibc's malloc (`MESHD_ALLOCATOR=glibc`).
const GLIBC: u8 = 1;
/// mimalloc (the default).
const MIMALLOC: u8 = 2;

static CHOSEN: AtomicU8 = AtomicU8::new(UNDECIDED);

/// mimalloc's option `mi_option_purge_delay` (its number in `mimalloc.h`, v2 and v3: the
/// enumeration keeps retired options' places so that the numbers stay).
const MI_OPTION_PURGE_DELAY: libc::c_int = 15;

#[allow(unsafe_code)]
unsafe extern "C" {
    /// mimalloc's `mi_option_set` (in the library `libmimalloc-sys` links).
    fn mi_option_set(option: libc::c_int, value: libc::c_long);
}

/// The allocator of the whole process.
pub struct Chosen;

#[global_allocator]
static ALLOCATOR: Chosen = Chosen;

/// Whether meshd runs on glibc's malloc (`MESHD_ALLOCATOR=glibc`).
pub fn glibc() -> bool {
    chosen() == GLIBC
}

fn chosen() -> u8 {
    match CHOSEN.load(Ordering::Relaxed) {
        UNDECIDED => decide(),
        c => c,
    }
}

/// Reads `MESHD_ALLOCATOR` without allocating. Two threads deciding at once decide alike.
#[allow(unsafe_code)]
fn decide() -> u8 {
    // SAFETY: getenv reads the environment the C library set up before any Rust code ran;
    // the name is a NUL-terminated literal, and the pointer returned is only read, at once.
    let choice = unsafe {
        let value = libc::getenv(c"MESHD_ALLOCATOR".as_ptr());
        if !value.is_null() && std::ffi::CStr::from_ptr(value).to_bytes() == b"glibc" {
            GLIBC
        } else {
            if libc::getenv(c"MIMALLOC_PURGE_DELAY".as_ptr()).is_null() {
                mi_option_set(MI_OPTION_PURGE_DELAY, 0);
            }
            MIMALLOC
        }
    };
    CHOSEN.store(choice, Ordering::Relaxed);
    choice
}

// SAFETY: every call goes to the one allocator chosen for the life of the process, which
// upholds `GlobalAlloc`'s contract itself.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Chosen {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if chosen() == GLIBC {
                System.alloc(layout)
            } else {
                MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if chosen() == GLIBC {
                System.alloc_zeroed(layout)
            } else {
                MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            if chosen() == GLIBC {
                System.dealloc(ptr, layout);
            } else {
                MiMalloc.dealloc(ptr, layout);
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            if chosen() == GLIBC {
                System.realloc(ptr, layout, new_size)
            } else {
                MiMalloc.realloc(ptr, layout, new_size)
            }
        }
    }
}
