//! The daemon's side of source validation and of `to_pod`: the source map (which addresses
//! each pod veth's pod may send from) and `to_pod` on the pods' host veths, one step at a
//! time as the controller's plan says (the CNI plugin does both on ADD; this is the backstop).

use std::collections::BTreeSet;

use ebpf_redirect::PodSource;

use super::{interface_exists, map_err, Bpf, BpfError};

/// The interfaces of `veths` that need no attachment of a pod program: gone, or attached by
/// this meshd (`mine`) and, as `attached` asks the kernel, still attached.
pub(super) fn attachments_done(
    veths: &BTreeSet<String>,
    mine: &BTreeSet<String>,
    attached: impl Fn(&str) -> Result<bool, ebpf_redirect::Error>,
) -> Result<BTreeSet<String>, BpfError> {
    let mut done = BTreeSet::new();
    for veth in veths {
        if !interface_exists(veth) {
            done.insert(veth.clone());
            continue;
        }
        let still = attached(veth).map_err(map_err(format!("querying {veth}")))?;
        if mine.contains(veth) && still {
            done.insert(veth.clone());
        }
    }
    Ok(done)
}

impl Bpf {
    /// The source map now.
    pub fn pod_sources(&self) -> Result<BTreeSet<PodSource>, BpfError> {
        Ok(self
            .dp
            .sources()
            .map_err(map_err("reading the source map"))?
            .into_iter()
            .collect())
    }

    /// Let the pod behind host veth `source.ifindex` send from `source.addr`.
    pub fn add_source(&mut self, source: PodSource) -> Result<(), BpfError> {
        self.dp.add_source(source).map_err(map_err(format!(
            "adding source {} on ifindex {}",
            source.addr, source.ifindex
        )))
    }

    /// Remove a source-map entry.
    pub fn remove_source(&mut self, source: PodSource) -> Result<(), BpfError> {
        self.dp.remove_source(source).map_err(map_err(format!(
            "removing source {} on ifindex {}",
            source.addr, source.ifindex
        )))
    }

    /// The interfaces of `veths` that need no `to_pod` attachment: gone, or attached by this
    /// meshd and still attached (after a start none is: every attachment is renewed, which
    /// swaps the freshly loaded program in).
    pub fn to_pod_done(&self, veths: &BTreeSet<String>) -> Result<BTreeSet<String>, BpfError> {
        attachments_done(veths, &self.to_pods, |veth| self.dp.to_pod_attached(veth))
    }

    /// Attach `to_pod` to a pod's host veth (replacing an attachment atomically).
    pub fn attach_to_pod(&mut self, veth: &str) -> Result<(), BpfError> {
        self.dp
            .attach_to_pod(veth)
            .map_err(|source| BpfError::Attach {
                program: ebpf_redirect::PROG_TO_POD,
                interface: veth.to_string(),
                source: Box::new(source),
            })?;
        self.to_pods.insert(veth.to_string());
        Ok(())
    }
}
