//! The scale figure of `node-subnet` IPAM: what one node programs in a 5,000-node cluster whose
//! nodes run 30 pods each in blocks of 16, computed from the desired state (pure).
#![allow(clippy::unwrap_used)]
use std::collections::{BTreeMap, BTreeSet};

use keyexchange::trust::{Established, TrustPolicy};
use keyexchange::{NodeRecord, PrivateKey};

use super::*;
use crate::bpf::Encryption;
use crate::controller::desired::{trusted, Inputs};
use crate::controller::Live;

const NODES: usize = 5_000;
const PODS: usize = 30;

/// How many blocks of a family a node with `pods` pods settles on (the allocator run alone).
fn steady_blocks(pods: usize) -> usize {
    let range = "10.200.0.0/16".parse().unwrap();
    let cfg = NodeSubnetConfig {
        ranges: vec![range],
        block_v4: DEFAULT_BLOCK_V4,
        block_v6: DEFAULT_BLOCK_V6,
        headroom: 4,
        settle: Duration::ZERO,
        release_grace: Duration::ZERO,
    };
    let mut a = Allocator::new("n", cfg);
    let none = BTreeMap::new();
    let mut in_use: Vec<IpAddr> = Vec::new();
    for t in 0..10 * pods as u64 {
        let taken: std::collections::HashSet<IpAddr> = in_use.iter().copied().collect();
        if in_use.len() < pods {
            if let Some(p) = a
                .usable()
                .iter()
                .find_map(|b| meshd_cni::ipam::first_free(*b, &taken))
            {
                in_use.push(p);
            }
        }
        a.step(&Observed {
            now: Duration::from_secs(t),
            others: &none,
            node_addresses: &[],
            in_use: &in_use,
        });
    }
    assert_eq!(in_use.len(), pods);
    a.blocks().len()
}

fn block_v4(n: usize) -> IpNet {
    let base = u32::from(std::net::Ipv4Addr::new(10, 128, 64, 0));
    IpNet::V4(Ipv4Net::new((base + 16 * n as u32).into(), 28).unwrap())
}

fn block_v6(n: usize) -> IpNet {
    let base = u128::from("fd00:10::1:0:0".parse::<std::net::Ipv6Addr>().unwrap());
    IpNet::V6(Ipv6Net::new((base + 16 * n as u128).into(), 124).unwrap())
}

#[test]
fn five_thousand_nodes_of_thirty_pods_in_blocks_of_sixteen() {
    let per_node = steady_blocks(PODS);
    // 30 pods in /28s of 13 usable addresses, 4 kept free: three blocks.
    assert_eq!(per_node, 3);
    let records: BTreeMap<String, NodeRecord> = (0..NODES)
        .map(|i| {
            let name = format!("node-{i:05}");
            let mut pod_cidrs: Vec<IpNet> =
                (0..per_node).map(|b| block_v4(i * per_node + b)).collect();
            pod_cidrs.extend((0..per_node).map(|b| block_v6(i * per_node + b)));
            let record = NodeRecord {
                name: name.clone(),
                public_key: PrivateKey::from_bytes(*blake_ish(i)).public_key(),
                listen_port: 51820,
                endpoints: vec![
                    IpAddr::from([10, 128, (i / 250) as u8, (i % 250 + 1) as u8]),
                    format!("fd00:10::{:x}", i + 1).parse().unwrap(),
                ],
                pod_cidrs,
                rotation: Default::default(),
            };
            (name, record)
        })
        .collect();
    let me = records["node-00000"].clone();
    let policy = TrustPolicy {
        cluster_pools: vec![],
        service_ranges: vec![],
        // The node subnet is 10.128.0.0/14 and fd00:10::/64; pods use all of it but the nodes'
        // own addresses.
        node_subnets: vec![
            "10.128.0.0/14".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
        ],
    };
    let live = Live {
        encryption: Encryption::Enabled,
        strict_mode: true,
        keepalive: None,
        mtu: 1420,
        listen_port: 51820,
        host_encryption: false,
    };
    let up = BTreeSet::new();
    let inputs = Inputs {
        records: &records,
        me: &me,
        live: &live,
        ifindex: [7, 8],
        mesh_marked: true,
        tunnels_up: &up,
        host_exclude: &[],
        local_pods: BTreeSet::new(),
        pod_interfaces: None,
        pod_sources: BTreeMap::new(),
        guard_interfaces: BTreeSet::new(),
        underlay: "eth0",
    };
    let (want, admission) = trusted(&inputs, &policy, &Established::default());
    assert!(
        admission.refused.is_empty(),
        "{:?}",
        &admission.refused[..1]
    );
    let peers = NODES - 1;
    let allowed: usize = want.peers[0]
        .peers
        .values()
        .map(|p| p.allowed_ips.len())
        .sum();
    let blocks = 2 * per_node;
    // Each peer: its blocks, and its two node addresses (accepted from the tunnel, never
    // routed or redirected).
    assert_eq!(allowed, peers * (blocks + 2));
    assert_eq!(want.routes.len(), peers * blocks);
    assert_eq!(want.redirects.len(), peers * blocks);
    // The guard's cluster map learns every node's blocks (this node's too).
    let cluster_entries = NODES * blocks;
    let sizes = crate::bpf::map_sizes(ebpf_redirect::DEFAULT_MAX_NODES, MAX_BLOCKS_PER_FAMILY);
    let per_family = [0, 1].map(|f| want.redirects.keys().filter(|c| family(c) == f).count());
    assert!(per_family.iter().all(|n| *n <= sizes.remote_cidrs as usize));
    assert!(cluster_entries / 2 <= sizes.cluster_cidrs as usize);
    println!(
        "node-subnet scale, {NODES} nodes x {PODS} pods, /28 + /124 blocks: {per_node} blocks per \
         family per node; per node: {allowed} AllowedIPs entries per slot device ({} peers), \
         {} routes, {} redirect map entries (REMOTE_V4 {} + REMOTE_V6 {}), {cluster_entries} \
         guard cluster map entries (CLUSTER_V4 + CLUSTER_V6); maps sized {} per family",
        want.peers[0].peers.len(),
        want.routes.len(),
        want.redirects.len(),
        per_family[0],
        per_family[1],
        sizes.remote_cidrs,
    );
}

/// 32 distinct key bytes for node `i` (any non-zero bytes make a valid key).
fn blake_ish(i: usize) -> &'static [u8; 32] {
    let mut b = [1u8; 32];
    b[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    Box::leak(Box::new(b))
}
