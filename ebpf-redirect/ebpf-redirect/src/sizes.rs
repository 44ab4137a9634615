//! The sizes of the maps the loader may choose ([`MapSizes`], `max_entries` overrides given to
//! aya's loader), and the retirement of pinned maps whose size no longer matches.
//!
//! Maps are pinned by name and reused on reload with their contents. The kernel never resizes
//! a map, and aya reuses a pin whatever its shape, so a pinned map whose `max_entries` differs
//! from what this loader wants (an older object's `VERDICTS` with fewer counters, a policy or
//! connection-tracking map sized by another configuration) is unpinned before loading: the new
//! programs get a fresh map, the old programs keep theirs until they are replaced. What is
//! lost: those counters restart at zero, the policy maps must be written again by their owner
//! (the daemon writes its full policy on start), and connections tracked in a retired
//! `CONNTRACK` are judged again as new ones.

use std::{fs, io, path::Path};

use aya::maps::MapData;
use ebpf_redirect_common::{
    map_names as mn, MAX_CONNTRACK, MAX_POLICY_ISOLATION, MAX_POLICY_PEERS, MAX_POLICY_PORTS,
    VERDICT_COUNT,
};

use crate::Result;

/// `max_entries` of the maps whose size is a deployment choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `POLICY_ISOLATION` (two entries per local pod at most).
    pub policy_isolation: u32,
    /// Each of `POLICY_PEER_V4` and `POLICY_PEER_V6`.
    pub policy_peers: u32,
    /// `POLICY_PORT`.
    pub policy_ports: u32,
    /// `CONNTRACK` (an LRU: when full, the least recently used connection is forgotten).
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            policy_isolation: MAX_POLICY_ISOLATION,
            policy_peers: MAX_POLICY_PEERS,
            policy_ports: MAX_POLICY_PORTS,
            conntrack: MAX_CONNTRACK,
        }
    }
}

impl MapSizes {
    /// Every map whose size this loader decides, with that size.
    pub(crate) fn entries(&self) -> [(&'static str, u32); 6] {
        [
            (mn::VERDICTS, VERDICT_COUNT),
            (mn::POLICY_ISOLATION, self.policy_isolation),
            (mn::POLICY_PEER_V4, self.policy_peers),
            (mn::POLICY_PEER_V6, self.policy_peers),
            (mn::POLICY_PORT, self.policy_ports),
            (mn::CONNTRACK, self.conntrack),
        ]
    }
}

/// Unpins the maps in `dir` whose `max_entries` differs from `sizes`; returns their names.
pub(crate) fn retire_mismatched_pins(dir: &Path, sizes: &MapSizes) -> Result<Vec<&'static str>> {
    let mut retired = Vec::new();
    for (name, wanted) in sizes.entries() {
        let path = dir.join(name);
        let pinned = match MapData::from_pin(&path) {
            Ok(map) => map,
            // No pin (first load) or not a map we can open: the loader creates or fails later.
            Err(_) => continue,
        };
        if pinned.info()?.max_entries() != wanted {
            match fs::remove_file(&path) {
                Ok(()) => retired.push(name),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(retired)
}
