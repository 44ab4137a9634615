//! The peers by public key and by receiver index: sets of `Arc<Peer>` found by the key or
//! index each peer already holds, so neither is stored a second time in its table (8-byte
//! buckets, not 40 or 16: about 15 bytes per peer and table at 5,000 peers). And the peers
//! by slot: small indices the allowed-IP maps store instead of an `Arc` (4 bytes, not 8, in
//! each of a peer's four or so entries).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::device::Peer;
use crate::uapi::Key;

/// A peer, hashed and compared by its public key.
struct ByKey(Arc<Peer>);

impl Borrow<Key> for ByKey {
    fn borrow(&self) -> &Key {
        &self.0.key
    }
}

impl Hash for ByKey {
    // Hashes as the key itself, as `Borrow<Key>` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

/// Peers by public key.
#[derive(Default)]
pub struct PeerTable(HashSet<ByKey>);

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("peers", &self.0.len())
            .finish()
    }
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer with public key `key`.
    pub fn get(&self, key: &Key) -> Option<&Arc<Peer>> {
        self.0.get(key).map(|p| &p.0)
    }

    /// Adds `peer` under its public key; returns the peer it replaces.
    pub fn insert(&mut self, peer: Arc<Peer>) -> Option<Arc<Peer>> {
        self.0.replace(ByKey(peer)).map(|p| p.0)
    }

    /// Removes the peer with public key `key`.
    pub fn remove(&mut self, key: &Key) -> Option<Arc<Peer>> {
        self.0.take(key).map(|p| p.0)
    }

    /// Room for `more` peers without growing.
    pub fn reserve(&mut self, more: usize) {
        self.0.reserve(more);
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The peers, in no particular order.
    pub fn values(&self) -> Values<'_> {
        Values(self.0.iter())
    }

    /// Their public keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.values().map(|p| &p.key)
    }
}

/// The peers of a [`PeerTable`], in no particular order (a named type, not `impl Iterator`,
/// so that it holds no borrow past its last use).
pub struct Values<'a>(std::collections::hash_set::Iter<'a, ByKey>);

impl<'a> Iterator for Values<'a> {
    type Item = &'a Arc<Peer>;

    fn next(&mut self) -> Option<&'a Arc<Peer>> {
        self.0.next().map(|p| &p.0)
    }
}

impl std::fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Values").finish_non_exhaustive()
    }
}

impl std::ops::Index<&Key> for PeerTable {
    type Output = Arc<Peer>;

    /// The peer with public key `key`; panics if there is none (as `HashMap`'s index does).
    fn index(&self, key: &Key) -> &Arc<Peer> {
        match self.get(key) {
            Some(p) => p,
            None => panic!("no peer with that public key"),
        }
    }
}

/// A peer, hashed and compared by its receiver index.
struct ByIndex(Arc<Peer>);

impl Borrow<u32> for ByIndex {
    fn borrow(&self) -> &u32 {
        &self.0.index
    }
}

impl Hash for ByIndex {
    // Hashes as the index itself, as `Borrow<u32>` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.index.hash(state);
    }
}

impl PartialEq for ByIndex {
    fn eq(&self, other: &Self) -> bool {
        self.0.index == other.0.index
    }
}

impl Eq for ByIndex {}

/// Peers by receiver index (the 24-bit prefix boringtun extends with session bits).
#[derive(Default)]
pub struct IndexTable(HashSet<ByIndex>);

impl std::fmt::Debug for IndexTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexTable")
            .field("peers", &self.0.len())
            .finish()
    }
}

impl IndexTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer with receiver index `index`.
    pub fn get(&self, index: &u32) -> Option<&Arc<Peer>> {
        self.0.get(index).map(|p| &p.0)
    }

    /// Whether a peer has receiver index `index`.
    pub fn contains_key(&self, index: &u32) -> bool {
        self.0.contains(index)
    }

    /// Adds `peer` under its receiver index; returns the peer it replaces.
    pub fn insert(&mut self, peer: Arc<Peer>) -> Option<Arc<Peer>> {
        self.0.replace(ByIndex(peer)).map(|p| p.0)
    }

    /// Removes the peer with receiver index `index`.
    pub fn remove(&mut self, index: &u32) -> Option<Arc<Peer>> {
        self.0.take(index).map(|p| p.0)
    }

    /// Room for `more` peers without growing.
    pub fn reserve(&mut self, more: usize) {
        self.0.reserve(more);
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Peers by slot, a small index given to each peer for its life and reused after it.
#[derive(Debug, Default)]
pub struct SlotTable {
    peers: Vec<Option<Arc<Peer>>>,
    free: Vec<u32>,
}

impl SlotTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A slot no peer has, for a new peer to [`insert`](Self::insert) with (the same until
    /// it is taken).
    pub fn vacant(&self) -> u32 {
        self.free.last().copied().unwrap_or_else(|| {
            u32::try_from(self.peers.len()).unwrap_or_else(|_| panic!("more than 2^32 peers"))
        })
    }

    /// Adds `peer` in its slot, which [`vacant`](Self::vacant) gave.
    pub fn insert(&mut self, peer: Arc<Peer>) {
        let slot = peer.slot as usize;
        if self.free.last() == Some(&peer.slot) {
            self.free.pop();
            self.peers[slot] = Some(peer);
        } else {
            debug_assert_eq!(slot, self.peers.len(), "a slot not vacant");
            self.peers.push(Some(peer));
        }
    }

    /// Frees `slot`.
    pub fn remove(&mut self, slot: u32) {
        if let Some(p) = self.peers.get_mut(slot as usize) {
            if p.take().is_some() {
                self.free.push(slot);
            }
        }
    }

    /// The peer in `slot`.
    pub fn get(&self, slot: u32) -> Option<&Arc<Peer>> {
        self.peers.get(slot as usize)?.as_ref()
    }

    /// Room for `more` new peers without growing.
    pub fn reserve(&mut self, more: usize) {
        self.peers.reserve(more.saturating_sub(self.free.len()));
    }
}
