#!/usr/bin/env bash
# Installs exactly what building the ebpf-redirect BPF programs needs on a fresh
# Debian 12 machine (Linux >= 6.6, rustup stable 1.95 present, nightly WITHOUT rust-src).
# Idempotent: every step is skipped when its result is already present.
# Usage: ./install-toolchain.sh            # install + prove by building the BPF object
#        ./install-toolchain.sh --no-build # install only
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\n==> %s\n' "$*"; }
t0=$(date +%s)
step_start() { s0=$(date +%s); log "$*"; }
step_end() { echo "    ($(( $(date +%s) - s0 )) s)"; }

need_pkgs=()
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# 1. Debian packages:
#    llvm-22-dev             - LLVM the bpf-linker links against (same major as Debian's rustc 1.96)
#    rustc-web               - Debian's rustc 1.96 (LLVM 22) to compile the no_std BPF crate
#    libstd-rust-web-dev-bpf - precompiled core/alloc for bpfel-unknown-none (replaces build-std/rust-src)
#    libpolly-22-dev, zlib1g-dev, libzstd-dev: link deps of llvm-sys (pulled by llvm-22-dev normally)
for p in llvm-${LLVM_MAJOR}-dev rustc-web libstd-rust-web-dev-bpf; do
  pkg_installed "$p" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
  step_start "apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y --no-install-recommends "${need_pkgs[@]}"
  step_end
else
  log "Debian packages already installed (llvm-${LLVM_MAJOR}-dev rustc-web libstd-rust-web-dev-bpf)"
fi

# 2. bpf-linker, built against LLVM 22 (without LLVM_PREFIX its build finds LLVM 14 and fails).
if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "bpf-linker $BPF_LINKER_VERSION already installed: $(command -v bpf-linker)"
else
  step_start "cargo install bpf-linker@$BPF_LINKER_VERSION (LLVM $LLVM_MAJOR)"
  LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR} cargo +stable install --locked \
    "bpf-linker@$BPF_LINKER_VERSION" --no-default-features --features "llvm-${LLVM_MAJOR}"
  step_end
fi

# 3. bpffs (needed at run time for pinning; harmless at build time).
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  log "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf || echo "    (could not mount bpffs; pinning will fail)"
fi

# 4. Prove it: build the BPF object with Debian's rustc.
if [[ "${1:-}" != "--no-build" ]]; then
  step_start "building ebpf-redirect-ebpf (bpfel-unknown-none, Debian rustc, no build-std)"
  (cd "$HERE/ebpf-redirect-ebpf" && \
     RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 cargo build --locked --release --target bpfel-unknown-none)
  obj="$HERE/ebpf-redirect-ebpf/target/bpfel-unknown-none/release/ebpf-redirect-ebpf"
  file "$obj" 2>/dev/null || ls -l "$obj"
  step_end
fi
log "done in $(( $(date +%s) - t0 )) s"
