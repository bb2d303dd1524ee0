#!/usr/bin/env bash
# The main job on a fresh machine: install, bring Docker up, build the images
# (registry-less when no registry answers), then run the demo bottle attached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
./bin/bottle plan demo -f examples/demo/bottle.yaml
./bin/bottle run demo -f examples/demo/bottle.yaml
