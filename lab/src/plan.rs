//! Pure naming and addressing of the lab: which namespace, interface and address each node and
//! pod gets. Kept apart from the code that creates them so it can be tested without root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The underlay's IPv4 subnet (RFC 2544 benchmarking range; only ever inside lab namespaces).
pub const UNDERLAY_V4: &str = "198.18.0.0/24";
/// The underlay's IPv6 subnet.
pub const UNDERLAY_V6: &str = "fd00:198::/64";
/// The underlay router's IPv4 address (the nodes' default gateway; it forwards nothing).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The underlay router's IPv6 address.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0, 0, 0, 0, 0, 1);
/// The cluster's IPv4 pod CIDR; node `i` gets `10.244.i.0/24`.
pub const CLUSTER_V4: &str = "10.244.0.0/16";
/// The cluster's IPv6 pod CIDR; node `i` gets `fd00:244:0:i::/64`.
pub const CLUSTER_V6: &str = "fd00:244::/48";
/// `node-subnet` IPAM: the IPv4 range of the underlay reserved for pods. The whole underlay
/// subnet: every meshd avoids the blocks holding a node's address (the router's, `.1`, shares
/// its `/28` with node 1's `.11`, so no block holds it either).
pub const NODE_SUBNET_POD_RANGE_V4: &str = "198.18.0.0/24";
/// `node-subnet` IPAM: the IPv6 range of the underlay reserved for pods (inside
/// [`UNDERLAY_V6`], clear of the router's and the nodes' addresses).
pub const NODE_SUBNET_POD_RANGE_V6: &str = "fd00:198::1:0/112";
/// The pods' IPv4 next hop: a link-local address answered by proxy ARP on the host side.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// MAC address of every pod's host-side veth; its EUI-64 link-local is the pods' IPv6 next hop.
pub const HOST_VETH_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The pods' IPv6 next hop: the link-local address derived from [`HOST_VETH_MAC`].
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The largest node index the addressing plan supports.
pub const MAX_NODES: u32 = 200;
/// The largest number of pods per node the addressing plan supports.
pub const MAX_PODS: u32 = 200;

/// Errors in lab naming.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The lab name is unusable.
    #[error("lab name {0:?} must be 1-8 characters of a-z and 0-9, starting with a letter")]
    BadName(String),
    /// Too many nodes or pods for the addressing plan.
    #[error("{what} {n} is out of range 1..={max}")]
    OutOfRange {
        /// Nodes or pods.
        what: &'static str,
        /// The requested number.
        n: u32,
        /// The limit.
        max: u32,
    },
}

/// Check a lab name: short, so that every derived name fits the kernel's limits.
pub fn check_name(name: &str) -> Result<(), PlanError> {
    let ok = !name.is_empty()
        && name.len() <= 8
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadName(name.to_string()))
    }
}

/// Check a node or pod count.
pub fn check_range(what: &'static str, n: u32, max: u32) -> Result<(), PlanError> {
    if (1..=max).contains(&n) {
        Ok(())
    } else {
        Err(PlanError::OutOfRange { what, n, max })
    }
}

/// The underlay namespace (holds the switch and the router).
pub fn underlay_ns(lab: &str) -> String {
    format!("{lab}-ul")
}

/// A node's name.
pub fn node_name(i: u32) -> String {
    format!("n{i}")
}

/// A node's network namespace.
pub fn node_ns(lab: &str, i: u32) -> String {
    format!("{lab}-n{i}")
}

/// A pod's name.
pub fn pod_name(node: u32, j: u32) -> String {
    format!("n{node}-p{j}")
}

/// A pod's network namespace.
pub fn pod_ns(lab: &str, node: u32, j: u32) -> String {
    format!("{lab}-n{node}-p{j}")
}

/// The network namespace of a Pod made by `lab apply`: `<lab>-pod-<namespace>.<name>`
/// (unambiguous: both names are DNS labels, without dots). Only the namespace's name is
/// derived from it; interface names are derived from the container id by the CNI.
pub fn applied_pod_ns(lab: &str, namespace: &str, name: &str) -> String {
    format!("{lab}-pod-{namespace}.{name}")
}

/// Whether `ns` is a namespace name this lab would create.
pub fn owns_namespace(lab: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    if rest == "ul" {
        return true;
    }
    if let Some((namespace, name)) = rest.strip_prefix("pod-").and_then(|r| r.split_once('.')) {
        return !namespace.is_empty() && !name.is_empty();
    }
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let Some(node) = rest.strip_prefix('n') else {
        return false;
    };
    match node.split_once("-p") {
        Some((n, p)) => digits(n) && digits(p),
        None => digits(node),
    }
}

/// A node's underlay addresses (IPv4, IPv6).
pub fn node_underlay(i: u32) -> (Ipv4Addr, Ipv6Addr) {
    let v4 = Ipv4Addr::new(198, 18, 0, (10 + i) as u8);
    let v6 = Ipv6Addr::new(0xfd00, 0x198, 0, 0, 0, 0, 0, (0x10 + i) as u16);
    (v4, v6)
}

/// A node's pod CIDRs (IPv4, IPv6).
pub fn node_pod_cidrs(i: u32) -> (Ipv4Net, Ipv6Net) {
    let v4 = Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24).expect("24 is a valid prefix");
    let v6 = Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x244, 0, i as u16, 0, 0, 0, 0), 64)
        .expect("64 is a valid prefix");
    (v4, v6)
}

/// A pod's addresses (IPv4, IPv6).
pub fn pod_addrs(node: u32, j: u32) -> (Ipv4Addr, Ipv6Addr) {
    let v4 = Ipv4Addr::new(10, 244, node as u8, (j + 1) as u8);
    let v6 = Ipv6Addr::new(0xfd00, 0x244, 0, node as u16, 0, 0, 0, (j + 1) as u16);
    (v4, v6)
}

/// Both cluster CIDRs.
pub fn cluster_cidrs() -> Vec<IpNet> {
    [CLUSTER_V4, CLUSTER_V6]
        .iter()
        .map(|c| c.parse().expect("constant CIDR"))
        .collect()
}

/// Both addresses of a pair as `IpAddr`s.
pub fn both(v4: Ipv4Addr, v6: Ipv6Addr) -> [IpAddr; 2] {
    [IpAddr::V4(v4), IpAddr::V6(v6)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("mlab").is_ok());
        assert!(check_name("a1").is_ok());
        for bad in ["", "1lab", "Lab", "toolongname", "a-b", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recognises_only_its_own_namespaces() {
        let applied = applied_pod_ns("lab", "x", "a");
        assert_eq!(applied, "lab-pod-x.a");
        for ours in ["lab-ul", "lab-n1", "lab-n12", "lab-n3-p2", &applied] {
            assert!(owns_namespace("lab", ours), "{ours}");
        }
        for theirs in [
            "lab",
            "lab-",
            "lab-x",
            "lab-n",
            "lab-n1-p",
            "labx-n1",
            "lab2-n1",
            "lab-n1-q1",
            "other-n1",
            "lab-pod-x",
            "lab-pod-.a",
            "labx-pod-x.a",
        ] {
            assert!(!owns_namespace("lab", theirs), "{theirs}");
        }
    }

    #[test]
    fn pods_sit_inside_their_nodes_cidrs_and_nodes_inside_the_cluster() {
        let cluster = cluster_cidrs();
        for i in 1..=MAX_NODES {
            let (c4, c6) = node_pod_cidrs(i);
            assert!(cluster[0].contains(&IpNet::V4(c4)));
            assert!(cluster[1].contains(&IpNet::V6(c6)));
            for j in [1, 2, MAX_PODS] {
                let (a4, a6) = pod_addrs(i, j);
                assert!(c4.contains(&a4) && c6.contains(&a6), "{i}/{j}");
            }
        }
        assert_ne!(node_pod_cidrs(1), node_pod_cidrs(2));
    }

    #[test]
    fn underlay_addresses_are_distinct_and_in_subnet() {
        let v4: Ipv4Net = UNDERLAY_V4.parse().expect("cidr");
        let v6: Ipv6Net = UNDERLAY_V6.parse().expect("cidr");
        let mut seen = std::collections::BTreeSet::new();
        for i in 1..=MAX_NODES {
            let (a4, a6) = node_underlay(i);
            assert!(v4.contains(&a4) && v6.contains(&a6));
            assert!(a4 != GATEWAY_V4 && a6 != GATEWAY_V6);
            assert!(seen.insert(a4));
        }
    }

    #[test]
    fn range_checks() {
        assert!(check_range("nodes", 0, 5).is_err());
        assert!(check_range("nodes", 6, 5).is_err());
        assert!(check_range("nodes", 5, 5).is_ok());
    }
}
