//! The simulated nodes: valid node records computed from an index (pure), their rotation
//! steps, and writing them into the directory registry the way meshd does (a dotfile, then
//! `rename`).
//!
//! Node `i` is named `s<i>` (five digits), holds real x25519 keys derived from its index and
//! key generation, publishes the endpoints `198.19.H.L` and `2001:db8:5ca1::<i>` (the
//! benchmarking range 198.18.0.0/15 beyond the lab's underlay /24, and the IPv6 documentation
//! prefix: not routed anywhere, and no packet is sent to them since no simulated peer carries
//! traffic) and pod CIDRs inside the lab's pools: an IPv4 block of 10.244.128.0/17 (sized so
//! that every index fits, see [`v4_block_len`]) and `fd00:244:0:<0x8000+i>::/64`.

use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use keyexchange::record::{Rotation, RotationStep, SlotKey};
use keyexchange::{NodeRecord, PrivateKey};
use sha2::{Digest as _, Sha256};

/// UDP ports the simulated nodes publish (the lab's own).
const PORTS: [u16; 2] = [51820, 51821];
/// First address of the simulated nodes' IPv4 pod blocks.
const V4_BASE: u32 = u32::from_be_bytes([10, 244, 128, 0]);
/// Addresses of 10.244.128.0/17.
const V4_SPACE: u32 = 1 << 15;

/// Most simulated nodes the address plan holds (one IPv4 /32 pod block each at worst).
pub(crate) const MAX_SIMULATED: u32 = V4_SPACE;

/// Prefix length of each simulated node's IPv4 pod block when `count` of them share
/// 10.244.128.0/17: the largest block that fits all (at most /24).
pub(crate) fn v4_block_len(count: u32) -> u8 {
    let mut len = 24u8;
    while len < 32 && u64::from(count) << (32 - len) > u64::from(V4_SPACE) {
        len += 1;
    }
    len
}

/// The name of simulated node `i`.
pub(crate) fn name(i: u32) -> String {
    format!("s{i:05}")
}

/// The key of simulated node `i` in `slot` after `generation` rotations.
fn key(i: u32, slot: u8, generation: u32) -> PrivateKey {
    let seed: [u8; 32] = Sha256::digest(format!("scale-bench/{i}/{slot}/{generation}")).into();
    PrivateKey::from_bytes(seed)
}

/// One simulated node: its index and where its rotation stands.
#[derive(Clone, Debug)]
pub(crate) struct SimNode {
    pub(crate) index: u32,
    /// Key generation of slot 0 and slot 1.
    pub(crate) generation: [u32; 2],
    /// The rotation step published, if any.
    pub(crate) step: Option<RotationStep>,
}

impl SimNode {
    pub(crate) fn new(index: u32) -> Self {
        Self {
            index,
            generation: [0, 0],
            step: None,
        }
    }

    pub(crate) fn name(&self) -> String {
        name(self.index)
    }

    /// The node's record as it stands, its IPv4 block sized for `count` simulated nodes.
    pub(crate) fn record(&self, count: u32) -> NodeRecord {
        let i = self.index;
        let len = v4_block_len(count);
        let v4 = Ipv4Addr::from(V4_BASE + (i << (32 - len)));
        let v6 = Ipv6Addr::new(0xfd00, 0x244, 0, 0x8000 + (i as u16), 0, 0, 0, 0);
        let (hi, lo) = ((i >> 8) as u8, i as u8);
        NodeRecord {
            name: self.name(),
            public_key: key(i, 0, self.generation[0]).public_key(),
            listen_port: PORTS[0],
            endpoints: vec![
                IpAddr::V4(Ipv4Addr::new(198, 19, hi, lo)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x5ca1, 0, 0, 0, 0, i as u16)),
            ],
            pod_cidrs: vec![
                IpNet::V4(Ipv4Net::new(v4, len).expect("prefix length at most 32")),
                IpNet::V6(Ipv6Net::new(v6, 64).expect("prefix length 64")),
            ],
            rotation: Rotation {
                second: Some(SlotKey {
                    public_key: key(i, 1, self.generation[1]).public_key(),
                    listen_port: PORTS[1],
                }),
                step: self.step,
            },
        }
    }

    /// Moves to rotation step `k` (1..=4) of a rotation of both slots, as meshd does it: drain
    /// slot 0, replace its key, drain slot 1, publish its new key with the drain lifted.
    /// Serials grow across rotations.
    pub(crate) fn rotation_step(&mut self, k: u32, serial: u64) {
        self.step = match k {
            1 | 3 => Some(RotationStep {
                serial,
                draining: Some(if k == 1 { 0 } else { 1 }),
                replaced: false,
            }),
            2 => {
                self.generation[0] += 1;
                Some(RotationStep {
                    serial,
                    draining: Some(0),
                    replaced: true,
                })
            }
            4 => {
                // The last key goes out with the drain lifted.
                self.generation[1] += 1;
                None
            }
            _ => None,
        };
    }
}

/// The pod IPs of pod `j` of simulated node `i` (IPv4 while its block has room, always IPv6).
pub(crate) fn pod_ips(i: u32, j: u32, count: u32) -> Vec<IpAddr> {
    let len = v4_block_len(count);
    let size = 1u32 << (32 - len);
    let mut ips = Vec::new();
    if j + 1 < size {
        ips.push(IpAddr::V4(Ipv4Addr::from(
            V4_BASE + (i << (32 - len)) + j + 1,
        )));
    }
    ips.push(IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0x244,
        0,
        0x8000 + (i as u16),
        0,
        0,
        0,
        (j + 2) as u16,
    )));
    ips
}

/// Writes `text` as `dir/<file>` atomically: a dotfile in the same directory, then `rename`
/// (watchers ignore dotfiles and see one complete file).
pub(crate) fn write_atomic(dir: &Path, file: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{file}.scale-bench.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    fs::rename(&tmp, dir.join(file))
}

/// Writes simulated node `n`'s record into the registry directory.
pub(crate) fn publish(dir: &Path, n: &SimNode, count: u32) -> std::io::Result<()> {
    write_atomic(
        dir,
        &format!("{}.json", n.name()),
        &n.record(count).to_json(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn blocks_fit_the_pool() {
        assert_eq!(v4_block_len(100), 24);
        assert_eq!(v4_block_len(128), 24);
        assert_eq!(v4_block_len(129), 25);
        assert_eq!(v4_block_len(5_050), 30);
        assert_eq!(v4_block_len(10_050), 31);
        assert_eq!(v4_block_len(MAX_SIMULATED), 32);
    }

    #[test]
    fn records_parse_back_and_never_collide() {
        let count = 10_050;
        let mut keys = HashSet::new();
        let mut cidrs = HashSet::new();
        let mut endpoints = HashSet::new();
        for i in (0..count).step_by(97).chain([count - 1]) {
            let r = SimNode::new(i).record(count);
            let back = NodeRecord::from_json(&r.name, &r.to_json()).expect("valid record");
            assert_eq!(back, r);
            assert!(keys.insert(r.public_key));
            assert!(keys.insert(r.rotation.second.expect("second slot").public_key));
            for c in &r.pod_cidrs {
                assert!(cidrs.insert(*c), "{c} twice");
                let pool: IpNet = if c.addr().is_ipv4() {
                    "10.244.128.0/17".parse().expect("net")
                } else {
                    "fd00:244::/48".parse().expect("net")
                };
                assert!(pool.contains(c), "{c} outside {pool}");
            }
            for e in &r.endpoints {
                assert!(endpoints.insert(*e), "{e} twice");
            }
        }
    }

    #[test]
    fn a_rotation_replaces_both_keys_ends_idle_and_keeps_the_node_trusted() {
        use keyexchange::trust::{admit, Established, TrustPolicy};
        use std::collections::BTreeMap;
        let policy = TrustPolicy {
            cluster_pools: vec![
                "10.244.0.0/16".parse().expect("a CIDR"),
                "fd00:244::/48".parse().expect("a CIDR"),
            ],
            service_ranges: vec![],
            node_subnets: vec![],
        };
        let me = SimNode::new(1).record(10);
        let mut n = SimNode::new(7);
        let before = n.record(10);
        let records =
            |r: NodeRecord| BTreeMap::from([(me.name.clone(), me.clone()), (r.name.clone(), r)]);
        let mut memory = admit(
            &records(before.clone()),
            &me,
            &policy,
            &Established::default(),
        )
        .established;
        for k in 1..=4 {
            n.rotation_step(k, u64::from(k));
            let r = n.record(10);
            assert!(NodeRecord::from_json(&r.name, &r.to_json()).is_ok());
            match k {
                1 => assert_eq!(r.public_key, before.public_key),
                2 => assert_ne!(r.public_key, before.public_key),
                3 => assert_eq!(r.draining().map(|s| s.index()), Some(1)),
                _ => assert!(r.rotation.step.is_none()),
            }
            let a = admit(&records(r), &me, &policy, &memory);
            assert!(a.refused.is_empty(), "step {k}: {:?}", a.refused);
            memory = a.established;
        }
        assert_ne!(n.record(10).rotation.second, before.rotation.second);
    }

    #[test]
    fn pod_ips_stay_in_the_nodes_blocks() {
        let r = SimNode::new(3).record(5_050);
        for j in 0..30 {
            for ip in pod_ips(3, j, 5_050) {
                assert!(r.pod_cidrs.iter().any(|c| c.contains(&ip)), "{ip}");
            }
        }
        assert_eq!(pod_ips(3, 0, 5_050).len(), 2);
        assert_eq!(pod_ips(3, 29, 5_050).len(), 1);
    }
}
