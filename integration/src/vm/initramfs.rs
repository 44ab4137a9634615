//! The guest's root filesystem, packed as an uncompressed `newc` initramfs:
//!
//! - `/init` ([`super::guest::INIT`]) and the scenario helpers, a static busybox (`/bin/sh`,
//!   `insmod`, `poweroff`, coreutils),
//! - host tools that busybox cannot replace (iproute2's `ip` and `tc`, `wg`, `tcpdump`,
//!   `ping`, util-linux's `nsenter`/`unshare`/`mount`/`umount`) under `/usr/local/bin`, with
//!   the shared libraries `ldd` names and the dynamic loader at the same paths as on the host,
//! - meshd's binaries (debug info stripped) under `/opt/meshd/bin`: [`STATIC_BINARIES`] static
//!   when built so (`MESHD_VM_STATIC_BIN_DIR`, see [`super::static_bin_dir`]), the rest
//!   dynamically linked with their libraries,
//! - the kernel modules, decompressed, in load order (`/etc/meshd-vm/modules`).
//!
//! The scenario script is appended per VM as a second, small archive (the kernel unpacks
//! concatenated archives in order), so the large base image is built once per test process.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::cpio::CpioWriter;
use super::guest;
use super::kernel::{module_name, GuestKernel};

/// meshd's binaries the guest needs.
pub const MESHD_BINARIES: &[&str] = &[
    "meshd",
    "meshctl",
    "meshd-cni",
    "meshd-wg",
    "lab-verify",
    "lab-traffic",
];

/// The binaries a node runs, taken statically linked from the static directory when there is
/// one (glibc with `+crt-static`: `scripts/test.sh` builds them).
pub const STATIC_BINARIES: &[&str] = &["meshd", "meshctl", "meshd-cni"];

/// Host tools copied into the guest (with their libraries); the guest fails without them.
pub const REQUIRED_TOOLS: &[&str] = &[
    "ip", "wg", "tcpdump", "ping", "nsenter", "unshare", "mount", "umount",
];

/// Host tools copied when present (busybox's applets stand in otherwise).
pub const OPTIONAL_TOOLS: &[&str] = &["tc", "sysctl", "bpftool"];

/// Kernel modules loaded at boot (with their dependencies).
pub const MODULES: &[&str] = &[
    "wireguard",
    "veth",
    "tun",
    "bridge",
    "sch_ingress",
    "cls_bpf",
];

/// Where the guest finds meshd's binaries.
pub const GUEST_BIN_DIR: &str = "/opt/meshd/bin";

#[derive(Debug)]
enum Node {
    Dir,
    File { perm: u32, source: Source },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug)]
enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// A tree of guest paths, written to a cpio archive in path order (parents first).
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    fn norm(path: &str) -> String {
        path.trim_matches('/').to_string()
    }

    fn parents(&mut self, path: &str) {
        let mut cur = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            self.nodes.entry(cur.clone()).or_insert(Node::Dir);
        }
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let p = Self::norm(path);
        self.parents(&p);
        self.nodes.entry(p).or_insert(Node::Dir);
    }

    /// A file with the given content.
    pub fn bytes(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) {
        let p = Self::norm(path);
        self.parents(&p);
        self.nodes.insert(
            p,
            Node::File {
                perm,
                source: Source::Bytes(data.into()),
            },
        );
    }

    /// A file copied from the host when the archive is written.
    pub fn copy(&mut self, path: &str, perm: u32, from: &Path) {
        let p = Self::norm(path);
        self.parents(&p);
        self.nodes.insert(
            p,
            Node::File {
                perm,
                source: Source::Path(from.to_path_buf()),
            },
        );
    }

    /// A symbolic link, unless something already occupies the path.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let p = Self::norm(path);
        self.parents(&p);
        self.nodes
            .entry(p)
            .or_insert_with(|| Node::Symlink(target.to_string()));
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        let p = Self::norm(path);
        self.parents(&p);
        self.nodes.insert(p, Node::CharDevice { major, minor });
    }

    /// Whether a path is taken.
    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(&Self::norm(path))
    }

    /// Writes the tree as a `newc` archive to `out`.
    pub fn write(&self, out: &Path) -> anyhow::Result<u64> {
        let f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = CpioWriter::new(BufWriter::new(f));
        for (path, node) in &self.nodes {
            match node {
                Node::Dir => w.dir(path, 0o755)?,
                Node::Symlink(t) => w.symlink(path, t)?,
                Node::CharDevice { major, minor } => w.char_device(path, 0o600, *major, *minor)?,
                Node::File { perm, source } => match source {
                    Source::Bytes(b) => w.file(path, *perm, b)?,
                    Source::Path(p) => {
                        let data =
                            fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                        w.file(path, *perm, &data)?;
                    }
                },
            }
        }
        let mut inner = w.finish()?;
        inner.flush()?;
        Ok(fs::metadata(out)?.len())
    }
}

/// A host program by name: `$PATH`, then the sbin directories.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// The shared objects `ldd` lists for `binary` (including the dynamic loader); empty for a
/// static binary.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": static.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: {line}", binary.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn add_with_libraries(tree: &mut Tree, guest_path: &str, host: &Path) -> anyhow::Result<()> {
    for lib in shared_libraries(host)? {
        let real =
            fs::canonicalize(&lib).with_context(|| format!("resolving {}", lib.display()))?;
        tree.copy(&lib.to_string_lossy(), 0o755, &real);
    }
    let real = fs::canonicalize(host).with_context(|| format!("resolving {}", host.display()))?;
    tree.copy(guest_path, 0o755, &real);
    Ok(())
}

/// Copies `src` to `dst` without debug information (`objcopy --strip-debug`), or as it is
/// when objcopy is missing.
fn strip_debug(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let stripped = which("objcopy").is_some_and(|objcopy| {
        Command::new(objcopy)
            .arg("--strip-debug")
            .arg(src)
            .arg(dst)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !stripped {
        fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}

fn decompress_module(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => {
            fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
        }
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-d", "-c"])
                .arg(src)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {tool} (see scripts/vm-deps.sh)"))?;
            if !out.status.success() {
                bail!(
                    "{tool} -d {}: {}",
                    src.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            fs::write(dst, out.stdout)?;
        }
    }
    Ok(())
}

/// The shared part of every guest's initramfs.
#[derive(Debug)]
pub struct BaseImage {
    /// The archive.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Module names in the order `/init` loads them.
    pub modules: Vec<String>,
    /// meshd's binaries that went in statically linked.
    pub static_binaries: Vec<String>,
}

/// Builds the base initramfs in `work` from `kernel` and meshd's binaries in `bin_dir`, those
/// of [`STATIC_BINARIES`] from `static_dir` if given (where they must be static).
pub fn build_base(
    kernel: &GuestKernel,
    bin_dir: &Path,
    static_dir: Option<&Path>,
    work: &Path,
) -> anyhow::Result<BaseImage> {
    let mut tree = Tree::default();
    for d in [
        "proc", "sys", "dev", "run", "tmp", "root", "etc", "mnt", "var", "usr/bin", "usr/sbin",
        "sbin", "bin",
    ] {
        tree.dir(d);
    }
    tree.symlink("var/run", "/run");
    tree.char_device("dev/console", 5, 1);
    tree.char_device("dev/null", 1, 3);
    tree.bytes("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n");
    tree.bytes("etc/group", 0o644, "root:x:0:\n");
    tree.bytes(
        "etc/nsswitch.conf",
        0o644,
        "passwd: files\ngroup: files\nhosts: files\n",
    );
    tree.bytes("etc/hosts", 0o644, "127.0.0.1 localhost\n::1 localhost\n");

    // meshd's binaries without debug info, static ones from `static_dir`.
    let stripped = work.join("bin");
    fs::create_dir_all(&stripped)?;
    let mut static_binaries = Vec::new();
    for b in MESHD_BINARIES {
        let static_src = static_dir.filter(|_| STATIC_BINARIES.contains(b));
        let src = static_src.unwrap_or(bin_dir).join(b);
        if !src.is_file() {
            bail!(
                "{} missing: build meshd's binaries first (cargo build --workspace --bins, \
                 and the static ones, as scripts/test.sh does) or point MESHD_BIN_DIR \
                 (MESHD_VM_STATIC_BIN_DIR) at them",
                src.display()
            );
        }
        if static_src.is_some() {
            let libs = shared_libraries(&src)?;
            if !libs.is_empty() {
                bail!("{} is not static: it needs {libs:?}", src.display());
            }
            static_binaries.push((*b).to_string());
        }
        let dst = stripped.join(b);
        strip_debug(&src, &dst)?;
        add_with_libraries(&mut tree, &format!("{GUEST_BIN_DIR}/{b}"), &dst)?;
    }

    // Host tools with their libraries.
    for (tools, required) in [(REQUIRED_TOOLS, true), (OPTIONAL_TOOLS, false)] {
        for t in tools {
            match which(t) {
                Some(p) => add_with_libraries(&mut tree, &format!("usr/local/bin/{t}"), &p)?,
                None if required => {
                    bail!("host tool {t} missing (scripts/vm-deps.sh installs it)")
                }
                None => {}
            }
        }
    }

    // busybox for everything else; it must be static (busybox-static).
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox missing (scripts/vm-deps.sh installs busybox-static)")?;
    if !shared_libraries(&busybox)?.is_empty() {
        bail!(
            "{} is dynamically linked: install busybox-static",
            busybox.display()
        );
    }
    tree.copy("bin/busybox", 0o755, &busybox);
    let list = Command::new(&busybox)
        .arg("--list-full")
        .output()
        .context("listing busybox applets")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "bin/busybox" {
            tree.symlink(applet, "/bin/busybox");
        }
    }
    tree.symlink("bin/sh", "/bin/busybox");

    // Kernel modules, decompressed (busybox insmod loads plain ELF objects), in load order.
    let mods = kernel.module_load_order(MODULES)?;
    let mdir = work.join("modules");
    fs::create_dir_all(&mdir)?;
    let mut names = Vec::new();
    for m in &mods {
        let name = module_name(&m.to_string_lossy());
        let dst = mdir.join(format!("{name}.ko"));
        decompress_module(m, &dst)?;
        tree.copy(&format!("lib/modules/meshd-vm/{name}.ko"), 0o644, &dst);
        names.push(name);
    }
    tree.bytes(
        "etc/meshd-vm/modules",
        0o644,
        names.iter().map(|n| format!("{n}\n")).collect::<String>(),
    );
    tree.bytes("init", 0o755, guest::INIT);
    tree.bytes("lib/meshd-vm.sh", 0o644, guest::HELPERS);

    let path = work.join("base.cpio");
    let size = tree.write(&path)?;
    Ok(BaseImage {
        path,
        size,
        modules: names,
        static_binaries,
    })
}

/// Writes `base` followed by a small archive holding `/scenario.sh` to `out`.
pub fn with_scenario(base: &BaseImage, script: &str, out: &Path) -> anyhow::Result<()> {
    let mut tree = Tree::default();
    tree.bytes("scenario.sh", 0o755, script);
    let extra = out.with_extension("scenario.cpio");
    tree.write(&extra)?;
    let mut f = fs::File::create(out)?;
    std::io::copy(&mut fs::File::open(&base.path)?, &mut f)?;
    std::io::copy(&mut fs::File::open(&extra)?, &mut f)?;
    f.flush()?;
    fs::remove_file(&extra)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_emits_parents_first() {
        let mut t = Tree::default();
        t.bytes("/a/b/c", 0o644, "x");
        t.symlink("a-b", "a");
        t.symlink("a/b/c", "ignored: occupied");
        let keys: Vec<&String> = t.nodes.keys().collect();
        assert_eq!(keys, ["a", "a-b", "a/b", "a/b/c"]);
        assert!(matches!(t.nodes["a/b/c"], Node::File { .. }));
        assert!(t.contains("/a/b"));
    }

    #[test]
    fn ldd_of_a_dynamic_binary_names_libc_and_the_loader() {
        testkit::require_tool("ls");
        testkit::require_tool("ldd");
        let ls = which("ls").expect("ls on PATH");
        let libs = shared_libraries(&ls).expect("ldd");
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")));
        assert!(libs
            .iter()
            .any(|l| l.to_string_lossy().contains("ld-linux")));
    }
}
