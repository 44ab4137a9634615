//! The guard's attachment to the node's ways out: the link type of an interface picks the
//! program (`underlay_egress` or `underlay_egress_ip`, [`crate::framing`]) once, when it is
//! attached, and the check whether an interface carries the one that fits it.

use crate::framing::{self, LinkFraming};
use crate::{attach, cls_bpf, is_attached, link_pin, Datapath, Error, Result, TcAttachType};
use aya::programs::SchedClassifier;

impl Datapath {
    /// The framing of `ifname`'s packets on egress, from its link type: which guard program
    /// it gets. [`Error::UnsupportedLink`] for a type the guard cannot parse.
    pub fn link_framing(ifname: &str) -> Result<LinkFraming> {
        let ifindex = cls_bpf::ifindex(ifname)?;
        let link_type = cls_bpf::link_type(ifindex)?;
        framing::framing_of(link_type).ok_or_else(|| Error::UnsupportedLink {
            ifname: ifname.to_string(),
            link_type,
        })
    }

    /// The guard program for links of `framing`.
    fn guard_program(&mut self, framing: LinkFraming) -> &mut SchedClassifier {
        match framing {
            LinkFraming::Ethernet => &mut self.underlay_egress,
            LinkFraming::Ip => &mut self.underlay_egress_ip,
        }
    }

    /// Attaches the guard on tc egress of `ifname` (a way out of the node): `underlay_egress`
    /// on an Ethernet link, `underlay_egress_ip` on a link without a link-layer header, chosen
    /// once here from the link type ([`Datapath::link_framing`]). Idempotent: an existing
    /// attachment is replaced atomically by this program. Returns the framing chosen.
    pub fn attach_underlay_egress(&mut self, ifname: &str) -> Result<LinkFraming> {
        let framing = Self::link_framing(ifname)?;
        let path = link_pin(&self.pin_dir, TcAttachType::Egress, ifname);
        attach(
            self.guard_program(framing),
            ifname,
            TcAttachType::Egress,
            &path,
        )?;
        Ok(framing)
    }

    /// Whether the guard program fitting `ifname`'s link type is attached to it right now
    /// (see [`Datapath::from_pod_attached`]): the other program (attached by an older meshd
    /// that had only the Ethernet one) counts as not attached.
    pub fn underlay_egress_attached(&self, ifname: &str) -> Result<Option<bool>> {
        let prog = match Self::link_framing(ifname)? {
            LinkFraming::Ethernet => &self.underlay_egress,
            LinkFraming::Ip => &self.underlay_egress_ip,
        };
        is_attached(prog, ifname, TcAttachType::Egress)
    }
}
