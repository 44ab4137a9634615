#!/usr/bin/env bash
# Install what the benches measure against: for `mesh-bench` (integration/src/bin/mesh-bench/)
# iperf3, wireguard-go and wireguard-tools from Debian, and boringtun-cli from crates.io
# (`cargo install boringtun-cli --locked`) into $MESH_BENCH_DEPS (default /opt/meshd-bench),
# where mesh-bench looks for it (bin/boringtun-cli) when it is not on $PATH; for `cni-bench`
# (integration/src/bin/cni-bench.rs) the reference CNI plugins `ptp` and `host-local` from
# Debian's containernetworking-plugins (in /usr/lib/cni).
# Idempotent and quick when everything is already present. Run as root.
set -euo pipefail

root="${MESH_BENCH_DEPS:-/opt/meshd-bench}"
have() { command -v "$1" >/dev/null 2>&1; }

if [ "$(id -u)" -ne 0 ]; then
  echo "mesh-bench creates network namespaces and this installs Debian packages: run as root" >&2
  exit 1
fi

need=()
have iperf3       || need+=(iperf3)
have wireguard-go || need+=(wireguard-go)
have wg           || need+=(wireguard-tools)
have ping         || need+=(iputils-ping)
have ip           || need+=(iproute2)
have getconf      || need+=(libc-bin)
have nsenter      || need+=(util-linux)
[ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
if [ "${#need[@]}" -gt 0 ]; then
  echo "› apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -x "$root/bin/boringtun-cli" ]; then
  echo "› boringtun-cli present: $root/bin/boringtun-cli"
else
  if ! have cargo; then
    echo "cargo is required to install boringtun-cli" >&2
    exit 1
  fi
  echo "› cargo install boringtun-cli --locked --root $root (a few minutes on 2 cores)"
  cargo install boringtun-cli --locked --root "$root"
fi

echo "› versions:"
echo "  iperf3:        $(iperf3 --version 2>/dev/null | head -n1)"
echo "  wireguard-go:  $(dpkg-query -W -f='${Version}' wireguard-go 2>/dev/null || echo '?')"
echo "  wg:            $(wg --version 2>/dev/null | head -n1)"
echo "  boringtun-cli: $("$root/bin/boringtun-cli" --version 2>/dev/null | head -n1)"
echo "  CNI plugins:   $(dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null || echo '?') (/usr/lib/cni)"
