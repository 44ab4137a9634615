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

use std::path::{Path, PathBuf};

use ebpf_redirect::Datapath;
use meshd_policy::update::MapOp;
use meshd_policy::PolicyMaps;

use super::writer::{PolicyMapWriter, WriterError};

/// The pinned policy maps under a bpffs directory.
pub struct DatapathWriter {
    pin_dir: PathBuf,
    datapath: Datapath,
}

impl std::fmt::Debug for DatapathWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathWriter")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl DatapathWriter {
    /// The policy maps pinned under `pin_dir` (by the controller's `Bpf::start`).
    pub fn open(pin_dir: &Path) -> Result<Self, WriterError> {
        let datapath = Datapath::adopt(pin_dir).map_err(|e| WriterError::Open {
            pin_dir: pin_dir.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            datapath,
        })
    }

    /// The bpffs directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl PolicyMapWriter for DatapathWriter {
    fn write(&mut self, op: &MapOp) -> Result<(), WriterError> {
        let d = &mut self.datapath;
        let result = match op {
            MapOp::UpsertIsolation(k, v) => d.policy_isolation_upsert(k, v),
            MapOp::DeleteIsolation(k) => d.policy_isolation_delete(k),
            MapOp::UpsertPeerV4(k, v) => d.policy_peer_v4_upsert(k, v),
            MapOp::DeletePeerV4(k) => d.policy_peer_v4_delete(k),
            MapOp::UpsertPeerV6(k, v) => d.policy_peer_v6_upsert(k, v),
            MapOp::DeletePeerV6(k) => d.policy_peer_v6_delete(k),
            MapOp::UpsertPort(k, v) => d.policy_port_upsert(k, v),
            MapOp::DeletePort(k) => d.policy_port_delete(k),
        };
        result.map_err(|e| WriterError::Write {
            op: *op,
            source: Box::new(e),
        })
    }

    fn policy_changed(&mut self) -> Result<(), WriterError> {
        self.datapath
            .policy_changed()
            .map_err(|e| WriterError::Changed(Box::new(e)))
    }

    fn dump(&mut self) -> Result<PolicyMaps, WriterError> {
        let live = self
            .datapath
            .policy_entries()
            .map_err(|e| WriterError::Dump(Box::new(e)))?;
        Ok(PolicyMaps {
            isolation: live.isolation.into_iter().collect(),
            peer_v4: live.peer_v4.into_iter().collect(),
            peer_v6: live.peer_v6.into_iter().collect(),
            ports: live.ports.into_iter().collect(),
        })
    }
}
