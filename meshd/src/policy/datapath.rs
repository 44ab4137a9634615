//! [`PolicyMapWriter`] on the pinned BPF policy maps, through `ebpf_redirect::Datapath`.
//!
//! The policy loop opens its own handle on the pins (`Datapath::adopt(pin_dir)`: no reload,
//! the maps the controller's `Bpf::start` pinned), so it never waits for the reconcile pass's
//! lock. Each [`MapOp`] is one call:
//!
//! | op | call |
//! |---|---|
//! | `UpsertIsolation(k, v)` / `DeleteIsolation(k)` | `policy_isolation_upsert(&k, &v)` / `policy_isolation_delete(&k)` |
//! | `UpsertPeerV4(k, v)` / `DeletePeerV4(k)` | `policy_peer_v4_upsert(&k, &v)` / `policy_peer_v4_delete(&k)` |
//! | `UpsertPeerV6(k, v)` / `DeletePeerV6(k)` | `policy_peer_v6_upsert(&k, &v)` / `policy_peer_v6_delete(&k)` |
//! | `UpsertPort(k, v)` / `DeletePort(k)` | `policy_port_upsert(&k, &v)` / `policy_port_delete(&k)` |
//!
//! `policy_changed()` is `Datapath::policy_changed()`; `dump()` reads every entry of the four
//! maps (hash map and LPM tries iterated with their keys) into a `PolicyMaps`.
//!
//! Until the datapath has the policy maps (engineer `dp-policy`'s branch), every call answers
//! [`WriterError::Unsupported`]: the loop then reports the failure in the status and enforces
//! nothing, exactly as a meshd without policy support.

use std::path::{Path, PathBuf};

use meshd_policy::update::MapOp;
use meshd_policy::PolicyMaps;

use super::writer::{PolicyMapWriter, WriterError};

/// The pinned policy maps under a bpffs directory.
#[derive(Debug)]
pub struct DatapathWriter {
    pin_dir: PathBuf,
}

impl DatapathWriter {
    /// The policy maps pinned under `pin_dir` (by the controller's `Bpf::start`).
    pub fn open(pin_dir: &Path) -> Result<Self, WriterError> {
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The bpffs directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl PolicyMapWriter for DatapathWriter {
    fn write(&mut self, _op: &MapOp) -> Result<(), WriterError> {
        Err(WriterError::Unsupported)
    }

    fn policy_changed(&mut self) -> Result<(), WriterError> {
        Err(WriterError::Unsupported)
    }

    fn dump(&mut self) -> Result<PolicyMaps, WriterError> {
        Err(WriterError::Unsupported)
    }
}
