//! A set of prefixes that answers "which of them cover this address or prefix?" in a few map
//! lookups (one per distinct prefix length), instead of a scan of the whole set. Pure.
//!
//! A pass asks this question for every peer (its addresses against every pod CIDR, each
//! redirect against every programmed peer's allowed IPs): a scan made the pass quadratic in
//! the number of nodes (10^8 comparisons per pass at 5,000 nodes). The set holds few distinct
//! prefix lengths (a cluster's pod CIDR sizes, /32 and /128), so a lookup per length is cheap.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

/// Prefixes, each with the values filed under it.
#[derive(Debug, Clone)]
pub struct Covering<V> {
    /// Truncated prefix → its values.
    by_prefix: BTreeMap<IpNet, Vec<V>>,
    /// The prefix lengths present, per family: `[IPv4, IPv6]`.
    lengths: [BTreeSet<u8>; 2],
}

impl<V> Default for Covering<V> {
    fn default() -> Self {
        Self {
            by_prefix: BTreeMap::new(),
            lengths: Default::default(),
        }
    }
}

/// The family's index in `lengths`.
fn family(net: &IpNet) -> usize {
    usize::from(matches!(net, IpNet::V6(_)))
}

impl<V> Covering<V> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// File `value` under `prefix` (its host bits are ignored).
    pub fn insert(&mut self, prefix: IpNet, value: V) {
        let prefix = prefix.trunc();
        self.lengths[family(&prefix)].insert(prefix.prefix_len());
        self.by_prefix.entry(prefix).or_default().push(value);
    }

    /// The values of every prefix that contains `net` (itself included).
    pub fn covering(&self, net: IpNet) -> impl Iterator<Item = &V> + '_ {
        self.lengths[family(&net)]
            .iter()
            .take_while(move |len| **len <= net.prefix_len())
            .filter_map(move |len| {
                let outer = IpNet::new(net.addr(), *len).ok()?.trunc();
                self.by_prefix.get(&outer)
            })
            .flatten()
    }

    /// Whether some prefix shares an address with `net`: contains it, or lies inside it.
    pub fn overlaps(&self, net: IpNet) -> bool {
        if self.covering(net).next().is_some() {
            return true;
        }
        // Prefixes inside `net` sort between its first address and its last (prefixes order
        // by address, then length), and every prefix there shares `net`'s addresses.
        let max_len = net.max_prefix_len();
        match (
            IpNet::new(net.network(), 0),
            IpNet::new(net.broadcast(), max_len),
        ) {
            (Ok(first), Ok(last)) => self.by_prefix.range(first..=last).next().is_some(),
            _ => false,
        }
    }

    /// Whether some prefix contains `ip`.
    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        self.covering(IpNet::from(ip)).next().is_some()
    }
}

impl<V> FromIterator<(IpNet, V)> for Covering<V> {
    fn from_iter<I: IntoIterator<Item = (IpNet, V)>>(iter: I) -> Self {
        let mut out = Self::new();
        for (prefix, value) in iter {
            out.insert(prefix, value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn finds_every_covering_prefix_of_its_family_and_no_other() {
        let set: Covering<&str> = [
            (net("10.0.0.0/8"), "wide"),
            (net("10.1.0.0/16"), "mid"),
            (net("10.1.2.3/24"), "narrow, host bits set"),
            (net("10.2.0.0/16"), "elsewhere"),
            (net("fd00::/8"), "v6"),
            (net("10.1.2.0/24"), "second value"),
        ]
        .into_iter()
        .collect();
        let found: BTreeSet<&str> = set.covering(net("10.1.2.128/25")).copied().collect();
        assert_eq!(
            found,
            ["wide", "mid", "narrow, host bits set", "second value"]
                .into_iter()
                .collect()
        );
        // A wider prefix than any entry is covered only by wider ones.
        let found: Vec<&str> = set.covering(net("10.1.0.0/12")).copied().collect();
        assert_eq!(found, vec!["wide"]);
        assert!(set.contains_addr("10.200.0.1".parse().unwrap()));
        assert!(!set.contains_addr("11.0.0.1".parse().unwrap()));
        assert!(set.contains_addr("fd00::1".parse().unwrap()));
        assert!(!set.contains_addr("fe80::1".parse().unwrap()));
        // IPv4 and IPv6 never cover one another, even when their bits agree.
        assert!(!set.contains_addr("::a01:203".parse().unwrap()));
    }

    #[test]
    fn overlaps_finds_wider_and_narrower_prefixes() {
        let set: Covering<()> = [net("10.244.0.0/16"), net("10.8.1.0/24"), net("fd00::/64")]
            .into_iter()
            .map(|n| (n, ()))
            .collect();
        for inside_or_around in [
            "10.244.3.0/24",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "10.8.1.7/32",
            "10.8.0.0/23",
        ] {
            assert!(set.overlaps(net(inside_or_around)), "{inside_or_around}");
        }
        for apart in [
            "10.245.0.0/16",
            "10.8.2.0/24",
            "11.0.0.0/8",
            "fd01::/64",
            "::/1",
        ] {
            assert!(!set.overlaps(net(apart)), "{apart}");
        }
        assert!(set.overlaps(net("::/0")));
        assert!(set.overlaps(net("fd00::1:0/112")));
    }

    #[test]
    fn agrees_with_a_scan() {
        let prefixes: Vec<IpNet> = (0..64u32)
            .map(|i| {
                IpNet::new(
                    IpAddr::from([10, (i % 4) as u8, (i * 7 % 256) as u8, 0]),
                    16 + (i % 9) as u8,
                )
                .unwrap()
            })
            .collect();
        let set: Covering<usize> = prefixes.iter().copied().zip(0..).collect();
        for probe in 0..512u32 {
            let ip = IpAddr::from([
                10,
                (probe % 5) as u8,
                (probe * 13 % 256) as u8,
                (probe % 251) as u8,
            ]);
            let want: BTreeSet<usize> = prefixes
                .iter()
                .enumerate()
                .filter(|(_, p)| p.contains(&ip))
                .map(|(i, _)| i)
                .collect();
            let got: BTreeSet<usize> = set.covering(IpNet::from(ip)).copied().collect();
            assert_eq!(got, want, "{ip}");
            let probe_net = IpNet::new(ip, (probe % 33) as u8).unwrap().trunc();
            let overlapping = prefixes
                .iter()
                .any(|p| p.contains(&probe_net) || probe_net.contains(p));
            assert_eq!(set.overlaps(probe_net), overlapping, "{probe_net}");
        }
    }
}
