//! The kernel side of a pod interface, driven through the `ip` command (iproute2) and `/proc/sys`.
//!
//! The layout is the lab's (README, "Packet path"): a veth pair whose host side (`mshd` + 8 hex
//! digits, [`host_veth_name`](crate::host_veth_name)) has MAC `ee:ee:ee:ee:ee:ee`, proxy ARP and IPv4 forwarding on (the kernel's proxy ARP
//! answers only on forwarding interfaces) with no proxy delay, DAD off, and
//! carries a `/32` and a `/128` host route to the pod; the pod side holds the pod's `/32` and
//! `/128`, an on-link route to 169.254.1.1 and default routes via 169.254.1.1 and
//! fe80::ecee:eeff:feee:eeee (the host side's EUI-64 link-local address). The host veth's alias
//! names its owner ([`owner_alias`](crate::datapath::owner_alias)), so a hash collision between two pods' host veth names is
//! an error on ADD instead of one pod's veth being replaced by the other's, and DEL only ever
//! deletes its own veth.
//!
//! Commands for the pod are run with this thread switched into the pod's network namespace
//! ([`in_netns`](crate::datapath::in_netns)): `ip` children inherit it. The plugin is single-threaded, so nothing else
//! runs in the wrong namespace meanwhile.

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};
use serde_json::Value;

use super::{host_veth_name, CniError, HOST_VETH_MAC, POD_GATEWAY_V4, POD_GATEWAY_V6};

/// What to attach.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a Path,
    /// The pod's addresses (from IPAM).
    pub addrs: &'a [IpAddr],
    /// The MTU of both ends, when configured.
    pub mtu: Option<u32>,
}

/// Run `ip` with `args`; stdout on success, [`CniError::Io`] with its stderr otherwise.
pub fn ip(args: &[&str]) -> Result<String, CniError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CniError::Io(format!("running ip: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CniError::Io(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip_json(args: &[&str]) -> Result<Vec<Value>, CniError> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = ip(&full)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|e| CniError::Io(format!("parsing `ip -j` output: {e}")))
}

fn sysctl(path: &str, value: &str) -> Result<(), CniError> {
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).map_err(|e| CniError::Io(format!("writing {full}: {e}")))
}

/// Open a network namespace; a missing one is [`CniError::UnknownContainer`] naming the path.
pub fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CniError::UnknownContainer(format!(
                "network namespace {} does not exist",
                path.display()
            ))
        } else {
            CniError::Io(format!("opening {}: {e}", path.display()))
        }
    })
}

/// Run `f` with the calling thread in the network namespace `ns`, then switch back.
pub fn in_netns<T>(
    ns: &File,
    path: &Path,
    f: impl FnOnce() -> Result<T, CniError>,
) -> Result<T, CniError> {
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| CniError::Io(format!("opening own network namespace: {e}")))?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
        CniError::UnknownContainer(format!(
            "{} is not a usable network namespace: {e}",
            path.display()
        ))
    })?;
    let out = f();
    setns(&home, CloneFlags::CLONE_NEWNET)
        .map_err(|e| CniError::Io(format!("returning to own network namespace: {e}")))?;
    out
}

/// Whether a link named `name` exists in the current network namespace.
pub fn link_exists(name: &str) -> Result<bool, CniError> {
    Ok(link_alias(name)?.is_some())
}

/// The alias of link `name`: `None` when there is no such link, `Some("")` without alias.
fn link_alias(name: &str) -> Result<Option<String>, CniError> {
    Ok(ip_json(&["link", "show"])?
        .iter()
        .find(|l| l.get("ifname").and_then(Value::as_str) == Some(name))
        .map(|l| {
            l.get("ifalias")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        }))
}

/// The alias marking a host veth as this pod interface's (guards against hash collisions).
pub fn owner_alias(container_id: &str, ifname: &str) -> String {
    format!("meshd-cni {container_id} {ifname}")
}

/// Whether the host veth `host` exists, and, if it does, whether it belongs to the pod
/// interface (a host veth of another pod with the same hashed name is an error). A veth without
/// alias is a leftover of an ADD killed between creating and labelling it, and counts as ours.
fn own_host_veth(host: &str, container_id: &str, ifname: &str) -> Result<bool, CniError> {
    match link_alias(host)? {
        None => Ok(false),
        Some(alias) if alias.is_empty() || alias == owner_alias(container_id, ifname) => Ok(true),
        Some(alias) => Err(CniError::Io(format!(
            "host veth name {host} is taken by another interface ({alias:?})"
        ))),
    }
}

fn link_mac(name: &str) -> Result<String, CniError> {
    ip_json(&["link", "show", "dev", name])?
        .first()
        .and_then(|l| l.get("address"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| CniError::Io(format!("no MAC address on {name}")))
}

fn prefix(addr: &IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "-4"
    } else {
        "-6"
    }
}

/// Attach the pod: create the veth pair into the pod's namespace and configure both ends.
/// A host veth left from an earlier attempt is replaced. Returns the pod side's MAC address.
pub fn add(spec: &PodSpec<'_>) -> Result<String, CniError> {
    let ns = open_netns(spec.netns)?;
    let host = host_veth_name(spec.container_id, spec.ifname);
    if own_host_veth(&host, spec.container_id, spec.ifname)? {
        ip(&["link", "del", &host])?;
    }
    let netns = spec.netns.to_string_lossy();
    let mtu = spec.mtu.map(|m| m.to_string());
    let mut create = vec!["link", "add", &host];
    if let Some(m) = &mtu {
        create.extend(["mtu", m.as_str()]);
    }
    create.extend(["type", "veth", "peer", "name", spec.ifname]);
    if let Some(m) = &mtu {
        create.extend(["mtu", m.as_str()]);
    }
    create.extend(["netns", &netns]);
    ip(&create)?;
    let result = configure(spec, &ns, &host);
    if result.is_err() {
        let _ = ip(&["link", "del", &host]);
    }
    result
}

fn configure(spec: &PodSpec<'_>, ns: &File, host: &str) -> Result<String, CniError> {
    let alias = owner_alias(spec.container_id, spec.ifname);
    ip(&["link", "set", "dev", host, "alias", &alias])?;
    ip(&["link", "set", "dev", host, "address", HOST_VETH_MAC])?;
    sysctl(&format!("net/ipv4/conf/{host}/proxy_arp"), "1")?;
    // Proxy ARP answers only on interfaces that forward.
    sysctl(&format!("net/ipv4/conf/{host}/forwarding"), "1")?;
    // ... and, by default, only after a random delay of up to 0.8 s (proxy_delay), which every
    // new pod's first IPv4 packet would wait for: answer at once, as Calico does.
    sysctl(&format!("net/ipv4/neigh/{host}/proxy_delay"), "0")?;
    sysctl(&format!("net/ipv6/conf/{host}/accept_dad"), "0")?;
    ip(&["link", "set", "dev", host, "up"])?;
    let ifname = spec.ifname;
    let gw4 = POD_GATEWAY_V4.to_string();
    let gw6 = POD_GATEWAY_V6.to_string();
    let mac = in_netns(ns, spec.netns, || {
        sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        ip(&["link", "set", "dev", "lo", "up"])?;
        for addr in spec.addrs {
            let p = prefix(addr);
            let mut args = vec![family(addr), "addr", "replace", &p, "dev", ifname];
            if addr.is_ipv6() {
                args.push("nodad");
            }
            ip(&args)?;
        }
        ip(&["link", "set", "dev", ifname, "up"])?;
        if spec.addrs.iter().any(IpAddr::is_ipv4) {
            ip(&[
                "-4", "route", "replace", &gw4, "dev", ifname, "scope", "link",
            ])?;
            ip(&[
                "-4", "route", "replace", "default", "via", &gw4, "dev", ifname,
            ])?;
        }
        if spec.addrs.iter().any(IpAddr::is_ipv6) {
            ip(&[
                "-6", "route", "replace", "default", "via", &gw6, "dev", ifname,
            ])?;
        }
        // The gateways' MAC is known: no ARP request or neighbour solicitation for them. A
        // first one sent before the host veth could answer (its IPv6 link-local address
        // appears only when the pod end comes up) went unanswered, and the pod's first reply
        // waited for the retransmission, 1 s or more.
        for addr in spec.addrs {
            let gw = if addr.is_ipv4() { &gw4 } else { &gw6 };
            ip(&[
                family(addr),
                "neigh",
                "replace",
                gw,
                "lladdr",
                HOST_VETH_MAC,
                "dev",
                ifname,
                "nud",
                "permanent",
            ])?;
        }
        link_mac(ifname)
    })?;
    for addr in spec.addrs {
        let p = prefix(addr);
        ip(&[family(addr), "route", "replace", &p, "dev", host])?;
    }
    // Likewise the node knows the pod's MAC: its first packet to the pod needs no
    // resolution either.
    for addr in spec.addrs {
        let a = addr.to_string();
        ip(&[
            family(addr),
            "neigh",
            "replace",
            &a,
            "lladdr",
            &mac,
            "dev",
            host,
            "nud",
            "permanent",
        ])?;
    }
    Ok(mac)
}

/// Detach the pod: delete the host veth (the kernel deletes its peer and every route through
/// it). Idempotent: a missing veth is success, and so is one owned by another pod interface
/// (left alone). Returns whether a veth was deleted.
pub fn del(container_id: &str, ifname: &str) -> Result<bool, CniError> {
    let host = host_veth_name(container_id, ifname);
    if !matches!(own_host_veth(&host, container_id, ifname), Ok(true)) {
        return Ok(false);
    }
    match ip(&["link", "del", &host]) {
        Ok(_) => Ok(true),
        // Deleted concurrently.
        Err(_) if !link_exists(&host)? => Ok(false),
        Err(e) => Err(e),
    }
}

fn has_route(addr_family: &str, dst: &str, dev: &str, via: Option<&str>) -> Result<bool, CniError> {
    Ok(ip_json(&[addr_family, "route", "show", "exact", dst])?
        .iter()
        .any(|r| {
            r.get("dev").and_then(Value::as_str) == Some(dev)
                && via.is_none_or(|g| r.get("gateway").and_then(Value::as_str) == Some(g))
        }))
}

/// Verify the attachment: both veth ends, the pod's addresses and routes, the host routes.
pub fn check(spec: &PodSpec<'_>) -> Result<(), CniError> {
    let ns = open_netns(spec.netns)?;
    let host = host_veth_name(spec.container_id, spec.ifname);
    let fail = |what: String| Err(CniError::Io(format!("CHECK failed: {what}")));
    if !own_host_veth(&host, spec.container_id, spec.ifname)? {
        return fail(format!("host veth {host} is missing"));
    }
    for addr in spec.addrs {
        if !has_route(family(addr), &prefix(addr), &host, None)? {
            return fail(format!("host route {} dev {host} is missing", prefix(addr)));
        }
    }
    let ifname = spec.ifname;
    let gw4 = POD_GATEWAY_V4.to_string();
    let gw6 = POD_GATEWAY_V6.to_string();
    in_netns(&ns, spec.netns, || {
        if !link_exists(ifname)? {
            return fail(format!("{ifname} is missing in {}", spec.netns.display()));
        }
        let present: Vec<String> = ip_json(&["addr", "show", "dev", ifname])?
            .iter()
            .flat_map(|l| {
                l.get("addr_info")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a.get("local")?.as_str()?,
                    a.get("prefixlen")?.as_u64()?
                ))
            })
            .collect();
        for addr in spec.addrs {
            if !present.contains(&prefix(addr)) {
                return fail(format!("{} is missing on {ifname}", prefix(addr)));
            }
        }
        if spec.addrs.iter().any(IpAddr::is_ipv4)
            && !has_route("-4", "0.0.0.0/0", ifname, Some(&gw4))?
        {
            return fail(format!("IPv4 default route via {gw4} is missing"));
        }
        if spec.addrs.iter().any(IpAddr::is_ipv6) && !has_route("-6", "::/0", ifname, Some(&gw6))? {
            return fail(format!("IPv6 default route via {gw6} is missing"));
        }
        Ok(())
    })
}
