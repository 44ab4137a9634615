//! Prefix arithmetic for the LPM tries: port ranges as aligned prefixes, and the "longest prefix
//! carries the full answer" construction with its minimisation.
//!
//! The port trie's variable part is 24 bits, protocol (8) then port (16), so a rule's ports are
//! a set of ranges in that 24-bit space ([`PortSet`]): every protocol and port is the whole
//! space, "every TCP port" is `6·2¹⁶ ..= 6·2¹⁶ + 65535` (one prefix of length 8), a port range
//! decomposes into aligned prefixes ([`range_prefixes`]).
//!
//! [`lpm_entries`] turns a set of inserted prefixes and a value function into trie entries such
//! that the longest inserted prefix containing a key carries the value of that key. This is exact
//! when the value of every key depends only on which inserted prefixes contain it (true for
//! unions and differences of inserted prefixes, so `except` and overlapping blocks come out
//! right): the inserted prefixes containing a key form a chain, so "`Q` contains the key" equals
//! "`Q` contains the chain's longest member `P`". An entry equal to its nearest inserted
//! ancestor's (or to 0 without one) is dropped, since the ancestor then answers the same.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::Hash;

use ipnet::IpNet;

/// A prefix in some key space, with a parent one bit shorter.
pub trait Prefix: Copy + Ord + Hash {
    /// The prefix one bit shorter, `None` for the whole space.
    fn parent(&self) -> Option<Self>;
}

impl Prefix for IpNet {
    fn parent(&self) -> Option<Self> {
        self.supernet()
    }
}

/// A prefix of the 24-bit (protocol, port) space: the top `len` bits of `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortPrefix {
    /// Protocol in bits 16..24, port in bits 0..16; bits below the prefix are zero.
    pub value: u32,
    /// Prefix length, 0..=24.
    pub len: u8,
}

/// Width of the (protocol, port) space.
pub const PORT_SPACE_BITS: u8 = 24;
/// The last value of the (protocol, port) space.
pub const PORT_SPACE_MAX: u32 = (1 << PORT_SPACE_BITS) - 1;

impl PortPrefix {
    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            PORT_SPACE_MAX & !((1u32 << (PORT_SPACE_BITS - len)) - 1)
        }
    }

    /// Whether this prefix contains `other` (is it or an ancestor of it).
    pub fn contains(&self, other: &PortPrefix) -> bool {
        self.len <= other.len && other.value & Self::mask(self.len) == self.value
    }

    /// The protocol byte of the prefix's value.
    pub fn protocol(&self) -> u8 {
        // The value has 24 bits: the protocol is its top byte.
        (self.value >> 16) as u8
    }

    /// The port of the prefix's value.
    pub fn port(&self) -> u16 {
        // The low 16 bits are the port.
        (self.value & 0xffff) as u16
    }
}

impl Prefix for PortPrefix {
    fn parent(&self) -> Option<Self> {
        (self.len > 0).then(|| PortPrefix {
            value: self.value & Self::mask(self.len - 1),
            len: self.len - 1,
        })
    }
}

/// The (protocol, port) value of a port of a protocol.
pub fn port_point(protocol: u8, port: u16) -> u32 {
    (u32::from(protocol) << 16) | u32::from(port)
}

/// The smallest list of aligned prefixes covering exactly `first..=last` of the 24-bit space.
pub fn range_prefixes(first: u32, last: u32) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    let mut lo = u64::from(first);
    let hi = u64::from(last);
    while lo <= hi {
        // The largest aligned block starting at `lo` that ends at or before `hi`.
        let mut size_bits = 0u8;
        while size_bits < PORT_SPACE_BITS
            && lo & ((1u64 << (size_bits + 1)) - 1) == 0
            && lo + (1u64 << (size_bits + 1)) - 1 <= hi
        {
            size_bits += 1;
        }
        out.push(PortPrefix {
            // `lo` stays within the 24-bit space.
            value: lo as u32,
            len: PORT_SPACE_BITS - size_bits,
        });
        lo += 1u64 << size_bits;
    }
    out
}

/// A canonical set of (protocol, port) values: sorted, disjoint, non-adjacent inclusive ranges.
/// Two rules admit the same ports exactly when their sets are equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSet(Vec<(u32, u32)>);

impl PortSet {
    /// Every protocol and every port.
    pub fn all() -> Self {
        PortSet(vec![(0, PORT_SPACE_MAX)])
    }

    /// The union of `ranges` (inclusive, in the 24-bit space).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut sorted: Vec<(u32, u32)> = ranges.into_iter().collect();
        sorted.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for (lo, hi) in sorted {
            match merged.last_mut() {
                Some(last) if u64::from(lo) <= u64::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        PortSet(merged)
    }

    /// Whether the set admits nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The set as aligned prefixes.
    pub fn prefixes(&self) -> Vec<PortPrefix> {
        self.0
            .iter()
            .flat_map(|(lo, hi)| range_prefixes(*lo, *hi))
            .collect()
    }
}

/// The trie entries for `inserted` prefixes: each prefix with `value(prefix)`, minus those equal
/// to their nearest inserted ancestor's value (or to 0 without one). See the module doc.
pub fn lpm_entries<P: Prefix>(
    inserted: &BTreeSet<P>,
    value: impl Fn(&P) -> u64,
) -> BTreeMap<P, u64> {
    let members: HashSet<P> = inserted.iter().copied().collect();
    let values: BTreeMap<P, u64> = inserted.iter().map(|p| (*p, value(p))).collect();
    values
        .iter()
        .filter(|(prefix, bits)| {
            let mut ancestor = prefix.parent();
            while let Some(candidate) = ancestor {
                if members.contains(&candidate) {
                    break;
                }
                ancestor = candidate.parent();
            }
            let inherited = ancestor.map_or(0, |a| values[&a]);
            **bits != inherited
        })
        .map(|(p, v)| (*p, *v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefixes: &[PortPrefix]) -> Vec<u32> {
        let mut out: Vec<u32> = prefixes
            .iter()
            .flat_map(|p| {
                let size = 1u32 << (PORT_SPACE_BITS - p.len);
                p.value..p.value + size
            })
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn ranges_decompose_exactly() {
        for (lo, hi) in [
            (80, 80),
            (80, 81),
            (1, 65535),
            (1000, 2047),
            (5, 1029),
            (0, 0),
        ] {
            let prefixes = range_prefixes(lo, hi);
            assert_eq!(
                covered(&prefixes),
                (lo..=hi).collect::<Vec<_>>(),
                "{lo}..={hi}"
            );
        }
        assert_eq!(
            range_prefixes(0, PORT_SPACE_MAX),
            vec![PortPrefix { value: 0, len: 0 }]
        );
        let tcp = port_point(6, 0);
        assert_eq!(
            range_prefixes(tcp, tcp + 0xffff),
            vec![PortPrefix { value: tcp, len: 8 }]
        );
        // 1..=65535 needs one prefix per bit.
        assert_eq!(range_prefixes(tcp + 1, tcp + 0xffff).len(), 16);
    }

    #[test]
    fn port_sets_are_canonical() {
        let a = PortSet::from_ranges([(80, 80), (81, 81), (90, 95)]);
        let b = PortSet::from_ranges([(90, 95), (80, 81), (91, 92)]);
        assert_eq!(a, b);
        assert_eq!(a.0, vec![(80, 81), (90, 95)]);
    }

    #[test]
    fn longest_prefix_carries_the_answer() {
        let net = |s: &str| s.parse::<IpNet>().expect("literal");
        // Rule 0: 10.0.0.0/8 except 10.1.0.0/16; rule 1: 10.1.2.0/24.
        let inserted: BTreeSet<IpNet> =
            [net("10.0.0.0/8"), net("10.1.0.0/16"), net("10.1.2.0/24")].into();
        let value = |p: &IpNet| {
            let mut bits = 0;
            if net("10.0.0.0/8").contains(p) && !net("10.1.0.0/16").contains(p) {
                bits |= 1;
            }
            if net("10.1.2.0/24").contains(p) {
                bits |= 2;
            }
            bits
        };
        let entries = lpm_entries(&inserted, value);
        assert_eq!(entries.get(&net("10.0.0.0/8")), Some(&1));
        assert_eq!(entries.get(&net("10.1.0.0/16")), Some(&0));
        assert_eq!(entries.get(&net("10.1.2.0/24")), Some(&2));
        // A prefix equal to its ancestor is dropped.
        let inserted: BTreeSet<IpNet> = [net("10.0.0.0/8"), net("10.2.0.0/16")].into();
        let entries = lpm_entries(&inserted, |p| u64::from(net("10.0.0.0/8").contains(p)));
        assert_eq!(entries.len(), 1);
    }
}
