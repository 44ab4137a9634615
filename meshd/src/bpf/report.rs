//! What the datapath reports: the verdict counters and the datapath's part of
//! `meshctl status` ([`DatapathReport`], a JSON contract: fields are only ever added).

use ebpf_redirect::{Mode, Verdict};
use serde::{Deserialize, Serialize};

use super::{map_err, Bpf, BpfError};

/// The verdict counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictCounters {
    /// Pod packets redirected into the tunnel.
    pub redirected: u64,
    /// Pod packets to a local pod, left to the kernel.
    pub local: u64,
    /// Pod packets to anything else, passed to the stack.
    pub passed: u64,
    /// Cluster packets dropped at the underlay by strict mode.
    pub strict_drops: u64,
    /// Cluster packets strict mode would have dropped (permissive).
    pub would_drops: u64,
    /// Pod packets dropped by `from_pod` because their source is not the pod's address on
    /// that interface (absent from an older meshd's report: 0).
    #[serde(default)]
    pub spoofed: u64,
    /// Pod packets dropped by the sending pod's egress policy.
    #[serde(default)]
    pub policy_denied_egress: u64,
    /// Packets dropped by the receiving pod's ingress policy.
    #[serde(default)]
    pub policy_denied_ingress: u64,
}

impl From<[u64; ebpf_redirect::VERDICT_COUNT as usize]> for VerdictCounters {
    fn from(c: [u64; ebpf_redirect::VERDICT_COUNT as usize]) -> Self {
        VerdictCounters {
            redirected: c[Verdict::Redirect as usize],
            local: c[Verdict::Local as usize],
            passed: c[Verdict::Pass as usize],
            strict_drops: c[Verdict::StrictDrop as usize],
            would_drops: c[Verdict::WouldDrop as usize],
            spoofed: c[Verdict::Spoofed as usize],
            policy_denied_egress: c[Verdict::PolicyDeniedEgress as usize],
            policy_denied_ingress: c[Verdict::PolicyDeniedIngress as usize],
        }
    }
}

/// The datapath as `meshctl status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatapathReport {
    /// bpffs directory holding the pins.
    pub pin_dir: String,
    /// `enforce` (strict drops) or `permissive` (would-drops only).
    #[serde(with = "crate::mode::underlay_mode_name")]
    pub underlay_mode: Mode,
    /// The underlay interface carrying `underlay_egress`.
    pub underlay_interface: String,
    /// Whether `underlay_egress` is attached to every guarded interface right now (`None`:
    /// the kernel cannot say).
    pub underlay_attached: Option<bool>,
    /// Every interface carrying `underlay_egress`: the underlay, `--guard-interface`s and
    /// the interfaces holding a default route.
    #[serde(default)]
    pub guarded_interfaces: Vec<String>,
    /// `tcx` (kernel >= 6.6, pinned links) or `netlink` (clsact filters).
    pub attach: crate::mode::Attachment,
    /// Remote pod CIDRs redirected into the tunnel.
    pub remote_cidrs: Vec<String>,
    /// Cluster CIDRs strict mode guards.
    pub cluster_cidrs: Vec<String>,
    /// Local pod addresses.
    pub local_pods: usize,
    /// Pod interfaces carrying `from_pod`.
    pub pod_interfaces: usize,
    /// Entries of the source map: (pod veth, address) pairs `from_pod` lets through.
    #[serde(default)]
    pub pod_sources: usize,
    /// Verdict counters.
    pub counters: VerdictCounters,
}

impl Bpf {
    /// The verdict counters.
    pub fn counters(&self) -> Result<VerdictCounters, BpfError> {
        Ok(self
            .dp
            .counters()
            .map_err(map_err("reading counters"))?
            .into())
    }

    /// The datapath for `meshctl status`.
    pub fn report(&self) -> Result<DatapathReport, BpfError> {
        let mut remote_cidrs: Vec<String> = self
            .dp
            .remotes()
            .map_err(map_err("reading remote CIDRs"))?
            .into_iter()
            .map(|(c, _)| c.to_string())
            .collect();
        remote_cidrs.sort();
        let mut cluster_cidrs: Vec<String> = self
            .dp
            .clusters()
            .map_err(map_err("reading cluster CIDRs"))?
            .into_iter()
            .map(|c| c.to_string())
            .collect();
        cluster_cidrs.sort();
        Ok(DatapathReport {
            pin_dir: self.dp.pin_dir().display().to_string(),
            underlay_mode: self.mode,
            underlay_interface: self.underlay.clone(),
            underlay_attached: std::iter::once(&self.underlay)
                .chain(&self.guarded)
                .map(|i| self.dp.underlay_egress_attached(i).unwrap_or(None))
                .try_fold(true, |all, a| a.map(|a| all && a)),
            guarded_interfaces: std::iter::once(&self.underlay)
                .chain(&self.guarded)
                .cloned()
                .collect(),
            attach: crate::mode::Attachment::of_this_kernel(),
            remote_cidrs,
            cluster_cidrs,
            local_pods: self
                .dp
                .locals()
                .map_err(map_err("reading local pods"))?
                .len(),
            pod_interfaces: self.pods.len(),
            pod_sources: self
                .dp
                .sources()
                .map_err(map_err("reading the source map"))?
                .len(),
            counters: self.counters()?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counters_map_by_verdict_index() {
        let c = VerdictCounters::from([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            (c.spoofed, c.policy_denied_egress, c.policy_denied_ingress),
            (6, 7, 8)
        );
        let json = serde_json::to_value(c).unwrap();
        for (name, value) in [
            ("spoofed", 6),
            ("policy_denied_egress", 7),
            ("policy_denied_ingress", 8),
        ] {
            assert_eq!(json[name], value, "{name}");
        }
        // An older meshd's report (five counters) still reads.
        let old: VerdictCounters = serde_json::from_str(
            r#"{"redirected":1,"local":2,"passed":3,"strict_drops":4,"would_drops":5}"#,
        )
        .unwrap();
        assert_eq!((old.would_drops, old.spoofed), (5, 0));
        assert_eq!(
            (
                c.redirected,
                c.local,
                c.passed,
                c.strict_drops,
                c.would_drops
            ),
            (1, 2, 3, 4, 5)
        );
    }
}
