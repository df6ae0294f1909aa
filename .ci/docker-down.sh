#!/usr/bin/env bash
# Stop the private daemon started by docker-up.sh (containers first).
WORK=${1:?workdir}
export DOCKER_HOST="unix://$WORK/sock/docker.sock"
ids=$(/usr/bin/docker ps -aq 2>/dev/null) && [ -n "$ids" ] && /usr/bin/docker rm -f $ids >/dev/null 2>&1
[ -f "$WORK/dockerd.pid" ] && kill -TERM "$(cat "$WORK/dockerd.pid")" 2>/dev/null
for _ in $(seq 50); do [ -S "$WORK/sock/docker.sock" ] || break; sleep 0.2; done
true
