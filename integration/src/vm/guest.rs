//! What runs inside the guest: `/init` (busybox `sh`) and the helpers scenario scripts use.
//!
//! The guest talks back to the host over its second serial port (`/dev/ttyS1`, fd 3 in the
//! scenario) in lines starting with [`MARKER`]:
//!
//! ```text
//! @@meshd-vm boot 2.21                 seconds since the kernel started, /init running
//! @@meshd-vm module-failed wireguard   insmod failed
//! @@meshd-vm mark lab-up 14.02         a named point in time (uptime seconds)
//! @@meshd-vm begin status              an artifact: every line until `end` is its output
//! @@meshd-vm end status 0              … and its exit status
//! @@meshd-vm failed 1 wait 30s: …      the step that ended the scenario, with its status
//! @@meshd-vm done 0                    the scenario's exit status; the guest powers off
//! ```
//!
//! Scenario scripts run without `set -e` (busybox `sh` ignores it in too many places); they
//! wrap every step whose failure matters in [`HELPERS`]' `vm_must`, `vm_until` or an explicit
//! `|| vm_fail STEP`, which report the step and exit. A scenario's `vm_cleanup` function runs
//! on every exit, and a failing cleanup fails a scenario that had otherwise passed.
//!
//! The first serial port is the console: kernel messages and the scenario's own output.

/// The prefix of every result line.
pub const MARKER: &str = "@@meshd-vm";

/// The guest's `/init`.
pub const INIT: &str = r#"#!/bin/sh
# meshd VM guest: mount the basics, load the modules, run /scenario.sh, report, power off.
export PATH=/opt/meshd/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root WG_COLOR_MODE=never NO_COLOR=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /dev/net
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3>/dev/ttyS1
. /lib/meshd-vm.sh
vm_report boot "$(vm_uptime)"
for m in $(cat /etc/meshd-vm/modules); do
    insmod "/lib/modules/meshd-vm/$m.ko" || vm_report module-failed "$m"
done
[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
ip link set lo up
vm_report modules "$(vm_uptime)"
cd /root
sh -c '. /lib/meshd-vm.sh; trap vm_exit EXIT; . /scenario.sh' </dev/null
vm_report done $?
sync
poweroff -f
sleep 2
echo o >/proc/sysrq-trigger
"#;

/// Shell functions for scenario scripts (`/lib/meshd-vm.sh`, sourced before the scenario).
pub const HELPERS: &str = r#"# meshd VM scenario helpers (busybox sh).
vm_uptime() { cut -d' ' -f1 /proc/uptime; }
# busybox sh runs its own applets before $PATH: the host tools (iproute2's ip, util-linux's
# nsenter…) shadow them as functions, so scenarios get the real ones.
for _t in /usr/local/bin/*; do
    eval "${_t##*/}() { $_t \"\$@\"; }"
done
# vm_path NAME: the file NAME runs (the host tool, if there is one). Start background jobs
# with it (`"$(vm_path ip)" netns exec … &`): `$!` of a function is a subshell, and a signal
# sent to it would not reach the command.
vm_path() {
    if [ -x "/usr/local/bin/$1" ]; then echo "/usr/local/bin/$1"; else command -v "$1"; fi
}
# vm_report WORD ARGS…: one result line to the host.
vm_report() { echo "@@meshd-vm $*" >&3; }
# vm_mark NAME: a named point in time.
vm_mark() { vm_report mark "$1" "$(vm_uptime)"; }
# vm_artifact NAME CMD…: run CMD, hand its output (stdout and stderr) and status to the host.
# (Through a pipe, so that tools see no terminal and print no colours.)
vm_artifact() {
    _n=$1; shift
    vm_report begin "$_n"
    { "$@" 2>&1; echo $? >"${TMPDIR:-/tmp}/.vm_rc"; } | cat >&3
    _rc=$(cat "${TMPDIR:-/tmp}/.vm_rc")
    vm_report end "$_n" "$_rc"
    return "$_rc"
}
# vm_wait SECONDS CMD…: retry CMD (quietly) every 0.2 s until it succeeds or time runs out.
vm_wait() {
    _limit=$(( $1 * 5 )); shift
    _i=0
    until "$@" >/dev/null 2>&1; do
        _i=$((_i + 1))
        [ "$_i" -ge "$_limit" ] && return 1
        sleep 0.2
    done
    return 0
}
# vm_exited PID: background process PID has ended (gone, or a zombie not yet waited for).
vm_exited() { [ ! -e "/proc/$1" ] || grep -q ') Z ' "/proc/$1/stat"; }
# vm_join SECONDS PID NAME: wait for background process PID and return its exit status; if it
# is still running after SECONDS, kill it and fail the scenario (step NAME). Background jobs of
# a non-interactive shell ignore SIGINT: stop them with SIGTERM.
vm_join() {
    if ! vm_wait "$1" vm_exited "$2"; then
        kill -KILL "$2" 2>/dev/null
        wait "$2" 2>/dev/null
        _vm_rc=1
        vm_fail "$3: still running after $1 s"
    fi
    wait "$2"
}
# vm_fail STEP… [status in $_vm_rc]: report STEP as the step that ended the scenario and exit
# with a failure status (the EXIT trap runs vm_cleanup).
vm_fail() {
    _st=${_vm_rc:-1}
    [ "$_st" -ne 0 ] 2>/dev/null || _st=1
    _vm_reported=1
    vm_report failed "$_st" "$*"
    exit "$_st"
}
# vm_must NAME CMD…: vm_artifact, ending the scenario (as step NAME) if CMD fails.
vm_must() {
    vm_artifact "$@" && return 0
    _vm_rc=$?
    vm_fail "$1"
}
# vm_until SECONDS CMD…: vm_wait, ending the scenario if CMD has not succeeded in time.
vm_until() {
    vm_wait "$@" && return 0
    _vm_rc=1
    _s=$1; shift
    vm_fail "wait ${_s}s: $*"
}
# vm_cleanup: what a scenario undoes however it ends (it defines its own); see vm_exit.
vm_cleanup() { :; }
# vm_exit: the scenario's EXIT trap. Runs vm_cleanup once; a cleanup that fails turns a
# passing scenario into a failed one (step `cleanup`), and never hides an earlier failure.
vm_exit() {
    _vm_status=$?
    trap - EXIT
    if [ "$_vm_status" -ne 0 ] && [ -z "$_vm_reported" ]; then
        vm_report failed "$_vm_status" "unguarded command (the scenario's last)"
    fi
    if ! vm_cleanup && [ "$_vm_status" -eq 0 ]; then
        vm_report failed 1 cleanup
        _vm_status=1
    fi
    exit "$_vm_status"
}
"#;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::process::Command;

    use super::HELPERS;

    /// Runs `scenario` as `/init` does (helpers sourced, `vm_exit` as the EXIT trap) with the
    /// host's busybox `sh`, the result channel on stdout. Fails the test without busybox
    /// (`scripts/vm-deps.sh` installs it).
    fn scenario(script: &str) -> (String, i32) {
        testkit::require_tool("busybox");
        let busybox = super::super::initramfs::which("busybox").expect("busybox on PATH");
        // Without the guest's tool wrappers: the host's /usr/local/bin is not the guest's.
        let (head, rest) = HELPERS.split_once("for _t in").unwrap();
        let (_, tail) = rest.split_once("\ndone\n").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new(busybox)
            .env("TMPDIR", tmp.path())
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "exec 3>&1\n{head}{tail}trap vm_exit EXIT\n{script}\n"
            ))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text, out.status.code().unwrap())
    }

    #[test]
    fn a_failed_step_ends_the_scenario_named_and_the_cleanup_still_runs() {
        let cleanup = "vm_cleanup() { echo cleaned; }\n";
        let (out, rc) = scenario(&format!(
            "{cleanup}vm_must a true\nvm_must b sh -c 'exit 3'\necho unreachable"
        ));
        assert_eq!(rc, 3, "{out}");
        assert!(
            out.contains("@@meshd-vm end b 3\n@@meshd-vm failed 3 b\ncleaned"),
            "{out}"
        );
        assert!(!out.contains("unreachable"), "{out}");

        let (out, rc) = scenario(&format!("{cleanup}vm_until 1 false\necho unreachable"));
        assert_eq!(rc, 1, "{out}");
        assert!(out.contains("failed 1 wait 1s: false\ncleaned"), "{out}");

        // A background job that outlives its time is killed and fails the scenario.
        let (out, rc) = scenario("sleep 5 & p=$!\nvm_join 1 $p sleeper\necho unreachable");
        assert_eq!(rc, 1, "{out}");
        assert!(
            out.contains("failed 1 sleeper: still running after 1 s"),
            "{out}"
        );
        assert!(!out.contains("unreachable"), "{out}");

        // A failing last command fails the scenario even when nothing guarded it.
        let (out, rc) = scenario(&format!("{cleanup}false"));
        assert_eq!(rc, 1, "{out}");
        assert!(out.contains("failed 1 unguarded command"), "{out}");
    }

    #[test]
    fn a_failing_cleanup_fails_a_passing_scenario_but_hides_no_earlier_failure() {
        let cleanup = "vm_cleanup() { vm_artifact down false; }\n";
        let (out, rc) = scenario(&format!("{cleanup}vm_must a true"));
        assert_eq!(rc, 1, "{out}");
        assert!(
            out.ends_with("@@meshd-vm end down 1\n@@meshd-vm failed 1 cleanup\n"),
            "{out}"
        );

        let (out, rc) = scenario(&format!("{cleanup}vm_must a sh -c 'exit 4'"));
        assert_eq!(rc, 4, "{out}");
        assert_eq!(out.matches("failed").count(), 1, "{out}");

        let (out, rc) = scenario("vm_cleanup() { echo cleaned; }\nvm_must a true");
        assert_eq!((rc, out.contains("failed")), (0, false), "{out}");
        assert!(out.ends_with("cleaned\n"), "{out}");
    }
}
