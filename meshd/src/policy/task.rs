//! The policy loop: owns the incremental compiler, takes object events and IPAM store changes
//! in short batches, and writes each batch's map delta in the safe order.
//!
//! * **Batches.** After the first event of a batch the loop waits [`COALESCE`] for more (a
//!   `kubectl apply` of many objects, a relist) and then compiles and writes once.
//! * **Start and restart.** Nothing is written until every kind has been listed and the store
//!   read once: until then the maps keep what the previous meshd left pinned, which is the
//!   policy as it was (no gap). Then the loop reads the live maps through
//!   [`PolicyMapWriter::dump`] and writes the difference to the full compile, so stale entries
//!   go and nothing that is still right is touched. A failed write does the same on the next
//!   batch (or after [`RETRY`]), since the live maps are then not what the compiler believes.
//! * **Errors.** Malformed objects, refused policies (the compiler fails closed) and failed
//!   writes are logged and reported in the status; none stops the loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meshd_policy::maps::TableDelta;
use meshd_policy::update::ordered_ops;
use meshd_policy::{Change, Compiler, MapDelta};
use tokio::sync::mpsc;

use super::endpoints::{self, LocalEndpoints, StoreVeths};
use super::objects::{ObjectCache, ObjectEvent};
use super::pod_table::{PodTable, SharedPodTable};
use super::report::{MalformedObject, SharedPolicyReport};
use super::writer::{PolicyMapWriter, WriterError};

/// How long a batch waits for more events after its first.
pub const COALESCE: Duration = Duration::from_millis(2);
/// When to try again after a failed write (without new events).
pub const RETRY: Duration = Duration::from_secs(1);
/// First re-check of a local pod whose veth is not there yet; doubles up to [`WAIT_MAX`].
const WAIT_FIRST: Duration = Duration::from_millis(5);
/// Longest interval between re-checks of a missing veth.
const WAIT_MAX: Duration = Duration::from_secs(1);

/// Looks up an interface's ifindex by name.
pub type IfindexLookup = Box<dyn Fn(&str) -> Option<u32> + Send>;

/// The loop's state. See the module doc.
pub struct PolicyLoop<W> {
    compiler: Compiler,
    cache: ObjectCache,
    endpoints: LocalEndpoints,
    writer: W,
    ifindex: IfindexLookup,
    store_read: bool,
    /// The live maps must be read and reconciled before the next incremental write.
    resync: bool,
    report: SharedPolicyReport,
    /// When `map_entries` was last counted.
    counted_at: Option<Instant>,
    /// The last failed write's error, until a write succeeds.
    write_error: Option<String>,
    /// The flow collector's table, once it wants one (kept up to date change by change).
    pod_table: Option<SharedPodTable>,
}

impl<W: PolicyMapWriter> PolicyLoop<W> {
    /// A loop for node `node` writing through `writer`, reporting into `report`.
    pub fn new(node: &str, writer: W, ifindex: IfindexLookup, report: SharedPolicyReport) -> Self {
        Self {
            compiler: Compiler::new(),
            cache: ObjectCache::for_node(node),
            endpoints: LocalEndpoints::new(node),
            writer,
            ifindex,
            store_read: false,
            resync: true,
            report,
            counted_at: None,
            write_error: None,
            pod_table: None,
        }
    }

    /// The compiler (its world and endpoints).
    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    /// Whether the maps are being written (every kind listed, the store read).
    pub fn synced(&self) -> bool {
        self.cache.synced() && self.store_read
    }

    /// Applies one batch: object events, and the store's new content if it changed. Writes
    /// the maps once synced; returns whether the loop must come back soon without an event
    /// (a failed write, or a local pod whose veth is not there yet).
    pub fn apply_batch(&mut self, events: Vec<ObjectEvent>, store: Option<StoreVeths>) -> bool {
        let started = Instant::now();
        let mut delta = MapDelta::default();
        let mut endpoints_due = store.is_some() || self.endpoints.waiting();
        for event in events {
            for change in self.cache.apply(self.compiler.world(), event) {
                endpoints_due |= self.endpoints.note(&change);
                let pending = self
                    .pod_table
                    .as_ref()
                    .map(|_| PodTable::before(self.compiler.world(), &change));
                compose(&mut delta, self.compiler.apply(change));
                // Locked per change: the collector is never held up for a whole batch.
                if let (Some(table), Some(pending)) = (&self.pod_table, pending) {
                    table.write().after(self.compiler.world(), pending);
                }
            }
        }
        if let Some(store) = store {
            self.endpoints.set_store(store);
            self.store_read = true;
        }
        if endpoints_due {
            let changes = self
                .endpoints
                .changes(self.compiler.world(), &*self.ifindex);
            for change in changes {
                log_endpoint(&change);
                compose(&mut delta, self.compiler.apply(change));
            }
        }
        let mut ops = 0;
        let mut wrote = false;
        if self.synced() {
            match self.write(delta) {
                Ok(n) => {
                    ops = n;
                    wrote = true;
                    if self.write_error.take().is_some() {
                        tracing::info!("the policy maps are in step again");
                    }
                }
                Err(error) => {
                    self.resync = true;
                    let error = format!("{:#}", anyhow::Error::new(error));
                    // Retried every second: said once per distinct error.
                    if self.write_error.as_ref() != Some(&error) {
                        tracing::warn!(%error, "writing the policy maps failed; retrying against the live maps");
                    }
                    self.write_error = Some(error);
                }
            }
        }
        self.publish(started, ops, wrote);
        self.resync || self.endpoints.waiting()
    }

    /// Writes `delta` (or, when the live maps may differ from the compiler's, the difference
    /// between them and the full compile). Returns the number of writes.
    fn write(&mut self, delta: MapDelta) -> Result<usize, WriterError> {
        let (delta, live) = if self.resync {
            let live = self.writer.dump()?;
            (
                MapDelta::between(&live, &self.compiler.maps()),
                Some(live.len()),
            )
        } else {
            (delta, None)
        };
        let ops = ordered_ops(&delta);
        if let Some(live) = live {
            tracing::info!(
                live,
                writes = ops.len(),
                "policy maps reconciled against what they held"
            );
        }
        for op in &ops {
            self.writer.write(op)?;
        }
        if !ops.is_empty() || self.resync {
            self.writer.policy_changed()?;
        }
        self.resync = false;
        Ok(ops.len())
    }

    /// Publishes the report after a batch.
    fn publish(&mut self, started: Instant, ops: usize, wrote: bool) {
        let world = self.compiler.world();
        let mut report = self
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        report.synced = self.cache.synced() && self.store_read;
        report.policies = world.policies.len();
        report.namespaces = world.namespaces.len();
        report.pods_known = world.pods.len() + world.remote.pods();
        // The flow collector's table: built once when it is first wanted, then kept up to
        // date change by change in `apply_batch`.
        if report.pod_table_wanted && self.pod_table.is_none() {
            report.pod_table.write().rebuild(world);
            self.pod_table = Some(report.pod_table.clone());
        }
        report.local_endpoints = self.endpoints.attached().len();
        // Counting means collecting every entry: at most once a second.
        if self
            .counted_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            report.map_entries = self.compiler.maps().len();
            self.counted_at = Some(Instant::now());
        }
        report.compile_errors = self
            .compiler
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect();
        report.malformed = self
            .cache
            .malformed()
            .iter()
            .map(|(object, error)| MalformedObject {
                object: object.to_string(),
                error: error.clone(),
            })
            .chain(
                self.cache
                    .batch_refusals()
                    .iter()
                    .flat_map(|(node, refusals)| {
                        refusals.iter().map(move |error| MalformedObject {
                            object: format!("endpoint batch of node {node}"),
                            error: error.clone(),
                        })
                    }),
            )
            .collect();
        report.malformed_total = self.cache.malformed_total();
        if wrote {
            report.write_error = None;
            if ops > 0 {
                report.applies += 1;
                report.last_apply_unix_ms = Some(unix_ms());
                report.last_apply_micros =
                    Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                report.last_apply_ops = ops;
            }
        } else if self.synced() {
            report.write_errors += 1;
            report.write_error.clone_from(&self.write_error);
        }
    }

    /// Runs until `objects` closes: batches events from it and from the IPAM store in
    /// `store_dir` (followed with inotify). `store_dir` `None`: the node has no store (no
    /// pods), which counts as read and empty.
    pub async fn run(
        mut self,
        mut objects: mpsc::Receiver<ObjectEvent>,
        store_dir: Option<PathBuf>,
    ) {
        let mut store_events = match store_dir.as_deref().map(endpoints::watch_store) {
            Some(Ok(rx)) => Some(rx),
            Some(Err(error)) => {
                tracing::error!(error = %format!("{:#}", anyhow::Error::new(error)), "cannot follow the IPAM store; no local pod is a policy endpoint");
                None
            }
            None => None,
        };
        // The store is read once at start, after its watch exists.
        let mut store_due = true;
        let mut wait = WAIT_FIRST;
        let mut again_at: Option<tokio::time::Instant> = None;
        loop {
            let mut events = Vec::new();
            if !store_due {
                tokio::select! {
                    event = objects.recv() => match event {
                        Some(event) => events.push(event),
                        None => break,
                    },
                    Some(()) = recv_opt(store_events.as_mut()) => store_due = true,
                    () = sleep_until(again_at) => {}
                }
            }
            // Coalesce what follows closely.
            tokio::time::sleep(COALESCE).await;
            while let Ok(event) = objects.try_recv() {
                events.push(event);
            }
            if let Some(rx) = store_events.as_mut() {
                while rx.try_recv().is_ok() {
                    store_due = true;
                }
            }
            let store = if std::mem::take(&mut store_due) {
                // Unreadable: the last content stands (emptying it would detach every pod and
                // open them); before any read, the node has no endpoints yet.
                read_store(store_dir.as_ref()).or_else(|| (!self.store_read).then(StoreVeths::new))
            } else {
                None
            };
            let progress = !events.is_empty() || store.is_some();
            if self.apply_batch(events, store) {
                wait = if progress {
                    WAIT_FIRST
                } else {
                    (wait * 2).min(WAIT_MAX)
                };
                let delay = if self.resync { RETRY } else { wait };
                again_at = Some(tokio::time::Instant::now() + delay);
            } else {
                again_at = None;
                wait = WAIT_FIRST;
            }
        }
        tracing::info!(
            "policy object source closed; the policy loop stops (the maps stay as written)"
        );
    }
}

/// The store's content (empty without a store); `None` (logged) when it cannot be read.
fn read_store(dir: Option<&PathBuf>) -> Option<StoreVeths> {
    let Some(dir) = dir else {
        return Some(StoreVeths::new());
    };
    match endpoints::read_store(dir) {
        Ok(store) => Some(store),
        Err(error) => {
            tracing::warn!(error = %format!("{:#}", anyhow::Error::new(error)), "reading the IPAM store failed; its last content stands");
            None
        }
    }
}

fn log_endpoint(change: &Change) {
    match change {
        Change::AttachEndpoint { pod, endpoint } => {
            tracing::debug!(%pod, ifindex = endpoint.0, "policy endpoint attached");
        }
        Change::DetachEndpoint(pod) => tracing::debug!(%pod, "policy endpoint detached"),
        _ => {}
    }
}

async fn recv_opt(rx: Option<&mut mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `next` after `delta`: one delta from the maps before both to the maps after both.
fn compose(delta: &mut MapDelta, next: MapDelta) {
    fn table<K: Ord + Copy, V: Copy>(a: &mut TableDelta<K, V>, b: TableDelta<K, V>) {
        for k in b.delete {
            a.upsert.remove(&k);
            a.delete.insert(k);
        }
        for (k, v) in b.upsert {
            a.delete.remove(&k);
            a.upsert.insert(k, v);
        }
    }
    table(&mut delta.isolation, next.isolation);
    table(&mut delta.peer_v4, next.peer_v4);
    table(&mut delta.peer_v6, next.peer_v6);
    table(&mut delta.ports, next.ports);
}

#[cfg(test)]
mod tests;
