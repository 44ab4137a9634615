//! What a successful ADD prints: the spec's result types ([`CniResult`] and its interfaces,
//! addresses, routes and DNS) in the result format of a configuration's `cniVersion`, chaining
//! onto a `prevResult`, and the result of attaching one pod interface (pure).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{version_cmp, HOST_VETH_MAC, POD_GATEWAY_V4, POD_GATEWAY_V6};

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Its MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The container's netns path for container interfaces; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Other keys, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`: present in 0.3.x/0.4.0 results only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address with its prefix length.
    pub address: IpNet,
    /// The default gateway for this address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Other keys, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination.
    pub dst: IpNet,
    /// The next hop; absent for on-link routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Other keys (mtu, advmss, priority, table, scope in 1.1.0), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DNS settings of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The success result of ADD (and the `prevResult` of chained plugins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The spec version of the result: the configuration's.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces created or used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes installed in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    /// Other keys, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CniResult {
    /// Convert to the result format of `version`: `ips[].version` exists before 1.0.0 only.
    pub fn in_version(mut self, version: &str) -> CniResult {
        let old = version_cmp(version, "1.0.0").is_lt();
        for ip in &mut self.ips {
            ip.version = old.then(|| {
                if ip.address.addr().is_ipv4() {
                    "4".to_string()
                } else {
                    "6".to_string()
                }
            });
        }
        self.cni_version = version.to_string();
        self
    }

    /// Chain: `prev` followed by `self`'s interfaces, addresses and routes, with `self`'s
    /// interface indices moved past `prev`'s interfaces; `prev`'s DNS and extra keys are kept
    /// (`self`'s DNS fills in only when `prev` has none).
    pub fn merge(self, prev: CniResult) -> CniResult {
        let offset = prev.interfaces.len();
        let mut out = prev;
        out.interfaces.extend(self.interfaces);
        out.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        out.routes.extend(self.routes);
        if out.dns.is_empty() {
            out.dns = self.dns;
        }
        out.cni_version = self.cni_version;
        out
    }
}

/// The result of attaching a pod interface with `addrs` (pure).
pub fn pod_result(
    version: &str,
    host_veth: &str,
    pod_ifname: &str,
    pod_mac: &str,
    netns: &str,
    mtu: Option<u32>,
    addrs: &[IpAddr],
) -> CniResult {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for addr in addrs {
        let (address, gw, default) = match addr {
            IpAddr::V4(a) => (
                IpNet::new(IpAddr::V4(*a), 32),
                IpAddr::V4(POD_GATEWAY_V4),
                "0.0.0.0/0",
            ),
            IpAddr::V6(a) => (
                IpNet::new(IpAddr::V6(*a), 128),
                IpAddr::V6(POD_GATEWAY_V6),
                "::/0",
            ),
        };
        let Ok(address) = address else { continue };
        ips.push(IpConfig {
            version: None,
            address,
            gateway: Some(gw),
            interface: Some(1),
            extra: Map::new(),
        });
        if let Ok(dst) = default.parse() {
            routes.push(Route {
                dst,
                gw: Some(gw),
                extra: Map::new(),
            });
        }
    }
    let new_version = !version_cmp(version, "1.1.0").is_lt();
    CniResult {
        cni_version: version.to_string(),
        interfaces: vec![
            Interface {
                name: host_veth.to_string(),
                mac: HOST_VETH_MAC.to_string(),
                mtu: mtu.filter(|_| new_version),
                ..Interface::default()
            },
            Interface {
                name: pod_ifname.to_string(),
                mac: pod_mac.to_string(),
                mtu: mtu.filter(|_| new_version),
                sandbox: netns.to_string(),
                ..Interface::default()
            },
        ],
        ips,
        routes,
        dns: Dns::default(),
        extra: Map::new(),
    }
    .in_version(version)
}
