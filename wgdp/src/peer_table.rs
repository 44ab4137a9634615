//! The peers by public key and by receiver index: sets of `Arc<Peer>` found by the key or
//! index each peer already holds, so neither is stored a second time in its table (8-byte
//! buckets, not 40 or 16: about 15 bytes per peer and table at 5,000 peers). And the peers
//! by slot: small indices the allowed-IP maps store instead of an `Arc` (4 bytes, not 8, in
//! each of a peer's four or so entries).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

use crate::device::Peer;
use crate::uapi::Key;

/// The field of a [`Peer`] a [`PeersBy`] table finds it by.
pub trait PeerField {
    /// The field's type.
    type Key: Hash + Eq;
    /// The field of `peer`.
    fn of(peer: &Peer) -> &Self::Key;
}

/// Peers found by their public key.
#[derive(Debug)]
pub struct ByPublicKey;

impl PeerField for ByPublicKey {
    type Key = Key;
    fn of(peer: &Peer) -> &Key {
        &peer.key
    }
}

/// Peers found by their receiver index (the 24-bit prefix boringtun extends with session bits).
#[derive(Debug)]
pub struct ByReceiverIndex;

impl PeerField for ByReceiverIndex {
    type Key = u32;
    fn of(peer: &Peer) -> &u32 {
        &peer.index
    }
}

/// A peer, hashed and compared by the field `F` names.
pub struct Keyed<F>(Arc<Peer>, PhantomData<F>);

// One `Borrow` per field: a generic `Borrow<F::Key>` would overlap the blanket `Borrow<T> for T`.
impl Borrow<Key> for Keyed<ByPublicKey> {
    fn borrow(&self) -> &Key {
        ByPublicKey::of(&self.0)
    }
}

impl Borrow<u32> for Keyed<ByReceiverIndex> {
    fn borrow(&self) -> &u32 {
        ByReceiverIndex::of(&self.0)
    }
}

impl<F: PeerField> Hash for Keyed<F> {
    // Hashes as the field itself, as `Borrow<F::Key>` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        F::of(&self.0).hash(state);
    }
}

impl<F: PeerField> PartialEq for Keyed<F> {
    fn eq(&self, other: &Self) -> bool {
        F::of(&self.0) == F::of(&other.0)
    }
}

impl<F: PeerField> Eq for Keyed<F> {}

/// Peers by the field `F` names, each found by the field it already holds.
pub struct PeersBy<F>(HashSet<Keyed<F>>);

/// Peers by public key.
pub type PeerTable = PeersBy<ByPublicKey>;

/// Peers by receiver index.
pub type IndexTable = PeersBy<ByReceiverIndex>;

impl<F> Default for PeersBy<F> {
    fn default() -> Self {
        Self(HashSet::new())
    }
}

impl<F> std::fmt::Debug for PeersBy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeersBy")
            .field("by", &std::any::type_name::<F>())
            .field("peers", &self.0.len())
            .finish()
    }
}

impl<F: PeerField> PeersBy<F>
where
    Keyed<F>: Borrow<F::Key>,
{
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer whose field is `key`.
    pub fn get(&self, key: &F::Key) -> Option<&Arc<Peer>> {
        self.0.get(key).map(|p| &p.0)
    }

    /// Whether a peer's field is `key`.
    pub fn contains_key(&self, key: &F::Key) -> bool {
        self.0.contains(key)
    }

    /// Adds `peer` under its field; returns the peer it replaces.
    pub fn insert(&mut self, peer: Arc<Peer>) -> Option<Arc<Peer>> {
        self.0.replace(Keyed(peer, PhantomData)).map(|p| p.0)
    }

    /// Removes the peer whose field is `key`.
    pub fn remove(&mut self, key: &F::Key) -> Option<Arc<Peer>> {
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
}

impl PeerTable {
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
pub struct Values<'a>(std::collections::hash_set::Iter<'a, Keyed<ByPublicKey>>);

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
