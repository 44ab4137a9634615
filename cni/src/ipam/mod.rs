//! Node-local IP address management for pods, backed by a directory.
//!
//! Every pod interface — a `(container ID, interface name)` pair — gets one address from each of
//! the node's pod CIDRs (in practice one IPv4 and one IPv6 CIDR).
//!
//! # Which addresses are handed out
//!
//! In every CIDR the first address (the network address; in IPv6 the subnet-router anycast
//! address), the second (reserved for the node/gateway) and the last (the IPv4 broadcast address;
//! skipped in IPv6 as well, for symmetry) are never allocated. Pod addresses therefore start at
//! `.2` / `::2`, like the lab's, and a `/30` has exactly one usable address. CIDRs narrower than
//! that (`/31`, `/32`, `/127`, `/128`) have none. Within a CIDR the lowest free address is taken.
//!
//! # The store
//!
//! A directory (default [`DEFAULT_DIR`](crate::ipam::DEFAULT_DIR)) with one file per allocated address, named by the address
//! in its canonical text form (`10.244.1.2`, `fd00:244:0:1::2`), holding `container_id\nifname\n`.
//!
//! The files of one pod interface are hard links of one inode, and one more link of that inode,
//! `.owner-<sha256 of the owner>`, indexes it by owner: ADD, DEL and CHECK find an owner's
//! addresses with one `stat` and one directory listing (the entries sharing the index's inode),
//! without opening any other file. The index cannot get out of step with the addresses: it *is*
//! their file. A store written before the index existed is indexed once, under the lock, the
//! first time an allocation or release takes it (the lock file then says `meshd-ipam 2`); until
//! then lookups scan it as before.
//!
//! # Concurrency and crash safety
//!
//! * **No duplicate, ever.** An address file is *published* with `link(2)` from a fully written
//!   temporary file in the same directory. `link` fails with `EEXIST` when the name
//!   exists, atomically, exactly like `open(O_CREAT|O_EXCL)` — so the filesystem itself decides
//!   which of two racing allocators gets an address, even between processes that ignore the lock.
//!   Unlike `O_CREAT|O_EXCL` followed by a write, a published file is never empty or half
//!   written; and unlike temp + `rename(2)`, it can never replace someone else's file (`rename`
//!   overwrites silently, which would break exclusivity). The temporary file is then unlinked.
//!   One allocation writes one temporary file and publishes it under each of its new addresses,
//!   so the files of one pod interface are hard links of one inode with the same content.
//! * **Consistent scans.** Allocation (find the owner's existing address, else the lowest free
//!   one), release and GC run under an exclusive `flock(2)` on `<dir>/.lock`, so an idempotent
//!   retry can never race with its own first attempt into two addresses. The kernel drops the
//!   lock when its holder dies, so a killed plugin never wedges the store.
//! * **Kill at any point.** Before the `link`, a kill leaves at most a stray `.tmp-*` file and no
//!   allocation; after it, a complete allocation that a retried ADD finds again (idempotency) or
//!   DEL / GC removes. If an ADD dies after its IPv4 address but before its IPv6 one, the retry
//!   reuses the IPv4 address and completes. A file that does not parse (e.g. written by hand) is
//!   treated as taken — never handed out twice — and removed by GC. GC also removes `.tmp-*`
//!   files, which can only be left over from dead allocators because it holds the lock. So a kill
//!   never produces a duplicate, and after GC nothing leaks.
//! * **No fsync on ADD or DEL.** What the store holds lives as long as a pod, and a power loss
//!   kills every pod of the node: the runtime creates them again with new ADDs. So an ADD or
//!   DEL does not wait for the disk (two `fsync`s: 0.4–0.6 ms on the test disk at load 7, 8 ms
//!   while it was busy). What a power loss can do to the page cache's unwritten state is
//!   harmless: a lost allocation belonged to a dead pod; a lost release leaves a dead pod's
//!   allocation for GC; an owner file that lost its content does not parse, so its address is
//!   treated as taken and GC removes it. A kill of the plugin loses nothing (the page cache
//!   survives it), so everything above holds. GC, rare, still syncs the directory.
//! * **GC never takes an in-flight ADD's address.** An ADD holds a *shared* `flock` on the
//!   store's directory itself from before its allocation until its pod is fully set up
//!   ([`Ipam::begin_attach`](crate::ipam::Ipam::begin_attach)) and then *commits*: it sets the
//!   modification time of its owner file to the moment it finished
//!   ([`Ipam::commit`](crate::ipam::Ipam::commit)). GC holds the same lock *exclusively* for its
//!   whole read, decision and release ([`Ipam::begin_gc`](crate::ipam::Ipam::begin_gc)), so it
//!   never sees an allocation whose pod is half built, and it spares every allocation committed
//!   after the GC started ([`Ipam::gc_since`](crate::ipam::Ipam::gc_since)): the runtime computed
//!   its valid attachments before starting the GC, so it cannot have meant an ADD that finished
//!   later. ADDs among themselves still run in parallel (the lock is shared); only the short
//!   allocation step is serialised by `.lock`. The order is always the directory then `.lock`.
//!
//! # Permissions
//!
//! The directory is created `0700` and every file in it `0600`: the store names every pod of
//! the node. An existing directory with group or other permission bits is tightened to `0700`
//! when the store is opened (a path that is not a directory is refused).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

/// The store's default directory.
pub const DEFAULT_DIR: &str = "/var/lib/meshd/ipam";

const LOCK_FILE: &str = ".lock";
/// The mode of the store's directory.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file in the store.
pub const FILE_MODE: u32 = 0o600;
const TMP_PREFIX: &str = ".tmp-";
/// The prefix of an owner's index link (see the module documentation).
pub const INDEX_PREFIX: &str = ".owner-";
/// What the lock file holds once the store has an index link for every allocation.
const INDEXED_MARK: &str = "meshd-ipam 2\n";

/// Errors of the IPAM.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of a CIDR is taken.
    #[error("no free address left in {cidr}")]
    Exhausted {
        /// The exhausted CIDR.
        cidr: IpNet,
    },
    /// A container ID or interface name cannot be stored.
    #[error("invalid {what} {value:?}: must be non-empty, at most 255 bytes, without '/' or control characters")]
    InvalidKey {
        /// `container ID` or `interface name`.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// No pod CIDR was configured.
    #[error("no pod CIDRs configured")]
    NoCidrs,
    /// A file system operation on the store failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A set of taken addresses, hashed with a fast fixed hasher (an ADD hashes every address of
/// the store; SipHash's keyed rounds are for untrusted keys, and the store's names are the
/// plugin's own).
type Taken = HashSet<IpAddr, foldhash::fast::FixedState>;

/// The store as read from its names alone (see [`Ipam::scan_names`]).
#[derive(Debug, Default)]
struct NameScan {
    /// The owner's addresses.
    owned: Vec<Entry>,
    /// Every address taken.
    taken: Taken,
    /// The owner's index's inode, when it has one.
    index_ino: Option<u64>,
}

/// The directory-backed allocator for one node's pod CIDRs.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    cidrs: Vec<IpNet>,
    /// The CIDRs are `node-subnet` blocks ([`Ipam::with_blocks`]).
    blocks: bool,
}

impl Ipam {
    /// Open the store in `dir` for the given pod CIDRs, creating the directory (mode 0700, its
    /// missing parents as the umask says) when it does not exist, and tightening an existing one
    /// with group or other permission bits to 0700. A path that is not a directory is refused.
    pub fn open(dir: impl Into<PathBuf>, cidrs: &[IpNet]) -> Result<Ipam, IpamError> {
        let dir = dir.into();
        // Every call after the first finds the directory: one `stat`.
        let meta = match fs::metadata(&dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(Self::io("creating", parent))?;
                }
                match fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Self::io("creating", &dir)(e)),
                }
                fs::metadata(&dir).map_err(Self::io("reading", &dir))?
            }
            Err(e) => return Err(Self::io("reading", &dir)(e)),
        };
        if !meta.is_dir() {
            return Err(IpamError::Io {
                op: "opening the store",
                path: dir,
                source: io::Error::other("not a directory"),
            });
        }
        // The umask may have cleared bits of DIR_MODE, never added any: tighten what an older
        // version (0755) or a hand left open.
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(Self::io("tightening the permissions of", &dir))?;
        }
        Ok(Ipam {
            dir,
            cidrs: cidrs.iter().map(IpNet::trunc).collect(),
            blocks: false,
        })
    }

    /// The CIDRs are the blocks of the node subnet this node holds (`node-subnet` IPAM): a pod
    /// interface gets one address of each family, from the first block of that family with a
    /// free one (in CIDR order), instead of one from every CIDR.
    pub fn with_blocks(mut self) -> Self {
        self.blocks = true;
        self
    }

    /// The groups one address is taken from each: every CIDR alone, or with
    /// [`Ipam::with_blocks`] the blocks of each family together (IPv4 first).
    fn groups(&self) -> Vec<Vec<IpNet>> {
        if !self.blocks {
            return self.cidrs.iter().map(|c| vec![*c]).collect();
        }
        let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
            self.cidrs.iter().partition(|c| matches!(c, IpNet::V4(_)));
        [v4, v6].into_iter().filter(|g| !g.is_empty()).collect()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod CIDRs addresses are allocated from.
    pub fn cidrs(&self) -> &[IpNet] {
        &self.cidrs
    }

    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IpamError + 'a {
        move |source| IpamError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn lock(&self) -> Result<Flock<File>, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(Self::io("opening", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| IpamError::Io {
            op: "locking",
            path,
            source: io::Error::from(errno),
        })
    }

    fn sync_dir(&self) -> Result<(), IpamError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io("syncing", &self.dir))
    }

    /// Run `f` on every allocated address while holding the store's lock, so that no ADD,
    /// release or GC changes the store until `f` returns (meshd mirrors the store into the
    /// local-pod map this way without undoing a concurrent ADD's entries).
    pub fn with_locked_list<T>(&self, f: impl FnOnce(&[Entry]) -> T) -> Result<T, IpamError> {
        let _guard = self.lock()?;
        let entries = self.list()?;
        Ok(f(&entries))
    }

    /// Every allocated address with its owner. Takes no lock (a snapshot).
    ///
    /// The addresses of one allocation are hard links of one file, so each file (inode) is
    /// read once: a dual-stack node reads half as many files. A file linked as an owner's
    /// index is not read again once this process has read it ([`known`]): meshd lists the
    /// store every second and after every change to it, and then opens only new owners' files.
    pub fn list(&self) -> Result<Vec<Entry>, IpamError> {
        let (addresses, index_names) = self.entries_with_index_names()?;
        let mut listing = known::Listing::begin();
        let mut out = Vec::with_capacity(addresses.len());
        let mut owners: HashMap<u64, Option<Owner>> = HashMap::new();
        for (address, entry) in addresses {
            let ino = entry.ino();
            let owner = match owners.get(&ino) {
                Some(owner) => owner.clone(),
                None => {
                    let index = index_names.get(&ino);
                    let owner = match index.and_then(|name| listing.get(name)) {
                        Some(owner) => Some(owner),
                        None => {
                            let owner = match read_small(&entry.path()) {
                                Ok(text) => Owner::from_file(&text),
                                // Removed since the directory was read.
                                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                                Err(_) => None,
                            };
                            if let (Some(name), Some(owner)) = (index, &owner) {
                                listing.read(name, owner);
                            }
                            owner
                        }
                    };
                    owners.insert(ino, owner.clone());
                    owner
                }
            };
            out.push(Entry { address, owner });
        }
        listing.end();
        out.sort_by_key(|e| e.address);
        Ok(out)
    }

    /// The store's address files, each with its directory entry, and the names of the owner
    /// index links by inode; every other name (the lock, temporary files) is skipped.
    #[allow(clippy::type_complexity)]
    fn entries_with_index_names(
        &self,
    ) -> Result<(Vec<(IpAddr, fs::DirEntry)>, HashMap<u64, String>), IpamError> {
        let mut addresses = Vec::new();
        let mut indexes = HashMap::new();
        for entry in fs::read_dir(&self.dir).map_err(Self::io("reading", &self.dir))? {
            let entry = entry.map_err(Self::io("reading", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Ok(address) = name.parse::<IpAddr>() {
                addresses.push((address, entry));
            } else if name.starts_with(INDEX_PREFIX) {
                indexes.insert(entry.ino(), name.to_string());
            }
        }
        Ok((addresses, indexes))
    }

    /// Every address held by `(container_id, ifname)`: those in the store's pod CIDRs first, in
    /// CIDR order, then any others (a store opened without CIDRs, as DEL and GC open it, or a
    /// CIDR no longer configured), in address order.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let owner = Owner {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        };
        let entries = match self.indexed() {
            true => self.scan_names(Some(&owner), false)?.owned,
            false => self.list()?,
        };
        Ok(self.owned_in_cidr_order(&entries, &owner))
    }

    /// Whether every allocation of the store has its owner index (the lock file's mark).
    fn indexed(&self) -> bool {
        read_small(&self.dir.join(LOCK_FILE)).is_ok_and(|text| text == INDEXED_MARK)
    }

    /// Give every allocation its index link, once, then mark the store indexed. Takes the
    /// store's lock file, locked.
    fn ensure_indexed(&self, lock: &mut Flock<File>) -> Result<(), IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let mut text = String::new();
        (&**lock)
            .read_to_string(&mut text)
            .map_err(Self::io("reading", &path))?;
        if text == INDEXED_MARK {
            return Ok(());
        }
        let mut seen = HashSet::new();
        for entry in self.list()? {
            let Some(owner) = entry.owner else { continue };
            if !seen.insert(owner.clone()) {
                continue;
            }
            let index = self.dir.join(owner.index_name());
            match fs::hard_link(self.dir.join(entry.address.to_string()), &index) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Self::io("indexing", &index)(e)),
            }
        }
        use std::os::unix::fs::FileExt as _;
        lock.write_all_at(INDEXED_MARK.as_bytes(), 0)
            .and_then(|()| lock.set_len(INDEXED_MARK.len() as u64))
            .map_err(Self::io("marking", &path))
    }

    /// The store by names alone: with `owner` the entries of that owner's index (the addresses
    /// sharing its inode), with `want_taken` every address taken. Opens no file but the index,
    /// and parses only the names it needs: an owner without index and no `want_taken` is
    /// answered without listing the directory.
    fn scan_names(&self, owner: Option<&Owner>, want_taken: bool) -> Result<NameScan, IpamError> {
        let index_ino = match owner {
            Some(owner) => {
                let index = self.dir.join(owner.index_name());
                match fs::metadata(&index) {
                    Ok(meta) => {
                        // The name is a hash: make sure the file is this owner's.
                        let text = read_small(&index).map_err(Self::io("reading", &index))?;
                        (Owner::from_file(&text).as_ref() == Some(owner))
                            .then(|| std::os::unix::fs::MetadataExt::ino(&meta))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Self::io("reading", &index)(e)),
                }
            }
            None => None,
        };
        let mut scan = NameScan {
            index_ino,
            ..NameScan::default()
        };
        if index_ino.is_none() && !want_taken {
            return Ok(scan);
        }
        let failed = |e: nix::Error| Self::io("reading", &self.dir)(e.into());
        // nix's directory stream: names without an allocation per entry.
        let mut dir = nix::dir::Dir::open(
            &self.dir,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(failed)?;
        for entry in dir.iter() {
            let entry = entry.map_err(failed)?;
            let owned = index_ino == Some(entry.ino());
            if !owned && !want_taken {
                continue;
            }
            let name = entry.file_name().to_bytes();
            // The lock, index links and temporary files.
            if name.first() == Some(&b'.') {
                continue;
            }
            let Some(address) = std::str::from_utf8(name)
                .ok()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if want_taken {
                scan.taken.insert(address);
            }
            if owned {
                scan.owned.push(Entry {
                    address,
                    owner: owner.cloned(),
                });
            }
        }
        scan.owned.sort_by_key(|e| e.address);
        Ok(scan)
    }

    fn owned_in_cidr_order(&self, entries: &[Entry], owner: &Owner) -> Vec<IpAddr> {
        let owned: Vec<IpAddr> = entries
            .iter()
            .filter(|e| e.owner.as_ref() == Some(owner))
            .map(|e| e.address)
            .collect();
        let mut out = Vec::new();
        for cidr in &self.cidrs {
            out.extend(owned.iter().filter(|a| cidr.contains(*a)));
        }
        // `list` sorts by address.
        out.extend(
            owned
                .iter()
                .filter(|a| !self.cidrs.iter().any(|c| c.contains(*a))),
        );
        out
    }

    /// Allocate one address from every pod CIDR to `(container_id, ifname)`, in CIDR order
    /// (with [`Ipam::with_blocks`]: one of each family, from its first block with room).
    /// Idempotent: addresses the pair already holds are returned again. On failure the
    /// addresses newly taken by this call are released.
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let owner = Owner {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        };
        owner.validate()?;
        if self.cidrs.is_empty() {
            return Err(IpamError::NoCidrs);
        }
        let mut lock = self.lock()?;
        self.ensure_indexed(&mut lock)?;
        let NameScan {
            owned,
            mut taken,
            index_ino,
        } = self.scan_names(Some(&owner), true)?;
        let index = self.dir.join(owner.index_name());
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        // The owner file: the index when the owner has one, else written once, linked as the
        // index, and published under every new address.
        let mut source = index_ino.is_some().then(|| index.clone());
        let mut made_index = false;
        let mut result = Ok(());
        for group in self.groups() {
            if let Some(e) = owned
                .iter()
                .find(|e| group.iter().any(|c| c.contains(&e.address)))
            {
                out.push(e.address);
                continue;
            }
            let from = match &source {
                Some(from) => from.clone(),
                None => match self.new_index(&owner, &index) {
                    Ok(()) => {
                        made_index = true;
                        source.insert(index.clone()).clone()
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            };
            match self.publish_in(&group, &from, &mut taken) {
                Ok(addr) => {
                    fresh.push(addr);
                    out.push(addr);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            for addr in fresh {
                let _ = fs::remove_file(self.dir.join(addr.to_string()));
            }
            if made_index {
                let _ = fs::remove_file(&index);
            }
            return Err(e);
        }
        Ok(out)
    }

    /// A temporary file's name in the store, unique to this process and call.
    fn tmp_path(&self) -> PathBuf {
        self.dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Write `owner`'s file and link it as its index (replacing a stale index of another
    /// content, which only a hash collision or a hand edit could leave).
    fn new_index(&self, owner: &Owner, index: &Path) -> Result<(), IpamError> {
        let tmp = self.tmp_path();
        let result = write_owner_file(&tmp, owner)
            .and_then(|()| fs::rename(&tmp, index).map_err(Self::io("creating", index)));
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Take the lowest free address of `cidr` for `owner` through a temporary file of its own
    /// (the race test's way in: publishing without the lock).
    #[cfg(test)]
    fn claim(&self, cidr: IpNet, owner: &Owner, taken: &mut Taken) -> Result<IpAddr, IpamError> {
        let tmp = self.tmp_path();
        let result = write_owner_file(&tmp, owner).and_then(|()| self.publish(cidr, &tmp, taken));
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Publish the owner file `tmp` under the lowest free address of the first CIDR of `group`
    /// that has one.
    fn publish_in(
        &self,
        group: &[IpNet],
        tmp: &Path,
        taken: &mut Taken,
    ) -> Result<IpAddr, IpamError> {
        let mut last = Err(IpamError::NoCidrs);
        for cidr in group {
            last = self.publish(*cidr, tmp, taken);
            match last {
                Err(IpamError::Exhausted { .. }) => continue,
                _ => return last,
            }
        }
        last
    }

    /// Publish the owner file `tmp` under the lowest free address of `cidr`.
    fn publish(&self, cidr: IpNet, tmp: &Path, taken: &mut Taken) -> Result<IpAddr, IpamError> {
        loop {
            let addr = first_free(cidr, taken).ok_or(IpamError::Exhausted { cidr })?;
            let path = self.dir.join(addr.to_string());
            match fs::hard_link(tmp, &path) {
                Ok(()) => return Ok(addr),
                // Someone else (outside the lock) got it first: the filesystem is the referee.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    taken.insert(addr);
                }
                Err(e) => return Err(Ipam::io("creating", &path)(e)),
            }
        }
    }

    /// Release what `container_id` holds — on `ifname` only, or on every interface when `None`.
    /// Returns the released addresses; releasing nothing is not an error.
    pub fn release(
        &self,
        container_id: &str,
        ifname: Option<&str>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let mut lock = self.lock()?;
        self.ensure_indexed(&mut lock)?;
        let owners: Vec<Owner> = match ifname {
            Some(ifname) => vec![Owner {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            }],
            // Every interface of the container: its owners as the files say.
            None => {
                let mut owners: Vec<Owner> = self
                    .list()?
                    .into_iter()
                    .filter_map(|e| e.owner)
                    .filter(|o| o.container_id == container_id)
                    .collect();
                owners.sort_by(|a, b| a.ifname.cmp(&b.ifname));
                owners.dedup();
                owners
            }
        };
        let mut doomed = Vec::new();
        for owner in &owners {
            let owned = self.scan_names(Some(owner), false)?.owned;
            let addrs: Vec<IpAddr> = owned.into_iter().map(|e| e.address).collect();
            // The addresses first, then the index: a kill in between leaves an index without
            // addresses, which a later ADD of the owner reuses and GC removes.
            self.remove(&addrs)?;
            let index = self.dir.join(owner.index_name());
            match fs::remove_file(&index) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io("removing", &index)(e)),
            }
            doomed.extend(addrs);
        }
        doomed.sort();
        Ok(doomed)
    }

    /// Remove every allocation whose owner is not in `valid` (as `(container_id, ifname)`),
    /// every unparseable file and every leftover temporary file. Returns the freed addresses.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>, IpamError> {
        self.gc_since(valid, None)
    }

    /// [`Ipam::gc`], sparing allocations committed at or after `started` (the moment the GC
    /// began; `None` spares nothing). Hold [`Ipam::begin_gc`]'s lock around it (and around
    /// the teardown of what [`Ipam::gc_candidates`] named) so that no ADD is half done.
    pub fn gc_since(
        &self,
        valid: &[(String, String)],
        started: Option<SystemTime>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        let doomed: Vec<IpAddr> = self
            .gc_candidates(valid, started)?
            .into_iter()
            .map(|e| e.address)
            .collect();
        // Temporary files: with the lock held, no live allocator owns one.
        let rd = fs::read_dir(&self.dir).map_err(Self::io("reading", &self.dir))?;
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
        self.remove(&doomed)?;
        // Index links whose inode no address shares any more (released or collected).
        let mut live = HashSet::new();
        let mut indexes = Vec::new();
        for entry in fs::read_dir(&self.dir)
            .map_err(Self::io("reading", &self.dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<IpAddr>().is_ok() {
                live.insert(entry.ino());
            } else if name.starts_with(INDEX_PREFIX) {
                indexes.push((entry.ino(), entry.path()));
            }
        }
        for (ino, path) in indexes {
            if !live.contains(&ino) {
                let _ = fs::remove_file(path);
            }
        }
        self.sync_dir()?;
        Ok(doomed)
    }

    fn remove(&self, addrs: &[IpAddr]) -> Result<(), IpamError> {
        for addr in addrs {
            let path = self.dir.join(addr.to_string());
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io("removing", &path)(e)),
            }
        }
        Ok(())
    }
}

/// The text of a small file: `open`, one `read` (two at most for an owner file), `close`,
/// where `fs::read_to_string` also asks for the size and reads once more to see the end.
fn read_small(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = file.read(&mut buf)?;
        text.extend_from_slice(&buf[..n]);
        // A regular file's read is short only at its end.
        if n < buf.len() {
            break;
        }
    }
    String::from_utf8(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Write `owner`'s file at `tmp` (a new file).
fn write_owner_file(tmp: &Path, owner: &Owner) -> Result<(), IpamError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)
        .map_err(Ipam::io("creating", tmp))?;
    f.write_all(owner.to_file().as_bytes())
        .map_err(Ipam::io("writing", tmp))
}

mod attach;
mod known;
mod owner;
mod range;
pub use attach::AttachLock;
pub use owner::{Entry, Owner};
pub use range::{first_free, is_usable, nth_address, usable_range};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
