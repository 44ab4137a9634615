#!/usr/bin/env bash
# Install what the kernel-module VM tests (`cargo test -p integration --test kernel_vm`) need on
# the host: qemu (software emulation works without hardware virtualisation), a static busybox
# for the guest's /init, cpio for inspecting initramfs images, depmod (kmod), xz (the modules
# are decompressed for busybox insmod), objcopy (debug info stripped), and the tools that
# are copied into the guest with their libraries (iproute2, wireguard-tools, tcpdump, ping,
# util-linux's nsenter/unshare, mount/umount: integration::vm::initramfs::REQUIRED_TOOLS).
# The guest kernel itself is fetched by the test harness as a Debian package and cached.
# Idempotent and quick when everything is already present.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "installing the VM test prerequisites needs root" >&2
  exit 1
fi

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-system-x86_64 || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx insmod || need+=(busybox-static)
have cpio     || need+=(cpio)
have xz       || need+=(xz-utils)
have objcopy  || need+=(binutils)
have dpkg-deb || need+=(dpkg)
have depmod   || [ -x /sbin/depmod ] || need+=(kmod)
have ip       || need+=(iproute2)
have wg       || need+=(wireguard-tools)
have tcpdump  || need+=(tcpdump)
have ping     || need+=(iputils-ping)
have nsenter  || need+=(util-linux)   # nsenter, unshare: copied into the guest
have unshare  || need+=(util-linux)
have mount    || need+=(mount)        # mount, umount: copied into the guest
have umount   || need+=(mount)
have ldd      || need+=(libc-bin)
have apt-get  || { echo "apt-get is required to fetch the guest kernel" >&2; exit 1; }

if [ "${#need[@]}" -gt 0 ]; then
  echo "› installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
