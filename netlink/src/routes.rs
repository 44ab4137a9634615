//! Routes meshd owns: main-table routes tagged with [`MESHD_ROUTE_PROTOCOL`]. Routes with
//! any other protocol are never changed or deleted. The one read of everything else is the
//! strict-mode guard's dump ([`Routes::table_routes`], [`Routes::rule_tables`]): every
//! unicast route of every table and the tables policy-routing rules look up, so that the
//! daemon can tell which interfaces can carry cluster traffic.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::links::{errno_of, table_of};

/// The `rtm_protocol` of every route meshd installs; nothing else is ever touched.
pub const MESHD_ROUTE_PROTOCOL: u8 = 109;

/// Errors of route operations.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Opening the rtnetlink socket failed.
    #[error("opening rtnetlink socket")]
    Connect(#[source] std::io::Error),
    /// Dumping routes failed.
    #[error("listing routes of link {ifindex}")]
    List {
        /// The output interface.
        ifindex: u32,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Dumping every table's routes (for the guard) failed.
    #[error("listing the routes of every table")]
    Dump {
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Adding a route failed.
    #[error("adding route {dst} dev {ifindex}")]
    Add {
        /// The destination.
        dst: IpNet,
        /// The output interface.
        ifindex: u32,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A policy rule operation failed.
    #[error("{what} the policy rule for node-to-node encryption")]
    Rule {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A gateway of the other family than the destination.
    #[error("route {dst} cannot go via {gateway}: address families differ")]
    Family {
        /// The destination.
        dst: IpNet,
        /// The gateway.
        gateway: std::net::IpAddr,
    },
    /// Deleting a route failed.
    #[error("deleting route {dst} dev {ifindex}")]
    Del {
        /// The destination.
        dst: IpNet,
        /// The output interface.
        ifindex: u32,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

/// One unicast route of any table, as the guard's choice of interfaces needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRoute {
    /// The routing table (`RTA_TABLE`, else the header's).
    pub table: u32,
    /// The destination (`0.0.0.0/0` or `::/0` for a default route).
    pub destination: IpNet,
    /// The output interfaces: the route's own, then every hop of a multipath route.
    pub oifs: Vec<u32>,
}

/// Desired vs present routes → `(to_add, to_remove)`, each sorted and deduplicated.
pub fn route_diff(present: &[IpNet], desired: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let present: BTreeSet<IpNet> = present.iter().map(IpNet::trunc).collect();
    let desired: BTreeSet<IpNet> = desired.iter().map(IpNet::trunc).collect();
    (
        desired.difference(&present).copied().collect(),
        present.difference(&desired).copied().collect(),
    )
}

/// Builds the main-table route message `dst dev ifindex proto 109`.
fn message(dst: IpNet, ifindex: u32) -> RouteMessage {
    match dst.trunc() {
        IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.addr(), n.prefix_len())
            .protocol(RouteProtocol::from(MESHD_ROUTE_PROTOCOL))
            // What `ip route add CIDR dev X` does for a gateway-less IPv4 route.
            .output_interface(ifindex)
            .scope(RouteScope::Link)
            .build(),
        IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.addr(), n.prefix_len())
            .protocol(RouteProtocol::from(MESHD_ROUTE_PROTOCOL))
            .output_interface(ifindex)
            .build(),
    }
}

/// Builds `dst/32|128 dev ifindex [src src] proto 109 table table`.
fn host_message(dst: IpAddr, ifindex: u32, src: Option<IpAddr>, table: u32) -> RouteMessage {
    let proto = RouteProtocol::from(MESHD_ROUTE_PROTOCOL);
    match dst {
        IpAddr::V4(a) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .output_interface(ifindex)
                .scope(RouteScope::Link)
                .table_id(table)
                .protocol(proto);
            if let Some(IpAddr::V4(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
        IpAddr::V6(a) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .output_interface(ifindex)
                .table_id(table)
                .protocol(proto);
            if let Some(IpAddr::V6(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
    }
}

/// Builds `dst via gateway dev ifindex proto 109` (the plain routed path to another node).
/// `None` when the families of `dst` and `gateway` differ.
fn message_via(dst: IpNet, gateway: IpAddr, ifindex: u32) -> Option<RouteMessage> {
    let dst = dst.trunc();
    let proto = RouteProtocol::from(MESHD_ROUTE_PROTOCOL);
    Some(match (dst, gateway) {
        (IpNet::V4(n), IpAddr::V4(gw)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.addr(), n.prefix_len())
            .gateway(gw)
            .output_interface(ifindex)
            .protocol(proto)
            .build(),
        (IpNet::V6(n), IpAddr::V6(gw)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.addr(), n.prefix_len())
            .gateway(gw)
            .output_interface(ifindex)
            .protocol(proto)
            .build(),
        _ => return None,
    })
}

/// [`message_via`], or the error for mixed families.
fn via(dst: IpNet, gateway: IpAddr, ifindex: u32) -> Result<RouteMessage, RouteError> {
    message_via(dst, gateway, ifindex).ok_or(RouteError::Family { dst, gateway })
}

fn gateway(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

fn destination(r: &RouteMessage) -> Option<IpNet> {
    let len = r.header.destination_prefix_length;
    let addr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpNet::new((*v4).into(), len)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpNet::new((*v6).into(), len)),
        _ => None,
    });
    match addr {
        Some(net) => net.ok(),
        // A default route has no RTA_DST.
        None if len == 0 => match r.header.address_family {
            netlink_packet_route::AddressFamily::Inet => Some(IpNet::V4(Default::default())),
            netlink_packet_route::AddressFamily::Inet6 => Some(IpNet::V6(Default::default())),
            _ => None,
        },
        None => None,
    }
}

/// The [`TableRoute`] of a route message, `None` for anything but a unicast route with a
/// destination.
fn table_route(r: &RouteMessage) -> Option<TableRoute> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut oifs = Vec::new();
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oifs.insert(0, *i),
            RouteAttribute::MultiPath(hops) => oifs.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    Some(TableRoute {
        table: table_of(r),
        destination: destination(r)?.trunc(),
        oifs,
    })
}

/// The table a rule looks up, `None` for rules of another action (blackhole, goto, ...).
fn rule_table(r: &RuleMessage) -> Option<u32> {
    if r.header.action != RuleAction::ToTable {
        return None;
    }
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    Some(table)
}

/// A handle on rtnetlink for meshd's routes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Routes {
    handle: Handle,
}

impl Routes {
    /// Opens an rtnetlink socket and spawns its connection task on the tokio runtime.
    pub async fn connect() -> Result<Routes, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        tokio::spawn(conn);
        Ok(Routes { handle })
    }

    /// Every unicast route of every table, both families, whoever installed it: what the
    /// strict-mode guard's choice of interfaces reads. Read only.
    pub async fn table_routes(&self) -> Result<Vec<TableRoute>, RouteError> {
        let routes = self.dump_all().await.map_err(|source| RouteError::Dump {
            source: Box::new(source),
        })?;
        Ok(routes.iter().filter_map(table_route).collect())
    }

    /// Every route of every table, both families (one dump per family).
    async fn dump_all(&self) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
        let mut out = Vec::new();
        for q in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> =
                self.handle.route().get(q).execute().try_collect().await?;
            out.extend(routes);
        }
        Ok(out)
    }

    /// The tables that policy-routing rules of either family look up (`main`, `default`
    /// and any other a rule names). Read only.
    pub async fn rule_tables(&self) -> Result<BTreeSet<u32>, RouteError> {
        let mut out = BTreeSet::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .map_err(|source| RouteError::Rule {
                    what: "listing",
                    source: Box::new(source),
                })?;
            out.extend(rules.iter().filter_map(rule_table));
        }
        Ok(out)
    }

    /// Every route of the main table, both families, that carries meshd's protocol.
    async fn owned(&self, ifindex: u32) -> Result<Vec<RouteMessage>, RouteError> {
        self.owned_in(u32::from(RouteHeader::RT_TABLE_MAIN), ifindex)
            .await
    }

    /// Every route of `table`, both families, that carries meshd's protocol.
    async fn owned_in(&self, table: u32, ifindex: u32) -> Result<Vec<RouteMessage>, RouteError> {
        let routes = self.dump_all().await.map_err(|source| RouteError::List {
            ifindex,
            source: Box::new(source),
        })?;
        Ok(routes
            .into_iter()
            .filter(|r| u8::from(r.header.protocol) == MESHD_ROUTE_PROTOCOL && table_of(r) == table)
            .collect())
    }

    /// Routes in the main table with protocol [`MESHD_ROUTE_PROTOCOL`] whose output
    /// interface is `ifindex`, both families.
    pub async fn list(&self, ifindex: u32) -> Result<Vec<IpNet>, RouteError> {
        Ok(self
            .unicast_on(ifindex)
            .await?
            .iter()
            .filter_map(destination)
            .collect())
    }

    /// meshd's unicast routes whose output interface is `ifindex`.
    async fn unicast_on(&self, ifindex: u32) -> Result<Vec<RouteMessage>, RouteError> {
        Ok(self
            .owned(ifindex)
            .await?
            .into_iter()
            .filter(|r| {
                r.header.kind == RouteType::Unicast
                    && r.attributes
                        .iter()
                        .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == ifindex))
            })
            .collect())
    }

    /// meshd's routes through a gateway on `ifindex` (the plain routed path), both families.
    pub async fn list_via(&self, ifindex: u32) -> Result<Vec<(IpNet, IpAddr)>, RouteError> {
        Ok(self
            .unicast_on(ifindex)
            .await?
            .iter()
            .filter_map(|r| Some((destination(r)?, gateway(r)?)))
            .collect())
    }

    /// Adds (or replaces) `dst via gateway dev ifindex proto 109`. Replacing is atomic: a
    /// route to `dst` through the WireGuard device becomes this one in a single step.
    pub async fn add_via(
        &self,
        dst: IpNet,
        gateway: IpAddr,
        ifindex: u32,
    ) -> Result<(), RouteError> {
        tracing::debug!(%dst, %gateway, ifindex, "adding route via gateway");
        self.replace(via(dst, gateway, ifindex)?, dst, ifindex)
            .await
    }

    /// Deletes `dst via gateway dev ifindex proto 109`; a missing route is not an error.
    pub async fn del_via(
        &self,
        dst: IpNet,
        gateway: IpAddr,
        ifindex: u32,
    ) -> Result<(), RouteError> {
        tracing::debug!(%dst, %gateway, ifindex, "deleting route via gateway");
        self.delete(via(dst, gateway, ifindex)?, dst, ifindex).await
    }

    async fn replace(&self, msg: RouteMessage, dst: IpNet, ifindex: u32) -> Result<(), RouteError> {
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| RouteError::Add {
                dst,
                ifindex,
                source: Box::new(source),
            })
    }

    async fn delete(&self, msg: RouteMessage, dst: IpNet, ifindex: u32) -> Result<(), RouteError> {
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    errno_of(&e),
                    Some(nix::libc::ESRCH) | Some(nix::libc::ENOENT) | Some(nix::libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(source) => Err(RouteError::Del {
                dst,
                ifindex,
                source: Box::new(source),
            }),
        }
    }

    /// Adds (or replaces, `NLM_F_REPLACE`) the route `dst dev ifindex proto 109` in the
    /// main table. Idempotent. Note: replacing takes over a same-destination route of
    /// another owner in the main table.
    pub async fn add(&self, dst: IpNet, ifindex: u32) -> Result<(), RouteError> {
        tracing::debug!(%dst, ifindex, "adding route");
        self.replace(message(dst, ifindex), dst, ifindex).await
    }

    /// Deletes the route `dst dev ifindex proto 109`; a missing route is not an error.
    /// The kernel matches protocol and interface, so other owners' routes stay.
    pub async fn del(&self, dst: IpNet, ifindex: u32) -> Result<(), RouteError> {
        tracing::debug!(%dst, ifindex, "deleting route");
        self.delete(message(dst, ifindex), dst, ifindex).await
    }

    /// Host routes (`/32`, `/128`) meshd holds in `table`: destination → output interface.
    pub async fn list_hosts_in(&self, table: u32) -> Result<Vec<(IpAddr, u32)>, RouteError> {
        Ok(self
            .owned_in(table, 0)
            .await?
            .iter()
            .filter(|r| r.header.kind == RouteType::Unicast)
            .filter_map(|r| {
                let dst = destination(r)?;
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })?;
                (dst.prefix_len() == dst.max_prefix_len()).then_some((dst.addr(), oif))
            })
            .collect())
    }

    /// Adds (or replaces) `dst dev ifindex [src src] proto 109 table table`: a host route in
    /// meshd's own table (node-to-node encryption), with `src` as the preferred source.
    pub async fn add_host_in(
        &self,
        dst: IpAddr,
        ifindex: u32,
        src: Option<IpAddr>,
        table: u32,
    ) -> Result<(), RouteError> {
        tracing::debug!(%dst, ifindex, ?src, table, "adding host route");
        let net = IpNet::from(dst);
        self.replace(host_message(dst, ifindex, src, table), net, ifindex)
            .await
    }

    /// Deletes meshd's host route to `dst` in `table`; a missing route is not an error.
    pub async fn del_host_in(
        &self,
        dst: IpAddr,
        ifindex: u32,
        table: u32,
    ) -> Result<(), RouteError> {
        tracing::debug!(%dst, ifindex, table, "deleting host route");
        let net = IpNet::from(dst);
        self.delete(host_message(dst, ifindex, None, table), net, ifindex)
            .await
    }

    /// Makes sure `not fwmark MARK lookup TABLE pref PRIORITY` exists for both families:
    /// every packet but the tunnel's own (marked) ones consults `table` first. Idempotent.
    pub async fn ensure_mark_rule(
        &self,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), RouteError> {
        for v6 in [false, true] {
            if self
                .find_mark_rule(v6, mark, table, priority)
                .await?
                .is_some()
            {
                continue;
            }
            let req = self
                .handle
                .rule()
                .add()
                .fw_mark(mark)
                .table_id(table)
                .action(RuleAction::ToTable)
                .priority(priority);
            let result = if v6 {
                let mut r = req.v6();
                r.message_mut().header.flags |= RuleFlags::Invert;
                r.execute().await
            } else {
                let mut r = req.v4();
                r.message_mut().header.flags |= RuleFlags::Invert;
                r.execute().await
            };
            result.map_err(|source| RouteError::Rule {
                what: "adding",
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// Removes the rule [`Routes::ensure_mark_rule`] adds; a missing rule is not an error.
    pub async fn remove_mark_rule(
        &self,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), RouteError> {
        for v6 in [false, true] {
            if let Some(rule) = self.find_mark_rule(v6, mark, table, priority).await? {
                self.handle
                    .rule()
                    .del(rule)
                    .execute()
                    .await
                    .map_err(|source| RouteError::Rule {
                        what: "deleting",
                        source: Box::new(source),
                    })?;
            }
        }
        Ok(())
    }

    /// Whether the rule [`Routes::ensure_mark_rule`] adds is in place: `[IPv4, IPv6]`.
    pub async fn mark_rule_present(
        &self,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<[bool; 2], RouteError> {
        let v4 = self.find_mark_rule(false, mark, table, priority).await?;
        let v6 = self.find_mark_rule(true, mark, table, priority).await?;
        Ok([v4.is_some(), v6.is_some()])
    }

    async fn find_mark_rule(
        &self,
        v6: bool,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<Option<RuleMessage>, RouteError> {
        let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .map_err(|source| RouteError::Rule {
                what: "listing",
                source: Box::new(source),
            })?;
        Ok(rules.into_iter().find(|r| {
            let has = |want: &RuleAttribute| r.attributes.iter().any(|a| a == want);
            r.header.flags.contains(RuleFlags::Invert)
                && has(&RuleAttribute::FwMark(mark))
                && has(&RuleAttribute::Priority(priority))
                && (has(&RuleAttribute::Table(table)) || u32::from(r.header.table) == table)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().expect("cidr")).collect()
    }

    #[test]
    fn diff_basic() {
        let present = nets(&["10.0.1.0/24", "10.0.2.0/24", "fd00:1::/64"]);
        let desired = nets(&["10.0.2.0/24", "10.0.3.0/24", "fd00:2::/64"]);
        let (add, del) = route_diff(&present, &desired);
        assert_eq!(add, nets(&["10.0.3.0/24", "fd00:2::/64"]));
        assert_eq!(del, nets(&["10.0.1.0/24", "fd00:1::/64"]));
    }

    #[test]
    fn diff_equal_empty_and_host_bits() {
        let a = nets(&["10.0.1.0/24"]);
        assert_eq!(route_diff(&a, &a), (vec![], vec![]));
        assert_eq!(route_diff(&[], &[]), (vec![], vec![]));
        // Host bits are ignored; duplicates collapse.
        let (add, del) = route_diff(&a, &nets(&["10.0.1.7/24", "10.0.1.0/24"]));
        assert!(add.is_empty() && del.is_empty());
        let (add, del) = route_diff(&[], &nets(&["10.9.0.0/16", "10.9.0.0/16"]));
        assert_eq!(add, nets(&["10.9.0.0/16"]));
        assert!(del.is_empty());
    }

    #[test]
    fn via_messages_carry_gateway_and_refuse_mixed_families() {
        let m = message_via(
            "10.244.2.0/24".parse().expect("cidr"),
            "198.18.0.12".parse().expect("ip"),
            3,
        )
        .expect("same family");
        assert_eq!(u8::from(m.header.protocol), MESHD_ROUTE_PROTOCOL);
        assert_eq!(gateway(&m), Some("198.18.0.12".parse().expect("ip")));
        assert!(m.attributes.contains(&RouteAttribute::Oif(3)));
        assert!(message_via(
            "10.244.2.0/24".parse().expect("cidr"),
            "fd00::1".parse().expect("ip"),
            3
        )
        .is_none());
    }

    #[test]
    fn table_routes_keep_unicast_routes_with_table_and_interfaces() {
        let mut m = message("10.244.0.0/16".parse().expect("cidr"), 7);
        m.attributes.push(RouteAttribute::Table(100));
        assert_eq!(
            table_route(&m),
            Some(TableRoute {
                table: 100,
                destination: "10.244.0.0/16".parse().expect("cidr"),
                oifs: vec![7],
            })
        );
        // A default route has no RTA_DST.
        let mut d = message("0.0.0.0/0".parse().expect("cidr"), 3);
        d.attributes
            .retain(|a| !matches!(a, RouteAttribute::Destination(_)));
        assert_eq!(
            table_route(&d).map(|r| r.destination),
            Some("0.0.0.0/0".parse().expect("cidr"))
        );
        let mut b = message("10.9.0.0/16".parse().expect("cidr"), 3);
        b.header.kind = RouteType::BlackHole;
        assert_eq!(table_route(&b), None);
    }

    #[test]
    fn rule_tables_come_from_lookup_rules_only() {
        let mut r = RuleMessage::default();
        r.header.action = RuleAction::ToTable;
        r.attributes.push(RuleAttribute::Table(100));
        assert_eq!(rule_table(&r), Some(100));
        let mut r = RuleMessage::default();
        r.header.action = RuleAction::ToTable;
        r.header.table = 254;
        assert_eq!(rule_table(&r), Some(254));
        let mut r = RuleMessage::default();
        r.header.action = RuleAction::Blackhole;
        r.header.table = 100;
        assert_eq!(rule_table(&r), None);
    }

    #[test]
    fn messages_carry_protocol_and_kind() {
        let m = message("10.1.2.3/24".parse().expect("cidr"), 7);
        assert_eq!(u8::from(m.header.protocol), MESHD_ROUTE_PROTOCOL);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(m.header.destination_prefix_length, 24);
        assert_eq!(destination(&m), Some("10.1.2.0/24".parse().expect("cidr")));
        assert!(m.attributes.contains(&RouteAttribute::Oif(7)));
        let m = message("fd00::7/48".parse().expect("cidr"), 7);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(destination(&m), Some("fd00::/48".parse().expect("cidr")));
        assert!(m.attributes.contains(&RouteAttribute::Oif(7)));
    }
}
