//! Which interfaces the strict-mode guard must sit on: every interface that can carry cluster
//! traffic out of the node. A pure decision over the node's routes and policy-routing rules
//! ([`ways_out`]); the dumps and the interface names are read at the edge
//! (`devices::guard_interfaces`).
//!
//! An interface is a way out when one of its routes (its own output interface or a hop of a
//! multipath route) is
//! - a default route of the main table or of any table a policy-routing rule looks up (`ip
//!   rule add from 10.244.1.0/24 lookup 100` with a default route in table 100), or
//! - a route of any table whose destination overlaps a guarded CIDR (contains part of one, or
//!   lies inside one), unless it lies wholly inside this node's own pod CIDRs (the host routes
//!   to local pods on their veths deliver on the node; they never leave it).
//!
//! The local table (255) holds the node's own addresses and broadcast routes, nothing that
//! leaves: it is never looked at. meshd's own WireGuard devices and the loopback are taken out
//! at the edge by name.
//!
//! Also pure: which **learned** entries of the guard's cluster map may go ([`prunable`]). A
//! peer's pod CIDR is learned so that, once the peer is gone, traffic to it is dropped rather
//! than sent in clear, even outside `--cluster-cidr`; that is why learned entries stayed for
//! good, and at 5,000 nodes with churn they filled the map. An entry may go once no record
//! claims it and a configured entry covers it: the guard matches the configured one instead
//! and drops exactly the same packets. One that nothing configured covers stays (removing it
//! would open a plaintext window to that CIDR): those are bounded by the map's size, and a map
//! they fill refuses new peers alone (`capacity.rs`), never the pass.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use netlink::TableRoute;

use super::covering::Covering;

/// `RT_TABLE_MAIN`.
const TABLE_MAIN: u32 = 254;
/// `RT_TABLE_LOCAL`.
const TABLE_LOCAL: u32 = 255;

/// What [`ways_out`] decides from.
#[derive(Clone, Copy, Debug)]
pub(super) struct RoutingView<'a> {
    /// Every unicast route of every table.
    pub routes: &'a [TableRoute],
    /// The tables policy-routing rules look up.
    pub rule_tables: &'a BTreeSet<u32>,
    /// The guarded CIDRs (configured cluster CIDRs and every peer's pod CIDRs).
    pub guarded: &'a [IpNet],
    /// This node's own pod CIDRs.
    pub own_pod_cidrs: &'a [IpNet],
}

/// The guarded and own CIDRs as prefix sets: a route is checked in a few lookups, not
/// against every guarded CIDR (at 5,000 nodes, 20,000 routes against 10,000 CIDRs made every
/// pass and every status tick cost seconds).
struct Prefixes {
    guarded: Covering<()>,
    own: Covering<()>,
}

/// Whether `route` can carry cluster traffic out of the node.
fn carries_cluster_traffic(route: &TableRoute, view: &RoutingView<'_>, sets: &Prefixes) -> bool {
    if route.table == TABLE_LOCAL {
        return false;
    }
    let dst = route.destination;
    let looked_up = route.table == TABLE_MAIN || view.rule_tables.contains(&route.table);
    if dst.prefix_len() == 0 && looked_up {
        return true;
    }
    sets.guarded.overlaps(dst) && sets.own.covering(dst).next().is_none()
}

/// The output interfaces (ifindexes) of every route that can carry cluster traffic out of
/// the node (see the module's documentation).
pub(super) fn ways_out(view: &RoutingView<'_>) -> BTreeSet<u32> {
    let sets = Prefixes {
        guarded: view.guarded.iter().map(|g| (*g, ())).collect(),
        own: view.own_pod_cidrs.iter().map(|o| (*o, ())).collect(),
    };
    view.routes
        .iter()
        .filter(|r| carries_cluster_traffic(r, view, &sets))
        .flat_map(|r| r.oifs.iter().copied())
        .collect()
}

/// The learned entries of the cluster map (`present`, each with whether it was learned)
/// that may be removed: no record claims them (`claimed`: every known record's pod CIDRs,
/// truncated) and an entry that was not learned (configured) strictly covers them. Removing
/// one changes no verdict of the guard (see the module's documentation).
pub(super) fn prunable(claimed: &BTreeSet<IpNet>, present: &BTreeMap<IpNet, bool>) -> Vec<IpNet> {
    let configured: Vec<&IpNet> = present
        .iter()
        .filter(|(_, learned)| !**learned)
        .map(|(c, _)| c)
        .collect();
    present
        .iter()
        .filter(|(c, learned)| **learned && !claimed.contains(*c))
        .filter(|(c, _)| {
            configured
                .iter()
                .any(|k| k.prefix_len() < c.prefix_len() && k.contains(*c))
        })
        .map(|(c, _)| *c)
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    /// Whether `a` and `b` share an address (by scan: what the prefix sets must agree with).
    fn overlaps(a: &IpNet, b: &IpNet) -> bool {
        a.contains(b) || b.contains(a)
    }

    fn route(table: u32, dst: &str, oifs: &[u32]) -> TableRoute {
        TableRoute {
            table,
            destination: net(dst),
            oifs: oifs.to_vec(),
        }
    }

    /// Eth0 (2) default route, a second NIC (3), a veth of a local pod (10), a tun (4).
    fn decide(routes: &[TableRoute], rule_tables: &[u32]) -> BTreeSet<u32> {
        let tables: BTreeSet<u32> = rule_tables.iter().copied().collect();
        let guarded = [net("10.244.0.0/16"), net("fd00:244::/48")];
        let own = [net("10.244.1.0/24"), net("fd00:244:0:1::/64")];
        ways_out(&RoutingView {
            routes,
            rule_tables: &tables,
            guarded: &guarded,
            own_pod_cidrs: &own,
        })
    }

    #[test]
    fn only_unclaimed_learned_entries_a_configured_one_covers_may_go() {
        let present: BTreeMap<IpNet, bool> = [
            (net("10.244.0.0/16"), false),
            (net("fd00:244::/48"), false),
            // Departed, covered: may go.
            (net("10.244.7.0/24"), true),
            (net("fd00:244:0:7::/64"), true),
            // Claimed by a record: stays.
            (net("10.244.8.0/24"), true),
            // Departed, outside every configured CIDR: stays (fails closed).
            (net("10.250.3.0/24"), true),
            (net("fd00:999:0:3::/64"), true),
            // Learned with the same prefix as a configured one cannot happen (the configured
            // mark wins), and a configured entry never goes from here.
            (net("10.96.0.0/12"), false),
        ]
        .into();
        let claimed: BTreeSet<IpNet> = [net("10.244.8.0/24"), net("10.244.1.0/24")].into();
        assert_eq!(
            prunable(&claimed, &present),
            vec![net("10.244.7.0/24"), net("fd00:244:0:7::/64")]
        );
        // Nothing configured: every learned entry is the guard, none goes.
        let learned_only: BTreeMap<IpNet, bool> = present
            .iter()
            .filter(|(_, l)| **l)
            .map(|(c, l)| (*c, *l))
            .collect();
        assert!(prunable(&BTreeSet::new(), &learned_only).is_empty());
    }

    #[test]
    fn main_table_default_routes_are_ways_out() {
        let got = decide(
            &[route(254, "0.0.0.0/0", &[2]), route(254, "::/0", &[2, 3])],
            &[],
        );
        assert_eq!(got, [2, 3].into());
    }

    #[test]
    fn a_default_route_in_a_table_a_rule_looks_up_is_a_way_out() {
        let routes = [route(254, "0.0.0.0/0", &[2]), route(100, "0.0.0.0/0", &[3])];
        assert_eq!(decide(&routes, &[254, 100]), [2, 3].into());
    }

    #[test]
    fn routes_covering_part_of_a_cluster_cidr_are_ways_out_in_any_table() {
        let routes = [
            route(254, "0.0.0.0/0", &[2]),
            route(254, "10.244.7.0/24", &[3]),
            route(200, "fd00:244::/40", &[4]),
            route(254, "10.0.0.0/8", &[5]),
        ];
        assert_eq!(decide(&routes, &[]), [2, 3, 4, 5].into());
    }

    #[test]
    fn local_pods_routes_and_unrelated_routes_are_not() {
        let routes = [
            route(254, "10.244.1.7/32", &[10]),
            route(254, "fd00:244:0:1::7/128", &[10]),
            route(254, "10.244.1.0/24", &[11]),
            route(254, "192.168.5.0/24", &[3]),
            route(254, "fe80::/64", &[3]),
            route(255, "10.244.9.1/32", &[1]),
        ];
        assert_eq!(decide(&routes, &[254]), BTreeSet::new());
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| IpNet::new(
                std::net::Ipv4Addr::from(a).into(),
                l
            )
            .expect("valid prefix")
            .trunc()),
            (any::<[u16; 2]>(), 0u8..=64).prop_map(|(a, l)| IpNet::new(
                std::net::Ipv6Addr::new(0xfd00, a[0], a[1], 0, 0, 0, 0, 0).into(),
                l
            )
            .expect("valid prefix")
            .trunc()),
        ]
    }

    fn arb_route() -> impl Strategy<Value = TableRoute> {
        (
            prop_oneof![Just(254u32), Just(255u32), Just(100u32), 1u32..300],
            arb_net(),
            prop::collection::vec(1u32..8, 0..3),
        )
            .prop_map(|(table, destination, oifs)| TableRoute {
                table,
                destination,
                oifs,
            })
    }

    proptest! {
        #[test]
        fn decision_properties(
            routes in prop::collection::vec(arb_route(), 0..12),
            extra in arb_route(),
            tables in prop::collection::btree_set(prop_oneof![Just(254u32), Just(100u32), 1u32..300], 0..4),
            guarded in prop::collection::vec(arb_net(), 0..4),
            own in prop::collection::vec(arb_net(), 0..2),
        ) {
            let view = RoutingView { routes: &routes, rule_tables: &tables, guarded: &guarded, own_pod_cidrs: &own };
            let out = ways_out(&view);
            // Only interfaces some route names, never one of the local table's only.
            for oif in &out {
                prop_assert!(routes.iter().any(|r| r.table != TABLE_LOCAL && r.oifs.contains(oif)));
            }
            // Every route overlapping a guarded CIDR, not wholly local, has its interfaces guarded.
            for r in routes.iter().filter(|r| r.table != TABLE_LOCAL) {
                let overlaps_guarded = guarded.iter().any(|g| overlaps(&r.destination, g));
                let local = own.iter().any(|o| o.contains(&r.destination));
                if overlaps_guarded && !local {
                    prop_assert!(r.oifs.iter().all(|o| out.contains(o)), "{r:?} not guarded: {out:?}");
                }
                if r.destination.prefix_len() == 0 && (r.table == TABLE_MAIN || tables.contains(&r.table)) {
                    prop_assert!(r.oifs.iter().all(|o| out.contains(o)), "default {r:?} not guarded");
                }
            }
            // A new route never unguards an interface: a pass only adds ways out.
            let mut more = routes.clone();
            more.push(extra);
            let view_more = RoutingView { routes: &more, ..view };
            prop_assert!(out.is_subset(&ways_out(&view_more)));
            // Order does not matter.
            let mut reversed = routes.clone();
            reversed.reverse();
            prop_assert_eq!(&out, &ways_out(&RoutingView { routes: &reversed, ..view }));
        }
    }
}
