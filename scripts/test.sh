#!/usr/bin/env bash
# Run every check and test of the workspace: formatting, clippy, unit tests and the multi-node
# integration tests (real namespaces, real meshd processes, real WireGuard, real captures).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# A one-shot build gains nothing from incremental state, which doubles the target dir.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -q -- -D warnings
# Integration tests run the daemon binaries: build them first.
cargo build --workspace --bins --locked -q
# The kernel_vm guest runs static meshd, meshctl and meshd-cni (glibc, +crt-static), built in
# a target dir of their own (RUSTFLAGS would otherwise rebuild the shared one); without debug
# info, which the guest strips anyway. About 1m50s on a busy 2-vCPU machine.
if [[ "$(uname -m)" == x86_64 ]]; then
    static_target="$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/static-gnu"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_PROFILE_DEV_DEBUG=0 \
        CARGO_TARGET_DIR="$static_target" cargo build --locked -q \
        --target x86_64-unknown-linux-gnu -p meshd -p meshctl -p meshd-cni --bin meshd --bin meshd-cni --bin meshctl
    export MESHD_VM_STATIC_BIN_DIR="$static_target/x86_64-unknown-linux-gnu/debug"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast -- --test-threads="${MESHD_TEST_THREADS:-2}" 2>&1 | tee "$log"
# The BPF crate is outside the host workspace (built for bpfel-unknown-none): check its format.
(cd ebpf-redirect/ebpf-redirect-ebpf && cargo fmt -- --check)
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
