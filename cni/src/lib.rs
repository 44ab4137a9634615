//! `meshd-cni`: the meshd CNI plugin, the program the container runtime starts for every pod
//! (CNI 1.1.0, and the result formats back to 0.3.0).
//!
//! It owns what one invocation does on its node and nothing else: the spec's types and command
//! handling (this module), the pod's interface in the kernel ([`datapath`], over netlink
//! ([`netlink`]), never by running `ip`), the pod's entry in meshd's pinned eBPF datapath
//! ([`redirect`]) and the node-local address store ([`ipam`]). It is synchronous and
//! single-threaded, and links neither an async runtime nor a Kubernetes client: the daemon
//! (crate `meshd`) depends on it for the store and the host veth naming rule, never the other
//! way round.
//!
//! What the runtime hands a plugin — the network configuration on stdin ([`NetConf`](crate::NetConf)) and the
//! `CNI_*` environment ([`Env`](crate::Env)) — is parsed here, without side effects, into typed values with
//! the spec's error codes ([`CniError::code`](crate::CniError::code)); results ([`CniResult`](crate::CniResult)) and errors
//! ([`ErrorResult`](crate::ErrorResult)) serialise exactly as the spec's JSON, in the result format of the
//! configuration's `cniVersion` (0.3.0 to 1.1.0). [`plugin`](crate::plugin) runs the commands against the
//! kernel ([`datapath`](crate::datapath)) and the node's address store ([`crate::ipam`]).
//!
//! Chaining: when the configuration carries a `prevResult`, ADD appends this plugin's interfaces,
//! addresses and routes to it (re-pointing the new addresses' `interface` indices past the
//! earlier interfaces) and passes everything else through unchanged ([`CniResult::merge`](crate::CniResult::merge)).
#![deny(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The kernel side of a pod interface: veth pair, addresses and routes.
pub mod datapath;
/// Entry points of the cargo-fuzz targets in `fuzz/` (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
/// Node-local pod address management on an on-disk store.
pub mod ipam;
/// The forked child that deletes a pod's veth pair for DEL (the crate's only `unsafe`).
pub mod link_deleter;
/// A small synchronous rtnetlink client: one request, its acknowledgement or its dump.
pub mod netlink;
/// The plugin's command dispatch (what the `meshd-cni` binary runs).
pub mod plugin;
/// The pod's part of the tc eBPF datapath (local-pod map, `from_pod` attachment).
pub mod redirect;
mod result;

pub use result::{pod_result, CniResult, Dns, Interface, IpConfig, Route};

/// The CNI spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest supported spec version.
pub const LATEST_VERSION: &str = "1.1.0";
/// The pods' IPv4 next hop, answered by proxy ARP on the host-side veth.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 next hop: the EUI-64 link-local address of [`HOST_VETH_MAC`].
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The most the plugin reads from stdin: a configuration with a `prevResult` is a few KiB; more
/// is refused (code 6) without being read.
pub const MAX_STDIN_BYTES: usize = 1 << 20;
/// The longest `CNI_CONTAINERID` accepted (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID_BYTES: usize = 255;
/// The longest `CNI_ARGS` accepted.
pub const MAX_CNI_ARGS_BYTES: usize = 4096;
/// The longest interface name the kernel accepts (`IFNAMSIZ` less its NUL).
pub const MAX_IFNAME_BYTES: usize = 15;
/// The MAC address of every host-side veth.
pub const HOST_VETH_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// Errors of the CNI plugin, each with its spec error code.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CniError {
    /// Code 1: the configuration's `cniVersion` is not supported.
    #[error("incompatible CNI version {0:?}; supported: {versions}", versions = SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion(String),
    /// Code 2: a field of the network configuration is not supported.
    #[error("unsupported field in network configuration: {0}")]
    UnsupportedField(String),
    /// Code 3: the container (its network namespace) does not exist.
    #[error("container unknown or does not exist: {0}")]
    UnknownContainer(String),
    /// Code 4: a `CNI_*` environment variable is missing or invalid.
    #[error("invalid necessary environment variables: {0}")]
    InvalidEnv(String),
    /// Code 5: an I/O operation (file system, netlink, eBPF) failed.
    #[error("I/O failure: {0}")]
    Io(String),
    /// Code 6: stdin is not valid JSON or does not decode into the configuration.
    #[error("failed to decode content: {0}")]
    Decode(String),
    /// Code 7: the configuration decodes but is not valid.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// Code 11: a transient condition; the runtime should retry.
    #[error("try again later: {0}")]
    TryAgain(String),
    /// Code 50 (STATUS): the plugin cannot service ADD requests.
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    /// Code 100 (plugin-specific): the pod CIDR has no free address left.
    #[error("{0}")]
    AddressesExhausted(String),
}

impl CniError {
    /// The spec's error code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => 1,
            CniError::UnsupportedField(_) => 2,
            CniError::UnknownContainer(_) => 3,
            CniError::InvalidEnv(_) => 4,
            CniError::Io(_) => 5,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig(_) => 7,
            CniError::TryAgain(_) => 11,
            CniError::NotAvailable(_) => 50,
            CniError::AddressesExhausted(_) => 100,
        }
    }

    /// The spec's short message for this error's kind.
    pub fn msg(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion(_) => "incompatible CNI version",
            CniError::UnsupportedField(_) => "unsupported field in network configuration",
            CniError::UnknownContainer(_) => "container unknown or does not exist",
            CniError::InvalidEnv(_) => "invalid necessary environment variables",
            CniError::Io(_) => "I/O failure",
            CniError::Decode(_) => "failed to decode content",
            CniError::InvalidConfig(_) => "invalid network config",
            CniError::TryAgain(_) => "try again later",
            CniError::NotAvailable(_) => "plugin not available",
            CniError::AddressesExhausted(_) => "pod addresses exhausted",
        }
    }

    /// The specifics of this error.
    pub fn details(&self) -> String {
        match self {
            CniError::IncompatibleVersion(v) => format!(
                "{v:?} is not supported; supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
            CniError::UnsupportedField(d)
            | CniError::UnknownContainer(d)
            | CniError::InvalidEnv(d)
            | CniError::Io(d)
            | CniError::Decode(d)
            | CniError::InvalidConfig(d)
            | CniError::TryAgain(d)
            | CniError::NotAvailable(d)
            | CniError::AddressesExhausted(d) => d.clone(),
        }
    }

    /// The spec's error JSON for this error.
    pub fn to_result(&self, cni_version: &str) -> ErrorResult {
        ErrorResult {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.msg().to_string(),
            details: self.details(),
        }
    }
}

impl From<crate::ipam::IpamError> for CniError {
    fn from(e: crate::ipam::IpamError) -> CniError {
        use crate::ipam::IpamError;
        match e {
            IpamError::Exhausted { .. } => CniError::AddressesExhausted(e.to_string()),
            IpamError::InvalidKey { .. } => CniError::InvalidEnv(e.to_string()),
            IpamError::NoCidrs => CniError::InvalidConfig(e.to_string()),
            IpamError::Io { .. } => CniError::Io(e.to_string()),
        }
    }
}

/// The error JSON a plugin prints on stdout when it fails (exit status 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResult {
    /// The spec version of the configuration (or the newest when it is unknown).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Details, possibly empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// The answer to VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResult {
    /// The spec version of this answer.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version the plugin supports.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// The answer to VERSION when asked in `requested` (ignored when unsupported).
    pub fn new(requested: Option<&str>) -> VersionResult {
        let v = requested
            .filter(|r| SUPPORTED_VERSIONS.contains(r))
            .unwrap_or(LATEST_VERSION);
        VersionResult {
            cni_version: v.to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Whether the plugin can serve ADDs (1.1.0).
    Status,
    /// Report supported versions.
    Version,
    /// Remove everything not in the valid attachments (1.1.0).
    Gc,
}

impl Command {
    /// Parse `CNI_COMMAND`.
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::InvalidEnv(format!(
                    "unknown CNI_COMMAND {:?}",
                    shorten(other)
                )))
            }
        })
    }

    /// The oldest spec version that has this command.
    pub fn since(self) -> &'static str {
        match self {
            Command::Add | Command::Del | Command::Version => "0.3.0",
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
        }
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: the path of the container's network namespace.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface to create in the container.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, as key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

impl Env {
    /// Parse the environment through `get` (e.g. `|k| std::env::var(k).ok()`).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = non_empty(get("CNI_COMMAND"))
            .ok_or_else(|| CniError::InvalidEnv("CNI_COMMAND is not set".into()))?;
        let command = Command::parse(&command)?;
        let args = match non_empty(get("CNI_ARGS")) {
            None => Vec::new(),
            Some(s) => parse_cni_args(&s)?,
        };
        let env = Env {
            command,
            container_id: non_empty(get("CNI_CONTAINERID")),
            netns: non_empty(get("CNI_NETNS")).map(PathBuf::from),
            ifname: non_empty(get("CNI_IFNAME")),
            args,
            path: non_empty(get("CNI_PATH"))
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
        };
        let need_netns = matches!(command, Command::Add | Command::Check);
        let need_id = matches!(command, Command::Add | Command::Del | Command::Check);
        if need_id && env.container_id.is_none() {
            return Err(CniError::InvalidEnv("CNI_CONTAINERID is not set".into()));
        }
        if need_id && env.ifname.is_none() {
            return Err(CniError::InvalidEnv("CNI_IFNAME is not set".into()));
        }
        if need_netns && env.netns.is_none() {
            return Err(CniError::InvalidEnv("CNI_NETNS is not set".into()));
        }
        if let Some(ifname) = &env.ifname {
            check_ifname(ifname).map_err(|why| {
                CniError::InvalidEnv(format!(
                    "CNI_IFNAME {:?} is not a valid interface name: {why}",
                    shorten(ifname)
                ))
            })?;
        }
        if let Some(id) = &env.container_id {
            check_container_id(id).map_err(|why| {
                CniError::InvalidEnv(format!(
                    "CNI_CONTAINERID {:?} is not a valid container ID: {why}",
                    shorten(id)
                ))
            })?;
        }
        Ok(env)
    }
}

/// At most the first 64 characters of `s`, marked when cut (for error messages).
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// Why `ifname` is not an interface name the kernel would create under exactly that name
/// (`dev_valid_name`: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace; and no `%`,
/// which the kernel treats as a template such as `eth%d` and replaces by a number), or `Ok`.
pub fn check_ifname(ifname: &str) -> Result<(), &'static str> {
    if ifname.is_empty() {
        return Err("it is empty");
    }
    if ifname.len() > MAX_IFNAME_BYTES {
        return Err("it is longer than 15 bytes");
    }
    if ifname == "." || ifname == ".." {
        return Err("\".\" and \"..\" are not interface names");
    }
    if ifname.contains(['/', ':']) {
        return Err("it contains '/' or ':'");
    }
    if ifname.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or a control character");
    }
    if ifname.contains('%') {
        return Err("it contains '%', which the kernel replaces by a number (eth%d)");
    }
    Ok(())
}

/// Why `id` is not a container ID as the CNI spec defines it (an alphanumeric character, then
/// alphanumerics, `_`, `.` and `-`; here at most [`MAX_CONTAINER_ID_BYTES`] bytes), or `Ok`.
/// So an accepted ID is never a path, a path component like `..`, or a control sequence.
pub fn check_container_id(id: &str) -> Result<(), &'static str> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("it is empty"),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err("it must start with a letter or a digit")
        }
        Some(_) => {}
    }
    if id.len() > MAX_CONTAINER_ID_BYTES {
        return Err("it is longer than 255 bytes");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// Parse `CNI_ARGS` (`K1=V1;K2=V2`): at most [`MAX_CNI_ARGS_BYTES`] bytes of printable ASCII.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    if s.len() > MAX_CNI_ARGS_BYTES {
        return Err(CniError::InvalidEnv(format!(
            "CNI_ARGS is {} bytes, more than {MAX_CNI_ARGS_BYTES}",
            s.len()
        )));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(CniError::InvalidEnv(format!(
            "CNI_ARGS contains {c:?}: only printable ASCII is allowed"
        )));
    }
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::InvalidEnv(format!(
                "CNI_ARGS: {:?} is not KEY=VALUE",
                shorten(kv)
            ))),
        })
        .collect()
}

/// One valid attachment of a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// The network configuration on stdin, with this plugin's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetConf {
    /// The spec version of the configuration (and of the result).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The plugin type (`meshd-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The previous plugin's result, when chained.
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// The node's pod CIDRs, one address is allocated from each.
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
    /// `node-subnet` IPAM: `podCIDRs` are the blocks of the node subnet this node holds, and a
    /// pod gets one address of each family, from the first block with room (default: false,
    /// one address from every pod CIDR).
    #[serde(
        rename = "nodeSubnetBlocks",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub node_subnet_blocks: bool,
    /// The IPAM store (default [`crate::ipam::DEFAULT_DIR`]).
    #[serde(rename = "ipamDir", default, skip_serializing_if = "Option::is_none")]
    pub ipam_dir: Option<PathBuf>,
    /// The MTU of both veth ends (default: the kernel's, 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// meshd's bpffs pin directory; absent: the pod gets no eBPF datapath (routes only).
    #[serde(rename = "bpfPinDir", default, skip_serializing_if = "Option::is_none")]
    pub bpf_pin_dir: Option<PathBuf>,
    /// Whether `from_pod` redirects the pod's traffic into the tunnel (default: true when
    /// `bpfPinDir` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<bool>,
    /// GC: the attachments to keep.
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Every other key (ignored).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What kind of JSON value `v` is, for error messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `v` is a supported spec version.
pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// Order spec versions (`"0.4.0" < "1.0.0"`); unparseable parts count as 0.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a).cmp(&parse(b))
}

impl NetConf {
    /// Decode and validate stdin for `command`. Decoding errors are code 6, an unsupported
    /// `cniVersion` code 1 (checked before anything else), a command the version does not have
    /// code 1, bad values code 7.
    pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
        if stdin.len() > MAX_STDIN_BYTES {
            return Err(CniError::Decode(format!(
                "the network configuration on stdin is over {MAX_STDIN_BYTES} bytes"
            )));
        }
        let value: Value =
            serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
        let version = value
            .get("cniVersion")
            .ok_or_else(|| CniError::InvalidConfig("cniVersion is missing".into()))?
            .as_str()
            .ok_or_else(|| CniError::Decode("cniVersion is not a string".into()))?;
        if !is_supported(version) {
            return Err(CniError::IncompatibleVersion(version.to_string()));
        }
        if version_cmp(version, command.since()).is_lt() {
            return Err(CniError::IncompatibleVersion(format!(
                "{version} (the command needs at least {})",
                command.since()
            )));
        }
        let conf: NetConf =
            serde_json::from_value(value).map_err(|e| CniError::Decode(e.to_string()))?;
        if conf.name.is_empty() {
            return Err(CniError::InvalidConfig("name is empty".into()));
        }
        if let Some(mtu) = conf.mtu {
            if !(1280..=65535).contains(&mtu) {
                return Err(CniError::InvalidConfig(format!(
                    "mtu {mtu} is out of range 1280..=65535"
                )));
            }
        }
        conf.cidrs()?;
        Ok(conf)
    }

    /// The pod CIDRs, parsed (code 7 when one does not parse or when two overlap).
    pub fn cidrs(&self) -> Result<Vec<IpNet>, CniError> {
        let cidrs = self
            .pod_cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .map_err(|_| CniError::InvalidConfig(format!("podCIDRs: {c:?} is not a CIDR")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in cidrs.iter().enumerate() {
            for b in &cidrs[i + 1..] {
                if a.contains(b) || b.contains(a) {
                    return Err(CniError::InvalidConfig(format!(
                        "podCIDRs {a} and {b} overlap"
                    )));
                }
            }
        }
        Ok(cidrs)
    }

    /// The IPAM store over `cidrs`, block-aware with `nodeSubnetBlocks`.
    pub fn open_ipam(&self, cidrs: &[IpNet]) -> Result<crate::ipam::Ipam, CniError> {
        let ipam = crate::ipam::Ipam::open(self.ipam_dir(), cidrs)?;
        Ok(if self.node_subnet_blocks {
            ipam.with_blocks()
        } else {
            ipam
        })
    }

    /// The IPAM store's directory.
    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::ipam::DEFAULT_DIR))
    }

    /// The previous result, decoded (code 6 when it does not decode, code 7 when an address
    /// names an interface the result does not have).
    pub fn prev(&self) -> Result<Option<CniResult>, CniError> {
        let Some(value) = self.prev_result.clone() else {
            return Ok(None);
        };
        if !value.is_object() {
            return Err(CniError::Decode(format!(
                "prevResult is {}, not an object",
                json_kind(&value)
            )));
        }
        let prev: CniResult = serde_json::from_value(value)
            .map_err(|e| CniError::Decode(format!("prevResult: {e}")))?;
        for (i, ip) in prev.ips.iter().enumerate() {
            if let Some(index) = ip.interface.filter(|n| *n >= prev.interfaces.len()) {
                return Err(CniError::InvalidConfig(format!(
                    "prevResult: ips[{i}].interface is {index}, but there are {} interfaces",
                    prev.interfaces.len()
                )));
            }
        }
        Ok(Some(prev))
    }
}

/// The host-side veth name for a pod interface: `mshd` and 8 hex digits of SHA-256 over
/// `container_id`, a NUL and `ifname` (stable, so DEL finds it again without state).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let d = h.finalize();
    format!("mshd{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
