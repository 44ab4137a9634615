//! Links (network interfaces) over rtnetlink: lookup, up/MTU, addresses, the underlay,
//! and creating/deleting kernel WireGuard links.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteType};
use rtnetlink::{Handle, LinkUnspec, LinkWireguard, RouteMessageBuilder};

/// Errors of link operations.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Opening the rtnetlink socket failed.
    #[error("opening rtnetlink socket")]
    Connect(#[source] std::io::Error),
    /// Looking up a link failed.
    #[error("looking up link {link}")]
    Get {
        /// Name or index of the link.
        link: String,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The link does not exist.
    #[error("link {link} does not exist")]
    NotFound {
        /// Name or index of the link.
        link: String,
    },
    /// Setting a link up failed.
    #[error("setting link {ifindex} up")]
    SetUp {
        /// The link index.
        ifindex: u32,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Setting the MTU failed.
    #[error("setting MTU {mtu} on link {ifindex}")]
    SetMtu {
        /// The link index.
        ifindex: u32,
        /// The MTU.
        mtu: u32,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Dumping addresses failed.
    #[error("listing addresses of {ifname}")]
    Addresses {
        /// The link name.
        ifname: String,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Dumping routes or links to find the underlay failed.
    #[error("finding the underlay interface")]
    Underlay(#[source] Box<rtnetlink::Error>),
    /// Creating a kernel WireGuard link failed.
    #[error("creating wireguard link {ifname}")]
    CreateWireguard {
        /// The link name.
        ifname: String,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Deleting a link failed.
    #[error("deleting link {ifindex}")]
    Delete {
        /// The link index.
        ifindex: u32,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

/// What is known about an existing link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfoSummary {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
    /// The `IFLA_INFO_KIND` (`"wireguard"`, `"tun"`, ...), if any.
    pub kind: Option<String>,
    /// The MTU.
    pub mtu: u32,
    /// Whether the link is administratively up.
    pub up: bool,
    /// Whether the link is a loopback.
    pub loopback: bool,
}

/// The negated errno of an rtnetlink error, if it is a kernel NACK.
pub(crate) fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

fn summarise(msg: &LinkMessage) -> LinkInfoSummary {
    let mut s = LinkInfoSummary {
        ifindex: msg.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Mtu(m) => s.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        s.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// The WireGuard MTU for an underlay MTU: 60 bytes of overhead for IPv4 endpoints,
/// 80 when any endpoint is IPv6.
pub fn wireguard_mtu(underlay_mtu: u32, any_ipv6_endpoint: bool) -> u32 {
    let overhead = if any_ipv6_endpoint { 80 } else { 60 };
    underlay_mtu.saturating_sub(overhead)
}

/// A handle on rtnetlink for link operations. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Links {
    handle: Handle,
}

impl Links {
    /// Opens an rtnetlink socket and spawns its connection task on the tokio runtime.
    pub async fn connect() -> Result<Links, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Links { handle })
    }

    /// The underlying rtnetlink handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Details of the link `name`, or `None` if it does not exist.
    pub async fn info(&self, name: &str) -> Result<Option<LinkInfoSummary>, LinkError> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await;
        match res {
            Ok(Some(msg)) => Ok(Some(summarise(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Get {
                link: name.to_string(),
                source: Box::new(source),
            }),
        }
    }

    /// Details of the link with index `ifindex`, or `None` if it does not exist.
    pub async fn info_by_index(&self, ifindex: u32) -> Result<Option<LinkInfoSummary>, LinkError> {
        let res = self
            .handle
            .link()
            .get()
            .match_index(ifindex)
            .execute()
            .try_next()
            .await;
        match res {
            Ok(Some(msg)) => Ok(Some(summarise(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Get {
                link: ifindex.to_string(),
                source: Box::new(source),
            }),
        }
    }

    /// The index of the link `name`, or `None` if it does not exist.
    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, LinkError> {
        Ok(self.info(name).await?.map(|i| i.ifindex))
    }

    /// Sets the link administratively up.
    pub async fn set_up(&self, ifindex: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(ifindex).up().build())
            .execute()
            .await
            .map_err(|source| LinkError::SetUp {
                ifindex,
                source: Box::new(source),
            })
    }

    /// The link's MTU.
    pub async fn mtu(&self, ifindex: u32) -> Result<u32, LinkError> {
        self.info_by_index(ifindex)
            .await?
            .map(|i| i.mtu)
            .ok_or_else(|| LinkError::NotFound {
                link: ifindex.to_string(),
            })
    }

    /// Sets the link's MTU; a no-op when it already has it.
    pub async fn set_mtu(&self, ifindex: u32, mtu: u32) -> Result<(), LinkError> {
        if self.mtu(ifindex).await? == mtu {
            return Ok(());
        }
        tracing::info!(ifindex, mtu, "setting MTU");
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(ifindex).mtu(mtu).build())
            .execute()
            .await
            .map_err(|source| LinkError::SetMtu {
                ifindex,
                mtu,
                source: Box::new(source),
            })
    }

    /// Global-scope unicast addresses on `ifname` (both families), for endpoint
    /// auto-detection.
    pub async fn addresses(&self, ifname: &str) -> Result<Vec<IpAddr>, LinkError> {
        let ifindex = self
            .index_of(ifname)
            .await?
            .ok_or_else(|| LinkError::NotFound {
                link: ifname.to_string(),
            })?;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Addresses {
                ifname: ifname.to_string(),
                source: Box::new(source),
            })?;
        let mut out = Vec::new();
        for msg in msgs {
            if msg.header.index != ifindex || msg.header.scope != AddressScope::Universe {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Address(a) => address = Some(*a),
                    _ => {}
                }
            }
            // For IPv4 IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
            // peer on point-to-point links); IPv6 only has IFA_ADDRESS.
            if let Some(a) = local.or(address) {
                if !a.is_multicast() && !a.is_unspecified() && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    /// The main table's unicast default routes, IPv4's then IPv6's: each as its priority and
    /// its output interfaces (the route's own, then every hop of a multipath route).
    async fn default_routes(&self) -> Result<[Vec<(u32, Vec<u32>)>; 2], LinkError> {
        let v4 = RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
        let v6 = RouteMessageBuilder::<std::net::Ipv6Addr>::new().build();
        let mut out: [Vec<(u32, Vec<u32>)>; 2] = Default::default();
        for (family, query) in out.iter_mut().zip([v4, v6]) {
            let routes: Vec<_> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| LinkError::Underlay(Box::new(e)))?;
            for r in routes.iter().filter(|r| {
                r.header.destination_prefix_length == 0
                    && r.header.kind == RouteType::Unicast
                    && table_of(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
            }) {
                let mut oifs = Vec::new();
                let mut prio = 0;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Oif(i) => oifs.insert(0, *i),
                        RouteAttribute::Priority(p) => prio = *p,
                        RouteAttribute::MultiPath(hops) => {
                            oifs.extend(hops.iter().map(|h| h.interface_index))
                        }
                        _ => {}
                    }
                }
                family.push((prio, oifs));
            }
        }
        Ok(out)
    }

    /// The interface carrying the IPv4 (else IPv6) default route, or the first
    /// non-loopback UP link if there is none: `(ifindex, name, mtu)`.
    pub async fn underlay(&self) -> Result<Option<(u32, String, u32)>, LinkError> {
        for family in self.default_routes().await? {
            let best = family
                .iter()
                .filter_map(|(prio, oifs)| Some((*prio, *oifs.first()?)))
                .min_by_key(|(prio, _)| *prio);
            if let Some((_, oif)) = best {
                if let Some(info) = self.info_by_index(oif).await? {
                    return Ok(Some((info.ifindex, info.name, info.mtu)));
                }
            }
        }
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| LinkError::Underlay(Box::new(e)))?;
        Ok(links
            .iter()
            .map(summarise)
            .find(|l| l.up && !l.loopback)
            .map(|l| (l.ifindex, l.name, l.mtu)))
    }

    /// Names of every interface carrying a default route of the main table (either family,
    /// every hop of a multipath route): the ways out of the node.
    pub async fn default_route_interfaces(&self) -> Result<Vec<String>, LinkError> {
        let oifs: std::collections::BTreeSet<u32> = self
            .default_routes()
            .await?
            .into_iter()
            .flatten()
            .flat_map(|(_, oifs)| oifs)
            .collect();
        let mut names = Vec::new();
        for oif in oifs {
            if let Some(info) = self.info_by_index(oif).await? {
                names.push(info.name);
            }
        }
        Ok(names)
    }

    /// Creates a kernel WireGuard link `ifname` and returns its index.
    pub async fn create_wireguard(&self, ifname: &str) -> Result<u32, LinkError> {
        self.handle
            .link()
            .add(LinkWireguard::new(ifname).build())
            .execute()
            .await
            .map_err(|source| LinkError::CreateWireguard {
                ifname: ifname.to_string(),
                source: Box::new(source),
            })?;
        self.index_of(ifname)
            .await?
            .ok_or_else(|| LinkError::NotFound {
                link: ifname.to_string(),
            })
    }

    /// Deletes the link `ifindex`; a link that is already gone is not an error.
    pub async fn delete(&self, ifindex: u32) -> Result<(), LinkError> {
        match self.handle.link().del(ifindex).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(()),
            Err(source) => Err(LinkError::Delete {
                ifindex,
                source: Box::new(source),
            }),
        }
    }
}

/// The routing table of a route message (the attribute wins over the 8-bit header).
pub(crate) fn table_of(r: &netlink_packet_route::route::RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// Whether `kind` names a kernel WireGuard link.
pub(crate) fn is_wireguard_kind(kind: Option<&str>) -> bool {
    kind == Some(InfoKind::Wireguard.to_string().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_overhead() {
        assert_eq!(wireguard_mtu(1500, false), 1440);
        assert_eq!(wireguard_mtu(1500, true), 1420);
        assert_eq!(wireguard_mtu(9001, false), 8941);
        assert_eq!(wireguard_mtu(40, true), 0);
    }

    #[test]
    fn wireguard_kind() {
        assert!(is_wireguard_kind(Some("wireguard")));
        assert!(!is_wireguard_kind(Some("tun")));
        assert!(!is_wireguard_kind(None));
    }
}
