#!/usr/bin/env bash
# Run every check and test of the workspace: formatting, clippy, unit tests and the multi-node
# integration tests (real namespaces, real meshd processes, real WireGuard, real captures).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -q -- -D warnings
# Integration tests run the daemon binaries: build them first.
cargo build --workspace --bins --locked -q
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast -- --test-threads="${MESHD_TEST_THREADS:-2}" 2>&1 | tee "$log"
# The tc eBPF programs and their loader: their own workspace (the BPF crate is built with
# Debian's rustc for bpfel-unknown-none); the toolchain script installs what that needs.
ebpf-redirect/install-toolchain.sh --no-build
(cd ebpf-redirect && cargo fmt --all -- --check && cargo test --locked --no-fail-fast -- --test-threads=1) 2>&1 | tee -a "$log"
# One closing line over every test binary of both workspaces.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
