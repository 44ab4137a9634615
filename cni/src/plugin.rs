//! One plugin invocation, from environment and stdin to stdout and exit status.
//!
//! Besides what [`Env`] and [`NetConf`] refuse on their own, an invocation refuses a
//! `CNI_NETNS` that is the host's own network namespace (the plugin's, or pid 1's), by whatever
//! path it is named, and runs ADD and GC under the store's attach lock
//! ([`Ipam::begin_attach`], [`Ipam::begin_gc`]) so that a GC never tears down an ADD in flight.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use ipnet::IpNet;
use serde_json::Value;

use super::datapath::{self, PodSpec};
use super::redirect;
use super::{
    host_veth_name, pod_result, CniError, Command, Env, NetConf, VersionResult, LATEST_VERSION,
};
use crate::ipam::Ipam;

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The JSON to print on stdout (empty for DEL, CHECK, STATUS and GC successes).
    pub stdout: String,
    /// 0 on success, 1 on error (stdout then holds the error JSON).
    pub exit_code: i32,
}

/// The `cniVersion` to report errors in: the configuration's when readable and supported.
fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| super::is_supported(v))
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

/// Run one invocation: `get` reads the environment, `stdin` is the network configuration.
pub fn run(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    match dispatch(get, stdin) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => {
            let json = serde_json::to_string(&e.to_result(&error_version(stdin)))
                .unwrap_or_else(|_| format!("{{\"code\":{}}}", e.code()));
            Outcome {
                stdout: json,
                exit_code: 1,
            }
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, CniError> {
    serde_json::to_string(v).map_err(|e| CniError::Io(format!("encoding the result: {e}")))
}

fn dispatch(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String, CniError> {
    let env = Env::parse(get)?;
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string));
        return to_json(&VersionResult::new(requested.as_deref()));
    }
    let conf = NetConf::parse(stdin, env.command)?;
    // Env::parse guarantees these for the commands that use them.
    let id = env.container_id.clone().unwrap_or_default();
    let ifname = env.ifname.clone().unwrap_or_default();
    match env.command {
        Command::Add => add(&env, &conf, &id, &ifname),
        Command::Del => {
            let ipam = Ipam::open(conf.ipam_dir(), &[])?;
            if let Some(pin_dir) = &conf.bpf_pin_dir {
                let addrs = ipam.lookup(&id, &ifname)?;
                redirect::forget_addresses(pin_dir, &host_veth_name(&id, &ifname), &addrs)?;
            }
            datapath::del(&id, &ifname)?;
            if let Some(pin_dir) = &conf.bpf_pin_dir {
                redirect::forget_deleted(pin_dir, &host_veth_name(&id, &ifname))?;
            }
            ipam.release(&id, Some(&ifname))?;
            Ok(String::new())
        }
        Command::Check => check(&env, &conf, &id, &ifname).map(|()| String::new()),
        Command::Status => status(&conf).map(|()| String::new()),
        Command::Gc => gc(&conf).map(|()| String::new()),
        Command::Version => Ok(String::new()),
    }
}

/// STATUS: whether an ADD could succeed now. Not when a pod CIDR has no free address left,
/// and not when the configuration names meshd's datapath and meshd has not loaded it.
fn status(conf: &NetConf) -> Result<(), CniError> {
    let cidrs = conf.cidrs()?;
    if cidrs.is_empty() {
        return Err(CniError::NotAvailable("no podCIDRs configured".into()));
    }
    let taken: std::collections::HashSet<std::net::IpAddr> = Ipam::open(conf.ipam_dir(), &[])
        .and_then(|i| i.list())
        .map_err(|e| CniError::NotAvailable(e.to_string()))?
        .into_iter()
        .map(|e| e.address)
        .collect();
    let has_room = |c: &IpNet| crate::ipam::first_free(*c, &taken).is_some();
    if conf.node_subnet_blocks {
        // Blocks: a family is full only when every block of it is.
        for v6 in [false, true] {
            let family: Vec<IpNet> = cidrs
                .iter()
                .copied()
                .filter(|c| matches!(c, IpNet::V6(_)) == v6)
                .collect();
            if !family.is_empty() && !family.iter().any(has_room) {
                let list: Vec<String> = family.iter().map(ToString::to_string).collect();
                return Err(CniError::NotAvailable(format!(
                    "the node-subnet blocks {} have no free address left",
                    list.join(", ")
                )));
            }
        }
    } else if let Some(full) = cidrs.iter().find(|c| !has_room(c)) {
        return Err(CniError::NotAvailable(format!(
            "pod CIDR {full} has no free address left"
        )));
    }
    if let Some(pin_dir) = &conf.bpf_pin_dir {
        redirect::available(pin_dir).map_err(|e| CniError::NotAvailable(e.to_string()))?;
    }
    Ok(())
}

fn add(env: &Env, conf: &NetConf, id: &str, ifname: &str) -> Result<String, CniError> {
    let cidrs = conf.cidrs()?;
    if cidrs.is_empty() {
        return Err(CniError::InvalidConfig("podCIDRs is empty".into()));
    }
    let prev = conf.prev()?;
    let netns = env
        .netns
        .clone()
        .ok_or_else(|| CniError::InvalidEnv("CNI_NETNS is not set".into()))?;
    // A missing namespace, or the host's, is reported before any address is taken.
    let ns = datapath::open_netns(&netns)?;
    refuse_host_netns(&netns, &ns)?;
    let ipam = conf.open_ipam(&cidrs)?;
    // Held until the pod is set up and committed: a GC waits for it (see `ipam`).
    let attach = ipam.begin_attach()?;
    let addrs = ipam.allocate(id, ifname)?;
    let spec = PodSpec {
        container_id: id,
        ifname,
        netns: &netns,
        addrs: &addrs,
        mtu: conf.mtu,
    };
    let added = match datapath::add(&spec, &ns) {
        Ok(added) => added,
        Err(e) => {
            let _ = ipam.release(id, Some(ifname));
            return Err(e.into());
        }
    };
    if let Some(pin_dir) = &conf.bpf_pin_dir {
        let host = host_veth_name(id, ifname);
        let redirect = conf.redirect.unwrap_or(true);
        if let Err(e) = redirect::attach(pin_dir, &host, &addrs, redirect, added.replaced) {
            let _ = redirect::detach(pin_dir, &host, &addrs);
            let _ = datapath::del(id, ifname);
            let _ = redirect::forget_deleted(pin_dir, &host);
            let _ = ipam.release(id, Some(ifname));
            return Err(e);
        }
    }
    if let Err(e) = ipam.commit(&attach, id, ifname) {
        if let Some(pin_dir) = &conf.bpf_pin_dir {
            let _ = redirect::detach(pin_dir, &host_veth_name(id, ifname), &addrs);
        }
        let _ = datapath::del(id, ifname);
        let _ = ipam.release(id, Some(ifname));
        return Err(e.into());
    }
    drop(attach);
    let ours = pod_result(
        &conf.cni_version,
        &host_veth_name(id, ifname),
        ifname,
        &added.mac,
        &netns.to_string_lossy(),
        conf.mtu,
        &addrs,
    );
    let result = match prev {
        Some(prev) => ours.merge(prev).in_version(&conf.cni_version),
        None => ours,
    };
    to_json(&result)
}

fn check(env: &Env, conf: &NetConf, id: &str, ifname: &str) -> Result<(), CniError> {
    let netns = env
        .netns
        .clone()
        .ok_or_else(|| CniError::InvalidEnv("CNI_NETNS is not set".into()))?;
    refuse_host_netns(&netns, &datapath::open_netns(&netns)?)?;
    let ipam = conf.open_ipam(&conf.cidrs()?)?;
    let addrs = ipam.lookup(id, ifname)?;
    if addrs.is_empty() {
        return Err(CniError::UnknownContainer(format!(
            "no addresses are allocated to container {id} interface {ifname}"
        )));
    }
    if let Some(prev) = conf.prev()? {
        let listed: HashSet<_> = prev.ips.iter().map(|ip| ip.address.addr()).collect();
        if let Some(missing) = addrs.iter().find(|a| !listed.contains(a)) {
            return Err(CniError::Io(format!(
                "CHECK failed: {missing} is allocated but not in prevResult"
            )));
        }
    }
    datapath::check(&PodSpec {
        container_id: id,
        ifname,
        netns: &netns,
        addrs: &addrs,
        mtu: conf.mtu,
    })?;
    if let Some(pin_dir) = &conf.bpf_pin_dir {
        redirect::check(
            pin_dir,
            &host_veth_name(id, ifname),
            &addrs,
            conf.redirect.unwrap_or(true),
        )?;
    }
    Ok(())
}

/// The network namespaces a pod must never be attached to: the plugin's own and pid 1's, as
/// `(device, inode)` of their nsfs files (those that can be read).
fn host_netns_ids() -> Vec<(u64, u64)> {
    ["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Whether the namespace `(dev, ino)` is one of `hosts` (pure).
pub fn is_host_netns(netns: (u64, u64), hosts: &[(u64, u64)]) -> bool {
    hosts.contains(&netns)
}

/// Refuse (code 4) `CNI_NETNS` when `ns`, opened from `path`, is the host's own namespace:
/// the plugin would move the host's interfaces and routes around instead of a pod's.
fn refuse_host_netns(path: &Path, ns: &File) -> Result<(), CniError> {
    let meta = ns
        .metadata()
        .map_err(|e| CniError::Io(format!("reading CNI_NETNS {}: {e}", path.display())))?;
    if is_host_netns((meta.dev(), meta.ino()), &host_netns_ids()) {
        return Err(CniError::InvalidEnv(format!(
            "CNI_NETNS {} is the host's own network namespace (the plugin's or pid 1's), not a \
             container's: refusing to touch it",
            path.display()
        )));
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    // The runtime made its list of valid attachments before starting this GC: whatever an ADD
    // commits from now on, the list cannot judge.
    let started = SystemTime::now();
    // The runtime must say which attachments are still valid; a GC without the list is a
    // malformed request, not "none are valid" (which would tear down every pod).
    let valid: Vec<(String, String)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            CniError::InvalidConfig(
                "GC without cni.dev/valid-attachments: refusing to collect every attachment".into(),
            )
        })?
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let ipam = Ipam::open(conf.ipam_dir(), &[])?;
    // Waits for in-flight ADDs to commit; holds new ones off until the GC is done.
    let _gc = ipam.begin_gc()?;
    let mut stale: Vec<(String, String)> = ipam
        .gc_candidates(&valid, Some(started))?
        .into_iter()
        .filter_map(|e| e.owner)
        .map(|o| (o.container_id, o.ifname))
        .collect();
    stale.sort();
    stale.dedup();
    for (id, ifname) in &stale {
        if let Some(pin_dir) = &conf.bpf_pin_dir {
            let addrs = ipam.lookup(id, ifname)?;
            redirect::detach(pin_dir, &host_veth_name(id, ifname), &addrs)?;
        }
        datapath::del(id, ifname)?;
        if let Some(pin_dir) = &conf.bpf_pin_dir {
            redirect::forget_deleted(pin_dir, &host_veth_name(id, ifname))?;
        }
    }
    ipam.gc_since(&valid, Some(started))?;
    Ok(())
}
