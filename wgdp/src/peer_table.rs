//! The peers by public key: a set of `Arc<Peer>` found by the key each peer already holds,
//! so the 32-byte key is not stored a second time in the table (8-byte buckets, not 40: about
//! 50 bytes per peer at 5,000 peers).

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
