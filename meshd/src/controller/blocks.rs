//! `node-subnet` IPAM in the daemon: this node's blocks of the node subnet follow its pods.
//! The decisions are [`crate::node_subnet`]'s (pure); this module feeds them what the loop
//! knows (the other nodes' records, every node's addresses, the IPAM store's addresses) before
//! each pass and on the status tick, publishes the blocks as this node's pod CIDRs, keeps them
//! in the state directory across restarts, and gives the CNI configuration the settled ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ipnet::IpNet;
use keyexchange::NodeRecord;

use super::args::{DaemonArgs, IpamMode};
use super::context::Context;
use super::state::State;
use crate::node_subnet::{Allocator, Change, Observed};

/// How long a fresh claim is watched for a competing one before pods may use it (longer than
/// the registry takes to show a record to every node).
pub(super) const SETTLE: Duration = Duration::from_millis(1500);
/// Where the held blocks are kept across restarts.
const BLOCKS_FILE: &str = "node-subnet-blocks.json";

/// This node's blocks and the allocator deciding them.
#[derive(Debug)]
pub(super) struct Blocks {
    alloc: Allocator,
    epoch: Instant,
    state_dir: PathBuf,
    /// The blocks put in the guard's cluster map by this meshd.
    guarded: BTreeSet<IpNet>,
}

/// What a step changed.
#[derive(Debug, Default)]
pub(super) struct Followed {
    /// The blocks to publish, when they changed.
    pub publish: Option<Vec<IpNet>>,
    /// When to step again (a pending claim settles, an empty block's grace ends).
    pub again_at: Option<Instant>,
}

fn read_blocks(state_dir: &Path) -> Vec<IpNet> {
    std::fs::read_to_string(state_dir.join(BLOCKS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<IpNet>>(&t).ok())
        .unwrap_or_default()
}

fn write_blocks(state_dir: &Path, blocks: &[IpNet]) -> anyhow::Result<()> {
    let path = state_dir.join(BLOCKS_FILE);
    let body = serde_json::to_vec(blocks).context("encoding the blocks")?;
    std::fs::create_dir_all(state_dir)?;
    crate::statefile::write_atomic(&path, &body, 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

impl Blocks {
    /// With `--ipam node-subnet`: the allocator, resuming the blocks kept in the state
    /// directory (`None` in any other mode). Refuses a configuration without a range or with
    /// blocks that do not fit.
    pub(super) fn start(args: &DaemonArgs) -> anyhow::Result<Option<Self>> {
        if args.node_subnet.ipam != IpamMode::NodeSubnet {
            return Ok(None);
        }
        let config = args.node_subnet.config(SETTLE);
        if config.ranges.is_empty() {
            bail!("--ipam node-subnet needs --pod-range-v4 and/or --pod-range-v6");
        }
        if !args.pod_cidrs.is_empty() || !args.pool.pod_cidr_pools.is_empty() {
            bail!("--ipam node-subnet claims this node's pod addresses itself: drop --pod-cidr and --pod-cidr-pool");
        }
        config
            .validate()
            .context("the node-subnet pod ranges and block sizes")?;
        let kept = read_blocks(&args.state_dir);
        let alloc = Allocator::resume(args.node_name.clone(), config, &kept, Duration::ZERO);
        tracing::info!(blocks = ?alloc.blocks(), "node-subnet IPAM: blocks resumed");
        Ok(Some(Self {
            alloc,
            epoch: Instant::now(),
            state_dir: args.state_dir.clone(),
            guarded: BTreeSet::new(),
        }))
    }

    /// Every held block (what this node publishes as its pod CIDRs).
    pub(super) fn held(&self) -> Vec<IpNet> {
        self.alloc.blocks()
    }

    /// The settled blocks (what the CNI allocates from).
    pub(super) fn usable(&self) -> Vec<IpNet> {
        self.alloc.usable()
    }

    /// One step over `records` (this node's own, named `me`, is left out) and `pods` (the
    /// addresses of the IPAM store).
    pub(super) fn follow(
        &mut self,
        me: &str,
        records: &BTreeMap<String, NodeRecord>,
        pods: &[IpAddr],
    ) -> Followed {
        let now = self.epoch.elapsed();
        let others: BTreeMap<String, Vec<IpNet>> = records
            .iter()
            .filter(|(name, _)| name.as_str() != me)
            .map(|(name, r)| (name.clone(), r.pod_cidrs.clone()))
            .collect();
        let addresses: Vec<IpAddr> = records
            .values()
            .flat_map(|r| r.endpoints.iter().map(IpAddr::to_canonical))
            .collect();
        let before = self.alloc.blocks();
        let step = self.alloc.step(&Observed {
            now,
            others: &others,
            node_addresses: &addresses,
            in_use: pods,
        });
        for change in &step.changes {
            match change {
                Change::Claimed(b) => tracing::info!(block = %b, "node-subnet: block claimed"),
                Change::Settled(b) => tracing::info!(block = %b, "node-subnet: block settled"),
                Change::Released(b) => {
                    tracing::info!(block = %b, "node-subnet: empty block released")
                }
                Change::Yielded { block, to } => {
                    tracing::warn!(%block, node = %to, "node-subnet: block yielded to another node's claim")
                }
            }
        }
        for problem in &step.problems {
            tracing::warn!(error = %problem, "node-subnet IPAM");
        }
        let after = self.alloc.blocks();
        let mut followed = Followed::default();
        if after != before {
            if let Err(err) = write_blocks(&self.state_dir, &after) {
                tracing::warn!(error = %format!("{err:#}"), "keeping the node-subnet blocks failed");
            }
            followed.publish = Some(after);
        }
        // Only moments still ahead: a block kept empty for the headroom, or a pending one in
        // a contest, is looked at again on the status tick, not in a loop of passes.
        let config = self.alloc.config();
        followed.again_at = self
            .alloc
            .held()
            .iter()
            .filter_map(|h| {
                if !h.settled {
                    Some(h.claimed_at + config.settle)
                } else {
                    h.empty_since.map(|since| since + config.release_grace)
                }
            })
            .filter(|at| *at > now)
            .min()
            .map(|at| self.epoch + at);
        followed
    }
}

/// Before a pass and on the status tick: step the blocks over the registry and the IPAM
/// store; a block held is put in the guard's cluster map before any pod can use it, and a
/// change of the blocks goes into this node's record (to be published). Returns whether the
/// record changed, and when to step again.
pub(super) async fn follow_blocks(ctx: &Context, state: &mut State) -> (bool, Option<Instant>) {
    let Some(blocks) = &ctx.blocks else {
        return (false, None);
    };
    if !state.registry.synced {
        // Never claim against a partial view of the other nodes' blocks.
        return (false, None);
    }
    let pods = store_addresses(&ctx.args.state_dir);
    let me = ctx.me().name;
    let (followed, unguarded) = {
        let mut blocks = blocks.lock().unwrap_or_else(PoisonError::into_inner);
        let followed = blocks.follow(&me, &state.registry.records, &pods);
        let unguarded: Vec<IpNet> = blocks
            .held()
            .into_iter()
            .filter(|b| !blocks.guarded.contains(b))
            .collect();
        (followed, unguarded)
    };
    if !unguarded.is_empty() {
        let mut bpf = ctx.bpf.lock().await;
        for block in unguarded {
            match bpf.guard_cidr(block) {
                Ok(()) => {
                    blocks
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .guarded
                        .insert(block);
                }
                Err(err) => {
                    tracing::warn!(%block, error = %err, "guarding a node-subnet block failed")
                }
            }
        }
    }
    let Some(held) = followed.publish else {
        return (false, followed.again_at);
    };
    ctx.update_me(|r| r.pod_cidrs = held);
    state.registry.records.insert(me, ctx.me());
    state.republish = true;
    (true, followed.again_at)
}

/// The CNI configuration with `node-subnet` blocks: the settled ones, `None` while there is
/// none yet (the node takes no pods before it has a block).
pub(super) fn cni_blocks(ctx: &Context) -> Option<Option<Vec<IpNet>>> {
    let blocks = ctx.blocks.as_ref()?;
    let usable = blocks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .usable();
    Some((!usable.is_empty()).then_some(usable))
}

/// The IPAM store's addresses (none when there is no store yet).
pub(super) fn store_addresses(state_dir: &Path) -> Vec<IpAddr> {
    let dir = super::pods::ipam_dir(state_dir);
    if !dir.exists() {
        return Vec::new();
    }
    match meshd_cni::ipam::Ipam::open(&dir, &[]).and_then(|i| i.list()) {
        Ok(entries) => entries.into_iter().map(|e| e.address).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "reading the IPAM store for node-subnet IPAM failed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;
    use keyexchange::PrivateKey;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        daemon: DaemonArgs,
    }

    fn args(state: &Path, extra: &[&str]) -> DaemonArgs {
        let state = state.to_string_lossy();
        let mut argv = vec!["meshd", "--node-name", "n1", "--state-dir", &state];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).daemon
    }

    fn record(name: &str, key: u8, endpoint: &str, blocks: &[IpNet]) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            public_key: PrivateKey::from_bytes([key; 32]).public_key(),
            listen_port: 51820,
            endpoints: vec![endpoint.parse().unwrap()],
            pod_cidrs: blocks.to_vec(),
            rotation: Default::default(),
        }
    }

    #[test]
    fn blocks_are_claimed_around_node_addresses_kept_across_restarts_and_misconfigurations_refused()
    {
        let dir = tempfile::tempdir().unwrap();
        assert!(Blocks::start(&args(dir.path(), &[])).unwrap().is_none());
        let err = Blocks::start(&args(dir.path(), &["--ipam", "node-subnet"])).unwrap_err();
        assert!(err.to_string().contains("--pod-range-v4"), "{err}");
        let flags = [
            "--ipam",
            "node-subnet",
            "--pod-range-v4",
            "192.168.10.0/26",
            "--pod-block-v4",
            "28",
        ];
        let mut blocks = Blocks::start(&args(dir.path(), &flags)).unwrap().unwrap();
        // Node addresses sit in three of the four /28s: the claim takes the fourth.
        let other = net("192.168.10.0/28");
        let records = BTreeMap::from([
            ("n1".to_string(), record("n1", 1, "192.168.10.20", &[])),
            ("n2".to_string(), record("n2", 2, "192.168.10.40", &[other])),
        ]);
        let first = blocks.follow("n1", &records, &[]);
        assert_eq!(first.publish, Some(vec![net("192.168.10.48/28")]));
        assert!(blocks.usable().is_empty());
        assert!(first.again_at.is_some());
        std::thread::sleep(SETTLE);
        let settled = blocks.follow("n1", &records, &[]);
        assert_eq!(settled.publish, None);
        assert_eq!(blocks.usable(), vec![net("192.168.10.48/28")]);
        // Its only block stays although empty (the headroom): no step is due before the
        // grace period ends, and none at all once it has.
        let due = settled.again_at.unwrap();
        assert!(due > Instant::now() + Duration::from_secs(50), "{due:?}");
        blocks.epoch -= Duration::from_secs(120);
        let kept = blocks.follow("n1", &records, &[]);
        assert_eq!((kept.publish, kept.again_at), (None, None));
        // A restart resumes the kept block, settled.
        let again = Blocks::start(&args(dir.path(), &flags)).unwrap().unwrap();
        assert_eq!(again.usable(), vec![net("192.168.10.48/28")]);
        assert_eq!(again.held(), again.usable());
        // Blocks too small for a full node are refused at start, and so is a pod CIDR of
        // another mode given with it.
        let tiny = [&flags[..4], &["--pod-block-v4", "30"]].concat();
        assert!(Blocks::start(&args(dir.path(), &tiny)).is_err());
        let mixed = [&flags[..], &["--pod-cidr", "10.244.1.0/24"]].concat();
        let err = Blocks::start(&args(dir.path(), &mixed)).unwrap_err();
        assert!(err.to_string().contains("--pod-cidr"), "{err}");
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
}
