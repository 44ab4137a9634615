//! Property test of [`meshd_policy::update::ordered_ops`]: writing the delta between the maps of
//! a random world and the world after one random change (a policy added or replaced, a pod
//! added or changed: so most entries stay and bits get renumbered) one entry at a time, every
//! intermediate state admits, for every endpoint-direction, only what the old or the new maps
//! admit.
//!
//! Run: `cargo test -p meshd-policy --test update_order`.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{endpoints_of, world, NODES, PACKET_PORTS};
use meshd_policy::compile::compile;
use meshd_policy::datapath_model::direction_allows;
use meshd_policy::maps::{EndpointId, MapDelta};
use meshd_policy::model::Direction;
use meshd_policy::update::ordered_ops;
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// A probe: endpoint (index into those the delta touches), direction, peer (a pod address of
/// the new world or the start of a prefix the delta writes, or a host of the test space),
/// protocol, port.
fn probe() -> impl Strategy<Value = (Index, bool, Option<Index>, u8, bool, u8, u16)> {
    (
        any::<Index>(),
        any::<bool>(),
        proptest::option::weighted(0.8, any::<Index>()),
        0u8..40,
        any::<bool>(),
        select(vec![6u8, 17, 132, 1]),
        select(PACKET_PORTS.to_vec()),
    )
}

/// One change to a world.
#[derive(Clone, Debug)]
enum Edit {
    Policy(meshd_policy::model::Policy),
    Pod(meshd_policy::model::Pod),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (0usize..8).prop_flat_map(common::policy).prop_map(Edit::Policy),
        1 => (0usize..6).prop_flat_map(common::pod).prop_map(Edit::Pod),
    ]
}

proptest! {
    // 4,000 worlds and changes (a few seconds per thousand in debug); 64 probes of the touched endpoints after every single write.
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn no_intermediate_state_admits_more_than_old_or_new(
        old_world in world(),
        edit in edit(),
        probes in proptest::collection::vec(probe(), 64),
    ) {
        let mut new_world = old_world.clone();
        match edit {
            Edit::Policy(p) => {
                new_world.policies.insert(p.key.clone(), p);
            }
            Edit::Pod(p) => {
                new_world.pods.insert(p.key.clone(), p.into());
            }
        }
        let old = compile(&old_world, &endpoints_of(&old_world, NODES[0])).maps;
        let new = compile(&new_world, &endpoints_of(&new_world, NODES[0])).maps;
        let delta = MapDelta::between(&old, &new);
        let endpoints: Vec<EndpointId> = delta.endpoints().into_iter().collect();
        if endpoints.is_empty() {
            return Ok(());
        }
        // Pod addresses, and the first two addresses of every prefix the delta writes.
        let mut addresses: Vec<IpAddr> = new_world
            .pods
            .values()
            .flat_map(|p| p.addresses.iter().copied())
            .collect();
        for key in delta.peer_v4.delete.iter().chain(delta.peer_v4.upsert.keys()) {
            let base = u32::from(Ipv4Addr::from(key.address));
            addresses.extend([base, base | 1].map(|a| IpAddr::V4(Ipv4Addr::from(a))));
        }
        for key in delta.peer_v6.delete.iter().chain(delta.peer_v6.upsert.keys()) {
            let base = u128::from(Ipv6Addr::from(key.address));
            addresses.extend([base, base | 1].map(|a| IpAddr::V6(Ipv6Addr::from(a))));
        }
        let mut live = old.clone();
        for op in ordered_ops(&delta) {
            op.apply(&mut live);
            for (endpoint, ingress, pod_address, host, v6, protocol, port) in &probes {
                let endpoint = *endpoint.get(&endpoints);
                let direction = if *ingress { Direction::Ingress } else { Direction::Egress };
                let peer = match pod_address {
                    Some(i) if !addresses.is_empty() => *i.get(&addresses),
                    _ if *v6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(*host))),
                    _ => IpAddr::V4(Ipv4Addr::new(10, 0, 0, *host)),
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
