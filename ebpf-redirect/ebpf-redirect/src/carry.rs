//! Carrying the per-node maps (`REMOTE_*`, `CLUSTER_*`) over a resize without a window in
//! enforcement.
//!
//! A pinned map is never resized by the kernel: a map of another size is replaced by a fresh
//! one ([`crate::sizes`]). The old programs keep the old map until they are replaced, so the
//! order that leaves no gap is: read the old entries, unpin the old map ([`Carried::take`]),
//! load the object (fresh maps pinned), write the old entries into the new maps ([`fill`]),
//! and only then let the caller attach or swap in the new programs, which therefore never run
//! on an empty `CLUSTER_*` (cleartext would leak in strict mode) or `REMOTE_*` (pod traffic
//! would miss the redirect). When the new map is smaller than its old contents, the configured
//! cluster CIDRs go in first, then the rest in key order; what does not fit is reported in
//! [`Resized`] (its owner, the daemon, refuses those peers).

use std::io;
use std::path::Path;

use aya::maps::{lpm_trie::Key, LpmTrie, MapData, MapError};
use ebpf_redirect_common::{map_names as mn, CLUSTER_CONFIGURED};

use crate::{open_map, Datapath, Result};

/// One LPM entry: prefix length, address bytes (network order), value.
type Entry<const N: usize> = (u32, [u8; N], u32);

/// The entries of the per-node maps whose pins were retired, by map.
#[derive(Debug, Default)]
pub(crate) struct Carried {
    maps: Vec<CarriedMap>,
}

#[derive(Debug)]
enum Entries {
    V4(Vec<Entry<4>>),
    V6(Vec<Entry<16>>),
}

#[derive(Debug)]
struct CarriedMap {
    name: &'static str,
    old_max_entries: u32,
    entries: Entries,
}

/// What a resize did to one per-node map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resized {
    /// The map's name.
    pub map: &'static str,
    /// Its old `max_entries`.
    pub old_max_entries: u32,
    /// Entries copied into the new map before it served any program.
    pub carried: usize,
    /// Entries that did not fit in the new map (it is smaller than the old contents).
    pub dropped: usize,
}

fn read<const N: usize>(dir: &Path, name: &str) -> Result<Vec<Entry<N>>> {
    let trie: LpmTrie<MapData, [u8; N], u32> = open_map(dir, name)?.try_into()?;
    let mut out = Vec::new();
    for item in trie.iter() {
        let (k, v) = item?;
        out.push((k.prefix_len(), k.data(), v));
    }
    // Configured cluster CIDRs first (they matter whatever the peers do), then key order.
    out.sort_by_key(|(len, data, v)| (*v != CLUSTER_CONFIGURED, *data, *len));
    Ok(out)
}

impl Carried {
    /// If `name` is a per-node map: reads its entries from the pin in `dir` (before the pin
    /// goes). Other maps are left alone.
    pub(crate) fn take(&mut self, dir: &Path, name: &'static str, old: u32) -> Result<()> {
        let entries = match name {
            mn::REMOTE_V4 | mn::CLUSTER_V4 => Entries::V4(read(dir, name)?),
            mn::REMOTE_V6 | mn::CLUSTER_V6 => Entries::V6(read(dir, name)?),
            _ => return Ok(()),
        };
        self.maps.push(CarriedMap {
            name,
            old_max_entries: old,
            entries,
        });
        Ok(())
    }
}

fn is_full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if matches!(s.io_error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::E2BIG)))
}

fn write<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    entries: &[Entry<N>],
) -> Result<(usize, usize)> {
    let mut carried = 0;
    for (len, data, value) in entries {
        match trie.insert(&Key::new(*len, *data), *value, 0) {
            Ok(()) => carried += 1,
            Err(e) if is_full(&e) => return Ok((carried, entries.len() - carried)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((carried, 0))
}

/// Writes the carried entries into `dp`'s (new) maps; one report per carried map.
pub(crate) fn fill(dp: &mut Datapath, carried: Carried) -> Result<Vec<Resized>> {
    let mut out = Vec::new();
    for map in carried.maps {
        let (done, dropped) = match (map.name, &map.entries) {
            (mn::REMOTE_V4, Entries::V4(e)) => write(&mut dp.remote_v4, e)?,
            (mn::CLUSTER_V4, Entries::V4(e)) => write(&mut dp.cluster_v4, e)?,
            (mn::REMOTE_V6, Entries::V6(e)) => write(&mut dp.remote_v6, e)?,
            (mn::CLUSTER_V6, Entries::V6(e)) => write(&mut dp.cluster_v6, e)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("carried entries of {} do not fit its family", map.name),
                )
                .into())
            }
        };
        out.push(Resized {
            map: map.name,
            old_max_entries: map.old_max_entries,
            carried: done,
            dropped,
        });
    }
    Ok(out)
}
