//! Record trust in the daemon: the flags that complete the cluster's address plan, the policy
//! records are checked against ([`keyexchange::trust`] decides), and the memory of accepted
//! claims kept in the state directory, so that a restarted meshd still knows which holder of
//! a contested claim was there first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args;
use ipnet::IpNet;
use keyexchange::trust::{Established, Refusal, TrustPolicy};

use super::args::DaemonArgs;
use crate::statefile;

/// The file in the state directory holding the accepted claims.
pub const ESTABLISHED_FILE: &str = "established-records.json";

/// Record trust's flags.
#[derive(Debug, Clone, Default, Args)]
pub struct TrustArgs {
    /// The cluster's Service ranges (repeatable, both families): no node's pod CIDR may
    /// overlap one and no node's endpoint may lie in one; such a record is refused. Also
    /// comma-separated.
    #[arg(long = "service-cidr", value_delimiter = ',')]
    pub service_cidrs: Vec<IpNet>,
}

/// A persisted memory that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Reading the file failed (other than its absence).
    #[error("reading the accepted-records memory {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a memory this meshd wrote.
    #[error("the accepted-records memory {} is not valid", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the file failed.
    #[error("writing the accepted-records memory {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The policy records are checked against: the cluster pools are `--cluster-cidr` and
/// `--pod-cidr-pool` together (none given: pod CIDRs are held to the other rules only), the
/// service ranges `--service-cidr`, the node-subnet pod ranges `--pod-range-v4/-v6` with
/// `--ipam node-subnet`.
pub fn policy(args: &DaemonArgs) -> TrustPolicy {
    let pools: BTreeSet<IpNet> = args
        .cluster_cidrs
        .iter()
        .chain(&args.pool.pod_cidr_pools)
        .map(IpNet::trunc)
        .collect();
    TrustPolicy {
        cluster_pools: pools.into_iter().collect(),
        service_ranges: args.trust.service_cidrs.iter().map(IpNet::trunc).collect(),
        node_subnets: args.node_subnet.ranges(),
    }
}

/// The memory in `state_dir`; empty when there is none yet.
pub fn load(state_dir: &Path) -> Result<Established, MemoryError> {
    let path = state_dir.join(ESTABLISHED_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| MemoryError::Parse { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Established::default()),
        Err(source) => Err(MemoryError::Read { path, source }),
    }
}

/// Replace the memory in `state_dir` (crash-safe, mode 0600).
pub fn save(state_dir: &Path, established: &Established) -> Result<(), MemoryError> {
    let path = state_dir.join(ESTABLISHED_FILE);
    let body = serde_json::to_vec(established)
        .unwrap_or_else(|e| unreachable!("serialising the memory cannot fail: {e}"));
    statefile::write_atomic(&path, &body, 0o600)
        .map_err(|source| MemoryError::Write { path, source })
}

/// [`save`] off the loop, by a blocking task (at 5,000 nodes the write took up to tens of
/// milliseconds that the next pass and the served status waited for). Writes land in order:
/// an older memory never replaces a newer one.
pub fn save_in_background(state_dir: &Path, established: &Established) {
    static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static WRITTEN: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let state_dir = state_dir.to_path_buf();
    let established = established.clone();
    let issued = ISSUED.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
    tokio::task::spawn_blocking(move || {
        let mut written = WRITTEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *written > issued {
            return;
        }
        match save(&state_dir, &established) {
            Ok(()) => *written = issued,
            Err(err) => {
                tracing::warn!(error = %err, "the accepted records are not remembered across a restart");
            }
        }
    });
}

/// Refusals not reported before (each is logged once, when it appears).
pub fn new_refusals<'a>(now: &'a [Refusal], before: &'a [Refusal]) -> Vec<&'a Refusal> {
    now.iter().filter(|r| !before.contains(r)).collect()
}

/// `established` built again in fresh blocks (each node's name and claims allocated anew,
/// the map from its sorted entries): called once the pass that built it among its transient
/// data is over. Contents unchanged.
pub fn compact(established: &mut Established) {
    established.nodes = established
        .nodes
        .iter()
        .map(|(node, claims)| (node.clone(), claims.clone()))
        .collect();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyexchange::trust::Claims;

    #[test]
    fn the_memory_survives_a_restart_and_a_missing_or_corrupt_file_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Established::default());
        let mut memory = Established::default();
        memory.nodes.insert(
            "n2".into(),
            Claims {
                pod_cidrs: ["10.244.2.0/24".parse().unwrap()].into_iter().collect(),
                ..Claims::default()
            },
        );
        save(dir.path(), &memory).unwrap();
        assert_eq!(load(dir.path()).unwrap(), memory);
        std::fs::write(dir.path().join(ESTABLISHED_FILE), b"{garbage").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, MemoryError::Parse { .. }), "{err}");
        assert!(err.to_string().contains(ESTABLISHED_FILE), "{err}");
    }

    #[test]
    fn pools_are_the_cluster_cidrs_and_the_ipam_pools_together() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            daemon: DaemonArgs,
        }
        let cli = Cli::parse_from([
            "meshd",
            "--node-name",
            "n1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--pod-cidr-pool",
            "fd00:244::/48",
            "--service-cidr",
            "10.96.0.0/12",
        ]);
        let p = policy(&cli.daemon);
        assert_eq!(
            p.cluster_pools,
            vec![
                "10.244.0.0/16".parse::<IpNet>().unwrap(),
                "fd00:244::/48".parse().unwrap()
            ]
        );
        assert_eq!(p.service_ranges, vec!["10.96.0.0/12".parse().unwrap()]);
    }
}
