#!/usr/bin/env bash
# Build a Debian bookworm base image without any registry: debootstrap + docker import.
# Usage: models/_base/offline-base.sh [TAG] [WORKDIR]     (needs root, debootstrap, a Docker daemon)
# Then: pfmbench images build --base-from TAG   (or PFMBENCH_DOCKER_BASE=TAG)
set -euo pipefail
TAG=${1:-local/debian:bookworm}
WORK=${2:-$(mktemp -d)}
if docker image inspect "$TAG" >/dev/null 2>&1; then echo "$TAG exists"; exit 0; fi
mkdir -p "$WORK"
ROOTFS="$WORK/rootfs"
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11 bookworm "$ROOTFS" >"$WORK/debootstrap.log"
fi
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" -c . | docker import - "$TAG" >/dev/null
echo "imported $TAG"
