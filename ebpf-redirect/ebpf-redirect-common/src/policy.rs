//! The NetworkPolicy maps' ABI: key and value layouts of `POLICY_ISOLATION`, `POLICY_PEER_V4`,
//! `POLICY_PEER_V6` and `POLICY_PORT`, the direction bytes, and the LPM tries' data parts.
//!
//! This is the one definition of the layout: the compiler (`meshd-policy`, which re-exports
//! these types from `meshd_policy::maps`), the loader and the tc programs all use it. Every
//! struct is `#[repr(C)]` with no implicit padding (every byte is a field, reserved bytes are
//! zero), so the kernel's byte comparisons see exactly the fields listed.
//!
//! LPM trie keys are the kernel's `struct bpf_lpm_trie_key_u8`: a native-endian `u32`
//! `prefix_len` counting bits of the bytes that follow it. [`PeerKeyV4::trie_data`] and its
//! siblings return those bytes (what aya's `lpm_trie::Key<[u8; N]>` carries after the prefix).

/// `direction` byte of ingress entries (traffic towards the endpoint; tc egress on its veth).
pub const DIRECTION_INGRESS: u8 = 0;
/// `direction` byte of egress entries (traffic from the endpoint; tc ingress on its veth).
pub const DIRECTION_EGRESS: u8 = 1;

/// Bits of a peer key always covered by its prefix: endpoint (32), direction (8), reserved (24).
pub const PEER_KEY_FIXED_BITS: u32 = 64;
/// Bits of a port key always covered by its prefix: endpoint (32) and direction (8); protocol
/// (8) and port (16) follow.
pub const PORT_KEY_FIXED_BITS: u32 = 40;

/// The number of rules an endpoint-direction can hold: the width of [`RuleBits`].
pub const MAX_RULES: usize = 64;

/// Bytes after `prefix_len` in a [`PeerKeyV4`].
pub const PEER_V4_DATA_LEN: usize = 12;
/// Bytes after `prefix_len` in a [`PeerKeyV6`].
pub const PEER_V6_DATA_LEN: usize = 24;
/// Bytes after `prefix_len` in a [`PortKey`].
pub const PORT_DATA_LEN: usize = 8;

/// Key of `POLICY_ISOLATION` (hash map, 8 bytes). Present = the endpoint is isolated in that
/// direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IsolationKey {
    /// The endpoint: ifindex of the pod's host-side veth, native endian.
    pub endpoint: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// Value of `POLICY_ISOLATION` (4 bytes): how many rule bits the endpoint-direction uses
/// (informational; 0 = isolated with nothing allowed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IsolationValue {
    /// Number of rules (bits) in use.
    pub rules: u32,
}

/// Key of `POLICY_PEER_V4` (LPM trie, 16 bytes; `prefix_len` = 64 + address prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKeyV4 {
    /// Bits of what follows that must match (64..=96).
    pub prefix_len: u32,
    /// The endpoint, native endian.
    pub endpoint: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// The peer address (the source for ingress, the destination for egress), network order.
    pub address: [u8; 4],
}

/// Key of `POLICY_PEER_V6` (LPM trie, 28 bytes; `prefix_len` = 64 + address prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKeyV6 {
    /// Bits of what follows that must match (64..=192).
    pub prefix_len: u32,
    /// The endpoint, native endian.
    pub endpoint: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// The peer address, network order.
    pub address: [u8; 16],
}

/// Key of `POLICY_PORT` (LPM trie, 12 bytes; `prefix_len` = 40 + protocol and port bits:
/// 40 = every protocol and port, 48 = every port of `protocol`, 48 + n = the first n bits of
/// `port`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// Bits of what follows that must match (40..=64).
    pub prefix_len: u32,
    /// The endpoint, native endian.
    pub endpoint: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP); looked up with the packet's.
    pub protocol: u8,
    /// Destination port, network order (0 for protocols without ports).
    pub port: [u8; 2],
}

/// Value of the LPM tries (8 bytes): bit `i` set = rule `i` admits what the key covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleBits {
    /// The rule bitmap, native endian.
    pub bits: u64,
}

/// The endpoint, direction and reserved bytes that lead every peer key's data.
#[inline(always)]
fn peer_fixed(endpoint: u32, direction: u8, reserved: [u8; 3]) -> [u8; 8] {
    let e = endpoint.to_ne_bytes();
    [
        e[0],
        e[1],
        e[2],
        e[3],
        direction,
        reserved[0],
        reserved[1],
        reserved[2],
    ]
}

impl PeerKeyV4 {
    /// The bytes after `prefix_len`, as they lie in memory.
    #[inline(always)]
    pub fn trie_data(&self) -> [u8; PEER_V4_DATA_LEN] {
        let f = peer_fixed(self.endpoint, self.direction, self.reserved);
        let a = self.address;
        [
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], a[0], a[1], a[2], a[3],
        ]
    }
}

impl PeerKeyV6 {
    /// The bytes after `prefix_len`, as they lie in memory.
    #[inline(always)]
    pub fn trie_data(&self) -> [u8; PEER_V6_DATA_LEN] {
        let mut out = [0u8; PEER_V6_DATA_LEN];
        let f = peer_fixed(self.endpoint, self.direction, self.reserved);
        let mut i = 0;
        while i < 8 {
            out[i] = f[i];
            i += 1;
        }
        while i < PEER_V6_DATA_LEN {
            out[i] = self.address[i - 8];
            i += 1;
        }
        out
    }
}

impl PortKey {
    /// The bytes after `prefix_len`, as they lie in memory.
    #[inline(always)]
    pub fn trie_data(&self) -> [u8; PORT_DATA_LEN] {
        let e = self.endpoint.to_ne_bytes();
        [
            e[0],
            e[1],
            e[2],
            e[3],
            self.direction,
            self.protocol,
            self.port[0],
            self.port[1],
        ]
    }
}

fn ne_u32(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

impl PeerKeyV4 {
    /// The key whose `prefix_len` and [`PeerKeyV4::trie_data`] are these (what a map read
    /// returns).
    pub fn from_trie_data(prefix_len: u32, d: [u8; PEER_V4_DATA_LEN]) -> Self {
        Self {
            prefix_len,
            endpoint: ne_u32([d[0], d[1], d[2], d[3]]),
            direction: d[4],
            reserved: [d[5], d[6], d[7]],
            address: [d[8], d[9], d[10], d[11]],
        }
    }
}

impl PeerKeyV6 {
    /// The key whose `prefix_len` and [`PeerKeyV6::trie_data`] are these.
    pub fn from_trie_data(prefix_len: u32, d: [u8; PEER_V6_DATA_LEN]) -> Self {
        let mut address = [0u8; 16];
        address.copy_from_slice(&d[8..]);
        Self {
            prefix_len,
            endpoint: ne_u32([d[0], d[1], d[2], d[3]]),
            direction: d[4],
            reserved: [d[5], d[6], d[7]],
            address,
        }
    }
}

impl PortKey {
    /// The key whose `prefix_len` and [`PortKey::trie_data`] are these.
    pub fn from_trie_data(prefix_len: u32, d: [u8; PORT_DATA_LEN]) -> Self {
        Self {
            prefix_len,
            endpoint: ne_u32([d[0], d[1], d[2], d[3]]),
            direction: d[4],
            protocol: d[5],
            port: [d[6], d[7]],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::{IsolationKey, IsolationValue, PeerKeyV4, PeerKeyV6, PortKey, RuleBits};

    // SAFETY: `#[repr(C)]`, `Copy`, integers only, no implicit padding (sizes checked by the
    // tests below): every bit pattern is valid. The same holds for the five impls after it.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for IsolationKey {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for IsolationValue {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for RuleBits {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for PeerKeyV4 {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for PeerKeyV6 {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for PortKey {}
}

#[cfg(test)]
mod tests {

    use core::mem::{offset_of, size_of};

    use proptest::prelude::*;

    use super::*;

    /// The layouts `policy/src/maps.rs` documents: sizes and offsets, no implicit padding.
    #[test]
    fn byte_layouts() {
        assert_eq!(size_of::<IsolationKey>(), 8);
        assert_eq!(offset_of!(IsolationKey, direction), 4);
        assert_eq!(offset_of!(IsolationKey, reserved), 5);
        assert_eq!(size_of::<IsolationValue>(), 4);

        assert_eq!(size_of::<PeerKeyV4>(), 16);
        assert_eq!(offset_of!(PeerKeyV4, endpoint), 4);
        assert_eq!(offset_of!(PeerKeyV4, direction), 8);
        assert_eq!(offset_of!(PeerKeyV4, reserved), 9);
        assert_eq!(offset_of!(PeerKeyV4, address), 12);
        assert_eq!(size_of::<PeerKeyV4>(), 4 + PEER_V4_DATA_LEN);

        assert_eq!(size_of::<PeerKeyV6>(), 28);
        assert_eq!(offset_of!(PeerKeyV6, endpoint), 4);
        assert_eq!(offset_of!(PeerKeyV6, direction), 8);
        assert_eq!(offset_of!(PeerKeyV6, address), 12);
        assert_eq!(size_of::<PeerKeyV6>(), 4 + PEER_V6_DATA_LEN);

        assert_eq!(size_of::<PortKey>(), 12);
        assert_eq!(offset_of!(PortKey, endpoint), 4);
        assert_eq!(offset_of!(PortKey, direction), 8);
        assert_eq!(offset_of!(PortKey, protocol), 9);
        assert_eq!(offset_of!(PortKey, port), 10);
        assert_eq!(size_of::<PortKey>(), 4 + PORT_DATA_LEN);

        assert_eq!(size_of::<RuleBits>(), 8);
        assert_eq!(MAX_RULES, 8 * size_of::<RuleBits>());
    }

    /// The struct's bytes as they lie in memory.
    fn raw<T: Copy>(value: &T) -> Vec<u8> {
        #[allow(unsafe_code)]
        // SAFETY: T is one of this module's `#[repr(C)]` integer-only structs without padding
        // (checked by `byte_layouts`), so all `size_of::<T>()` bytes are initialised.
        let bytes = unsafe {
            core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>())
        };
        bytes.to_vec()
    }

    proptest! {
        /// `trie_data` is exactly the memory after `prefix_len`, so writing (prefix_len,
        /// trie_data) through aya's `Key<[u8; N]>` stores the struct the programs look up.
        #[test]
        fn trie_data_is_the_memory_after_prefix_len(
            prefix_len in any::<u32>(), endpoint in any::<u32>(), direction in any::<u8>(),
            reserved in any::<[u8; 3]>(), v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>(),
            protocol in any::<u8>(), port in any::<[u8; 2]>(),
        ) {
            let k4 = PeerKeyV4 { prefix_len, endpoint, direction, reserved, address: v4 };
            prop_assert_eq!(&raw(&k4)[..4], &prefix_len.to_ne_bytes());
            prop_assert_eq!(&raw(&k4)[4..], &k4.trie_data());
            let k6 = PeerKeyV6 { prefix_len, endpoint, direction, reserved, address: v6 };
            prop_assert_eq!(&raw(&k6)[4..], &k6.trie_data());
            let kp = PortKey { prefix_len, endpoint, direction, protocol, port };
            prop_assert_eq!(&raw(&kp)[4..], &kp.trie_data());
            // A map read gives (prefix_len, trie data) back: the same key.
            prop_assert_eq!(PeerKeyV4::from_trie_data(prefix_len, k4.trie_data()), k4);
            prop_assert_eq!(PeerKeyV6::from_trie_data(prefix_len, k6.trie_data()), k6);
            prop_assert_eq!(PortKey::from_trie_data(prefix_len, kp.trie_data()), kp);
        }
    }
}
