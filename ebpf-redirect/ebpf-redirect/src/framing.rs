//! Which guard program fits an interface: the link type (`ARPHRD_*`, `ifinfomsg.ifi_type`)
//! decides where tc finds the network header on egress. Pure: the loader asks the kernel for
//! the type ([`crate::cls_bpf::link_type`]) and attaches the program this module names.
//!
//! On egress tc sees `skb->data` at the MAC header, which exists only on links whose driver
//! builds one (`header_ops->create`): Ethernet (and veth, bridges, bonds, VLAN and macvlan
//! devices, which all report `ARPHRD_ETHER`). Links without one start at the IP header: tun
//! in `IFF_TUN` mode and WireGuard (`ARPHRD_NONE`), ipip (`ARPHRD_TUNNEL`), ip6tnl
//! (`ARPHRD_TUNNEL6`), sit (`ARPHRD_SIT`), GRE with a fixed remote (`ARPHRD_IPGRE`,
//! `ARPHRD_IP6GRE`), raw-IP modems (`ARPHRD_RAWIP`) and PPP (`ARPHRD_PPP`, whose header is
//! added after the qdisc). Any other type is refused: the guard cannot say where its packets'
//! addresses are, and guessing would let them pass unexamined.

/// Where the guard finds the IP header on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFraming {
    /// Behind a 14-byte Ethernet header: program `underlay_egress`.
    Ethernet,
    /// At the start of the packet (no link-layer header): program `underlay_egress_ip`.
    Ip,
}

impl std::fmt::Display for LinkFraming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkFraming::Ethernet => "ethernet",
            LinkFraming::Ip => "ip",
        })
    }
}

/// `ARPHRD_ETHER`.
pub const ARPHRD_ETHER: u16 = 1;
/// `ARPHRD_RAWIP`.
pub const ARPHRD_RAWIP: u16 = 519;
/// `ARPHRD_PPP`.
pub const ARPHRD_PPP: u16 = 512;
/// `ARPHRD_TUNNEL` (ipip).
pub const ARPHRD_TUNNEL: u16 = 768;
/// `ARPHRD_TUNNEL6` (ip6tnl).
pub const ARPHRD_TUNNEL6: u16 = 769;
/// `ARPHRD_SIT`.
pub const ARPHRD_SIT: u16 = 776;
/// `ARPHRD_IPGRE`.
pub const ARPHRD_IPGRE: u16 = 778;
/// `ARPHRD_IP6GRE`.
pub const ARPHRD_IP6GRE: u16 = 823;
/// `ARPHRD_NONE` (tun, WireGuard).
pub const ARPHRD_NONE: u16 = 0xfffe;

/// The framing of a link of type `arphrd`, `None` for a type the guard cannot parse.
pub fn framing_of(arphrd: u16) -> Option<LinkFraming> {
    match arphrd {
        ARPHRD_ETHER => Some(LinkFraming::Ethernet),
        ARPHRD_NONE | ARPHRD_RAWIP | ARPHRD_PPP | ARPHRD_TUNNEL | ARPHRD_TUNNEL6 | ARPHRD_SIT
        | ARPHRD_IPGRE | ARPHRD_IP6GRE => Some(LinkFraming::Ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_links_get_the_ethernet_program() {
        assert_eq!(framing_of(ARPHRD_ETHER), Some(LinkFraming::Ethernet));
    }

    #[test]
    fn links_without_a_mac_header_get_the_ip_program() {
        for t in [
            ARPHRD_NONE,
            ARPHRD_RAWIP,
            ARPHRD_PPP,
            ARPHRD_TUNNEL,
            ARPHRD_TUNNEL6,
            ARPHRD_SIT,
            ARPHRD_IPGRE,
            ARPHRD_IP6GRE,
        ] {
            assert_eq!(framing_of(t), Some(LinkFraming::Ip), "type {t}");
        }
    }

    #[test]
    fn unknown_link_types_are_refused() {
        // Loopback (772) builds an Ethernet header but is never a way out; InfiniBand (32)
        // and IEEE 802.15.4 (804) have headers of their own.
        for t in [0, 32, 772, 804, 0xffff] {
            assert_eq!(framing_of(t), None, "type {t}");
        }
    }
}
