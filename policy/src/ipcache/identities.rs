//! The interned identities: each distinct [`Identity`] once, under a small id, with how many
//! entries use it; an identity no entry uses is forgotten and its id reused.
//!
//! The slots are chunks of [`CHUNK`] ids, each chunk shared (`Arc`) with the readers that took
//! a copy of the table ([`IdentitySlots`]: the flow collector's pod table), and copied only
//! when written while a reader still holds it: a reader costs a pointer per chunk, not a slot
//! per identity. Per identity: its slot (16 bytes), its use count (4, that vector grown by an
//! eighth at a time so that its slack stays small) and its id in the index by content (4, plus
//! the hash table's control byte).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use super::identity::Identity;
use super::IdentityId;

/// Ids per chunk of slots (a chunk is 4 KiB).
const CHUNK: usize = 256;

/// The identities by id, as a reader holds them: chunks shared with the table it copied.
#[derive(Clone, Debug, Default)]
pub struct IdentitySlots {
    /// Chunks of [`CHUNK`] slots; `None` is a free id.
    chunks: Vec<Arc<[Option<Identity>]>>,
    /// One past the largest id held.
    bound: usize,
}

impl IdentitySlots {
    /// The identity `id`, if held.
    pub fn get(&self, id: IdentityId) -> Option<&Identity> {
        let i = id.0 as usize;
        if i >= self.bound {
            return None;
        }
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)?.as_ref()
    }

    /// The identities held, with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (IdentityId, &Identity)> + '_ {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .take(self.bound)
            .enumerate()
            .filter_map(|(i, slot)| {
                slot.as_ref()
                    .map(|identity| (IdentityId(i as u32), identity))
            })
    }

    /// One past the largest id held (a vector this long indexes every identity).
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Slot `i` for writing (a chunk a reader still holds is copied first).
    fn slot_mut(&mut self, i: usize) -> &mut Option<Identity> {
        &mut Arc::make_mut(&mut self.chunks[i / CHUNK])[i % CHUNK]
    }

    /// Holds `identity` under a new id, one past the largest.
    fn push(&mut self, identity: Identity) -> IdentityId {
        let i = self.bound;
        if i / CHUNK == self.chunks.len() {
            self.chunks.push(Arc::from(vec![None; CHUNK]));
        }
        self.bound += 1;
        *self.slot_mut(i) = Some(identity);
        IdentityId(i as u32)
    }

    /// Drops the free slots at the end, and the chunks they emptied.
    fn trim(&mut self) {
        while self.bound > 0 && self.get(IdentityId(self.bound as u32 - 1)).is_none() {
            self.bound -= 1;
        }
        self.chunks.truncate(self.bound.div_ceil(CHUNK));
    }
}

/// Identities by id (see the module doc).
#[derive(Clone, Debug, Default)]
pub(super) struct Identities {
    slots: IdentitySlots,
    /// How many entries use each identity, by id.
    uses: Vec<u32>,
    /// Ids of the identities held, found by the identity's hash and compared through their
    /// slots (4 bytes an identity, where a map keyed by the identity took 16).
    ids: HashTable<IdentityId>,
    hasher: RandomState,
    /// Free ids, reused first.
    free: Vec<u32>,
}

impl Identities {
    /// The identities by id, for reading.
    pub(super) fn slots(&self) -> &IdentitySlots {
        &self.slots
    }

    /// The id of `identity`, interned with no use if new (its id then added to `created`).
    pub(super) fn intern(
        &mut self,
        identity: Identity,
        created: &mut Vec<IdentityId>,
    ) -> IdentityId {
        let hash = self.hasher.hash_one(&identity);
        let slots = &self.slots;
        if let Some(&id) = self.ids.find(hash, |id| {
            slots.get(*id).is_some_and(|held| *held == identity)
        }) {
            return id;
        }
        let id = match self.free.pop() {
            Some(i) => {
                *self.slots.slot_mut(i as usize) = Some(identity);
                self.uses[i as usize] = 0;
                IdentityId(i)
            }
            None => {
                let id = self.slots.push(identity);
                if self.uses.len() == self.uses.capacity() {
                    self.uses.reserve_exact((self.uses.len() / 8).max(16));
                }
                self.uses.push(0);
                id
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.ids
            .insert_unique(hash, id, |id| slot_hash(hasher, slots, *id));
        created.push(id);
        id
    }

    /// Counts one more entry using `id`.
    pub(super) fn acquire(&mut self, id: IdentityId) {
        if let Some(uses) = self.uses.get_mut(id.0 as usize) {
            *uses += 1;
        }
    }

    /// Counts one entry fewer using `id`, forgetting it if none is left.
    pub(super) fn release(&mut self, id: IdentityId) {
        if let Some(uses) = self.uses.get_mut(id.0 as usize) {
            *uses = uses.saturating_sub(1);
        }
        self.free_if_unused(id);
    }

    /// Forgets `id` if no entry uses it.
    pub(super) fn free_if_unused(&mut self, id: IdentityId) {
        let i = id.0 as usize;
        if self.slots.get(id).is_some() && self.uses[i] == 0 {
            let hash = slot_hash(&self.hasher, &self.slots, id);
            if let Ok(entry) = self.ids.find_entry(hash, |held| *held == id) {
                entry.remove();
            }
            *self.slots.slot_mut(i) = None;
            self.free.push(id.0);
        }
    }

    /// Gives back the slots at the end that are free, and the memory of most of them once
    /// most are.
    pub(super) fn shrink(&mut self) {
        self.slots.trim();
        let bound = self.slots.bound();
        self.uses.truncate(bound);
        self.free.retain(|i| (*i as usize) < bound);
        if self.uses.capacity() > 4 * bound.max(16) {
            self.uses.shrink_to_fit();
            self.free.shrink_to_fit();
            self.slots.chunks.shrink_to_fit();
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.ids.shrink_to_fit(|id| slot_hash(hasher, slots, *id));
        }
    }
}

/// The hash identity `id` is filed under: its content's.
fn slot_hash(hasher: &RandomState, slots: &IdentitySlots, id: IdentityId) -> u64 {
    slots
        .get(id)
        .map_or(0, |identity| hasher.hash_one(identity))
}
