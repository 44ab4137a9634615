//! The guest kernel: a Debian `linux-image-*-cloud-amd64` package fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` (never installed), `depmod`ed, and cached
//! under [`cache_dir`] keyed by package name and version.
//!
//! The default is the bookworm 6.12 cloud kernel (`linux-image-6.12-cloud-amd64`, from
//! bookworm-security): WireGuard, veth, TUN and bridge as modules, and what the tc eBPF
//! datapath needs (BPF syscall and JIT, BTF, TCX, which needs ≥ 6.6). `MESHD_VM_KERNEL_PACKAGE`
//! picks another package (a metapackage is followed to the image it depends on).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// The metapackage followed when `MESHD_VM_KERNEL_PACKAGE` is not set.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-6.12-cloud-amd64";

/// The marker written once a cached kernel is complete.
const READY: &str = "ready";

/// Where fetched kernels are cached: `$MESHD_VM_CACHE`, else `$XDG_CACHE_HOME/meshd-vm`,
/// else `/var/cache/meshd-vm`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHD_VM_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("meshd-vm");
    }
    PathBuf::from("/var/cache/meshd-vm")
}

/// An unpacked, `depmod`ed kernel package.
#[derive(Clone, Debug)]
pub struct GuestKernel {
    /// The Debian package name, e.g. `linux-image-6.12.117+deb12-cloud-amd64`.
    pub package: String,
    /// The Debian package version.
    pub version: String,
    /// The kernel release (`uname -r`), e.g. `6.12.117+deb12-cloud-amd64`.
    pub release: String,
    /// The unpacked package.
    pub root: PathBuf,
}

impl GuestKernel {
    /// The compressed kernel image qemu boots.
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// `/lib/modules/RELEASE` of the unpacked package.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The kernel's build configuration (`/boot/config-RELEASE`).
    pub fn config(&self) -> anyhow::Result<String> {
        let p = self
            .root
            .join("boot")
            .join(format!("config-{}", self.release));
        fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// The value of one `CONFIG_…` option (`y`, `m`, a string), `None` when unset.
    pub fn config_value(&self, option: &str) -> anyhow::Result<Option<String>> {
        let want = format!("{option}=");
        Ok(self
            .config()?
            .lines()
            .find_map(|l| l.strip_prefix(&want).map(str::to_string)))
    }

    /// The module files to load, dependencies first, so that `wanted` (module names such as
    /// `wireguard`, `veth`) are all loaded; each only once. Built-in modules are skipped.
    pub fn module_load_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let dir = self.modules_dir();
        let dep = fs::read_to_string(dir.join("modules.dep"))
            .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
        let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let deps = parse_modules_dep(&dep);
        let builtin: BTreeSet<String> = builtin
            .lines()
            .filter_map(|l| Path::new(l.trim()).file_name())
            .map(|f| module_name(&f.to_string_lossy()))
            .collect();
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            let name = module_name(w);
            if builtin.contains(&name) {
                continue;
            }
            visit(&name, &deps, &mut seen, &mut order)
                .with_context(|| format!("resolving module {w} of kernel {}", self.release))?;
        }
        Ok(order.into_iter().map(|rel| dir.join(rel)).collect())
    }
}

/// Module name from a file name or a name: no directory, no `.ko…` suffix, `-` as `_`.
pub fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// `modules.dep`: module name → (relative path, dependencies' relative paths).
fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let (path, deps) = l.split_once(':')?;
            Some((
                module_name(path),
                (
                    path.trim().to_string(),
                    deps.split_whitespace().map(str::to_string).collect(),
                ),
            ))
        })
        .collect()
}

fn visit(
    name: &str,
    deps: &BTreeMap<String, (String, Vec<String>)>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let Some((path, ds)) = deps.get(name) else {
        bail!("module {name} is not in modules.dep");
    };
    for d in ds {
        visit(&module_name(d), deps, seen, order)?;
    }
    order.push(path.clone());
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?} (is it installed? see scripts/vm-deps.sh)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `Package`, `Version` and `Depends` of the candidate version of `package`.
fn apt_show(package: &str) -> anyhow::Result<(String, String, String)> {
    let text = run(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let (name, version) = (field("Package:"), field("Version:"));
    if name.is_empty() || version.is_empty() {
        bail!("apt-cache knows no package {package}");
    }
    Ok((name, version, field("Depends:")))
}

/// The concrete kernel image package and version behind `package` (a metapackage is
/// followed through its `linux-image-…` dependency).
fn resolve(package: &str) -> anyhow::Result<(String, String)> {
    let mut name = package.to_string();
    for _ in 0..3 {
        let (pkg, version, depends) = apt_show(&name)?;
        let next = depends
            .split(',')
            .filter_map(|d| d.split_whitespace().next())
            .find(|d| d.starts_with("linux-image-"));
        match next {
            Some(n) if n != pkg => name = n.to_string(),
            _ => return Ok((pkg, version)),
        }
    }
    bail!("{package}: too many levels of metapackages")
}

fn cache_key(package: &str, version: &str) -> String {
    format!("{package}_{version}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._~".contains(c) {
                c
            } else {
                '%'
            }
        })
        .collect()
}

fn load_cached(dir: &Path) -> anyhow::Result<Option<GuestKernel>> {
    if !dir.join(READY).exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(dir.join(READY))?;
    let mut f = text.lines();
    let (Some(package), Some(version), Some(release)) = (f.next(), f.next(), f.next()) else {
        return Ok(None);
    };
    Ok(Some(GuestKernel {
        package: package.to_string(),
        version: version.to_string(),
        release: release.to_string(),
        root: dir.join("root"),
    }))
}

fn find_depmod() -> PathBuf {
    ["/usr/sbin/depmod", "/sbin/depmod", "/usr/bin/depmod"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("depmod"))
}

/// The kernel to boot: cached when this package version was fetched before, else downloaded
/// with `apt-get download` (running `apt-get update` once if apt knows no such package),
/// unpacked and `depmod`ed. Offline, the newest cached kernel is used.
pub fn ensure_kernel() -> anyhow::Result<GuestKernel> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    // One fetcher at a time per machine (tests run in parallel threads and processes).
    let lock_path = cache.join("lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;

    let wanted = std::env::var("MESHD_VM_KERNEL_PACKAGE")
        .unwrap_or_else(|_| DEFAULT_KERNEL_PACKAGE.to_string());
    let resolved = resolve(&wanted).or_else(|first| {
        tracing::info!(error = %first, "apt-cache does not know {wanted}; running apt-get update");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        resolve(&wanted)
    });
    let (package, version) = match resolved {
        Ok(pv) => pv,
        Err(err) => {
            if let Some(k) = newest_cached(&cache)? {
                tracing::warn!(error = %err, package = %k.package, version = %k.version, "cannot resolve {wanted}; using the cached kernel");
                return Ok(k);
            }
            return Err(err.context(format!("resolving kernel package {wanted}")));
        }
    };
    let dir = cache.join("kernels").join(cache_key(&package, &version));
    if let Some(k) = load_cached(&dir)? {
        return Ok(k);
    }
    tracing::info!(%package, %version, dir = %dir.display(), "fetching guest kernel");
    let tmp = cache.join(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run(Command::new("apt-get")
        .args(["download", "-qq", &format!("{package}={version}")])
        .current_dir(&tmp))?;
    let deb = fs::read_dir(&tmp)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", tmp.display()))?;
    let root = tmp.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb)?;
    let release = fs::read_dir(root.join("boot"))
        .context("the package has no /boot")?
        .filter_map(Result::ok)
        .find_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    run(Command::new(find_depmod())
        .arg("-b")
        .arg(&root)
        .arg(&release))?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    fs::rename(&root, dir.join("root"))?;
    let _ = fs::remove_dir_all(&tmp);
    fs::write(
        dir.join(READY),
        format!("{package}\n{version}\n{release}\n"),
    )?;
    load_cached(&dir)?.context("cached kernel vanished")
}

fn newest_cached(cache: &Path) -> anyhow::Result<Option<GuestKernel>> {
    let Ok(entries) = fs::read_dir(cache.join("kernels")) else {
        return Ok(None);
    };
    let mut found = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let modified = e.metadata()?.modified()?;
        if let Some(k) = load_cached(&e.path())? {
            found.push((modified, k));
        }
    }
    found.sort_by_key(|(t, _)| *t);
    Ok(found.pop().map(|(_, k)| k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/lib/crypto/libcurve25519-generic.ko.xz"),
            "libcurve25519_generic"
        );
        assert_eq!(module_name("veth"), "veth");
        assert_eq!(module_name("sch_ingress.ko"), "sch_ingress");
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let dep = "kernel/a.ko.xz: kernel/b.ko.xz kernel/c-x.ko.xz\n\
                   kernel/b.ko.xz: kernel/c-x.ko.xz\n\
                   kernel/c-x.ko.xz:\n\
                   kernel/d.ko.xz: kernel/c-x.ko.xz\n";
        let deps = parse_modules_dep(dep);
        let mut seen = BTreeSet::new();
        let mut order = Vec::new();
        for m in ["a", "d"] {
            visit(m, &deps, &mut seen, &mut order).expect("visit");
        }
        assert_eq!(
            order,
            [
                "kernel/c-x.ko.xz",
                "kernel/b.ko.xz",
                "kernel/a.ko.xz",
                "kernel/d.ko.xz"
            ]
        );
        assert!(visit("zz", &deps, &mut seen, &mut order).is_err());
    }

    #[test]
    fn cache_keys_are_path_safe() {
        assert_eq!(
            cache_key(
                "linux-image-6.12.117+deb12-cloud-amd64",
                "6.12.117-1~deb12u1"
            ),
            "linux-image-6.12.117+deb12-cloud-amd64_6.12.117-1~deb12u1"
        );
        assert_eq!(cache_key("a", "1:2/3"), "a_1%2%3");
    }
}
