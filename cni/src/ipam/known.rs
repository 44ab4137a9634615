//! The owners a process has already read from the store, by index link name, so that a
//! long-lived reader (meshd lists the store every second and after every change to it) opens
//! only the files of owners it has not seen before.
//!
//! An index link's name is the hash of its owner file's content ([`Owner::index_name`]), and
//! the plugin never rewrites a file in place (a new index is renamed over the old one, with the
//! same content): an owner read once through an index named `N`, whose content hashes to `N`,
//! is the owner of every later file linked as `N`. So the cache never needs invalidating; it
//! only forgets the names a listing no longer saw, so that it holds the store's current owners
//! and nothing more.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Owner;

/// Owner by index link name, across every store this process lists.
static KNOWN: Mutex<Option<HashMap<String, Owner>>> = Mutex::new(None);

/// The owners of one listing: those known before it, and those it read, which [`Listing::end`]
/// keeps (only the names this listing saw).
#[derive(Debug, Default)]
pub(super) struct Listing {
    known: HashMap<String, Owner>,
    seen: HashMap<String, Owner>,
}

impl Listing {
    /// Start a listing from what the process knows.
    pub(super) fn begin() -> Listing {
        let known = KNOWN
            .lock()
            .map(|mut k| k.take().unwrap_or_default())
            .unwrap_or_default();
        Listing {
            known,
            seen: HashMap::new(),
        }
    }

    /// The owner of the file linked as index `name`, when known.
    pub(super) fn get(&mut self, name: &str) -> Option<Owner> {
        let owner = self
            .known
            .remove(name)
            .or_else(|| self.seen.get(name).cloned())?;
        self.seen.insert(name.to_string(), owner.clone());
        Some(owner)
    }

    /// `owner` was read from a file linked as index `name`: remembered when the name is
    /// `owner`'s own (a file whose content does not hash to its index name is not cached).
    pub(super) fn read(&mut self, name: &str, owner: &Owner) {
        if owner.index_name() == name {
            self.seen.insert(name.to_string(), owner.clone());
        }
    }

    /// Keep the owners this listing saw for the next one.
    pub(super) fn end(self) {
        if let Ok(mut k) = KNOWN.lock() {
            *k = Some(self.seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn an_owner_is_known_under_its_own_index_name_only_and_forgotten_when_unseen() {
        let (a, b) = (owner("a"), owner("b"));
        let mut first = Listing::default();
        first.read(&a.index_name(), &a);
        // A file under another owner's name: never cached.
        first.read(&a.index_name().replace('0', "1"), &b);
        first.read("not-an-index", &b);
        assert_eq!(first.get(&a.index_name()), Some(a.clone()));
        assert_eq!(first.get("not-an-index"), None);
        let kept = first.seen;
        assert_eq!(kept.len(), 1);

        // The next listing sees b only: a is forgotten at its end.
        let mut second = Listing {
            known: kept,
            seen: HashMap::new(),
        };
        second.read(&b.index_name(), &b);
        assert_eq!(second.seen.len(), 1);
        assert!(second.known.contains_key(&a.index_name()));
        assert!(!second.seen.contains_key(&a.index_name()));
    }
}
