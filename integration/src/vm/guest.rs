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
//! @@meshd-vm done 0                    the scenario's exit status; the guest powers off
//! ```
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
sh -c '. /lib/meshd-vm.sh; . /scenario.sh' </dev/null
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
# vm_report WORD ARGS…: one result line to the host.
vm_report() { echo "@@meshd-vm $*" >&3; }
# vm_mark NAME: a named point in time.
vm_mark() { vm_report mark "$1" "$(vm_uptime)"; }
# vm_artifact NAME CMD…: run CMD, hand its output (stdout and stderr) and status to the host.
# (Through a pipe, so that tools see no terminal and print no colours.)
vm_artifact() {
    _n=$1; shift
    vm_report begin "$_n"
    { "$@" 2>&1; echo $? >/tmp/.vm_rc; } | cat >&3
    _rc=$(cat /tmp/.vm_rc)
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
"#;
