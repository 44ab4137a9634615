#!/usr/bin/env bash
# Build meshd's container image on this machine, with no container engine, no registry and no
# internet beyond the configured Debian mirror: an OCI image layout (a directory, optionally
# also a tar) that containerd, podman, skopeo and any registry accept.
#
#   scripts/build-image.sh [--release] [--bin-dir DIR] [--out DIR] [--tar FILE]
#   scripts/build-image.sh --base-only    only build (or find) the cached Debian layer
#
#   --release      build the binaries with cargo's release profile (default: debug)
#   --bin-dir DIR  take meshd, meshctl, meshd-cni and meshd-wg from DIR instead of building
#                  them (the tests pass their own target dir)
#   --out DIR      the OCI layout to write (default: target/image/meshd-oci); replaced
#   --tar FILE     also write the layout as one tar (an "OCI archive", for
#                  `ctr images import`, `podman load`, `skopeo copy oci-archive:FILE ...`)
#
# The image is the DaemonSet's: its tag is deploy/base/kustomization.yaml's (`meshd:<newTag>`),
# and it holds the paths the manifests run (/usr/local/bin/meshd, /usr/local/bin/meshd-cni for
# the install-cni init container's /bin/sh, install and mv, /usr/local/bin/meshd-wg for
# deploy/components/userspace-wireguard). Two layers:
#   1. Debian 12 (bookworm) minbase plus iproute2, wireguard-tools, ca-certificates and kmod,
#      made by mmdebstrap from the apt mirror configured on this machine. Built once and cached
#      (as a one-layer OCI layout) under $MESHD_IMAGE_CACHE, by default
#      /var/cache/meshd/image-base-<key>; about a minute the first time.
#   2. /usr/local/bin: the four binaries of this workspace (debug info stripped).
# Config: Entrypoint /usr/local/bin/meshd, PATH, user 0, OCI labels (title, version).
# The layout is written by umoci (Debian's package). docs/image.md says how to load it.
set -euo pipefail
export LC_ALL=C

repo="$(cd "$(dirname "$0")/.." && pwd)"
profile=debug
bin_dir=""
out="$repo/target/image/meshd-oci"
tar_out=""
base_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --bin-dir) bin_dir="$2"; shift ;;
    --out) out="$2"; shift ;;
    --tar) tar_out="$2"; shift ;;
    --base-only) base_only=1 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

binaries=(meshd meshctl meshd-cni meshd-wg)
packages=iproute2,wireguard-tools,ca-certificates,kmod
suite=bookworm

# The tag deploy/ runs: `images: [{name: meshd, newName: meshd, newTag: "X"}]`.
tag="$(sed -n 's/^ *newTag: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$repo/deploy/base/kustomization.yaml" | head -1)"
if [ -z "$tag" ]; then
  echo "no newTag in deploy/base/kustomization.yaml: which tag does deploy/ run?" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "building the image's root filesystem (mmdebstrap --mode=root) needs root" >&2
  exit 1
fi

need=()
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
if [ "${#need[@]}" -gt 0 ]; then
  echo "› installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The apt sources of this machine for $suite (deb822 .sources or one-line .list), as one-line
# entries for mmdebstrap: the image is made from the same mirror (or snapshot) as the host.
apt_sources() {
  {
    cat /etc/apt/sources.list 2>/dev/null || true
    for f in /etc/apt/sources.list.d/*.list; do [ -e "$f" ] && cat "$f"; done
  } | sed -n "s/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) \($suite[^ ]*\) \(.*\)$/deb \2 \3 \4/p"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    awk -v suite="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && uris != "")
          for (s in S) if (S[s] ~ "^" suite) print "deb " uris " " S[s] " " comps
        types = uris = comps = ""; delete S
      }
      /^[ \t]*$/ { flush(); next }
      /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
      /^URIs:/ { uris = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) S[i] = $i }
      /^Components:/ { sub(/^Components:[ \t]*/, ""); comps = $0 }
      END { flush() }' "$f"
  done
}

base_image() {
  local key cache
  key="$(printf '%s\n' "$suite" minbase "$packages" tar-layer-v3 | sha256sum | cut -c1-12)"
  cache="${MESHD_IMAGE_CACHE:-/var/cache/meshd/image-base-$key}"
  mkdir -p "$(dirname "$cache")"
  exec 8>"$cache.lock"
  flock 8
  if [ -f "$cache/layout/index.json" ]; then
    echo "$cache/layout"
    return
  fi
  local sources
  mapfile -t sources < <(apt_sources | sort -u)
  if [ "${#sources[@]}" -eq 0 ]; then
    echo "no apt source for Debian $suite in /etc/apt/sources.list*" >&2
    exit 1
  fi
  rm -rf "$cache.new"
  mkdir -p "$cache.new"
  echo "› Debian $suite minbase + $packages from ${sources[0]} (about a minute; cached in $cache)" >&2
  # Documentation, manuals and translations are left out (copyright files stay), as in
  # Debian's slim images; so are device nodes (a runtime mounts /dev). The root goes straight
  # into a tar: the layer.
  mmdebstrap --quiet --mode=root --variant=minbase --include="$packages" \
    --skip=output/mknod \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$suite" "$cache.new/rootfs.tar" "${sources[@]}" >&2
  umoci init --layout "$cache.new/layout" >&2
  umoci new --image "$cache.new/layout:base" >&2
  # Layers are added as tars made by mmdebstrap and GNU tar (`umoci raw add-layer`): umoci
  # 0.4.7's `insert` writes a layer whose last file lacks its padding and the tar trailer.
  umoci raw add-layer --image "$cache.new/layout:base" \
    --history.created_by "mmdebstrap --variant=minbase --include=$packages $suite" \
    "$cache.new/rootfs.tar" >&2
  rm -f "$cache.new/rootfs.tar"
  rm -rf "$cache"
  mv "$cache.new" "$cache"
  echo "$cache/layout"
}

if [ "$base_only" = 1 ]; then
  echo "Debian layer: $(base_image)"
  exit 0
fi

if [ -z "$bin_dir" ]; then
  echo "› cargo build ($profile): ${binaries[*]}"
  flags=()
  [ "$profile" = release ] && flags+=(--release)
  (cd "$repo" && cargo build --locked "${flags[@]}" -p meshd -p meshctl -p meshd-cni -p wgdp \
    $(printf -- '--bin %s ' "${binaries[@]}"))
  bin_dir="$repo/target/$profile"
fi
for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "$bin_dir/$b missing: build the workspace first" >&2; exit 1; }
done

base="$(base_image)"
work="$(mktemp -d "${TMPDIR:-/tmp}/meshd-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/layer/usr/local/bin"
for b in "${binaries[@]}"; do
  install -m 0755 "$bin_dir/$b" "$work/layer/usr/local/bin/$b"
  # Debug info is most of a debug build's size; symbols stay for backtraces.
  strip --strip-debug "$work/layer/usr/local/bin/$b"
done
tar --numeric-owner --owner=0 --group=0 --sort=name -C "$work/layer" -cf "$work/bin.tar" \
  usr/local/bin

echo "› OCI layout $out (meshd:$tag)"
rm -rf "$out.new"
mkdir -p "$(dirname "$out")"
cp -a "$base" "$out.new"
umoci raw add-layer --image "$out.new:base" \
  --history.created_by "install -m 0755 ${binaries[*]} /usr/local/bin/" \
  "$work/bin.tar"
umoci config --image "$out.new:base" --tag "$tag" \
  --config.entrypoint /usr/local/bin/meshd \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.user 0 \
  --config.workingdir / \
  --config.label "org.opencontainers.image.title=meshd" \
  --config.label "org.opencontainers.image.version=$tag" \
  --author meshd \
  --history.created_by "ENTRYPOINT [\"/usr/local/bin/meshd\"]"
umoci rm --image "$out.new:base"
umoci gc --layout "$out.new"
# Readable by whoever loads it (umoci writes blobs 0600).
chmod -R a+rX "$out.new"
rm -rf "$out"
mv "$out.new" "$out"
if [ -n "$tar_out" ]; then
  tar -C "$out" -cf "$tar_out.new" oci-layout index.json blobs
  mv "$tar_out.new" "$tar_out"
  echo "› OCI archive $tar_out"
fi
echo "meshd:$tag written to $out"
