//! One node's entries of one address family, packed: the address bytes every entry shares
//! (a node's pods sit in its pod CIDR) are kept once, and each entry keeps only the rest.
//!
//! A node's IPv4 pods in a /24 share 3 of their 4 address bytes, its IPv6 pods in a /64 at
//! least 8 of 16 (15 in the scale harness, whose addresses differ in the last byte only), so an
//! IPv4 entry takes 7 bytes where 10 were held, an IPv6 one 14 or 7 where 22 were.

use super::IdentityId;

/// One entry: an address of `N` bytes, its identity id and its pod's position among the
/// node's names, all as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Entry<const N: usize> {
    pub(super) address: [u8; N],
    pub(super) identity: [u8; 4],
    pub(super) pod: [u8; 2],
}

impl<const N: usize> Entry<N> {
    pub(super) fn identity(&self) -> IdentityId {
        IdentityId(u32::from_ne_bytes(self.identity))
    }

    pub(super) fn position(&self) -> u16 {
        u16::from_ne_bytes(self.pod)
    }

    pub(super) fn key(&self) -> ([u8; N], [u8; 4]) {
        (self.address, self.identity)
    }
}

/// A sorted list of entries whose addresses share their first `shared` bytes: those once in
/// `prefix`, then one row per entry of the address's other bytes, identity and position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PackedEntries<const N: usize> {
    prefix: [u8; N],
    shared: u8,
    rows: Box<[u8]>,
}

impl<const N: usize> Default for PackedEntries<N> {
    fn default() -> Self {
        Self {
            prefix: [0; N],
            shared: 0,
            rows: Box::default(),
        }
    }
}

impl<const N: usize> PackedEntries<N> {
    /// Packs `entries`, sorted by address.
    pub(super) fn pack(entries: &[Entry<N>]) -> Self {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Self::default();
        };
        let shared = first
            .address
            .iter()
            .zip(&last.address)
            .take_while(|(a, b)| a == b)
            .count();
        let mut rows = Vec::with_capacity(entries.len() * (N - shared + 6));
        for entry in entries {
            rows.extend_from_slice(&entry.address[shared..]);
            rows.extend_from_slice(&entry.identity);
            rows.extend_from_slice(&entry.pod);
        }
        Self {
            prefix: first.address,
            shared: shared as u8,
            rows: rows.into_boxed_slice(),
        }
    }

    /// How many entries.
    pub(super) fn len(&self) -> usize {
        self.rows.len() / self.stride()
    }

    /// The entries, in address order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Entry<N>> + '_ {
        (0..self.len()).map(|i| self.entry(i))
    }

    /// The first entry of `address`, if any (a batch may give one address two identities).
    pub(super) fn find(&self, address: &[u8; N]) -> Option<Entry<N>> {
        let shared = usize::from(self.shared);
        if address[..shared] != self.prefix[..shared] {
            return None;
        }
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if self.entry(middle).address < *address {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        (low < self.len())
            .then(|| self.entry(low))
            .filter(|e| e.address == *address)
    }

    fn stride(&self) -> usize {
        N - usize::from(self.shared) + 6
    }

    fn entry(&self, i: usize) -> Entry<N> {
        let shared = usize::from(self.shared);
        let row = &self.rows[i * self.stride()..][..self.stride()];
        let (rest, row) = row.split_at(N - shared);
        let mut address = self.prefix;
        address[shared..].copy_from_slice(rest);
        let mut identity = [0; 4];
        identity.copy_from_slice(&row[..4]);
        Entry {
            address,
            identity,
            pod: [row[4], row[5]],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: [u8; 4], identity: u32, pod: u16) -> Entry<4> {
        Entry {
            address,
            identity: identity.to_ne_bytes(),
            pod: pod.to_ne_bytes(),
        }
    }

    #[test]
    fn entries_keep_only_the_bytes_they_do_not_share_and_read_back_whole() {
        let entries = [
            entry([10, 0, 1, 2], 7, 0),
            entry([10, 0, 1, 9], 7, 1),
            entry([10, 0, 1, 9], 8, 2),
            entry([10, 0, 1, 200], 3, 3),
        ];
        let packed = PackedEntries::pack(&entries);
        assert_eq!(packed.shared, 3);
        assert_eq!(packed.rows.len(), 4 * 7);
        assert_eq!(packed.iter().collect::<Vec<_>>(), entries);
        assert_eq!(packed.find(&[10, 0, 1, 9]), Some(entries[1]));
        assert_eq!(packed.find(&[10, 0, 1, 200]), Some(entries[3]));
        assert_eq!(packed.find(&[10, 0, 1, 3]), None);
        assert_eq!(
            packed.find(&[10, 0, 2, 9]),
            None,
            "outside the shared bytes"
        );
        let one = PackedEntries::pack(&entries[..1]);
        assert_eq!((one.shared, one.rows.len()), (4, 6));
        assert_eq!(one.find(&[10, 0, 1, 2]), Some(entries[0]));
        let none = PackedEntries::<4>::pack(&[]);
        assert_eq!((none.len(), none.find(&[10, 0, 1, 2])), (0, None));
    }
}
