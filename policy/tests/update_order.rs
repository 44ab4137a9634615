//! Property test of [`meshd_policy::update::ordered_ops`]: writing the delta between the maps of
//! two random worlds one entry at a time, every intermediate state admits, for every
//! endpoint-direction, only what the old or the new maps admit.
//!
//! Run: `cargo test -p meshd-policy --test update_order`.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{endpoints_of, world, NODES, PACKET_PORTS};
use meshd_policy::compile::compile;
use meshd_policy::datapath_model::direction_allows;
use meshd_policy::maps::{EndpointId, MapDelta};
use meshd_policy::model::Direction;
use meshd_policy::update::ordered_ops;
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// A probe: endpoint (index into those of either map), direction, peer host, protocol, port.
fn probe() -> impl Strategy<Value = (Index, bool, u8, bool, u8, u16)> {
    (
        any::<Index>(),
        any::<bool>(),
        0u8..40,
        any::<bool>(),
        select(vec![6u8, 17, 132, 1]),
        select(PACKET_PORTS.to_vec()),
    )
}

proptest! {
    // 1,000 pairs of worlds; 16 probes after every single write.
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn no_intermediate_state_admits_more_than_old_or_new(
        old_world in world(),
        new_world in world(),
        probes in proptest::collection::vec(probe(), 16),
    ) {
        let old = compile(&old_world, &endpoints_of(&old_world, NODES[0])).maps;
        let new = compile(&new_world, &endpoints_of(&new_world, NODES[0])).maps;
        let delta = MapDelta::between(&old, &new);
        let endpoints: Vec<EndpointId> = old.endpoints().union(&new.endpoints()).copied().collect::<BTreeSet<_>>().into_iter().collect();
        if endpoints.is_empty() {
            return Ok(());
        }
        let mut live = old.clone();
        for op in ordered_ops(&delta) {
            op.apply(&mut live);
            for (endpoint, ingress, host, v6, protocol, port) in &probes {
                let endpoint = *endpoint.get(&endpoints);
                let direction = if *ingress { Direction::Ingress } else { Direction::Egress };
                let peer = if *v6 {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(*host)))
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, *host))
                };
                let verdict = |maps| direction_allows(maps, endpoint, direction, peer, *protocol, *port);
                if verdict(&live) {
                    prop_assert!(verdict(&old) || verdict(&new), "{:?} admitted after {:?}", (endpoint, direction, peer, protocol, port), op);
                }
            }
        }
        prop_assert_eq!(live, new);
    }
}
