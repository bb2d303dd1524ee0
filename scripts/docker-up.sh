#!/usr/bin/env bash
# Makes sure a Docker engine answers. When `docker info` fails and we are root on
# Debian, installs Debian's docker.io (plus debootstrap for the registry-less base
# image) and starts dockerd; otherwise says how to get Docker and exits 1.
set -euo pipefail

log() { printf 'docker-up: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! grep -qi '^ID=debian' /etc/os-release 2>/dev/null; then
  log "DOCKER_UNREACHABLE: no Docker engine answers 'docker info'."
  log "Try: install Docker Engine (https://docs.docker.com/engine/install/) and start it,"
  log "     or add yourself to the 'docker' group, then run this command again."
  exit 1
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v runsc >/dev/null 2>&1 || need+=(runsc)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]} from Debian (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# gVisor: Debian's runsc only starts containers on this kind of kernel with
# --network=host as a runtime argument (see docs/security.md).
if command -v runsc >/dev/null 2>&1 && [ ! -s /etc/docker/daemon.json ]; then
  mkdir -p /etc/docker
  printf '{"runtimes": {"runsc": {"path": "%s", "runtimeArgs": ["--network=host"]}}}\n' \
    "$(command -v runsc)" > /etc/docker/daemon.json
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  if ! pgrep -x containerd >/dev/null 2>&1 && command -v containerd >/dev/null 2>&1; then
    : # dockerd starts its own containerd when none runs
  fi
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "Docker engine is up"
    exit 0
  fi
  sleep 0.5
done
log "DOCKER_UNREACHABLE: dockerd did not answer within 60 s; see /var/log/dockerd.log"
exit 1
