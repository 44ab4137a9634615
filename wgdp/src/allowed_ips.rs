//! The allowed-IPs table: longest-prefix match from an IP address to the peer owning it.
//!
//! Per address family, one hash map per prefix length in use, keyed by the prefix's network
//! bits. A lookup probes the lengths in use, longest first: one hash probe per distinct prefix
//! length of the family (a mesh uses two per family: the pod CIDR and the node's address), never
//! a scan of entries (at most 33 probes for IPv4 and 129 for IPv6, if the configuration used
//! every length); insert, remove and exact get are one probe each. A length's map is dropped
//! when its last prefix goes, and shrunk when it is mostly empty. Only the configuration adds
//! keys, so packets cannot lengthen the probe sequences they meet.
//!
//! Why not a trie: at 5,000 peers with four prefixes each, a path-compressed binary trie holds
//! up to two heap nodes per prefix (48 bytes each, 64 with malloc's header), about 510 bytes per
//! peer; the maps hold one bucket per prefix (9 bytes for IPv4, 21 for IPv6 with a `u32` value
//! and the control byte), about 100 bytes per peer at 5,000 peers. Lookups also touch two
//! buckets instead of a chain of a dozen nodes.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use ipnet::IpNet;

/// A longest-prefix-match table from IP networks to values (wgdp stores the peer's slot, a
/// `u32`: 4 bytes per entry instead of an `Arc`'s 8).
#[derive(Debug)]
pub struct AllowedIps<V> {
    v4: Family<u32, V>,
    v6: Family<V6Bits, V>,
}

impl<V> Default for AllowedIps<V> {
    fn default() -> Self {
        AllowedIps {
            v4: Family::new(),
            v6: Family::new(),
        }
    }
}

impl<V> AllowedIps<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `net` (host bits ignored) to `value`; returns the value it replaces.
    pub fn insert(&mut self, net: &IpNet, value: V) -> Option<V> {
        match net {
            IpNet::V4(n) => self.v4.insert(u32::from(n.addr()), n.prefix_len(), value),
            IpNet::V6(n) => self
                .v6
                .insert(V6Bits::from(n.addr()), n.prefix_len(), value),
        }
    }

    /// Removes exactly `net` (host bits ignored); returns its value.
    pub fn remove(&mut self, net: &IpNet) -> Option<V> {
        match net {
            IpNet::V4(n) => self.v4.remove(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => self.v6.remove(V6Bits::from(n.addr()), n.prefix_len()),
        }
    }

    /// The value of exactly `net`, if stored.
    pub fn get(&self, net: &IpNet) -> Option<&V> {
        match net {
            IpNet::V4(n) => self.v4.get(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => self.v6.get(V6Bits::from(n.addr()), n.prefix_len()),
        }
    }

    /// The value of the longest stored prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&V> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(V6Bits::from(a)),
        }
    }

    /// Number of stored prefixes.
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    /// Whether no prefix is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Stored prefixes plus one per prefix length in use (for tests that nothing is left
    /// behind by removals).
    #[cfg(test)]
    fn nodes(&self) -> usize {
        self.len() + self.v4.by_len.len() + self.v6.by_len.len()
    }
}

/// An address family's address as an unsigned integer, most significant bit first.
trait AddrBits: Copy + Eq + Hash {
    /// Bits in an address.
    const WIDTH: u8;
    /// Keeps the top `len` (at most `WIDTH`) bits.
    fn keep(self, len: u8) -> Self;
}

impl AddrBits for u32 {
    const WIDTH: u8 = 32;
    fn keep(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (Self::WIDTH - len.min(Self::WIDTH)))
        }
    }
}

/// An IPv6 address as four 32-bit words, most significant first: 4-byte aligned, so a map
/// bucket with a 4-byte value is 20 bytes, not the 24 (two `u64`) or 32 (`u128`) a wider
/// alignment pads it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct V6Bits([u32; 4]);

impl From<u128> for V6Bits {
    fn from(bits: u128) -> Self {
        // Truncations intended: the four words.
        V6Bits([
            (bits >> 96) as u32,
            (bits >> 64) as u32,
            (bits >> 32) as u32,
            bits as u32,
        ])
    }
}

impl From<std::net::Ipv6Addr> for V6Bits {
    fn from(a: std::net::Ipv6Addr) -> Self {
        V6Bits::from(u128::from(a))
    }
}

impl AddrBits for V6Bits {
    const WIDTH: u8 = 128;
    fn keep(self, len: u8) -> Self {
        if len == 0 {
            return V6Bits([0; 4]);
        }
        let [a, b, c, d] = self.0.map(u128::from);
        let bits = (a << 96) | (b << 64) | (c << 32) | d;
        V6Bits::from(bits & (u128::MAX << (Self::WIDTH - len.min(Self::WIDTH))))
    }
}

/// A map this much larger than its contents (and not small) is shrunk after a removal.
const SHRINK_FACTOR: usize = 4;
/// Capacity below which a map is never shrunk.
const SHRINK_MIN: usize = 64;

/// One address family: a map per prefix length in use, longest first.
#[derive(Debug)]
struct Family<K, V> {
    by_len: Vec<(u8, HashMap<K, V>)>,
    len: usize,
}

impl<K: AddrBits, V> Family<K, V> {
    fn new() -> Self {
        Family {
            by_len: Vec::new(),
            len: 0,
        }
    }

    /// Where prefix length `len`'s map is (`Ok`) or would go (`Err`), longest first.
    fn position(&self, len: u8) -> Result<usize, usize> {
        self.by_len.binary_search_by(|(l, _)| len.cmp(l))
    }

    fn insert(&mut self, addr: K, len: u8, value: V) -> Option<V> {
        let len = len.min(K::WIDTH);
        let i = match self.position(len) {
            Ok(i) => i,
            Err(i) => {
                self.by_len.insert(i, (len, HashMap::new()));
                i
            }
        };
        let old = self.by_len[i].1.insert(addr.keep(len), value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, addr: K, len: u8) -> Option<V> {
        let len = len.min(K::WIDTH);
        let i = self.position(len).ok()?;
        let map = &mut self.by_len[i].1;
        let old = map.remove(&addr.keep(len))?;
        self.len -= 1;
        if map.is_empty() {
            self.by_len.remove(i);
        } else if map.capacity() > SHRINK_MIN && map.capacity() > SHRINK_FACTOR * map.len() {
            map.shrink_to(2 * map.len());
        }
        Some(old)
    }

    fn get(&self, addr: K, len: u8) -> Option<&V> {
        let len = len.min(K::WIDTH);
        let i = self.position(len).ok()?;
        self.by_len[i].1.get(&addr.keep(len))
    }

    fn lookup(&self, addr: K) -> Option<&V> {
        self.by_len
            .iter()
            .find_map(|(len, map)| map.get(&addr.keep(*len)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn longest_prefix_wins_and_families_are_separate() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(&net("10.0.0.0/8"), 1), None);
        assert_eq!(t.insert(&net("10.1.0.0/16"), 2), None);
        assert_eq!(t.insert(&net("10.1.2.3/32"), 3), None);
        assert_eq!(t.insert(&net("0.0.0.0/0"), 4), None);
        assert_eq!(t.insert(&net("::/0"), 5), None);
        assert_eq!(t.insert(&net("fd00::/64"), 6), None);
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&3));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(&2));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(&1));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&4));
        assert_eq!(t.lookup(ip("fd00::1")), Some(&6));
        assert_eq!(t.lookup(ip("fd01::1")), Some(&5));
        // An IPv4-mapped IPv6 address is not an IPv4 address.
        assert_eq!(t.lookup(ip("::ffff:10.1.2.3")), Some(&5));
        assert_eq!(t.len(), 6);
        assert_eq!(t.remove(&net("0.0.0.0/0")), Some(4));
        assert_eq!(t.lookup(ip("192.0.2.1")), None);
        assert_eq!(t.remove(&net("10.1.0.0/16")), Some(2));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(&1));
        assert_eq!(t.remove(&net("10.1.0.0/16")), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn host_bits_are_ignored_and_replace_returns_old() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(&net("10.1.2.3/24"), 1), None);
        assert_eq!(t.get(&net("10.1.2.0/24")), Some(&1));
        assert_eq!(t.insert(&net("10.1.2.0/24"), 2), Some(1));
        assert_eq!(t.remove(&net("10.1.2.99/24")), Some(2));
        assert!(t.is_empty());
        assert_eq!(t.nodes(), 0);
    }

    #[test]
    fn removal_compacts() {
        let mut t = AllowedIps::new();
        let nets: Vec<IpNet> = (0..200u32)
            .map(|i| {
                IpNet::V4(
                    ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).expect("net"),
                )
            })
            .collect();
        for (i, n) in nets.iter().enumerate() {
            t.insert(n, i);
        }
        assert!(t.nodes() < 2 * nets.len());
        for n in &nets {
            assert!(t.remove(n).is_some());
        }
        assert_eq!(t.nodes(), 0);
        t.insert(&net("::/0"), 1);
        t.insert(&net("fd00::/8"), 2);
        t.insert(
            &IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("net")),
            3,
        );
        assert_eq!(t.lookup(ip("::1")), Some(&3));
        t.clear();
        assert!(t.is_empty());
    }

    /// The naive reference: a list, matched by scanning every entry.
    #[derive(Default)]
    struct Naive(Vec<(IpNet, u32)>);

    impl Naive {
        fn insert(&mut self, n: IpNet, v: u32) -> Option<u32> {
            let n = n.trunc();
            match self.0.iter_mut().find(|(m, _)| *m == n) {
                Some((_, old)) => Some(std::mem::replace(old, v)),
                None => {
                    self.0.push((n, v));
                    None
                }
            }
        }
        fn remove(&mut self, n: IpNet) -> Option<u32> {
            let n = n.trunc();
            let i = self.0.iter().position(|(m, _)| *m == n)?;
            Some(self.0.swap_remove(i).1)
        }
        fn lookup(&self, a: IpAddr) -> Option<u32> {
            self.0
                .iter()
                .filter(|(n, _)| n.contains(&a))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, v)| *v)
        }
    }

    /// Addresses from a small space, so prefixes overlap and nest often.
    fn addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u32..4, any::<u8>(), 0u32..4).prop_map(|(a, b, c)| IpAddr::V4(Ipv4Addr::from(
                (a << 30) | (u32::from(b) << 16) | c
            ))),
            (0u128..4, any::<u8>(), 0u128..4).prop_map(|(a, b, c)| IpAddr::V6(Ipv6Addr::from(
                (a << 126) | (u128::from(b) << 100) | c
            ))),
        ]
    }

    fn prefix() -> impl Strategy<Value = IpNet> {
        (addr(), any::<u8>()).prop_map(|(a, l)| match a {
            IpAddr::V4(v4) => IpNet::V4(ipnet::Ipv4Net::new(v4, l % 33).expect("len")),
            IpAddr::V6(v6) => IpNet::V6(ipnet::Ipv6Net::new(v6, l % 129).expect("len")),
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(IpNet, u32),
        Remove(IpNet),
        Lookup(IpAddr),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (prefix(), 0u32..50).prop_map(|(n, v)| Op::Insert(n, v)),
            2 => prefix().prop_map(Op::Remove),
            3 => addr().prop_map(Op::Lookup),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn matches_naive_reference(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = AllowedIps::new();
            let mut r = Naive::default();
            let mut inserted = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(n, v) => {
                        prop_assert_eq!(t.insert(&n, v), r.insert(n, v));
                        inserted.push(n);
                    }
                    Op::Remove(n) => prop_assert_eq!(t.remove(&n), r.remove(n)),
                    Op::Lookup(a) => prop_assert_eq!(t.lookup(a).copied(), r.lookup(a)),
                }
                prop_assert_eq!(t.len(), r.0.len());
                prop_assert!(t.nodes() <= 2 * t.len());
            }
            // Every stored prefix is found exactly, and removing what was inserted empties it.
            for (n, v) in &r.0 {
                prop_assert_eq!(t.get(n), Some(v));
                prop_assert_eq!(t.lookup(n.network()).copied(), r.lookup(n.network()));
            }
            for n in inserted {
                t.remove(&n);
            }
            prop_assert!(t.is_empty());
            prop_assert_eq!(t.nodes(), 0);
        }
    }
}
