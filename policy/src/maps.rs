//! The BPF policy maps: key and value types with the exact byte layout the tc program uses, the
//! full contents of the maps ([`PolicyMaps`]) and a change to them ([`MapDelta`]).
//!
//! Four maps, every key led by the endpoint (a local pod's id, [`EndpointId`]: the host-side
//! veth's ifindex, which the tc program knows from `skb->ifindex`) and the direction:
//!
//! | map | kind | key | value |
//! |---|---|---|---|
//! | `POLICY_ISOLATION` | hash | [`IsolationKey`] (8 B) | [`IsolationValue`] (4 B) |
//! | `POLICY_PEER_V4` | LPM trie | [`PeerKeyV4`] (16 B, data 12 B) | [`RuleBits`] (8 B) |
//! | `POLICY_PEER_V6` | LPM trie | [`PeerKeyV6`] (28 B, data 24 B) | [`RuleBits`] (8 B) |
//! | `POLICY_PORT` | LPM trie | [`PortKey`] (12 B, data 8 B) | [`RuleBits`] (8 B) |
//!
//! An endpoint-direction with an isolation entry is isolated: a new connection passes only if
//! `peer_bits & port_bits != 0`, where `peer_bits` is the value of the longest prefix matching
//! (endpoint, direction, peer address) and `port_bits` that of (endpoint, direction, IP
//! protocol, destination port); a missed lookup is 0. Without an isolation entry the direction
//! is open. Bit `i` stands for the endpoint-direction's `i`-th rule (see [`mod@crate::compile`]).
//!
//! LPM trie keys are the kernel's `struct bpf_lpm_trie_key_u8`: a native-endian `u32`
//! `prefix_len` counting bits of the bytes that follow it. The endpoint, direction and reserved
//! bytes are always covered (the first [`PEER_KEY_FIXED_BITS`] / [`PORT_KEY_FIXED_BITS`] bits),
//! then the address or the protocol and port, in network byte order, as far as the prefix
//! reaches. All structs are `#[repr(C)]` with no implicit padding: every byte is a field and
//! reserved bytes are zero, so the kernel's byte comparisons see exactly what is listed here.
//! [`crate::datapath_model`] looks them up exactly as the kernel will.
//!
//! The key and value structs and the constants are defined once, in `ebpf-redirect-common`
//! (shared with the tc programs and their loader), and re-exported here.

use std::collections::{BTreeMap, BTreeSet};

pub use ebpf_redirect_common::policy::{
    IsolationKey, IsolationValue, PeerKeyV4, PeerKeyV6, PortKey, RuleBits, DIRECTION_EGRESS,
    DIRECTION_INGRESS, MAX_RULES, PEER_KEY_FIXED_BITS, PORT_KEY_FIXED_BITS,
};

use crate::model::Direction;

/// A local endpoint's id in the policy maps: the ifindex of the pod's host-side veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u32);

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "endpoint {}", self.0)
    }
}

/// The byte a direction is stored as in map keys.
pub fn direction_byte(direction: Direction) -> u8 {
    match direction {
        Direction::Ingress => DIRECTION_INGRESS,
        Direction::Egress => DIRECTION_EGRESS,
    }
}

/// An LPM trie key: a prefix length over the bytes that follow it.
pub trait LpmKey: Copy + Ord {
    /// The key's `prefix_len` field.
    fn prefix_len(&self) -> u32;
    /// The bytes after `prefix_len`, as they lie in memory.
    fn data(&self) -> Vec<u8>;
}

impl LpmKey for PeerKeyV4 {
    fn prefix_len(&self) -> u32 {
        self.prefix_len
    }
    fn data(&self) -> Vec<u8> {
        self.trie_data().to_vec()
    }
}

impl LpmKey for PeerKeyV6 {
    fn prefix_len(&self) -> u32 {
        self.prefix_len
    }
    fn data(&self) -> Vec<u8> {
        self.trie_data().to_vec()
    }
}

impl LpmKey for PortKey {
    fn prefix_len(&self) -> u32 {
        self.prefix_len
    }
    fn data(&self) -> Vec<u8> {
        self.trie_data().to_vec()
    }
}

/// Keys that belong to one endpoint (so a map's entries can be grouped by endpoint).
pub trait EndpointKey {
    /// The endpoint the entry belongs to.
    fn endpoint(&self) -> EndpointId;
}

macro_rules! endpoint_key {
    ($($t:ty),*) => {$(
        impl EndpointKey for $t {
            fn endpoint(&self) -> EndpointId {
                EndpointId(self.endpoint)
            }
        }
    )*};
}
endpoint_key!(IsolationKey, PeerKeyV4, PeerKeyV6, PortKey);

/// The full contents of the four policy maps (for one node, or one endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyMaps {
    /// `POLICY_ISOLATION`.
    pub isolation: BTreeMap<IsolationKey, IsolationValue>,
    /// `POLICY_PEER_V4`.
    pub peer_v4: BTreeMap<PeerKeyV4, RuleBits>,
    /// `POLICY_PEER_V6`.
    pub peer_v6: BTreeMap<PeerKeyV6, RuleBits>,
    /// `POLICY_PORT`.
    pub ports: BTreeMap<PortKey, RuleBits>,
}

impl PolicyMaps {
    /// Adds every entry of `other` (entries of other endpoints, so keys do not collide).
    pub fn extend(&mut self, other: &PolicyMaps) {
        self.isolation
            .extend(other.isolation.iter().map(|(k, v)| (*k, *v)));
        self.peer_v4
            .extend(other.peer_v4.iter().map(|(k, v)| (*k, *v)));
        self.peer_v6
            .extend(other.peer_v6.iter().map(|(k, v)| (*k, *v)));
        self.ports.extend(other.ports.iter().map(|(k, v)| (*k, *v)));
    }

    /// Whether there are no entries at all.
    pub fn is_empty(&self) -> bool {
        self.isolation.is_empty()
            && self.peer_v4.is_empty()
            && self.peer_v6.is_empty()
            && self.ports.is_empty()
    }

    /// The number of entries over all four maps.
    pub fn len(&self) -> usize {
        self.isolation.len() + self.peer_v4.len() + self.peer_v6.len() + self.ports.len()
    }

    /// Applies `delta`: deletes first, then upserts.
    pub fn apply(&mut self, delta: &MapDelta) {
        delta.isolation.apply(&mut self.isolation);
        delta.peer_v4.apply(&mut self.peer_v4);
        delta.peer_v6.apply(&mut self.peer_v6);
        delta.ports.apply(&mut self.ports);
    }

    /// The endpoints with at least one entry.
    pub fn endpoints(&self) -> BTreeSet<EndpointId> {
        let mut out = BTreeSet::new();
        out.extend(self.isolation.keys().map(EndpointKey::endpoint));
        out.extend(self.peer_v4.keys().map(EndpointKey::endpoint));
        out.extend(self.peer_v6.keys().map(EndpointKey::endpoint));
        out.extend(self.ports.keys().map(EndpointKey::endpoint));
        out
    }
}

/// A change to one map: keys to delete and entries to insert or overwrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDelta<K, V> {
    /// Keys to delete (never also in `upsert`).
    pub delete: BTreeSet<K>,
    /// Entries to insert or overwrite.
    pub upsert: BTreeMap<K, V>,
}

impl<K, V> Default for TableDelta<K, V> {
    fn default() -> Self {
        Self {
            delete: BTreeSet::new(),
            upsert: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy, V: Eq + Copy> TableDelta<K, V> {
    /// The change turning `old` into `new`: deletes for keys only in `old`, upserts for keys new
    /// or with a different value.
    pub fn between(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Self {
        let delete = old
            .keys()
            .filter(|k| !new.contains_key(k))
            .copied()
            .collect();
        let upsert = new
            .iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .collect();
        Self { delete, upsert }
    }

    fn apply(&self, table: &mut BTreeMap<K, V>) {
        for k in &self.delete {
            table.remove(k);
        }
        table.extend(self.upsert.iter().map(|(k, v)| (*k, *v)));
    }

    fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.upsert.is_empty()
    }

    fn merge(&mut self, other: TableDelta<K, V>) {
        self.delete.extend(other.delete);
        self.upsert.extend(other.upsert);
    }
}

/// A change to the four policy maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDelta {
    /// Change to `POLICY_ISOLATION`.
    pub isolation: TableDelta<IsolationKey, IsolationValue>,
    /// Change to `POLICY_PEER_V4`.
    pub peer_v4: TableDelta<PeerKeyV4, RuleBits>,
    /// Change to `POLICY_PEER_V6`.
    pub peer_v6: TableDelta<PeerKeyV6, RuleBits>,
    /// Change to `POLICY_PORT`.
    pub ports: TableDelta<PortKey, RuleBits>,
}

impl MapDelta {
    /// The change turning `old` into `new`.
    pub fn between(old: &PolicyMaps, new: &PolicyMaps) -> Self {
        Self {
            isolation: TableDelta::between(&old.isolation, &new.isolation),
            peer_v4: TableDelta::between(&old.peer_v4, &new.peer_v4),
            peer_v6: TableDelta::between(&old.peer_v6, &new.peer_v6),
            ports: TableDelta::between(&old.ports, &new.ports),
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.isolation.is_empty()
            && self.peer_v4.is_empty()
            && self.peer_v6.is_empty()
            && self.ports.is_empty()
    }

    /// Adds `other`'s changes (which must concern other endpoints).
    pub fn merge(&mut self, other: MapDelta) {
        self.isolation.merge(other.isolation);
        self.peer_v4.merge(other.peer_v4);
        self.peer_v6.merge(other.peer_v6);
        self.ports.merge(other.ports);
    }

    /// The endpoints whose entries this delta touches.
    pub fn endpoints(&self) -> BTreeSet<EndpointId> {
        fn keys<'a, K: EndpointKey + 'a, V>(
            d: &'a TableDelta<K, V>,
        ) -> impl Iterator<Item = EndpointId> + 'a {
            d.delete
                .iter()
                .chain(d.upsert.keys())
                .map(EndpointKey::endpoint)
        }
        let mut out = BTreeSet::new();
        out.extend(keys(&self.isolation));
        out.extend(keys(&self.peer_v4));
        out.extend(keys(&self.peer_v6));
        out.extend(keys(&self.ports));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    /// The layouts the tc program mirrors: sizes and offsets, no implicit padding.
    #[test]
    fn byte_layouts() {
        assert_eq!(size_of::<IsolationKey>(), 8);
        assert_eq!(offset_of!(IsolationKey, direction), 4);
        assert_eq!(size_of::<IsolationValue>(), 4);

        assert_eq!(size_of::<PeerKeyV4>(), 16);
        assert_eq!(offset_of!(PeerKeyV4, endpoint), 4);
        assert_eq!(offset_of!(PeerKeyV4, direction), 8);
        assert_eq!(offset_of!(PeerKeyV4, address), 12);

        assert_eq!(size_of::<PeerKeyV6>(), 28);
        assert_eq!(offset_of!(PeerKeyV6, address), 12);

        assert_eq!(size_of::<PortKey>(), 12);
        assert_eq!(offset_of!(PortKey, direction), 8);
        assert_eq!(offset_of!(PortKey, protocol), 9);
        assert_eq!(offset_of!(PortKey, port), 10);

        assert_eq!(size_of::<RuleBits>(), 8);
        assert_eq!(MAX_RULES, 8 * size_of::<RuleBits>());
    }

    #[test]
    fn lpm_data_is_the_bytes_after_prefix_len() {
        let key = PeerKeyV4 {
            prefix_len: 88,
            endpoint: 7,
            direction: DIRECTION_EGRESS,
            reserved: [0; 3],
            address: [10, 1, 2, 3],
        };
        assert_eq!(key.data().len(), size_of::<PeerKeyV4>() - 4);
        assert_eq!(&key.data()[8..], &[10, 1, 2, 3]);
        let port = PortKey {
            prefix_len: 64,
            endpoint: 7,
            direction: DIRECTION_INGRESS,
            protocol: 6,
            port: 8080u16.to_be_bytes(),
        };
        assert_eq!(
            port.data(),
            [7u32.to_ne_bytes().as_slice(), &[0, 6, 0x1f, 0x90]].concat()
        );
    }
}
