//! The status as the control socket serves it: compact JSON, serialised for a request and kept
//! for the next one only while a client polls quickly. Whoever writes the served status calls
//! [`status_changed`] while it holds the status lock for writing; the answer to `status
//! pretty` is serialised every time.
//!
//! At 5,000 peers the document is ≈ 3.5 MB. Kept until the next change of the status, as it
//! was, it stayed resident for good after any status read (meshd at 5,000 peers 54–57 MiB
//! with it, ≈ 49 without). Never kept, a client polling every few milliseconds (a harness
//! waiting for a peer, a monitor) cost meshd a serialisation per read on the cores of its
//! passes, under the status lock (`scale-bench --nodes 5000`: new node p99 122 ms -> 3.7 s).
//! So a document is kept only while reads come less than [`KEEP_WHILE_POLLED_WITHIN`] apart:
//! a fast poller is answered from it until the status changes, and a client reading now and
//! then gets a document that is dropped once written. Each document is serialised into a
//! buffer of the last one's size (no growth by doubling, no copies).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::ServedStatus;

/// Reads closer together than this keep the document for the next one.
pub const KEEP_WHILE_POLLED_WITHIN: Duration = Duration::from_millis(250);

/// Room left beyond the last document's length for a status that grew since.
const HEADROOM: usize = 4096;

/// How many times the served status changed (in this process).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Says that the served status changed: call it with the status lock held for writing, so
/// that a reader holding it for reading sees the report and its generation together.
pub fn status_changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// What the socket keeps between requests.
#[derive(Default)]
struct Kept {
    /// The last document and the generation it was made at, while clients poll quickly.
    document: Option<(u64, Arc<Vec<u8>>)>,
    /// When the last compact status was asked for.
    last_read: Option<Instant>,
    /// The last document's length (the next one's buffer).
    last_len: usize,
}

/// The compact serialisation kept for fast pollers (one per socket).
#[derive(Clone, Default)]
pub(super) struct Serialised(Arc<Mutex<Kept>>);

impl Serialised {
    /// `report` (the served status, read under its lock) as compact JSON.
    pub(super) fn compact(&self, report: &ServedStatus) -> Result<Arc<Vec<u8>>, serde_json::Error> {
        self.compact_at(report, Instant::now())
    }

    /// [`Self::compact`], asked for at `now`.
    fn compact_at(
        &self,
        report: &ServedStatus,
        now: Instant,
    ) -> Result<Arc<Vec<u8>>, serde_json::Error> {
        let generation = GENERATION.load(Ordering::Acquire);
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let polled = kept
            .last_read
            .replace(now)
            .is_some_and(|last| now.saturating_duration_since(last) < KEEP_WHILE_POLLED_WITHIN);
        if let Some((made_at, body)) = kept.document.as_ref() {
            if *made_at == generation {
                let body = Arc::clone(body);
                if !polled {
                    kept.document = None;
                }
                return Ok(body);
            }
        }
        // The stale document goes before the new one is made.
        kept.document = None;
        let mut body = Vec::with_capacity(kept.last_len + HEADROOM);
        serde_json::to_writer(&mut body, report)?;
        kept.last_len = body.len();
        let body = Arc::new(body);
        if polled {
            kept.document = Some((generation, Arc::clone(&body)));
        }
        Ok(body)
    }

    /// Whether a document is kept.
    #[cfg(test)]
    fn keeps(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .document
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::sample;
    use super::super::StatusReport;
    use super::*;

    #[test]
    fn a_document_is_kept_only_while_clients_poll_quickly_and_a_change_is_served() {
        let serialised = Serialised::default();
        let mut report: ServedStatus = sample();
        let t0 = Instant::now();
        let first = serialised.compact_at(&report, t0).expect("serialises");
        assert_eq!(
            serde_json::from_slice::<StatusReport>(&first).expect("JSON"),
            report.report()
        );
        assert!(!first.contains(&b'\n'), "compact");
        assert_eq!(*first, serde_json::to_vec(&report).expect("serialises"));
        // A first read keeps nothing.
        assert!(!serialised.keeps());
        // A quick second read keeps its document, and the next quick read is served from it.
        let soon = t0 + KEEP_WHILE_POLLED_WITHIN / 2;
        let second = serialised.compact_at(&report, soon).expect("serialises");
        assert!(serialised.keeps());
        let third = serialised
            .compact_at(&report, soon + Duration::from_millis(1))
            .expect("serialises");
        assert!(Arc::ptr_eq(&second, &third));
        assert_eq!(second.capacity(), first.len() + HEADROOM);
        // A change is served at once.
        report.node = "renamed".into();
        status_changed();
        let changed = serialised
            .compact_at(&report, soon + Duration::from_millis(2))
            .expect("serialises");
        assert_eq!(
            serde_json::from_slice::<StatusReport>(&changed).expect("JSON"),
            report.report()
        );
        // A read after a pause is answered, and its document dropped.
        let late = soon + KEEP_WHILE_POLLED_WITHIN * 2;
        let after_pause = serialised.compact_at(&report, late).expect("serialises");
        assert_eq!(after_pause, changed);
        assert!(!serialised.keeps());
    }
}
