//! meshd's memory allocator: mimalloc, with freed memory returned to the kernel at once;
//! `MESHD_ALLOCATOR=glibc` chooses glibc's malloc instead (tuned and trimmed by `meshd.rs`),
//! without a rebuild.
//!
//! Measured with `scale-bench --nodes 5000 --pods-per-node 0`, release, the same build with
//! each allocator in turn: meshd's RSS 66 MiB on glibc's malloc as tuned, 58 MiB on mimalloc
//! as tuned here (the CPU per added record and the cold convergence no worse). glibc's malloc,
//! even with two arenas and a trimmer thread, keeps the holes a records pass or a status
//! refresh leaves between blocks that stay (its [heap] was ≈ 45 MiB against ≈ 31 MiB in use);
//! mimalloc allocates each size class from pages of its own and, as tuned here ([`MI_OPTIONS`]),
//! gives a page back as soon as it is empty; untuned it left meshd at twice the RSS. An option's
//! `MIMALLOC_` variable in the environment replaces the value set here (for measuring other
//! settings).
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

/// mimalloc's options set here unless the environment names them: the variable, the option's
/// number in `mimalloc.h` (v2 and v3: the enumeration keeps retired options' places so that
/// the numbers stay), and the value.
///
/// - `arena_eager_commit` 0: arenas are committed as they are used. Eagerly committed
///   (the default on a kernel that overcommits) their purged pages stayed resident:
///   meshd at 5,000 peers had 87–93 MiB RSS with it, 58 MiB without.
/// - `purge_delay` 0: a page that becomes free is given back at once, not 10 ms later (and
///   whole arenas ten times later).
const MI_OPTIONS: [(&std::ffi::CStr, libc::c_int, libc::c_long); 2] = [
    (c"MIMALLOC_ARENA_EAGER_COMMIT", 4, 0),
    (c"MIMALLOC_PURGE_DELAY", 15, 0),
];

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
            for (variable, option, value) in MI_OPTIONS {
                if libc::getenv(variable.as_ptr()).is_null() {
                    mi_option_set(option, value);
                }
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
