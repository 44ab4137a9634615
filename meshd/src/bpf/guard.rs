//! The guard's attachments: `underlay_egress` (or `underlay_egress_ip`) on the underlay and
//! on every other way out of the node, which come and go.

use std::collections::BTreeSet;

use super::{interface_exists, map_err, Bpf, BpfError};

impl Bpf {
    /// The interfaces of the underlay and `others` that need no guard attachment: guarded
    /// now, or (besides the underlay) not to be asked about (gone, or the query failed).
    pub fn guarded_interfaces(
        &self,
        others: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, BpfError> {
        let mut out = BTreeSet::new();
        for ifname in std::iter::once(&self.underlay).chain(others) {
            match self.dp.underlay_egress_attached(ifname) {
                Ok(Some(true)) => {
                    out.insert(ifname.clone());
                }
                Ok(_) => {}
                Err(_) if *ifname != self.underlay => {
                    out.insert(ifname.clone());
                }
                Err(e) => return Err(map_err(format!("querying {ifname}"))(e)),
            }
        }
        Ok(out)
    }

    /// Attach the guard (`underlay_egress`, or `underlay_egress_ip` on a link without a
    /// link-layer header) to `ifname`. The underlay's attachment is required; another
    /// interface that is gone is skipped, one whose link type the guard cannot parse is
    /// reported and skipped. Returns whether it was attached.
    pub fn attach_guard(&mut self, ifname: &str) -> Result<bool, BpfError> {
        match self.dp.attach_underlay_egress(ifname) {
            Ok(framing) => {
                tracing::debug!(interface = %ifname, %framing, "guard attached");
                Ok(true)
            }
            Err(_) if ifname != self.underlay && !interface_exists(ifname) => Ok(false),
            Err(err @ ebpf_redirect::Error::UnsupportedLink { .. }) if ifname != self.underlay => {
                tracing::warn!(%err, "a way out of the node the guard cannot parse stays unguarded");
                Ok(false)
            }
            Err(source) => Err(BpfError::Attach {
                program: ebpf_redirect::PROG_UNDERLAY_EGRESS,
                interface: ifname.to_string(),
                source: Box::new(source),
            }),
        }
    }

    /// Remember which of `others` carry the guard now (the existing ones).
    pub fn record_guarded(&mut self, others: &BTreeSet<String>) {
        let underlay = self.underlay.clone();
        self.guarded = others
            .iter()
            .filter(|i| **i != underlay && guardable(i))
            .cloned()
            .collect();
    }

    /// Make sure `underlay_egress` is attached to the underlay and to every interface of
    /// `others` that exists (someone may have removed it; an interface may be new). Returns
    /// the interfaces where it had to be attached anew.
    pub fn ensure_guards(&mut self, others: &BTreeSet<String>) -> Result<Vec<String>, BpfError> {
        let guarded = self.guarded_interfaces(others)?;
        let mut attached_now = Vec::new();
        let underlay = self.underlay.clone();
        for ifname in std::iter::once(&underlay).chain(others.iter().filter(|i| **i != underlay)) {
            if !guarded.contains(ifname) && self.attach_guard(ifname)? {
                attached_now.push(ifname.clone());
            }
        }
        self.record_guarded(others);
        Ok(attached_now)
    }

    /// Whether `others` (see [`Bpf::ensure_guards`]) holds an existing interface not guarded
    /// yet: a new way out of the node.
    pub fn unguarded(&self, others: &BTreeSet<String>) -> bool {
        others
            .iter()
            .any(|i| *i != self.underlay && !self.guarded.contains(i) && guardable(i))
    }
}

/// Whether `name` exists and has a link type the guard can parse.
fn guardable(name: &str) -> bool {
    match ebpf_redirect::Datapath::link_framing(name) {
        Ok(_) => true,
        Err(ebpf_redirect::Error::UnsupportedLink { .. }) => false,
        Err(_) => interface_exists(name),
    }
}
