//! The NetworkPolicy maps from user space: typed writes of `POLICY_ISOLATION`,
//! `POLICY_PEER_V4/V6` and `POLICY_PORT` (the entries `meshd_policy` compiles, written in
//! `meshd_policy::update::ordered_ops` order by the daemon), the policy generation that
//! [`Datapath::policy_changed`] bumps so that the programs judge every tracked connection again
//! on its next packet, and a read of the connection-tracking table for status and tests.
//!
//! The LPM tries are written through aya's `Key<[u8; N]>` with the bytes each key struct
//! reports as its `trie_data()`, which is its memory after `prefix_len` (property-tested in
//! `ebpf-redirect-common`): the one layout definition is the common crate's.

use std::path::Path;

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData};
use ebpf_redirect_common::{
    map_names as mn,
    policy::{PEER_V4_DATA_LEN, PEER_V6_DATA_LEN, PORT_DATA_LEN},
    CtKey, CtValue, IsolationKey, IsolationValue, PeerKeyV4, PeerKeyV6, PortKey, RuleBits,
};

use crate::{absent_ok, open_map, Datapath, Error, Result};

/// The policy maps, the policy generation and the connection-tracking table, opened from pins.
pub(crate) struct PolicyMaps {
    isolation: HashMap<MapData, IsolationKey, IsolationValue>,
    peer_v4: LpmTrie<MapData, [u8; PEER_V4_DATA_LEN], RuleBits>,
    peer_v6: LpmTrie<MapData, [u8; PEER_V6_DATA_LEN], RuleBits>,
    ports: LpmTrie<MapData, [u8; PORT_DATA_LEN], RuleBits>,
    generation: Array<MapData, u64>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
}

impl PolicyMaps {
    /// Opens the pinned maps in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            isolation: open_map(dir, mn::POLICY_ISOLATION)?.try_into()?,
            peer_v4: open_map(dir, mn::POLICY_PEER_V4)?.try_into()?,
            peer_v6: open_map(dir, mn::POLICY_PEER_V6)?.try_into()?,
            ports: open_map(dir, mn::POLICY_PORT)?.try_into()?,
            generation: open_map(dir, mn::POLICY_GENERATION)?.try_into()?,
            conntrack: open_map(dir, mn::CONNTRACK)?.try_into()?,
        })
    }
}

/// The contents of the four policy maps ([`Datapath::policy_entries`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyEntries {
    /// `POLICY_ISOLATION`.
    pub isolation: Vec<(IsolationKey, IsolationValue)>,
    /// `POLICY_PEER_V4`.
    pub peer_v4: Vec<(PeerKeyV4, RuleBits)>,
    /// `POLICY_PEER_V6`.
    pub peer_v6: Vec<(PeerKeyV6, RuleBits)>,
    /// `POLICY_PORT`.
    pub ports: Vec<(PortKey, RuleBits)>,
}

fn peer_v4_key(key: &PeerKeyV4) -> Key<[u8; PEER_V4_DATA_LEN]> {
    Key::new(key.prefix_len, key.trie_data())
}

fn peer_v6_key(key: &PeerKeyV6) -> Key<[u8; PEER_V6_DATA_LEN]> {
    Key::new(key.prefix_len, key.trie_data())
}

fn port_key(key: &PortKey) -> Key<[u8; PORT_DATA_LEN]> {
    Key::new(key.prefix_len, key.trie_data())
}

impl Datapath {
    /// Inserts or overwrites a `POLICY_ISOLATION` entry (the endpoint-direction is isolated).
    pub fn policy_isolation_upsert(
        &mut self,
        key: &IsolationKey,
        value: &IsolationValue,
    ) -> Result<()> {
        Ok(self.policy.isolation.insert(key, value, 0)?)
    }

    /// Deletes a `POLICY_ISOLATION` entry (the direction opens). Absent is not an error.
    pub fn policy_isolation_delete(&mut self, key: &IsolationKey) -> Result<()> {
        absent_ok(self.policy.isolation.remove(key))
    }

    /// Inserts or overwrites a `POLICY_PEER_V4` entry.
    pub fn policy_peer_v4_upsert(&mut self, key: &PeerKeyV4, bits: &RuleBits) -> Result<()> {
        Ok(self.policy.peer_v4.insert(&peer_v4_key(key), bits, 0)?)
    }

    /// Deletes a `POLICY_PEER_V4` entry (exact prefix). Absent is not an error.
    pub fn policy_peer_v4_delete(&mut self, key: &PeerKeyV4) -> Result<()> {
        absent_ok(self.policy.peer_v4.remove(&peer_v4_key(key)))
    }

    /// Inserts or overwrites a `POLICY_PEER_V6` entry.
    pub fn policy_peer_v6_upsert(&mut self, key: &PeerKeyV6, bits: &RuleBits) -> Result<()> {
        Ok(self.policy.peer_v6.insert(&peer_v6_key(key), bits, 0)?)
    }

    /// Deletes a `POLICY_PEER_V6` entry (exact prefix). Absent is not an error.
    pub fn policy_peer_v6_delete(&mut self, key: &PeerKeyV6) -> Result<()> {
        absent_ok(self.policy.peer_v6.remove(&peer_v6_key(key)))
    }

    /// Inserts or overwrites a `POLICY_PORT` entry.
    pub fn policy_port_upsert(&mut self, key: &PortKey, bits: &RuleBits) -> Result<()> {
        Ok(self.policy.ports.insert(&port_key(key), bits, 0)?)
    }

    /// Deletes a `POLICY_PORT` entry (exact prefix). Absent is not an error.
    pub fn policy_port_delete(&mut self, key: &PortKey) -> Result<()> {
        absent_ok(self.policy.ports.remove(&port_key(key)))
    }

    /// Tells the programs the policy changed (after the last write of a change): bumps the
    /// policy generation, so every tracked connection is judged again, in the direction it was
    /// opened, on its next packet in either direction, and cut if no longer allowed.
    pub fn policy_changed(&mut self) -> Result<()> {
        let next = self.policy_generation()?.wrapping_add(1);
        Ok(self.policy.generation.set(0, next, 0)?)
    }

    /// The current policy generation (how many times [`Datapath::policy_changed`] ran on
    /// these pins).
    pub fn policy_generation(&self) -> Result<u64> {
        Ok(self.policy.generation.get(&0, 0)?)
    }

    /// Every entry of the four policy maps (what a previous run left pinned, for the daemon to
    /// reconcile against).
    pub fn policy_entries(&self) -> Result<PolicyEntries> {
        fn all<K, V>(
            iter: impl Iterator<Item = std::result::Result<(K, V), aya::maps::MapError>>,
        ) -> Result<Vec<(K, V)>> {
            iter.map(|entry| entry.map_err(Error::from)).collect()
        }
        let p = &self.policy;
        Ok(PolicyEntries {
            isolation: all(p.isolation.iter())?,
            peer_v4: all(p.peer_v4.iter())?
                .into_iter()
                .map(|(k, v)| (PeerKeyV4::from_trie_data(k.prefix_len(), k.data()), v))
                .collect(),
            peer_v6: all(p.peer_v6.iter())?
                .into_iter()
                .map(|(k, v)| (PeerKeyV6::from_trie_data(k.prefix_len(), k.data()), v))
                .collect(),
            ports: all(p.ports.iter())?
                .into_iter()
                .map(|(k, v)| (PortKey::from_trie_data(k.prefix_len(), k.data()), v))
                .collect(),
        })
    }

    /// The tracked connections: (endpoint, forward tuple) and their state. Entries idle past
    /// their timeout stay until reused or evicted; `CtValue::last_seen_ns` tells.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>> {
        self.policy
            .conntrack
            .iter()
            .map(|entry| entry.map_err(Error::from))
            .collect()
    }
}
