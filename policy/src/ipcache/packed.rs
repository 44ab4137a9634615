//! One node's entries of one address family, packed: the address bytes every entry shares
//! (a node's pods sit in its pod CIDR) are kept once, and each entry keeps only the rest.
//!
//! A node's IPv4 pods in a /24 share 3 of their 4 address bytes, its IPv6 pods in a /64 at
//! least 8 of 16 (15 in the scale harness, whose addresses differ in the last byte only). An
//! entry's identity id and position keep only the low bytes the list's largest needs (ids
//! under 65,536 take 2 bytes, positions under 256 one), so in the scale harness an IPv4 or
//! IPv6 entry takes 4 bytes, where 7 (and 10 and 22 unpacked) were held.

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
/// `prefix`, then one row per entry of the address's other bytes, the low `identity_bytes` of
/// its identity id and the low `position_bytes` of its position (little-endian).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PackedEntries<const N: usize> {
    prefix: [u8; N],
    shared: u8,
    identity_bytes: u8,
    position_bytes: u8,
    rows: Box<[u8]>,
}

impl<const N: usize> Default for PackedEntries<N> {
    fn default() -> Self {
        Self {
            prefix: [0; N],
            shared: 0,
            identity_bytes: 1,
            position_bytes: 1,
            rows: Box::default(),
        }
    }
}

/// How many low bytes hold `value` (at least one).
fn bytes_for(value: u32) -> u8 {
    (4 - value.leading_zeros() / 8).max(1) as u8
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
        let identity_bytes = entries
            .iter()
            .map(|e| bytes_for(e.identity().0))
            .max()
            .unwrap_or(1);
        let position_bytes = entries
            .iter()
            .map(|e| bytes_for(u32::from(e.position())))
            .max()
            .unwrap_or(1);
        let (ib, pb) = (usize::from(identity_bytes), usize::from(position_bytes));
        let mut rows = Vec::with_capacity(entries.len() * (N - shared + ib + pb));
        for entry in entries {
            rows.extend_from_slice(&entry.address[shared..]);
            rows.extend_from_slice(&entry.identity().0.to_le_bytes()[..ib]);
            rows.extend_from_slice(&entry.position().to_le_bytes()[..pb]);
        }
        Self {
            prefix: first.address,
            shared: shared as u8,
            identity_bytes,
            position_bytes,
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
        N - usize::from(self.shared)
            + usize::from(self.identity_bytes)
            + usize::from(self.position_bytes)
    }

    fn entry(&self, i: usize) -> Entry<N> {
        let shared = usize::from(self.shared);
        let row = &self.rows[i * self.stride()..][..self.stride()];
        let (rest, row) = row.split_at(N - shared);
        let (identity_row, position_row) = row.split_at(usize::from(self.identity_bytes));
        let mut address = self.prefix;
        address[shared..].copy_from_slice(rest);
        let mut identity = [0; 4];
        identity[..identity_row.len()].copy_from_slice(identity_row);
        let mut position = [0; 2];
        position[..position_row.len()].copy_from_slice(position_row);
        Entry {
            address,
            identity: u32::from_le_bytes(identity).to_ne_bytes(),
            pod: u16::from_le_bytes(position).to_ne_bytes(),
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
        assert_eq!(
            packed.rows.len(),
            4 * 3,
            "a byte each of address, id and position"
        );
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
        assert_eq!((one.shared, one.rows.len()), (4, 2));
        assert_eq!(one.find(&[10, 0, 1, 2]), Some(entries[0]));
        let none = PackedEntries::<4>::pack(&[]);
        assert_eq!((none.len(), none.find(&[10, 0, 1, 2])), (0, None));
    }

    #[test]
    fn ids_and_positions_keep_the_bytes_the_largest_needs() {
        let entries = [
            entry([10, 0, 1, 2], 7, 0),
            entry([10, 0, 1, 3], 70_000, 300),
            entry([10, 0, 1, 4], u32::MAX, u16::MAX),
        ];
        let packed = PackedEntries::pack(&entries);
        assert_eq!(packed.rows.len(), 3 * (1 + 4 + 2));
        assert_eq!(packed.iter().collect::<Vec<_>>(), entries);
        let packed = PackedEntries::pack(&entries[..2]);
        assert_eq!(packed.rows.len(), 2 * (1 + 3 + 2));
        assert_eq!(packed.iter().collect::<Vec<_>>(), entries[..2]);
        assert_eq!(packed.find(&[10, 0, 1, 3]), Some(entries[1]));
        assert_eq!((bytes_for(0), bytes_for(255), bytes_for(256)), (1, 1, 2));
        assert_eq!((bytes_for(65_536), bytes_for(u32::MAX)), (3, 4));
    }
}
