//! `node-subnet` IPAM: pods take addresses from the node's own underlay subnet. Each node
//! holds small blocks (a `/28` and a `/124` by default) of the pod range reserved inside that
//! subnet, claims another as it fills and gives back an empty one after a grace period.
//!
//! Pure: [`Allocator::step`] decides from what it is shown (every other node's published
//! blocks, every node's underlay addresses, this node's pods in use, the time); the caller
//! publishes [`Allocator::blocks`] as this node's pod CIDRs and hands
//! [`Allocator::usable`] to the CNI's store. The rules (docs/node-subnet.md has them in full):
//!
//! * **Claim** a block of a family when the free addresses of the held blocks of that family
//!   fall below the headroom, one pending claim per family at a time, and never beyond
//!   [`MAX_BLOCKS_PER_FAMILY`]. The block is the first free one found walking the range from a
//!   start derived from the node's name (deterministic, and spread so that nodes starting
//!   together rarely collide). A block is free when no other node's block overlaps it and it
//!   holds no node's underlay address (the nodes share the subnet with the pods).
//! * **Settle.** A fresh claim is *pending*: it is published but the CNI does not allocate from
//!   it. It becomes *settled* once it has been held for the settle period without an
//!   overlapping claim of another node; only settled blocks are usable.
//! * **Conflict.** Two nodes claiming the same block at once both see it. A pending block
//!   yields to a node with a smaller name at once, and to any node once the conflict has lasted
//!   the settle period (the other side did not yield, so it holds the block settled). A
//!   settled block yields only to a smaller name and only while none of this node's pods is
//!   in it; otherwise it is kept and the conflict reported (record trust on every other node
//!   keeps whichever claim was established first). Since pods only get addresses from settled
//!   blocks, the loser of a race has no pod in the block it gives back.
//! * **Release** a settled block once it has been empty for the grace period, when the
//!   remaining blocks still leave the headroom free. Only empty blocks are ever released.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// At most this many blocks of each family per node: record trust's cap for `node-subnet`
/// records ([`keyexchange::trust::MAX_NODE_SUBNET_BLOCKS_PER_FAMILY`]).
pub const MAX_BLOCKS_PER_FAMILY: usize = keyexchange::trust::MAX_NODE_SUBNET_BLOCKS_PER_FAMILY;
/// Default block prefix length of the IPv4 pod range (16 addresses).
pub const DEFAULT_BLOCK_V4: u8 = 28;
/// Default block prefix length of the IPv6 pod range (16 addresses).
pub const DEFAULT_BLOCK_V6: u8 = 124;
/// The most pods a node runs (the kubelet's default `maxPods`): the blocks must be large
/// enough that this many fit in [`MAX_BLOCKS_PER_FAMILY`] blocks, one left for headroom.
pub const MAX_PODS_PER_NODE: u128 = 110;

/// Errors of the node-subnet allocator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSubnetError {
    /// Two pod ranges of one family.
    #[error("two node-subnet pod ranges of one family: {first} and {second}")]
    TwoRanges {
        /// The first range.
        first: IpNet,
        /// The second range.
        second: IpNet,
    },
    /// The block size does not fit the range.
    #[error("cannot carve /{block} blocks out of the pod range {range}")]
    BadBlock {
        /// The range.
        range: IpNet,
        /// The block prefix length.
        block: u8,
    },
    /// Blocks so small that a full node would need more than the per-node cap.
    #[error(
        "/{block} blocks are too small: {MAX_PODS_PER_NODE} pods need more than \
         {MAX_BLOCKS_PER_FAMILY} of them (use a shorter prefix)"
    )]
    BlockTooSmall {
        /// The block prefix length.
        block: u8,
    },
    /// No free block is left in the range.
    #[error("the pod range {range} has no free /{block} block left")]
    Exhausted {
        /// The range.
        range: IpNet,
        /// The block prefix length.
        block: u8,
    },
    /// This node holds the most blocks a record may carry.
    #[error(
        "this node holds {MAX_BLOCKS_PER_FAMILY} blocks of {range} already (the per-record cap); \
         no more are claimed"
    )]
    AtCap {
        /// The range.
        range: IpNet,
    },
    /// A settled block with pods in it is also claimed by another node.
    #[error("block {block} (with {pods} pods of this node) is also claimed by node {other}")]
    ContestedWithPods {
        /// The block.
        block: IpNet,
        /// The other claimant.
        other: String,
        /// This node's pods in the block.
        pods: usize,
    },
}

/// The allocator's settings (`--ipam node-subnet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnetConfig {
    /// The pod range of each family inside the underlay subnet (one or two).
    pub ranges: Vec<IpNet>,
    /// Block prefix length of the IPv4 range.
    pub block_v4: u8,
    /// Block prefix length of the IPv6 range.
    pub block_v6: u8,
    /// Free addresses kept per family: a block is claimed when fewer are left.
    pub headroom: u128,
    /// How long a fresh claim is watched for a competing one before pods may use it.
    pub settle: Duration,
    /// How long a block stays empty before it is given back.
    pub release_grace: Duration,
}

impl NodeSubnetConfig {
    /// Checks the ranges and block sizes.
    pub fn validate(&self) -> Result<(), NodeSubnetError> {
        for (i, a) in self.ranges.iter().enumerate() {
            if let Some(b) = self.ranges[i + 1..].iter().find(|b| family(b) == family(a)) {
                return Err(NodeSubnetError::TwoRanges {
                    first: *a,
                    second: *b,
                });
            }
            let block = self.block_of(a);
            if block < a.prefix_len() || block > a.max_prefix_len() {
                return Err(NodeSubnetError::BadBlock { range: *a, block });
            }
            let per_block = usable(block_net(*a, block, 0));
            let need = MAX_PODS_PER_NODE.div_ceil(per_block.max(1));
            if per_block == 0 || need + 1 > MAX_BLOCKS_PER_FAMILY as u128 {
                return Err(NodeSubnetError::BlockTooSmall { block });
            }
        }
        Ok(())
    }

    /// The block prefix length of `range`'s family.
    pub fn block_of(&self, range: &IpNet) -> u8 {
        match range {
            IpNet::V4(_) => self.block_v4,
            IpNet::V6(_) => self.block_v6,
        }
    }
}

/// A block this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBlock {
    /// The block.
    pub block: IpNet,
    /// When it was claimed.
    pub claimed_at: Duration,
    /// Held for the settle period without a competing claim: pods may use it.
    pub settled: bool,
    /// Since when another node's block overlaps it.
    pub contested_since: Option<Duration>,
    /// Since when none of this node's pods is in it.
    pub empty_since: Option<Duration>,
}

/// What [`Allocator::step`] is shown.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Now, on a monotonic clock.
    pub now: Duration,
    /// Every other node's published blocks (its pod CIDRs), by name.
    pub others: &'a BTreeMap<String, Vec<IpNet>>,
    /// Every node's underlay addresses (this node's included): no block may hold one.
    pub node_addresses: &'a [IpAddr],
    /// This node's pods' addresses.
    pub in_use: &'a [IpAddr],
}

/// One change a step made to the held blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A block was claimed (pending).
    Claimed(IpNet),
    /// A pending block settled: pods may use it.
    Settled(IpNet),
    /// A block was given up to another node's overlapping claim.
    Yielded {
        /// The block.
        block: IpNet,
        /// The node it was given up to.
        to: String,
    },
    /// An empty block was given back after the grace period.
    Released(IpNet),
}

/// The outcome of a step: what changed, and what could not be done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// The changes, in the order they were made.
    pub changes: Vec<Change>,
    /// What went wrong (reported; the step goes on).
    pub problems: Vec<NodeSubnetError>,
}

/// One node's blocks and the decisions about them (see the module docs).
#[derive(Debug, Clone)]
pub struct Allocator {
    node: String,
    config: NodeSubnetConfig,
    held: Vec<HeldBlock>,
}

fn family(net: &IpNet) -> usize {
    usize::from(matches!(net, IpNet::V6(_)))
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Addresses of `block` the CNI hands out (it keeps the first two and the last).
pub fn usable(block: IpNet) -> u128 {
    meshd_cni::ipam::usable_range(block).map_or(0, |(first, last)| last - first + 1)
}

/// Block number `i` of `range` with prefix length `block`.
fn block_net(range: IpNet, block: u8, i: u128) -> IpNet {
    let shift = u32::from(range.max_prefix_len() - block);
    match range.trunc() {
        IpNet::V4(r) => {
            let offset = if shift >= 32 { 0 } else { (i as u32) << shift };
            let addr = u32::from(r.network()) | offset;
            IpNet::V4(Ipv4Net::new(addr.into(), block).unwrap_or(r))
        }
        IpNet::V6(r) => {
            let offset = if shift >= 128 { 0 } else { i << shift };
            let addr = u128::from(r.network()) | offset;
            IpNet::V6(Ipv6Net::new(addr.into(), block).unwrap_or(r))
        }
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The first free `/block` of `range` walking from the start derived from `node`: not
/// overlapping any of `taken`, holding none of `node_addresses`. At most 2^20 candidates are
/// walked.
pub fn choose_block(
    range: IpNet,
    block: u8,
    taken: &[IpNet],
    node_addresses: &[IpAddr],
    node: &str,
) -> Result<IpNet, NodeSubnetError> {
    let range = range.trunc();
    if block < range.prefix_len() || block > range.max_prefix_len() {
        return Err(NodeSubnetError::BadBlock { range, block });
    }
    let bits = u32::from(block - range.prefix_len());
    let count: u128 = if bits >= 127 {
        u128::MAX
    } else {
        1u128 << bits
    };
    let start = u128::from(fnv1a(node)) % count;
    for k in 0..count.min(1 << 20) {
        let candidate = block_net(range, block, (start + k) % count);
        let free = !taken.iter().any(|t| overlaps(t, &candidate))
            && !node_addresses.iter().any(|a| candidate.contains(a));
        if free {
            return Ok(candidate);
        }
    }
    Err(NodeSubnetError::Exhausted { range, block })
}

impl Allocator {
    /// An allocator holding nothing yet.
    pub fn new(node: impl Into<String>, config: NodeSubnetConfig) -> Self {
        Self {
            node: node.into(),
            config,
            held: Vec::new(),
        }
    }

    /// An allocator resuming the blocks it published before a restart: they count as settled
    /// (pods may be in them), those outside the configured ranges are dropped.
    pub fn resume(
        node: impl Into<String>,
        config: NodeSubnetConfig,
        blocks: &[IpNet],
        now: Duration,
    ) -> Self {
        let mut me = Self::new(node, config);
        for b in blocks.iter().map(IpNet::trunc) {
            let inside = me
                .config
                .ranges
                .iter()
                .any(|r| r.contains(&b) && me.config.block_of(r) == b.prefix_len());
            if inside && !me.held.iter().any(|h| overlaps(&h.block, &b)) {
                me.held.push(HeldBlock {
                    block: b,
                    claimed_at: now,
                    settled: true,
                    contested_since: None,
                    empty_since: None,
                });
            }
        }
        me
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The settings.
    pub fn config(&self) -> &NodeSubnetConfig {
        &self.config
    }

    /// Every held block, pending ones included.
    pub fn held(&self) -> &[HeldBlock] {
        &self.held
    }

    /// What this node publishes as its pod CIDRs: every held block, sorted.
    pub fn blocks(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = self.held.iter().map(|h| h.block).collect();
        out.sort();
        out
    }

    /// The blocks pods may take addresses from (settled), sorted.
    pub fn usable(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = self
            .held
            .iter()
            .filter(|h| h.settled)
            .map(|h| h.block)
            .collect();
        out.sort();
        out
    }

    /// One decision round (see the module docs for the rules).
    pub fn step(&mut self, seen: &Observed<'_>) -> Step {
        let mut step = Step::default();
        self.resolve_conflicts(seen, &mut step);
        self.settle(seen.now, &mut step);
        for range in self.config.ranges.clone() {
            self.release_empty(range, seen, &mut step);
            self.claim_if_full(range, seen, &mut step);
        }
        step
    }

    fn pods_in(block: &IpNet, in_use: &[IpAddr]) -> usize {
        in_use.iter().filter(|a| block.contains(*a)).count()
    }

    fn resolve_conflicts(&mut self, seen: &Observed<'_>, step: &mut Step) {
        let settle = self.config.settle;
        let me = self.node.clone();
        let mut keep = Vec::with_capacity(self.held.len());
        for mut h in std::mem::take(&mut self.held) {
            let rival = seen
                .others
                .iter()
                .filter(|(name, _)| name.as_str() != me)
                .filter(|(_, blocks)| blocks.iter().any(|b| overlaps(b, &h.block)))
                .map(|(name, _)| name.clone())
                .min();
            let Some(rival) = rival else {
                h.contested_since = None;
                keep.push(h);
                continue;
            };
            let since = *h.contested_since.get_or_insert(seen.now);
            let pods = Self::pods_in(&h.block, seen.in_use);
            let smaller = rival < me;
            let yields = if h.settled {
                smaller && pods == 0
            } else {
                smaller || seen.now.saturating_sub(since) >= settle
            };
            if yields {
                step.changes.push(Change::Yielded {
                    block: h.block,
                    to: rival,
                });
                continue;
            }
            if h.settled && pods > 0 && smaller {
                step.problems.push(NodeSubnetError::ContestedWithPods {
                    block: h.block,
                    other: rival,
                    pods,
                });
            }
            keep.push(h);
        }
        self.held = keep;
    }

    fn settle(&mut self, now: Duration, step: &mut Step) {
        for h in &mut self.held {
            let due = now.saturating_sub(h.claimed_at) >= self.config.settle;
            if !h.settled && h.contested_since.is_none() && due {
                h.settled = true;
                step.changes.push(Change::Settled(h.block));
            }
        }
    }

    /// Free addresses of the held blocks of `range` (pending ones included).
    fn free_in(&self, range: &IpNet, in_use: &[IpAddr]) -> u128 {
        self.held
            .iter()
            .filter(|h| range.contains(&h.block))
            .map(|h| usable(h.block).saturating_sub(Self::pods_in(&h.block, in_use) as u128))
            .sum()
    }

    fn release_empty(&mut self, range: IpNet, seen: &Observed<'_>, step: &mut Step) {
        for h in self.held.iter_mut().filter(|h| range.contains(&h.block)) {
            if Self::pods_in(&h.block, seen.in_use) == 0 {
                h.empty_since.get_or_insert(seen.now);
            } else {
                h.empty_since = None;
            }
        }
        let grace = self.config.release_grace;
        let due: Vec<IpNet> = self
            .held
            .iter()
            .filter(|h| h.settled && range.contains(&h.block))
            .filter(|h| {
                h.empty_since
                    .is_some_and(|since| seen.now.saturating_sub(since) >= grace)
            })
            .map(|h| h.block)
            .collect();
        for block in due {
            let left = self.free_in(&range, seen.in_use) - usable(block);
            if left >= self.config.headroom {
                self.held.retain(|h| h.block != block);
                step.changes.push(Change::Released(block));
            }
        }
    }

    fn claim_if_full(&mut self, range: IpNet, seen: &Observed<'_>, step: &mut Step) {
        let mine: Vec<&HeldBlock> = self
            .held
            .iter()
            .filter(|h| range.contains(&h.block))
            .collect();
        let pending = mine.iter().any(|h| !h.settled);
        if pending || self.free_in(&range, seen.in_use) >= self.config.headroom {
            return;
        }
        if mine.len() >= MAX_BLOCKS_PER_FAMILY {
            step.problems.push(NodeSubnetError::AtCap { range });
            return;
        }
        let taken: Vec<IpNet> = seen
            .others
            .iter()
            .filter(|(name, _)| name.as_str() != self.node)
            .flat_map(|(_, blocks)| blocks.iter().copied())
            .chain(self.held.iter().map(|h| h.block))
            .collect();
        let block = self.config.block_of(&range);
        match choose_block(range, block, &taken, seen.node_addresses, &self.node) {
            Ok(b) => {
                self.held.push(HeldBlock {
                    block: b,
                    claimed_at: seen.now,
                    settled: false,
                    contested_since: None,
                    empty_since: None,
                });
                step.changes.push(Change::Claimed(b));
            }
            Err(e) => step.problems.push(e),
        }
    }
}

#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;
