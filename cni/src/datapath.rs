//! The kernel side of a pod interface, configured over rtnetlink ([`crate::netlink`]) and
//! `/proc/sys`.
//!
//! The layout is the lab's (README, "Packet path"): a veth pair whose host side (`mshd` + 8 hex
//! digits, [`host_veth_name`](crate::host_veth_name)) has MAC `ee:ee:ee:ee:ee:ee`, proxy ARP and IPv4 forwarding on (the kernel's proxy ARP
//! answers only on forwarding interfaces) with no proxy delay, DAD off, and
//! carries a `/32` and a `/128` host route to the pod; the pod side holds the pod's `/32` and
//! `/128`, an on-link route to 169.254.1.1 and default routes via 169.254.1.1 and
//! fe80::ecee:eeff:feee:eeee (the host side's EUI-64 link-local address). The host veth's alias
//! names its owner ([`owner_alias`](crate::datapath::owner_alias)), so a hash collision between two pods' host veth names is
//! an error on ADD instead of one pod's veth being replaced by the other's, and DEL only ever
//! deletes its own veth. Both sides know each other's MAC from the start: permanent neighbour
//! entries for the gateways in the pod and for the pod's addresses on the host veth.
//!
//! The veth pair is created with its peer directly in the pod's namespace. The pod's side is
//! then configured through a netlink socket opened while this thread was switched into the
//! pod's namespace ([`in_netns`](crate::datapath::in_netns)); a socket stays in the namespace
//! it was opened in. The thread switches only for that and for the pod's `/proc/sys` write, and
//! the plugin is single-threaded, so nothing else runs in the wrong namespace meanwhile.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::sched::{setns, CloneFlags};

use crate::link_deleter::{Ended, LinkDeleter};
use crate::netlink::{
    self, host_prefix, libc_errno, Heard, LinkMonitor, Netlink, NetlinkError, Route, VethPair,
};
use crate::{host_veth_name, CniError, HOST_VETH_MAC, POD_GATEWAY_V4, POD_GATEWAY_V6};

/// [`HOST_VETH_MAC`] as bytes.
const HOST_VETH_MAC_BYTES: [u8; 6] = [0xee; 6];

/// Errors of the pod interface, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The pod's network namespace does not exist.
    #[error("network namespace {} does not exist", path.display())]
    NetnsMissing {
        /// Its path (`CNI_NETNS`).
        path: PathBuf,
    },
    /// The pod's network namespace could not be opened.
    #[error("opening {}", path.display())]
    NetnsOpen {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a network namespace this thread can enter.
    #[error("{} is not a usable network namespace", path.display())]
    NetnsEnter {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The thread could not return to (or find) its own namespace.
    #[error("returning to own network namespace")]
    NetnsReturn(#[source] std::io::Error),
    /// A netlink socket could not be opened.
    #[error("opening a netlink socket in {netns}")]
    Socket {
        /// `the node's namespace` or the pod's namespace path.
        netns: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// A `/proc/sys` setting could not be written.
    #[error("writing {path}")]
    Sysctl {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink step was refused or failed.
    #[error("{step}")]
    Netlink {
        /// What was being done (`creating veth pair mshd0a1b2c3d / eth0`).
        step: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// The host veth name belongs to another pod interface.
    #[error("host veth name {host} is taken by another interface ({alias:?})")]
    NameTaken {
        /// The host veth name.
        host: String,
        /// The alias of the link holding it.
        alias: String,
    },
    /// A link that was just created is not there.
    #[error("{name} is missing in {netns} right after its creation")]
    Vanished {
        /// Its name.
        name: String,
        /// Where it was looked for.
        netns: String,
    },
    /// The pod's side of the veth pair has no MAC address.
    #[error("{name} in {netns} has no MAC address")]
    NoMac {
        /// Its name.
        name: String,
        /// Its namespace.
        netns: String,
    },
    /// CHECK found the attachment incomplete.
    #[error("CHECK failed: {0}")]
    CheckFailed(String),
}

/// Render an error with its causes, `outer: inner: root` (each printed once).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl From<DatapathError> for CniError {
    fn from(e: DatapathError) -> CniError {
        match e {
            DatapathError::NetnsMissing { .. } | DatapathError::NetnsEnter { .. } => {
                CniError::UnknownContainer(chain(&e))
            }
            _ => CniError::Io(chain(&e)),
        }
    }
}

/// Attach a step's name to a netlink failure.
fn step(what: impl FnOnce() -> String) -> impl FnOnce(NetlinkError) -> DatapathError {
    move |source| DatapathError::Netlink {
        step: what(),
        source,
    }
}

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

fn sysctl(path: &str, value: &str) -> Result<(), DatapathError> {
    let full = format!("/proc/sys/{path}");
    sysctl_at(&full, &full, value)
}

/// Write `value` to the sysctl file opened as `open` (a `/proc/sys` path, or one through an
/// open directory's `/proc/self/fd` link), named `shown` in errors.
fn sysctl_at(open: &str, shown: &str, value: &str) -> Result<(), DatapathError> {
    std::fs::write(open, value).map_err(|source| DatapathError::Sysctl {
        path: shown.to_string(),
        source,
    })
}

/// Open a network namespace; a missing one is [`DatapathError::NetnsMissing`].
pub fn open_netns(path: &Path) -> Result<File, DatapathError> {
    File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DatapathError::NetnsMissing {
                path: path.to_path_buf(),
            }
        } else {
            DatapathError::NetnsOpen {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Run `f` with the calling thread in the network namespace `ns`, then switch back.
pub fn in_netns<T>(
    ns: &File,
    path: &Path,
    f: impl FnOnce() -> Result<T, DatapathError>,
) -> Result<T, DatapathError> {
    let home = File::open("/proc/thread-self/ns/net").map_err(DatapathError::NetnsReturn)?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|source| DatapathError::NetnsEnter {
        path: path.to_path_buf(),
        source,
    })?;
    let out = f();
    setns(&home, CloneFlags::CLONE_NEWNET)
        .map_err(|e| DatapathError::NetnsReturn(std::io::Error::from(e)))?;
    out
}

/// A netlink socket in the calling thread's namespace (the node's).
fn node_socket() -> Result<Netlink, DatapathError> {
    Netlink::open().map_err(|source| DatapathError::Socket {
        netns: "the node's namespace".into(),
        source,
    })
}

/// A netlink socket in the pod's namespace `ns`.
fn pod_socket(ns: &File, path: &Path) -> Result<Netlink, DatapathError> {
    in_netns(ns, path, || {
        Netlink::open().map_err(|source| DatapathError::Socket {
            netns: path.display().to_string(),
            source,
        })
    })
}

/// The alias marking a host veth as this pod interface's (guards against hash collisions).
pub fn owner_alias(container_id: &str, ifname: &str) -> String {
    format!("meshd-cni {container_id} {ifname}")
}

/// The host veth `host` when it exists and belongs to the pod interface (a host veth of
/// another pod with the same hashed name is an error). A veth without alias is a leftover of an
/// ADD killed between creating and labelling it, and counts as ours.
fn own_host_veth(
    nl: &mut Netlink,
    host: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Option<netlink::Link>, DatapathError> {
    let Some(link) = nl
        .link(host)
        .map_err(step(|| format!("looking up host veth {host}")))?
    else {
        return Ok(None);
    };
    match &link.alias {
        None => Ok(Some(link)),
        Some(alias) if *alias == owner_alias(container_id, ifname) => Ok(Some(link)),
        Some(alias) => Err(DatapathError::NameTaken {
            host: host.to_string(),
            alias: alias.clone(),
        }),
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn host_net(addr: &IpAddr) -> IpNet {
    // A host prefix is always valid for its family.
    IpNet::new(*addr, host_prefix(addr)).unwrap_or_else(|_| IpNet::from(*addr))
}

fn gateway_for(addr: &IpAddr) -> IpAddr {
    if addr.is_ipv4() {
        IpAddr::V4(POD_GATEWAY_V4)
    } else {
        IpAddr::V6(POD_GATEWAY_V6)
    }
}

fn default_route_for(addr: &IpAddr) -> IpNet {
    match addr {
        IpAddr::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
        IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
    }
}

/// What [`add`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The pod side's MAC address.
    pub mac: String,
    /// The ifindex of the host veth an earlier attempt left, which this one replaced (its
    /// source-map entries are stale).
    pub replaced: Option<u32>,
}

/// Attach the pod: create the veth pair into the pod's namespace `ns` (`spec.netns`, opened
/// with [`open_netns`]) and configure both ends. A host veth left from an earlier attempt is
/// replaced.
pub fn add(spec: &PodSpec<'_>, ns: &File) -> Result<Added, DatapathError> {
    let host = host_veth_name(spec.container_id, spec.ifname);
    let mut node = node_socket()?;
    let pair = VethPair {
        name: &host,
        mac: HOST_VETH_MAC_BYTES,
        peer: spec.ifname,
        peer_netns: ns.as_fd(),
        mtu: spec.mtu,
    };
    let creating = || {
        format!(
            "creating veth pair {host} / {} (in {})",
            spec.ifname,
            spec.netns.display()
        )
    };
    // Created first, looked up only when the name is taken: a host veth left by an earlier
    // attempt is this pod interface's to replace, another pod's is an error, and with no host
    // veth the peer's name is taken in the pod's namespace (the error as the kernel gave it).
    let mut replaced = None;
    match node.create_veth(&pair) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc_errno::EEXIST) => {
            let Some(old) = own_host_veth(&mut node, &host, spec.container_id, spec.ifname)? else {
                return Err(step(creating)(e));
            };
            node.delete_link(old.index)
                .map_err(step(|| format!("deleting the leftover host veth {host}")))?;
            replaced = Some(old.index);
            node.create_veth(&pair).map_err(step(creating))?;
        }
        Err(e) => return Err(step(creating)(e)),
    }
    let result = configure(spec, ns, &mut node, &host);
    if result.is_err() {
        if let Ok(Some(link)) = node.link(&host) {
            let _ = node.delete_link(link.index);
        }
    }
    result.map(|mac| Added { mac, replaced })
}

fn configure(
    spec: &PodSpec<'_>,
    ns: &File,
    node: &mut Netlink,
    host: &str,
) -> Result<String, DatapathError> {
    let host_link = node
        .link(host)
        .map_err(step(|| format!("looking up host veth {host}")))?
        .ok_or_else(|| DatapathError::Vanished {
            name: host.to_string(),
            netns: "the node's namespace".into(),
        })?;
    // Labelled while it is down: an alias set on a link that is up announces a state change
    // (`NETDEV_CHANGE`), and IPv6 answers that, on a link whose peer is not up yet, with a walk
    // over every IPv6 route of the node (`rt6_sync_down_dev`): one route per pod.
    let alias = owner_alias(spec.container_id, spec.ifname);
    node.set_alias(host_link.index, &alias)
        .map_err(step(|| format!("labelling host veth {host}")))?;
    // The IPv4 settings through one open directory: each `/proc/sys/net/ipv4` path walk
    // compares its `ipv4` component with every network namespace's (sysctl dentries of all
    // namespaces share the `net` parent).
    let ipv4 = File::open("/proc/sys/net/ipv4").map_err(|source| DatapathError::Sysctl {
        path: "/proc/sys/net/ipv4".into(),
        source,
    })?;
    let ipv4_sysctl = |rest: String, value: &str| {
        let open = format!("/proc/self/fd/{}/{rest}", ipv4.as_raw_fd());
        sysctl_at(&open, &format!("/proc/sys/net/ipv4/{rest}"), value)
    };
    ipv4_sysctl(format!("conf/{host}/proxy_arp"), "1")?;
    // Proxy ARP answers only on interfaces that forward.
    ipv4_sysctl(format!("conf/{host}/forwarding"), "1")?;
    // ... and, by default, only after a random delay of up to 0.8 s (proxy_delay), which every
    // new pod's first IPv4 packet would wait for: answer at once, as Calico does.
    ipv4_sysctl(format!("neigh/{host}/proxy_delay"), "0")?;
    drop(ipv4);
    sysctl(&format!("net/ipv6/conf/{host}/accept_dad"), "0")?;
    node.set_up(host_link.index, None)
        .map_err(step(|| format!("setting up host veth {host}")))?;

    let ifname = spec.ifname;
    let netns = spec.netns.display().to_string();
    let mut pod = in_netns(ns, spec.netns, || {
        sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        Netlink::open().map_err(|source| DatapathError::Socket {
            netns: netns.clone(),
            source,
        })
    })?;
    pod.set_up_by_name("lo")
        .map_err(step(|| format!("setting up lo in {netns}")))?;
    let pod_link = pod
        .link(ifname)
        .map_err(step(|| format!("looking up {ifname} in {netns}")))?
        .ok_or_else(|| DatapathError::Vanished {
            name: ifname.to_string(),
            netns: netns.clone(),
        })?;
    for addr in spec.addrs {
        pod.replace_host_address(pod_link.index, *addr)
            .map_err(step(|| format!("adding {} to {ifname}", host_net(addr))))?;
    }
    pod.set_up(pod_link.index, None)
        .map_err(step(|| format!("setting up {ifname} in {netns}")))?;
    if spec.addrs.iter().any(IpAddr::is_ipv4) {
        let gw = IpAddr::V4(POD_GATEWAY_V4);
        pod.replace_route(&Route {
            dst: host_net(&gw),
            gateway: None,
            oif: pod_link.index,
        })
        .map_err(step(|| {
            format!("adding the on-link route {gw} dev {ifname}")
        }))?;
    }
    for family in [IpAddr::is_ipv4, IpAddr::is_ipv6] {
        let Some(addr) = spec.addrs.iter().find(|a| family(a)) else {
            continue;
        };
        let (dst, gw) = (default_route_for(addr), gateway_for(addr));
        pod.replace_route(&Route {
            dst,
            gateway: Some(gw),
            oif: pod_link.index,
        })
        .map_err(step(|| {
            format!("adding the default route via {gw} dev {ifname}")
        }))?;
    }
    // The gateways' MAC is known: no ARP request or neighbour solicitation for them. A
    // first one sent before the host veth could answer (its IPv6 link-local address
    // appears only when the pod end comes up) went unanswered, and the pod's first reply
    // waited for the retransmission, 1 s or more.
    for addr in spec.addrs {
        let gw = gateway_for(addr);
        pod.replace_permanent_neighbour(pod_link.index, gw, HOST_VETH_MAC_BYTES)
            .map_err(step(|| {
                format!("adding the neighbour {gw} lladdr {HOST_VETH_MAC} dev {ifname}")
            }))?;
    }
    let mac = pod_link.mac.ok_or_else(|| DatapathError::NoMac {
        name: ifname.to_string(),
        netns: netns.clone(),
    })?;
    for addr in spec.addrs {
        node.replace_route(&Route {
            dst: host_net(addr),
            gateway: None,
            oif: host_link.index,
        })
        .map_err(step(|| {
            format!("adding the host route {} dev {host}", host_net(addr))
        }))?;
    }
    // Likewise the node knows the pod's MAC: its first packet to the pod needs no
    // resolution either.
    for addr in spec.addrs {
        node.replace_permanent_neighbour(host_link.index, *addr, mac)
            .map_err(step(|| {
                format!(
                    "adding the neighbour {addr} lladdr {} dev {host}",
                    format_mac(mac)
                )
            }))?;
    }
    Ok(format_mac(mac))
}

/// The argument that makes `meshd-cni` the deletion helper of [`del`]:
/// `meshd-cni --delete-link INDEX` deletes link `INDEX` of its network namespace.
pub const DELETE_LINK_ARG: &str = "--delete-link";

/// How often [`del`] asks whether the helper's deletion is through, when the kernel's
/// announcement has not come (lost among many, or not yet).
const HELPER_POLL: Duration = Duration::from_millis(20);
/// How long [`del`] waits for its helper before deleting the link itself.
const HELPER_PATIENCE: Duration = Duration::from_secs(2);

/// The deletion helper's work (`meshd-cni --delete-link INDEX`): delete link `index` in the
/// calling thread's namespace. Returns the process's exit code (0: deleted or already gone).
pub fn delete_link_helper(index: Option<String>) -> i32 {
    let Some(index) = index.and_then(|i| i.parse::<u32>().ok()) else {
        return 2;
    };
    delete_link_exit_code(index)
}

/// Delete link `index` in the calling thread's namespace, as an exit code: 0 when it is
/// deleted or already gone, 1 otherwise (the helper's and the forked child's work).
pub(crate) fn delete_link_exit_code(index: u32) -> i32 {
    let Ok(mut node) = Netlink::open() else {
        return 1;
    };
    match node.delete_link(index) {
        Ok(()) => 0,
        Err(e) if matches!(e.errno(), Some(libc_errno::ENODEV | libc_errno::ENOENT)) => 0,
        Err(_) => 1,
    }
}

/// Delete link `index` through a helper (a forked child, [`LinkDeleter`], or `meshd-cni
/// --delete-link` where forking is not sound) and return once the kernel has unlisted it and
/// flushed its addresses, routes and neighbours (it announces `RTM_DELLINK` then), without
/// waiting for the rest: unregistering a device ends with a full RCU grace period
/// (`rcu_barrier` in `netdev_run_todo`) and an expedited one, which the deleting system call
/// sits through and which only the freeing of the device needs. The helper sits through them
/// instead, detached, with its output on `/dev/null`. `None` when the helper could not be
/// used (the caller deletes the link itself): no monitor socket, no helper, or a helper that
/// failed or is still not through after [`HELPER_PATIENCE`].
fn delete_in_helper(node: &mut Netlink, index: u32) -> Option<()> {
    let mut monitor = LinkMonitor::open(HELPER_POLL).ok()?;
    let mut helper = match LinkDeleter::fork(index) {
        Some(forked) => Helper::Forked(forked),
        None => Helper::Process(
            Command::new(std::env::current_exe().ok()?)
                .arg(DELETE_LINK_ARG)
                .arg(index.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?,
        ),
    };
    let start = Instant::now();
    loop {
        match monitor.next(index) {
            Ok(Heard::Deleted) => return Some(()),
            Ok(Heard::Other) if start.elapsed() < HELPER_PATIENCE => continue,
            // Quiet (or the socket failed): ask the kernel.
            _ => {
                if !node.has_link(index).unwrap_or(true) {
                    return Some(());
                }
            }
        }
        match helper.ended() {
            Ended::Running => {}
            // Exited: deleted (then gone by now) or failed (the caller retries and reports).
            ended => {
                return (ended == Ended::Deleted && !node.has_link(index).unwrap_or(true))
                    .then_some(())
            }
        }
        if start.elapsed() > HELPER_PATIENCE {
            return None;
        }
    }
}

/// What deletes the link for [`delete_in_helper`]: a forked child ([`LinkDeleter`]), or
/// `meshd-cni --delete-link` in a process that may not fork.
enum Helper {
    Forked(LinkDeleter),
    Process(std::process::Child),
}

impl Helper {
    fn ended(&mut self) -> Ended {
        match self {
            Helper::Forked(child) => child.ended(),
            Helper::Process(child) => match child.try_wait() {
                Ok(None) => Ended::Running,
                Ok(Some(status)) if status.success() => Ended::Deleted,
                _ => Ended::Failed,
            },
        }
    }
}

/// Detach the pod: delete the host veth (the kernel deletes its peer and every route through
/// it), through [`delete_in_helper`] when it can. Idempotent: a missing veth is success, and so
/// is one owned by another pod interface (left alone). Returns whether a veth was deleted.
pub fn del(container_id: &str, ifname: &str) -> Result<bool, DatapathError> {
    let host = host_veth_name(container_id, ifname);
    let mut node = node_socket()?;
    let Ok(Some(link)) = own_host_veth(&mut node, &host, container_id, ifname) else {
        return Ok(false);
    };
    if delete_in_helper(&mut node, link.index).is_some() {
        return Ok(true);
    }
    match node.delete_link(link.index) {
        Ok(()) => Ok(true),
        // Deleted concurrently.
        Err(e) if matches!(e.errno(), Some(libc_errno::ENODEV | libc_errno::ENOENT)) => Ok(false),
        Err(e) => Err(step(|| format!("deleting host veth {host}"))(e)),
    }
}

/// Verify the attachment: both veth ends, the pod's addresses and routes, the host routes.
pub fn check(spec: &PodSpec<'_>) -> Result<(), DatapathError> {
    let ns = open_netns(spec.netns)?;
    let host = host_veth_name(spec.container_id, spec.ifname);
    let fail = |what: String| Err(DatapathError::CheckFailed(what));
    let mut node = node_socket()?;
    let Some(host_link) = own_host_veth(&mut node, &host, spec.container_id, spec.ifname)? else {
        return fail(format!("host veth {host} is missing"));
    };
    for addr in spec.addrs {
        let want = host_net(addr);
        let routes = node
            .main_routes(*addr)
            .map_err(step(|| "reading the node's routes".to_string()))?;
        if !routes
            .iter()
            .any(|r| r.dst == want && r.oif == host_link.index)
        {
            return fail(format!("host route {want} dev {host} is missing"));
        }
    }
    let ifname = spec.ifname;
    let netns = spec.netns.display().to_string();
    let mut pod = pod_socket(&ns, spec.netns)?;
    let Some(pod_link) = pod
        .link(ifname)
        .map_err(step(|| format!("looking up {ifname} in {netns}")))?
    else {
        return fail(format!("{ifname} is missing in {netns}"));
    };
    let present = pod
        .addresses(pod_link.index)
        .map_err(step(|| format!("reading the addresses of {ifname}")))?;
    for addr in spec.addrs {
        if !present.contains(&host_net(addr)) {
            return fail(format!("{} is missing on {ifname}", host_net(addr)));
        }
    }
    for family in [IpAddr::is_ipv4, IpAddr::is_ipv6] {
        let Some(addr) = spec.addrs.iter().find(|a| family(a)) else {
            continue;
        };
        let (dst, gw) = (default_route_for(addr), gateway_for(addr));
        let routes = pod
            .main_routes(*addr)
            .map_err(step(|| format!("reading the routes in {netns}")))?;
        if !routes
            .iter()
            .any(|r| r.dst == dst && r.gateway == Some(gw) && r.oif == pod_link.index)
        {
            let v = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            return fail(format!("{v} default route via {gw} is missing"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn host_veth_mac_bytes_are_the_documented_mac() {
        assert_eq!(format_mac(HOST_VETH_MAC_BYTES), HOST_VETH_MAC);
    }

    #[test]
    fn errors_print_each_cause_once_and_keep_their_spec_code() {
        let e = DatapathError::Netlink {
            step: "creating veth pair mshd00000000 / eth0".into(),
            source: NetlinkError::Kernel {
                errno: 17,
                message: None,
            },
        };
        let cni = CniError::from(e);
        assert_eq!(cni.code(), 5);
        assert_eq!(
            cni.details(),
            "creating veth pair mshd00000000 / eth0: the kernel refused: File exists (os error 17)"
        );
        let missing = CniError::from(DatapathError::NetnsMissing {
            path: "/run/netns/x".into(),
        });
        assert_eq!(missing.code(), 3);
        assert!(missing.details().contains("/run/netns/x"));
    }

    #[test]
    fn routes_are_host_prefixes_and_defaults_of_the_addresses_family() {
        let v4: IpAddr = "10.244.1.2".parse().unwrap();
        let v6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(host_net(&v4).to_string(), "10.244.1.2/32");
        assert_eq!(host_net(&v6).to_string(), "fd00::2/128");
        assert_eq!(default_route_for(&v4).to_string(), "0.0.0.0/0");
        assert_eq!(default_route_for(&v6).to_string(), "::/0");
        assert_eq!(gateway_for(&v6), IpAddr::V6(POD_GATEWAY_V6));
    }
}
