#!/usr/bin/env bash
# The one test command (npm test): brings Docker up when it can, builds, type-checks,
# lints, then runs every test layer (unit, integration, e2e, security, fault).
# Docker missing is a failure with a remedy, never a silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/docker-up.sh
node scripts/build.mjs
npx tsc --noEmit -p tsconfig.json
npx biome lint .
# The images every Docker test uses, built once up front with progress (cached by content
# hash: a second run on this machine builds nothing). bootstrap: never ask a registry.
BOTTLE_HOME="${BOTTLE_HOME:-$(mktemp -d)}" ./bin/bottle images build --base bootstrap
npx vitest run "$@"
