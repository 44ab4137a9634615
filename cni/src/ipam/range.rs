//! Which addresses of a CIDR are handed out (pure): the usable range, the address at an offset,
//! the lowest free one and whether an address is usable (see the parent module for the rule).

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The usable range of a CIDR as `(first, last)` offsets from its network address, or `None`
/// when it has no usable address (see the module doc for the rule).
pub fn usable_range(cidr: IpNet) -> Option<(u128, u128)> {
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    if host_bits < 2 {
        return None;
    }
    let last = if host_bits >= 128 {
        u128::MAX - 1
    } else {
        (1u128 << host_bits) - 2
    };
    Some((2, last))
}

/// The address at `offset` from the network address of `cidr`.
pub fn nth_address(cidr: IpNet, offset: u128) -> IpAddr {
    match cidr {
        IpNet::V4(n) => {
            let base = u32::from(n.network());
            // Offsets come from `usable_range`, which keeps them within the CIDR.
            IpAddr::V4(Ipv4Addr::from(base.wrapping_add(offset as u32)))
        }
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(offset))),
    }
}

/// The lowest usable address of `cidr` not in `taken` (pure).
pub fn first_free<S: BuildHasher>(cidr: IpNet, taken: &HashSet<IpAddr, S>) -> Option<IpAddr> {
    let (first, last) = usable_range(cidr)?;
    let mut offset = first;
    loop {
        let addr = nth_address(cidr, offset);
        if !taken.contains(&addr) {
            return Some(addr);
        }
        if offset == last {
            return None;
        }
        offset += 1;
    }
}

/// Whether `addr` is a usable address of `cidr`.
pub fn is_usable(cidr: IpNet, addr: IpAddr) -> bool {
    if !cidr.contains(&addr) {
        return false;
    }
    let Some((first, last)) = usable_range(cidr) else {
        return false;
    };
    let offset = match (cidr, addr) {
        (IpNet::V4(n), IpAddr::V4(a)) => u128::from(u32::from(a) - u32::from(n.network())),
        (IpNet::V6(n), IpAddr::V6(a)) => u128::from(a) - u128::from(n.network()),
        _ => return false,
    };
    (first..=last).contains(&offset)
}
