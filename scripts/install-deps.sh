#!/usr/bin/env bash
# Install what building, running and testing meshd needs on a fresh Debian machine.
# Idempotent and quick when everything is already present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip        || need+=(iproute2)
have wg        || need+=(wireguard-tools)
have wireguard-go || need+=(wireguard-go)
have iperf3    || need+=(iperf3)
have tcpdump   || need+=(tcpdump)
have ping      || need+=(iputils-ping)
have nsenter   || need+=(util-linux)
have sysctl    || need+=(procps)
have cc        || need+=(gcc libc6-dev)
have kubectl   || need+=(kubectl)   # renders deploy/ offline (kubectl kustomize)
have mmdebstrap || need+=(mmdebstrap) # the image's Debian root (scripts/build-image.sh)
have umoci     || need+=(umoci)     # writes the image as an OCI layout

if [ "$(id -u)" -ne 0 ]; then
  echo "meshd's lab and tests create network namespaces: run as root" >&2
  exit 1
fi

if [ "${#need[@]}" -gt 0 ]; then
  echo "› installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have cargo; then
  echo "cargo (Rust 1.95 or newer) is required" >&2
  exit 1
fi

# The kernel-module path is tested in a qemu VM (integration/tests/kernel_vm.rs).
"$(dirname "$0")/vm-deps.sh"

# The tc eBPF programs are part of the normal build: ebpf-redirect's build script compiles
# them with Debian's rustc and bpf-linker, which this installs (idempotent, quick when present).
"$(dirname "$0")/../ebpf-redirect/install-toolchain.sh" --no-build

# The Kubernetes tests run a real kube-apiserver (v1.20.2) with etcd: built once from Debian's
# kubernetes source package into /var/cache/meshd (about 4 minutes; quick when present).
"$(dirname "$0")/kube-apiserver.sh" build

# meshd's image (integration/tests/image.rs builds it from the workspace's binaries): its
# Debian layer, made once with mmdebstrap into /var/cache/meshd (about a minute; quick when
# present).
"$(dirname "$0")/build-image.sh" --base-only
