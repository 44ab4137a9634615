#!/usr/bin/env bash
# Build a real kube-apiserver (and kube-controller-manager) for the Kubernetes tests, from
# Debian bookworm's `kubernetes` source package (v1.20.2, every dependency vendored), with
# Debian's Go. Never through the Go module proxy (GOPROXY=off, GO111MODULE=off).
#
#   scripts/kube-apiserver.sh build   build once into the cache dir; reuse when the binary
#                                     there reports the right version (idempotent, quick)
#   scripts/kube-apiserver.sh path    print the directory holding the binaries
#   scripts/kube-apiserver.sh check   exit 0 when the cached kube-apiserver is the right version
#
# The cache dir is $MESHD_KUBE_CACHE, by default /var/cache/meshd/kube-v1.20.2; the tests find
# it the same way (integration::kube_apiserver). etcd comes from Debian's etcd-server package.
# The build takes about 4 minutes on 2 cores and peaks at about 1.3 GB of memory; the source
# tree is removed afterwards, only the binaries (about 110 MB each) stay.
set -euo pipefail

version=v1.20.2
cache="${MESHD_KUBE_CACHE:-/var/cache/meshd/kube-$version}"
bin="$cache/bin"

is_current() {
  [ -x "$bin/kube-apiserver" ] &&
    [ "$("$bin/kube-apiserver" --version 2>/dev/null)" = "Kubernetes $version" ]
}

install_prerequisites() {
  local need=()
  command -v go >/dev/null 2>&1 || need+=(golang-go)
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v rsync >/dev/null 2>&1 || need+=(rsync)
  command -v jq >/dev/null 2>&1 || need+=(jq)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
  # Replacements for the vendored reflect2 1.0.1 / json-iterator, which crash on Go >= 1.18.
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
  [ -d /usr/share/gocode/src/github.com/json-iterator/go ] || need+=(golang-github-json-iterator-go-dev)
  # `apt-get source` needs a deb-src line for bookworm main.
  local src=/etc/apt/sources.list.d/meshd-bookworm-src.sources
  local fresh_src=0
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src ' /etc/apt/sources.list; then
    cat >"$src" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fresh_src=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ "${#need[@]}" -gt 0 ] || [ "$fresh_src" = 1 ]; then
    apt-get update -qq
  fi
  if [ "${#need[@]}" -gt 0 ]; then
    echo "› installing: ${need[*]}"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# The build date and commit are not in a source package: give make the version by file, as
# Debian's own rules do, so `kube-apiserver --version` says exactly which release this is.
write_version_file() {
  cat >"$1" <<VER
KUBE_GIT_COMMIT=''
KUBE_GIT_TREE_STATE='archive'
KUBE_GIT_VERSION='$version'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
VER
}

build() {
  if is_current; then
    echo "kube-apiserver $version present in $bin"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "building kube-apiserver installs Debian packages: run as root" >&2
    exit 1
  fi
  install_prerequisites
  mkdir -p "$cache"
  local work="$cache/build"
  rm -rf "$work"
  mkdir -p "$work"
  echo "› building kube-apiserver $version from Debian's kubernetes source package (about 4 minutes)"
  (
    cd "$work"
    # bookworm's package is 1.20.5+really1.20.2: the v1.20.2 tree (checked below by --version).
    apt-get source --download-only -qq kubernetes >/dev/null
    dpkg-source -x kubernetes_*.dsc k8s >/dev/null
    cd k8s
    for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
      rm -rf "vendor/$pkg"
      cp -r "/usr/share/gocode/src/$pkg" "vendor/$pkg"
      find "vendor/$pkg" -name '*_test.go' -delete
    done
    write_version_file "$work/version"
    export GOPROXY=off GO111MODULE=off GOFLAGS= KUBE_GIT_VERSION_FILE="$work/version"
    export GOCACHE="$work/gocache"
    make WHAT=cmd/kube-apiserver >"$work/make-apiserver.log" 2>&1 || {
      tail -40 "$work/make-apiserver.log" >&2
      exit 1
    }
    mkdir -p "$bin.new"
    cp _output/bin/kube-apiserver "$bin.new/"
    # The controller manager allocates spec.podCIDRs; optional: the tests run without it.
    if make WHAT=cmd/kube-controller-manager >"$work/make-controller-manager.log" 2>&1; then
      cp _output/bin/kube-controller-manager "$bin.new/"
    else
      echo "kube-controller-manager did not build; continuing without it:" >&2
      tail -20 "$work/make-controller-manager.log" >&2
    fi
  )
  rm -rf "$bin"
  mv "$bin.new" "$bin"
  rm -rf "$work"
  is_current || {
    echo "the built kube-apiserver does not report Kubernetes $version" >&2
    "$bin/kube-apiserver" --version >&2 || true
    exit 1
  }
  echo "kube-apiserver $version built into $bin"
}

case "${1:-}" in
  build)
    mkdir -p "$(dirname "$cache")"
    # One build at a time (CI and engineers may call this concurrently).
    exec 9>"$(dirname "$cache")/.kube-$version.lock"
    flock 9
    build
    ;;
  path) echo "$bin" ;;
  check) is_current ;;
  *)
    echo "usage: $0 build|path|check" >&2
    exit 2
    ;;
esac
