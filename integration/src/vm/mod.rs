//! Run meshd scenarios inside a qemu VM whose kernel has WireGuard (and what the tc eBPF
//! datapath needs), to prove the kernel-module path that the host kernel cannot run.
//!
//! - [`kernel`]: fetch a Debian cloud kernel package with apt, unpack, `depmod`, cache;
//! - [`initramfs`]: the guest root — busybox, host tools with their libraries, meshd's
//!   binaries, the modules — written as a `newc` archive by [`cpio`];
//! - [`guest`]: the guest's `/init` and the scenario helpers, and the result protocol;
//! - [`qemu`]: boot, time out, collect the console and the results.
//!
//! [`Harness::new`] does the expensive part once (kernel, base image);
//! [`Harness::run`] boots one VM per scenario script:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let h = integration::vm::Harness::new(&integration::lab::bin_dir())?;
//! let run = h.run("hello", "vm_artifact uname uname -r\n", std::time::Duration::from_secs(60))?;
//! run.expect_success()?;
//! println!("{}", run.ok_output("uname")?);
//! # Ok(()) }
//! ```
//!
//! Everything inside the VM belongs to the scenario: it may build namespaces and send
//! traffic freely; nothing leaves the guest (it has no network device).

pub mod cpio;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use initramfs::BaseImage;
pub use kernel::GuestKernel;
pub use qemu::{Accel, Artifact, Ending, VmConfig, VmRun};

/// The directory with meshd's binaries for the guest: `$MESHD_BIN_DIR`, else `default`.
pub fn meshd_bin_dir(default: &Path) -> PathBuf {
    std::env::var_os("MESHD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| default.to_path_buf())
}

/// `$MESHD_VM_STATIC_BIN_DIR`: where statically linked builds of
/// [`initramfs::STATIC_BINARIES`] are, if anywhere. `scripts/test.sh` builds them with
/// `RUSTFLAGS='-C target-feature=+crt-static' cargo build --target x86_64-unknown-linux-gnu`
/// into a target directory of their own and sets it.
pub fn static_bin_dir() -> Option<PathBuf> {
    std::env::var_os("MESHD_VM_STATIC_BIN_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// A kernel and a base initramfs, ready to boot scenarios.
#[derive(Debug)]
pub struct Harness {
    /// The guest kernel.
    pub kernel: GuestKernel,
    /// The shared initramfs.
    pub base: BaseImage,
    /// How long preparing took (fetch or cache hit, and the initramfs).
    pub prepare: Duration,
    work: PathBuf,
}

impl Harness {
    /// Fetches (or reuses) the kernel and builds the base initramfs from the binaries in
    /// `bin_dir` (see [`meshd_bin_dir`]), the static ones from [`static_bin_dir`] if set.
    pub fn new(bin_dir: &Path) -> anyhow::Result<Harness> {
        let started = Instant::now();
        let kernel = kernel::ensure_kernel()?;
        // A harness kept in a `static` is never dropped: sweep what dead processes left.
        qemu::sweep_stale_scratch();
        let work = qemu::scratch_dir("meshd-vm-base")?;
        let base = initramfs::build_base(&kernel, bin_dir, static_bin_dir().as_deref(), &work)?;
        tracing::info!(
            kernel = %kernel.release,
            initramfs_mib = base.size >> 20,
            modules = ?base.modules,
            static_binaries = ?base.static_binaries,
            "VM harness ready"
        );
        Ok(Harness {
            kernel,
            base,
            prepare: started.elapsed(),
            work,
        })
    }

    /// Boots one VM running `script` (busybox `sh`, with the helpers of [`guest::HELPERS`])
    /// with the default settings and the given timeout.
    pub fn run(&self, name: &str, script: &str, timeout: Duration) -> anyhow::Result<VmRun> {
        let config = VmConfig {
            timeout,
            ..VmConfig::default()
        };
        qemu::run_scenario(&self.kernel, &self.base, name, script, &config)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
