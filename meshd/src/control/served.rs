//! The status as the control socket serves it: compact JSON, serialised once per change of
//! the status and kept until the next (a harness or a monitor polling a node of thousands of
//! peers every few milliseconds cost meshd a serialisation each time, on the same cores as
//! its passes). Whoever writes the served status calls [`status_changed`] while it holds the
//! status lock for writing; the answer to `status pretty` is serialised every time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::ServedStatus;

/// How many times the served status changed (in this process).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Says that the served status changed: call it with the status lock held for writing, so
/// that a reader holding it for reading sees the report and its generation together.
pub fn status_changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// A compact serialisation and the generation it was made at.
type Made = (u64, Arc<String>);

/// The last compact serialisation (one per socket).
#[derive(Clone, Default)]
pub(super) struct Serialised(Arc<Mutex<Option<Made>>>);

impl Serialised {
    /// `report` (the served status, read under its lock) as compact JSON.
    pub(super) fn compact(&self, report: &ServedStatus) -> Result<Arc<String>, serde_json::Error> {
        let now = GENERATION.load(Ordering::Acquire);
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((made_at, body)) = last.as_ref() {
            if *made_at == now {
                return Ok(Arc::clone(body));
            }
        }
        let body = Arc::new(serde_json::to_string(report)?);
        *last = Some((now, Arc::clone(&body)));
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::sample;
    use super::super::StatusReport;
    use super::*;

    #[test]
    fn the_status_is_serialised_once_per_change_and_a_change_is_served() {
        let serialised = Serialised::default();
        let mut report: ServedStatus = sample();
        let first = serialised.compact(&report).expect("serialises");
        assert_eq!(
            serde_json::from_str::<StatusReport>(&first).expect("JSON"),
            report.report()
        );
        assert!(!first.contains('\n'), "compact: {first}");
        // Unchanged: the same bytes, not serialised again.
        let again = serialised.compact(&report).expect("serialises");
        assert!(Arc::ptr_eq(&first, &again));
        report.node = "renamed".into();
        status_changed();
        let changed = serialised.compact(&report).expect("serialises");
        assert_eq!(
            serde_json::from_str::<StatusReport>(&changed).expect("JSON"),
            report.report()
        );
    }
}
