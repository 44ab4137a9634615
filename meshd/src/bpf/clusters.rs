//! The guard's cluster map: the configured cluster CIDRs and the learned ones (peers' pod
//! CIDRs, kept after the peer is gone), what strict mode drops cleartext to. The pure plans
//! ([`cluster_plan`], [`learn_plan`]) decide; [`Bpf`] carries them out.

use std::collections::{BTreeMap, BTreeSet};

use ebpf_redirect::{ClusterMarker, CLUSTER_CONFIGURED, CLUSTER_LEARNED};
use ipnet::IpNet;

use super::{map_err, Bpf, BpfError};

impl Bpf {
    fn cluster_entries(&self) -> Result<BTreeMap<IpNet, ClusterMarker>, BpfError> {
        Ok(self
            .dp
            .cluster_entries()
            .map_err(map_err("reading cluster CIDRs"))?
            .into_iter()
            .collect())
    }

    fn set_clusters(&mut self, set: Vec<(IpNet, ClusterMarker)>) -> Result<(), BpfError> {
        for (cidr, marker) in set {
            self.dp
                .set_cluster_marked(cidr, marker)
                .map_err(map_err(format!("adding cluster CIDR {cidr}")))?;
        }
        Ok(())
    }

    /// Bring the configured cluster CIDRs to `clusters`; learned ones stay (see
    /// [`cluster_plan`]).
    pub(super) fn sync_clusters(&mut self, clusters: &[IpNet]) -> Result<(), BpfError> {
        let configured: BTreeSet<IpNet> = clusters.iter().map(IpNet::trunc).collect();
        let (remove, set) = cluster_plan(&configured, &self.cluster_entries()?);
        self.set_clusters(set)?;
        for cidr in remove {
            self.dp
                .remove_cluster(cidr)
                .map_err(map_err(format!("removing cluster CIDR {cidr}")))?;
        }
        Ok(())
    }

    /// The CIDRs in the guard's cluster map (configured and learned).
    pub fn cluster_cidrs(&self) -> Result<BTreeSet<IpNet>, BpfError> {
        Ok(self.cluster_entries()?.into_keys().collect())
    }

    /// The guard's cluster map, each CIDR with whether it was learned (a peer's pod CIDR)
    /// rather than configured.
    pub fn cluster_learned(&self) -> Result<BTreeMap<IpNet, bool>, BpfError> {
        Ok(self
            .cluster_entries()?
            .into_iter()
            .map(|(c, m)| (c, m == CLUSTER_LEARNED))
            .collect())
    }

    /// Remove `cidr` from the guard's cluster map (an absent one is not an error).
    pub fn unguard_cidr(&mut self, cidr: IpNet) -> Result<(), BpfError> {
        self.dp
            .remove_cluster(cidr)
            .map_err(map_err(format!("removing cluster CIDR {cidr}")))
    }

    /// Guard `cidr` (a peer's pod CIDR) from now on, for as long as the pinned maps live: once
    /// its peer is gone, its traffic is dropped, not sent in clear, even where
    /// `--cluster-cidr` does not cover it (it is removed only once no record claims it and a
    /// configured cluster CIDR covers it: `controller::guard::prunable`). A CIDR already
    /// there is left as it is.
    /// One map update whatever the map holds (not a read of the whole map per CIDR: at
    /// thousands of peers that made a pass quadratic).
    pub fn guard_cidr(&mut self, cidr: IpNet) -> Result<(), BpfError> {
        self.dp
            .learn_cluster(cidr)
            .map_err(map_err(format!("adding cluster CIDR {cidr}")))?;
        Ok(())
    }
}

/// What to do to the cluster map for the configured CIDRs `configured`, given what it holds:
/// configured entries no longer configured go; learned entries stay (a peer's pod CIDR stays
/// guarded after the peer is gone); configured CIDRs are set, re-marked configured if they
/// were learned. Returns (remove, set).
pub fn cluster_plan(
    configured: &BTreeSet<IpNet>,
    present: &BTreeMap<IpNet, ClusterMarker>,
) -> (Vec<IpNet>, Vec<(IpNet, ClusterMarker)>) {
    let remove = present
        .iter()
        .filter(|(c, m)| **m != CLUSTER_LEARNED && !configured.contains(*c))
        .map(|(c, _)| *c)
        .collect();
    let set = configured
        .iter()
        .filter(|c| present.get(*c) != Some(&CLUSTER_CONFIGURED))
        .map(|c| (*c, CLUSTER_CONFIGURED))
        .collect();
    (remove, set)
}

/// The learned entries to add so that every CIDR of `cidrs` is in the cluster map (a CIDR
/// already there, configured or learned, is left as it is).
pub fn learn_plan<'a>(
    cidrs: impl IntoIterator<Item = &'a IpNet>,
    present: &BTreeMap<IpNet, ClusterMarker>,
) -> Vec<(IpNet, ClusterMarker)> {
    cidrs
        .into_iter()
        .map(IpNet::trunc)
        .filter(|c| !present.contains_key(c))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|c| (c, CLUSTER_LEARNED))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn configured_cluster_cidrs_follow_the_configuration_and_learned_ones_stay() {
        let present: BTreeMap<IpNet, ClusterMarker> = [
            (net("10.244.0.0/16"), CLUSTER_CONFIGURED),
            (net("10.96.0.0/12"), CLUSTER_CONFIGURED),
            (net("10.245.3.0/24"), CLUSTER_LEARNED),
            (net("fd00:244:0:3::/64"), CLUSTER_LEARNED),
        ]
        .into();
        let configured: BTreeSet<IpNet> = [
            net("10.244.0.0/16"),
            net("fd00:244:0:3::/64"),
            net("fd00:245::/48"),
        ]
        .into();
        let (remove, set) = cluster_plan(&configured, &present);
        assert_eq!(
            remove,
            vec![net("10.96.0.0/12")],
            "only the unconfigured configured one"
        );
        assert_eq!(
            set,
            vec![
                (net("fd00:244:0:3::/64"), CLUSTER_CONFIGURED),
                (net("fd00:245::/48"), CLUSTER_CONFIGURED),
            ],
            "new configured CIDRs, and a learned one re-marked"
        );
        let after: BTreeMap<IpNet, ClusterMarker> = [
            (net("10.244.0.0/16"), CLUSTER_CONFIGURED),
            (net("10.245.3.0/24"), CLUSTER_LEARNED),
            (net("fd00:244:0:3::/64"), CLUSTER_CONFIGURED),
            (net("fd00:245::/48"), CLUSTER_CONFIGURED),
        ]
        .into();
        assert_eq!(
            cluster_plan(&configured, &after),
            (vec![], vec![]),
            "in step"
        );
        // Nothing configured: the learned entries are still the guard.
        let (remove, set) = cluster_plan(&BTreeSet::new(), &after);
        assert_eq!(
            remove,
            vec![
                net("10.244.0.0/16"),
                net("fd00:244:0:3::/64"),
                net("fd00:245::/48")
            ]
        );
        assert!(set.is_empty());
    }

    #[test]
    fn peers_pod_cidrs_are_learned_once_and_never_over_a_configured_entry() {
        let present: BTreeMap<IpNet, ClusterMarker> = [
            (net("10.244.1.0/24"), CLUSTER_CONFIGURED),
            (net("10.244.2.0/24"), CLUSTER_LEARNED),
        ]
        .into();
        let remotes = [
            net("10.244.1.0/24"),
            net("10.244.2.0/24"),
            net("10.244.3.7/24"),
            net("fd00:244:0:3::/64"),
        ];
        assert_eq!(
            learn_plan(&remotes, &present),
            vec![
                (net("10.244.3.0/24"), CLUSTER_LEARNED),
                (net("fd00:244:0:3::/64"), CLUSTER_LEARNED),
            ]
        );
        assert!(learn_plan(&remotes[..2], &present).is_empty());
    }
}
