//! The daemon's side of the pods: the local-pod maps, the source map (which addresses each
//! pod veth's pod may send from), `from_pod` and `to_pod` on the pods' host veths and the
//! records of veths that are gone, one step at a time as the controller's plan says (the CNI
//! plugin does all of it on ADD; this is the backstop).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ebpf_redirect::{PodSource, TcAttachType};

use super::{interface_exists, map_err, Bpf, BpfError};

/// The interfaces of `veths` that need no attachment of a pod program: gone, or still
/// running this meshd's program (`attached` asks the kernel) and either attached by this meshd
/// (`mine`) or recorded with this meshd's program (`recorded`: the plugin's ADD attached it and
/// wrote its record). A new pod's veth is therefore not attached a second time by the
/// backstop, which would only contend with the plugin's next ADDs for the records' lock; a
/// veth attached by a plugin killed before its record, or running an older meshd's program,
/// is attached again.
pub(super) fn attachments_done(
    veths: &BTreeSet<String>,
    mine: &BTreeSet<String>,
    attached: impl Fn(&str) -> Result<bool, ebpf_redirect::Error>,
    recorded: impl Fn(&str) -> Result<bool, ebpf_redirect::Error>,
) -> Result<BTreeSet<String>, BpfError> {
    let mut done = BTreeSet::new();
    for veth in veths {
        if !interface_exists(veth) {
            done.insert(veth.clone());
            continue;
        }
        let still = attached(veth).map_err(map_err(format!("querying {veth}")))?;
        if still
            && (mine.contains(veth)
                || recorded(veth).map_err(map_err(format!("reading the records of {veth}")))?)
        {
            done.insert(veth.clone());
        }
    }
    Ok(done)
}

/// Whether `program` was attached to `veth` (`attached` is the attempt): an attempt that
/// failed because the veth is gone now is `false`, not an error.
fn attached_unless_gone(
    program: &'static str,
    veth: &str,
    attached: Result<(), ebpf_redirect::Error>,
) -> Result<bool, BpfError> {
    match attached {
        Ok(()) => Ok(true),
        Err(err) if !interface_exists(veth) => {
            tracing::debug!(%veth, %err, program, "the pod's veth went while attaching (a DEL): skipped");
            Ok(false)
        }
        Err(source) => Err(BpfError::Attach {
            program,
            interface: veth.to_string(),
            source: Box::new(source),
        }),
    }
}

impl Bpf {
    /// The local-pod maps now.
    pub fn locals(&self) -> Result<BTreeSet<IpAddr>, BpfError> {
        Ok(self
            .dp
            .locals()
            .map_err(map_err("reading local pods"))?
            .into_iter()
            .collect())
    }

    /// Add a local pod's address to the local-pod maps.
    pub fn add_local(&mut self, ip: IpAddr) -> Result<(), BpfError> {
        self.dp
            .add_local(ip)
            .map_err(map_err(format!("adding local pod {ip}")))
    }

    /// Remove an address from the local-pod maps.
    pub fn remove_local(&mut self, ip: IpAddr) -> Result<(), BpfError> {
        self.dp
            .remove_local(ip)
            .map_err(map_err(format!("removing local pod {ip}")))
    }

    /// The interfaces of `veths` that need no `from_pod` attachment: gone, or running this
    /// meshd's `from_pod` and attached by this meshd or recorded by the plugin's ADD
    /// ([`attachments_done`]). After a start the veths still run the previous meshd's
    /// program, so every attachment is renewed, which swaps the freshly loaded program in
    /// atomically.
    pub fn from_pod_done(&self, veths: &BTreeSet<String>) -> Result<BTreeSet<String>, BpfError> {
        attachments_done(
            veths,
            &self.pods,
            |veth| Ok(self.dp.from_pod_attached(veth)? != Some(false)),
            |veth| self.dp.from_pod_recorded(veth),
        )
    }

    /// Attach `from_pod` to a pod's host veth (replacing an attachment atomically). A veth
    /// deleted meanwhile (a DEL racing the pass) is skipped: nothing is left to attach to.
    pub fn attach_from_pod(&mut self, veth: &str) -> Result<(), BpfError> {
        let attached = self.dp.attach_from_pod(veth);
        if attached_unless_gone(ebpf_redirect::PROG_FROM_POD, veth, attached)? {
            self.pods.insert(veth.to_string());
        }
        Ok(())
    }

    /// Remember `veths` as the pod interfaces carrying `from_pod` (the status counts them).
    pub fn record_pod_interfaces(&mut self, veths: &BTreeSet<String>) {
        self.pods = veths.clone();
        self.to_pods = veths.clone();
    }

    /// Interfaces with a pinned link that no longer exist (a pod deleted without a CNI DEL).
    pub fn stale_links(&self) -> Result<BTreeSet<String>, BpfError> {
        let mut out = BTreeSet::new();
        for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
            let pinned = self
                .dp
                .pinned_links(attach)
                .map_err(map_err("listing pinned links"))?;
            out.extend(pinned.into_iter().filter(|i| !interface_exists(i)));
        }
        Ok(out)
    }

    /// Remove the pinned links of interfaces that are gone. Returns how many went.
    pub fn collect_stale_links(&mut self) -> Result<usize, BpfError> {
        let gone = self
            .dp
            .gc_links()
            .map_err(map_err("collecting stale links"))?;
        if !gone.is_empty() {
            tracing::info!(?gone, "removed links of deleted interfaces");
        }
        Ok(gone.len())
    }

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

    /// The interfaces of `veths` that need no `to_pod` attachment: gone, or running this
    /// meshd's `to_pod` and attached by it or recorded by the plugin's ADD (after a start they
    /// run the previous meshd's program: every attachment is renewed, which swaps the freshly
    /// loaded program in).
    pub fn to_pod_done(&self, veths: &BTreeSet<String>) -> Result<BTreeSet<String>, BpfError> {
        attachments_done(
            veths,
            &self.to_pods,
            |veth| self.dp.to_pod_attached(veth),
            |veth| self.dp.to_pod_recorded(veth),
        )
    }

    /// Attach `to_pod` to a pod's host veth (replacing an attachment atomically); a veth
    /// deleted meanwhile is skipped.
    pub fn attach_to_pod(&mut self, veth: &str) -> Result<(), BpfError> {
        let attached = self.dp.attach_to_pod(veth);
        if attached_unless_gone(ebpf_redirect::PROG_TO_POD, veth, attached)? {
            self.to_pods.insert(veth.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    fn yes(_: &str) -> Result<bool, ebpf_redirect::Error> {
        Ok(true)
    }

    fn no(_: &str) -> Result<bool, ebpf_redirect::Error> {
        Ok(false)
    }

    // `lo` stands for a veth that exists (every namespace has it).
    #[test]
    fn a_veth_the_plugin_attached_and_recorded_is_not_attached_again() {
        let veth = names(&["lo"]);
        let none = names(&[]);
        // The plugin's ADD attached this meshd's program and recorded it.
        assert_eq!(attachments_done(&veth, &none, yes, yes).unwrap(), veth);
        // Attached by this meshd (its record is the plugin's business).
        assert_eq!(attachments_done(&veth, &veth, yes, no).unwrap(), veth);
        // Running this meshd's program without a record: a plugin killed before recording.
        assert!(attachments_done(&veth, &none, yes, no).unwrap().is_empty());
        // Running another program (a previous meshd's), whatever the records say.
        assert!(attachments_done(&veth, &veth, no, yes).unwrap().is_empty());
        assert!(attachments_done(&veth, &none, no, yes).unwrap().is_empty());
    }

    #[test]
    fn a_veth_that_is_gone_needs_nothing() {
        let gone = names(&["meshd-gone0"]);
        assert_eq!(attachments_done(&gone, &names(&[]), no, no).unwrap(), gone);
    }
}
