#!/usr/bin/env bash
# The main job on a fresh machine: install, bring Docker up, build the images
# (registry-less when no registry answers), then run the demo bottle attached.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d node_modules ] || npm ci --no-audit --no-fund
bash scripts/docker-up.sh
node scripts/build.mjs >/dev/null
# bootstrap: debootstrap from Debian's mirror; never asks a container registry
./bin/bottle images build --base bootstrap
./bin/bottle plan demo -f examples/demo/bottle.yaml
./bin/bottle run demo -f examples/demo/bottle.yaml
