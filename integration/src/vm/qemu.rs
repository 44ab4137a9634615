//! Booting a guest with qemu and reading what it reported.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::guest::MARKER;
use super::initramfs::{self, BaseImage};
use super::kernel::GuestKernel;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How qemu executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// Software emulation (`-accel tcg,thread=single -cpu max`).
    Tcg,
}

impl Accel {
    /// `MESHD_VM_ACCEL` (`kvm` or `tcg`) if set; else KVM when `/dev/kvm` exists and the CPU
    /// advertises vmx or svm, else TCG. (A `/dev/kvm` without vmx/svm — a paravirtual
    /// hypervisor — fails with "emulation failure" on a stock kernel.)
    pub fn detect() -> Accel {
        match std::env::var("MESHD_VM_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        let flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if hw && Path::new("/dev/kvm").exists() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// One VM run's settings.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Kill the guest after this long.
    pub timeout: Duration,
    /// Execution mode.
    pub accel: Accel,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: 1024,
            cpus: 2,
            timeout: Duration::from_secs(600),
            accel: Accel::detect(),
        }
    }
}

/// The output and exit status of one command the scenario ran with `vm_artifact`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Artifact {
    /// stdout and stderr, interleaved.
    pub output: String,
    /// Exit status; `None` when the guest stopped before the command ended.
    pub status: Option<i32>,
}

impl Artifact {
    /// Whether the command exited 0.
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The scenario finished with this exit status and the guest powered off.
    Done(i32),
    /// The guest was killed after [`VmConfig::timeout`].
    TimedOut,
    /// qemu exited without the guest reporting the scenario's end (panic, crash).
    Vanished(String),
}

/// What one VM run reported.
#[derive(Clone, Debug)]
pub struct VmRun {
    /// The scenario's name.
    pub name: String,
    /// How it ended.
    pub ending: Ending,
    /// Artifacts by name.
    pub artifacts: BTreeMap<String, Artifact>,
    /// `vm_mark` points, guest uptime in seconds, in order.
    pub marks: Vec<(String, f64)>,
    /// Guest uptime when `/init` started.
    pub boot_secs: Option<f64>,
    /// Guest uptime when the modules were loaded.
    pub modules_secs: Option<f64>,
    /// Modules that failed to load.
    pub module_failures: Vec<String>,
    /// The step that ended the scenario (`vm_fail`, `vm_must`, `vm_until`, or the cleanup)
    /// and its exit status.
    pub failed_step: Option<(String, i32)>,
    /// Host wall-clock time from spawning qemu to its exit.
    pub wall: Duration,
    /// The serial console (kernel log and scenario output).
    pub console: String,
    /// The raw result channel.
    pub results: String,
    /// Where the logs were kept (`MESHD_VM_KEEP=1`), if anywhere.
    pub kept: Option<PathBuf>,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl VmRun {
    /// The artifact `name`, or an error carrying the guest's log.
    pub fn artifact(&self, name: &str) -> anyhow::Result<&Artifact> {
        self.artifacts
            .get(name)
            .with_context(|| format!("the guest reported no artifact {name:?}\n{self}"))
    }

    /// The output of artifact `name`, which must have exited 0.
    pub fn ok_output(&self, name: &str) -> anyhow::Result<&str> {
        let a = self.artifact(name)?;
        if !a.ok() {
            anyhow::bail!(
                "{name} exited {:?}:\n{}\n---- guest ----\n{self}",
                a.status,
                a.output
            );
        }
        Ok(&a.output)
    }

    /// Fails unless the scenario ran to its end with exit status 0.
    pub fn expect_success(&self) -> anyhow::Result<()> {
        if self.ending != Ending::Done(0)
            || !self.module_failures.is_empty()
            || self.failed_step.is_some()
        {
            let step = match &self.failed_step {
                Some((step, rc)) => format!(" at step {step:?} (status {rc})"),
                None => String::new(),
            };
            anyhow::bail!("scenario {} did not succeed{step}\n{self}", self.name);
        }
        Ok(())
    }

    /// Seconds between two marks (or `boot`/`done`-less marks), if both were reported.
    pub fn between(&self, from: &str, to: &str) -> Option<f64> {
        let at = |n: &str| self.marks.iter().find(|(m, _)| m == n).map(|(_, t)| *t);
        Some(at(to)? - at(from)?)
    }

    /// One line of timings for the test log.
    pub fn timings(&self) -> String {
        let mut s = format!(
            "{}: wall {:.1}s, /init at {}, modules at {}",
            self.name,
            self.wall.as_secs_f64(),
            self.boot_secs
                .map_or_else(|| "?".into(), |t| format!("{t:.2}s")),
            self.modules_secs
                .map_or_else(|| "?".into(), |t| format!("{t:.2}s")),
        );
        for (m, t) in &self.marks {
            s.push_str(&format!(", {m} at {t:.1}s"));
        }
        s
    }

    fn parse(&mut self) {
        let mut open: Option<(String, String)> = None;
        for raw in self.results.lines() {
            let line = raw.trim_end_matches('\r');
            let Some(rest) = line.strip_prefix(MARKER).and_then(|r| r.strip_prefix(' ')) else {
                if let Some((_, buf)) = open.as_mut() {
                    buf.push_str(line);
                    buf.push('\n');
                }
                continue;
            };
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap_or_default();
            let args: Vec<&str> = words.collect();
            let num = |i: usize| args.get(i).and_then(|v| v.parse::<f64>().ok());
            match kind {
                "boot" => self.boot_secs = num(0),
                "modules" => self.modules_secs = num(0),
                "module-failed" => self
                    .module_failures
                    .push(args.first().copied().unwrap_or("?").to_string()),
                "mark" => {
                    if let (Some(n), Some(t)) = (args.first(), num(1)) {
                        self.marks.push(((*n).to_string(), t));
                    }
                }
                "begin" => {
                    if let Some((name, output)) = open.take() {
                        self.artifacts.insert(
                            name,
                            Artifact {
                                output,
                                status: None,
                            },
                        );
                    }
                    open = Some((
                        args.first().copied().unwrap_or("?").to_string(),
                        String::new(),
                    ));
                }
                "end" => {
                    if let Some((name, output)) = open.take() {
                        let status = args.get(1).and_then(|v| v.parse().ok());
                        self.artifacts.insert(name, Artifact { output, status });
                    }
                }
                "failed" => {
                    let rc = args.first().and_then(|v| v.parse().ok()).unwrap_or(1);
                    let step = args.get(1..).map(|s| s.join(" ")).unwrap_or_default();
                    // The first failure is the cause; a later one would be the cleanup's.
                    self.failed_step.get_or_insert((step, rc));
                }
                "done" => {
                    if let Some(rc) = args.first().and_then(|v| v.parse().ok()) {
                        self.ending = Ending::Done(rc);
                    }
                }
                _ => {}
            }
        }
        if let Some((name, output)) = open.take() {
            self.artifacts.insert(
                name,
                Artifact {
                    output,
                    status: None,
                },
            );
        }
    }
}

impl fmt::Display for VmRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario {}: {:?}", self.name, self.ending)?;
        writeln!(f, "{}", self.timings())?;
        if !self.module_failures.is_empty() {
            writeln!(f, "modules that failed to load: {:?}", self.module_failures)?;
        }
        if let Some((step, rc)) = &self.failed_step {
            writeln!(f, "failed at step {step:?} (status {rc})")?;
            if let Some(a) = self.artifacts.get(step) {
                writeln!(f, "---- output of {step} ----\n{}", tail(&a.output, 40))?;
            }
        }
        if let Some(k) = &self.kept {
            writeln!(f, "logs kept in {}", k.display())?;
        }
        writeln!(f, "---- results channel (last 60 lines) ----")?;
        writeln!(f, "{}", tail(&self.results, 60))?;
        writeln!(f, "---- guest console (last 80 lines) ----")?;
        write!(f, "{}", tail(&self.console, 80))
    }
}

/// A running qemu; killed (and its run directory removed, unless kept) on drop.
#[derive(Debug)]
struct Qemu {
    child: Child,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A directory removed on drop unless `MESHD_VM_KEEP` is set.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A scratch directory under the system temp dir, unique to this process and call.
pub fn scratch_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id()));
    fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(p)
}

/// Removes scratch directories (`meshd-vm-*-PID-...`) of processes that no longer exist:
/// a harness held for a whole test process is never dropped, and a killed run drops nothing.
pub fn sweep_stale_scratch() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(pid) = scratch_owner(name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The PID in a scratch directory's name `meshd-vm-<name>-<pid>-<n>-<nanos>`.
fn scratch_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("meshd-vm-")?;
    let mut parts = rest.rsplitn(4, '-');
    let (_nanos, _n, pid) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    pid.parse().ok()
}

/// Boots `kernel` with `base` plus `script` as `/scenario.sh` and waits for the guest to
/// power off (or the timeout). Errors only when qemu cannot be run at all; what the guest
/// did is in the returned [`VmRun`].
pub fn run_scenario(
    kernel: &GuestKernel,
    base: &BaseImage,
    name: &str,
    script: &str,
    config: &VmConfig,
) -> anyhow::Result<VmRun> {
    let keep = std::env::var_os("MESHD_VM_KEEP").is_some();
    let dir = RunDir {
        path: scratch_dir(&format!("meshd-vm-{name}"))?,
        keep,
    };
    let initrd = dir.path.join("initrd.cpio");
    initramfs::with_scenario(base, script, &initrd)?;
    let console = dir.path.join("console.log");
    let results = dir.path.join("results.log");
    let qemu = initramfs::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 missing (scripts/vm-deps.sh installs qemu-system-x86)")?;
    let mut cmd = Command::new(qemu);
    match config.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        // One host thread runs every vCPU in turn. With a thread per vCPU the guest kernel's
        // live code patching (static keys flipped by e.g. socket timestamping, while another
        // vCPU runs that code) hit stale int3 breakpoints: "Oops: int3" in
        // netif_receive_skb / __netif_receive_skb_core, in 2 of 3 runs of the mixed scenario.
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
    };
    cmd.args(["-m", &config.memory_mib.to_string()])
        .args(["-smp", &config.cpus.to_string()])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(&initrd)
        // `no_timer_check`: under software emulation on a loaded host the guest's boot-time
        // check of the IO-APIC timer can miss its window and panic the kernel ("IO-APIC + timer
        // doesn't work"); the emulated timer works, only the check is timing-sensitive.
        .args([
            "-append",
            "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init net.ifnames=0 no_timer_check",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::info!(scenario = name, accel = ?config.accel, "booting guest");
    let started = Instant::now();
    let mut vm = Qemu {
        child: cmd.spawn().context("spawning qemu")?,
    };
    let ending = loop {
        if let Some(status) = vm.child.try_wait()? {
            break Ending::Vanished(format!("qemu exited: {status}"));
        }
        if started.elapsed() > config.timeout {
            let _ = vm.child.kill();
            let _ = vm.child.wait();
            break Ending::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = started.elapsed();
    let mut qemu_err = String::new();
    if let Some(mut e) = vm.child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut qemu_err);
    }
    drop(vm);
    let mut run = VmRun {
        name: name.to_string(),
        ending,
        artifacts: BTreeMap::new(),
        marks: Vec::new(),
        boot_secs: None,
        modules_secs: None,
        module_failures: Vec::new(),
        failed_step: None,
        wall,
        console: String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).into_owned(),
        results: String::from_utf8_lossy(&fs::read(&results).unwrap_or_default()).into_owned(),
        kept: keep.then(|| dir.path.clone()),
    };
    if !qemu_err.trim().is_empty() {
        run.console.push_str("\n---- qemu stderr ----\n");
        run.console.push_str(&qemu_err);
    }
    run.parse();
    tracing::info!("{}", run.timings());
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_owner_reads_the_pid_and_sweep_spares_live_processes() {
        assert_eq!(scratch_owner("meshd-vm-base-4906-0-2df67bfe"), Some(4906));
        assert_eq!(scratch_owner("meshd-vm-two-nodes-17-3-0000abcd"), Some(17));
        assert_eq!(scratch_owner("meshd-vm-base"), None);
        assert_eq!(scratch_owner("other-1-2-3"), None);
        // Ours survives a sweep (this process is alive); a dead PID's is removed.
        let mine = scratch_dir("meshd-vm-sweeptest").expect("scratch dir");
        let dead = std::env::temp_dir().join("meshd-vm-sweeptest-4294967-0-00000000");
        fs::create_dir_all(&dead).expect("dead dir");
        sweep_stale_scratch();
        assert!(mine.exists());
        assert!(!dead.exists());
        fs::remove_dir_all(&mine).expect("remove");
    }

    #[test]
    fn results_are_parsed() {
        let mut run = VmRun {
            name: "t".into(),
            ending: Ending::Vanished("x".into()),
            artifacts: BTreeMap::new(),
            marks: Vec::new(),
            boot_secs: None,
            modules_secs: None,
            module_failures: Vec::new(),
            failed_step: None,
            wall: Duration::ZERO,
            console: String::new(),
            results: "noise\r\n@@meshd-vm boot 2.25\r\n@@meshd-vm module-failed veth\n\
                      @@meshd-vm mark a 3.0\n@@meshd-vm begin st\n{\"x\": 1}\nline 2\n\
                      @@meshd-vm end st 0\n@@meshd-vm mark b 5.5\n@@meshd-vm begin bad\n\
                      oops\n@@meshd-vm end bad 3\n@@meshd-vm begin cut\npartial\n\
                      @@meshd-vm failed 3 wait 30s: peer_count_is n1 0\n\
                      @@meshd-vm failed 1 cleanup\n@@meshd-vm done 1\n"
                .into(),
            kept: None,
        };
        run.parse();
        assert_eq!(run.boot_secs, Some(2.25));
        assert_eq!(run.module_failures, ["veth"]);
        assert_eq!(run.between("a", "b"), Some(2.5));
        assert_eq!(run.artifacts["st"].output, "{\"x\": 1}\nline 2\n");
        assert!(run.artifacts["st"].ok());
        assert_eq!(run.artifacts["bad"].status, Some(3));
        assert_eq!(run.artifacts["cut"].status, None);
        assert_eq!(run.ending, Ending::Done(1));
        assert_eq!(
            run.failed_step,
            Some(("wait 30s: peer_count_is n1 0".to_string(), 3))
        );
        let err = run
            .expect_success()
            .expect_err("a failed step is no success")
            .to_string();
        assert!(
            err.contains("at step \"wait 30s: peer_count_is n1 0\""),
            "{err}"
        );
        assert!(run.ok_output("bad").is_err());
    }
}
