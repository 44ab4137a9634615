//! The allowed-IPs table: longest-prefix match from an IP address to the peer owning it.
//!
//! One path-compressed binary trie per address family. Insert and remove walk at most one
//! node per prefix bit (O(prefix length)) and never scan other entries; removal compacts the
//! trie so it never holds more than two nodes per stored prefix. Addresses are kept as
//! left-aligned `u128` (an IPv4 address in the top 32 bits), so both families share the code.

use std::net::IpAddr;

use ipnet::IpNet;

/// A longest-prefix-match table from IP networks to values (wgdp stores `Arc<Peer>`).
#[derive(Debug)]
pub struct AllowedIps<V> {
    v4: Trie<V>,
    v6: Trie<V>,
}

impl<V> Default for AllowedIps<V> {
    fn default() -> Self {
        AllowedIps {
            v4: Trie::new(32),
            v6: Trie::new(128),
        }
    }
}

/// The left-aligned key, prefix length and family trie of a network (host bits cleared).
fn key_of(net: &IpNet) -> (u128, u8, bool) {
    match net {
        IpNet::V4(n) => (
            mask(u128::from(u32::from(n.addr())) << 96, n.prefix_len()),
            n.prefix_len(),
            true,
        ),
        IpNet::V6(n) => (
            mask(u128::from(n.addr()), n.prefix_len()),
            n.prefix_len(),
            false,
        ),
    }
}

impl<V> AllowedIps<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `net` (host bits ignored) to `value`; returns the value it replaces.
    pub fn insert(&mut self, net: &IpNet, value: V) -> Option<V> {
        let (key, len, v4) = key_of(net);
        let trie = if v4 { &mut self.v4 } else { &mut self.v6 };
        trie.insert(key, len, value)
    }

    /// Removes exactly `net` (host bits ignored); returns its value.
    pub fn remove(&mut self, net: &IpNet) -> Option<V> {
        let (key, len, v4) = key_of(net);
        let trie = if v4 { &mut self.v4 } else { &mut self.v6 };
        trie.remove(key, len)
    }

    /// The value of exactly `net`, if stored.
    pub fn get(&self, net: &IpNet) -> Option<&V> {
        let (key, len, v4) = key_of(net);
        let trie = if v4 { &self.v4 } else { &self.v6 };
        trie.get(key, len)
    }

    /// The value of the longest stored prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&V> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u128::from(u32::from(a)) << 96),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
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

    /// Number of trie nodes (for tests of compaction).
    #[cfg(test)]
    fn nodes(&self) -> usize {
        fn count<V>(n: &Option<Box<Node<V>>>) -> usize {
            n.as_ref()
                .map_or(0, |n| 1 + count(&n.child[0]) + count(&n.child[1]))
        }
        count(&self.v4.root) + count(&self.v6.root)
    }
}

/// Keeps the top `len` bits of `key`.
fn mask(key: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        key & (u128::MAX << (128 - u32::from(len)))
    }
}

/// Bit `i` (0 = most significant) of `key`, as a child index.
fn bit(key: u128, i: u8) -> usize {
    usize::from((key >> (127 - u32::from(i))) & 1 == 1)
}

/// Length of the common prefix of `a` and `b`, at most `max`.
fn common(a: u128, b: u128, max: u8) -> u8 {
    let lz = (a ^ b).leading_zeros().min(u32::from(max));
    // lz <= max <= 128 fits in u8.
    u8::try_from(lz).unwrap_or(max)
}

#[derive(Debug)]
struct Node<V> {
    /// The node's prefix, left-aligned, bits past `bits` zero.
    key: u128,
    /// Prefix length.
    bits: u8,
    /// Set when the prefix itself is stored; `None` for a branching node.
    value: Option<V>,
    child: [Option<Box<Node<V>>>; 2],
}

#[derive(Debug)]
struct Trie<V> {
    root: Option<Box<Node<V>>>,
    width: u8,
    len: usize,
}

impl<V> Trie<V> {
    fn new(width: u8) -> Self {
        Trie {
            root: None,
            width,
            len: 0,
        }
    }

    fn insert(&mut self, key: u128, len: u8, value: V) -> Option<V> {
        let len = len.min(self.width);
        let old = insert(&mut self.root, mask(key, len), len, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, key: u128, len: u8) -> Option<V> {
        let len = len.min(self.width);
        let old = remove(&mut self.root, mask(key, len), len);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    fn get(&self, key: u128, len: u8) -> Option<&V> {
        let key = mask(key, len);
        let mut cur = self.root.as_deref();
        while let Some(node) = cur {
            if node.bits > len || mask(key, node.bits) != node.key {
                return None;
            }
            if node.bits == len {
                return node.value.as_ref();
            }
            cur = node.child[bit(key, node.bits)].as_deref();
        }
        None
    }

    fn lookup(&self, addr: u128) -> Option<&V> {
        let mut best = None;
        let mut cur = self.root.as_deref();
        while let Some(node) = cur {
            if mask(addr, node.bits) != node.key {
                break;
            }
            if node.value.is_some() {
                best = node.value.as_ref();
            }
            if node.bits >= self.width {
                break;
            }
            cur = node.child[bit(addr, node.bits)].as_deref();
        }
        best
    }
}

fn leaf<V>(key: u128, bits: u8, value: Option<V>) -> Box<Node<V>> {
    Box::new(Node {
        key,
        bits,
        value,
        child: [None, None],
    })
}

fn insert<V>(slot: &mut Option<Box<Node<V>>>, key: u128, len: u8, value: V) -> Option<V> {
    let Some(node) = slot else {
        *slot = Some(leaf(key, len, Some(value)));
        return None;
    };
    let c = common(node.key, key, node.bits.min(len));
    if c == node.bits {
        if node.bits == len {
            return node.value.replace(value);
        }
        // `node` is a proper prefix of the new key: descend.
        let b = bit(key, node.bits);
        return insert(&mut node.child[b], key, len, value);
    }
    let old = slot.take()?;
    if c == len {
        // The new key is a proper prefix of `node`: it becomes the parent.
        let mut parent = leaf(key, len, Some(value));
        let b = bit(old.key, len);
        parent.child[b] = Some(old);
        *slot = Some(parent);
    } else {
        // They diverge at bit `c`: a branching node holds both.
        let mut branch = leaf(mask(key, c), c, None);
        let ob = bit(old.key, c);
        branch.child[ob] = Some(old);
        branch.child[1 - ob] = Some(leaf(key, len, Some(value)));
        *slot = Some(branch);
    }
    None
}

fn remove<V>(slot: &mut Option<Box<Node<V>>>, key: u128, len: u8) -> Option<V> {
    let node = slot.as_mut()?;
    if node.bits > len || mask(key, node.bits) != node.key {
        return None;
    }
    let old = if node.bits == len {
        node.value.take()
    } else {
        let b = bit(key, node.bits);
        remove(&mut node.child[b], key, len)
    };
    if old.is_some() {
        compact(slot);
    }
    old
}

/// Removes a value-less node with fewer than two children from `slot`.
fn compact<V>(slot: &mut Option<Box<Node<V>>>) {
    let Some(node) = slot.as_mut() else {
        return;
    };
    if node.value.is_some() {
        return;
    }
    match (node.child[0].is_some(), node.child[1].is_some()) {
        (true, true) => {}
        (false, false) => *slot = None,
        (true, false) => *slot = node.child[0].take(),
        (false, true) => *slot = node.child[1].take(),
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
