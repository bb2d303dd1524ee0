#!/usr/bin/env bash
# What every demo needs first on a fresh machine: the npm dependencies, Docker up, the CLI and
# sidecars built, and the images (registry-less: debootstrap from Debian's mirror, never a
# container registry).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules ] || npm ci --no-audit --no-fund
bash scripts/docker-up.sh
node scripts/build.mjs >/dev/null
./bin/bottle images build --base bootstrap
