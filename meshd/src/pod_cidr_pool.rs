//! `cluster-pool` IPAM: meshd carves this node's pod CIDR, one per family, out of a cluster-wide
//! pool itself, for clusters whose controller-manager does not allocate `spec.podCIDRs`.
//!
//! Pure: which blocks are taken comes from the registry (every other node's published pod
//! CIDRs); the choice is deterministic. A node starts its search at a block derived from its
//! name, so nodes starting together rarely collide; when two nodes do claim the same block at
//! once, both see it in the registry and [`loser`] says which one moves (the greater name), so
//! the claim converges without coordination beyond the registry.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Errors of the pool allocator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The block size does not fit the pool.
    #[error("cannot carve /{block} blocks out of pool {pool}")]
    BadSize {
        /// The pool.
        pool: IpNet,
        /// The requested prefix length.
        block: u8,
    },
    /// Every block of the pool is taken.
    #[error("pool {pool} has no free /{block} block left ({taken} taken)")]
    Exhausted {
        /// The pool.
        pool: IpNet,
        /// The block prefix length.
        block: u8,
        /// How many blocks were taken.
        taken: usize,
    },
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Block number `i` of `pool` with prefix length `block`.
fn nth_block(pool: IpNet, block: u8, i: u128) -> IpNet {
    let shift = u32::from(pool.max_prefix_len() - block);
    match pool.trunc() {
        IpNet::V4(p) => {
            let base = u32::from(p.network());
            let addr = base | ((i as u32) << shift);
            IpNet::V4(Ipv4Net::new(addr.into(), block).unwrap_or(p))
        }
        IpNet::V6(p) => {
            let base = u128::from(p.network());
            let addr = base | (i << shift);
            IpNet::V6(Ipv6Net::new(addr.into(), block).unwrap_or(p))
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Choose a `/block` out of `pool` that overlaps none of `taken`. `keep` (a previous claim of
/// this node, persisted) wins when it is still inside the pool and free; otherwise the search
/// starts at a block derived from `node` and walks the pool.
pub fn choose_block(
    pool: IpNet,
    block: u8,
    taken: &[IpNet],
    keep: Option<IpNet>,
    node: &str,
) -> Result<IpNet, PoolError> {
    let pool = pool.trunc();
    if block < pool.prefix_len() || block > pool.max_prefix_len() {
        return Err(PoolError::BadSize { pool, block });
    }
    let free = |c: &IpNet| !taken.iter().any(|t| overlaps(t, c));
    if let Some(k) = keep.map(|k| k.trunc()) {
        if k.prefix_len() == block && pool.contains(&k.network()) && free(&k) {
            return Ok(k);
        }
    }
    let bits = u32::from(block - pool.prefix_len());
    // Walk at most 2^20 candidates: pools of more blocks are searched from the hashed start.
    let count: u128 = if bits >= 127 {
        u128::MAX
    } else {
        1u128 << bits
    };
    let walk = count.min(1 << 20);
    let start = u128::from(fnv1a(node)) % count;
    for k in 0..walk {
        let candidate = nth_block(pool, block, (start + k) % count);
        if free(&candidate) {
            return Ok(candidate);
        }
    }
    Err(PoolError::Exhausted {
        pool,
        block,
        taken: taken.len(),
    })
}

/// Of two nodes claiming overlapping blocks, the one that must move: the greater name.
pub fn loser<'a>(me: &'a str, other: &'a str) -> &'a str {
    if me > other {
        me
    } else {
        other
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
    fn blocks_are_inside_the_pool_and_avoid_taken_ones() {
        let pool = net("10.244.0.0/16");
        let a = choose_block(pool, 24, &[], None, "n1").unwrap();
        assert!(pool.contains(&a.network()) && a.prefix_len() == 24);
        let b = choose_block(pool, 24, &[a], None, "n1").unwrap();
        assert_ne!(a, b, "a taken block is never chosen again");
        // A node's previous claim is kept while free, and abandoned once taken.
        assert_eq!(choose_block(pool, 24, &[b], Some(a), "n9").unwrap(), a);
        assert_ne!(choose_block(pool, 24, &[a], Some(a), "n9").unwrap(), a);
        // A claim outside the pool or of another size is not kept.
        let other = net("10.99.0.0/24");
        assert_ne!(
            choose_block(pool, 24, &[], Some(other), "n9").unwrap(),
            other
        );
    }

    #[test]
    fn ipv6_pools_and_exhaustion() {
        let pool = net("fd00:244::/48");
        let c = choose_block(pool, 64, &[], None, "node-a").unwrap();
        assert!(pool.contains(&c.network()) && c.prefix_len() == 64);
        let tiny = net("10.0.0.0/23");
        let x = choose_block(tiny, 24, &[], None, "a").unwrap();
        let y = choose_block(tiny, 24, &[x], None, "a").unwrap();
        assert_eq!(
            choose_block(tiny, 24, &[x, y], None, "a"),
            Err(PoolError::Exhausted {
                pool: tiny,
                block: 24,
                taken: 2
            })
        );
        // A larger taken block covers the smaller ones inside it.
        assert!(choose_block(tiny, 24, &[tiny], None, "a").is_err());
        assert!(matches!(
            choose_block(tiny, 22, &[], None, "a"),
            Err(PoolError::BadSize { .. })
        ));
    }

    #[test]
    fn different_names_start_at_different_blocks_and_the_greater_name_yields() {
        let pool = net("10.244.0.0/16");
        let picks: std::collections::BTreeSet<IpNet> = (1..=20)
            .map(|i| choose_block(pool, 24, &[], None, &format!("node-{i}")).unwrap())
            .collect();
        assert!(picks.len() >= 15, "hashed starts spread: {picks:?}");
        assert_eq!(loser("n1", "n2"), "n2");
        assert_eq!(loser("n2", "n1"), "n2");
    }
}
