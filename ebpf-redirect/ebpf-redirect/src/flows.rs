//! The flow maps seen from user space ([`FlowMaps`]): the switch (`FLOW_CONFIG`), the
//! forwarded-flow table (`FLOW_TABLE`, read for aggregates and pruned of idle flows), the
//! per-CPU count of events lost for want of ring-buffer room (`FLOW_LOST`), and the
//! `FLOW_EVENTS` ring buffer itself ([`FlowMaps::ring`]: one consumer, the daemon). The ABI
//! is `ebpf_redirect_common::flows`; the maps are sized by [`crate::MapSizes`].
//!
//! The programs hand every packet to report to `flow_report` by tail call through the
//! one-entry program array `FLOW_REPORT`; loading writes the new reporter into it
//! ([`install_reporter`]), so programs of an older load still attached report through it too.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf};
use aya::programs::SchedClassifier;
use ebpf_redirect_common::{
    flows::{FlowConfig, FlowCounters, FlowKey},
    map_names as mn,
};

pub use ebpf_redirect_common::flows as abi;

use crate::{absent_ok, open_map, prog_pin, Result, PROG_FLOW_REPORT};

/// Writes the pinned `flow_report` program into slot 0 of the pinned `FLOW_REPORT` array.
pub(crate) fn install_reporter(dir: &Path) -> Result<()> {
    let reporter = SchedClassifier::from_pin(prog_pin(dir, PROG_FLOW_REPORT))?;
    let mut slots: ProgramArray<MapData> = open_map(dir, mn::FLOW_REPORT)?.try_into()?;
    slots.set(0, reporter.fd()?, 0)?;
    Ok(())
}

/// The flow maps pinned in a datapath's pin directory.
pub struct FlowMaps {
    pin_dir: PathBuf,
    config: Array<MapData, FlowConfig>,
    table: HashMap<MapData, FlowKey, FlowCounters>,
    lost: PerCpuArray<MapData, u64>,
}

impl FlowMaps {
    /// Opens the pins in `pin_dir` (after `Datapath::load*`).
    pub fn open(pin_dir: impl AsRef<Path>) -> Result<Self> {
        let dir = pin_dir.as_ref();
        Ok(Self {
            pin_dir: dir.to_path_buf(),
            config: open_map(dir, mn::FLOW_CONFIG)?.try_into()?,
            table: open_map(dir, mn::FLOW_TABLE)?.try_into()?,
            lost: open_map(dir, mn::FLOW_LOST)?.try_into()?,
        })
    }

    /// Turns flow events (and the forwarded-flow table) on or off.
    pub fn set_events(&mut self, on: bool) -> Result<()> {
        let config = FlowConfig {
            events: u32::from(on),
            reserved: 0,
        };
        self.config.set(0, config, 0)?;
        Ok(())
    }

    /// Whether flow events are on.
    pub fn events(&self) -> Result<bool> {
        Ok(self.config.get(&0, 0)?.events != 0)
    }

    /// Events lost so far (the ring buffer was full), summed over CPUs.
    pub fn lost(&self) -> Result<u64> {
        Ok(self.lost.get(&0, 0)?.iter().sum())
    }

    /// Every forwarded flow the table holds, with its counters.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowCounters)>> {
        let mut out = Vec::new();
        for item in self.table.iter() {
            match item {
                Ok(entry) => out.push(entry),
                // Evicted between the key walk and the lookup: gone, not an error.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Forgets a flow (its next packet is a first packet again); absent is no error.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        absent_ok(self.table.remove(key))
    }

    /// Opens the `FLOW_EVENTS` ring buffer for reading (the kernel keeps one consumer
    /// position: only one reader at a time makes sense).
    pub fn ring(&self) -> Result<RingBuf<MapData>> {
        Ok(open_map(&self.pin_dir, mn::FLOW_EVENTS)?.try_into()?)
    }

    /// The ring buffer as a [`FlowRing`] (for readers without a dependency on aya).
    pub fn flow_ring(&self) -> Result<FlowRing> {
        Ok(FlowRing(self.ring()?))
    }
}

/// The `FLOW_EVENTS` ring buffer: readable when its descriptor polls readable ([`AsFd`]).
pub struct FlowRing(RingBuf<MapData>);

impl FlowRing {
    /// Hands at most `max` records to `each` (their bytes, valid during the call), oldest
    /// first; returns how many.
    pub fn drain(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.0.next() else { break };
            each(&item);
            n += 1;
        }
        n
    }
}

impl AsFd for FlowRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for FlowRing {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
