#!/usr/bin/env bash
# Start a private Docker daemon for CI (no systemd, no registry access) and print the
# DOCKER_HOST to export. Installs docker.io, debootstrap and docker-registry if missing.
# Usage: eval "$(.ci/docker-up.sh WORKDIR)"
set -euo pipefail
WORK=${1:?workdir}
mkdir -p "$WORK/data" "$WORK/exec" "$WORK/sock"
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-registry >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap docker-registry; } >"$WORK/apt.log" 2>&1
fi
SOCK="unix://$WORK/sock/docker.sock"
if ! DOCKER_HOST=$SOCK /usr/bin/docker info >/dev/null 2>&1; then
  dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" -H "$SOCK" >"$WORK/dockerd.log" 2>&1 &
  for _ in $(seq 150); do DOCKER_HOST=$SOCK /usr/bin/docker info >/dev/null 2>&1 && break; sleep 0.2; done
fi
DOCKER_HOST=$SOCK /usr/bin/docker info >/dev/null
echo "export DOCKER_HOST=$SOCK"
