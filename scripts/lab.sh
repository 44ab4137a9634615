#!/usr/bin/env bash
# Bring up the local meshd lab from nothing and show the encrypted mesh working:
# installs prerequisites, builds, starts N nodes with M pods each, then proves with a capture
# of the underlay that pod traffic between nodes crossed the wire only as WireGuard.
# Extra arguments go to `meshctl lab up` (e.g. --nodes 4 --pods-per-node 3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "› building meshd (release)"
cargo build --release --locked --bins -q
target/release/meshctl lab up "$@"
name=mlab
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--name" ] && name="${args[$((i + 1))]}"
done
echo
target/release/lab-verify --name "$name"
echo
echo "The lab stays up. Try:"
echo "  target/release/meshctl lab status --name $name [-o json]"
echo "  target/release/meshctl lab exec --name $name n1 -- wg show"
echo "  target/release/meshctl lab exec --name $name n1 -- meshctl status"
echo "  target/release/meshctl audit --lab $name --evidence"
echo "  target/release/meshctl lab down --name $name"
