//! The status as the control socket serves it: compact JSON, serialised for each request and
//! dropped once written, never kept between requests. At 5,000 peers the document is ≈ 3.5 MB:
//! kept until the next change of the status (as it was until now) it stayed resident for good,
//! and a status read left meshd that much larger. Each document is serialised into a buffer of
//! the last one's size (no growth by doubling, no copies), so a read costs one allocation of
//! the document's own size, returned to the kernel when the answer is written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::ServedStatus;

/// Room left beyond the last document's length for a status that grew since.
const HEADROOM: usize = 4096;

/// The length of the last compact document served (one per socket): the next one's buffer.
#[derive(Clone, Default)]
pub(super) struct Serialised(Arc<AtomicUsize>);

impl Serialised {
    /// `report` (the served status, read under its lock) as compact JSON.
    pub(super) fn compact(&self, report: &ServedStatus) -> Result<Vec<u8>, serde_json::Error> {
        let mut body = Vec::with_capacity(self.0.load(Ordering::Relaxed) + HEADROOM);
        serde_json::to_writer(&mut body, report)?;
        self.0.store(body.len(), Ordering::Relaxed);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::sample;
    use super::super::StatusReport;
    use super::*;

    #[test]
    fn each_status_is_serialised_afresh_into_a_buffer_of_the_last_size() {
        let serialised = Serialised::default();
        let mut report: ServedStatus = sample();
        let first = serialised.compact(&report).expect("serialises");
        assert_eq!(
            serde_json::from_slice::<StatusReport>(&first).expect("JSON"),
            report.report()
        );
        assert!(!first.contains(&b'\n'), "compact");
        assert_eq!(first, serde_json::to_vec(&report).expect("serialises"));
        // The next buffer is sized after this document.
        assert_eq!(serialised.0.load(Ordering::Relaxed), first.len());
        let again = serialised.compact(&report).expect("serialises");
        assert!(again.capacity() >= first.len() + HEADROOM);
        // A change is served at once: nothing is kept.
        report.node = "renamed".into();
        let changed = serialised.compact(&report).expect("serialises");
        assert_eq!(
            serde_json::from_slice::<StatusReport>(&changed).expect("JSON"),
            report.report()
        );
    }
}
