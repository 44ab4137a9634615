//! [`ClaimSet`]: the few claims of one kind a remembered node holds (its keys, its pod CIDRs,
//! its endpoints), as a sorted slice.
//!
//! A node holds one to a few claims of each kind. A `BTreeSet` of them allocates a whole
//! B-tree leaf (room for eleven) per set: at 5,000 remembered nodes with three sets each that
//! was most of the memory of accepted claims. A sorted, deduplicated boxed slice holds exactly
//! its claims, is looked up by binary search, and serialises as the same JSON array (sorted,
//! like the set), so the memory persisted by an older meshd reads back unchanged.

use serde::{Deserialize, Deserializer, Serialize};

/// A sorted set of claims without duplicates, stored as a slice of exactly its length.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClaimSet<T>(Box<[T]>);

impl<T> Default for ClaimSet<T> {
    fn default() -> Self {
        ClaimSet(Box::default())
    }
}

impl<T: Ord> ClaimSet<T> {
    /// Whether `item` is one of the claims.
    pub fn contains(&self, item: &T) -> bool {
        self.0.binary_search(item).is_ok()
    }
}

impl<T> ClaimSet<T> {
    /// How many claims.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The claims in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<T: Ord> FromIterator<T> for ClaimSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut v: Vec<T> = items.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        ClaimSet(v.into_boxed_slice())
    }
}

impl<'a, T> IntoIterator for &'a ClaimSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de, T: Ord + Deserialize<'de>> Deserialize<'de> for ClaimSet<T> {
    /// Any order, duplicates allowed (a file written by hand): sorted and deduplicated.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(deserializer).map(|v| v.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn a_claim_set_is_sorted_without_duplicates_and_serialises_like_a_btree_set() {
        let items = [5u32, 1, 3, 1, 5];
        let set: ClaimSet<u32> = items.into_iter().collect();
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(set.len(), 3);
        assert!(set.contains(&3));
        assert!(!set.contains(&2));
        assert!(!set.is_empty());
        assert!(ClaimSet::<u32>::default().is_empty());
        let btree: BTreeSet<u32> = items.into_iter().collect();
        assert_eq!(
            serde_json::to_string(&set).unwrap(),
            serde_json::to_string(&btree).unwrap()
        );
        // Read back from any order, with duplicates.
        let read: ClaimSet<u32> = serde_json::from_str("[5,3,1,3]").unwrap();
        assert_eq!(read, set);
    }
}
