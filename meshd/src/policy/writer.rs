//! Where the policy loop writes: [`PolicyMapWriter`], one map operation at a time, and its
//! in-memory implementation on [`PolicyMaps`] (the model of the live maps, for tests). The
//! implementation on the pinned BPF maps is [`super::datapath::DatapathWriter`].

use meshd_policy::update::MapOp;
use meshd_policy::PolicyMaps;

/// Why a write to the policy maps failed.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// A map operation failed.
    #[error("writing {op:?} to the policy maps")]
    Write {
        /// The operation.
        op: MapOp,
        /// The datapath's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Opening the pinned maps failed.
    #[error("opening the policy maps pinned under {}", pin_dir.display())]
    Open {
        /// The bpffs directory.
        pin_dir: std::path::PathBuf,
        /// The datapath's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading the live maps failed.
    #[error("reading the live policy maps")]
    Dump(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Telling the datapath that policy changed failed.
    #[error("telling the datapath that policy changed")]
    Changed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The live policy maps, written one [`MapOp`] at a time in
/// [`meshd_policy::update::ordered_ops`] order.
pub trait PolicyMapWriter: Send + 'static {
    /// Performs one write (a delete of an absent key is `Ok`).
    fn write(&mut self, op: &MapOp) -> Result<(), WriterError>;

    /// Tells the datapath that policy changed (after a batch of writes).
    fn policy_changed(&mut self) -> Result<(), WriterError>;

    /// The maps' current contents (at start: what a previous meshd left pinned).
    fn dump(&mut self) -> Result<PolicyMaps, WriterError>;
}

impl PolicyMapWriter for PolicyMaps {
    fn write(&mut self, op: &MapOp) -> Result<(), WriterError> {
        op.apply(self);
        Ok(())
    }

    fn policy_changed(&mut self) -> Result<(), WriterError> {
        Ok(())
    }

    fn dump(&mut self) -> Result<PolicyMaps, WriterError> {
        Ok(self.clone())
    }
}

/// A writer shared with a test, which reads what was written while the loop runs.
impl<W: PolicyMapWriter> PolicyMapWriter for std::sync::Arc<std::sync::Mutex<W>> {
    fn write(&mut self, op: &MapOp) -> Result<(), WriterError> {
        lock(self).write(op)
    }

    fn policy_changed(&mut self) -> Result<(), WriterError> {
        lock(self).policy_changed()
    }

    fn dump(&mut self) -> Result<PolicyMaps, WriterError> {
        lock(self).dump()
    }
}

fn lock<W>(m: &std::sync::Mutex<W>) -> std::sync::MutexGuard<'_, W> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
