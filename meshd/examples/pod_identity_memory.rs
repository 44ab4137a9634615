//! Heap held by the policy loop for N nodes × P pods, counted by a global allocator: the pods
//! of every node arrive as endpoint batches in the scale harness's format, pass the pod
//! identity stage and the policy loop (keeping the flow collector's pod table, as the daemon
//! does with flow events on); the live bytes they hold are printed, then the table's share.
//! At 5,000 × 30 (dual-stack): 52 bytes per pod (was 274 with pod objects for every node's
//! pods, 119 with the first address → identity entries, 76 with packed entries, front-coded
//! names and `key=value` label names; now one allocation per identity, its slots shared with
//! the pod table, 4-byte entries), of which the pod table 2 (docs/policy.md, "Known limits",
//! says where the rest goes).
//!
//! `cargo run --release -p meshd --example pod_identity_memory -- 5000 30`
//!
//! Counting needs a global allocator, which is `unsafe` to implement: this measurement tool is
//! the one place in meshd that allows it (it forwards every call to `System` unchanged).
#![allow(unsafe_code)]
// A measurement tool: a failure is a panic with its message.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};

use meshd::policy::objects::{Kind, ObjectEvent};
use meshd::policy::pod_identity::{BatchEvent, PodIdentity, SourceEvent};
use meshd::policy::report::PolicyReport;
use meshd::policy::task::PolicyLoop;
use meshd_policy::maps::PolicyMaps;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn batch(i: u32, pods: u32) -> String {
    let node = format!("sim-{i:05}");
    let labels: Vec<_> = (0..10)
        .map(|app| serde_json::json!({"app": format!("app{app}"), "node": node}))
        .collect();
    let pods: Vec<_> = (0..pods)
        .map(|j| {
            serde_json::json!({"ns": "scale-bench", "name": format!("{node}-p{j}"), "l": j % 10,
                "ips": [format!("10.{}.{}.{}", 64 + i / 256, i % 256, j + 1),
                        format!("fd00:244:0:{:x}::{:x}", 0x8000 + i, j + 2)]})
        })
        .collect();
    serde_json::json!({"v": 1, "node": node, "labels": labels, "pods": pods}).to_string()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let per_node: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let report = Arc::new(Mutex::new(PolicyReport::default()));
    report.lock().unwrap().pod_table_wanted = true;
    let writer = Arc::new(Mutex::new(PolicyMaps::default()));
    let mut policy_loop = PolicyLoop::new("real-1", writer, Box::new(|_| None), report.clone());
    let mut stage = PodIdentity::new(
        "real-1",
        Box::new(|_| Some(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()])),
    );
    let base = live();
    let mut start = vec![
        ObjectEvent::ListStart(Kind::Namespace),
        ObjectEvent::ListDone(Kind::Namespace),
        ObjectEvent::ListStart(Kind::NetworkPolicy),
        ObjectEvent::ListDone(Kind::NetworkPolicy),
    ];
    start.extend(stage.on_event(SourceEvent::Object(ObjectEvent::ListStart(Kind::Pod))));
    start.extend(stage.on_event(SourceEvent::Object(ObjectEvent::ListDone(Kind::Pod))));
    start.extend(stage.on_event(SourceEvent::Batch(BatchEvent::ListStart)));
    policy_loop.apply_batch(start, Some(Default::default()));
    // Batches arrive a few at a time, as the loop coalesces them.
    for chunk in (0..nodes).collect::<Vec<_>>().chunks(16) {
        let mut events = Vec::new();
        for &i in chunk {
            let content = batch(i, per_node).into_bytes();
            events.extend(stage.on_event(SourceEvent::Batch(BatchEvent::Upsert {
                node: format!("sim-{i:05}"),
                content,
            })));
        }
        policy_loop.apply_batch(events, None);
    }
    let done = stage.on_event(SourceEvent::Batch(BatchEvent::ListDone));
    policy_loop.apply_batch(done, None);
    let world = policy_loop.compiler().world();
    let pods = world.pods.len() + world.remote.pods();
    let held = live() - base;
    println!(
        "pods {pods}: policy loop and its report hold {} bytes ({:.1} MiB, {} bytes per pod)",
        held,
        held as f64 / 1048576.0,
        held / pods.max(1) as isize
    );
    let table = report.lock().unwrap().pod_table.clone();
    println!(
        "the flow collector's pod table holds {} addresses",
        table.read().addresses()
    );
    let before = live();
    table.write().rebuild(&meshd_policy::World::default());
    let table_bytes = before - live();
    println!(
        "of which the pod table: {} bytes ({:.1} MiB, {} per pod)",
        table_bytes,
        table_bytes as f64 / 1048576.0,
        table_bytes / pods.max(1) as isize
    );
}
