#!/usr/bin/env bash
# Builds Outrigger's images with Debian's podman, offline from any registry:
#   localhost/outrigger-proxy, outrigger-init, outrigger-control, outrigger-shop (tag 0.1.0)
# from the release binaries (cargo build --release, run here if they are missing), on minimal
# Debian bases made with mmdebstrap (libc only; iptables too for the init image).
#
#   deploy/build-images.sh [--bin-dir DIR] [--tag TAG]
#
# --bin-dir target/debug builds from a debug build (what the container test does, to avoid a
# second, release build in CI). Needs root, podman, buildah's runc and mmdebstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=target/release
TAG=0.1.0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    *) echo "usage: $0 [--bin-dir DIR] [--tag TAG]" >&2; exit 2 ;;
  esac
done
export CONTAINERS_CONF="$PWD/deploy/podman/containers.conf"
BINS="outrigger-proxy outrigger-control outrigger shop"
if [ "$BIN_DIR" = target/release ]; then
  for b in $BINS; do
    [ -x "$BIN_DIR/$b" ] || { cargo build --release --locked --bins; break; }
  done
fi
for b in $BINS; do
  [ -x "$BIN_DIR/$b" ] || { echo "missing $BIN_DIR/$b" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Only the packages' files, no package manager, no shell: the binaries need libc and libgcc.
base() {
  local name=$1; shift
  if ! podman image exists "localhost/$name:bookworm"; then
    mmdebstrap --quiet --variant=extract --include="$1" \
      --dpkgopt='path-exclude=/usr/share/{doc,man,locale,info,lintian}/*' \
      bookworm "$work/$name.tar" "$MIRROR"
    podman import --quiet "$work/$name.tar" "localhost/$name:bookworm" >/dev/null
  fi
}
base outrigger-base libc6,libgcc-s1
base outrigger-init-base libc6,libgcc-s1,iptables

ctx="$work/context"
mkdir -p "$ctx"
for b in $BINS; do
  cp "$BIN_DIR/$b" "$ctx/"
  # The release profile keeps line tables for perf; an image has no use for them.
  if command -v strip >/dev/null; then strip --strip-debug "$ctx/$b"; fi
done
for image in proxy init control shop; do
  podman build --quiet -f "deploy/images/$image.Containerfile" -t "localhost/outrigger-$image:$TAG" "$ctx" >/dev/null
done
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "outrigger-.*:$TAG" | sort
