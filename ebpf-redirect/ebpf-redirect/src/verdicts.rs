//! The verdict counters across an upgrade that adds verdicts. Pinned maps are reused as they
//! are (pin-by-name), so a `VERDICTS` array pinned by an older object keeps its old length and
//! the new verdicts would never be counted (or read). Before loading, a short pinned array is
//! read (summed over CPUs) and unpinned; the load then creates one of the object's length, and
//! the old sums are written back (on the first CPU), so no counter goes backwards.
//!
//! Packets the old programs count between the read and their replacement on each interface
//! go to the unpinned array and are lost: a few packets, once per upgrade.

use std::io;
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use ebpf_redirect_common::{map_names as mn, VERDICT_COUNT};

use crate::{open_map, Result};

/// If `VERDICTS` is pinned in `dir` with fewer than [`VERDICT_COUNT`] entries: its sums, after
/// unpinning it. `None` when there is no pin or it is long enough.
pub(crate) fn take_short(dir: &Path) -> Result<Option<Vec<u64>>> {
    let path = dir.join(mn::VERDICTS);
    if !path.exists() {
        return Ok(None);
    }
    let len = MapData::from_pin(&path)?.info()?.max_entries();
    if len >= VERDICT_COUNT {
        return Ok(None);
    }
    let old: PerCpuArray<MapData, u64> = open_map(dir, mn::VERDICTS)?.try_into()?;
    let mut sums = Vec::with_capacity(len as usize);
    for i in 0..len {
        sums.push(old.get(&i, 0)?.iter().sum());
    }
    std::fs::remove_file(&path)?;
    Ok(Some(sums))
}

/// Writes `sums` (from [`take_short`]) into the new array, on the first CPU.
pub(crate) fn restore(verdicts: &mut PerCpuArray<MapData, u64>, sums: &[u64]) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    for (i, sum) in sums.iter().enumerate() {
        let mut values = vec![0u64; cpus];
        values[0] = *sum;
        let values = PerCpuValues::try_from(values)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        verdicts.set(i as u32, values, 0)?;
    }
    Ok(())
}
