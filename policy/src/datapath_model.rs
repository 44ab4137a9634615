//! A model of the tc program's policy decision: the packet is looked up in the compiled map
//! contents exactly as the kernel will (hash lookup for isolation; LPM trie lookups where the
//! longest stored prefix covering the key wins, compared bit by bit over the key's bytes).
//!
//! Egress is decided where the packet leaves its source endpoint (tc ingress on the source pod's
//! host-side veth, peer = destination address), ingress before delivery to the destination
//! endpoint (peer = source address); an end that is not a local endpoint of the maps' node is not
//! checked there. The verdict for a new connection is the AND of the two.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::maps::{
    direction_byte, EndpointId, IsolationKey, LpmKey, PeerKeyV4, PeerKeyV6, PolicyMaps, PortKey,
    PEER_KEY_FIXED_BITS, PORT_KEY_FIXED_BITS,
};
use crate::model::Direction;

/// A packet as the datapath sees it: addresses, L4 protocol and destination port, and the local
/// endpoints it leaves from and arrives at (from the ifindex it was seen on), if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (same family as `src`).
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
    /// The local endpoint the packet leaves, if it comes from one.
    pub src_endpoint: Option<EndpointId>,
    /// The local endpoint the packet is delivered to, if it goes to one.
    pub dst_endpoint: Option<EndpointId>,
}

/// The verdict for the first packet of a connection: egress of the source endpoint AND ingress
/// of the destination endpoint.
pub fn allows(maps: &PolicyMaps, packet: &DatapathPacket) -> bool {
    let egress = packet.src_endpoint.is_none_or(|e| {
        direction_allows(
            maps,
            e,
            Direction::Egress,
            packet.dst,
            packet.protocol,
            packet.port,
        )
    });
    let ingress = packet.dst_endpoint.is_none_or(|e| {
        direction_allows(
            maps,
            e,
            Direction::Ingress,
            packet.src,
            packet.protocol,
            packet.port,
        )
    });
    egress && ingress
}

/// One direction's decision: open without an isolation entry, else
/// `peer_bits(peer) & port_bits(protocol, port) != 0`.
pub fn direction_allows(
    maps: &PolicyMaps,
    endpoint: EndpointId,
    direction: Direction,
    peer: IpAddr,
    protocol: u8,
    port: u16,
) -> bool {
    let dir = direction_byte(direction);
    let isolation = IsolationKey {
        endpoint: endpoint.0,
        direction: dir,
        reserved: [0; 3],
    };
    if !maps.isolation.contains_key(&isolation) {
        return true;
    }
    let peer_bits = match peer {
        IpAddr::V4(address) => lpm_lookup(
            &maps.peer_v4,
            &PeerKeyV4 {
                prefix_len: PEER_KEY_FIXED_BITS + 32,
                endpoint: endpoint.0,
                direction: dir,
                reserved: [0; 3],
                address: address.octets(),
            },
        ),
        IpAddr::V6(address) => lpm_lookup(
            &maps.peer_v6,
            &PeerKeyV6 {
                prefix_len: PEER_KEY_FIXED_BITS + 128,
                endpoint: endpoint.0,
                direction: dir,
                reserved: [0; 3],
                address: address.octets(),
            },
        ),
    };
    let port_bits = lpm_lookup(
        &maps.ports,
        &PortKey {
            prefix_len: PORT_KEY_FIXED_BITS + 24,
            endpoint: endpoint.0,
            direction: dir,
            protocol,
            port: port.to_be_bytes(),
        },
    );
    let peer_bits = peer_bits.map_or(0, |v| v.bits);
    let port_bits = port_bits.map_or(0, |v| v.bits);
    peer_bits & port_bits != 0
}

/// The kernel's LPM trie lookup: among stored keys whose `prefix_len` is at most the lookup
/// key's and whose first `prefix_len` bits equal the lookup key's, the longest; `None` if none.
pub fn lpm_lookup<K: LpmKey, V: Copy>(map: &BTreeMap<K, V>, key: &K) -> Option<V> {
    let data = key.data();
    map.iter()
        .filter(|(stored, _)| {
            stored.prefix_len() <= key.prefix_len()
                && leading_bits_equal(&stored.data(), &data, stored.prefix_len())
        })
        .max_by_key(|(stored, _)| stored.prefix_len())
        .map(|(_, v)| *v)
}

fn leading_bits_equal(a: &[u8], b: &[u8], bits: u32) -> bool {
    (0..bits).all(|i| {
        let byte = (i / 8) as usize;
        let mask = 0x80u8 >> (i % 8);
        match (a.get(byte), b.get(byte)) {
            (Some(x), Some(y)) => x & mask == y & mask,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::RuleBits;

    #[test]
    fn longest_prefix_wins() {
        let key = |prefix_len, address: [u8; 4]| PeerKeyV4 {
            prefix_len,
            endpoint: 1,
            direction: 0,
            reserved: [0; 3],
            address,
        };
        let map: BTreeMap<_, _> = [
            (key(64 + 8, [10, 0, 0, 0]), RuleBits { bits: 1 }),
            (key(64 + 16, [10, 1, 0, 0]), RuleBits { bits: 0 }),
        ]
        .into();
        let probe = |a| lpm_lookup(&map, &key(96, a)).map(|v| v.bits);
        assert_eq!(probe([10, 2, 3, 4]), Some(1));
        assert_eq!(probe([10, 1, 3, 4]), Some(0));
        assert_eq!(probe([11, 1, 3, 4]), None);
        // Another endpoint's entries never match.
        let other = PeerKeyV4 {
            endpoint: 2,
            ..key(96, [10, 2, 3, 4])
        };
        assert_eq!(lpm_lookup(&map, &other), None);
    }
}
