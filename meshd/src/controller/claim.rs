//! `cluster-pool` IPAM: this node claims its pod CIDRs out of the cluster's pools, without
//! conflict through the registry, and keeps the claim in the state directory.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::registry::{Registry, RegistryEvent};
use anyhow::{bail, Context as _};
use ipnet::IpNet;
use keyexchange::NodeRecord;
use tokio::sync::mpsc;

use super::args::DaemonArgs;
use crate::pod_cidr_pool as pool;

/// Where a cluster-pool claim is kept across restarts.
const CLAIM_FILE: &str = "pod-cidrs.json";
/// How long a fresh claim is watched for a competing one before it is used.
const CLAIM_SETTLE: Duration = Duration::from_millis(1500);

fn read_claim(state_dir: &std::path::Path) -> Vec<IpNet> {
    std::fs::read_to_string(state_dir.join(CLAIM_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["podCIDRs"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str()?.parse().ok()).collect())
        })
        .unwrap_or_default()
}

fn write_claim(state_dir: &std::path::Path, cidrs: &[IpNet]) -> anyhow::Result<()> {
    let path = state_dir.join(CLAIM_FILE);
    let body = serde_json::json!({ "podCIDRs": cidrs.iter().map(ToString::to_string).collect::<Vec<_>>() });
    std::fs::create_dir_all(state_dir)?;
    crate::statefile::write_atomic(&path, body.to_string().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Fold registry events into `records` (other nodes only), keeping them for the event loop.
fn absorb(
    me: &str,
    ev: RegistryEvent,
    records: &mut BTreeMap<String, NodeRecord>,
    initial: &mut Vec<RegistryEvent>,
) -> bool {
    let synced = matches!(ev, RegistryEvent::Synced);
    match &ev {
        RegistryEvent::Upsert(r) if r.name != me => {
            records.insert(r.name.clone(), r.clone());
        }
        RegistryEvent::Delete(n) => {
            records.remove(n);
        }
        _ => {}
    }
    initial.push(ev);
    synced
}

/// `cluster-pool`: claim one block per pool that no other node's record overlaps. The claim
/// is published, then watched for [`CLAIM_SETTLE`]; if another node claimed an overlapping
/// block meanwhile, the greater node name chooses again. A claim persisted in the state
/// directory is kept across restarts while it stays free.
pub(super) async fn claim_pod_cidrs<R: Registry>(
    args: &DaemonArgs,
    registry: &R,
    events: &mut mpsc::Receiver<RegistryEvent>,
    initial: &mut Vec<RegistryEvent>,
    me: &NodeRecord,
) -> anyhow::Result<Vec<IpNet>> {
    let mut records = BTreeMap::new();
    // The registry's complete state first: never choose against a partial view.
    loop {
        let ev = events.recv().await.context("registry watch ended")?;
        if absorb(&me.name, ev, &mut records, initial) {
            break;
        }
    }
    let mut keep = read_claim(&args.state_dir);
    for attempt in 1..=20 {
        let taken: Vec<IpNet> = records.values().flat_map(|r| r.pod_cidrs.clone()).collect();
        let mut claim = Vec::new();
        for p in &args.pool.pod_cidr_pools {
            let block = match p {
                IpNet::V4(_) => args.pool.pod_cidr_block_v4,
                IpNet::V6(_) => args.pool.pod_cidr_block_v6,
            };
            let prev = keep.iter().copied().find(|k| p.contains(&k.network()));
            claim.push(
                pool::choose_block(*p, block, &taken, prev, &me.name)
                    .with_context(|| format!("claiming a pod CIDR from pool {p}"))?,
            );
        }
        let mut record = me.clone();
        record.pod_cidrs = claim.clone();
        registry
            .publish(&record)
            .await
            .context("publishing this node's pod CIDR claim")?;
        write_claim(&args.state_dir, &claim)?;
        let settle = tokio::time::sleep(CLAIM_SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let ev = ev.context("registry watch ended")?;
                    absorb(&me.name, ev, &mut records, initial);
                }
                _ = &mut settle => break,
            }
        }
        let lost: Vec<&NodeRecord> = records
            .values()
            .filter(|r| {
                r.pod_cidrs.iter().any(|c| {
                    claim
                        .iter()
                        .any(|m| m.contains(&c.network()) || c.contains(&m.network()))
                })
            })
            .filter(|r| pool::loser(&me.name, &r.name) == me.name)
            .collect();
        if lost.is_empty() {
            tracing::info!(?claim, attempt, "pod CIDRs claimed from the cluster pool");
            return Ok(claim);
        }
        tracing::warn!(
            other = %lost[0].name,
            "another node claimed an overlapping pod CIDR; choosing again"
        );
        keep.clear();
    }
    bail!("could not claim a pod CIDR without conflict after 20 attempts")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::registry::DirRegistry;
    use clap::Parser;
    use keyexchange::PrivateKey;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        daemon: DaemonArgs,
    }

    fn args(name: &str, state: &std::path::Path) -> DaemonArgs {
        Cli::parse_from([
            "meshd",
            "--node-name",
            name,
            "--state-dir",
            &state.to_string_lossy(),
            "--pod-cidr-pool",
            "10.244.0.0/22",
            "--pod-cidr-pool",
            "fd00:244::/62",
        ])
        .daemon
    }

    fn record(name: &str, key: u8) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            public_key: PrivateKey::from_bytes([key; 32]).public_key(),
            listen_port: 51820,
            endpoints: vec![format!("198.18.0.{key}").parse().unwrap()],
            pod_cidrs: vec![],
            rotation: Default::default(),
        }
    }

    #[tokio::test]
    async fn two_nodes_claiming_the_same_block_at_once_end_up_with_different_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let registry_dir = dir.path().join("registry");
        let (s1, s2) = (dir.path().join("s1"), dir.path().join("s2"));
        // Both "remember" the same previous claim: the worst case of a simultaneous start.
        for s in [&s1, &s2] {
            write_claim(
                s,
                &[
                    "10.244.1.0/24".parse().unwrap(),
                    "fd00:244:0:1::/64".parse().unwrap(),
                ],
            )
            .unwrap();
        }
        let claim = |name: &'static str, key: u8, state: std::path::PathBuf| {
            let registry_dir = registry_dir.clone();
            tokio::spawn(async move {
                let registry = DirRegistry::new(registry_dir).unwrap();
                let mut events = registry.watch().unwrap();
                let mut initial = Vec::new();
                claim_pod_cidrs(
                    &args(name, &state),
                    &registry,
                    &mut events,
                    &mut initial,
                    &record(name, key),
                )
                .await
                .unwrap()
            })
        };
        let (a, b) = (claim("n1", 1, s1.clone()), claim("n2", 2, s2.clone()));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert_eq!(a.len(), 2);
        assert_eq!(b.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                !(x.contains(&y.network()) || y.contains(&x.network())),
                "{a:?} overlaps {b:?}"
            );
        }
        // The smaller name kept its claim; the claims are persisted.
        assert_eq!(a[0], "10.244.1.0/24".parse::<IpNet>().unwrap());
        assert_eq!(read_claim(&s1), a);
        assert_eq!(read_claim(&s2), b);
        // A restart keeps the claim while it is free.
        let registry = DirRegistry::new(registry_dir.clone()).unwrap();
        let mut events = registry.watch().unwrap();
        let again = claim_pod_cidrs(
            &args("n2", &s2),
            &registry,
            &mut events,
            &mut Vec::new(),
            &record("n2", 2),
        )
        .await
        .unwrap();
        assert_eq!(again, b);
    }
}
