//! `ebpf-redirect` is meshd's user-space loader for the tc datapath: it owns loading the
//! BPF object built from `ebpf-redirect-ebpf` (embedded at build time), pinning programs,
//! TCX links and maps under a bpffs directory (e.g. `/sys/fs/bpf/meshd`) so that a daemon
//! restart neither detaches the programs nor loses map contents, re-opening those pins
//! (`Datapath::adopt`), attaching/detaching per interface, and typed map updates/counters.
//!
//! Pin layout under `pin_dir`:
//! * `REMOTE_V4`, `REMOTE_V6`, `LOCAL_V4`, `LOCAL_V6`, `CLUSTER_V4`, `CLUSTER_V6`,
//!   `CONFIG`, `VERDICTS`, `SOURCE_V4`, `SOURCE_V6`, `POLICY_ISOLATION`, `POLICY_PEER_V4`,
//!   `POLICY_PEER_V6`, `POLICY_PORT`, `POLICY_GENERATION`, `CONNTRACK`, `FLOW_EVENTS`,
//!   `FLOW_TABLE`, `FLOW_CONFIG`, `FLOW_LOST` ([`flows`]) - maps (pinned by name
//!   by the loader; the per-node, policy and connection-tracking sizes in [`MapSizes`], see
//!   [`sizes`]; a per-node map resized is filled before it serves, `carry.rs`).
//! * `prog_from_pod`, `prog_to_pod`, `prog_underlay_egress`, `prog_underlay_egress_ip`,
//!   `prog_flow_report` (tail-called through `FLOW_REPORT`, [`flows`]) - programs.
//! * `link_egress_<ifname>` - the underlay's TCX link (kernel >= 6.6), or the record of
//!   `to_pod`'s filter on a pod's host veth (the attached program, pinned under the
//!   interface's name, [`pod`]).
//! * `link_ingress_<ifname>` - the record of `from_pod`'s filter on a pod's host veth.
//! * `replacing_link_<...>` - a record being replaced (pinned, then renamed over the record:
//!   [`records`]); one is left only by an attacher killed in between, and the next attachment
//!   of that interface or [`Datapath::gc_links`] removes it.
//!
//! `from_pod` and `to_pod` go on every pod veth as classic direct-action `cls_bpf` filters on
//! the `clsact` ingress and egress hooks, at a fixed priority and handle, added over rtnetlink
//! ([`cls_bpf`]): a TCX link costs a full RCU grace period per pod, a filter does not. Such a
//! filter belongs to the interface, not to a file descriptor, so it survives the loader
//! exiting without a pin and vanishes with the interface. The guard, attached to every way out
//! of the node, is a pinned TCX link on kernels with TCX (>= 6.6) and a filter before; which of
//! its two programs an interface gets (`underlay_egress` for Ethernet links,
//! `underlay_egress_ip` for links without a link-layer header) follows from the interface's
//! link type ([`framing`]).
//!
//! All calls that take an interface name resolve it in the calling thread's network namespace.

use std::{
    fs, io,
    net::IpAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

/// Which side of an interface a program is attached to (see [`Datapath::pinned_links`]).
pub use aya::programs::TcAttachType;
use aya::{
    include_bytes_aligned,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
    pin::PinError,
    programs::{links::LinkError, ProgramError, SchedClassifier},
    util::KernelVersion,
    EbpfError, EbpfLoader,
};
mod carry;
mod cls_bpf;
pub mod flows;
pub mod framing;
mod guard;
mod pod;
pub mod policy;
mod records;
pub mod sizes;
mod tc_attach;
mod verdicts;

pub use carry::Resized;
pub use flows::FlowMaps;
pub use framing::LinkFraming;
pub use pod::{forget_pod_records, PodDatapath, PodSource};
use pod::{PodProgram, SourceMaps};
pub use sizes::{MapSizes, DEFAULT_CIDRS_PER_NODE, DEFAULT_MAX_NODES};

use cls_bpf::Hook;
pub use ebpf_redirect_common::Config;
pub use ebpf_redirect_common::Verdict;
use ebpf_redirect_common::{map_names as mn, MODE_ENFORCE, MODE_PERMISSIVE};
pub use ebpf_redirect_common::{ClusterMarker, CLUSTER_CONFIGURED, CLUSTER_LEARNED};
pub use ebpf_redirect_common::{
    CtKey, CtValue, IsolationKey, IsolationValue, PeerKeyV4, PeerKeyV6, PortKey, RuleBits,
    MAX_SOURCE_V4, MAX_SOURCE_V6, VERDICT_COUNT,
};
pub use ipnet::IpNet;
use tc_attach::{attach, detach, is_attached, link_pin, unpin_link};

/// The BPF object built by build.rs.
pub static BPF_OBJECT: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ebpf-redirect.bpf.o"));

/// Name of the program for pods' host-side veths (clsact ingress).
pub const PROG_FROM_POD: &str = "from_pod";
/// Name of the program for what is delivered to a pod (clsact egress of its host veth): the
/// pod's ingress policy.
pub const PROG_TO_POD: &str = "to_pod";
/// Name of the guard program for Ethernet links (tc egress of every way out of the node).
pub const PROG_UNDERLAY_EGRESS: &str = "underlay_egress";
/// Name of the guard program for links without a link-layer header (tun, WireGuard, ipip,
/// sit, raw IP): tc sees their packets from the IP header on.
pub const PROG_UNDERLAY_EGRESS_IP: &str = "underlay_egress_ip";

/// Name of the flow reporter, tail-called by the other programs (never attached).
pub const PROG_FLOW_REPORT: &str = "flow_report";

/// Errors of the loader.
///
/// A variant either names its own step and carries the cause as its source, or is transparent
/// (aya's errors already name the failing syscall or object): the message never repeats the
/// cause, so `{:#}` prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading the object failed.
    #[error("loading the BPF object")]
    Ebpf(#[from] Box<EbpfError>),
    /// Map operation failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// Program load/attach failed.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// Pinning failed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// Link operation failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// File system error (pin directory).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The guard cannot tell where the IP header of an interface's packets is.
    #[error("interface {ifname} has link type {link_type}, which the guard cannot parse (neither Ethernet nor a link without a link-layer header)")]
    UnsupportedLink {
        /// The interface.
        ifname: String,
        /// Its `ARPHRD_*` type.
        link_type: u16,
    },
    /// The object lacks a program.
    #[error("program {0} not found in object")]
    MissingProgram(&'static str),
    /// A traffic-control step on an interface failed.
    #[error("{step} {ifname}")]
    Tc {
        /// What was being done (`attaching from_pod's filter to`).
        step: &'static str,
        /// The interface.
        ifname: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A pinned object could not be opened, pinned or read.
    #[error("pinned object {}", path.display())]
    Pinned {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The lock on the pod attachments' records could not be taken.
    #[error("locking the attachment records in {}", path.display())]
    RecordsLock {
        /// The pin directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A map entry could not be written, removed or read.
    #[error("entry of map {map}")]
    MapEntry {
        /// The map's name.
        map: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Whether this is a map insert refused because the map is full (`ENOSPC`, or `E2BIG`
    /// from a full hash map): the entry does not fit, nothing else is wrong.
    pub fn is_map_full(&self) -> bool {
        let code = match self {
            Error::Map(MapError::SyscallError(e)) => e.io_error.raw_os_error(),
            Error::MapEntry { source, .. } => source.raw_os_error(),
            _ => None,
        };
        matches!(code, Some(libc::ENOSPC) | Some(libc::E2BIG))
    }
}

/// `bpf_map_update_elem` flag: only create, never replace (`EEXIST` when the key is there).
const BPF_NOEXIST: u64 = 1;

/// Priority of meshd's clsact filters on kernels without TCX.
pub const NETLINK_PRIORITY: u16 = 1;
/// Handle of meshd's clsact filters on kernels without TCX (`0:6d65`, "me").
pub const NETLINK_HANDLE: u32 = 0x6d65;

/// Whether the running kernel attaches tc programs as TCX links (Linux >= 6.6).
pub fn tcx_supported() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What `underlay_egress` does with cluster traffic that is not WireGuard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Drop it (TC_ACT_SHOT) and count `StrictDrop`.
    Enforce,
    /// Let it through and count `WouldDrop`.
    Permissive,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Permissive => "permissive",
        })
    }
}

/// Handle on the pinned datapath: programs and maps opened from `pin_dir`.
pub struct Datapath {
    pin_dir: PathBuf,
    from_pod: SchedClassifier,
    to_pod: SchedClassifier,
    underlay_egress: SchedClassifier,
    underlay_egress_ip: SchedClassifier,
    sources: SourceMaps,
    remote_v4: LpmTrie<MapData, [u8; 4], u32>,
    remote_v6: LpmTrie<MapData, [u8; 16], u32>,
    local_v4: HashMap<MapData, [u8; 4], u32>,
    local_v6: HashMap<MapData, [u8; 16], u32>,
    cluster_v4: LpmTrie<MapData, [u8; 4], u32>,
    cluster_v6: LpmTrie<MapData, [u8; 16], u32>,
    config: Array<MapData, Config>,
    verdicts: PerCpuArray<MapData, u64>,
    policy: policy::PolicyMaps,
    resized: Vec<Resized>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

fn prog_pin(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("prog_{name}"))
}

pub(crate) fn open_map(dir: &Path, name: &str) -> Result<Map> {
    Ok(Map::from_map_data(MapData::from_pin(dir.join(name))?)?)
}

fn lpm_key<const N: usize>(prefix: u8, octets: [u8; N]) -> Key<[u8; N]> {
    Key::new(u32::from(prefix), octets)
}

impl Datapath {
    /// Loads the embedded object, (re)pins its programs under `pin_dir` and opens the pins.
    /// Maps already pinned in `pin_dir` are reused with their contents (pin-by-name), so
    /// this is also the upgrade path: existing links keep working and `attach_*` swaps in
    /// the new program atomically.
    pub fn load(pin_dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_bytes(BPF_OBJECT, pin_dir)
    }

    /// Like [`Datapath::load`] with map sizes other than the defaults (a pinned map of
    /// another size is replaced, see [`sizes`]; the per-node maps are filled from the old
    /// ones before this returns, so before the caller attaches: see [`Datapath::resized`]).
    pub fn load_sized(pin_dir: impl AsRef<Path>, sizes: &MapSizes) -> Result<Self> {
        Self::load_bytes_sized(BPF_OBJECT, pin_dir, sizes)
    }

    /// Like [`Datapath::load`] with an explicit object.
    pub fn load_bytes(object: &[u8], pin_dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_bytes_sized(object, pin_dir, &MapSizes::default())
    }

    /// Like [`Datapath::load_sized`] with an explicit object.
    pub fn load_bytes_sized(
        object: &[u8],
        pin_dir: impl AsRef<Path>,
        sizes: &MapSizes,
    ) -> Result<Self> {
        let dir = pin_dir.as_ref();
        fs::create_dir_all(dir)?;
        // A shorter VERDICTS of an older object: its counts are carried over (and its pin
        // goes), then every other map of another size is retired.
        let counts = verdicts::take_short(dir)?;
        let (_, carried) = sizes::retire_mismatched_pins(dir, sizes)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(dir);
        for (name, max_entries) in sizes.entries() {
            loader.map_max_entries(name, max_entries);
        }
        let mut ebpf = loader.load(object).map_err(Box::new)?;
        for name in [
            PROG_FROM_POD,
            PROG_TO_POD,
            PROG_UNDERLAY_EGRESS,
            PROG_UNDERLAY_EGRESS_IP,
            PROG_FLOW_REPORT,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()?;
            prog.load()?;
            let path = prog_pin(dir, name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            prog.pin(&path)?;
        }
        flows::install_reporter(dir)?;
        drop(ebpf); // everything we need is pinned now
        let mut dp = Self::adopt(dir)?;
        if let Some(counts) = counts {
            verdicts::restore(&mut dp.verdicts, &counts)?;
        }
        // Fill before anyone attaches the new programs (see `carry`).
        dp.resized = carry::fill(&mut dp, carried)?;
        Ok(dp)
    }

    /// Opens an existing pinned datapath (after a daemon restart) without reloading.
    pub fn adopt(pin_dir: impl AsRef<Path>) -> Result<Self> {
        let dir = pin_dir.as_ref();
        Ok(Self {
            pin_dir: dir.to_path_buf(),
            from_pod: SchedClassifier::from_pin(prog_pin(dir, PROG_FROM_POD))?,
            to_pod: SchedClassifier::from_pin(prog_pin(dir, PROG_TO_POD))?,
            underlay_egress: SchedClassifier::from_pin(prog_pin(dir, PROG_UNDERLAY_EGRESS))?,
            underlay_egress_ip: SchedClassifier::from_pin(prog_pin(dir, PROG_UNDERLAY_EGRESS_IP))?,
            sources: SourceMaps::open(dir)?,
            remote_v4: open_map(dir, mn::REMOTE_V4)?.try_into()?,
            remote_v6: open_map(dir, mn::REMOTE_V6)?.try_into()?,
            local_v4: open_map(dir, mn::LOCAL_V4)?.try_into()?,
            local_v6: open_map(dir, mn::LOCAL_V6)?.try_into()?,
            cluster_v4: open_map(dir, mn::CLUSTER_V4)?.try_into()?,
            cluster_v6: open_map(dir, mn::CLUSTER_V6)?.try_into()?,
            config: open_map(dir, mn::CONFIG)?.try_into()?,
            verdicts: open_map(dir, mn::VERDICTS)?.try_into()?,
            policy: policy::PolicyMaps::open(dir)?,
            resized: Vec::new(),
        })
    }

    /// The per-node maps the last [`Datapath::load_sized`] replaced because their size
    /// changed, with how many entries were carried over (and how many did not fit).
    pub fn resized(&self) -> &[Resized] {
        &self.resized
    }

    /// `max_entries` of the pinned map `name` (a name of [`ebpf_redirect_common::map_names`]).
    pub fn max_entries(&self, name: &str) -> Result<u32> {
        Ok(MapData::from_pin(self.pin_dir.join(name))?
            .info()?
            .max_entries())
    }

    /// The bpffs directory holding the pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches `from_pod` on clsact ingress of `ifname` (a pod's host-side veth), as meshd's
    /// `cls_bpf` filter, and records it under the pin directory ([`pod`]). Idempotent: an
    /// existing attachment is replaced atomically by this program. The pod's source entries
    /// ([`Datapath::add_source`]) must be in place first: without them it drops the pod's IP
    /// packets.
    pub fn attach_from_pod(&mut self, ifname: &str) -> Result<()> {
        let prog = PodProgram {
            fd: self.from_pod.fd()?.as_fd(),
            hook: Hook::Ingress,
        };
        pod::attach(&[prog], &self.pin_dir, ifname)
    }

    /// Attaches `to_pod` on clsact egress of `ifname` (a pod's host-side veth), as meshd's
    /// `cls_bpf` filter, recorded at `link_egress_<ifname>`. Idempotent like
    /// [`Datapath::attach_from_pod`].
    pub fn attach_to_pod(&mut self, ifname: &str) -> Result<()> {
        let prog = PodProgram {
            fd: self.to_pod.fd()?.as_fd(),
            hook: Hook::Egress,
        };
        pod::attach(&[prog], &self.pin_dir, ifname)
    }

    /// Detaches `to_pod` from `ifname`. Missing attachment is not an error.
    pub fn detach_to_pod(&mut self, ifname: &str) -> Result<()> {
        pod::detach(&self.pin_dir, ifname, Hook::Egress)
    }

    /// Whether `to_pod` is meshd's filter on the egress of `ifname` right now (false when the
    /// interface is gone).
    pub fn to_pod_attached(&self, ifname: &str) -> Result<bool> {
        pod::attached(self.to_pod.fd()?.as_fd(), ifname, Hook::Egress)
    }

    /// Lets the pod behind host veth `source.ifindex` send from `source.addr`.
    pub fn add_source(&mut self, source: PodSource) -> Result<()> {
        self.sources.add(&source)
    }

    /// Removes a source entry. A missing entry is not an error.
    pub fn remove_source(&mut self, source: PodSource) -> Result<()> {
        self.sources.remove(&source)
    }

    /// Every source entry (`SOURCE_V4` and `SOURCE_V6`), sorted.
    pub fn sources(&self) -> Result<Vec<PodSource>> {
        self.sources.list()
    }

    /// Detaches `from_pod` from `ifname`. Missing attachment is not an error.
    pub fn detach_from_pod(&mut self, ifname: &str) -> Result<()> {
        pod::detach(&self.pin_dir, ifname, Hook::Ingress)
    }

    /// Detaches `underlay_egress` from `ifname`. Missing attachment is not an error.
    pub fn detach_underlay_egress(&mut self, ifname: &str) -> Result<()> {
        detach(&self.pin_dir, ifname, TcAttachType::Egress)
    }

    /// Whether `from_pod` is attached to `ifname` right now, asking the kernel which
    /// program meshd's filter on the interface runs. Always `Some` (the `Option` is the
    /// interface's, shared with [`Datapath::underlay_egress_attached`]); `Some(false)` when
    /// the interface is gone.
    pub fn from_pod_attached(&self, ifname: &str) -> Result<Option<bool>> {
        pod::attached(self.from_pod.fd()?.as_fd(), ifname, Hook::Ingress).map(Some)
    }

    /// Whether the record of `from_pod`'s attachment to `ifname` holds this datapath's
    /// `from_pod` (what the plugin's ADD leaves once it attached it).
    pub fn from_pod_recorded(&self, ifname: &str) -> Result<bool> {
        pod::recorded(
            self.from_pod.fd()?.as_fd(),
            &self.pin_dir,
            ifname,
            Hook::Ingress,
        )
    }

    /// Whether the record of `to_pod`'s attachment to `ifname` holds this datapath's `to_pod`.
    pub fn to_pod_recorded(&self, ifname: &str) -> Result<bool> {
        pod::recorded(
            self.to_pod.fd()?.as_fd(),
            &self.pin_dir,
            ifname,
            Hook::Egress,
        )
    }

    /// Names of the interfaces that have a pinned link of the given direction.
    pub fn pinned_links(&self, attach: TcAttachType) -> Result<Vec<String>> {
        let prefix = link_pin(Path::new(""), attach, "")
            .to_string_lossy()
            .into_owned();
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.pin_dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(ifname) = name.strip_prefix(&prefix) {
                out.push(ifname.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes link pins whose interface no longer exists in this network namespace (a pod
    /// deleted without a CNI DEL), and records half replaced by a killed attacher, under the
    /// records' lock. Returns the interface names whose pins were removed.
    pub fn gc_links(&mut self) -> Result<Vec<String>> {
        let _records = records::lock(&self.pin_dir)?;
        for entry in fs::read_dir(&self.pin_dir)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(records::REPLACING_PREFIX)
            {
                unpin_link(&entry.path())?;
            }
        }
        let mut removed = Vec::new();
        for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
            for ifname in self.pinned_links(attach)? {
                if ifindex(&ifname).is_none() {
                    unpin_link(&link_pin(&self.pin_dir, attach, &ifname))?;
                    removed.push(ifname);
                }
            }
        }
        Ok(removed)
    }

    /// Detaches every pinned link and every recorded `from_pod` and `to_pod` filter (of
    /// interfaces in this network namespace) and removes all pins (programs, maps) and
    /// `pin_dir`. Consumes the handle: the programs are unloaded once the last fd is closed.
    pub fn detach_all(self) -> Result<()> {
        for ifname in self.pinned_links(TcAttachType::Ingress)? {
            pod::detach(&self.pin_dir, &ifname, Hook::Ingress)?;
        }
        // An egress record is `to_pod`'s filter on a pod veth, or the underlay's TCX link
        // (which has no filter at meshd's handle: deleting finds none and is a no-op).
        for ifname in self.pinned_links(TcAttachType::Egress)? {
            pod::detach(&self.pin_dir, &ifname, Hook::Egress)?;
        }
        let dir = self.pin_dir.clone();
        drop(self);
        remove_pins(&dir)
    }

    /// Routes `cidr` (a remote node's pod CIDR) into the tunnel device `ifindex`.
    pub fn set_remote(&mut self, cidr: IpNet, ifindex: u32) -> Result<()> {
        match cidr.trunc() {
            IpNet::V4(n) => {
                self.remote_v4
                    .insert(&lpm_key(n.prefix_len(), n.network().octets()), ifindex, 0)?
            }
            IpNet::V6(n) => {
                self.remote_v6
                    .insert(&lpm_key(n.prefix_len(), n.network().octets()), ifindex, 0)?
            }
        }
        Ok(())
    }

    /// Removes a remote CIDR (exact prefix). A missing entry is not an error.
    pub fn remove_remote(&mut self, cidr: IpNet) -> Result<()> {
        absent_ok(match cidr.trunc() {
            IpNet::V4(n) => self
                .remote_v4
                .remove(&lpm_key(n.prefix_len(), n.network().octets())),
            IpNet::V6(n) => self
                .remote_v6
                .remove(&lpm_key(n.prefix_len(), n.network().octets())),
        })
    }

    /// Marks `ip` as a local pod address.
    pub fn add_local(&mut self, ip: IpAddr) -> Result<()> {
        match ip {
            IpAddr::V4(a) => self.local_v4.insert(a.octets(), 1, 0)?,
            IpAddr::V6(a) => self.local_v6.insert(a.octets(), 1, 0)?,
        }
        Ok(())
    }

    /// Unmarks a local pod address. A missing entry is not an error.
    pub fn remove_local(&mut self, ip: IpAddr) -> Result<()> {
        absent_ok(match ip {
            IpAddr::V4(a) => self.local_v4.remove(&a.octets()),
            IpAddr::V6(a) => self.local_v6.remove(&a.octets()),
        })
    }

    /// Adds a configured cluster pod CIDR (traffic from/to it must go through WireGuard on the
    /// underlay): [`Datapath::set_cluster_marked`] with [`CLUSTER_CONFIGURED`].
    pub fn set_cluster(&mut self, cidr: IpNet) -> Result<()> {
        self.set_cluster_marked(cidr, CLUSTER_CONFIGURED)
    }

    /// Adds (or re-marks) a cluster pod CIDR with a marker saying where it came from.
    pub fn set_cluster_marked(&mut self, cidr: IpNet, marker: ClusterMarker) -> Result<()> {
        match cidr.trunc() {
            IpNet::V4(n) => {
                self.cluster_v4
                    .insert(&lpm_key(n.prefix_len(), n.network().octets()), marker, 0)?
            }
            IpNet::V6(n) => {
                self.cluster_v6
                    .insert(&lpm_key(n.prefix_len(), n.network().octets()), marker, 0)?
            }
        }
        Ok(())
    }

    /// Adds `cidr` as a learned cluster CIDR ([`CLUSTER_LEARNED`]) unless that exact prefix is
    /// already there (configured or learned: left as it is). One syscall, whatever the map
    /// holds (`BPF_NOEXIST`). Returns whether it was added.
    pub fn learn_cluster(&mut self, cidr: IpNet) -> Result<bool> {
        let added = match cidr.trunc() {
            IpNet::V4(n) => self.cluster_v4.insert(
                &lpm_key(n.prefix_len(), n.network().octets()),
                CLUSTER_LEARNED,
                BPF_NOEXIST,
            ),
            IpNet::V6(n) => self.cluster_v6.insert(
                &lpm_key(n.prefix_len(), n.network().octets()),
                CLUSTER_LEARNED,
                BPF_NOEXIST,
            ),
        };
        match added {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a cluster pod CIDR (exact prefix). A missing entry is not an error.
    pub fn remove_cluster(&mut self, cidr: IpNet) -> Result<()> {
        absent_ok(match cidr.trunc() {
            IpNet::V4(n) => self
                .cluster_v4
                .remove(&lpm_key(n.prefix_len(), n.network().octets())),
            IpNet::V6(n) => self
                .cluster_v6
                .remove(&lpm_key(n.prefix_len(), n.network().octets())),
        })
    }

    /// Sets the WireGuard UDP port and the enforcement mode. Port 0 means "no exemption".
    /// Until this is called `underlay_egress` passes everything (CONFIG lookups of an
    /// untouched array return zeros: port 0, enforce - so call it before `set_cluster`).
    /// The mesh mark (see [`Datapath::set_mesh_mark`]) is kept.
    pub fn set_config(&mut self, wg_port: u16, mode: Mode) -> Result<()> {
        let mode = match mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Permissive => MODE_PERMISSIVE,
        };
        let mut config = self.config.get(&0, 0)?;
        config.wg_port = wg_port;
        config.mode = mode;
        self.config.set(0, config, 0)?;
        Ok(())
    }

    /// Sets the firewall mark the WireGuard devices put on their UDP packets (0: none).
    /// `underlay_egress` lets marked packets (the tunnel's ciphertext, every fragment of it)
    /// pass unexamined.
    pub fn set_mesh_mark(&mut self, mark: u32) -> Result<()> {
        let mut config = self.config.get(&0, 0)?;
        config.mesh_mark = mark;
        self.config.set(0, config, 0)?;
        Ok(())
    }

    /// Set the WireGuard port of the second key slot (0: none), keeping the rest of `CONFIG`.
    pub fn set_second_port(&mut self, port: u16) -> Result<()> {
        let mut config = self.config.get(&0, 0)?;
        config.second_wg_port = port;
        self.config.set(0, config, 0)?;
        Ok(())
    }

    /// The current `CONFIG` entry.
    pub fn config(&self) -> Result<Config> {
        Ok(self.config.get(&0, 0)?)
    }

    /// The remote CIDRs currently in the maps, with the tunnel ifindex each points at.
    pub fn remotes(&self) -> Result<Vec<(IpNet, u32)>> {
        let mut out = Vec::new();
        for item in self.remote_v4.iter() {
            let (k, v) = item?;
            let net = ipnet::Ipv4Net::new(k.data().into(), k.prefix_len() as u8)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            out.push((IpNet::V4(net), v));
        }
        for item in self.remote_v6.iter() {
            let (k, v) = item?;
            let net = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            out.push((IpNet::V6(net), v));
        }
        Ok(out)
    }

    /// The cluster CIDRs currently in the maps.
    pub fn clusters(&self) -> Result<Vec<IpNet>> {
        Ok(self
            .cluster_entries()?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// The cluster CIDRs with their markers ([`CLUSTER_CONFIGURED`], [`CLUSTER_LEARNED`]).
    pub fn cluster_entries(&self) -> Result<Vec<(IpNet, ClusterMarker)>> {
        let mut out = Vec::new();
        for item in self.cluster_v4.iter() {
            let (k, v) = item?;
            let net = ipnet::Ipv4Net::new(k.data().into(), k.prefix_len() as u8)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            out.push((IpNet::V4(net), v));
        }
        for item in self.cluster_v6.iter() {
            let (k, v) = item?;
            let net = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            out.push((IpNet::V6(net), v));
        }
        Ok(out)
    }

    /// The local pod addresses currently in the maps.
    pub fn locals(&self) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for k in self.local_v4.keys() {
            out.push(IpAddr::from(k?));
        }
        for k in self.local_v6.keys() {
            out.push(IpAddr::from(k?));
        }
        Ok(out)
    }

    /// Verdict counters summed over CPUs, indexed by [`Verdict`].
    pub fn counters(&self) -> Result<[u64; VERDICT_COUNT as usize]> {
        let mut out = [0u64; VERDICT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.verdicts.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }
}

/// Map removal that treats "no such entry" as done.
pub(crate) fn absent_ok(r: std::result::Result<(), MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn ifindex(ifname: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(ifname).ok()
}

/// Removes every pin in `pin_dir` (links first, so programs detach) and the directory.
/// Usable without a [`Datapath`] (e.g. by an uninstall path). Missing dir is not an error.
pub fn remove_pins(pin_dir: impl AsRef<Path>) -> Result<()> {
    let dir = pin_dir.as_ref();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e.collect::<io::Result<Vec<_>>>()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut paths: Vec<PathBuf> = entries.into_iter().map(|e| e.path()).collect();
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for p in paths {
        unpin_link(&p)?;
    }
    fs::remove_dir(dir)?;
    Ok(())
}
