#!/usr/bin/env bash
# Builds the registry-less Debian base image: debootstrap --variant=minbase into a
# temporary root, then `docker import`. Prints the tag. Does nothing when the tag exists.
# Usage: scripts/base-image.sh [TAG]   (default bot-bottle/base:bookworm)
set -euo pipefail
tag=${1:-bot-bottle/base:bookworm}
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
command -v debootstrap >/dev/null || { echo "base-image: debootstrap missing; run scripts/docker-up.sh as root" >&2; exit 1; }
root=$(mktemp -d /tmp/bot-bottle-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base-image: debootstrap bookworm (about a minute)" >&2
debootstrap --variant=minbase bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "$tag"
